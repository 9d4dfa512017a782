//! The dead letter: a record whose delivery ended without the partner taking it goes to
//! `dlq.<partner>` with its original bytes and headers plus why (`dlq-*` headers), and
//! counts as finished only once that write is acknowledged.

use rdkafka::message::Header;

use super::park::write_until_acknowledged;
use super::{Job, JobContext};
use crate::kafka::headers;
use crate::metrics as m;

/// Why a record is dead-lettered. Written twice on the record: as text for people
/// (`dlq-reason`, e.g. `status 400 is not retried`) and as a stable code for tools and
/// the metric label (`dlq-reason-code`, e.g. `status`), so nothing parses the text back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The subscription was disabled (after a 410 Gone, or by hand).
    SubscriptionDisabled,
    /// The subscription as stored fails validation here (the validation error).
    SubscriptionInvalid(String),
    /// The delivery record names no subscription.
    NoSubscriptionId,
    /// The partner answered 410 Gone: the subscription is disabled.
    Gone,
    /// The SSRF guard refused the address (why).
    Refused(String),
    /// An HTTP status the outcome table does not retry.
    Status(u16),
    /// Any other answer that is not retried.
    NotRetried,
    /// The retry policy ran out after this many attempts.
    RetriesSpent { attempts: u32 },
}

impl DeadLetterReason {
    /// The stable code: the `dlq-reason-code` header and the metric's `reason` label
    /// (a few fixed values, never a number or a message).
    pub fn code(&self) -> &'static str {
        match self {
            Self::SubscriptionDisabled => "subscription_disabled",
            Self::SubscriptionInvalid(_) => "subscription_invalid",
            Self::NoSubscriptionId => "no_subscription_id",
            Self::Gone => "gone",
            Self::Refused(_) => "refused",
            Self::Status(_) => "status",
            Self::NotRetried => "not_retried",
            Self::RetriesSpent { .. } => "retries_spent",
        }
    }
}

impl std::fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SubscriptionDisabled => f.write_str("subscription disabled"),
            Self::SubscriptionInvalid(why) => write!(f, "subscription invalid: {why}"),
            Self::NoSubscriptionId => {
                f.write_str("no subscription-id header on the delivery record")
            }
            Self::Gone => f.write_str("410 Gone: subscription disabled"),
            Self::Refused(why) => write!(f, "refused: {why}"),
            Self::Status(status) => write!(f, "status {status} is not retried"),
            Self::NotRetried => f.write_str("not retried"),
            Self::RetriesSpent { attempts } => {
                write!(f, "retry policy spent after {attempts} attempts")
            }
        }
    }
}

/// Why a record is dead-lettered, and what the last attempt saw.
pub(super) struct Failure {
    pub(super) reason: DeadLetterReason,
    pub(super) attempts: u32,
    pub(super) first: Option<chrono::DateTime<chrono::Utc>>,
    pub(super) last: Option<chrono::DateTime<chrono::Utc>>,
    pub(super) last_status: Option<u16>,
    pub(super) last_error: Option<String>,
    pub(super) excerpt: Option<String>,
}

impl Failure {
    /// Dead-lettered before this attempt was sent (no answer to keep).
    pub(super) fn unsent(
        reason: DeadLetterReason,
        attempts: u32,
        first: chrono::DateTime<chrono::Utc>,
    ) -> Self {
        Self {
            reason,
            attempts,
            first: (attempts > 0).then_some(first),
            last: None,
            last_status: None,
            last_error: None,
            excerpt: None,
        }
    }
}

/// Writes the dead-letter record (original bytes and headers plus why) and waits for
/// the acknowledgement, retrying until it is written or shutdown.
pub(super) async fn dead_letter(job: &Job, ctx: &JobContext, failure: Failure) -> bool {
    let mut headers = job.headers.clone().unwrap_or_default();
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let extra: Vec<(&str, Option<String>)> = vec![
        (headers::DLQ_REASON, Some(failure.reason.to_string())),
        (
            headers::DLQ_REASON_CODE,
            Some(failure.reason.code().to_string()),
        ),
        (headers::DLQ_PARTNER, Some(ctx.partner.clone())),
        (headers::DLQ_SUBSCRIPTION, Some(job.subscription_id.clone())),
        (headers::DLQ_SOURCE_TOPIC, Some(job.topic.to_string())),
        (
            headers::DLQ_SOURCE_PARTITION,
            Some(job.partition.to_string()),
        ),
        (headers::DLQ_SOURCE_OFFSET, Some(job.offset.to_string())),
        (headers::DLQ_ATTEMPTS, Some(failure.attempts.to_string())),
        (headers::DLQ_FIRST_ATTEMPT_AT, time(failure.first)),
        (headers::DLQ_LAST_ATTEMPT_AT, time(failure.last)),
        (
            headers::DLQ_LAST_STATUS,
            failure.last_status.map(|s| s.to_string()),
        ),
        (headers::DLQ_LAST_ERROR, failure.last_error.clone()),
        (headers::DLQ_RESPONSE_EXCERPT, failure.excerpt.clone()),
    ];
    for (k, v) in &extra {
        if let Some(v) = v {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_str()),
            });
        }
    }
    // Made by whichever instance needs it first.
    if !ctx.dead_letter_topic.ensure(&ctx.shutdown).await {
        return false;
    }
    let topic = ctx.dead_letter_topic.name();
    let failed = || {
        metrics::counter!(m::DEAD_LETTER_WRITE_FAILURES, "partner" => ctx.partner.clone())
            .increment(1)
    };
    if write_until_acknowledged(job, ctx, topic, None, headers, failed)
        .await
        .is_none()
    {
        return false;
    }
    let label = if failure.reason == DeadLetterReason::Gone {
        "gone"
    } else {
        "dead_lettered"
    };
    metrics::counter!(m::DELIVERIES, "partner" => ctx.partner.clone(), "outcome" => label)
        .increment(1);
    metrics::counter!(m::DEAD_LETTERED, "partner" => ctx.partner.clone(), "reason" => failure.reason.code())
        .increment(1);
    tracing::info!(partner = %ctx.partner, webhook_id = %job.webhook_id, reason = %failure.reason, "dead-lettered");
    true
}

#[cfg(test)]
mod tests {
    use super::DeadLetterReason as R;

    #[test]
    fn reasons_read_as_text_and_count_under_a_few_fixed_codes() {
        let all = [
            (R::SubscriptionDisabled, "subscription disabled"),
            (
                R::SubscriptionInvalid("url: not https".into()),
                "subscription invalid: url: not https",
            ),
            (
                R::NoSubscriptionId,
                "no subscription-id header on the delivery record",
            ),
            (R::Gone, "410 Gone: subscription disabled"),
            (R::Refused("SSRF guard".into()), "refused: SSRF guard"),
            (R::Status(400), "status 400 is not retried"),
            (R::NotRetried, "not retried"),
            (
                R::RetriesSpent { attempts: 7 },
                "retry policy spent after 7 attempts",
            ),
        ];
        let mut codes = std::collections::BTreeSet::new();
        for (reason, text) in &all {
            assert_eq!(reason.to_string(), *text);
            let code = reason.code();
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{code}: a label value, no numbers or details"
            );
            codes.insert(code);
        }
        assert_eq!(codes.len(), all.len(), "one code per reason");
        // The metric label does not grow with the attempt count or the status.
        assert_eq!(
            R::RetriesSpent { attempts: 3 }.code(),
            R::RetriesSpent { attempts: 9 }.code()
        );
        assert_eq!(R::Status(400).code(), R::Status(422).code());
    }
}
