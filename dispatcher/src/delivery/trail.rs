//! A job's records in the delivery log (`crate::attempts`): one per attempt and one per
//! end without an attempt, queued as they happen. A delivered message always has its
//! `delivered` record: a finished job's offset moves only once its records are
//! acknowledged ([`super::Logged`]), and a record that cannot be written holds that
//! offset, as a dead letter that cannot be written does.

use chrono::{DateTime, Utc};
use rdkafka::message::Headers;

use super::{Job, JobContext, Logged};
use crate::attempts::{AttemptRecord, Outcome, Pending, Trigger};
use crate::kafka::headers;
use crate::webhook::client::Report;
use crate::webhook::outcome::Attempt;

pub(super) struct Trail<'a> {
    job: &'a Job,
    ctx: &'a JobContext,
    pending: Vec<Pending>,
    /// Whether this job made an attempt already (the next one is a `retry`).
    attempted: bool,
    /// The message's attempts so far: those before it was parked, and this job's. (The
    /// job's own count starts again after a pause holds it, for the retry budget; the
    /// log's does not.)
    attempts: u32,
}

/// One attempt as the log keeps it.
pub(super) struct Attempted<'r> {
    pub(super) url: &'r Result<reqwest::Url, String>,
    pub(super) started_at: DateTime<Utc>,
    pub(super) report: &'r Report,
}

fn header(job: &Job, name: &str) -> Option<String> {
    job.headers
        .as_ref()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The trigger of a job's first attempt: `retry` for a record parked after attempts;
/// else what sent it: a record replayed from the dead-letter topic is a `recover` when
/// the API's recover sent it, else a `replay` (a replay drops an earlier
/// `delivery-trigger`); a `resend`; or `scheduled`.
fn first_trigger(job: &Job) -> Trigger {
    if job.parked.as_ref().is_some_and(|p| p.attempts > 0) {
        return Trigger::Retry;
    }
    let named = header(job, headers::DELIVERY_TRIGGER).and_then(|v| Trigger::from_header(&v));
    if header(job, headers::REPLAYED_FROM).is_some() {
        return match named {
            Some(Trigger::Recover) => Trigger::Recover,
            _ => Trigger::Replay,
        };
    }
    named.unwrap_or(Trigger::Scheduled)
}

fn record(
    job: &Job,
    ctx: &JobContext,
    attempt: u32,
    trigger: Trigger,
    outcome: Outcome,
) -> AttemptRecord {
    AttemptRecord {
        v: crate::attempts::VERSION,
        webhook_id: job.webhook_id.clone(),
        event_id: job.webhook_id.clone(),
        event_type: header(job, headers::EVENT_TYPE),
        order_id: String::from_utf8_lossy(&job.key).into_owned(),
        partner: ctx.partner.clone(),
        subscription_id: job.subscription_id.clone(),
        url: None,
        attempt,
        trigger,
        started_at: Utc::now(),
        duration_ms: 0,
        status_code: None,
        error: None,
        error_detail: None,
        outcome,
        next_attempt_at: None,
        response_content_type: None,
        response_retry_after: None,
        response_excerpt: None,
        occurred_at: job
            .occurred_at_ms
            .and_then(chrono::DateTime::from_timestamp_millis),
        source: Some(crate::attempts::Source {
            topic: job.topic.to_string(),
            partition: job.partition,
            offset: job.offset,
        }),
    }
}

impl<'a> Trail<'a> {
    pub(super) fn new(job: &'a Job, ctx: &'a JobContext) -> Self {
        Self {
            job,
            ctx,
            pending: Vec::new(),
            attempted: false,
            attempts: job.parked.as_ref().map_or(0, |p| p.attempts),
        }
    }

    fn trigger(&self) -> Trigger {
        if self.attempted {
            Trigger::Retry
        } else {
            first_trigger(self.job)
        }
    }

    fn queue(&mut self, record: AttemptRecord) {
        if let Some(log) = &self.ctx.log {
            self.pending.push(log.queue(record));
        }
    }

    /// An attempt and what became of the message after it (`error`: for an attempt
    /// whose answer ended the message, the dead-letter reason's code and text).
    pub(super) fn attempted(
        &mut self,
        a: Attempted<'_>,
        outcome: Outcome,
        next_attempt_at: Option<DateTime<Utc>>,
    ) {
        if self.ctx.log.is_none() {
            return;
        }
        let trigger = self.trigger();
        self.attempted = true;
        self.attempts += 1;
        let mut r = record(self.job, self.ctx, self.attempts, trigger, outcome);
        r.url = a.url.as_ref().ok().map(crate::attempts::redact_url);
        r.started_at = a.started_at;
        r.duration_ms = a.report.elapsed.as_millis() as u64;
        match &a.report.attempt {
            Attempt::Status { status, .. } => r.status_code = Some(*status),
            Attempt::Transport(text) => {
                r.error = Some(crate::attempts::transport_class(text).to_string());
                r.error_detail = Some(text.clone());
            }
            Attempt::Refused(text) => {
                let class = if a.url.is_err() {
                    "bad_url"
                } else {
                    "refused_by_guard"
                };
                r.error = Some(class.to_string());
                r.error_detail = Some(text.clone());
            }
        }
        r.next_attempt_at = next_attempt_at;
        r.response_content_type = a.report.content_type.clone();
        r.response_retry_after = a.report.retry_after.clone();
        r.response_excerpt = a.report.excerpt.clone();
        self.queue(r);
    }

    /// An end of the message without an attempt (attempt number 0): dropped with its
    /// deleted subscription, dead-lettered unsent (`error`: the reason's code and text).
    pub(super) fn ended(&mut self, outcome: Outcome, error: Option<(&str, String)>) {
        if self.ctx.log.is_none() {
            return;
        }
        let mut r = record(self.job, self.ctx, 0, self.trigger(), outcome);
        if let Some((class, detail)) = error {
            r.error = Some(class.to_string());
            r.error_detail = Some(detail);
        }
        self.queue(r);
    }

    /// `job` (this trail's, or a record that went with it) moved to the retry topic
    /// behind its key's earlier records, without an attempt: its next attempt comes
    /// after theirs, so it has no time of its own.
    pub(super) fn parked_behind_key(&mut self, job: &Job) {
        if self.ctx.log.is_none() {
            return;
        }
        let r = record(job, self.ctx, 0, first_trigger(job), Outcome::Parked);
        self.queue(r);
    }

    /// Waits for every queued record's acknowledgement (`false`: shutdown came first).
    pub(super) async fn acknowledged(self) -> bool {
        match self.into_acknowledgement() {
            Some(logged) => logged.acknowledged().await,
            None => true,
        }
    }

    /// The queued records' acknowledgement, to wait for elsewhere (`None`: nothing
    /// queued).
    pub(super) fn into_acknowledgement(self) -> Option<Logged> {
        let log = self.ctx.log.clone()?;
        if self.pending.is_empty() {
            return None;
        }
        let (pending, stop) = (self.pending, self.ctx.shutdown.clone());
        Some(Logged(Box::pin(async move {
            log.acknowledged(pending, &stop).await
        })))
    }
}
