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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::FutureProducer;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::backpressure::Backpressure;
use crate::flow::PartnerFlow;
use crate::group::{GroupChange, GroupContext};
use crate::http::WebhookClient;
use crate::job::{self, Done, GoneHook, Job, JobContext, LaneMetrics};
use crate::kafka::KafkaSettings;
use crate::offsets::OffsetTracker;
use crate::subscription::{dead_letter_topic, delivery_topic};
use crate::table::SubscriptionTable;

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
    pub flow: crate::flow::FlowConfig,
    /// Failed attempts after which a record is parked in the retry topic (`None`:
    /// never; records retry in the lane).
    pub park_after: Option<u32>,
}

/// `topics`: the lane's delivery and retry topic.
fn job_from(message: &BorrowedMessage<'_>, topics: &[Arc<str>; 2]) -> Job {
    let retry = message.topic() == &*topics[1];
    let text = |name: &str| {
        message
            .headers()
            .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    Job {
        topic: Arc::clone(&topics[usize::from(retry)]),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().unwrap_or_default().to_vec(),
        body: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
        webhook_id: text("webhook-id").unwrap_or_default(),
        subscription_id: text("subscription-id").unwrap_or_default(),
        traceparent: text("traceparent"),
        headers: message.headers().map(|h| h.detach()),
        parked: retry.then(|| job::Parked::from_headers(text)),
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
    let retry_topic = crate::subscription::retry_topic(&partner);
    let group = format!("{}.{partner}", config.group_prefix);
    let consumer: StreamConsumer<GroupContext> = settings
        .consumer(&group)
        // Statistics every 5 s carry each partition's consumer lag (GroupContext::stats).
        .set("statistics.interval.ms", "5000")
        .set("partition.assignment.strategy", "range")
        .create_with_context(
            GroupContext::new(&format!("lane {partner}"), &topic)
                .with_health(Arc::clone(&ctx.health)),
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
    let starting = job::Starting::default();
    'lane: loop {
        rebalances.follow(&mut state, &consumer);
        // Start ready records while fewer started jobs than the partner's concurrency
        // limit (at least MIN_STARTING) are still before their first request: enough
        // to take up every permit the moment it is free, and no more (job::Starting).
        let room = (ctx.flow.limit() as usize).max(MIN_STARTING);
        while starting.count() < room {
            let Some(job) = state.ready.pop_front() else {
                break;
            };
            running.push(job::spawn(job, Arc::clone(&ctx), &starting));
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
                tracing::debug!(partner = %partner, partition = answer.0, range = ?answer.2, parked = answer.3.len(), "parked keys read back");
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
        running.push(job::spawn(job, Arc::clone(&ctx), &starting));
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
                    running.push(job::spawn(next, Arc::clone(&ctx), &starting));
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

/// A partition of the lane: of the delivery topic, or of the retry topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Tp {
    retry: bool,
    partition: i32,
}

impl Tp {
    fn of(job: &Job) -> Self {
        Self {
            retry: job.parked.is_some(),
            partition: job.partition,
        }
    }
}

/// What a lane has taken in: offsets, the key in flight per (partition, key), the
/// records waiting behind it, and the parked keys.
#[derive(Default)]
struct LaneState {
    tracker: OffsetTracker<Tp>,
    /// Records free to start (their key's turn), in the order they became so; started by
    /// [`launch`] while few started jobs are still before their first request.
    ready: VecDeque<Job>,
    waiting: HashMap<(Tp, Vec<u8>), VecDeque<Job>>,
    busy: HashSet<(Tp, Vec<u8>)>,
    /// Offsets to store at the next [`STORE_EVERY`] tick.
    to_store: BTreeMap<Tp, i64>,
    /// Per (partition, key) of the delivery topic: its records in the retry topic not
    /// finished yet. A key with a positive count is parked: its next records follow
    /// the others into the retry topic, so one key's order holds.
    parked: HashMap<(i32, Vec<u8>), i64>,
    /// Delivery partitions whose parked keys are being read back from the retry topic
    /// (after an assignment): their records wait here until then, and the retry
    /// records finished meanwhile are noted (offset, key).
    rebuilding: HashMap<i32, Rebuild>,
    /// Numbers the read-backs, so that the answer of one started before a revoke is not
    /// taken for the one after the next assignment.
    generation: u64,
}

/// A delivery partition's records held while its parked keys are read back, the retry
/// records finished meanwhile (offset, key), and the records this lane wrote to the
/// retry partition meanwhile (offset there, key: jobs that began before a revoke and
/// re-assignment end during the read-back).
#[derive(Default)]
struct Rebuild {
    generation: u64,
    held: Vec<Job>,
    finished: Vec<(i64, Vec<u8>)>,
    written: Vec<(i64, Vec<u8>)>,
}

/// A read-back's answer: partition, generation, the range of the retry partition read
/// (from the group's committed offset to the end it saw), and the count per key of its
/// records in that range.
type ReadBack = (i32, u64, (i64, i64), ParkedCounts);

/// Records per key in a retry partition.
type ParkedCounts = HashMap<Vec<u8>, i64>;

/// How often finished offsets are handed to the consumer (one call for all partitions).
const STORE_EVERY: Duration = Duration::from_millis(50);

/// Most job ends, and most records, the lane's loop handles in one turn beyond the one
/// that woke it (the timers and shutdown are looked at between turns).
const BATCH: usize = 64;

/// Started jobs before their first request a lane allows, at least (more when the
/// partner's concurrency limit is higher).
const MIN_STARTING: usize = 16;

impl LaneState {
    /// Takes in a record; returns it when its key is free (it is ready to start).
    fn take(&mut self, job: Job) -> Option<Job> {
        let tp = Tp::of(&job);
        self.tracker.begin(tp, job.offset);
        if !tp.retry {
            if let Some(rebuild) = self.rebuilding.get_mut(&job.partition) {
                rebuild.held.push(job);
                return None;
            }
        }
        self.admit(job)
    }

    /// Starts the record when its key is free, else queues it behind the key.
    fn admit(&mut self, job: Job) -> Option<Job> {
        let slot = (Tp::of(&job), job.key.clone());
        if self.busy.contains(&slot) {
            self.waiting.entry(slot).or_default().push_back(job);
            None
        } else {
            self.busy.insert(slot);
            Some(self.prepare(job))
        }
    }

    /// Decided when a record starts: a delivery record of a parked key follows it.
    fn prepare(&self, mut job: Job) -> Job {
        // (No parked key at all is the usual case: no lookup, no key copy.)
        if job.parked.is_none() && !self.parked.is_empty() {
            job.follow = self
                .parked
                .get(&(job.partition, job.key.clone()))
                .is_some_and(|n| *n > 0);
        }
        job
    }

    fn parked_add(&mut self, partition: i32, key: Vec<u8>, n: i64) {
        use std::collections::hash_map::Entry;
        match self.parked.entry((partition, key)) {
            Entry::Occupied(mut e) => {
                *e.get_mut() += n;
                if *e.get() == 0 {
                    e.remove();
                }
            }
            Entry::Vacant(e) => {
                if n != 0 {
                    e.insert(n);
                }
            }
        }
    }

    /// A delivery partition was assigned: hold its records until its parked keys are
    /// known. Returns the read-back's generation.
    fn start_rebuild(&mut self, partition: i32) -> u64 {
        self.generation += 1;
        self.rebuilding.entry(partition).or_default().generation = self.generation;
        self.generation
    }

    /// The parked keys of `partition` were read back: `counts` per key of the records in
    /// the retry partition from `from` to `to`. Returns the held records that can start.
    fn finish_rebuild(
        &mut self,
        (partition, generation, (from, to), mut counts): ReadBack,
    ) -> Vec<Job> {
        if self
            .rebuilding
            .get(&partition)
            .is_none_or(|r| r.generation != generation)
        {
            return Vec::new(); // revoked since, or superseded by a newer read-back
        }
        let Some(Rebuild {
            held,
            finished,
            written,
            ..
        }) = self.rebuilding.remove(&partition)
        else {
            return Vec::new();
        };
        for (offset, key) in finished {
            if offset >= from {
                *counts.entry(key).or_default() -= 1;
            }
        }
        // Written past what the read-back saw: not counted yet.
        for (offset, key) in written {
            if offset >= to {
                *counts.entry(key).or_default() += 1;
            }
        }
        for (key, n) in counts {
            if n > 0 {
                self.parked_add(partition, key, n);
            }
        }
        held.into_iter().filter_map(|job| self.admit(job)).collect()
    }

    /// Follows what rebalances changed, in order: a revoked partition's queued work is
    /// left to its new owner and its unstored offsets are not stored; an assigned
    /// delivery partition holds its records until its parked keys are read back.
    /// Returns the read-backs to start: (partition, generation).
    fn follow(&mut self, lane: &Rebalances, changes: Vec<GroupChange>) -> Vec<(i32, u64)> {
        let mut read_backs = Vec::new();
        for change in changes {
            match change {
                GroupChange::Revoked(topic, partition) => {
                    self.forget(Tp {
                        retry: topic == lane.retry_topic,
                        partition,
                    });
                    tracing::debug!(partner = %lane.partner, %topic, partition, "queued work of a revoked partition left to its new owner");
                }
                GroupChange::Assigned(topic, partition)
                    if topic == lane.topic && lane.read_backs.is_some() =>
                {
                    let generation = self.start_rebuild(partition);
                    tracing::debug!(partner = %lane.partner, partition, generation, "reading the partition's parked keys back");
                    read_backs.push((partition, generation));
                }
                GroupChange::Assigned(..) => {}
            }
        }
        read_backs
    }

    /// Drops what the lane holds of a revoked partition.
    fn forget(&mut self, tp: Tp) {
        self.tracker.forget(tp);
        self.to_store.remove(&tp);
        self.waiting.retain(|(t, _), _| *t != tp);
        // Not started: no job will end for them, so their keys are freed here.
        let busy = &mut self.busy;
        self.ready.retain(|job| {
            let keep = Tp::of(job) != tp;
            if !keep {
                busy.remove(&(tp, job.key.clone()));
            }
            keep
        });
        if !tp.retry {
            self.rebuilding.remove(&tp.partition);
            self.parked.retain(|(p, _), _| *p != tp.partition);
        }
    }

    /// Hands the finished prefixes to the consumer (committed by auto-commit, revoke or
    /// the final commit).
    fn store_offsets(&mut self, consumer: &StreamConsumer<GroupContext>, topics: [&str; 2]) {
        if self.to_store.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::with_capacity(self.to_store.len());
        for (tp, next) in std::mem::take(&mut self.to_store) {
            let topic = topics[usize::from(tp.retry)];
            // Stored as the next offset to read, as a commit expects.
            if let Err(error) = list.add_partition_offset(topic, tp.partition, Offset::Offset(next))
            {
                tracing::warn!(%error, "offset list");
            }
        }
        if let Err(error) = consumer.store_offsets(&list) {
            tracing::debug!(%error, "storing offsets (partition no longer assigned?)");
        }
    }

    /// Records a job's end; returns the next record of its key to start, if any.
    fn done(&mut self, done: Done) -> Option<Job> {
        let Done {
            retry,
            partition,
            offset,
            key,
            finished,
            parked,
        } = done;
        let tp = Tp { retry, partition };
        let slot = (tp, key);
        self.busy.remove(&slot);
        if !finished {
            // Later records of this key must not overtake it: leave them to a restart.
            self.waiting.remove(&slot);
            return None;
        }
        if let Some(at) = parked {
            // While its parked keys are read back, the read-back may or may not have seen
            // this write: decided by its offset when the answer comes.
            match self.rebuilding.get_mut(&partition) {
                Some(rebuild) => rebuild.written.push((at, slot.1.clone())),
                None => self.parked_add(partition, slot.1.clone(), 1),
            }
        } else if retry {
            match self.rebuilding.get_mut(&partition) {
                Some(rebuild) => rebuild.finished.push((offset, slot.1.clone())),
                None => self.parked_add(partition, slot.1.clone(), -1),
            }
        }
        if let Some(next) = self.tracker.finish(tp, offset) {
            self.to_store.insert(tp, next);
        }
        let next = self.waiting.get_mut(&slot).and_then(VecDeque::pop_front);
        match &next {
            Some(_) => {
                self.busy.insert(slot);
            }
            None => {
                self.waiting.remove(&slot);
            }
        }
        next.map(|job| self.prepare(job))
    }

    fn pending(&self, retry: bool) -> usize {
        self.tracker.pending_in(|tp| tp.retry == retry)
    }
}

/// What a lane needs to follow its group's rebalances ([`LaneState::follow`]).
struct Rebalances {
    partner: String,
    topic: String,
    retry_topic: String,
    /// When the lane parks keys: where read-backs of parked keys start.
    read_backs: Option<ReadBacks>,
}

/// Starts read-backs of a delivery partition's parked keys; they answer on one channel.
struct ReadBacks {
    settings: KafkaSettings,
    group: String,
    retry_topic: String,
    answers: tokio::sync::mpsc::UnboundedSender<ReadBack>,
    stop: CancellationToken,
}

impl Rebalances {
    /// Follows the rebalances of `consumer` since the last call ([`LaneState::follow`])
    /// and starts the read-backs they call for.
    fn follow(&self, state: &mut LaneState, consumer: &StreamConsumer<GroupContext>) {
        let started = state.follow(self, consumer.context().take_changes());
        if let Some(read_backs) = &self.read_backs {
            for (partition, generation) in started {
                read_backs.start(partition, generation);
            }
        }
    }
}

impl ReadBacks {
    /// Reads back the parked keys of `partition` (with [`read_parked`], again every
    /// second until it succeeds or `stop`) and sends the answer to the lane.
    fn start(&self, partition: i32, generation: u64) {
        let (settings, group, retry_topic) = (
            self.settings.clone(),
            self.group.clone(),
            self.retry_topic.clone(),
        );
        let (answers, stop) = (self.answers.clone(), self.stop.clone());
        tokio::spawn(async move {
            loop {
                let (s, g, r) = (settings.clone(), group.clone(), retry_topic.clone());
                let read = tokio::task::spawn_blocking(move || read_parked(&s, &g, &r, partition))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|read| read);
                match read {
                    Ok((range, counts)) => {
                        let _ = answers.send((partition, generation, range, counts));
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(partition, %error, "reading parked keys back; retrying")
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
}

/// Reads back the parked keys of delivery partition `partition`: the records of the
/// same partition of the retry topic from the group's committed offset on. Returns
/// (the range read, count per key). Blocking.
fn read_parked(
    settings: &KafkaSettings,
    group: &str,
    retry_topic: &str,
    partition: i32,
) -> anyhow::Result<((i64, i64), ParkedCounts)> {
    let mut config = settings.reader();
    config.set("group.id", group);
    let consumer: BaseConsumer = config.create()?;
    let mut list = TopicPartitionList::new();
    list.add_partition(retry_topic, partition);
    let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
    let (low, high) = consumer.fetch_watermarks(retry_topic, partition, Duration::from_secs(10))?;
    let from = match committed.elements().first().map(|e| e.offset()) {
        Some(Offset::Offset(o)) => o.max(low),
        _ => low,
    };
    let ranges = [(partition, (from, high))].into();
    let records =
        crate::kafka::read_ranges(&consumer, retry_topic, &ranges, Duration::from_secs(30))?;
    let mut counts = ParkedCounts::new();
    for r in records {
        *counts.entry(r.key).or_default() += 1;
    }
    Ok(((from, high.max(from)), counts))
}

/// Creates the partner's retry topic with as many partitions as its delivery topic, and
/// checks that they have: a lane owns partition `p` of both (range assignment).
async fn retry_topic_like_deliveries(
    settings: &KafkaSettings,
    partner: &str,
) -> anyhow::Result<()> {
    let (deliveries, retries) = (
        delivery_topic(partner),
        crate::subscription::retry_topic(partner),
    );
    let s = settings.clone();
    let d = deliveries.clone();
    let n = tokio::task::spawn_blocking(move || s.partition_count(&d)).await??;
    settings
        .ensure_topics(std::slice::from_ref(&retries), n as i32, &[])
        .await?;
    let s = settings.clone();
    let r = retries.clone();
    let m = tokio::task::spawn_blocking(move || s.partition_count(&r)).await??;
    anyhow::ensure!(
        m == n,
        "`{retries}` has {m} partitions and `{deliveries}` {n}: they must be equal"
    );
    Ok(())
}

/// Starts a lane for every partner that has a subscription, now and whenever one
/// appears, creating its delivery and dead-letter topics first; returns at shutdown once
/// every lane has stopped.
pub async fn supervise(
    settings: KafkaSettings,
    config: LaneConfig,
    table: SubscriptionTable,
    client: WebhookClient,
    on_gone: GoneHook,
    watched: Arc<Mutex<HashMap<String, crate::health::Watched>>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer: FutureProducer = settings.producer().create()?;
    let mut lanes: HashMap<String, tokio::task::JoinHandle<anyhow::Result<()>>> = HashMap::new();
    let mut flows: HashMap<String, Arc<PartnerFlow>> = HashMap::new();
    let mut changes = table.watch();
    loop {
        // Per partner: the largest in-flight cap and the smallest rate limit of its
        // subscriptions.
        let mut partners: HashMap<String, (usize, Option<f64>)> = HashMap::new();
        for s in table.all() {
            let (cap, rate) = partners.entry(s.partner_id.clone()).or_default();
            *cap = (*cap).max(s.max_in_flight);
            *rate = match (*rate, s.rate_limit_per_sec) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        for (partner, (cap, rate)) in partners {
            if let Some(flow) = flows.get(&partner) {
                flow.configure(cap, rate);
                continue;
            }
            let topics = [delivery_topic(&partner), dead_letter_topic(&partner)];
            if let Err(error) = settings
                .ensure_topics(&topics, config.partitions, &[])
                .await
            {
                tracing::warn!(partner = %partner, %error, "cannot create the partner's topics yet");
                continue;
            }
            let park_after = match config.park_after {
                Some(n) => match retry_topic_like_deliveries(&settings, &partner).await {
                    Ok(()) => Some(n),
                    Err(error) => {
                        tracing::error!(partner = %partner, %error, "parking keys is off for this partner");
                        None
                    }
                },
                None => None,
            };
            let flow = PartnerFlow::new(&partner, cap, rate, config.flow.clone());
            flows.insert(partner.clone(), Arc::clone(&flow));
            let health = Arc::new(crate::health::PartnerHealth::default());
            watched.lock().unwrap_or_else(|p| p.into_inner()).insert(
                partner.clone(),
                crate::health::Watched {
                    health: Arc::clone(&health),
                    flow: Arc::clone(&flow),
                },
            );
            let ctx = JobContext {
                partner: partner.clone(),
                client: client.clone(),
                table: table.clone(),
                producer: producer.clone(),
                flow,
                on_gone: on_gone.clone(),
                metrics: LaneMetrics::new(&partner),
                health,
                park_after,
                shutdown: shutdown.clone(),
            };
            let handle = tokio::spawn(run(partner.clone(), settings.clone(), config.clone(), ctx));
            lanes.insert(partner, handle);
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    for (partner, handle) in lanes {
        match handle.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(partner = %partner, %error, "lane failed"),
            Err(error) => tracing::error!(partner = %partner, %error, "lane panicked"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELIVERIES: &str = "deliveries.p";
    const RETRIES: &str = "retries.p";

    fn lane() -> Rebalances {
        let (answers, _) = tokio::sync::mpsc::unbounded_channel();
        Rebalances {
            partner: "p".into(),
            topic: DELIVERIES.into(),
            retry_topic: RETRIES.into(),
            read_backs: Some(ReadBacks {
                settings: KafkaSettings {
                    brokers: "127.0.0.1:9".into(),
                    session_timeout: Duration::from_secs(6),
                    max_poll_interval: Duration::from_secs(300),
                    options: Vec::new(),
                },
                group: "g".into(),
                retry_topic: RETRIES.into(),
                answers,
                stop: CancellationToken::new(),
            }),
        }
    }

    fn record(partition: i32, offset: i64, key: &str) -> Job {
        Job {
            topic: Arc::from(DELIVERIES),
            partition,
            offset,
            key: key.as_bytes().to_vec(),
            body: Bytes::new(),
            webhook_id: format!("{key}-{offset}"),
            subscription_id: "s".into(),
            traceparent: None,
            headers: None,
            parked: None,
            follow: false,
        }
    }

    fn assigned(partition: i32) -> GroupChange {
        GroupChange::Assigned(DELIVERIES.into(), partition)
    }

    fn revoked(partition: i32) -> GroupChange {
        GroupChange::Revoked(DELIVERIES.into(), partition)
    }

    #[test]
    fn a_record_of_a_reassigned_partition_follows_its_parked_key() {
        // The new owner of partition 1 reads back that `bad` has 3 records in the retry
        // topic: the delivery topic's `bad` taken meanwhile must follow them there, the
        // other key goes out at once.
        let lane = lane();
        let mut state = LaneState::default();
        let started = state.follow(&lane, vec![assigned(1)]);
        let [(1, generation)] = started[..] else {
            panic!("one read-back of partition 1: {started:?}")
        };
        assert!(state.take(record(1, 7, "bad")).is_none(), "held");
        assert!(state.take(record(1, 8, "ok")).is_none(), "held");
        let ready = state.finish_rebuild((1, generation, (0, 3), [(b"bad".to_vec(), 3)].into()));
        let follows: Vec<(String, bool)> = ready
            .iter()
            .map(|j| (j.webhook_id.clone(), j.follow))
            .collect();
        assert_eq!(
            follows,
            vec![("bad-7".to_string(), true), ("ok-8".to_string(), false)]
        );
    }

    #[test]
    fn a_write_to_the_retry_topic_during_a_read_back_is_counted_once() {
        // A job that began before partition 1 was revoked and assigned back parks its
        // record while the new read-back runs: at offset 4, which the read-back (0..5)
        // saw, and at offset 5, which it did not.
        let lane = lane();
        let mut state = LaneState::default();
        let [(1, generation)] = state.follow(&lane, vec![assigned(1)])[..] else {
            panic!("one read-back")
        };
        let parked_at = |at: i64, key: &str| Done {
            retry: false,
            partition: 1,
            offset: 0,
            key: key.as_bytes().to_vec(),
            finished: true,
            parked: Some(at),
        };
        assert!(state.done(parked_at(4, "seen")).is_none());
        assert!(state.done(parked_at(5, "unseen")).is_none());
        state.finish_rebuild((1, generation, (0, 5), [(b"seen".to_vec(), 1)].into()));
        assert_eq!(
            state.parked.get(&(1, b"seen".to_vec())),
            Some(&1),
            "not twice"
        );
        assert_eq!(state.parked.get(&(1, b"unseen".to_vec())), Some(&1));
        // Without a read-back going on, a write counts at once.
        assert!(state.done(parked_at(6, "seen")).is_none());
        assert_eq!(state.parked.get(&(1, b"seen".to_vec())), Some(&2));
    }

    #[test]
    fn a_revoke_and_assignment_in_one_batch_are_followed_in_their_order() {
        let lane = lane();
        let mut state = LaneState::default();
        // Taken before the rebalance, then revoked: left to the new owner.
        assert!(state.take(record(1, 3, "a")).is_some());
        // Revoked, then assigned back (an eager rebalance): the partition is ours and
        // its records wait for its parked keys.
        let started = state.follow(&lane, vec![revoked(1), assigned(1)]);
        assert_eq!(started.len(), 1);
        assert_eq!(
            state.tracker.total_pending(),
            0,
            "the revoked record is forgotten"
        );
        assert!(
            state.take(record(1, 3, "a")).is_none(),
            "held for the read-back"
        );
        // Assigned, then revoked: nothing is held for it any more.
        let mut state = LaneState::default();
        state.follow(&lane, vec![assigned(2), revoked(2)]);
        assert!(state.rebuilding.is_empty());
        assert!(state.take(record(2, 0, "b")).is_some());
    }

    #[test]
    fn a_lane_that_does_not_park_reads_nothing_back() {
        let mut lane = lane();
        lane.read_backs = None;
        let mut state = LaneState::default();
        assert!(state.follow(&lane, vec![assigned(0)]).is_empty());
        assert!(state.take(record(0, 0, "a")).is_some());
    }
}
