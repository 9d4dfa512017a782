//! Operators' dead letters, per partner (what `dispatcher dlq summary`, `list` and
//! `replay` do, for the console's SRE pages): `GET /v1/admin/partners/{p}/dead-letters`
//! and `POST /v1/admin/partners/{p}/dead-letters/replay`. A replay goes through the
//! same ledger and audit as the command (each record once; operator `api: admin`).

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::Admin;
use super::error::ApiError;
use super::ApiState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    limit: Option<usize>,
}

/// 404 unless `partner` is one (a token or a subscription).
fn known(api: &ApiState, partner: &str) -> Result<(), ApiError> {
    let known =
        api.tokens.has_partner(partner) || api.table.all().iter().any(|s| s.partner_id == partner);
    if known {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no partner `{partner}`"),
        ))
    }
}

fn failed(e: crate::dlq::DlqError) -> ApiError {
    match e {
        crate::dlq::DlqError::Refused(why) => {
            ApiError::new(StatusCode::CONFLICT, "conflict", why.0)
        }
        crate::dlq::DlqError::Failed(e) => ApiError::internal(e),
    }
}

/// `GET /v1/admin/partners/{partner}/dead-letters?limit=`: counts (all, pending, by
/// reason) and the newest `limit` (50; at most 500) records.
pub(super) async fn list(
    State(api): State<ApiState>,
    Admin(_): Admin,
    Path(partner): Path<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::parameter("query", e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::parameter("limit", "between 1 and 500"));
    }
    known(&api, &partner)?;
    let letters = crate::dlq::dead_letters(
        &api.kafka,
        &partner,
        &crate::dlq::TopicArgs::from_env().ledger_topic,
    )
    .await
    .map_err(failed)?;
    let pending = letters.iter().filter(|l| l.state == "pending").count();
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for l in letters.iter().filter(|l| l.state == "pending") {
        *by_reason.entry(l.reason_class.as_str()).or_default() += 1;
    }
    Ok(Json(serde_json::json!({
        "partner": partner,
        "total": letters.len(),
        "pending": pending,
        "pending_by_reason": by_reason,
        "items": letters.iter().take(limit).collect::<Vec<_>>(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayRequest {
    /// Required: a replay is never what an empty request meant.
    dry_run: bool,
    since: Option<String>,
    until: Option<String>,
    /// Text the reason contains (case-insensitive).
    reason: Option<String>,
    event_type: Option<String>,
}

fn time_of(
    field: &str,
    text: &Option<String>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
    text.as_deref()
        .map(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| ApiError::field(field, format!("not an RFC 3339 time: {e}")))
        })
        .transpose()
}

/// `POST /v1/admin/partners/{partner}/dead-letters/replay`: the pending dead letters
/// that match, back to the partner's delivery topic, each once; `dry_run` counts them.
pub(super) async fn replay(
    State(api): State<ApiState>,
    Admin(caller): Admin,
    Path(partner): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: ReplayRequest = super::error::body(&bytes)?;
    known(&api, &partner)?;
    let filter = crate::dlq::Filter {
        partner: partner.clone(),
        router: false,
        event_type: request.event_type.clone().filter(|t| !t.is_empty()),
        reason: request.reason.clone().filter(|r| !r.is_empty()),
        status: None,
        since: time_of("since", &request.since)?,
        until: time_of("until", &request.until)?,
        partition: None,
        from_offset: None,
        to_offset: None,
        key: None,
        subscription: None,
    };
    filter
        .validate(chrono::Utc::now())
        .map_err(|e| ApiError::field("filter", e.0))?;
    // Held by the task until it ends (see `recover`).
    let key = super::recover::Running::key(&partner);
    let Some(running) = super::recover::Running::start(&api.recovering, &key) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("a replay of `{partner}`'s dead letters is running; try again when it is done"),
        ));
    };
    let run = crate::dlq::RunArgs::for_api(request.dry_run, format!("api: {}", caller.name()));
    let topics = crate::dlq::TopicArgs::from_env();
    // A task of its own: a client that goes away does not stop it between a record's
    // send and its ledger entry.
    let (kafka, table) = (api.kafka.clone(), api.table.clone());
    let (_, counts) = tokio::spawn(async move {
        let _running = running;
        crate::dlq::replay_counted(&kafka, table, &filter, &run, &topics).await
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(failed)?;
    Ok(Json(serde_json::json!({
        "dry_run": request.dry_run,
        "matched": counts.matched,
        "already_handled": counts.skipped,
        "count": if request.dry_run { counts.todo } else { counts.done },
    }))
    .into_response())
}

/// `GET /v1/admin/partners/{partner}/dead-letters/{partition}/{offset}`: one dead
/// letter in full (`dispatcher dlq show`): its headers, its payload, what the ledger
/// says of it.
pub(super) async fn show(
    State(api): State<ApiState>,
    Admin(_): Admin,
    Path((partner, partition, offset)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let partition: i32 = partition
        .parse()
        .map_err(|_| ApiError::parameter("partition", "a partition number"))?;
    let offset: i64 = offset
        .parse()
        .map_err(|_| ApiError::parameter("offset", "an offset"))?;
    known(&api, &partner)?;
    let ledger = crate::dlq::TopicArgs::from_env().ledger_topic;
    match crate::dlq::dead_letter(&api.kafka, &partner, partition, offset, &ledger)
        .await
        .map_err(failed)?
    {
        Some(letter) => Ok(Json(letter).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead letter of `{partner}` at {partition}/{offset}"),
        )),
    }
}
