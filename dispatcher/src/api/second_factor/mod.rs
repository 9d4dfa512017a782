//! A second factor for the hazardous operations (#25): a partner enrols a TOTP
//! authenticator (`POST /v1/partners/{p}/totp`, then `.../totp/confirm` with a code);
//! from then on a partner token needs a current code in `X-Second-Factor` (the
//! console: its form field) to create a subscription, change a URL or a CA, rotate a
//! secret, delete a subscription or reconnect, and an operator needs the partner's
//! code to issue a `manage` portal link for it. A stolen partner token alone can then
//! no longer point the partner's orders elsewhere.
//!
//! - A code is accepted once (`store.rs`); wrong ones are limited: after
//!   [`store::MAX_FAILURES`] in 15 minutes the operations answer 429 with Retry-After.
//! - Every outcome is audited (actions `second-factor-*`); errors say what is missing
//!   (`second_factor_required`, `second_factor_invalid`), never how close a code was.
//! - `--require-second-factor`: a partner must enrol before those operations.
//! - An operator resets an enrolment (`POST /v1/admin/partners/{p}/totp/reset`).
//!
//! Operator (admin token) changes do not ask for it, but for the `manage` link: the
//! operator's token is the operator's own control (docs/ARCHITECTURE.md).

pub mod store;
pub mod totp;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::auth::{Admin, Caller};
use super::error::{body, ApiError};
use super::ApiState;
use crate::kafka::{Journal, KafkaSettings};
use store::{EnrolState, Factors, Record};

/// The header a code comes in.
pub const HEADER: &str = "x-second-factor";
/// The default topic.
pub const DEFAULT_TOPIC: &str = "partner-second-factors";

/// The API's second factors: what the topic says, and whether enrolment is required.
#[derive(Debug, Clone)]
pub struct SecondFactors {
    journal: Journal<Factors>,
    /// Partners must enrol before the hazardous operations (`--require-second-factor`).
    pub required: bool,
    /// Per partner: held while one of its codes is checked.
    checking: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

impl SecondFactors {
    /// Makes the topic if missing (compacted, one partition) and reads it.
    pub async fn start(
        settings: &KafkaSettings,
        topic: &str,
        required: bool,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        let journal =
            Journal::start(settings, topic, &[("cleanup.policy", "compact")], stop).await?;
        Ok(Self {
            journal,
            required,
            checking: Arc::default(),
        })
    }

    /// Writes the enrolment in force for `partner` again, after a record of ours that
    /// lost in topic order: the topic's last record is then the state in force, which
    /// is what survives compaction.
    async fn restate(&self, partner: &str) -> Result<(), ApiError> {
        let in_force = self.journal.read(|f| f.in_force(partner).cloned());
        match in_force {
            Some(e) => {
                self.write(Record::Enrolment {
                    partner: partner.to_string(),
                    state: e.state,
                    secret: totp::base32(&e.secret),
                    at: e.at,
                })
                .await
            }
            None => Ok(()),
        }
    }

    /// The lock of `partner`'s checks (forgotten when no check holds it).
    fn checking(&self, partner: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.checking.lock().unwrap_or_else(|p| p.into_inner());
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        Arc::clone(locks.entry(partner.to_string()).or_default())
    }

    async fn write(&self, record: Record) -> Result<(), ApiError> {
        self.journal
            .write(&record.key(), &record)
            .await
            .map_err(ApiError::internal)
    }
}

/// The code in `X-Second-Factor` (empty: none). One that cannot be a code is a
/// malformed request, whoever calls and whatever the operation: 400, and not counted as
/// a wrong code.
pub(crate) fn code_in(headers: &HeaderMap) -> Result<&str, ApiError> {
    match headers.get(HEADER) {
        None => Ok(""),
        Some(v) => match v.to_str().map(str::trim) {
            Ok(c) if c.len() == 6 && c.bytes().all(|b| b.is_ascii_digit()) => Ok(c),
            _ => Err(ApiError::parameter(
                "X-Second-Factor",
                "a code is 6 digits (from the partner's authenticator app)",
            )),
        },
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn invalid() -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "second_factor_invalid",
        "the code is not valid (each code is accepted once)",
    )
}

impl ApiState {
    /// Lets `operation` on `partner`'s data through when its second factor allows it:
    /// no enrolment (and none required), or a current code in `X-Second-Factor` not
    /// used before. Operators pass, but for `issue-manage-portal-link`. `target` names
    /// what the operation is about in the audit trail.
    pub(crate) async fn second_factor(
        &self,
        caller: &Caller,
        partner: &str,
        operation: &str,
        target: &str,
        headers: &HeaderMap,
    ) -> Result<(), ApiError> {
        let Some(factors) = &self.second_factors else {
            return Ok(());
        };
        let code = code_in(headers)?;
        if *caller == Caller::Admin && operation != "issue-manage-portal-link" {
            return Ok(());
        }
        let audit = Outcomes {
            api: self,
            caller,
            partner,
            target,
            operation,
        };
        let confirmed = factors.journal.read(|f| {
            f.enrolment(partner)
                .filter(|e| e.state == EnrolState::Confirmed)
                .map(|e| e.secret.clone())
        });
        let Some(secret) = confirmed else {
            if factors.required {
                audit.note("second-factor-required").await;
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "second_factor_required",
                    format!("partner `{partner}` must enrol a second factor first: POST /v1/partners/{partner}/totp, then /totp/confirm with a code"),
                ));
            }
            return Ok(());
        };
        self.check_code(factors, partner, &secret, code, &audit)
            .await
    }

    /// Checks `code` against `secret`: the lockout first, then the code, then that it
    /// was not used (the claim written and read back); a wrong or used code is counted.
    async fn check_code(
        &self,
        factors: &SecondFactors,
        partner: &str,
        secret: &[u8],
        code: &str,
        audit: &Outcomes<'_>,
    ) -> Result<(), ApiError> {
        // One check of a partner's codes at a time on this instance: parallel requests
        // would all pass the lockout before any of their failures is read back.
        let lock = factors.checking(partner);
        let _checking = lock.lock().await;
        let now = now_ms();
        let failures = factors.journal.read(|f| f.failures(partner, now));
        if failures.len() >= store::MAX_FAILURES {
            audit.note("second-factor-locked").await;
            let oldest = failures.first().copied().unwrap_or(now);
            let wait = (oldest + store::FAILURE_WINDOW_MS - now).max(0) / 1000 + 1;
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "second_factor_locked",
                format!("too many wrong codes for partner `{partner}`: try again in {wait} s"),
            )
            .retry_after(wait as u64));
        }
        if code.is_empty() {
            audit.note("second-factor-required").await;
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "second_factor_required",
                format!("this operation needs a current code of partner `{partner}`'s authenticator in the X-Second-Factor header"),
            ));
        }
        let failed = || async {
            factors
                .write(Record::Failed {
                    partner: partner.to_string(),
                    at: now_ms(),
                })
                .await
        };
        let Some(step) = totp::matching_step(secret, code, now / 1000) else {
            failed().await?;
            audit.note("second-factor-refused").await;
            return Err(invalid());
        };
        let claim = uuid::Uuid::new_v4().simple().to_string();
        factors
            .write(Record::Used {
                partner: partner.to_string(),
                step,
                claim: claim.clone(),
                at: now_ms(),
            })
            .await?;
        if !factors.journal.read(|f| f.accepted(&claim)) {
            failed().await?;
            audit.note("second-factor-replayed").await;
            return Err(invalid());
        }
        audit.note("second-factor-accepted").await;
        Ok(())
    }

    fn factors(&self) -> Result<&SecondFactors, ApiError> {
        self.second_factors.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "second factors are not set up on this API",
            )
        })
    }
}

fn enrolled_already() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "second_factor_enrolled",
        "an authenticator is enrolled already; an operator can reset it",
    )
}

/// The audit trail of one second-factor decision: who, for which partner, about what.
struct Outcomes<'a> {
    api: &'a ApiState,
    caller: &'a Caller,
    partner: &'a str,
    /// What the operation is about (a subscription id, or the partner).
    target: &'a str,
    operation: &'a str,
}

impl<'a> Outcomes<'a> {
    fn of(api: &'a ApiState, caller: &'a Caller, partner: &'a str, operation: &'a str) -> Self {
        Self {
            api,
            caller,
            partner,
            target: partner,
            operation,
        }
    }

    /// Audits `action`; no audit record, no change (503).
    async fn record(&self, action: &str) -> Result<(), ApiError> {
        let details = serde_json::json!({ "operation": self.operation, "partner": self.partner });
        self.api
            .audit
            .record_id(
                &self.caller.name(),
                action,
                self.target,
                Some(self.partner),
                details,
            )
            .await
            .map_err(ApiError::internal)
    }

    /// Audits a refusal or an acceptance: the answer goes out even when the trail does
    /// not answer (logged).
    async fn note(&self, action: &str) {
        if let Err(error) = self.record(action).await {
            tracing::warn!(error = ?error.code, action, "a second-factor outcome was not audited");
        }
    }
}

/// A partner's own token (or the console's partner session), for `partner`.
fn own(caller: &Caller, partner: &str) -> Result<(), ApiError> {
    match caller {
        Caller::Partner(p) if p == partner => Ok(()),
        Caller::Partner(_) => Err(ApiError::not_found(partner)),
        Caller::Admin => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "a partner enrols its own authenticator (with its own token)",
        )),
    }
}

/// `POST /v1/partners/{p}/totp`: a new authenticator secret, shown once as an
/// `otpauth://` URI; enforced once confirmed. Refused (409) while one is confirmed: an
/// operator resets it first.
pub(super) async fn enrol(
    State(api): State<ApiState>,
    caller: Caller,
    Path(partner): Path<String>,
) -> Result<Response, ApiError> {
    own(&caller, &partner)?;
    api.allow_write(&caller)?;
    let factors = api.factors()?;
    let confirmed = factors.journal.read(|f| {
        f.enrolment(&partner)
            .is_some_and(|e| e.state == EnrolState::Confirmed)
    });
    if confirmed {
        return Err(enrolled_already());
    }
    let secret = totp::generate_secret();
    Outcomes::of(&api, &caller, &partner, "enrol-second-factor")
        .record("second-factor-enrol")
        .await?;
    factors
        .write(Record::Enrolment {
            partner: partner.clone(),
            state: EnrolState::Pending,
            secret: totp::base32(&secret),
            at: now_ms(),
        })
        .await?;
    // (An enrolment confirmed meanwhile, on another instance, stays: this one lost.)
    if !factors
        .journal
        .read(|f| f.enrolment(&partner).is_some_and(|e| e.secret == secret))
    {
        factors.restate(&partner).await?;
        return Err(enrolled_already());
    }
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "otpauth_uri": totp::otpauth_uri(&secret, &partner) })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmRequest {
    code: String,
}

/// `POST /v1/partners/{p}/totp/confirm` with `{"code"}`: confirms the pending
/// enrolment with a current code; from then on it is enforced.
pub(super) async fn confirm(
    State(api): State<ApiState>,
    caller: Caller,
    Path(partner): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    own(&caller, &partner)?;
    api.allow_write(&caller)?;
    let request: ConfirmRequest = body(&bytes)?;
    if request.code.len() != 6 || !request.code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::field(
            "code",
            "6 digits, from the authenticator app",
        ));
    }
    let factors = api.factors()?;
    let pending = factors.journal.read(|f| {
        f.enrolment(&partner)
            .filter(|e| e.state == EnrolState::Pending)
            .cloned()
    });
    let Some(pending) = pending else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_enrolment_pending",
            "no authenticator waits for confirmation: POST /v1/partners/{partner}/totp first",
        ));
    };
    let audit = Outcomes::of(&api, &caller, &partner, "confirm-second-factor");
    api.check_code(factors, &partner, &pending.secret, &request.code, &audit)
        .await?;
    factors
        .write(Record::Enrolment {
            partner: partner.clone(),
            state: EnrolState::Confirmed,
            secret: totp::base32(&pending.secret),
            at: now_ms(),
        })
        .await?;
    // (Confirmed only if that secret still waited: a newer enrolment or a reset won.)
    let confirmed = factors.journal.read(|f| {
        f.enrolment(&partner)
            .is_some_and(|e| e.state == EnrolState::Confirmed && e.secret == pending.secret)
    });
    if !confirmed {
        factors.restate(&partner).await?;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_enrolment_pending",
            "the enrolment changed meanwhile (a newer one, or a reset): enrol again",
        ));
    }
    audit.record("second-factor-confirm").await?;
    Ok(Json(serde_json::json!({ "state": "enrolled" })).into_response())
}

/// `GET /v1/partners/{p}/totp`: `none`, `pending` (not enforced yet) or `enrolled`.
pub(super) async fn status(
    State(api): State<ApiState>,
    caller: Caller,
    Path(partner): Path<String>,
) -> Result<Response, ApiError> {
    if !caller.sees(&partner) {
        return Err(ApiError::not_found(&partner));
    }
    let factors = api.factors()?;
    let state = factors
        .journal
        .read(|f| match f.enrolment(&partner).map(|e| e.state) {
            Some(EnrolState::Confirmed) => "enrolled",
            Some(EnrolState::Pending) => "pending",
            _ => "none",
        });
    Ok(Json(serde_json::json!({ "state": state, "required": factors.required })).into_response())
}

/// `POST /v1/admin/partners/{p}/totp/reset`: forgets the partner's authenticator (a
/// lost phone); the partner enrols again.
pub(super) async fn reset(
    State(api): State<ApiState>,
    Admin(caller): Admin,
    Path(partner): Path<String>,
) -> Result<Response, ApiError> {
    let factors = api.factors()?;
    Outcomes::of(&api, &caller, &partner, "reset-second-factor")
        .record("second-factor-reset")
        .await?;
    factors
        .write(Record::Enrolment {
            partner,
            state: EnrolState::Reset,
            secret: String::new(),
            at: now_ms(),
        })
        .await?;
    Ok(Json(serde_json::json!({ "state": "none" })).into_response())
}
