//! The console's pages: each handler asks the partner API ([`ApiCall`]) and fills its
//! template (`templates/<page>.html`).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::Value;

use super::grant::{self, Grant, Kind, Refused, Scope};
use super::{now, ApiCall, Viewer, SESSION_SECS};
use crate::api::ApiState;

/// What the frame of every page shows.
pub(super) struct Layout {
    pub(super) who: Option<String>,
    pub(super) csrf: String,
    pub(super) flash: Option<String>,
}

impl Layout {
    pub(super) fn of(viewer: &Viewer) -> Self {
        Self {
            who: Some(viewer.who()),
            csrf: viewer.csrf.clone(),
            flash: None,
        }
    }

    fn anonymous() -> Self {
        Self {
            who: None,
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
struct Notice {
    layout: Layout,
    heading: String,
    message: String,
    next: Option<(String, String)>,
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
fn unavailable(message: &str) -> Response {
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

// ---- Sign in and out ----

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    layout: Layout,
    error: Option<String>,
}

pub(super) async fn login_form() -> Response {
    render(
        StatusCode::OK,
        Login {
            layout: Layout::anonymous(),
            error: None,
        },
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

/// An admin token starts an operator's session (`manage`); anything else is refused
/// with the form again.
pub(super) async fn login(State(api): State<ApiState>, Form(form): Form<LoginForm>) -> Response {
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(v) = format!("Bearer {}", form.token.trim()).parse() {
        headers.insert(header::AUTHORIZATION, v);
    }
    match api.tokens.caller(&headers) {
        Ok(crate::api::Caller::Admin) => {
            let session = Grant::new(Kind::Session, None, Scope::Manage, now(), SESSION_SECS);
            start(&api, &session)
        }
        _ => render(
            StatusCode::UNAUTHORIZED,
            Login {
                layout: Layout::anonymous(),
                error: Some(
                    "That is not an admin token. Partners open the portal link they were sent."
                        .into(),
                ),
            },
        ),
    }
}

/// Sets the session cookie and goes to the overview.
fn start(api: &ApiState, session: &Grant) -> Response {
    (
        [(header::SET_COOKIE, api.console.cookie(session))],
        Redirect::to("/console/"),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn logout(
    State(api): State<ApiState>,
    viewer: Viewer,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = check_csrf(&api, &viewer, &form.csrf) {
        return refused;
    }
    if let Err(error) = api.console.revoke(&viewer.grant).await {
        tracing::error!(%error, "console sign-out");
        return unavailable("The console could not record the sign-out. Try again in a minute.");
    }
    (
        [(header::SET_COOKIE, api.console.cleared())],
        Redirect::to("/console/login"),
    )
        .into_response()
}

/// `None` when `given` is the session's CSRF token; else the refusal.
fn check_csrf(api: &ApiState, viewer: &Viewer, given: &str) -> Option<Response> {
    (!grant::csrf_ok(&api.console.secret, &viewer.grant.id, given)).then(|| {
        notice(
            StatusCode::FORBIDDEN,
            Layout::of(viewer),
            "Form expired",
            "This form is not from your current session. Open the page again and retry.",
        )
    })
}

/// A change needs a `manage` session and the session's CSRF token.
pub(super) fn check_change(api: &ApiState, viewer: &Viewer, csrf: &str) -> Option<Response> {
    if !viewer.manages() {
        return Some(notice(
            StatusCode::FORBIDDEN,
            Layout::of(viewer),
            "Not allowed",
            "Your session may look, not change: ask for a portal link with manage access.",
        ));
    }
    check_csrf(api, viewer, csrf)
}

// ---- Portal links ----

#[derive(Template)]
#[template(path = "link.html")]
struct LinkPage {
    layout: Layout,
    whom: String,
    scope: &'static str,
    token: String,
}

/// Why a link cannot be opened, as a page.
fn link_refused(why: &str) -> Response {
    let (status, message) = match why {
        "used" => (
            StatusCode::GONE,
            "This portal link was used already: each link opens the console once. Ask for a new one.",
        ),
        "expired" => (
            StatusCode::GONE,
            "This portal link has expired. Ask for a new one.",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "This is not a valid portal link. Check that it was copied whole.",
        ),
    };
    render(
        status,
        Notice {
            layout: Layout::anonymous(),
            heading: "This link cannot be used".into(),
            message: message.into(),
            next: None,
        },
    )
}

/// The link `token` carries, or why it cannot be used (`used`, `expired`, `invalid`).
fn checked_link(api: &ApiState, token: &str) -> Result<Grant, &'static str> {
    let link =
        Grant::verify(&api.console.secret, token, Kind::Link, now()).map_err(|r| match r {
            Refused::Expired => "expired",
            Refused::Invalid => "invalid",
        })?;
    if api.console.link_used(&link.id) {
        return Err("used");
    }
    if api.console.ended(&link) {
        // Issued before the partner's sessions were ended.
        return Err("expired");
    }
    Ok(link)
}

/// `GET /console/link/{token}`: what the link opens, and a button to open it. (Only the
/// POST uses it up: a chat's link preview fetching the URL must not.)
pub(super) async fn open_link(State(api): State<ApiState>, Path(token): Path<String>) -> Response {
    let link = match checked_link(&api, &token) {
        Ok(link) => link,
        Err(why) => return link_refused(why),
    };
    render(
        StatusCode::OK,
        LinkPage {
            layout: Layout::anonymous(),
            whom: link
                .partner
                .clone()
                .unwrap_or_else(|| "every partner (operator)".into()),
            scope: link.scope.as_str(),
            token,
        },
    )
}

/// `POST /console/link/{token}`: uses the link up and starts its session (audited).
pub(super) async fn use_link(State(api): State<ApiState>, Path(token): Path<String>) -> Response {
    let link = match checked_link(&api, &token) {
        Ok(link) => link,
        Err(why) => return link_refused(why),
    };
    let now = now();
    match api.console.take_link(&link.id, link.exp).await {
        Ok(true) => {}
        Ok(false) => return link_refused("used"),
        Err(error) => {
            tracing::error!(%error, "console link");
            return unavailable(
                "The console could not record this sign-in. Try again in a minute.",
            );
        }
    }
    let session = Grant::new(
        Kind::Session,
        link.partner.clone(),
        link.scope,
        now,
        SESSION_SECS,
    );
    let audited = api
        .audit
        .record_id(
            "console",
            "portal-link-opened",
            &format!("portal-link/{}", link.id),
            link.partner.as_deref(),
            serde_json::json!({ "scope": link.scope.as_str(), "session": session.id }),
        )
        .await;
    if let Err(error) = audited {
        tracing::error!(%error, "console audit");
        return unavailable("The console could not record this sign-in. Try again in a minute.");
    }
    start(&api, &session)
}

// ---- Overview ----

struct SubscriptionRow {
    partner: String,
    id: String,
    state: String,
    delivered: String,
    failed: String,
    success_rate: String,
    p99: String,
}

/// An operator's row per partner.
struct PartnerRow {
    partner: String,
    subscriptions: usize,
    /// Its subscriptions by state (`2 active, 1 paused`).
    states: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    layout: Layout,
    admin: bool,
    partners: Vec<PartnerRow>,
    subscriptions: Vec<SubscriptionRow>,
}

/// Counts of `stats` by outcome: delivered, and failed (dead-lettered or dropped).
fn outcomes(stats: &Value) -> (u64, u64) {
    let by = &stats["by_outcome"];
    let n = |k: &str| by[k].as_u64().unwrap_or(0);
    (n("delivered"), n("dead_lettered") + n("dropped"))
}

/// At most this many subscriptions get their figures on the overview (each is two
/// questions to the delivery log, kept 30 s).
const OVERVIEW_FIGURES: usize = 50;

pub(super) async fn overview(State(api): State<ApiState>, viewer: Viewer) -> Response {
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, list) = call.get("/v1/subscriptions").await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &list);
    }
    let mut subscriptions = Vec::new();
    for (i, s) in list["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let id = text(&s["id"]);
        let path = super::seg(&id);
        let mut row = SubscriptionRow {
            partner: text(&s["partner_id"]),
            id: id.clone(),
            state: text(&s["state"]),
            delivered: "—".into(),
            failed: "—".into(),
            success_rate: "—".into(),
            p99: "—".into(),
        };
        if i < OVERVIEW_FIGURES {
            let hour = call.stats(&path, "1h").await;
            let day = call.stats(&path, "24h").await;
            if let (Some(hour), Some(day)) = (hour, day) {
                let ((d1, f1), (d24, f24)) = (outcomes(&hour), outcomes(&day));
                row.delivered = format!("{d1} / {d24}");
                row.failed = format!("{f1} / {f24}");
                row.success_rate = day["success_rate"]
                    .as_f64()
                    .map_or("—".into(), |r| format!("{:.1} %", r * 100.0));
                row.p99 = day["time_to_webhook_ms"]["p99"]
                    .as_u64()
                    .map_or("—".into(), |ms| format!("{ms} ms"));
            }
        }
        subscriptions.push(row);
    }
    let admin = viewer.grant.partner.is_none();
    let mut by_partner: std::collections::BTreeMap<&str, std::collections::BTreeMap<&str, usize>> =
        Default::default();
    if admin {
        for s in &subscriptions {
            *by_partner
                .entry(s.partner.as_str())
                .or_default()
                .entry(s.state.as_str())
                .or_default() += 1;
        }
    }
    let partners = by_partner
        .into_iter()
        .map(|(partner, states)| PartnerRow {
            partner: partner.to_string(),
            subscriptions: states.values().sum(),
            states: states
                .iter()
                .map(|(state, n)| format!("{n} {state}"))
                .collect::<Vec<_>>()
                .join(", "),
        })
        .collect();
    render(
        StatusCode::OK,
        Overview {
            layout: Layout::of(&viewer),
            admin,
            partners,
            subscriptions,
        },
    )
}

// ---- One subscription and its delivery log ----

struct SubscriptionFacts {
    id: String,
    partner: String,
    url: String,
    event_types: String,
    state: String,
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
    };
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

// ---- One message ----

struct MessageFacts {
    webhook_id: String,
    event_id: String,
    event_type: String,
    order_id: String,
    subscription_id: String,
    status: String,
    attempts: String,
    next_attempt_at: String,
}

struct AttemptRow {
    attempt: String,
    trigger: String,
    outcome: String,
    started_at: String,
    duration_ms: String,
    url: String,
    /// The status code, or the error class.
    answer: String,
    error_detail: Option<String>,
    content_type: Option<String>,
    next_attempt_at: Option<String>,
    /// What the partner's server sent: shown only through the template's escaping.
    excerpt: Option<String>,
}

impl AttemptRow {
    fn of(a: &Value) -> Self {
        let some = |v: &Value| v.as_str().map(str::to_string);
        Self {
            attempt: text(&a["attempt"]),
            trigger: text(&a["trigger"]),
            outcome: text(&a["outcome"]),
            started_at: text(&a["started_at"]),
            duration_ms: text(&a["duration_ms"]),
            url: text(&a["url"]),
            answer: match (&a["status_code"], &a["error"]) {
                (Value::Number(n), _) => format!("HTTP {n}"),
                (_, Value::String(e)) => e.clone(),
                _ => "—".into(),
            },
            error_detail: some(&a["error_detail"]),
            content_type: some(&a["response_content_type"]),
            next_attempt_at: some(&a["next_attempt_at"]),
            excerpt: some(&a["response_excerpt"]).filter(|e| !e.is_empty()),
        }
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    layout: Layout,
    manage: bool,
    m: MessageFacts,
    attempts: Vec<AttemptRow>,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct Which {
    #[serde(default)]
    subscription_id: String,
    /// A note to show once (after a resend).
    #[serde(default)]
    done: String,
}

impl Which {
    fn query(&self) -> String {
        if self.subscription_id.is_empty() {
            String::new()
        } else {
            url::form_urlencoded::Serializer::new(String::from("?"))
                .append_pair("subscription_id", &self.subscription_id)
                .finish()
        }
    }
}

pub(super) async fn message(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(webhook_id): Path<String>,
    Query(which): Query<Which>,
) -> Response {
    let path = super::seg(&webhook_id);
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, m) = call
        .get(&format!("/v1/messages/{path}{}", which.query()))
        .await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &m);
    }
    let facts = MessageFacts {
        webhook_id: text(&m["webhook_id"]),
        event_id: text(&m["event_id"]),
        event_type: text(&m["event_type"]),
        order_id: text(&m["order_id"]),
        subscription_id: text(&m["subscription_id"]),
        status: text(&m["status"]),
        attempts: text(&m["attempts_count"]),
        next_attempt_at: text(&m["next_attempt_at"]),
    };
    let attempts = m["attempts"]
        .as_array()
        .map(|a| a.iter().map(AttemptRow::of).collect())
        .unwrap_or_default();
    let mut layout = Layout::of(&viewer);
    if which.done == "resent" {
        layout.flash =
            Some("Resent: the new attempt appears below once it is made (reload the page).".into());
    }
    render(
        StatusCode::OK,
        MessagePage {
            layout,
            manage: viewer.manages(),
            m: facts,
            attempts,
        },
    )
}

#[derive(Template)]
#[template(path = "resend.html")]
struct ResendPage {
    layout: Layout,
    webhook_id: String,
    subscription_id: String,
}

/// `GET .../resend`: the confirmation.
pub(super) async fn resend_confirm(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(webhook_id): Path<String>,
    Query(which): Query<Which>,
) -> Response {
    let path = super::seg(&webhook_id);
    if !viewer.manages() {
        return check_change(&api, &viewer, "")
            .unwrap_or_else(|| StatusCode::FORBIDDEN.into_response());
    }
    // The message must be the caller's: the same question its page asks.
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, m) = call
        .get(&format!("/v1/messages/{path}{}", which.query()))
        .await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &m);
    }
    render(
        StatusCode::OK,
        ResendPage {
            layout: Layout::of(&viewer),
            webhook_id: text(&m["webhook_id"]),
            subscription_id: text(&m["subscription_id"]),
        },
    )
}

#[derive(Deserialize)]
pub(super) struct ResendForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    subscription_id: String,
}

/// `POST .../resend`: the API's resend, then back to the message.
pub(super) async fn resend(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(webhook_id): Path<String>,
    Form(form): Form<ResendForm>,
) -> Response {
    let path = super::seg(&webhook_id);
    if let Some(refused) = check_change(&api, &viewer, &form.csrf) {
        return refused;
    }
    let which = Which {
        subscription_id: form.subscription_id,
        done: String::new(),
    };
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, body) = call
        .post(
            &format!("/v1/messages/{path}/resend{}", which.query()),
            None,
        )
        .await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &body);
    }
    let back = url::form_urlencoded::Serializer::new(format!("/console/messages/{path}?"))
        .append_pair("subscription_id", &which.subscription_id)
        .append_pair("done", "resent")
        .finish();
    Redirect::to(&back).into_response()
}
