//! The console's filter test (#26): a filter tried against the partner's latest events
//! of the subscription's types (`POST /v1/subscriptions/{id}/filter-test`), nothing
//! changed. Any session may try one (it reads only); the form carries the CSRF token.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Value};

use super::entry::check_csrf;
use super::manage::{field, fields};
use super::pages::{api_failure, notice, render, text, Layout};
use super::{ApiCall, Viewer};
use crate::api::ApiState;

struct Tried {
    id: String,
    event_type: String,
    order_id: String,
    timestamp: String,
    /// `matches`, `no match` or `failed`.
    outcome: &'static str,
    /// Its style: `delivered`, `dropped` or `dead_lettered` (as the log's statuses).
    class: &'static str,
    /// Why the filter failed on this event (empty: it did not).
    error: String,
}

#[derive(Template)]
#[template(path = "filter_test.html")]
struct FilterTestPage {
    layout: Layout,
    id: String,
    filter: String,
    last: u64,
    matched: u64,
    results: Vec<Tried>,
}

/// `POST /console/subscriptions/{id}/filter-test`.
pub(super) async fn filter_test(
    State(api): State<ApiState>,
    viewer: Viewer,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let path = super::seg(&id);
    let form = fields(&body);
    if let Some(refused) = check_csrf(&api, &viewer, field(&form, "csrf")) {
        return refused;
    }
    let Ok(last) = field(&form, "last").trim().parse::<u64>() else {
        return notice(
            StatusCode::UNPROCESSABLE_ENTITY,
            Layout::of(&viewer),
            "That did not work",
            "last: a whole number of events (1 to 100)",
        );
    };
    let filter = field(&form, "filter").to_string();
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, answer) = call
        .post(
            &format!("/v1/subscriptions/{path}/filter-test"),
            Some(json!({ "filter": filter, "last": last })),
        )
        .await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &answer);
    }
    let results = answer["results"]
        .as_array()
        .map(|r| r.iter().map(tried).collect())
        .unwrap_or_default();
    render(
        StatusCode::OK,
        FilterTestPage {
            layout: Layout::of(&viewer),
            id,
            filter,
            last,
            matched: answer["matched"].as_u64().unwrap_or(0),
            results,
        },
    )
}

fn tried(r: &Value) -> Tried {
    let error = r["error"].as_str().unwrap_or_default().to_string();
    let (outcome, class) = if !error.is_empty() {
        ("failed", "dead_lettered")
    } else if r["matched"] == true {
        ("matches", "delivered")
    } else {
        ("no match", "dropped")
    };
    Tried {
        id: text(&r["id"]),
        event_type: text(&r["type"]),
        order_id: text(&r["order_id"]),
        timestamp: text(&r["timestamp"]),
        outcome,
        class,
        error,
    }
}
