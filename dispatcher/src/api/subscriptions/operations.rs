//! Operations on one subscription beside its update: a new signing secret, pause and
//! resume (audited, as every change).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SecondsFormat, Utc};
use serde::Deserialize;

use super::super::auth::Caller;
use super::super::error::{body, ApiError};
use super::super::ApiState;
use super::View;
use crate::subscriptions::Subscription;
use crate::webhook::signing::Secret;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the previous secrets keep signing next to the new one. Default 24 h.
    overlap_secs: Option<u64>,
}

pub(in crate::api) async fn rotate(
    State(api): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let current = api.changeable(&caller, &id)?;
    not_a_stream(
        &current,
        "has no signing secret (its events are read with your token)",
    )?;
    api.allow_write(&caller)?;
    let request: RotateRequest = body(&bytes)?;
    let overlap = request.overlap_secs.unwrap_or(86_400);
    if overlap > 30 * 86_400 {
        return Err(ApiError::field("overlap_secs", "at most 30 days (2592000)"));
    }
    api.second_factor(&caller, &current.partner_id, "rotate-secret", &id, &headers)
        .await?;
    let mut s = (*current).clone();
    let now = Utc::now();
    // Secrets past an earlier overlap window are dropped; the new one signs first.
    let keep = s.active_keys(now);
    s.secrets.truncate(keep);
    let secret = Secret::generate();
    s.secrets.insert(0, secret.clone());
    s.secrets.truncate(5);
    let until = now + chrono::Duration::seconds(overlap as i64);
    s.previous_secrets_until = Some(until);
    let details = serde_json::json!({ "previous_secrets_until": until.to_rfc3339_opts(SecondsFormat::Secs, true) });
    api.audited_save(
        &caller,
        "rotate-secret",
        Some((&current, &["secrets", "previous_secrets_until"])),
        s,
        details,
    )
    .await?;
    Ok(Json(serde_json::json!({
        "secret": secret,
        "previous_secrets_until": until.to_rfc3339_opts(SecondsFormat::Secs, true),
    }))
    .into_response())
}

/// 409 for an operation a stream subscription has no use for.
fn not_a_stream(s: &Subscription, why: &str) -> Result<(), ApiError> {
    if s.is_stream() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("`{}` is a stream subscription: it {why}", s.id),
        ));
    }
    Ok(())
}

async fn set_paused(
    api: ApiState,
    caller: Caller,
    id: String,
    paused: bool,
) -> Result<Response, ApiError> {
    let current = api.changeable(&caller, &id)?;
    not_a_stream(
        &current,
        "is not paused: its events wait in the stream; close your stream to stop reading",
    )?;
    api.allow_write(&caller)?;
    let mut s = (*current).clone();
    s.paused = paused;
    let action = if paused { "pause" } else { "resume" };
    let s = api
        .audited_save(
            &caller,
            action,
            Some((&current, &["paused"])),
            s,
            serde_json::json!({}),
        )
        .await?;
    Ok(Json(View::from(&s)).into_response())
}

pub(in crate::api) async fn pause(
    State(api): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(api, caller, id, true).await
}

pub(in crate::api) async fn resume(
    State(api): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(api, caller, id, false).await
}
