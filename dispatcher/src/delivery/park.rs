//! Parking: a record whose key keeps failing while the partner takes others moves to
//! `retries.<partner>` with its progress, so the lane's offset moves on; its key's later
//! records follow it there, in order.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;

use super::{Job, JobContext, JobEnd};
use crate::kafka::headers;

/// A parked record's progress, carried in `retry-*` headers of the retry topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Parked {
    /// Attempts made so far (0 for a record that followed its key).
    pub attempts: u32,
    pub first: Option<chrono::DateTime<chrono::Utc>>,
    /// No attempt before this time.
    pub not_before: chrono::DateTime<chrono::Utc>,
}

impl Parked {
    pub const ATTEMPTS: &'static str = headers::RETRY_ATTEMPTS;
    pub const FIRST: &'static str = headers::RETRY_FIRST_ATTEMPT_AT;
    pub const NOT_BEFORE: &'static str = headers::RETRY_NOT_BEFORE;

    /// Reads the headers of a retry-topic record (`text` gives a header's value); a
    /// record without them is due now, as a first attempt.
    pub fn from_headers(text: impl Fn(&str) -> Option<String>) -> Self {
        let time = |name: &str| {
            text(name)
                .and_then(|v| chrono::DateTime::parse_from_rfc3339(&v).ok())
                .map(|t| t.with_timezone(&chrono::Utc))
        };
        Self {
            attempts: text(Self::ATTEMPTS)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            first: time(Self::FIRST),
            not_before: time(Self::NOT_BEFORE).unwrap_or_else(chrono::Utc::now),
        }
    }
}

/// The record's headers in the retry topic: its own (without earlier `retry-*` ones) and
/// its progress.
fn retry_headers(job: &Job, parked: &Parked) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = &job.headers {
        use rdkafka::message::Headers;
        for h in original
            .iter()
            .filter(|h| !h.key.starts_with(headers::RETRY_PREFIX))
        {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut extra = vec![
        (Parked::ATTEMPTS, parked.attempts.to_string()),
        (Parked::NOT_BEFORE, time(parked.not_before)),
        (headers::RETRY_SOURCE_OFFSET, job.offset.to_string()),
    ];
    if let Some(first) = parked.first {
        extra.push((Parked::FIRST, time(first)));
    }
    for (k, v) in &extra {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_str()),
        });
    }
    headers
}

/// Writes the record to the partner's retry topic, in the partition of the same number
/// (the lane that owns one owns the other), with its progress in `retry-*` headers;
/// waits for the acknowledgement, retrying until it is written or shutdown.
pub(super) async fn park(job: &Job, ctx: &JobContext, parked: &Parked) -> JobEnd {
    let end = write_all(&[job], parked, ctx).await[0];
    tracing::debug!(partner = %ctx.partner, webhook_id = %job.webhook_id, attempts = parked.attempts, "parked in the retry topic");
    end
}

/// Records of a parked key, `job` then `followers` (the key's later records, in
/// order), written behind the key's earlier records without an attempt, in one go
/// ([`write_all`]). Returns each record's end, in order.
pub(super) async fn follow(job: &Job, followers: &[Job], ctx: &JobContext) -> Vec<JobEnd> {
    let records: Vec<&Job> = std::iter::once(job).chain(followers).collect();
    let parked = Parked {
        attempts: 0,
        first: None,
        not_before: chrono::Utc::now(),
    };
    let ends = write_all(&records, &parked, ctx).await;
    tracing::debug!(partner = %ctx.partner, webhook_id = %job.webhook_id, records = records.len(), "followed its key into the retry topic");
    ends
}

/// Writes `records` (of one key, in order) to the retry topic with `parked` progress.
/// They are enqueued in order and their acknowledgements awaited together: the
/// idempotent producer keeps them in that order in the partition, and a key's backlog
/// costs one acknowledgement wait instead of one per record (a broker's produce latency
/// per record was what bounded a poisoned partner's lane). Returns each record's end,
/// in order (`Interrupted` from the first one shutdown left unwritten).
///
/// A record the producer cannot take now (its queue is full) is written, with those
/// after it, one by one once the earlier ones are acknowledged. One that fails (the
/// producer retries until written, so only on a fatal producer error) is written again
/// with those after it; the later ones already handed to the producer may then land
/// before it (duplicates, and that key's order not kept, as with any write after a
/// fatal error).
async fn write_all(records: &[&Job], parked: &Parked, ctx: &JobContext) -> Vec<JobEnd> {
    let mut ends = vec![JobEnd::Interrupted; records.len()];
    // Made by whichever instance parks first.
    if !ctx.retry_topic.ensure(&ctx.shutdown).await {
        return ends;
    }
    let topic = ctx.retry_topic.name();
    let mut acks = Vec::with_capacity(records.len());
    for r in records {
        let record = FutureRecord::to(topic)
            .key(&r.key)
            .payload(&r.body[..])
            .partition(r.partition)
            .headers(retry_headers(r, parked));
        match ctx.producer.send_result(record) {
            Ok(ack) => acks.push(ack),
            Err(_) => break,
        }
    }
    let mut written = 0;
    for ack in acks {
        let at = tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            a = ack => match a {
                Ok(Ok(delivery)) => delivery.offset,
                _ => break,
            },
        };
        ends[written] = JobEnd::Parked { at };
        written += 1;
    }
    for (r, end) in records.iter().zip(ends.iter_mut()).skip(written) {
        if ctx.shutdown.is_cancelled() {
            break;
        }
        let headers = retry_headers(r, parked);
        let Some(at) =
            write_until_acknowledged(r, ctx, topic, Some(r.partition), headers, || {}).await
        else {
            break;
        };
        *end = JobEnd::Parked { at };
        written += 1;
    }
    ctx.metrics.parked.increment(written as u64);
    ends
}

/// Writes the job's key and body with `headers` to `topic` (to `partition`, or by key)
/// and waits for the acknowledgement, retrying every 500 ms (calling `on_error`) until
/// it is written (its offset there) or shutdown (`None`): until then the record is not
/// durable there and its offset must not move.
pub(super) async fn write_until_acknowledged(
    job: &Job,
    ctx: &JobContext,
    topic: &str,
    partition: Option<i32>,
    headers: OwnedHeaders,
    on_error: impl Fn(),
) -> Option<i64> {
    loop {
        let mut record = FutureRecord::to(topic)
            .key(&job.key)
            .payload(&job.body[..])
            .headers(headers.clone());
        if let Some(p) = partition {
            record = record.partition(p);
        }
        let sent = tokio::select! {
            _ = ctx.shutdown.cancelled() => return None,
            r = ctx.producer.send(record, Timeout::After(Duration::from_secs(30))) => r,
        };
        match sent {
            Ok(delivery) => return Some(delivery.offset),
            Err((error, _)) => {
                tracing::warn!(partner = %ctx.partner, %topic, %error, "write failed, retrying");
                on_error();
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
}
