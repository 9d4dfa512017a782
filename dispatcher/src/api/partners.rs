//! A partner as a whole: disconnect (operator only) and reconnect every subscription of
//! it at once; its events wait in Kafka meanwhile.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;

use super::auth::{Admin, Caller};
use super::error::{body, ApiError};
use super::subscriptions::View;
use super::ApiState;
use crate::subscriptions::Subscription;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    reason: Option<String>,
}

/// Stops delivery to every subscription of the partner; its events wait in Kafka until
/// it is reconnected. Admin only (the dispatcher also does it to a partner failing
/// past `--disconnect-after-ms`).
pub(super) async fn disconnect(
    State(api): State<ApiState>,
    Admin(caller): Admin,
    Path(partner): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: DisconnectRequest = body(&bytes)?;
    let reason = request
        .reason
        .unwrap_or_else(|| "disconnected by an operator".into());
    let mark = crate::subscriptions::Disconnected {
        at: Utc::now(),
        reason,
        by: caller.name(),
    };
    set_connected(api, caller, partner, Some(mark)).await
}

/// Resumes delivery to every subscription of the partner: the events kept while it was
/// disconnected arrive in order. The admin or the partner itself.
pub(super) async fn reconnect(
    State(api): State<ApiState>,
    caller: Caller,
    Path(partner): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // (Within the write limit before the code is checked: the limit bounds guesses.)
    api.allow_write(&caller)?;
    super::second_factor::code_in(&headers)?;
    if caller.sees(&partner) {
        api.second_factor(&caller, &partner, "reconnect", &partner, &headers)
            .await?;
    }
    set_connected(api, caller, partner, None).await
}

async fn set_connected(
    api: ApiState,
    caller: Caller,
    partner: String,
    mark: Option<crate::subscriptions::Disconnected>,
) -> Result<Response, ApiError> {
    let mine: Vec<Arc<Subscription>> = api
        .table
        .all()
        .into_iter()
        .filter(|s| s.partner_id == partner && caller.sees(&s.partner_id))
        // (A stream is read, not sent: there is nothing to disconnect.)
        .filter(|s| !s.is_stream())
        // An internal subscription is the admin's to change (`ApiState::changeable`).
        .filter(|s| !s.internal || caller == Caller::Admin)
        .collect();
    if mine.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no subscriptions of partner `{partner}`"),
        ));
    }
    let action = if mark.is_some() {
        "disconnect"
    } else {
        "reconnect"
    };
    let mut views = Vec::new();
    for s in mine {
        let before = s.disconnected.clone();
        let mut changed = (*s).clone();
        changed.disconnected = mark.clone();
        let details = serde_json::json!({ "was": before, "now": mark });
        let s = api
            .audited_save(
                &caller,
                action,
                Some((&s, &["disconnected"])),
                changed,
                details,
            )
            .await?;
        views.push(View::from(&s));
    }
    Ok(Json(serde_json::json!({ "subscriptions": views })).into_response())
}
