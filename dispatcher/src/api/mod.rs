//! The partner-facing HTTP API (`dispatcher api`): subscriptions (create, list, get,
//! update, rotate the secret, pause/resume, delete) and recovery by polling a partner's
//! delivery stream.
//!
//! - State is the compacted subscriptions topic: the API follows it like every dispatcher
//!   and writes changes to it, so running dispatchers pick them up without a restart.
//! - Authentication: `Authorization: Bearer <token>`. An admin token sees and changes
//!   everything; a partner token only its own partner's subscriptions and events (another
//!   partner's subscription answers 404, as if it did not exist).
//! - A URL is checked as `subscriptions apply` checks it, plus: its host name is resolved
//!   and every address must pass the SSRF guard, and `--require-https` refuses http.
//!   URL changes are audited (the audit topic and the log).
//! - Errors are JSON: `{"error": {"code", "message", "field"?}}`.
//!
//! `auth.rs` (tokens, the `Caller`/`Admin` extractors), `error.rs`, one file per resource
//! (`subscriptions.rs`, `partners.rs`), `events.rs` (the polled stream and its cursor).

use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::Router;

use crate::kafka::KafkaSettings;
use crate::subscriptions::audit::AuditTrail;
use crate::subscriptions::table::{self, SubscriptionTable};
use crate::subscriptions::Subscription;
use crate::webhook::ssrf::Allowlist;

mod audit;
mod auth;
mod dead_letters;
mod error;
mod event_types;
mod events;
mod filter_test;
pub mod health;
mod limits;
mod messages;
mod partners;
mod recover;
pub mod second_factor;
pub mod stream;
mod subscriptions;
pub mod verify;

pub use auth::Tokens;
pub(crate) use auth::{Admin, Caller, InProcess};
pub(crate) use error::body;
pub use error::ApiError;
pub use events::Cursor;
pub use limits::WriteLimit;

/// What the API needs.
#[derive(Clone)]
pub struct ApiState {
    pub kafka: KafkaSettings,
    pub subscriptions_topic: String,
    /// Where every change is audited, before it is made.
    pub audit: AuditTrail,
    pub partitions: i32,
    pub table: SubscriptionTable,
    pub allowlist: Arc<Allowlist>,
    pub require_https: bool,
    pub tokens: Arc<Tokens>,
    /// Subscriptions one partner may have (a partner's quota). Default 100.
    pub max_subscriptions_per_partner: usize,
    /// `/events` pages read at once (each reads Kafka with a client of its own); past
    /// that the answer is 429 with Retry-After.
    pub events_permits: Arc<tokio::sync::Semaphore>,
    /// Subscriptions being created on this instance, per partner (see [`Creating`]).
    pub creating: Creating,
    /// How often a partner token may change things ([`WriteLimit`]).
    pub writes: WriteLimit,
    /// Writes the subscriptions topic: one producer for every request (a producer
    /// per request cost a client, its threads and a connection each time).
    pub writer: rdkafka::producer::FutureProducer,
    /// This instance's view of the delivery log (`None`: the log is off).
    pub log: Option<Arc<std::sync::Mutex<crate::attempts::view::LogView>>>,
    /// Subscriptions a recover is running for on this instance (one at a time each).
    pub recovering: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// The web console's secret, links and sessions.
    pub console: Arc<crate::console::Console>,
    /// The dispatchers' partner health (`None`: no health topic).
    pub health: Option<Arc<health::HealthView>>,
    /// Sends the ownership challenges of new URLs (`None`: this instance sends none,
    /// and new URLs are not checked).
    pub verifier: Option<Arc<verify::Verifier>>,
    /// The partners' second factors (`None`: none asked for).
    pub second_factors: Option<second_factor::SecondFactors>,
    /// Live streams: their limits, and those open.
    pub streams: Arc<stream::Streams>,
}

/// Subscriptions being created on this instance, per partner: counted against the quota
/// with those in the table, so creates racing each other cannot pass it together (a
/// create awaits DNS, the topic, the audit and the save after its check).
#[derive(Debug, Default, Clone)]
pub struct Creating(Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>);

/// One create's place in [`Creating`], given back when dropped (by then a create that
/// succeeded is in the table).
#[derive(Debug)]
struct Reserved {
    creating: Creating,
    partner: String,
}

impl Creating {
    /// A place for one more subscription of `partner` when those it has (`owned()`,
    /// counted under the lock) and those being created are fewer than `max`; else the
    /// count that reached it.
    fn reserve(
        &self,
        partner: &str,
        owned: impl FnOnce() -> usize,
        max: usize,
    ) -> Result<Reserved, usize> {
        let mut creating = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = owned() + creating.get(partner).copied().unwrap_or(0);
        if now >= max {
            return Err(now);
        }
        *creating.entry(partner.to_string()).or_default() += 1;
        Ok(Reserved {
            creating: self.clone(),
            partner: partner.to_string(),
        })
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let mut creating = self.creating.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = creating.get_mut(&self.partner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                creating.remove(&self.partner);
            }
        }
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("subscriptions_topic", &self.subscriptions_topic)
            .finish_non_exhaustive()
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route(
            "/v1/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/v1/subscriptions/{id}",
            get(subscriptions::read)
                .patch(subscriptions::update)
                .delete(subscriptions::remove),
        )
        .route(
            "/v1/subscriptions/{id}/rotate-secret",
            post(subscriptions::rotate),
        )
        .route("/v1/subscriptions/{id}/pause", post(subscriptions::pause))
        .route("/v1/subscriptions/{id}/verify", post(verify::verify))
        .route("/v1/subscriptions/{id}/resume", post(subscriptions::resume))
        .route("/v1/partners/{partner}/events", get(events::events))
        .route("/v1/event-types", get(event_types::list))
        .route(
            "/v1/partners/{partner}/totp",
            get(second_factor::status).post(second_factor::enrol),
        )
        .route(
            "/v1/partners/{partner}/totp/confirm",
            post(second_factor::confirm),
        )
        .route(
            "/v1/admin/partners/{partner}/totp/reset",
            post(second_factor::reset),
        )
        .route("/v1/partners/{partner}/health", get(health::one))
        .route("/v1/messages/{webhook_id}", get(messages::message))
        .route("/v1/messages/{webhook_id}/resend", post(messages::resend))
        .route("/v1/subscriptions/{id}/messages", get(messages::list))
        .route("/v1/subscriptions/{id}/recover", post(recover::recover))
        .route("/v1/subscriptions/{id}/stats", get(messages::stats))
        .route("/v1/partners/{partner}/stream", get(stream::stream))
        .route(
            "/v1/subscriptions/{id}/filter-test",
            post(filter_test::filter_test),
        )
        .route(
            "/v1/partners/{partner}/disconnect",
            post(partners::disconnect),
        )
        .route(
            "/v1/partners/{partner}/reconnect",
            post(partners::reconnect),
        )
        .route("/v1/admin/portal-links", post(crate::console::links::issue))
        .route(
            "/v1/admin/partners/{partner}/portal-sessions/expire",
            post(crate::console::links::expire),
        )
        .route(
            "/v1/admin/partners/{partner}/dead-letters",
            get(dead_letters::list),
        )
        .route(
            "/v1/admin/partners/{partner}/dead-letters/replay",
            post(dead_letters::replay),
        )
        .route(
            "/v1/admin/partners/{partner}/dead-letters/{partition}/{offset}",
            get(dead_letters::show),
        )
        .route("/v1/admin/audit", get(audit::list))
        .route("/v1/admin/partners", get(health::list))
        .merge(crate::console::routes())
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/metrics",
            get({
                // The delivery log view's gauges (records held, lag) among them.
                let metrics = crate::metrics::handle();
                move || {
                    let metrics = metrics.clone();
                    async move {
                        metrics.run_upkeep();
                        metrics.render()
                    }
                }
            }),
        )
        .with_state(state)
}

impl ApiState {
    fn visible(&self, caller: &Caller, id: &str) -> Result<Arc<Subscription>, ApiError> {
        self.table
            .get(id)
            .filter(|s| caller.sees(&s.partner_id))
            .ok_or_else(|| ApiError::not_found(id))
    }

    /// One change by `caller`, within its partner's write limit (admin tokens have
    /// none): else 429 with Retry-After.
    fn allow_write(&self, caller: &Caller) -> Result<(), ApiError> {
        let Caller::Partner(partner) = caller else {
            return Ok(());
        };
        self.writes
            .take(partner, std::time::Instant::now())
            .map_err(|wait| {
                ApiError::new(
                    axum::http::StatusCode::TOO_MANY_REQUESTS,
                    "too_many_requests",
                    "too many changes of this partner's subscriptions; try again shortly",
                )
                .retry_after(wait.as_secs().saturating_add(1))
            })
    }

    /// A subscription the caller may change: one it sees, and, when it is internal (it
    /// receives every partner's events), only through an admin token, whatever partner
    /// it is filed under (a token of that partner could otherwise point every
    /// partner's orders at its own URL). (The change is written onto the latest
    /// version: [`Self::save`].)
    fn changeable(&self, caller: &Caller, id: &str) -> Result<Arc<Subscription>, ApiError> {
        let s = self.visible(caller, id)?;
        if s.internal && *caller != Caller::Admin {
            return Err(ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "only an admin token changes internal subscriptions",
            ));
        }
        Ok(s)
    }

    /// Everything `subscriptions apply` checks, plus the resolved addresses and the
    /// https-only rule.
    async fn check(&self, s: &Subscription) -> Result<(), ApiError> {
        s.validate(&self.allowlist)
            .map_err(|e| ApiError::field(e.field, e.message))?;
        if s.is_stream() {
            return Ok(());
        }
        let url = reqwest::Url::parse(&s.url).map_err(|e| ApiError::field("url", e.to_string()))?;
        if self.require_https && url.scheme() != "https" {
            return Err(ApiError::field("url", "must use https"));
        }
        if let Some(url::Host::Domain(host)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(443);
            let addrs = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((host.to_string(), port)),
            )
            .await
            .map_err(|_| ApiError::field("url", format!("resolving `{host}` timed out")))?
            .map_err(|e| {
                tracing::info!(%host, error = %e, "webhook host does not resolve");
                ApiError::field("url", format!("`{host}` does not resolve"))
            })?;
            for addr in addrs {
                // What a name resolves to inside our network is not the caller's
                // business: the address and the reason go to the log only.
                self.allowlist.check(addr.ip()).map_err(|why| {
                    tracing::warn!(%host, address = %addr.ip(), %why, "webhook URL refused by the SSRF guard");
                    ApiError::field(
                        "url",
                        format!("`{host}` resolves to an address webhooks may not reach (private, loopback, link-local or reserved)"),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Writes the subscription to the topic (and the local table, so the caller reads
    /// its own write at once), under the table's write lock and on the latest version
    /// (`SubscriptionTable::catch_up`). A change of an existing subscription (`base`:
    /// the version it was decided on) sets only the fields it changes, so a change
    /// another writer made meanwhile (the dispatcher's 410 disable or automatic
    /// disconnect) is kept (`table::merge`); 404 when the subscription was deleted
    /// meanwhile. A new one (`base` `None`) is refused with 409 when the id exists.
    /// `base` comes with the fields the request names (`table::merge`).
    async fn save(
        &self,
        base: Option<(&Subscription, &[&str])>,
        s: Subscription,
    ) -> Result<Subscription, ApiError> {
        let lock = self
            .table
            .write_lock(Duration::from_secs(5))
            .await
            .map_err(ApiError::internal)?;
        let latest = lock.catch_up(&s.id).await.map_err(ApiError::internal)?;
        let written = match (base, latest) {
            (None, None) => s,
            (None, Some(_)) => return Err(exists(&s.id)),
            (Some(_), None) => return Err(ApiError::not_found(&s.id)),
            (Some((base, _)), Some(latest)) if *latest == *base => s,
            (Some((base, named)), Some(latest)) => {
                let mut merged =
                    table::merge(&latest, base, &s, named).map_err(ApiError::internal)?;
                // A URL paired with another URL's check (two changes merged): that URL
                // is checked afresh, never taken as verified.
                let mismatched = merged
                    .verification
                    .as_ref()
                    .and_then(|v| v.url.as_deref())
                    .is_some_and(|checked| checked != merged.url);
                if mismatched {
                    merged.verification = self
                        .verifier
                        .as_ref()
                        .and_then(|v| v.start(&merged.url, Some(&latest)));
                }
                merged
            }
        };
        lock.write(
            &self.writer,
            &self.subscriptions_topic,
            &written.id,
            Some(&written),
        )
        .await
        .map_err(ApiError::internal)?;
        Ok(written)
    }

    /// Deletes subscription `id` (under the table's write lock).
    async fn delete(&self, id: &str) -> Result<(), ApiError> {
        let lock = self
            .table
            .write_lock(Duration::from_secs(5))
            .await
            .map_err(ApiError::internal)?;
        lock.write(&self.writer, &self.subscriptions_topic, id, None)
            .await
            .map_err(ApiError::internal)
    }

    /// Audits a change before it is made: no audit record, no change (503).
    async fn audit(
        &self,
        caller: &Caller,
        action: &str,
        s: &Subscription,
        extra: serde_json::Value,
    ) -> Result<(), ApiError> {
        self.audit
            .record(&caller.name(), action, s, extra)
            .await
            .map_err(ApiError::internal)
    }

    /// Audits `action`, then writes `s` (decided on `base`: [`Self::save`]); if the
    /// write fails, audits that too.
    async fn audited_save(
        &self,
        caller: &Caller,
        action: &str,
        base: Option<(&Subscription, &[&str])>,
        s: Subscription,
        extra: serde_json::Value,
    ) -> Result<Subscription, ApiError> {
        self.audit(caller, action, &s, extra).await?;
        match self.save(base, s.clone()).await {
            Ok(saved) => Ok(saved),
            Err(e) => {
                let failed = format!("{action}-failed");
                let _ = self.audit(caller, &failed, &s, serde_json::json!({})).await;
                Err(e)
            }
        }
    }
}

/// 409: a subscription with this id exists.
fn exists(id: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::CONFLICT,
        "conflict",
        format!("subscription `{id}` exists"),
    )
}
