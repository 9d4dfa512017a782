//! `POST /v1/subscriptions/{id}/recover`: the dead letters of a window, sent again
//! through the dead-letter ledger (`dispatcher dlq replay`), but not those the delivery
//! log shows delivered since.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::messages::{on_view_anyhow, time_of};
use super::ApiState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecoverRequest {
    since: String,
    until: Option<String>,
    #[serde(default)]
    dry_run: bool,
}

/// `POST /v1/subscriptions/{id}/recover`: every message of the subscription that was
/// dead-lettered in the window and not replayed yet, sent again through the same
/// ledger and audit as `dispatcher dlq replay` (each once; a second recover of the same
/// window sends nothing again), with its original webhook-id. `dry_run` answers the
/// count and changes nothing.
pub(super) async fn recover(
    State(api): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let subscription = api.changeable(&caller, &id)?;
    let request: RecoverRequest = super::error::body(&bytes)?;
    let since = time_of("since", &Some(request.since.clone()), ApiError::field)?;
    let until = time_of("until", &request.until, ApiError::field)?;
    if let (Some(s), Some(u)) = (since, until) {
        if u <= s {
            return Err(ApiError::field("until", "must be after `since`"));
        }
    }
    // (A dry run reads the whole dead-letter topic and ledger: limited as a change.)
    api.allow_write(&caller)?;
    // One replay of a partner's dead letters at a time on this instance (a recover, or
    // an operator's replay): two at once would both read the ledger before either
    // wrote it, and send the same records twice. Held by the task until it ends, not
    // by the request (a client that goes away does not free it).
    let Some(running) = Running::start(&api.recovering, &Running::key(&subscription.partner_id))
    else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "a recover or replay of `{}`'s dead letters is running; try again when it is done",
                subscription.partner_id
            ),
        ));
    };
    let filter = crate::dlq::Filter {
        partner: subscription.partner_id.clone(),
        router: false,
        event_type: None,
        reason: None,
        status: None,
        since,
        until,
        partition: None,
        from_offset: None,
        to_offset: None,
        key: None,
        subscription: Some(id.clone()),
    };
    // Not what the log shows delivered since the dead letter (a resend), when it keeps
    // a view; without one, the dead-letter topic and the ledger alone decide.
    let settled = api.log.clone().map(|view| {
        let subscription = id.clone();
        crate::dlq::Settled(Arc::new(move |ids: Vec<String>| {
            let (view, subscription) = (Arc::clone(&view), subscription.clone());
            Box::pin(on_view_anyhow(view, move |v| {
                v.not_dead_lettered(&subscription, &ids)
            }))
        }))
    });
    let run = crate::dlq::RunArgs {
        recover: true,
        settled,
        ..crate::dlq::RunArgs::for_api(request.dry_run, format!("api: {}", caller.name()))
    };
    let topics = crate::dlq::TopicArgs::from_env();
    if !request.dry_run {
        let details = serde_json::json!({ "since": request.since, "until": request.until });
        api.audit(&caller, "recover", &subscription, details)
            .await?;
    }
    // A task of its own: a client that goes away does not stop it between a record's
    // send and its ledger entry.
    let (kafka, table) = (api.kafka.clone(), api.table.clone());
    let replay = tokio::spawn(async move {
        let _running = running;
        crate::dlq::replay_counted(&kafka, table, &filter, &run, &topics).await
    });
    let (_, counts) = replay
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            crate::dlq::DlqError::Refused(why) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", why.0)
            }
            crate::dlq::DlqError::Failed(e) => ApiError::internal(e),
        })?;
    Ok(Json(serde_json::json!({
        "dry_run": request.dry_run,
        "matched": counts.matched,
        "already_recovered": counts.skipped,
        "no_longer_dead_lettered": counts.settled,
        "count": if request.dry_run { counts.todo } else { counts.done },
    }))
    .into_response())
}

/// A recover running on this instance, per subscription; its place is given back when
/// dropped.
pub(super) struct Running {
    set: Arc<Mutex<std::collections::HashSet<String>>>,
    id: String,
}

impl Running {
    /// The key of a partner's dead letters.
    pub(super) fn key(partner: &str) -> String {
        format!("dead-letters/{partner}")
    }

    pub(super) fn start(
        set: &Arc<Mutex<std::collections::HashSet<String>>>,
        id: &str,
    ) -> Option<Self> {
        let fresh = set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string());
        fresh.then(|| Self {
            set: Arc::clone(set),
            id: id.to_string(),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}
