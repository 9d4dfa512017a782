//! Stage 2, a partner's delivery lane: one consumer (in a group of its own per partner,
//! so partners rebalance and lag independently) over `deliveries.<partner>`.
//!
//! - records with the same key are delivered strictly one after another, in offset order;
//! - records with different keys go out in parallel, up to the partner's in-flight cap;
//! - at most `max_buffered` records are taken from Kafka and unfinished at once: past
//!   that the lane pauses its partitions (and keeps polling, so it stays in its group)
//!   and the backlog stays in Kafka;
//! - offsets are stored only for the contiguous prefix of finished records, in one call
//!   per 50 ms rather than one per record (a revoke in between redoes at most those
//!   50 ms of work; shutdown stores them before its commit);
//! - on revoke the revoked partitions' queued work is dropped (its new owner redoes it);
//! - on shutdown the lane stops reading and drains what it already took in (so a
//!   restart redelivers nothing that was delivered); at the deadline, jobs waiting for a
//!   retry give up, requests in flight end, and the lane commits;
//! - a job that did not finish drops the records queued behind it for the same key: they
//!   are redone after it, in order, by whoever reads the partition next.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::delivery::{self, Job, JobContext};
use crate::kafka::backpressure::Backpressure;
use crate::kafka::group::GroupContext;
use crate::kafka::headers;
use crate::kafka::KafkaSettings;
use crate::subscriptions::delivery_topic;

mod read_back;
pub mod restart;
mod state;
mod supervisor;

pub use supervisor::supervise;

use read_back::{ReadBacks, Rebalances};
use state::{LaneState, ReadBack};

/// Settings of every lane.
#[derive(Debug, Clone)]
pub struct LaneConfig {
    /// Group id prefix; a partner's lane uses `<prefix>.<partner>`.
    pub group_prefix: String,
    /// Records taken in and unfinished per partner, at most. Default 1,024.
    pub max_buffered: usize,
    /// How long shutdown waits for requests in flight. Default 10 s.
    pub shutdown_deadline: Duration,
    /// Partitions of the delivery and dead-letter topics created for a new partner.
    pub partitions: i32,
    /// Circuit breaker and Retry-After bounds of every partner.
    pub flow: crate::webhook::flow::FlowConfig,
    /// Failed attempts after which a record is parked in the retry topic (`None`:
    /// never; records retry in the lane).
    pub park_after: Option<u32>,
    /// Where each lane's group member shows its state (`/status`).
    pub groups: crate::kafka::group::GroupBoard,
}

/// How often finished offsets are handed to the consumer (one call for all partitions).
const STORE_EVERY: Duration = Duration::from_millis(50);

/// Most job ends, and most records, the lane's loop handles in one turn beyond the one
/// that woke it (the timers and shutdown are looked at between turns).
const BATCH: usize = 64;

/// Started jobs before their first request a lane allows, at least (more when the
/// partner's concurrency limit is higher).
const MIN_STARTING: usize = 16;

/// `topics`: the lane's delivery and retry topic.
fn job_from(message: &BorrowedMessage<'_>, topics: &[Arc<str>; 2]) -> Job {
    let retry = message.topic() == &*topics[1];
    let raw = |name: &str| {
        message
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
    };
    let text = |name: &str| raw(name).map(|v| String::from_utf8_lossy(v).into_owned());
    Job {
        topic: Arc::clone(&topics[usize::from(retry)]),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().unwrap_or_default().to_vec(),
        body: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        webhook_id: text(headers::WEBHOOK_ID).unwrap_or_default(),
        subscription_id: text(headers::SUBSCRIPTION_ID).unwrap_or_default(),
        traceparent: text(headers::TRACEPARENT),
        occurred_at_ms: raw(headers::OCCURRED_AT)
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok()),
        headers: message.headers().map(|h| h.detach()),
        parked: retry.then(|| delivery::Parked::from_headers(text)),
        follow: false,
    }
}

/// Runs one partner's lane until `shutdown`.
///
/// The lane consumes the partner's delivery topic and its retry topic in one group with
/// the range assignor: both topics have the same partition count, so a member owns
/// partition `p` of both, and the parked keys of `p` are its own business.
pub async fn run(
    partner: String,
    settings: KafkaSettings,
    config: LaneConfig,
    ctx: JobContext,
) -> anyhow::Result<()> {
    let topic = delivery_topic(&partner);
    let retry_topic = crate::subscriptions::retry_topic(&partner);
    let group = format!("{}.{partner}", config.group_prefix);
    let consumer: StreamConsumer<GroupContext> = settings
        .consumer(&group)
        // Statistics every 5 s carry each partition's consumer lag (GroupContext::stats).
        .set("statistics.interval.ms", "5000")
        .set("partition.assignment.strategy", "range")
        .create_with_context(
            GroupContext::new(&format!("lane {partner}"), &topic)
                .with_health(Arc::clone(&ctx.health))
                .on_board(&config.groups),
        )?;
    let parking = ctx.park_after.is_some();
    if parking {
        consumer.subscribe(&[&topic, &retry_topic])?;
    } else {
        consumer.subscribe(&[&topic])?;
    }
    // `shutdown` stops fetching; `abort` (at the drain deadline) makes jobs give up.
    let shutdown = ctx.shutdown.clone();
    let abort = CancellationToken::new();
    let ctx = Arc::new(JobContext {
        shutdown: abort.clone(),
        ..ctx
    });
    let mut state = LaneState::default();
    let (rebuilt_tx, mut rebuilt) = tokio::sync::mpsc::unbounded_channel::<ReadBack>();
    let rebalances = Rebalances {
        partner: partner.clone(),
        topic: topic.clone(),
        retry_topic: retry_topic.clone(),
        read_backs: parking.then(|| ReadBacks {
            settings: settings.clone(),
            group: group.clone(),
            retry_topic: retry_topic.clone(),
            answers: rebuilt_tx,
            stop: shutdown.clone(),
        }),
    };
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    let mut store = tokio::time::interval(STORE_EVERY);
    store.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = FuturesUnordered::new();
    let mut stream = consumer.stream();
    tracing::info!(partner = %partner, topic = %topic, parking, "delivery lane started");
    let lm = ctx.metrics.clone();
    // Each topic has its own buffer: parked records waiting on a failing key never stop
    // the delivery topic.
    let mut backpressure = Backpressure::new(config.max_buffered);
    let mut retry_backpressure = Backpressure::new(config.max_buffered);
    let topics = [topic.as_str(), retry_topic.as_str()];
    let shared_topics: [Arc<str>; 2] = [topic.as_str().into(), retry_topic.as_str().into()];
    let starting = delivery::Starting::default();
    'lane: loop {
        rebalances.follow(&mut state, &consumer);
        // Start ready records while fewer started jobs than the partner's concurrency
        // limit (at least MIN_STARTING) are still before their first request: enough
        // to take up every permit the moment it is free, and no more (delivery::Starting).
        let room = (ctx.flow.limit() as usize).max(MIN_STARTING);
        while starting.count() < room {
            let Some(job) = state.ready.pop_front() else {
                break;
            };
            running.push(delivery::spawn(job, Arc::clone(&ctx), &starting));
        }
        let assigned = consumer.context().take_assigned();
        let readable = backpressure.update(
            &consumer,
            state.pending(false),
            assigned,
            Some(&topic),
            Some(&lm.paused),
        ) & (!parking
            || retry_backpressure.update(
                &consumer,
                state.pending(true),
                assigned,
                Some(&retry_topic),
                None,
            ));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = sample.tick() => {
                // Of the delivery topic: a parked order waits on purpose (its retry
                // policy bounds it) and must not make the whole partner look stuck.
                let oldest = state
                    .tracker
                    .oldest_in(|tp| !tp.retry)
                    .map_or(Duration::ZERO, |t| t.elapsed());
                lm.oldest_age.set(oldest.as_secs_f64());
                lm.parked_keys.set(state.parked.len() as f64);
                ctx.health.oldest_age_ms.store(oldest.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            _ = store.tick() => {
                rebalances.follow(&mut state, &consumer);
                state.store_offsets(&consumer, topics);
            }
            Some(answer) = rebuilt.recv() => {
                tracing::debug!(partner = %partner, partition = answer.partition, from = answer.from, to = answer.to, parked = answer.counts.len(), "parked keys read back");
                let ready = state.finish_rebuild(answer);
                state.ready.extend(ready);
            }
            // A started job sent its first request (or waits for a pause): room to
            // start another.
            _ = starting.left(), if !state.ready.is_empty() => {}
            Some(done) = running.next(), if !running.is_empty() => {
                // This and every other job that has already ended, in one turn: a turn
                // of this loop (one task for the whole lane) costs more than a job's end.
                // (A noop waker polls the others; the next turn's select! polls again
                // with the lane's own, before the lane waits.)
                let mut done = Some(done);
                let mut handled = 0;
                while let Some(d) = done.take() {
                    if let Some(next) = state.done(d) {
                        state.ready.push_back(next);
                    }
                    handled += 1;
                    if handled > BATCH {
                        break;
                    }
                    done = running.next().now_or_never().flatten();
                }
                lm.buffered.set(state.tracker.total_pending() as f64);
            }
            // Also polled while paused: rebalances are served and the consumer stays in
            // its group however long the partner takes.
            message = stream.next(), if readable => {
                // The poll that returned this record may come right after one that
                // served a rebalance (in this same select!): what it revoked and
                // assigned is followed before the record is taken in. A rebalance served
                // by a later poll of this batch ends the batch (the poll is Pending).
                rebalances.follow(&mut state, &consumer);
                // This record and those already fetched behind it, in one turn, while
                // there is room in the buffer (both topics' buffers).
                let mut message = Some(message);
                let mut handled = 0;
                while let Some(m) = message.take() {
                    let Some(m) = m else { break 'lane };
                    match m {
                        Ok(m) => {
                            let job = job_from(&m, &shared_topics);
                            drop(m);
                            if let Some(start) = state.take(job) {
                                state.ready.push_back(start);
                            }
                        }
                        Err(error) => {
                            tracing::warn!(partner = %partner, %error, "consuming deliveries");
                        }
                    }
                    handled += 1;
                    if handled > BATCH
                        || state.pending(false) >= config.max_buffered
                        || state.pending(true) >= config.max_buffered
                    {
                        break;
                    }
                    message = stream.next().now_or_never();
                }
                lm.buffered.set(state.tracker.total_pending() as f64);
            }
        }
    }
    drop(stream);
    // Drain what was taken in (started at once), until the deadline; then jobs give up
    // and end.
    for job in std::mem::take(&mut state.ready) {
        running.push(delivery::spawn(job, Arc::clone(&ctx), &starting));
    }
    let deadline = tokio::time::sleep(config.shutdown_deadline);
    tokio::pin!(deadline);
    while !running.is_empty() {
        tokio::select! {
            _ = &mut deadline, if !abort.is_cancelled() => {
                tracing::warn!(partner = %partner, unfinished = state.tracker.total_pending(), "shutdown deadline: giving up on the rest");
                abort.cancel();
                state.waiting.clear();
            }
            Some(done) = running.next() => {
                if let Some(next) = state.done(done) {
                    running.push(delivery::spawn(next, Arc::clone(&ctx), &starting));
                }
            }
        }
    }
    rebalances.follow(&mut state, &consumer);
    state.store_offsets(&consumer, topics);
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(partner = %partner, %error, "final lane commit");
    }
    tracing::info!(partner = %partner, "delivery lane stopped");
    Ok(())
}
