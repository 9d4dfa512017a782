//! The operators' pages: a partner's dead letters, and their replay (a dry run's count
//! first, then the confirmed replay), through the admin API (`api/dead_letters.rs`);
//! the audit trail (`api/audit.rs`). A partner's session gets the API's 403.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::entry::check_change;
use super::manage::{field, fields};
use super::pages::{api_failure, notice, render, text, Layout};
use super::{seg, ApiCall, Viewer};
use crate::api::ApiState;

struct Row {
    place: String,
    /// The record's page.
    href: String,
    at: String,
    event_type: String,
    order_id: String,
    subscription_id: String,
    status: String,
    reason: String,
    state: String,
}

#[derive(Template)]
#[template(path = "dead_letters.html")]
struct DeadLetters {
    layout: Layout,
    partner: String,
    total: u64,
    pending: u64,
    by_reason: Vec<(String, String)>,
    items: Vec<Row>,
}

pub(super) async fn dead_letters(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(partner): Path<String>,
) -> Response {
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, v) = call
        .get(&format!(
            "/v1/admin/partners/{}/dead-letters",
            seg(&partner)
        ))
        .await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &v);
    }
    let items = v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|d| Row {
                    place: format!("{}/{}", text(&d["partition"]), text(&d["offset"])),
                    href: format!(
                        "/console/partners/{}/dead-letters/{}/{}",
                        seg(&partner),
                        text(&d["partition"]),
                        text(&d["offset"])
                    ),
                    at: text(&d["dead_lettered_at"]),
                    event_type: text(&d["event_type"]),
                    order_id: text(&d["order_id"]),
                    subscription_id: text(&d["subscription_id"]),
                    status: text(&d["status"]),
                    reason: text(&d["reason"]),
                    state: text(&d["state"]),
                })
                .collect()
        })
        .unwrap_or_default();
    let by_reason = v["pending_by_reason"]
        .as_object()
        .map(|m| m.iter().map(|(k, n)| (k.clone(), text(n))).collect())
        .unwrap_or_default();
    render(
        StatusCode::OK,
        DeadLetters {
            layout: Layout::of(&viewer),
            partner,
            total: v["total"].as_u64().unwrap_or(0),
            pending: v["pending"].as_u64().unwrap_or(0),
            by_reason,
            items,
        },
    )
}

#[derive(Template)]
#[template(path = "replay.html")]
struct ReplayPage {
    layout: Layout,
    partner: String,
    reason: String,
    since: String,
    until: String,
    matched: u64,
    already: u64,
    count: u64,
}

/// `request` without its empty fields: a form's empty field is one not given.
fn given(mut request: Value) -> Value {
    if let Some(fields) = request.as_object_mut() {
        fields.retain(|_, v| v.as_str() != Some(""));
    }
    request
}

/// Without `confirm`, the dry run's count and a button; with it, the replay.
pub(super) async fn replay(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(partner): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let form = fields(&body);
    if let Some(refused) = check_change(&api, &viewer, field(&form, "csrf")) {
        return refused;
    }
    let (reason, since, until) = (
        field(&form, "reason").trim(),
        field(&form, "since").trim(),
        field(&form, "until").trim(),
    );
    let confirmed = field(&form, "confirm") == "yes";
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, answer) = call
        .post(
            &format!("/v1/admin/partners/{}/dead-letters/replay", seg(&partner)),
            Some(given(json!({
                "dry_run": !confirmed,
                "reason": reason,
                "since": since,
                "until": until,
            }))),
        )
        .await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &answer);
    }
    let n = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    if confirmed {
        let mut layout = Layout::of(&viewer);
        layout.flash = Some(format!(
            "Replayed: {} dead letters of {partner} sent back to its delivery topic.",
            n(&answer, "count")
        ));
        return notice(
            StatusCode::OK,
            layout,
            "Replay done",
            "Their attempts appear in the delivery log with trigger replay; the audit trail has the operation.",
        );
    }
    render(
        StatusCode::OK,
        ReplayPage {
            layout: Layout::of(&viewer),
            partner,
            reason: reason.to_string(),
            since: since.to_string(),
            until: until.to_string(),
            matched: n(&answer, "matched"),
            already: n(&answer, "already_handled"),
            count: n(&answer, "count"),
        },
    )
}

struct AuditRow {
    at: String,
    actor: String,
    action: String,
    partner: String,
    subject: String,
    details: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    partner: String,
    actor: String,
    items: Vec<AuditRow>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct AuditFilters {
    #[serde(default)]
    partner: String,
    #[serde(default)]
    actor: String,
}

pub(super) async fn audit(
    State(api): State<ApiState>,
    viewer: Viewer,
    Query(filters): Query<AuditFilters>,
) -> Response {
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let query = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("partner", &filters.partner)
        .append_pair("actor", &filters.actor)
        .finish();
    let (status, v) = call.get(&format!("/v1/admin/audit?{query}")).await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &v);
    }
    let items = v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|a| AuditRow {
                    at: text(&a["at"]),
                    actor: text(&a["actor"]),
                    action: text(&a["action"]),
                    partner: text(&a["partner"]),
                    subject: text(&a["subject"]),
                    details: a["details"].to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    render(
        StatusCode::OK,
        AuditPage {
            layout: Layout::of(&viewer),
            partner: filters.partner,
            actor: filters.actor,
            items,
        },
    )
}

#[derive(Template)]
#[template(path = "dead_letter.html")]
struct DeadLetterPage {
    layout: Layout,
    partner: String,
    place: String,
    at: String,
    event_type: String,
    order_id: String,
    webhook_id: String,
    subscription_id: String,
    reason: String,
    state: String,
    handled: Option<String>,
    headers: Vec<(String, String)>,
    /// What was to be sent (our body, but shown escaped all the same).
    payload: String,
}

/// One dead letter in full.
pub(super) async fn dead_letter(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path((partner, partition, offset)): Path<(String, String, String)>,
) -> Response {
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, d) = call
        .get(&format!(
            "/v1/admin/partners/{}/dead-letters/{}/{}",
            seg(&partner),
            seg(&partition),
            seg(&offset)
        ))
        .await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &d);
    }
    let payload = match serde_json::from_str::<Value>(d["payload"].as_str().unwrap_or_default()) {
        Ok(json) => serde_json::to_string_pretty(&json).unwrap_or_default(),
        Err(_) => text(&d["payload"]),
    };
    render(
        StatusCode::OK,
        DeadLetterPage {
            layout: Layout::of(&viewer),
            partner,
            place: format!("{partition}/{offset}"),
            at: text(&d["dead_lettered_at"]),
            event_type: text(&d["event_type"]),
            order_id: text(&d["order_id"]),
            webhook_id: text(&d["webhook_id"]),
            subscription_id: text(&d["subscription_id"]),
            reason: text(&d["reason"]),
            state: text(&d["state"]),
            handled: d["handled"].is_object().then(|| {
                format!(
                    "{} at {} by {} (operation {})",
                    text(&d["handled"]["action"]),
                    text(&d["handled"]["at"]),
                    text(&d["handled"]["operator"]),
                    text(&d["handled"]["operation"])
                )
            }),
            headers: d["headers"]
                .as_object()
                .map(|h| h.iter().map(|(k, v)| (k.clone(), text(v))).collect())
                .unwrap_or_default(),
            payload,
        },
    )
}
