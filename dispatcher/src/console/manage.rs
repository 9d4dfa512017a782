//! The console's changes to a subscription beyond pause and resume: its URL and event
//! types, its signing secret, and recovering what was dead-lettered (a dry run's count
//! first, then the confirmed recover). Each is the partner API's own operation, with
//! its checks and audit; each needs a `manage` session and the session's CSRF token.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::entry::check_change;
use super::pages::{api_failure, notice, render, text, Layout};
use super::{ApiCall, Viewer};
use crate::api::ApiState;

/// The fields of a posted form, repeated ones (`event_types`) kept.
pub(super) fn fields(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

pub(super) fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// `POST /console/subscriptions/{id}/edit`: the URL, the event types and the payload
/// filter (`PATCH /v1/subscriptions/{id}`, which checks them as the API always does).
pub(super) async fn edit(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let path = super::seg(&id);
    let form = fields(&body);
    if let Some(refused) = check_change(&api, &viewer, field(&form, "csrf")) {
        return refused;
    }
    let event_types: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "event_types")
        .map(|(_, v)| v.as_str())
        .collect();
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, answer) = call
        .patch(
            &format!("/v1/subscriptions/{path}"),
            json!({
                "url": field(&form, "url"),
                "event_types": event_types,
                // (Empty removes it.)
                "filter": field(&form, "filter").trim(),
            }),
            field(&form, "second_factor"),
        )
        .await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &answer);
    }
    Redirect::to(&format!("/console/subscriptions/{path}")).into_response()
}

#[derive(Template)]
#[template(path = "secret.html")]
struct SecretPage {
    layout: Layout,
    id: String,
    secret: String,
    previous_until: String,
}

/// `POST /console/subscriptions/{id}/rotate`: a new signing secret, shown once; the
/// previous ones keep signing beside it for the overlap.
pub(super) async fn rotate(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let path = super::seg(&id);
    let form = fields(&body);
    if let Some(refused) = check_change(&api, &viewer, field(&form, "csrf")) {
        return refused;
    }
    let Ok(hours) = field(&form, "overlap_hours").trim().parse::<u64>() else {
        return notice(
            StatusCode::UNPROCESSABLE_ENTITY,
            Layout::of(&viewer),
            "That did not work",
            "overlap_hours: a whole number of hours (0 to 720)",
        );
    };
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, answer) = call
        .post_with_code(
            &format!("/v1/subscriptions/{path}/rotate-secret"),
            Some(json!({ "overlap_secs": hours.saturating_mul(3600) })),
            field(&form, "second_factor"),
        )
        .await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &answer);
    }
    render(
        StatusCode::OK,
        SecretPage {
            layout: Layout::of(&viewer),
            id,
            secret: text(&answer["secret"]),
            previous_until: text(&answer["previous_secrets_until"]),
        },
    )
}

#[derive(Template)]
#[template(path = "recover.html")]
struct RecoverPage {
    layout: Layout,
    id: String,
    since: String,
    until: String,
    matched: u64,
    already: u64,
    settled: u64,
    count: u64,
}

/// `POST /console/subscriptions/{id}/recover`: without `confirm`, the dry run's count
/// and a button to send them; with it, the recover (each message once, audited).
pub(super) async fn recover(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let path = super::seg(&id);
    let form = fields(&body);
    if let Some(refused) = check_change(&api, &viewer, field(&form, "csrf")) {
        return refused;
    }
    let (since, until) = (field(&form, "since").trim(), field(&form, "until").trim());
    let confirmed = field(&form, "confirm") == "yes";
    let mut request = json!({ "since": since, "dry_run": !confirmed });
    if !until.is_empty() {
        request["until"] = until.into();
    }
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, answer) = call
        .post(&format!("/v1/subscriptions/{path}/recover"), Some(request))
        .await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &answer);
    }
    let n = |k: &str| answer[k].as_u64().unwrap_or(0);
    if confirmed {
        let sent = n("count");
        let mut layout = Layout::of(&viewer);
        layout.flash = Some(format!(
            "Recovered: {sent} message{} sent again with {} original webhook-id.",
            if sent == 1 { "" } else { "s" },
            if sent == 1 { "its" } else { "their" }
        ));
        return notice(
            StatusCode::OK,
            layout,
            "Recover done",
            "Their new attempts appear in the delivery log, with trigger recover.",
        );
    }
    render(
        StatusCode::OK,
        RecoverPage {
            layout: Layout::of(&viewer),
            id,
            since: since.to_string(),
            until: until.to_string(),
            matched: n("matched"),
            already: n("already_recovered"),
            settled: n("no_longer_dead_lettered"),
            count: n("count"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_keeps_its_repeated_fields() {
        let form = fields(b"csrf=t&event_types=order.created&event_types=order.cancelled&url=https%3A%2F%2Fa.example%2Fh");
        assert_eq!(field(&form, "url"), "https://a.example/h");
        assert_eq!(field(&form, "missing"), "");
        let types: Vec<_> = form.iter().filter(|(k, _)| k == "event_types").collect();
        assert_eq!(types.len(), 2);
    }
}
