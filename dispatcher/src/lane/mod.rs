//! Stage 2, a partner's delivery lane: the partner's records, handed over by the
//! instance's shared [`intake`] (two Kafka consumers for every partner together).
//!
//! - records with the same key are delivered strictly one after another, in offset order;
//! - records with different keys go out in parallel, up to the partner's in-flight cap;
//! - at most about `max_buffered` records are taken from Kafka and unfinished at once
//!   (a finished job waiting only for its delivery-log record counts for a quarter:
//!   [`held`]; and all lanes together stay near the instance's global cap): past that the lane
//!   pauses its own partitions on the shared consumer, the other partners' keep flowing,
//!   and the backlog stays in Kafka ([`throttle`]);
//! - offsets are stored only for the contiguous prefix of finished records, in one call
//!   per 50 ms rather than one per record (a revoke in between redoes at most those
//!   50 ms of work; shutdown stores them before the intake's final commit);
//! - on revoke the revoked partitions' queued work is dropped (its new owner redoes it);
//! - on shutdown the lane stops taking records and drains what it already took in (so a
//!   restart redelivers nothing that was delivered); at the deadline, jobs waiting for a
//!   retry give up, requests in flight end, and the lane stores its offsets;
//! - a job that did not finish drops the records queued behind it for the same key: they
//!   are redone after it, in order, by whoever reads the partition next.

use std::sync::Arc;
use std::time::Duration;

use std::collections::{BTreeSet, HashMap, HashSet};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use crate::delivery::{self, JobContext};
use crate::kafka::group::GroupChange;
use crate::kafka::KafkaSettings;
use crate::subscriptions::delivery_topic;

pub mod intake;
mod read_back;
pub mod restart;
mod state;
mod supervisor;
mod throttle;
pub mod upgrade;

pub use intake::{Change, Intake, LaneLink, Record};
pub use supervisor::{supervise, LaneShared};
pub use throttle::GlobalCap;

use read_back::{ReadBacks, Rebalances};
use state::{LaneState, ReadBack};
use throttle::Throttle;

/// Settings of every lane.
#[derive(Debug, Clone)]
pub struct LaneConfig {
    /// The lanes' consumer group (`<prefix>`; before #14 each partner had a group of
    /// its own, `<prefix>.<partner>`, whose offsets [`upgrade`] adopts).
    pub group_prefix: String,
    /// Records taken in and unfinished per partner, at most. Default 1,024.
    pub max_buffered: usize,
    /// How long shutdown waits for requests in flight. Default 10 s.
    pub shutdown_deadline: Duration,
    /// Records taken in and unfinished by every lane of the instance together, about
    /// at most (each lane with some pauses once they reach it).
    pub global: GlobalCap,
    /// Partitions of the delivery, retry and dead-letter topics created for a new
    /// partner.
    pub partitions: i32,
    /// Circuit breaker and Retry-After bounds of every partner.
    pub flow: crate::webhook::flow::FlowConfig,
    /// Failed attempts after which a record is parked in the retry topic (`None`:
    /// never; records retry in the lane).
    pub park_after: Option<u32>,
    /// Where each lane's group member shows its state (`/status`).
    pub groups: crate::kafka::group::GroupBoard,
    /// How long a partner that lost its last subscription keeps its lane. Default 60 s.
    pub departed_after: Duration,
    /// The delivery log (`None`: off).
    pub log: Option<crate::attempts::AttemptLog>,
}

/// How often finished offsets are handed to the consumer (one call for all partitions).
const STORE_EVERY: Duration = Duration::from_millis(50);

/// Most job ends, and most records, the lane's loop handles in one turn beyond the one
/// that woke it (the timers and shutdown are looked at between turns).
const BATCH: usize = 64;

/// Started jobs before their first request a lane allows, at least (more when the
/// partner's concurrency limit is higher).
const MIN_STARTING: usize = 16;

/// A finished job waiting only for its delivery-log records counts for 1/LOG_SLACK of
/// a record held ([`held`]).
const LOG_SLACK: usize = 4;

/// The records of one topic (`retry` or not) the lane counts as held against
/// `max_buffered`. A finished job waiting only for its log records holds no payload
/// and no permit: it counts for a quarter, so the log's acknowledgement time does not
/// cap the lane at `max_buffered` per round trip (the deliveries bench ran at 0.37×
/// with a 50 ms linger on the log), while a log that cannot be written still stops
/// the lane, at LOG_SLACK × `max_buffered` finished jobs.
fn held(state: &LaneState, waiting_log: &[usize; 2], retry: bool) -> usize {
    let (all, logging) = (state.pending(retry), waiting_log[usize::from(retry)]);
    all.saturating_sub(logging) + logging.div_ceil(LOG_SLACK)
}

/// The lane's partitions as the intake told it: which are its (per topic; the epoch of
/// each assignment is in [`LaneState::epochs`]), and the retry partitions it asked the
/// intake to read, with where each delivery partition's read-back of parked keys
/// started (the retry reader starts there).
#[derive(Default)]
struct Owned {
    assigned: [BTreeSet<i32>; 2],
    reading: HashSet<i32>,
    retry_from: HashMap<i32, i64>,
}

impl Owned {
    /// Follows one partition change of the intake: the lane's partitions and their
    /// epochs, a new partition paused or resumed as its topic is, and the lane's state
    /// ([`Rebalances`]).
    fn follow(
        &mut self,
        change: Change,
        throttle: &Throttle,
        consumers: [&intake::LaneConsumer; 2],
        topics: [&str; 2],
        rebalances: &Rebalances,
        state: &mut LaneState,
    ) {
        let Change {
            retry,
            partition,
            assigned: gained,
            epoch,
        } = change;
        let k = usize::from(retry);
        let topic = topics[k].to_string();
        let tp = state::Tp { retry, partition };
        let change = if gained {
            self.assigned[k].insert(partition);
            state.epochs.insert(tp, epoch);
            throttle.assigned(consumers[k], &topic, retry, partition);
            GroupChange::Assigned(topic, partition)
        } else {
            self.assigned[k].remove(&partition);
            state.epochs.remove(&tp);
            if !retry {
                self.reading.remove(&partition);
                self.retry_from.remove(&partition);
            }
            GroupChange::Revoked(topic, partition)
        };
        rebalances.follow(state, vec![change]);
    }

    /// The current read-back of delivery partition `partition` started at `from` of its
    /// retry partition and found records there (`holds`): whether to ask the intake to
    /// read it.
    fn read_back(&mut self, partition: i32, from: i64, holds: bool) -> bool {
        self.retry_from.insert(partition, from);
        holds && self.reading.insert(partition)
    }

    /// The lane parked a record of delivery partition `partition`: where to ask the
    /// intake to read its retry partition from, if it is not read yet.
    fn parked(&mut self, partition: i32) -> Option<Option<i64>> {
        (self.assigned[0].contains(&partition) && self.reading.insert(partition))
            .then(|| self.retry_from.get(&partition).copied())
    }
}

/// Runs one partner's lane alone until `shutdown`, with an intake of its own in group
/// `<group_prefix>.<partner>` (benchmarks and tests of one lane; `dispatcher run`
/// shares one intake between its lanes, [`supervise`]).
pub async fn run(
    partner: String,
    settings: KafkaSettings,
    config: LaneConfig,
    ctx: JobContext,
) -> anyhow::Result<()> {
    let (intake, task) = Intake::start(
        &settings,
        &format!("{}.{partner}", config.group_prefix),
        &config.groups,
        ctx.shutdown.clone(),
    )?;
    let link = intake.join(
        &partner,
        ctx.park_after.is_some(),
        Some(Arc::clone(&ctx.health)),
    );
    let result = run_linked(partner, link, config, ctx).await;
    let _ = task.await;
    intake.close();
    result
}

/// Runs one partner's lane until `shutdown`, on what the intake hands it (`link`).
///
/// The intake reads retry partition `p` exactly while delivery partition `p` is ours, so
/// the parked keys of `p` are this lane's business.
pub async fn run_linked(
    partner: String,
    link: LaneLink,
    config: LaneConfig,
    ctx: JobContext,
) -> anyhow::Result<()> {
    let LaneLink {
        mut changes,
        mut records,
        deliveries,
        retries,
        read_backs,
        read_retries,
    } = link;
    let topic = delivery_topic(&partner);
    let retry_topic = crate::subscriptions::retry_topic(&partner);
    let parking = ctx.park_after.is_some();
    // `shutdown` stops taking records; `abort` (at the drain deadline) makes jobs give up.
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
            pool: read_backs,
            retry_topic: retry_topic.clone(),
            answers: rebuilt_tx,
        }),
    };
    let mut sample = tokio::time::interval(Duration::from_secs(1));
    let mut store = tokio::time::interval(STORE_EVERY);
    store.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut running = FuturesUnordered::new();
    // Finished jobs' offsets waiting for their delivery-log records (`state::Unlogged`).
    let mut acks = FuturesUnordered::new();
    let mut unlogged = Vec::new();
    // Of them, per topic (delivery, retry): finished and waiting only for the log.
    let mut waiting_log = [0usize; 2];
    let wait_for_log = |u: state::Unlogged| async move {
        let state::Unlogged {
            logged,
            tp,
            offset,
            key,
            epoch,
        } = u;
        (logged.acknowledged().await, tp, offset, key, epoch)
    };
    tracing::info!(partner = %partner, topic = %topic, parking, "delivery lane started");
    let lm = ctx.metrics.clone();
    // Each topic has its own pause: parked records waiting on a failing key never stop
    // the delivery topic.
    let mut throttle = Throttle::new(config.max_buffered, config.global.clone());
    let mut owned = Owned::default();
    // Whether the lane takes records: not from `max_buffered` unfinished records of the
    // delivery topic until a quarter of them finished; they wait in the channel
    // meanwhile (no more than what was fetched before the pause).
    let mut taking = true;
    let consumers = [&*deliveries, &*retries];
    let topics = [topic.as_str(), retry_topic.as_str()];
    let starting = delivery::Starting::default();
    'lane: loop {
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
        let pending = [false, true].map(|retry| held(&state, &waiting_log, retry));
        // Waiting by policy: records held by a paused or disconnected subscription, and
        // every parked record (it waits for its backoff, or behind its key's).
        let waiting = [ctx.health.held_by_subscription(), pending[1]];
        let load = throttle::Load {
            pending,
            waiting,
            queued: records.len(),
        };
        throttle.update(consumers, topics, &owned.assigned, load, &lm.paused);
        // Only the delivery topic's records stop the lane taking: a full retry side
        // (parked orders waiting for their backoff) must not hold the partner's other
        // orders, and is bounded by its own pause (twice `max_buffered` held).
        if pending[0] >= config.max_buffered {
            taking = false;
        } else if pending[0] <= config.max_buffered - (config.max_buffered / 4).max(1) {
            taking = true;
        }
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
            // (Idle lanes have nothing to store: no timer wakes them 20 times a second.)
            _ = store.tick(), if !state.to_store.is_empty() => {
                state.store_offsets(consumers, topics);
            }
            Some(answer) = rebuilt.recv() => {
                tracing::debug!(partner = %partner, partition = answer.partition, from = answer.from, to = answer.to, parked = answer.counts.len(), "parked keys read back");
                let current = state
                    .rebuilding
                    .get(&answer.partition)
                    .is_some_and(|r| r.generation == answer.generation);
                if current && owned.read_back(answer.partition, answer.from, answer.to > answer.from) {
                    read_retries.start(answer.partition, Some(answer.from));
                }
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
                    if matches!(d.end, delivery::JobEnd::Parked { .. }) {
                        if let Some(from) = owned.parked(d.partition) {
                            read_retries.start(d.partition, from);
                        }
                    }
                    if let Some(next) = state.done(d, &mut unlogged) {
                        state.ready.push_back(next);
                    }
                    for u in unlogged.drain(..) {
                        waiting_log[usize::from(u.tp.retry)] += 1;
                        acks.push(wait_for_log(u));
                    }
                    handled += 1;
                    if handled > BATCH {
                        break;
                    }
                    done = running.next().now_or_never().flatten();
                }
                lm.buffered.set(state.tracker.total_pending() as f64);
            }
            Some((logged, tp, offset, key, epoch)) = acks.next(), if !acks.is_empty() => {
                // (Not logged: shutdown; the offset stays, the next owner redoes it.)
                waiting_log[usize::from(tp.retry)] -= 1;
                if logged {
                    state.logged(tp, offset, &key, epoch);
                }
                lm.buffered.set(state.tracker.total_pending() as f64);
            }
            Some(change) = changes.recv() => {
                owned.follow(change, &throttle, consumers, topics, &rebalances, &mut state);
            }
            // Records, in the order the intake read them, while there is room.
            record = records.recv(), if taking => {
                let mut record = Some(record);
                let mut handled = 0;
                while let Some(r) = record.take() {
                    let Some(Record { job, epoch }) = r else { break 'lane };
                    let (retry, partition) = (job.parked.is_some(), job.partition);
                    if state.epoch(retry, partition).is_none_or(|e| e < epoch) {
                        // Its assignment's change is on its way: it was sent first.
                        while let Ok(change) = changes.try_recv() {
                            owned.follow(change, &throttle, consumers, topics, &rebalances, &mut state);
                        }
                    }
                    if state.epoch(retry, partition) == Some(epoch) {
                        if let Some(start) = state.take(job) {
                            state.ready.push_back(start);
                        }
                    }
                    handled += 1;
                    if handled > BATCH || held(&state, &waiting_log, false) >= config.max_buffered {
                        break;
                    }
                    record = records.recv().now_or_never();
                }
                lm.buffered.set(state.tracker.total_pending() as f64);
            }
        }
    }
    drop((changes, records));
    // Drain what was taken in (started at once), until the deadline; then jobs give up
    // and end.
    for job in std::mem::take(&mut state.ready) {
        running.push(delivery::spawn(job, Arc::clone(&ctx), &starting));
    }
    let deadline = tokio::time::sleep(config.shutdown_deadline);
    tokio::pin!(deadline);
    while !running.is_empty() || !acks.is_empty() {
        tokio::select! {
            _ = &mut deadline, if !abort.is_cancelled() => {
                tracing::warn!(partner = %partner, unfinished = state.tracker.total_pending(), "shutdown deadline: giving up on the rest");
                abort.cancel();
                state.waiting.clear();
            }
            Some(done) = running.next(), if !running.is_empty() => {
                if let Some(next) = state.done(done, &mut unlogged) {
                    running.push(delivery::spawn(next, Arc::clone(&ctx), &starting));
                }
                acks.extend(unlogged.drain(..).map(wait_for_log));
            }
            Some((logged, tp, offset, key, epoch)) = acks.next(), if !acks.is_empty() => {
                if logged {
                    state.logged(tp, offset, &key, epoch);
                }
            }
        }
    }
    // (Dropping `throttle` gives its count in the global cap back.)
    state.store_offsets(consumers, topics);
    tracing::info!(partner = %partner, "delivery lane stopped");
    Ok(())
}
