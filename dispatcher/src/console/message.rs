//! One message: its attempts (what the partner's server answered, escaped), and its
//! resend (a confirmation, then the API's resend).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::Value;

use super::entry::check_change;
use super::pages::{api_failure, render, text, Layout};
use super::{ApiCall, Viewer};
use crate::api::ApiState;

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
