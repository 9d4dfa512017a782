//! The console's pages: each handler asks the partner API ([`ApiCall`]) and fills its
//! template (`templates/<page>.html`). Here the frame and its helpers, the overview and
//! a subscription with its delivery log; `entry.rs` (signing in and out, portal links),
//! `message.rs` (one message, resend), `manage.rs` (changes), `sre.rs` (operators).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::Value;

use super::entry::{check_change, CsrfForm};
use super::{ApiCall, Viewer};
use crate::api::ApiState;

/// What the frame of every page shows.
pub(super) struct Layout {
    pub(super) who: Option<String>,
    /// An operator's session: the operators' links in the header.
    pub(super) operator: bool,
    pub(super) csrf: String,
    pub(super) flash: Option<String>,
}

impl Layout {
    pub(super) fn of(viewer: &Viewer) -> Self {
        Self {
            who: Some(viewer.who()),
            operator: viewer.grant.partner.is_none(),
            csrf: viewer.csrf.clone(),
            flash: None,
        }
    }

    pub(super) fn anonymous() -> Self {
        Self {
            who: None,
            operator: false,
            csrf: String::new(),
            flash: None,
        }
    }
}

pub(super) fn render(status: StatusCode, page: impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "console template");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be shown",
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "notice.html")]
pub(super) struct Notice {
    pub(super) layout: Layout,
    pub(super) heading: String,
    pub(super) message: String,
    pub(super) next: Option<(String, String)>,
}

/// A page that says what went wrong (never a stack trace), with `status`.
pub(super) fn notice(status: StatusCode, layout: Layout, heading: &str, message: &str) -> Response {
    render(
        status,
        Notice {
            layout,
            heading: heading.into(),
            message: message.into(),
            next: Some(("/console/".into(), "Back to the overview".into())),
        },
    )
}

/// The page for an API answer that is not a success: the API's own message (escaped
/// by the template), and the same status.
pub(super) fn api_failure(layout: Layout, status: StatusCode, body: &Value) -> Response {
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("the request could not be completed");
    let message = match body["error"]["field"].as_str() {
        Some(field) => format!("{field}: {message}"),
        None => message.to_string(),
    };
    let heading = match status {
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::TOO_MANY_REQUESTS => "Too many changes",
        s if s.is_server_error() => "Temporarily unavailable",
        _ => "That did not work",
    };
    notice(status, layout, heading, &message)
}

/// 503 with `message`: something we must record could not be.
pub(super) fn unavailable(message: &str) -> Response {
    notice(
        StatusCode::SERVICE_UNAVAILABLE,
        Layout::anonymous(),
        "Temporarily unavailable",
        message,
    )
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

// ---- One subscription and its delivery log ----

struct SubscriptionFacts {
    id: String,
    partner: String,
    url: String,
    event_types: String,
    state: String,
    /// The URL's ownership check: `verified`, `pending_verification`,
    /// `verification_failed`.
    verification: String,
    /// Where events go while the URL is not verified (empty: they wait).
    delivering_to: String,
    /// Why the last challenge failed (empty: none).
    verification_error: String,
    /// The payload filter (empty: none).
    filter: String,
    /// `webhook` or `stream`.
    kind: String,
    /// What it kept back over the last 24 h: false for, failed on.
    filtered_out: u64,
    filter_errors: u64,
}

struct MessageRow {
    webhook_id: String,
    event_type: String,
    order_id: String,
    status: String,
    attempts: String,
    last_status: String,
    last_attempt_at: String,
    next_attempt_at: String,
}

impl MessageRow {
    fn of(m: &Value) -> Self {
        Self {
            webhook_id: text(&m["webhook_id"]),
            event_type: text(&m["event_type"]),
            order_id: text(&m["order_id"]),
            status: text(&m["status"]),
            attempts: text(&m["attempts_count"]),
            last_status: text(&m["last_status_code"]),
            last_attempt_at: text(&m["last_attempt_at"]),
            next_attempt_at: text(&m["next_attempt_at"]),
        }
    }
}

/// The delivery log's filters, as the API takes them.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Filters {
    #[serde(default)]
    status: String,
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    order_id: String,
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    #[serde(default)]
    cursor: String,
}

impl Filters {
    fn any(&self) -> bool {
        [
            &self.status,
            &self.event_type,
            &self.order_id,
            &self.since,
            &self.until,
        ]
        .iter()
        .any(|v| !v.is_empty())
    }

    /// The query string of the filters that are set, with `cursor`.
    fn query(&self, cursor: Option<&str>) -> String {
        let mut q = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("status", &self.status),
            ("event_type", &self.event_type),
            ("order_id", &self.order_id),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if !v.is_empty() {
                q.append_pair(k, v);
            }
        }
        if let Some(c) = cursor {
            q.append_pair("cursor", c);
        }
        q.finish()
    }
}

const STATUSES: [(&str, &str); 6] = [
    ("", "Any"),
    ("delivered", "Delivered"),
    ("pending", "Pending"),
    ("failing", "Failing"),
    ("dead_lettered", "Dead-lettered"),
    ("dropped", "Dropped"),
];

#[derive(Template)]
#[template(path = "subscription.html")]
struct SubscriptionPage {
    layout: Layout,
    manage: bool,
    s: SubscriptionFacts,
    /// Every event type, and whether the subscription takes it.
    event_types: Vec<(&'static str, bool)>,
    /// The recover form's default start: a day ago.
    recover_since: String,
    statuses: Vec<(&'static str, &'static str, bool)>,
    filters: Filters,
    error: Option<String>,
    messages: Vec<MessageRow>,
    next_page: Option<String>,
}

pub(super) async fn subscription(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(filters): Query<Filters>,
) -> Response {
    let path = super::seg(&id);
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, s) = call.get(&format!("/v1/subscriptions/{path}")).await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &s);
    }
    let facts = SubscriptionFacts {
        id: text(&s["id"]),
        partner: text(&s["partner_id"]),
        url: text(&s["url"]),
        event_types: s["event_types"]
            .as_array()
            .map(|t| t.iter().map(text).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        state: text(&s["state"]),
        verification: text(&s["verification"]["state"]),
        delivering_to: s["verification"]["delivering_to"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        verification_error: s["verification"]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        filter: s["filter"].as_str().unwrap_or_default().to_string(),
        kind: text(&s["kind"]),
        filtered_out: 0,
        filter_errors: 0,
    };
    let mut facts = facts;
    if !facts.filter.is_empty() {
        let (_, stats) = call.get(&format!("/v1/subscriptions/{path}/stats")).await;
        facts.filtered_out = stats["filtered"]["filtered_out"].as_u64().unwrap_or(0);
        facts.filter_errors = stats["filtered"]["errors"].as_u64().unwrap_or(0);
    }
    let cursor = (!filters.cursor.is_empty()).then_some(filters.cursor.as_str());
    let (status, page) = call
        .get(&format!(
            "/v1/subscriptions/{id}/messages?{}",
            filters.query(cursor)
        ))
        .await;
    let (messages, next_page, error) = if status.is_success() {
        let messages = page["items"]
            .as_array()
            .map(|items| items.iter().map(MessageRow::of).collect())
            .unwrap_or_default();
        let next = page["next_cursor"]
            .as_str()
            .map(|c| format!("/console/subscriptions/{path}?{}", filters.query(Some(c))));
        (messages, next, None)
    } else {
        // A bad filter: the page with the API's message naming it.
        let field = page["error"]["field"].as_str().unwrap_or("filter");
        let message = page["error"]["message"].as_str().unwrap_or("not accepted");
        (Vec::new(), None, Some(format!("{field}: {message}")))
    };
    let statuses = STATUSES
        .iter()
        .map(|(v, l)| (*v, *l, *v == filters.status))
        .collect();
    let taken: Vec<&str> = s["event_types"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let event_types = order_schemas::EventType::ALL
        .iter()
        .map(|t| (t.name(), taken.contains(&t.name())))
        .collect();
    let recover_since = (chrono::Utc::now() - chrono::Duration::hours(24))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    render(
        StatusCode::OK,
        SubscriptionPage {
            layout: Layout::of(&viewer),
            manage: viewer.manages(),
            s: facts,
            event_types,
            recover_since,
            statuses,
            filters,
            error,
            messages,
            next_page,
        },
    )
}

async fn change(api: &ApiState, viewer: &Viewer, csrf: &str, uri: &str, back: &str) -> Response {
    if let Some(refused) = check_change(api, viewer, csrf) {
        return refused;
    }
    let call = ApiCall { api, viewer };
    let (status, body) = call.post(uri, None).await;
    if !status.is_success() {
        return api_failure(Layout::of(viewer), status, &body);
    }
    Redirect::to(back).into_response()
}

/// `POST /console/subscriptions/{id}/verify`: the ownership challenge again, now.
pub(super) async fn verify(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let path = super::seg(&id);
    let back = format!("/console/subscriptions/{path}");
    let uri = format!("/v1/subscriptions/{path}/verify");
    change(&api, &viewer, &form.csrf, &uri, &back).await
}

pub(super) async fn pause(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    pause_or_resume(&api, &viewer, &id, &form.csrf, "pause").await
}

pub(super) async fn resume(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    pause_or_resume(&api, &viewer, &id, &form.csrf, "resume").await
}

async fn pause_or_resume(
    api: &ApiState,
    viewer: &Viewer,
    id: &str,
    csrf: &str,
    action: &str,
) -> Response {
    let path = super::seg(id);
    let uri = format!("/v1/subscriptions/{path}/{action}");
    change(
        api,
        viewer,
        csrf,
        &uri,
        &format!("/console/subscriptions/{path}"),
    )
    .await
}
