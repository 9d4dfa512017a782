//! Subscriptions: which partner gets which event types at which URL, signed with which
//! secrets, under which limits. They live in a compacted Kafka topic (key = id, value =
//! this struct as JSON, tombstone = deleted); a YAML file can seed them.
//!
//! Validation runs when a file is applied and again when a dispatcher reads the topic:
//! every error names the subscription and the field.

pub mod audit;
mod endpoint;
pub mod filter;
pub mod table;
pub mod updater;
mod validate;

pub use endpoint::{EndpointTls, Verification, VerificationState};
pub use validate::{valid_partner_id, InvalidSubscription};

use std::collections::BTreeSet;
use std::time::Duration;

use order_schemas::EventType;
use serde::{Deserialize, Serialize};

use crate::webhook::signing::Secret;
use crate::webhook::ssrf::Allowlist;

/// How a failing delivery is retried before it is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Default 8.
    pub max_attempts: u32,
    /// Time from the first attempt after which no new attempt starts, in seconds.
    /// Default 3600.
    pub max_elapsed_secs: u64,
    /// Delay before the first retry, doubled each time, in milliseconds. Default 500.
    pub initial_backoff_ms: u64,
    /// Cap of the delay between attempts (and of a Retry-After we honour), in
    /// milliseconds. Default 60,000.
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            max_elapsed_secs: 3600,
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
        }
    }
}

/// Where a subscription's events go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Signed POSTs to `url` (the partner's delivery topic, then its lane).
    #[default]
    Webhook,
    /// The partner's stream topic (`stream.<partner>`), read by its live streams
    /// (`GET /v1/partners/{p}/stream`): no URL, no secrets, no lane.
    Stream,
}

impl Kind {
    fn is_webhook(&self) -> bool {
        *self == Self::Webhook
    }
}

/// One partner endpoint. Its `Debug` shows how many secrets it has, never them.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Unique id; the key in the subscriptions topic.
    pub id: String,
    /// The partner; names its delivery and dead-letter topics.
    pub partner_id: String,
    /// Where webhooks are POSTed (https, or http for allowlisted addresses); none for a
    /// stream.
    #[serde(default)]
    pub url: String,
    /// Event types delivered, e.g. `order.created`.
    pub event_types: BTreeSet<String>,
    /// Signing secrets (`whsec_...`); every one signs while a secret rotates. None for a
    /// stream.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Receives every partner's events (our own services only). Default false.
    #[serde(default)]
    pub internal: bool,
    /// Requests in flight to this partner at most. Default 16.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Time a partner has to answer one request, in milliseconds. Default 10,000.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Requests per second to this partner at most (all its subscriptions together: the
    /// smallest one set applies). Default: none, only the adaptive concurrency limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_sec: Option<f64>,
    /// Set when the partner answered 410 Gone; nothing is sent while set.
    #[serde(default)]
    pub disabled: bool,
    /// Paused by the partner or an operator: events are kept (the lane holds them, then
    /// its backlog waits in Kafka) and delivered in order after resume.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// After a secret rotation: every secret but the first (the new one) signs until this
    /// time, then only the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secrets_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Set when the partner was disconnected (automatically after failing too long, or by
    /// an operator): like `paused`, nothing is sent and events are kept, until an operator
    /// or the partner reconnects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected: Option<Disconnected>,
    /// TLS towards the partner's server: its own CA (`ca_pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EndpointTls>,
    /// Whether `url` proved it wants our events (the ownership challenge). Absent: a
    /// subscription from before the check, or one an operator's file wrote: verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// A CEL expression over the event (`filter::Filter`): only the events of its types
    /// for which it is true are delivered. Absent: every one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// `webhook` (default) or `stream`.
    #[serde(default, skip_serializing_if = "Kind::is_webhook")]
    pub kind: Kind,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("partner_id", &self.partner_id)
            .field("url", &self.url)
            .field("event_types", &self.event_types)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("internal", &self.internal)
            .field("max_in_flight", &self.max_in_flight)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("retry", &self.retry)
            .field("rate_limit_per_sec", &self.rate_limit_per_sec)
            .field("disabled", &self.disabled)
            .field("paused", &self.paused)
            .field("previous_secrets_until", &self.previous_secrets_until)
            .field("disconnected", &self.disconnected)
            .field("tls", &self.tls.as_ref().map(|t| t.ca_pem.is_some()))
            .field("verification", &self.verification)
            .field("filter", &self.filter)
            .field("kind", &self.kind)
            .finish()
    }
}

/// When, why and by whom a partner was disconnected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disconnected {
    pub at: chrono::DateTime<chrono::Utc>,
    pub reason: String,
    /// `dispatcher` (automatic) or the API caller.
    pub by: String,
}

fn default_max_in_flight() -> usize {
    16
}

fn default_request_timeout_ms() -> u64 {
    10_000
}

/// Bounds of the numbers a partner or operator sets. Past them the arithmetic of flow
/// control and parking would overflow (a rate of 1e-30 per second is a wait of 1e30 s),
/// and no real policy needs more.
pub const MIN_RATE_PER_SEC: f64 = 0.01;
pub const MAX_RATE_PER_SEC: f64 = 10_000.0;
pub const MAX_ATTEMPTS: u32 = 1_000_000;
pub const MAX_ELAPSED_SECS: u64 = 7 * 86_400;
pub const MAX_BACKOFF_MS: u64 = 86_400_000;

impl Subscription {
    /// How many of the signing keys sign at `now`: all of them, or only the newest once a
    /// rotation's overlap window has passed.
    pub fn active_keys(&self, now: chrono::DateTime<chrono::Utc>) -> usize {
        match self.previous_secrets_until {
            Some(until) if now >= until => 1.min(self.secrets.len()),
            _ => self.secrets.len(),
        }
    }

    /// The signing keys; only valid subscriptions reach delivery, so none fails here.
    pub fn signing_keys(&self) -> Vec<Secret> {
        self.secrets
            .iter()
            .filter_map(|s| Secret::parse(s).ok())
            .collect()
    }

    /// Whether this subscription receives `event_type` for an order of `partner_id`.
    /// A partner receives only its own orders; only an internal subscription sees all.
    pub fn wants(&self, event_type: &str, partner_id: &str) -> bool {
        !self.disabled
            && self.event_types.contains(event_type)
            && (self.internal || self.partner_id == partner_id)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn is_stream(&self) -> bool {
        self.kind == Kind::Stream
    }

    /// Where the router writes this subscription's events.
    pub fn topic(&self) -> String {
        match self.kind {
            Kind::Webhook => delivery_topic(&self.partner_id),
            Kind::Stream => stream_topic(&self.partner_id),
        }
    }
}

/// The topic of a partner's live stream (its stream subscription's events).
pub fn stream_topic(partner_id: &str) -> String {
    format!("stream.{partner_id}")
}

/// The topic of a partner's pending deliveries.
pub fn delivery_topic(partner_id: &str) -> String {
    format!("deliveries.{partner_id}")
}

/// The topic of a partner's dead letters.
pub fn retry_topic(partner_id: &str) -> String {
    format!("retries.{partner_id}")
}

/// The partner's dead-letter topic.
pub fn dead_letter_topic(partner_id: &str) -> String {
    format!("dlq.{partner_id}")
}

/// A file of subscriptions (YAML or JSON): `subscriptions: [ ... ]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionFile {
    pub subscriptions: Vec<Subscription>,
}

impl SubscriptionFile {
    /// Parses and validates; the error names the file position or subscription and field.
    pub fn parse(text: &str, allowlist: &Allowlist) -> Result<Vec<Subscription>, String> {
        let file: SubscriptionFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = BTreeSet::new();
        let mut streams = BTreeSet::new();
        for s in &file.subscriptions {
            s.validate(allowlist)
                .and_then(|()| s.validate_new_id())
                .map_err(|e| e.to_string())?;
            if !seen.insert(s.id.as_str()) {
                return Err(format!("subscription `{}`: id: appears twice", s.id));
            }
            if s.is_stream() && !streams.insert(s.partner_id.as_str()) {
                return Err(format!(
                    "subscription `{}`: kind: partner `{}` has another stream subscription in this file (one per partner)",
                    s.id, s.partner_id
                ));
            }
        }
        Ok(file.subscriptions)
    }
}

#[cfg(test)]
mod tests;
