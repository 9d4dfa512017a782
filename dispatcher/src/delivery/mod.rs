//! One delivery record's life: attempts, retries with backoff, and, when the outcome
//! table says so, a durable dead-letter record. A job is *finished* only when the
//! partner took it (2xx), the dead-letter topic acknowledged it, or its subscription is
//! gone; shutdown leaves it unfinished, so its offset is not committed.

//!
//! - `attempt.rs`: the attempt loop (hold while paused, permit, request, outcome).
//! - `park.rs`: moving a record to the retry topic; the acknowledged write.
//! - `dead_letter.rs`: the dead-letter record and its typed reason.
//! - `gate.rs`: the lane's start gate; `metrics.rs`: the lane's metric handles.

use std::sync::Arc;

use bytes::Bytes;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use crate::subscriptions::table::SubscriptionTable;
use crate::subscriptions::Subscription;
use crate::webhook::client::WebhookClient;

mod attempt;
mod dead_letter;
mod gate;
mod metrics;
mod park;
#[cfg(test)]
mod tests;
mod trail;

pub use dead_letter::DeadLetterReason;
pub use gate::Starting;
pub use metrics::LaneMetrics;
pub use park::Parked;

use gate::Ticket;

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
    /// When the event occurred (milliseconds since the epoch, the `occurred-at` header):
    /// the start of its time to webhook.
    pub occurred_at_ms: Option<i64>,
    /// When the intake read the record (the start of its `lane_to_request` hop).
    pub read_at: Option<std::time::Instant>,
    /// The record's headers, kept for the dead-letter record.
    pub headers: Option<OwnedHeaders>,
    /// Set for a record of the partner's retry topic: how far it got before it was
    /// parked there.
    pub parked: Option<Parked>,
    /// A record of the delivery topic whose key is parked: it goes to the retry topic
    /// behind the key's earlier records, without an attempt (set when it starts).
    pub follow: bool,
    /// With `follow`: the key's later records the lane held when it started, written
    /// behind it in the same go (one acknowledgement wait for all, not one each).
    pub followers: Vec<Job>,
    /// The assignment of its partition it was read in (the intake's epoch; 0: not read
    /// through an intake's assignment, e.g. in tests). Its end no longer counts once
    /// that assignment is over (the partition was revoked meanwhile).
    pub epoch: u64,
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
    /// The partner's dead-letter topic, made on its first dead letter.
    pub dead_letter_topic: Arc<crate::kafka::TopicOnDemand>,
    /// The partner's retry topic, made on its first parked record (with as many
    /// partitions as its delivery topic).
    pub retry_topic: Arc<crate::kafka::TopicOnDemand>,
    /// The delivery log (`None`: off).
    pub log: Option<crate::attempts::AttemptLog>,
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("partner", &self.partner)
            .finish_non_exhaustive()
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

/// How a job ended, as its lane needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEnd {
    /// Delivered, durably dead-lettered, or dropped with its deleted subscription: its
    /// offset may be committed.
    Finished,
    /// Written to the retry topic at this offset (its key is parked): its offset may be
    /// committed too.
    Parked { at: i64 },
    /// Shutdown interrupted it: its offset must not move, the next owner redoes it.
    Interrupted,
}

/// A finished job's delivery-log records on their way: resolves to whether the log
/// acknowledged them (`false`: shutdown came first). The job's offset moves only once
/// it resolves `true`; the key's next record may start before (`lane::state::done`).
pub struct Logged(std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>);

impl Logged {
    pub fn new(f: impl std::future::Future<Output = bool> + Send + 'static) -> Self {
        Self(Box::pin(f))
    }

    pub async fn acknowledged(self) -> bool {
        self.0.await
    }
}

impl std::fmt::Debug for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Logged")
    }
}

/// A job's end, with the record it was about.
#[derive(Debug)]
pub struct Done {
    /// Whether the record came from the retry topic.
    pub retry: bool,
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    /// The record's subscription (records start one at a time per subscription and key).
    pub subscription_id: String,
    pub end: JobEnd,
    /// How the job's `followers` ended (offset, end), in order.
    pub followed: Vec<(i64, JobEnd)>,
    /// The job's [`Job::epoch`].
    pub epoch: u64,
    /// For a job that ended [`JobEnd::Finished`] with delivery-log records: their
    /// acknowledgement, which its offset waits for.
    pub logged: Option<Logged>,
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
        subscription_id: job.subscription_id.clone(),
        end: JobEnd::Interrupted,
        followed: Vec::new(),
        epoch: job.epoch,
        logged: None,
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

/// Runs `job` to its end. A job that parked records waits for their delivery-log
/// records here (the key's parked count follows the park at once); a finished one hands
/// its log records' acknowledgement to the lane ([`Done::logged`]), so the key's next
/// record does not wait for the log.
async fn run(mut job: Job, ctx: Arc<JobContext>, mut ticket: Ticket) -> Done {
    let mut followed = Vec::new();
    let mut logged = None;
    let end = if job.follow {
        // Its key is parked: behind the key's earlier records, with no attempt, and
        // the key's records queued behind it with it.
        ticket.give_up();
        let followers = std::mem::take(&mut job.followers);
        let mut ends = park::follow(&job, &followers, &ctx).await.into_iter();
        let end = ends.next().unwrap_or(JobEnd::Interrupted);
        followed = followers.iter().map(|f| f.offset).zip(ends).collect();
        let mut trail = trail::Trail::new(&job, &ctx);
        let parked = std::iter::once((&job, end))
            .chain(followers.iter().zip(followed.iter().map(|&(_, e)| e)))
            .filter(|(_, e)| matches!(e, JobEnd::Parked { .. }));
        for (j, _) in parked {
            trail.parked_behind_key(j);
        }
        // (The parks are durable whatever the log does: a shutdown that comes first
        // leaves their log records to librdkafka's queue.)
        trail.acknowledged().await;
        end
    } else {
        let mut trail = trail::Trail::new(&job, &ctx);
        let end = attempt::deliver(&job, &ctx, &mut ticket, &mut trail).await;
        match end {
            JobEnd::Parked { .. } => {
                trail.acknowledged().await;
            }
            JobEnd::Finished => logged = trail.into_acknowledgement(),
            JobEnd::Interrupted => {}
        }
        end
    };
    Done {
        retry: job.parked.is_some(),
        partition: job.partition,
        offset: job.offset,
        key: job.key,
        subscription_id: job.subscription_id,
        end,
        followed,
        epoch: job.epoch,
        logged,
    }
}
