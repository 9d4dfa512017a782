//! Proof that a URL's owner wants our events (#25): a new subscription, or a URL change,
//! is `pending_verification` until its endpoint answers a challenge, a signed POST of
//! event type `webhook.endpoint_verification` whose `data.challenge` it must send back
//! (`200`, `{"challenge": "<the same value>"}`) within `answer_timeout`.
//!
//! - Every API instance runs a verifier over the subscriptions table: a pending check is
//!   tried at once, then with backoff (1 s doubling to 1 min) until `window` has passed
//!   since it started; then it is `verification_failed`. A restart goes on with what
//!   the topic holds. With several instances, each may send the challenge: it is
//!   idempotent, and the first answer written wins.
//! - The result is written to the subscription only when the subscription still waits
//!   for that check (same URL, same start): a later change is never overwritten.
//! - Meanwhile the dispatcher delivers to `verification.previous_url` (a URL change), or
//!   holds the events (a new subscription): `Subscription::delivery_url`.
//! - The API shows a check as `VerificationView`, and `POST /v1/subscriptions/{id}/verify`
//!   ([`verify`]) starts one again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::auth::Caller;
use super::error::ApiError;
use super::subscriptions::View;
use super::ApiState;
use crate::subscriptions::{Subscription, Verification, VerificationState};
use crate::webhook::client::{Webhook, WebhookClient};
use crate::webhook::outcome::Attempt;

/// The event type of the challenge.
pub const EVENT_TYPE: &str = "webhook.endpoint_verification";
/// The audit trail's actor for the verifier's results.
const ACTOR: &str = "endpoint-verifier";
/// Challenges sent at once by one instance.
const CONCURRENCY: usize = 16;

/// The API's endpoint verifier: its settings and what it is doing.
#[derive(Debug)]
pub struct Verifier {
    client: WebhookClient,
    /// New URLs must be verified (`--require-endpoint-verification`).
    pub require: bool,
    /// How long a check is retried before it fails.
    pub window: Duration,
    /// How long an endpoint has to answer one challenge.
    pub answer_timeout: Duration,
    /// Per subscription id: the check being retried here (its start), the next try,
    /// and the delay after it.
    schedule: Mutex<HashMap<String, Retry>>,
    kick: tokio::sync::Notify,
    permits: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, Clone)]
struct Retry {
    since: chrono::DateTime<Utc>,
    url: String,
    next: Instant,
    delay: Duration,
    running: bool,
}

impl Verifier {
    pub fn new(
        client: WebhookClient,
        require: bool,
        window: Duration,
        answer_timeout: Duration,
    ) -> Self {
        Self {
            client,
            require,
            window,
            answer_timeout,
            schedule: Mutex::default(),
            kick: tokio::sync::Notify::new(),
            permits: Arc::new(tokio::sync::Semaphore::new(CONCURRENCY)),
        }
    }

    /// A new check of `s.url` starting now (a new subscription, a URL change, or a
    /// retry asked for), or `None` when verification is off. `previous`: the URL in
    /// force before (it keeps receiving until `s.url` is verified).
    pub fn start(&self, url: &str, previous: Option<&Subscription>) -> Option<Verification> {
        // (The previous URL with its own CA: the one it was reached with.)
        let in_force = previous.and_then(|p| {
            p.delivery_url()
                .map(|u| (u.to_string(), p.delivery_ca_pem().map(str::to_string)))
        });
        self.require.then(|| Verification {
            state: VerificationState::PendingVerification,
            url: Some(url.to_string()),
            previous_tls: in_force.as_ref().and_then(|(_, ca)| {
                ca.clone()
                    .map(|pem| crate::subscriptions::EndpointTls { ca_pem: Some(pem) })
            }),
            previous_url: in_force.map(|(u, _)| u),
            since: Utc::now(),
            verified_at: None,
            last_error: None,
        })
    }

    /// Looks at the table now (after a change that starts a check).
    pub fn wake(&self) {
        self.kick.notify_one();
    }

    /// Sends one challenge to `s.url`: `Ok` when it answered right, else why not.
    pub async fn challenge(&self, s: &Subscription) -> Result<(), String> {
        let value = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let body = serde_json::json!({
            "type": EVENT_TYPE,
            "timestamp": Utc::now().to_rfc3339(),
            "data": {
                "challenge": value,
                "subscription_id": s.id,
                "partner_id": s.partner_id,
                "url": s.url,
            },
        });
        let body = bytes::Bytes::from(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
        let url = reqwest::Url::parse(&s.url).map_err(|e| format!("bad URL: {e}"));
        let keys = s.signing_keys();
        let ca = s
            .ca_pem()
            .map(crate::webhook::tls::TrustedCa::parse)
            .transpose()
            .map_err(|e| format!("tls.ca_pem {e}"))?;
        let id = format!("verify_{}", uuid::Uuid::new_v4().simple());
        let report = self
            .client
            .send(&Webhook {
                url: &url,
                id: &id,
                body: &body,
                secrets: &keys[..s.active_keys(Utc::now()).min(keys.len())],
                traceparent: None,
                timeout: self.answer_timeout,
                ca: ca.as_ref(),
            })
            .await;
        match report.attempt {
            Attempt::Status { status: 200, .. } => {
                let answer: Option<serde_json::Value> = report
                    .excerpt
                    .as_deref()
                    .and_then(|text| serde_json::from_str(text).ok());
                match answer.as_ref().and_then(|a| a.get("challenge")) {
                    Some(serde_json::Value::String(c)) if *c == value => Ok(()),
                    Some(_) => Err("answered 200 with a different challenge".into()),
                    None => Err(
                        "answered 200 without the challenge (expected the JSON body {\"challenge\": \"<data.challenge>\"})"
                            .into(),
                    ),
                }
            }
            Attempt::Status { status, .. } => Err(format!(
                "answered {status} (expected 200 with the challenge)"
            )),
            Attempt::Transport(text) | Attempt::Refused(text) => {
                let class = crate::attempts::transport_class(&text);
                let class = if class == "timeout" {
                    format!("timeout: no answer within {:?}", self.answer_timeout)
                } else {
                    class.to_string()
                };
                let mut text = format!("{class}: {text}");
                crate::attempts::truncate(&mut text, 512);
                Err(text)
            }
        }
    }
}

/// Runs `api`'s verifier until `stop`: every pending check due is tried (at most
/// [`CONCURRENCY`] at once), its result written to the subscription.
pub async fn run(api: ApiState, stop: CancellationToken) {
    let Some(verifier) = api.verifier.clone() else {
        return;
    };
    let mut changes = api.table.watch();
    loop {
        changes.borrow_and_update();
        let due = due(&api, &verifier);
        for s in due {
            let Ok(permit) = Arc::clone(&verifier.permits).acquire_owned().await else {
                return;
            };
            let (api, verifier) = (api.clone(), Arc::clone(&verifier));
            tokio::spawn(async move {
                let _permit = permit;
                let result = verifier.challenge(&s).await;
                settle(&api, &verifier, &s, result).await;
                verifier.wake();
            });
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = verifier.kick.notified() => {}
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// The pending checks whose next try is due, marked running.
fn due(api: &ApiState, verifier: &Verifier) -> Vec<Arc<Subscription>> {
    let now = Instant::now();
    let mut schedule = verifier.schedule.lock().unwrap_or_else(|p| p.into_inner());
    let pending: Vec<Arc<Subscription>> = api
        .table
        .all()
        .into_iter()
        .filter(|s| {
            s.verification
                .as_ref()
                .is_some_and(|v| v.state == VerificationState::PendingVerification)
        })
        .collect();
    // Checks that ended (verified, failed, deleted, changed) are forgotten.
    schedule.retain(|id, r| {
        r.running
            || pending.iter().any(|s| {
                &s.id == id
                    && s.url == r.url
                    && s.verification.as_ref().map(|v| v.since) == Some(r.since)
            })
    });
    let mut due = Vec::new();
    for s in pending {
        let Some(v) = &s.verification else { continue };
        let entry = schedule.entry(s.id.clone()).or_insert_with(|| Retry {
            since: v.since,
            url: s.url.clone(),
            next: now,
            delay: Duration::from_secs(1),
            running: false,
        });
        if entry.since != v.since || entry.url != s.url {
            if entry.running {
                continue;
            }
            *entry = Retry {
                since: v.since,
                url: s.url.clone(),
                next: now,
                delay: Duration::from_secs(1),
                running: false,
            };
        }
        if !entry.running && entry.next <= now {
            entry.running = true;
            due.push(s);
        }
    }
    due
}

/// Writes what one challenge of `s` found, if `s` still waits for that check: verified,
/// or failed once the window has passed (else the next try is scheduled).
async fn settle(api: &ApiState, verifier: &Verifier, s: &Subscription, result: Result<(), String>) {
    let Some(v) = s.verification.clone() else {
        return;
    };
    let elapsed = (Utc::now() - v.since).to_std().unwrap_or_default();
    let change = match &result {
        Ok(()) => Some(Verification {
            state: VerificationState::Verified,
            url: Some(s.url.clone()),
            previous_url: None,
            previous_tls: None,
            since: v.since,
            verified_at: Some(Utc::now()),
            last_error: None,
        }),
        Err(why) if elapsed >= verifier.window => Some(Verification {
            state: VerificationState::VerificationFailed,
            last_error: Some(why.clone()),
            ..v.clone()
        }),
        // Written when the reason changes (each write wakes every dispatcher's held
        // records), so the API shows why it is still pending.
        Err(why) if v.last_error.as_deref() != Some(why) => Some(Verification {
            last_error: Some(why.clone()),
            ..v.clone()
        }),
        Err(_) => None,
    };
    let outcome = match (&result, change.as_ref().map(|c| c.state)) {
        (Ok(()), _) => "verified",
        (Err(_), Some(VerificationState::VerificationFailed)) => "verification_failed",
        (Err(_), _) => "failed_attempt",
    };
    metrics::counter!(crate::metrics::ENDPOINT_VERIFICATIONS, "outcome" => outcome).increment(1);
    let written = match change {
        Some(change) => write(api, s, &v, change, &result).await,
        None => Ok(()),
    };
    if let Err(error) = &written {
        tracing::warn!(subscription = %s.id, %error, "the endpoint verification's result was not written; it is tried again");
    }
    let mut schedule = verifier.schedule.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = schedule.get_mut(&s.id) {
        r.running = false;
        if r.since == v.since {
            r.next = Instant::now() + r.delay;
            r.delay = (r.delay * 2).min(Duration::from_secs(60));
        }
    }
}

/// Writes `change` onto the latest version of `s` when it still waits for the check
/// started at `started.since` of the same URL; audits verified and failed.
async fn write(
    api: &ApiState,
    s: &Subscription,
    started: &Verification,
    change: Verification,
    result: &Result<(), String>,
) -> anyhow::Result<()> {
    let lock = api.table.write_lock(Duration::from_secs(5)).await?;
    let Some(latest) = lock.catch_up(&s.id).await? else {
        return Ok(());
    };
    let same_check = latest.url == s.url
        && latest.verification.as_ref().is_some_and(|l| {
            l.since == started.since
                && l.url == started.url
                && l.state == VerificationState::PendingVerification
        });
    if !same_check {
        return Ok(());
    }
    let state = change.state;
    let mut next = (*latest).clone();
    next.verification = Some(change);
    if state != VerificationState::PendingVerification {
        let (action, details) = match result {
            Ok(()) => ("endpoint-verified", serde_json::json!({ "url": s.url })),
            Err(why) => (
                "endpoint-verification-failed",
                serde_json::json!({ "url": s.url, "error": why }),
            ),
        };
        api.audit.record(ACTOR, action, &next, details).await?;
        match result {
            Ok(()) => {
                tracing::info!(subscription = %s.id, partner = %s.partner_id, "endpoint verified: deliveries go to its URL")
            }
            Err(why) => {
                tracing::warn!(subscription = %s.id, partner = %s.partner_id, error = %why, "endpoint verification failed: the URL is not used")
            }
        }
    }
    lock.write(&api.writer, &api.subscriptions_topic, &next.id, Some(&next))
        .await
}

// ---- What the API shows of a check, and asking for one again ----

#[derive(Debug, Serialize)]
pub(super) struct VerificationView {
    state: &'static str,
    /// Where events go while `url` is not verified: the previous verified URL, or
    /// nowhere (a new subscription's events wait in Kafka).
    #[serde(skip_serializing_if = "Option::is_none")]
    delivering_to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verified_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

impl From<&Subscription> for VerificationView {
    fn from(s: &Subscription) -> Self {
        let time = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        match &s.verification {
            None => Self {
                state: VerificationState::Verified.name(),
                delivering_to: None,
                since: None,
                verified_at: None,
                last_error: None,
            },
            Some(v) => Self {
                state: v.state.name(),
                delivering_to: (v.state != VerificationState::Verified)
                    .then(|| v.previous_url.clone())
                    .flatten(),
                since: Some(time(v.since)),
                verified_at: v.verified_at.map(time),
                last_error: v.last_error.clone(),
            },
        }
    }
}

/// `POST /v1/subscriptions/{id}/verify`: checks the URL again now (after
/// `verification_failed`, or to hurry a pending check); a verified URL stays verified.
pub(super) async fn verify(
    State(api): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let current = api.changeable(&caller, &id)?;
    api.allow_write(&caller)?;
    let Some(verifier) = api.verifier.clone() else {
        return Ok(Json(View::from(current.as_ref())).into_response());
    };
    let Some(v) = current
        .verification
        .clone()
        .filter(|v| v.state != VerificationState::Verified)
    else {
        return Ok(Json(View::from(current.as_ref())).into_response());
    };
    let mut s = (*current).clone();
    s.verification = Some(Verification {
        state: VerificationState::PendingVerification,
        since: Utc::now(),
        last_error: None,
        ..v
    });
    let details = serde_json::json!({ "url": s.url });
    let s = api
        .audited_save(
            &caller,
            "verify-endpoint",
            Some((&current, &["verification"])),
            s,
            details,
        )
        .await?;
    verifier.wake();
    Ok((StatusCode::ACCEPTED, Json(View::from(&s))).into_response())
}
