//! The delivery log through the API (#23): one message with every attempt, and a
//! subscription's messages, newest first, filtered and paged. Answered from this
//! instance's view of the log topic (`attempts::view`); a partner sees only its own.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use crate::attempts::view::{Cursor, Filter, LogView, Message, Status};
use crate::attempts::AttemptRecord;

mod resend;
pub(super) use resend::resend;

/// A malformed query answers 400 in JSON, naming the parameter (`known` are the
/// query's fields).
pub(super) fn query_error(e: axum::extract::rejection::QueryRejection, known: &[&str]) -> ApiError {
    let text = e.body_text();
    let detail = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    let field = detail.split(':').next().unwrap_or("query").trim();
    let field = known
        .iter()
        .find(|k| **k == field)
        .copied()
        .unwrap_or("query");
    ApiError::parameter(field, detail.to_string())
}

/// The view, or 404 when this API keeps none (`--attempts-topic` empty).
fn view(api: &ApiState) -> Result<Arc<Mutex<LogView>>, ApiError> {
    api.log.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "the delivery log is off on this API (--attempts-topic is empty)",
        )
    })
}

/// Runs `f` on the view off the async threads.
async fn on_view<T: Send + 'static>(
    view: Arc<Mutex<LogView>>,
    f: impl FnOnce(&LogView) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    on_view_anyhow(view, f).await.map_err(ApiError::internal)
}

pub(super) async fn on_view_anyhow<T: Send + 'static>(
    view: Arc<Mutex<LogView>>,
    f: impl FnOnce(&LogView) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(move || f(&view.lock().unwrap_or_else(|p| p.into_inner()))).await?
}

/// Whose records a caller sees: a partner token its own only (also under a
/// subscription id that was deleted and made again for someone else); an admin's all.
fn partner_of(caller: &Caller) -> Option<String> {
    match caller {
        Caller::Admin => None,
        Caller::Partner(p) => Some(p.clone()),
    }
}

/// A message id as webhooks carry it: 1-128 of `A-Za-z0-9._:-`.
fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// `text` as an RFC 3339 time; `bad` makes the error naming `field` (a query's
/// parameter or a body's field).
pub(super) fn time_of(
    field: &str,
    text: &Option<String>,
    bad: fn(&str, String) -> ApiError,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    text.as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| bad(field, format!("not an RFC 3339 time: {e}")))
        })
        .transpose()
}

/// One attempt as the API shows it.
#[derive(Debug, Serialize)]
struct AttemptView {
    attempt: u32,
    trigger: crate::attempts::Trigger,
    url: Option<String>,
    started_at: chrono::DateTime<chrono::Utc>,
    duration_ms: u64,
    status_code: Option<u16>,
    error: Option<String>,
    error_detail: Option<String>,
    outcome: crate::attempts::Outcome,
    next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    response_content_type: Option<String>,
    response_retry_after: Option<String>,
    response_excerpt: Option<String>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(r: AttemptRecord) -> Self {
        Self {
            attempt: r.attempt,
            trigger: r.trigger,
            url: r.url,
            started_at: r.started_at,
            duration_ms: r.duration_ms,
            status_code: r.status_code,
            error: r.error,
            error_detail: r.error_detail,
            outcome: r.outcome,
            next_attempt_at: r.next_attempt_at,
            response_content_type: r.response_content_type,
            response_retry_after: r.response_retry_after,
            response_excerpt: r.response_excerpt,
        }
    }
}

/// A message as the API shows it.
#[derive(Debug, Serialize)]
struct MessageView {
    webhook_id: String,
    event_id: String,
    event_type: Option<String>,
    order_id: String,
    subscription_id: String,
    status: Status,
    attempts_count: u32,
    last_status_code: Option<u16>,
    last_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts: Option<Vec<AttemptView>>,
}

impl MessageView {
    fn of(m: Message, attempts: Option<Vec<AttemptRecord>>) -> Self {
        Self {
            webhook_id: m.webhook_id,
            event_id: m.event_id,
            event_type: m.event_type,
            order_id: m.order_id,
            subscription_id: m.subscription_id,
            status: m.status,
            attempts_count: m.attempts_count,
            last_status_code: m.last_status_code,
            last_attempt_at: m.last_attempt_at,
            next_attempt_at: m.next_attempt_at,
            attempts: attempts.map(|a| a.into_iter().map(AttemptView::from).collect()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MessageQuery {
    subscription_id: Option<String>,
}

/// The caller's subscription that message `webhook_id` went to (`subscription_id` when
/// it went to several), with the view; 404 for anything the caller does not own.
async fn owned_message(
    api: &ApiState,
    caller: &Caller,
    webhook_id: &str,
    subscription_id: Option<&str>,
) -> Result<(Arc<Mutex<LogView>>, String), ApiError> {
    if !valid_id(webhook_id) {
        return Err(ApiError::parameter(
            "webhook_id",
            "1-128 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    let view = view(api)?;
    let partner = match caller {
        Caller::Admin => None,
        Caller::Partner(p) => Some(p.clone()),
    };
    let id = webhook_id.to_string();
    let found = on_view(Arc::clone(&view), move |v| {
        v.subscriptions_of(&id, partner.as_deref())
    })
    .await?;
    let subscription = match (subscription_id, &found[..]) {
        (_, []) => return Err(no_message(webhook_id)),
        (Some(s), _) if found.iter().any(|f| f == s) => s.to_string(),
        (Some(_), _) => return Err(no_message(webhook_id)),
        (None, [only]) => only.clone(),
        (None, several) => {
            return Err(ApiError::parameter(
                "subscription_id",
                format!(
                    "the message went to {} of your subscriptions; name one of: {}",
                    several.len(),
                    several.join(", ")
                ),
            ))
        }
    };
    Ok((view, subscription))
}

fn no_message(webhook_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no message `{webhook_id}`"),
    )
}

/// The caller's message `webhook_id` ([`owned_message`]) and its records, oldest first.
async fn read_owned(
    api: &ApiState,
    caller: &Caller,
    webhook_id: &str,
    query: Result<Query<MessageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<(Message, Vec<AttemptRecord>), ApiError> {
    let Query(query) = query.map_err(|e| query_error(e, &["subscription_id"]))?;
    let (view, subscription) =
        owned_message(api, caller, webhook_id, query.subscription_id.as_deref()).await?;
    let id = webhook_id.to_string();
    on_view(view, move |v| v.message(&subscription, &id))
        .await?
        .ok_or_else(|| no_message(webhook_id))
}

/// `GET /v1/messages/{webhook_id}`: the message and its attempts, oldest first. An
/// event that went to several of the caller's subscriptions needs `subscription_id`.
pub(super) async fn message(
    State(api): State<ApiState>,
    caller: Caller,
    Path(webhook_id): Path<String>,
    query: Result<Query<MessageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let (message, attempts) = read_owned(&api, &caller, &webhook_id, query).await?;
    Ok(Json(MessageView::of(message, Some(attempts))).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    status: Option<String>,
    event_type: Option<String>,
    order_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

fn encode_cursor(c: &Cursor) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(format!("{}:{}", c.updated_ms, c.webhook_id))
}

fn decode_cursor(text: &str) -> Option<Cursor> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (ms, id) = raw.split_once(':')?;
    Some(Cursor {
        updated_ms: ms.parse().ok()?,
        webhook_id: id.to_string(),
    })
}

/// `GET /v1/subscriptions/{id}/messages`: newest first, filtered, paged by cursor.
pub(super) async fn list(
    State(api): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let known = [
        "status",
        "event_type",
        "order_id",
        "since",
        "until",
        "cursor",
        "limit",
    ];
    let Query(query) = query.map_err(|e| query_error(e, &known))?;
    api.visible(&caller, &id)?;
    let view = view(&api)?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::parameter("limit", "between 1 and 100"));
    }
    let status = query
        .status
        .as_deref()
        .map(|s| {
            Status::parse(s).ok_or_else(|| {
                ApiError::parameter(
                    "status",
                    "one of delivered, pending, failing, dead_lettered, dropped",
                )
            })
        })
        .transpose()?;
    let filter = Filter {
        status,
        event_type: query.event_type.clone(),
        order_id: query.order_id.clone(),
        since: time_of("since", &query.since, ApiError::parameter)?,
        until: time_of("until", &query.until, ApiError::parameter)?,
    };
    let cursor = query
        .cursor
        .as_deref()
        .map(|c| {
            decode_cursor(c)
                .ok_or_else(|| ApiError::parameter("cursor", "not a cursor this API returned"))
        })
        .transpose()?;
    let partner = partner_of(&caller);
    let (page, next) = on_view(view, move |v| {
        v.messages(&id, partner.as_deref(), &filter, cursor.as_ref(), limit)
    })
    .await?;
    Ok(Json(serde_json::json!({
        "items": page.into_iter().map(|m| MessageView::of(m, None)).collect::<Vec<_>>(),
        "next_cursor": next.as_ref().map(encode_cursor),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StatsQuery {
    window: Option<String>,
}

/// `GET /v1/subscriptions/{id}/stats?window=1h|24h|7d`: records by outcome, success
/// rate, p50 / p99 of attempt durations and of time to webhook, over the window.
pub(super) async fn stats(
    State(api): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    query: Result<Query<StatsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| query_error(e, &["window"]))?;
    api.visible(&caller, &id)?;
    let view = view(&api)?;
    let window = query.window.unwrap_or_else(|| "24h".into());
    let hours = match window.as_str() {
        "1h" => 1,
        "24h" => 24,
        "7d" => 168,
        _ => return Err(ApiError::parameter("window", "one of 1h, 24h, 7d")),
    };
    let since = chrono::Utc::now() - chrono::Duration::hours(hours);
    let partner = partner_of(&caller);
    let stats = on_view(view, move |v| v.stats(&id, partner.as_deref(), since)).await?;
    let pair =
        |q: Option<[u64; 2]>| q.map(|[p50, p99]| serde_json::json!({ "p50": p50, "p99": p99 }));
    Ok(Json(serde_json::json!({
        "window": window,
        "since": since,
        "by_outcome": stats.by_outcome,
        "attempts": stats.attempts,
        "success_rate": stats.success_rate,
        "attempt_duration_ms": pair(stats.attempt_duration_ms),
        "time_to_webhook_ms": pair(stats.time_to_webhook_ms),
        "open_failures": { "failing": stats.open_failures[0], "dead_lettered": stats.open_failures[1] },
        "hours": stats.hours,
        "filtered": { "filtered_out": stats.filtered[0], "errors": stats.filtered[1] },
    }))
    .into_response())
}
