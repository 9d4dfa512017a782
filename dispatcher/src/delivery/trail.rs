//! A job's records in the delivery log (`crate::attempts`): one per attempt and one per
//! end without an attempt, queued as they happen and acknowledged before the job counts
//! as finished (a delivered message always has its `delivered` record; a record that
//! cannot be written holds the job, as a dead letter that cannot be written does).

use chrono::{DateTime, Utc};
use rdkafka::message::Headers;

use super::{Job, JobContext};
use crate::attempts::{AttemptRecord, Outcome, Pending, Trigger};
use crate::kafka::headers;
use crate::webhook::client::Report;
use crate::webhook::outcome::Attempt;

/// The header that names why a record is sent again (`resend`, `recover`), written by
/// the API on the records it sends.
pub const TRIGGER_HEADER: &str = headers::DELIVERY_TRIGGER;

pub(super) struct Trail<'a> {
    job: &'a Job,
    ctx: &'a JobContext,
    pending: Vec<Pending>,
    /// Whether this job made an attempt already (the next one is a `retry`).
    attempted: bool,
}

/// One attempt as the log keeps it.
pub(super) struct Attempted<'r> {
    pub(super) number: u32,
    pub(super) url: &'r Result<reqwest::Url, String>,
    pub(super) started_at: DateTime<Utc>,
    pub(super) report: &'r Report,
}

impl<'a> Trail<'a> {
    pub(super) fn new(job: &'a Job, ctx: &'a JobContext) -> Self {
        Self {
            job,
            ctx,
            pending: Vec::new(),
            attempted: false,
        }
    }

    fn header(&self, name: &str) -> Option<String> {
        let headers = self.job.headers.as_ref()?;
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The trigger of the job's first attempt.
    fn first_trigger(&self) -> Trigger {
        if self.job.parked.is_some() {
            return Trigger::Retry;
        }
        if let Some(t) = self
            .header(TRIGGER_HEADER)
            .and_then(|v| Trigger::from_header(&v))
        {
            return t;
        }
        if self.header(headers::REPLAYED_FROM).is_some() {
            return Trigger::Replay;
        }
        Trigger::Scheduled
    }

    fn record(&self, attempt: u32, trigger: Trigger, outcome: Outcome) -> AttemptRecord {
        let job = self.job;
        AttemptRecord {
            v: crate::attempts::VERSION,
            webhook_id: job.webhook_id.clone(),
            event_id: job.webhook_id.clone(),
            event_type: self.header(headers::EVENT_TYPE),
            order_id: String::from_utf8_lossy(&job.key).into_owned(),
            partner: self.ctx.partner.clone(),
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
        }
    }

    fn queue(&mut self, record: AttemptRecord) {
        if let Some(log) = &self.ctx.log {
            self.pending.push(log.queue(record));
        }
    }

    /// An attempt and what became of the message after it.
    pub(super) fn attempted(
        &mut self,
        a: Attempted<'_>,
        outcome: Outcome,
        next_attempt_at: Option<DateTime<Utc>>,
    ) {
        if self.ctx.log.is_none() {
            return;
        }
        let trigger = if self.attempted {
            Trigger::Retry
        } else {
            self.first_trigger()
        };
        self.attempted = true;
        let mut r = self.record(a.number, trigger, outcome);
        r.url = match a.url {
            Ok(url) => Some(crate::attempts::redact_url(url)),
            Err(_) => None,
        };
        r.started_at = a.started_at;
        r.duration_ms = a.report.elapsed.as_millis() as u64;
        match &a.report.attempt {
            Attempt::Status { status, .. } => r.status_code = Some(*status),
            Attempt::Transport(text) => {
                r.error = Some(crate::attempts::transport_class(text).to_string());
                r.error_detail = Some(text.clone());
            }
            Attempt::Refused(text) => {
                r.error = Some(
                    if a.url.is_err() {
                        "bad_url"
                    } else {
                        "refused_by_guard"
                    }
                    .to_string(),
                );
                r.error_detail = Some(text.clone());
            }
        }
        r.next_attempt_at = next_attempt_at;
        r.response_content_type = a.report.content_type.clone();
        r.response_retry_after = a.report.retry_after.clone();
        r.response_excerpt = a.report.excerpt.clone();
        self.queue(r);
    }

    /// An end of the message without an attempt (attempt number 0): parked behind its
    /// key, dropped with its deleted subscription, dead-lettered unsent (`error`: the
    /// reason's code and text).
    pub(super) fn ended(
        &mut self,
        outcome: Outcome,
        error: Option<(&str, String)>,
        next_attempt_at: Option<DateTime<Utc>>,
    ) {
        if self.ctx.log.is_none() {
            return;
        }
        let trigger = if self.attempted {
            Trigger::Retry
        } else {
            self.first_trigger()
        };
        let mut r = self.record(0, trigger, outcome);
        if let Some((class, detail)) = error {
            r.error = Some(class.to_string());
            r.error_detail = Some(detail);
        }
        r.next_attempt_at = next_attempt_at;
        self.queue(r);
    }

    /// Waits for every queued record's acknowledgement (`false`: shutdown came first;
    /// the job is then unfinished).
    pub(super) async fn acknowledged(self) -> bool {
        match &self.ctx.log {
            Some(log) if !self.pending.is_empty() => {
                log.acknowledged(self.pending, &self.ctx.shutdown).await
            }
            _ => true,
        }
    }
}
