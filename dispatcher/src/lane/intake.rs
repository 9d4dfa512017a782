//! The lanes' intake: two Kafka consumers per instance, whatever the number of partners.
//!
//! - **deliveries**: one member of the lanes' group (`<prefix>`) over every partner's
//!   delivery topic, with the cooperative-sticky assignor: a new partner's partitions are
//!   assigned without taking any partition from the others, and an instance joining or
//!   leaving moves only the partitions that change hands.
//! - **retries**: a group-less reader (`assign`) of the retry topics. It reads retry
//!   partition `p` of a partner only while delivery partition `p` is ours, so the member
//!   that parks a key also reads its parked records back, whatever the assignor does;
//!   and only once the lane asks ([`LaneLink::read_retries`]: its read-back found
//!   parked records there, or it parked one), so partners that never park cost no
//!   fetches. Its offsets are committed to `<prefix>.retry.offsets`, a group nobody
//!   joins.
//!
//! One task reads both and hands each record, and each partition gained or lost, to its
//! partner's lane. Changes and records travel on two channels, so a full lane can stop
//! taking records and still follow its partitions: each assignment of a partition has an
//! epoch, carried by its change and its records, and a lane drops a record of an epoch
//! that is over (its partition was revoked since). Lanes store offsets and pause or
//! resume their own partitions on the shared consumers; the last commit is
//! [`Intake::close`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use crate::delivery::{self, Job};
use crate::kafka::group::{GroupBoard, GroupChange, GroupContext};
use crate::kafka::{headers, KafkaSettings};
use crate::subscriptions::{delivery_topic, retry_topic};

/// A consumer shared by every lane of the instance.
pub type LaneConsumer = StreamConsumer<GroupContext>;

/// How long the intake waits after a partner joins before it subscribes, for the others
/// joining with it.
const SUBSCRIBE_AFTER: Duration = Duration::from_millis(100);

/// The group that holds the retry topics' offsets: nobody joins it (the retry reader
/// commits as a group-less consumer), and no partner's legacy group `<prefix>.<partner>`
/// can have its name (partner ids have no `.`).
pub fn retry_offsets_group(prefix: &str) -> String {
    format!("{prefix}.retry.offsets")
}

/// A partition of the delivery topic (`retry: false`) or of the retry topic became the
/// lane's (`assigned`, from `epoch` on) or stopped being its.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub retry: bool,
    pub partition: i32,
    pub assigned: bool,
    pub epoch: u64,
}

/// A record, with the epoch of its partition's assignment it was read in.
#[derive(Debug)]
pub struct Record {
    pub job: Job,
    pub epoch: u64,
}

/// What a lane gets from the intake: its inputs, and the consumers its offsets are
/// stored on and its partitions paused on.
pub struct LaneLink {
    pub changes: UnboundedReceiver<Change>,
    pub records: UnboundedReceiver<Record>,
    pub deliveries: Arc<LaneConsumer>,
    pub retries: Arc<LaneConsumer>,
    /// Where the lane's read-backs of parked keys are done.
    pub read_backs: super::read_back::ReadBackPool,
    /// Where the lane asks for its retry partitions to be read.
    pub read_retries: ReadRetries,
}

/// A lane's way to ask the intake to read one of its retry partitions.
#[derive(Debug, Clone)]
pub struct ReadRetries {
    commands: UnboundedSender<Command>,
    partner: String,
}

impl ReadRetries {
    /// Reads retry partition `partition` from offset `from` (where the lane's read-back
    /// of its parked keys started; the committed offset when `None`) while delivery
    /// partition `partition` is the lane's.
    pub fn start(&self, partition: i32, from: Option<i64>) {
        let _ = self.commands.send(Command::ReadRetry {
            partner: self.partner.clone(),
            partition,
            from,
        });
    }
}

#[derive(Debug)]
enum Command {
    ReadRetry {
        partner: String,
        partition: i32,
        from: Option<i64>,
    },
    Join {
        partner: String,
        parking: bool,
        health: Option<Arc<crate::health::PartnerHealth>>,
        inbox: Inbox,
    },
}

/// Where the intake sends a lane's changes and records.
#[derive(Debug)]
struct Inbox {
    changes: UnboundedSender<Change>,
    records: UnboundedSender<Record>,
}

/// The handle of the intake task.
#[derive(Clone)]
pub struct Intake {
    commands: UnboundedSender<Command>,
    deliveries: Arc<LaneConsumer>,
    retries: Arc<LaneConsumer>,
    retry_group: String,
    read_backs: super::read_back::ReadBackPool,
}

impl std::fmt::Debug for LaneLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneLink").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("retry_group", &self.retry_group)
            .finish_non_exhaustive()
    }
}

/// A partner as the intake routes it.
struct Route {
    inbox: Inbox,
    parking: bool,
    /// The delivery and retry topic, shared by the partner's jobs.
    topics: [Arc<str>; 2],
    /// Delivery partitions that are ours, with the epoch of their assignment.
    assigned: BTreeMap<i32, u64>,
    /// Retry partitions being read (of delivery partitions that are ours).
    reading: BTreeSet<i32>,
}

impl Route {
    fn change(&self, retry: bool, partition: i32, assigned: bool, epoch: u64) {
        let _ = self.inbox.changes.send(Change {
            retry,
            partition,
            assigned,
            epoch,
        });
    }
}

impl Intake {
    /// Creates the two consumers (the group member joins once the first partner does)
    /// and starts the task that reads them until `shutdown`.
    pub fn start(
        settings: &KafkaSettings,
        group: &str,
        board: &GroupBoard,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let deliveries: LaneConsumer = settings
            .consumer(group)
            // Statistics every 5 s carry each partition's consumer lag (GroupContext::stats).
            .set("statistics.interval.ms", "5000")
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Metadata of every partner's topics: refreshed each minute, not each 10 s
            // (a new subscription asks at once; with a thousand partners each refresh is
            // a thousand topics, for this client and the retry reader).
            .set("topic.metadata.refresh.interval.ms", "60000")
            .create_with_context(
                GroupContext::new("lanes", "")
                    .commit_on_revoke()
                    .on_board(board),
            )?;
        let retry_group = retry_offsets_group(group);
        let retries: LaneConsumer = settings
            .consumer(&retry_group)
            .set("topic.metadata.refresh.interval.ms", "60000")
            // Retry records wait for their backoff anyway; an empty fetch of every
            // partner's retry partitions costs the broker (nisshi queries each partition
            // again and again while it waits), so this reader asks less often. Apache
            // Kafka answers a waiting fetch as soon as a record arrives.
            .set("fetch.wait.max.ms", "2000")
            .create_with_context(GroupContext::new("lanes (retry topics)", ""))?;
        let (commands, receiver) = unbounded_channel();
        let read_backs = super::read_back::ReadBackPool::start(
            settings.clone(),
            retry_group.clone(),
            shutdown.clone(),
        );
        let intake = Self {
            commands,
            deliveries: Arc::new(deliveries),
            retries: Arc::new(retries),
            retry_group,
            read_backs,
        };
        let task = tokio::spawn(read(intake.clone(), receiver, shutdown));
        Ok((intake, task))
    }

    /// Routes `partner`'s delivery topic (and its retry topic when `parking`) to a new
    /// lane from now on. A partner that joins again (its lane restarted) reads its
    /// partitions again from their committed offsets.
    pub fn join(
        &self,
        partner: &str,
        parking: bool,
        health: Option<Arc<crate::health::PartnerHealth>>,
    ) -> LaneLink {
        let (changes_tx, changes) = unbounded_channel();
        let (records_tx, records) = unbounded_channel();
        let _ = self.commands.send(Command::Join {
            partner: partner.to_string(),
            parking,
            health,
            inbox: Inbox {
                changes: changes_tx,
                records: records_tx,
            },
        });
        LaneLink {
            changes,
            records,
            deliveries: Arc::clone(&self.deliveries),
            retries: Arc::clone(&self.retries),
            read_backs: self.read_backs.clone(),
            read_retries: ReadRetries {
                commands: self.commands.clone(),
                partner: partner.to_string(),
            },
        }
    }

    /// Commits every offset the lanes stored (call once they have stopped); the
    /// consumers leave the group when the last handle is dropped.
    pub fn close(self) {
        for consumer in [&self.deliveries, &self.retries] {
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(%error, "final lanes commit");
            }
        }
        self.deliveries.unsubscribe();
    }
}

/// The intake task: reads both consumers until `shutdown`, hands records and partition
/// changes to the lanes, and follows partners joining.
async fn read(
    intake: Intake,
    mut commands: UnboundedReceiver<Command>,
    shutdown: CancellationToken,
) {
    let Intake {
        deliveries,
        retries,
        ..
    } = intake;
    let changed = deliveries.context().changed();
    let mut routes: HashMap<Arc<str>, Route> = HashMap::new();
    // Topic → (partner, whether it is the retry topic).
    let mut by_topic: HashMap<Arc<str>, (Arc<str>, bool)> = HashMap::new();
    let mut epochs = 0u64;
    // When the subscription is to change: a moment after the first join of a burst, so
    // that partners appearing together (all of them at start-up, as the lanes start)
    // cost one rebalance, not one each.
    let mut resubscribe: Option<tokio::time::Instant> = None;
    let mut delivery_stream = deliveries.stream();
    let mut retry_stream = retries.stream();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(command) = commands.recv() => {
                let mut command = Some(command);
                let mut read = TopicPartitionList::new();
                while let Some(c) = command.take() {
                    match c {
                        Command::Join { partner, parking, health, inbox } => {
                            if join(&deliveries, &retries, &mut routes, &mut by_topic, partner, parking, health, inbox) {
                                resubscribe.get_or_insert_with(|| tokio::time::Instant::now() + SUBSCRIBE_AFTER);
                            }
                        }
                        Command::ReadRetry { partner, partition, from } => {
                            let Some(r) = routes.get_mut(partner.as_str()) else { continue };
                            let Some(&epoch) = r.assigned.get(&partition) else { continue };
                            if r.parking && r.reading.insert(partition) {
                                // From where the read-back counted the parked keys, so
                                // the reader and the counts agree even if the committed
                                // offset moved since.
                                let at = from.map_or(Offset::Stored, Offset::Offset);
                                let _ = read.add_partition_offset(&r.topics[1], partition, at);
                                r.change(true, partition, true, epoch);
                            }
                        }
                    }
                    command = commands.try_recv().ok();
                }
                if read.count() > 0 {
                    if let Err(error) = retries.incremental_assign(&read) {
                        tracing::error!(%error, "retry reader: assign");
                    }
                }
            }
            _ = tokio::time::sleep_until(resubscribe.unwrap_or_else(tokio::time::Instant::now)), if resubscribe.is_some() => {
                resubscribe = None;
                let mut topics: Vec<&str> = routes.values().map(|r| &*r.topics[0]).collect();
                topics.sort_unstable();
                if let Err(error) = deliveries.subscribe(&topics) {
                    tracing::error!(%error, "subscribing to the delivery topics");
                } else {
                    tracing::info!(partners = topics.len(), "lanes subscribed");
                }
            }
            _ = changed.notified() => follow(&deliveries, &retries, &mut routes, &by_topic, &mut epochs),
            // Retry records first: they are few, and a backlog of deliveries must not
            // keep parked records waiting.
            message = retry_stream.next() => {
                // A revoke noted since is followed first (it stops the partition's
                // retry records).
                follow(&deliveries, &retries, &mut routes, &by_topic, &mut epochs);
                match message {
                    Some(Ok(m)) => route(&m, &routes, &by_topic, true),
                    Some(Err(error)) => tracing::warn!(%error, "consuming retry topics"),
                    None => break,
                }
            }
            message = delivery_stream.next() => {
                // The poll that returned it may have served a rebalance first.
                follow(&deliveries, &retries, &mut routes, &by_topic, &mut epochs);
                match message {
                    Some(Ok(m)) => route(&m, &routes, &by_topic, false),
                    Some(Err(error)) => tracing::warn!(%error, "consuming deliveries"),
                    None => break,
                }
            }
        }
    }
    tracing::debug!("lanes intake stopped");
}

/// Hands a record to its partner's lane (a retry record only while its delivery
/// partition is ours: one read before the revoke took effect is left to the new owner).
fn route(
    message: &BorrowedMessage<'_>,
    routes: &HashMap<Arc<str>, Route>,
    by_topic: &HashMap<Arc<str>, (Arc<str>, bool)>,
    retry: bool,
) {
    let Some((partner, _)) = by_topic.get(message.topic()) else {
        tracing::warn!(topic = message.topic(), "a record of a topic no lane reads");
        return;
    };
    let Some(r) = routes.get(partner) else { return };
    let Some(&epoch) = r.assigned.get(&message.partition()) else {
        return;
    };
    if retry && !r.reading.contains(&message.partition()) {
        return;
    }
    let job = job_from(message, &r.topics, retry);
    let _ = r.inbox.records.send(Record { job, epoch });
}

/// Follows what the deliveries group's rebalances changed: tells each lane, and stops
/// reading retry partition `p` when delivery partition `p` is revoked.
fn follow(
    deliveries: &LaneConsumer,
    retries: &LaneConsumer,
    routes: &mut HashMap<Arc<str>, Route>,
    by_topic: &HashMap<Arc<str>, (Arc<str>, bool)>,
    epochs: &mut u64,
) {
    let changes = deliveries.context().take_changes();
    if changes.is_empty() {
        return;
    }
    let mut lost = TopicPartitionList::new();
    for change in changes {
        let (topic, partition, assigned) = match change {
            GroupChange::Assigned(t, p) => (t, p, true),
            GroupChange::Revoked(t, p) => (t, p, false),
        };
        let Some((partner, _)) = by_topic.get(topic.as_str()) else {
            continue;
        };
        let Some(r) = routes.get_mut(partner) else {
            continue;
        };
        let epoch = if assigned {
            *epochs += 1;
            r.assigned.insert(partition, *epochs);
            *epochs
        } else {
            r.assigned.remove(&partition).unwrap_or_default()
        };
        r.change(false, partition, assigned, epoch);
        if !assigned && r.reading.remove(&partition) {
            let _ = lost.add_partition(&r.topics[1], partition);
            r.change(true, partition, false, epoch);
        }
    }
    if lost.count() > 0 {
        // What the lanes stored for them, then stop reading them.
        // Synchronously: the partitions' next owner reads the committed offsets back.
        if let Err(error) = retries.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(%error, "committing retry offsets on revoke");
        }
        if let Err(error) = retries.incremental_unassign(&lost) {
            tracing::error!(%error, "retry reader: unassign");
        }
    }
}

/// A partner joins (or joins again after its lane restarted). Returns whether the
/// subscription must change.
#[allow(clippy::too_many_arguments)]
fn join(
    deliveries: &LaneConsumer,
    retries: &LaneConsumer,
    routes: &mut HashMap<Arc<str>, Route>,
    by_topic: &mut HashMap<Arc<str>, (Arc<str>, bool)>,
    partner: String,
    parking: bool,
    health: Option<Arc<crate::health::PartnerHealth>>,
    inbox: Inbox,
) -> bool {
    let partner: Arc<str> = partner.into();
    let topics: [Arc<str>; 2] = [
        delivery_topic(&partner).into(),
        retry_topic(&partner).into(),
    ];
    deliveries.context().watch_lag(&topics[0], health);
    by_topic.insert(Arc::clone(&topics[0]), (Arc::clone(&partner), false));
    by_topic.insert(Arc::clone(&topics[1]), (Arc::clone(&partner), true));
    let Some(old) = routes.get_mut(&partner) else {
        routes.insert(
            partner,
            Route {
                inbox,
                parking,
                topics,
                assigned: BTreeMap::new(),
                reading: BTreeSet::new(),
            },
        );
        return true;
    };
    // A restarted lane: what its predecessor held is read again from the committed
    // offsets, and it is told which partitions are its.
    old.inbox = inbox;
    let delivery = rewind(deliveries, &old.topics[0], old.assigned.keys());
    let retry = rewind(retries, &old.topics[1], old.reading.iter());
    for (&partition, &epoch) in &old.assigned {
        if delivery.contains(&partition) {
            old.change(false, partition, true, epoch);
        }
        if retry.contains(&partition) && delivery.contains(&partition) {
            old.change(true, partition, true, epoch);
        }
    }
    false
}

/// Moves the consumer's position in `partitions` of `topic` back to their committed
/// offsets. Blocking (a lane restart is rare).
/// Returns the partitions rewound: a partition that could not be is not handed to the
/// new lane, so nothing of it is taken in and its committed offset stays where it is
/// (it waits for its next assignment, here or elsewhere) rather than being skipped.
fn rewind<'a>(
    consumer: &LaneConsumer,
    topic: &str,
    partitions: impl Iterator<Item = &'a i32>,
) -> BTreeSet<i32> {
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        list.add_partition(topic, p);
    }
    if list.count() == 0 {
        return BTreeSet::new();
    }
    let rewound = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .and_then(|mut committed| {
            let never: Vec<i32> = committed
                .elements_for_topic(topic)
                .iter()
                .filter(|e| !matches!(e.offset(), Offset::Offset(_)))
                .map(|e| e.partition())
                .collect();
            for p in never {
                // Never committed: from the start, as a new member would.
                let _ = committed.set_partition_offset(topic, p, Offset::Beginning);
            }
            consumer.seek_partitions(committed, Duration::from_secs(10))
        });
    match rewound {
        Ok(list) => list
            .elements()
            .iter()
            .filter(|e| {
                let ok = e.error().is_ok();
                if !ok {
                    tracing::error!(%topic, partition = e.partition(), "a restarted lane's partition could not be rewound; it waits for its next assignment");
                }
                ok
            })
            .map(|e| e.partition())
            .collect(),
        Err(error) => {
            tracing::error!(%topic, %error, "rewinding a restarted lane's partitions; they wait for their next assignment");
            BTreeSet::new()
        }
    }
}

/// `topics`: the partner's delivery and retry topic.
fn job_from(message: &BorrowedMessage<'_>, topics: &[Arc<str>; 2], retry: bool) -> Job {
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
        body: bytes::Bytes::copy_from_slice(message.payload().unwrap_or_default()),
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
