//! The delivery log (#23): one record per attempt, and per end of a message (delivered,
//! parked, dead-lettered, dropped), on the log topic (`attempts`, `--attempts-topic`).
//! A message is one event for one subscription (`webhook-id` and subscription id); the
//! record key is `<subscription>/<webhook-id>`, so one message's records stay in order.
//!
//! - [`AttemptRecord`]: the record, JSON, versioned (`v`; the schema is
//!   `docs/schemas/attempt.v1.json`).
//! - [`AttemptLog`]: the writer the lanes share. Writes are queued on the shared
//!   producer (batched by librdkafka with the other records of the instance) and a job
//!   waits for their acknowledgements only when it ends (`delivery::Trail`).

use std::sync::Arc;
use std::time::Duration;

pub mod cli;
pub mod ingest;
pub mod view;

use chrono::{DateTime, Utc};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};

/// The version of [`AttemptRecord`] this build writes.
pub const VERSION: u32 = 1;

/// The delivery log's topic by default.
pub const DEFAULT_TOPIC: &str = "attempts";

/// Bytes of a partner's answer kept in an attempt record by default.
pub const DEFAULT_BODY_BYTES: usize = 4096;

/// What started an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// The first attempt of a record of the delivery topic.
    Scheduled,
    /// A later attempt (in the lane, or from the retry topic).
    Retry,
    /// The first attempt of a record `dispatcher dlq replay` sent back.
    Replay,
    /// The first attempt of a message a partner or an SRE asked to send again.
    Resend,
    /// The first attempt of a dead-lettered message a recover sent again.
    Recover,
}

impl Trigger {
    /// The value of the `delivery-trigger` header that names it (resend, recover).
    pub fn from_header(value: &str) -> Option<Self> {
        match value {
            "resend" => Some(Self::Resend),
            "recover" => Some(Self::Recover),
            "replay" => Some(Self::Replay),
            _ => None,
        }
    }
}

/// What became of the message after the attempt (or without one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    /// Another attempt follows at `next_attempt_at`, in the lane.
    RetryScheduled,
    /// Moved to the partner's retry topic (its key is parked); the next attempt is at
    /// `next_attempt_at`.
    Parked,
    /// Written to the partner's dead-letter topic.
    DeadLettered,
    /// Not delivered because its subscription was deleted.
    Dropped,
}

/// One record of the delivery log. Fields without a value are left out (readers take
/// them as null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The record's version ([`VERSION`]).
    pub v: u32,
    pub webhook_id: String,
    /// The order event's id (today the same as the webhook-id).
    pub event_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    pub order_id: String,
    pub partner: String,
    pub subscription_id: String,
    /// The URL as called ([`redact_url`]); `None` when no request was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The attempt's number, from 1; 0 for an end without an attempt (a record parked
    /// behind its key, a subscription deleted or disabled).
    pub attempt: u32,
    pub trigger: Trigger,
    /// When the attempt (or the end) began.
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    /// The partner's HTTP status; `None` when there was no answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// Why there was no answer, or why the message ended without one, as a class
    /// (`timeout`, `connect`, `dns`, `tls`, `refused_by_guard`, `bad_url`,
    /// `subscription_disabled`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The error's text, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<String>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_retry_after: Option<String>,
    /// At most the log's body limit of the answer (lossy UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_excerpt: Option<String>,
    /// When the order event occurred (the start of its time to webhook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<DateTime<Utc>>,
    /// Where the message's record was read (its delivery or retry topic, partition,
    /// offset): what a resend sends again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// How many events a subscription's payload filter kept from it over a span (#26): the
/// router writes one per subscription with a filter every few seconds, when it counted
/// some, to the same topic (key `<subscription>/filter-tally`). Readers of the log that
/// predate it skip it (it is not an [`AttemptRecord`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterTally {
    pub v: u32,
    /// Always `filter_tally`.
    pub kind: String,
    pub partner: String,
    pub subscription_id: String,
    /// The span the counts are of.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Events the filter was false for.
    pub filtered_out: u64,
    /// Events the filter failed on (not delivered either).
    pub errors: u64,
}

/// A record of the log topic: an attempt (or an end), or a filter's tally.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    Attempt(Box<AttemptRecord>),
    Tally(FilterTally),
}

impl Entry {
    pub fn parse(bytes: &[u8]) -> serde_json::Result<Self> {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(borrow)]
            kind: Option<&'a str>,
        }
        match serde_json::from_slice::<Kind<'_>>(bytes)
            .ok()
            .and_then(|k| k.kind)
        {
            Some(_) => serde_json::from_slice(bytes).map(Self::Tally),
            None => serde_json::from_slice(bytes).map(|r| Self::Attempt(Box::new(r))),
        }
    }
}

/// A record's place in Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl AttemptRecord {
    /// The record key: one message's records in one partition, in order.
    pub fn key(&self) -> String {
        format!("{}/{}", self.subscription_id, self.webhook_id)
    }
}

/// `url` as the log keeps it: no user name or password, and the query string replaced
/// by `?redacted` (tokens are often passed there).
pub fn redact_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    if shown.query().is_some() {
        shown.set_query(Some("redacted"));
    }
    shown.to_string()
}

/// The class of a transport error's text (reqwest's error chain).
pub fn transport_class(text: &str) -> &'static str {
    let t = text.to_ascii_lowercase();
    if t.contains("timed out") || t.contains("timeout") {
        "timeout"
    } else if t.contains("dns error") || t.contains("failed to lookup") || t.contains("resolve") {
        "dns"
    } else if t.contains("certificate") || t.contains("tls") || t.contains("ssl") {
        "tls"
    } else if t.contains("connect") || t.contains("connection refused") {
        "connect"
    } else {
        "transport"
    }
}

/// A log record queued on the producer, and what it takes to write it again.
pub struct Pending {
    key: String,
    value: Vec<u8>,
    delivery: Option<DeliveryFuture>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The writer of the delivery log, shared by the lanes of an instance.
#[derive(Clone)]
pub struct AttemptLog {
    producer: FutureProducer,
    topic: Arc<str>,
    /// Bytes of an answer kept per record (0: none).
    pub body_bytes: usize,
}

impl std::fmt::Debug for AttemptLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptLog")
            .field("topic", &self.topic)
            .field("body_bytes", &self.body_bytes)
            .finish_non_exhaustive()
    }
}

impl AttemptLog {
    pub fn new(producer: FutureProducer, topic: &str, body_bytes: usize) -> Self {
        Self {
            producer,
            topic: topic.into(),
            body_bytes,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Queues `record` on the producer without waiting (see [`Self::acknowledged`]).
    pub fn queue(&self, mut record: AttemptRecord) -> Pending {
        if let Some(excerpt) = record.response_excerpt.as_mut() {
            truncate(excerpt, self.body_bytes);
        }
        if self.body_bytes == 0 {
            record.response_excerpt = None;
        }
        let key = record.key();
        // (A record of plain strings, numbers and dates always serializes.)
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let delivery = self.enqueue(&key, &value);
        Pending {
            key,
            value,
            delivery,
        }
    }

    /// Queues a filter's tally (see [`Self::acknowledged`]).
    pub fn queue_tally(&self, tally: &FilterTally) -> Pending {
        let key = format!("{}/filter-tally", tally.subscription_id);
        let value = serde_json::to_vec(tally).unwrap_or_default();
        let delivery = self.enqueue(&key, &value);
        Pending {
            key,
            value,
            delivery,
        }
    }

    fn enqueue(&self, key: &str, value: &[u8]) -> Option<DeliveryFuture> {
        self.producer
            .send_result(FutureRecord::to(&self.topic).key(key).payload(value))
            .ok()
    }

    /// Waits until every record in `pending` is acknowledged, writing again any that
    /// failed (or found the producer's queue full), every 500 ms, until `stop` is
    /// cancelled: then `false`, and the job that made them is not finished (its records
    /// are redone, and logged again, by the next owner).
    pub async fn acknowledged(
        &self,
        pending: Vec<Pending>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> bool {
        for mut p in pending {
            loop {
                let outcome = match p.delivery.take() {
                    Some(delivery) => tokio::select! {
                        _ = stop.cancelled() => return false,
                        d = delivery => match d {
                            Ok(Ok(_)) => Ok(()),
                            Ok(Err((e, _))) => Err(e.to_string()),
                            Err(_) => Err("the producer dropped the record".to_string()),
                        },
                    },
                    None => Err("the producer's queue is full".to_string()),
                };
                match outcome {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(topic = %self.topic, %error, "writing the delivery log failed, retrying");
                        metrics::counter!(crate::metrics::ATTEMPT_LOG_ERRORS).increment(1);
                        tokio::select! {
                            _ = stop.cancelled() => return false,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        }
                        p.delivery = self.enqueue(&p.key, &p.value);
                    }
                }
            }
        }
        true
    }
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
pub fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_kept_without_credentials_or_query() {
        let url = reqwest::Url::parse("https://user:pw@example.com:8443/hook?token=s3cret#x")
            .expect("url");
        assert_eq!(redact_url(&url), "https://example.com:8443/hook?redacted");
        let plain = reqwest::Url::parse("http://127.0.0.1:9/hook").expect("url");
        assert_eq!(redact_url(&plain), "http://127.0.0.1:9/hook");
    }

    #[test]
    fn transport_errors_are_classed() {
        assert_eq!(
            transport_class("error sending request: operation timed out"),
            "timeout"
        );
        assert_eq!(
            transport_class("error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)"),
            "connect"
        );
        assert_eq!(
            transport_class(
                "error sending request: dns error: failed to lookup address information"
            ),
            "dns"
        );
        assert_eq!(
            transport_class("error sending request: invalid peer certificate: UnknownIssuer"),
            "tls"
        );
    }

    #[test]
    fn an_excerpt_is_cut_on_a_character_boundary() {
        let mut text = "aé".repeat(3);
        truncate(&mut text, 4);
        assert_eq!(text, "aéa");
    }
}
