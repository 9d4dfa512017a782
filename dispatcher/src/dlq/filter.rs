//! Which dead-letter records a command acts on, and what it reads of one.

use super::*;

/// Which dead-letter records a command acts on. Every condition given must hold.
#[derive(Debug, Clone, Args, Serialize, Deserialize, PartialEq, Eq)]
pub struct Filter {
    /// The partner whose dead-letter topic is read (and, for replay, whose delivery
    /// topic is written).
    #[arg(long, default_value = "", hide_default_value = true)]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub partner: String,
    /// Instead of a partner's: the router's dead-letter topic (orders records it could
    /// not decode, e.g. during a registry outage or after a bad producer deploy); replay
    /// writes them back to the orders topic, where the router decodes them again.
    #[arg(long, conflicts_with = "partner")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub router: bool,
    /// Event type, e.g. order.created.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event_type: Option<String>,
    /// Text the dead-letter reason contains (case-insensitive), e.g. "retry policy".
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// HTTP status of the last attempt.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    /// Dead-lettered at or after this time (RFC 3339, e.g. 2026-11-22T10:00:00Z).
    #[arg(long, value_parser = parse_time)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub until: Option<DateTime<Utc>>,
    /// Only this partition of the dead-letter topic.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub partition: Option<i32>,
    /// Offsets from this one (inclusive).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from_offset: Option<i64>,
    /// Offsets up to this one (inclusive).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub to_offset: Option<i64>,
    /// The record key (the order id).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
    /// Only records of this subscription (the `subscription-id` header).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub subscription: Option<String>,
}

pub(super) fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time (e.g. 2026-11-22T10:00:00Z): {e}"))
}

impl Filter {
    /// Checks the filter on its own, before anything is read.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), Invalid> {
        if self.partner.trim().is_empty() && !self.router {
            return Err(Invalid(
                "--partner: required (or --router for the router's dead-letter topic)".into(),
            ));
        }
        if let Some(t) = &self.event_type {
            if order_schemas::EventType::from_name(t).is_none() {
                let known: Vec<&str> = order_schemas::EventType::ALL
                    .iter()
                    .map(|e| e.name())
                    .collect();
                return Err(Invalid(format!(
                    "--event-type: unknown event type `{t}` (known: {})",
                    known.join(", ")
                )));
            }
        }
        if let Some(since) = self.since {
            if since > now {
                return Err(Invalid(format!(
                    "--since {}: the time range starts in the future (now is {})",
                    since.to_rfc3339_opts(SecondsFormat::Secs, true),
                    now.to_rfc3339_opts(SecondsFormat::Secs, true)
                )));
            }
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since >= until {
                return Err(Invalid("--since must be before --until".into()));
            }
        }
        if let (Some(from), Some(to)) = (self.from_offset, self.to_offset) {
            if from > to {
                return Err(Invalid(format!(
                    "--from-offset {from} is after --to-offset {to}"
                )));
            }
        }
        Ok(())
    }

    pub fn matches(&self, r: &DlqRecord) -> bool {
        let lower = |s: &str| s.to_lowercase();
        self.event_type
            .as_ref()
            .is_none_or(|t| r.header(headers::EVENT_TYPE) == Some(t.as_str()))
            && self.reason.as_ref().is_none_or(|want| {
                r.header(headers::DLQ_REASON)
                    .is_some_and(|have| lower(have).contains(&lower(want)))
            })
            && self.status.is_none_or(|s| r.status() == Some(s))
            && self
                .since
                .is_none_or(|s| r.timestamp.is_some_and(|t| t >= s))
            && self
                .until
                .is_none_or(|u| r.timestamp.is_some_and(|t| t < u))
            && self.partition.is_none_or(|p| r.partition == p)
            && self.from_offset.is_none_or(|o| r.offset >= o)
            && self.to_offset.is_none_or(|o| r.offset <= o)
            && self
                .key
                .as_ref()
                .is_none_or(|k| r.key.as_slice() == k.as_bytes())
            && self
                .subscription
                .as_ref()
                .is_none_or(|s| r.header(headers::SUBSCRIPTION_ID) == Some(s.as_str()))
    }
}

/// One dead-letter record as read.
pub use crate::kafka::TopicRecord as DlqRecord;

impl DlqRecord {
    pub fn status(&self) -> Option<u16> {
        self.header(headers::DLQ_LAST_STATUS)
            .and_then(|s| s.parse().ok())
    }

    /// The reason without its details: `status 400 is not retried` stays, `refused: ...`
    /// becomes `refused`, `retry policy spent after 5 attempts` stays whole.
    pub fn reason_class(&self) -> String {
        let reason = self.header(headers::DLQ_REASON).unwrap_or("(none)");
        reason.split(':').next().unwrap_or(reason).to_string()
    }

    pub(super) fn ledger_key(&self, topic: &str) -> String {
        ledger_key(topic, self.partition, self.offset)
    }
}
