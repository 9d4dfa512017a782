//! One delivery record's life: attempts, retries with backoff, and, when the outcome
//! table says so, a durable dead-letter record. A job is *finished* only when the
//! partner took it (2xx), the dead-letter topic acknowledged it, or its subscription is
//! gone; shutdown leaves it unfinished, so its offset is not committed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::kafka::headers;
use crate::metrics as m;
use crate::subscriptions::table::SubscriptionTable;
use crate::subscriptions::{dead_letter_topic, Subscription};
use crate::webhook::client::{Webhook, WebhookClient};
use crate::webhook::outcome::{backoff, classify, flow_signal, may_retry, Attempt, Decision};

/// A record of a partner's delivery topic, as the lane needs it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The lane's delivery or retry topic (shared: not a copy per record).
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub body: Bytes,
    pub webhook_id: String,
    pub subscription_id: String,
    pub traceparent: Option<String>,
    /// The record's headers, kept for the dead-letter record.
    pub headers: Option<OwnedHeaders>,
    /// Set for a record of the partner's retry topic: how far it got before it was
    /// parked there.
    pub parked: Option<Parked>,
    /// A record of the delivery topic whose key is parked: it goes to the retry topic
    /// behind the key's earlier records, without an attempt (set when it starts).
    pub follow: bool,
}

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

/// What a job needs from its lane.
#[derive(Clone)]
pub struct JobContext {
    pub partner: String,
    pub client: WebhookClient,
    pub table: SubscriptionTable,
    pub producer: FutureProducer,
    /// Requests in flight to this partner, Retry-After holds, rate limit, circuit.
    pub flow: Arc<crate::webhook::flow::PartnerFlow>,
    /// What a 410 Gone does with the disabled subscription (write it to the topic).
    pub on_gone: GoneHook,
    pub metrics: LaneMetrics,
    /// Attempt results, lag and oldest age for the partner's health.
    pub health: Arc<crate::health::PartnerHealth>,
    /// Failed attempts after which a record moves to the retry topic and its key is
    /// parked; `None`: records retry in the lane until the policy ends.
    pub park_after: Option<u32>,
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("partner", &self.partner)
            .finish_non_exhaustive()
    }
}

/// A lane's metric handles, resolved once (labels allocated once, not per delivery).
#[derive(Clone)]
pub struct LaneMetrics {
    delivered: metrics::Counter,
    dropped: metrics::Counter,
    in_flight: metrics::Gauge,
    attempt_seconds: metrics::Histogram,
    retries: metrics::Counter,
    attempts: [metrics::Counter; 6],
    pub buffered: metrics::Gauge,
    pub oldest_age: metrics::Gauge,
    pub paused: metrics::Gauge,
    /// Records written to the retry topic (parked, or following a parked key).
    pub parked: metrics::Counter,
    /// Keys parked now.
    pub parked_keys: metrics::Gauge,
}

impl LaneMetrics {
    pub fn new(partner: &str) -> Self {
        let p = partner.to_string();
        let attempt = |result: &'static str| metrics::counter!(m::ATTEMPTS, "partner" => p.clone(), "result" => result);
        Self {
            delivered: metrics::counter!(m::DELIVERIES, "partner" => p.clone(), "outcome" => "delivered"),
            dropped: metrics::counter!(m::DELIVERIES, "partner" => p.clone(), "outcome" => "dropped"),
            in_flight: metrics::gauge!(m::IN_FLIGHT, "partner" => p.clone()),
            attempt_seconds: metrics::histogram!(m::ATTEMPT_SECONDS, "partner" => p.clone()),
            retries: metrics::counter!(m::RETRIES, "partner" => p.clone()),
            attempts: ["2xx", "4xx", "5xx", "other", "transport", "refused"].map(attempt),
            buffered: metrics::gauge!(m::BUFFERED, "partner" => p.clone()),
            oldest_age: metrics::gauge!(m::OLDEST_AGE, "partner" => p.clone()),
            paused: metrics::gauge!(m::LANE_PAUSED, "partner" => p.clone()),
            parked: metrics::counter!(m::PARKED, "partner" => p.clone()),
            parked_keys: metrics::gauge!(m::PARKED_KEYS, "partner" => p.clone()),
        }
    }

    fn attempt(&self, attempt: &Attempt) -> &metrics::Counter {
        let i = match attempt {
            Attempt::Status {
                status: 200..=299, ..
            } => 0,
            Attempt::Status {
                status: 400..=499, ..
            } => 1,
            Attempt::Status {
                status: 500..=599, ..
            } => 2,
            Attempt::Status { .. } => 3,
            Attempt::Transport(_) => 4,
            Attempt::Refused(_) => 5,
        };
        &self.attempts[i]
    }
}

impl std::fmt::Debug for LaneMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaneMetrics")
    }
}

/// Called with the subscription, marked disabled, after a 410 Gone.
#[derive(Clone)]
pub struct GoneHook(pub Arc<dyn Fn(Subscription) + Send + Sync>);

impl std::fmt::Debug for GoneHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GoneHook")
    }
}

/// A job's end: `finished` false means shutdown interrupted it.
#[derive(Debug)]
pub struct Done {
    /// Whether the record came from the retry topic.
    pub retry: bool,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub finished: bool,
    /// The record was written to the retry topic, at this offset (its key is parked).
    pub parked: Option<i64>,
}

/// How [`deliver`] ended.
enum Ended {
    Finished,
    Unfinished,
    /// Written to the retry topic at this offset.
    Parked(i64),
}

/// Why a record is dead-lettered, and what the last attempt saw.
struct Failure {
    reason: String,
    attempts: u32,
    first: Option<chrono::DateTime<chrono::Utc>>,
    last: Option<chrono::DateTime<chrono::Utc>>,
    last_status: Option<u16>,
    last_error: Option<String>,
    excerpt: Option<String>,
}

impl Failure {
    /// Dead-lettered before this attempt was sent (no answer to keep).
    fn unsent(reason: String, attempts: u32, first: chrono::DateTime<chrono::Utc>) -> Self {
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

/// Counts a lane's jobs that are started but have neither sent their first request nor
/// begun to wait for a paused subscription. The lane starts more only while few are
/// ([`Starting::count`]), so its backlog waits in its own queue rather than as hundreds of
/// tasks parked on the partner's permit, each woken in turn (the deliveries bench: 20 %
/// more deliveries/s). Jobs waiting for a retry or a pause do not count, so a few failing
/// orders never keep the partner's others from starting.
#[derive(Debug, Default, Clone)]
pub struct Starting(Arc<StartingInner>);

#[derive(Debug, Default)]
struct StartingInner {
    count: std::sync::atomic::AtomicUsize,
    /// Told each time a job leaves the count (the lane may start another).
    left: tokio::sync::Notify,
}

impl Starting {
    pub fn count(&self) -> usize {
        self.0.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves once a job has left the count since the last call.
    pub async fn left(&self) {
        self.0.left.notified().await
    }

    fn ticket(&self) -> Ticket {
        self.0
            .count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ticket(Some(Arc::clone(&self.0)))
    }
}

/// A job's place in [`Starting`], given up once (at its first request, its first wait
/// for a pause, or its end).
#[derive(Debug)]
struct Ticket(Option<Arc<StartingInner>>);

impl Ticket {
    fn give_up(&mut self) {
        if let Some(s) = self.0.take() {
            s.count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            s.left.notify_one();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.give_up();
    }
}

/// Runs `job` to its end as a task of its own, so that a lane's requests are driven by
/// every runtime thread rather than only by the thread polling the lane's loop. The task
/// is aborted when the returned future is dropped (a lane that ends drops its jobs, as
/// before), and a panic in the job is the lane's panic. The job counts in `starting`
/// until its first request.
pub fn spawn(
    job: Job,
    ctx: Arc<JobContext>,
    starting: &Starting,
) -> impl std::future::Future<Output = Done> {
    // What an interrupted job reports: unfinished, so its offset is not stored.
    let unfinished = Done {
        retry: job.parked.is_some(),
        partition: job.partition,
        offset: job.offset,
        key: job.key.clone(),
        finished: false,
        parked: None,
    };
    let ticket = starting.ticket();
    let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(run(job, ctx, ticket)));
    async move {
        match task.await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Cancelled by the runtime shutting down.
            Err(_) => unfinished,
        }
    }
}

/// Runs `job` to its end.
async fn run(job: Job, ctx: Arc<JobContext>, mut ticket: Ticket) -> Done {
    let ended = if job.follow {
        // Its key is parked: behind the key's earlier records, with no attempt.
        let parked = Parked {
            attempts: 0,
            first: None,
            not_before: chrono::Utc::now(),
        };
        ticket.give_up();
        park(&job, &ctx, &parked).await
    } else {
        deliver(&job, &ctx, &mut ticket).await
    };
    Done {
        retry: job.parked.is_some(),
        partition: job.partition,
        offset: job.offset,
        key: job.key,
        finished: !matches!(ended, Ended::Unfinished),
        parked: match ended {
            Ended::Parked(at) => Some(at),
            _ => None,
        },
    }
}

async fn deliver(job: &Job, ctx: &JobContext, ticket: &mut Ticket) -> Ended {
    let partner = &ctx.partner;
    let lm = &ctx.metrics;
    let mut started = Instant::now();
    let mut first = chrono::Utc::now();
    let mut attempts = 0u32;
    if let Some(parked) = &job.parked {
        // Go on where the lane stopped: the same attempt count and retry budget.
        attempts = parked.attempts;
        if let Some(f) = parked.first {
            first = f;
            let spent = (chrono::Utc::now() - f).to_std().unwrap_or_default();
            started = Instant::now().checked_sub(spent).unwrap_or(started);
        }
        let wait = (parked.not_before - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        // A retry: waiting for it must not keep new records from starting.
        ticket.give_up();
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ended::Unfinished,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let done = |written: bool| {
        if written {
            Ended::Finished
        } else {
            Ended::Unfinished
        }
    };
    loop {
        // Before every attempt: the subscription as it is now (a URL or secret change
        // applies to the next attempt). A paused or disconnected one holds the record
        // here, in order, until it is resumed (or deleted, or shutdown leaves the record
        // unfinished for the next owner); the retry budget starts again after a hold.
        let (target, held) = match hold(job, ctx, ticket).await {
            Hold::Ready { target, held } => (target, held),
            Hold::Unsubscribed => {
                lm.dropped.increment(1);
                return Ended::Finished;
            }
            Hold::Invalid(reason) => {
                let failure = Failure::unsent(reason, attempts, first);
                return done(dead_letter(job, ctx, failure).await);
            }
            Hold::Shutdown => return Ended::Unfinished,
        };
        if held {
            started = Instant::now();
            first = chrono::Utc::now();
            attempts = 0;
        }
        let subscription = &target.subscription;
        if subscription.disabled {
            let failure = Failure::unsent("subscription disabled".into(), attempts, first);
            return done(dead_letter(job, ctx, failure).await);
        }
        let permit = tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ended::Unfinished,
            p = ctx.flow.acquire(&ctx.shutdown) => match p { Some(p) => p, None => return Ended::Unfinished },
        };
        ticket.give_up();
        // The wait for a permit can be long (an open circuit): look again.
        let latest = ctx.table.target(&job.subscription_id);
        if latest
            .as_ref()
            .is_none_or(|t| !Arc::ptr_eq(&t.subscription, &target.subscription))
        {
            ctx.flow
                .release(permit, crate::webhook::flow::Signal::Neutral);
            continue;
        }
        attempts += 1;
        lm.in_flight.increment(1.0);
        let hook = Webhook {
            url: &target.url,
            id: &job.webhook_id,
            body: &job.body,
            secrets: &target.keys[..subscription.active_keys(chrono::Utc::now())],
            traceparent: job.traceparent.as_deref(),
            timeout: subscription.request_timeout(),
        };
        let report = ctx.client.send(&hook).await;
        ctx.flow
            .release(permit, flow_signal(&report.attempt, report.elapsed));
        lm.in_flight.decrement(1.0);
        lm.attempt(&report.attempt).increment(1);
        ctx.health.attempt(matches!(
            report.attempt,
            Attempt::Status {
                status: 200..=299,
                ..
            }
        ));
        lm.attempt_seconds.record(report.elapsed.as_secs_f64());
        let (last_status, last_error) = match &report.attempt {
            Attempt::Status { status, .. } => (Some(*status), None),
            Attempt::Transport(e) | Attempt::Refused(e) => (None, Some(e.clone())),
        };
        let failure = |reason: String| Failure {
            reason,
            attempts,
            first: Some(first),
            last: Some(chrono::Utc::now()),
            last_status,
            last_error: last_error.clone(),
            excerpt: report.excerpt.clone(),
        };
        match classify(&report.attempt) {
            Decision::Delivered => {
                lm.delivered.increment(1);
                return Ended::Finished;
            }
            Decision::Gone
                if ctx
                    .table
                    .get(&subscription.id)
                    .is_some_and(|now| now.url != subscription.url) =>
            {
                // The URL changed while this request was out: the old endpoint is gone,
                // the new one has not been asked yet.
                tracing::info!(partner = %partner, subscription = %subscription.id, "410 Gone from a URL no longer in use: retrying at the current URL");
                continue;
            }
            Decision::Gone => {
                tracing::warn!(partner = %partner, subscription = %subscription.id, "410 Gone: disabling the subscription");
                metrics::counter!(m::DISABLED, "partner" => partner.clone()).increment(1);
                let mut disabled = (**subscription).clone();
                disabled.disabled = true;
                (ctx.on_gone.0)(disabled);
                return done(
                    dead_letter(job, ctx, failure("410 Gone: subscription disabled".into())).await,
                );
            }
            Decision::DeadLetter => {
                let reason = match (&report.attempt, last_status) {
                    (Attempt::Refused(why), _) => format!("refused: {why}"),
                    (_, Some(s)) => format!("status {s} is not retried"),
                    _ => "not retried".into(),
                };
                return done(dead_letter(job, ctx, failure(reason)).await);
            }
            Decision::Retry { at_least } => {
                let delay = backoff(
                    &subscription.retry,
                    attempts,
                    at_least,
                    rand::random::<f64>(),
                );
                if !may_retry(&subscription.retry, attempts, started.elapsed(), delay) {
                    return done(
                        dead_letter(
                            job,
                            ctx,
                            failure(format!("retry policy spent after {attempts} attempts")),
                        )
                        .await,
                    );
                }
                lm.retries.increment(1);
                // The lane's budget is spent while the partner takes other records (its
                // circuit is closed): the record waits in the retry topic, its key is
                // parked, and the lane's offset moves on. When the whole partner fails,
                // parking would only copy its backlog: records wait in the lane.
                if job.parked.is_none()
                    && ctx.park_after.is_some_and(|n| attempts >= n)
                    && ctx.flow.circuit() == crate::webhook::flow::Circuit::Closed
                {
                    let parked = Parked {
                        attempts,
                        first: Some(first),
                        not_before: later(delay),
                    };
                    return park(job, ctx, &parked).await;
                }
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ended::Unfinished,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Now plus `delay`, saturating instead of panicking past chrono's range (delays are
/// bounded by the validated retry policy; this only keeps a bad one from killing the lane).
fn later(delay: Duration) -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

enum Hold {
    Ready {
        target: Arc<crate::subscriptions::table::Target>,
        /// Whether the record waited for a pause or disconnect to end.
        held: bool,
    },
    /// The subscription was deleted: its backlog is dropped (the partner guide says so).
    Unsubscribed,
    /// The record cannot be delivered as its subscription stands (invalid here, or the
    /// record names none): it is dead-lettered with this reason.
    Invalid(String),
    Shutdown,
}

/// Waits while the record's subscription is paused or disconnected (woken by changes of
/// the subscription table, not by polling it).
async fn hold(job: &Job, ctx: &JobContext, ticket: &mut Ticket) -> Hold {
    let mut held = false;
    let mut changes = ctx.table.watch();
    loop {
        // Marked seen before the look, so a change right after it still wakes us.
        changes.borrow_and_update();
        let Some(target) = ctx.table.target(&job.subscription_id) else {
            if job.subscription_id.is_empty() {
                return Hold::Invalid("no subscription-id header on the delivery record".into());
            }
            if let Some(invalid) = ctx.table.invalid(&job.subscription_id) {
                return Hold::Invalid(format!("subscription invalid: {}", invalid.reason));
            }
            // Deleted: nothing to deliver, nothing to keep.
            return Hold::Unsubscribed;
        };
        let s = &target.subscription;
        if !s.paused && s.disconnected.is_none() {
            return Hold::Ready { target, held };
        }
        held = true;
        ticket.give_up();
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Hold::Shutdown,
            changed = changes.changed() => if changed.is_err() { return Hold::Shutdown },
        }
    }
}

/// Writes the record to the partner's retry topic, in the partition of the same number
/// (the lane that owns one owns the other), with its progress in `retry-*` headers;
/// waits for the acknowledgement, retrying until it is written or shutdown.
async fn park(job: &Job, ctx: &JobContext, parked: &Parked) -> Ended {
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
    let topic = crate::subscriptions::retry_topic(&ctx.partner);
    let Some(at) =
        write_until_acknowledged(job, ctx, &topic, Some(job.partition), headers, || {}).await
    else {
        return Ended::Unfinished;
    };
    ctx.metrics.parked.increment(1);
    tracing::debug!(partner = %ctx.partner, webhook_id = %job.webhook_id, attempts = parked.attempts, "parked in the retry topic");
    Ended::Parked(at)
}

/// Writes the job's key and body with `headers` to `topic` (to `partition`, or by key)
/// and waits for the acknowledgement, retrying every 500 ms (calling `on_error`) until
/// it is written (its offset there) or shutdown (`None`): until then the record is not
/// durable there and its offset must not move.
async fn write_until_acknowledged(
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

/// Writes the dead-letter record (original bytes and headers plus why) and waits for
/// the acknowledgement, retrying until it is written or shutdown.
async fn dead_letter(job: &Job, ctx: &JobContext, failure: Failure) -> bool {
    let mut headers = job.headers.clone().unwrap_or_default();
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let extra: Vec<(&str, Option<String>)> = vec![
        (headers::DLQ_REASON, Some(failure.reason.clone())),
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
    let topic = dead_letter_topic(&ctx.partner);
    let failed = || {
        metrics::counter!(m::DEAD_LETTER_WRITE_FAILURES, "partner" => ctx.partner.clone())
            .increment(1)
    };
    if write_until_acknowledged(job, ctx, &topic, None, headers, failed)
        .await
        .is_none()
    {
        return false;
    }
    let label = if failure.reason.starts_with("410") {
        "gone"
    } else {
        "dead_lettered"
    };
    metrics::counter!(m::DELIVERIES, "partner" => ctx.partner.clone(), "outcome" => label)
        .increment(1);
    let short = failure.reason.split(':').next().unwrap_or("").to_string();
    let reason = if short.starts_with("status") {
        "status".to_string()
    } else {
        short
    };
    metrics::counter!(m::DEAD_LETTERED, "partner" => ctx.partner.clone(), "reason" => reason)
        .increment(1);
    tracing::info!(partner = %ctx.partner, webhook_id = %job.webhook_id, reason = %failure.reason, "dead-lettered");
    true
}
