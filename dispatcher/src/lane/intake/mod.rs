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

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message;
use rdkafka::TopicPartitionList;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

use crate::delivery::Job;
use crate::kafka::group::{GroupBoard, GroupContext};
use crate::kafka::KafkaSettings;

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
    Join(Join),
    /// A partner's lane stopped for good (its last subscription is gone).
    Leave(String),
    /// A restarted lane's committed offsets, looked up.
    Rewound(routes::Rewound),
}

/// Where the intake sends a lane's changes and records.
#[derive(Debug)]
struct Inbox {
    changes: UnboundedSender<Change>,
    records: UnboundedSender<Record>,
}

mod routes;

use routes::{Join, Rewind, Routes};

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

impl Intake {
    /// Creates the two consumers (the group member joins once the first partner does)
    /// and starts the task that reads them until `shutdown`.
    pub fn start(
        settings: &KafkaSettings,
        group: &str,
        board: &GroupBoard,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Self, tokio::task::JoinHandle<()>)> {
        let mut client = settings.consumer(group);
        // Statistics every 5 s carry each partition's consumer lag (GroupContext::stats).
        client
            .set("statistics.interval.ms", "5000")
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Metadata of every partner's topics: refreshed each minute, not each 10 s
            // (a new subscription asks at once; with a thousand partners each refresh is
            // a thousand topics, for this client and the retry reader).
            .set("topic.metadata.refresh.interval.ms", "60000");
        let deliveries: LaneConsumer = settings.staged("lanes", client).create_with_context(
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
        let _ = self.commands.send(Command::Join(Join {
            partner: partner.to_string(),
            parking,
            health,
            inbox: Inbox {
                changes: changes_tx,
                records: records_tx,
            },
        }));
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

    /// `partner`'s lane has stopped for good: its topics are no longer read nor
    /// routed, and the intake forgets it (its partitions go back to the group with the
    /// offsets its lane stored). A later [`Self::join`] starts it again.
    pub fn leave(&self, partner: &str) {
        let _ = self.commands.send(Command::Leave(partner.to_string()));
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
        commands: to_self,
        deliveries,
        retries,
        ..
    } = intake;
    let changed = deliveries.context().changed();
    let mut routes = Routes::default();
    // When the subscription is to change: a moment after the first join of a burst, so
    // that partners appearing together (all of them at start-up, as the lanes start)
    // cost one rebalance, not one each.
    let mut resubscribe: Option<tokio::time::Instant> = None;
    let hop = crate::metrics::hop("deliveries_to_lane");
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
                        Command::Join(join) => {
                            let (subscribe, rewind) = routes.join(&deliveries, join);
                            if subscribe {
                                resubscribe.get_or_insert_with(|| tokio::time::Instant::now() + SUBSCRIBE_AFTER);
                            }
                            if let Some(rewind) = rewind {
                                look_up(rewind, &deliveries, &retries, &to_self);
                            }
                        }
                        Command::Rewound(rewound) => {
                            if let Some(again) = routes.rewound(&deliveries, &retries, rewound) {
                                look_up(again, &deliveries, &retries, &to_self);
                            }
                        }
                        Command::Leave(partner) => {
                            if routes.leave(&deliveries, &retries, &partner) {
                                resubscribe.get_or_insert_with(|| tokio::time::Instant::now() + SUBSCRIBE_AFTER);
                            }
                        }
                        Command::ReadRetry { partner, partition, from } => {
                            routes.read_retry(&partner, partition, from, &mut read);
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
                let topics = routes.delivery_topics();
                if topics.is_empty() {
                    // (The last partner left: an empty subscription is refused.)
                    deliveries.unsubscribe();
                } else if let Err(error) = deliveries.subscribe(&topics) {
                    tracing::error!(%error, "subscribing to the delivery topics");
                } else {
                    tracing::info!(partners = topics.len(), "lanes subscribed");
                }
            }
            _ = changed.notified() => routes.follow(&deliveries, &retries),
            // Retry records first: they are few, and a backlog of deliveries must not
            // keep parked records waiting.
            message = retry_stream.next() => {
                // A revoke noted since is followed first (it stops the partition's
                // retry records).
                routes.follow(&deliveries, &retries);
                match message {
                    Some(Ok(m)) => {
                        routes.route(&m, true);
                    }
                    Some(Err(error)) => tracing::warn!(%error, "consuming retry topics"),
                    None => break,
                }
            }
            message = delivery_stream.next() => {
                // The poll that returned it may have served a rebalance first.
                routes.follow(&deliveries, &retries);
                match message {
                    Some(Ok(m)) => {
                        if routes.route(&m, false) {
                            crate::metrics::record_age(&hop, m.timestamp());
                        }
                    }
                    Some(Err(error)) => tracing::warn!(%error, "consuming deliveries"),
                    None => break,
                }
            }
        }
    }
    tracing::debug!("lanes intake stopped");
}

/// Looks a restarted lane's committed offsets up on a blocking thread; the answer comes
/// back as a command, so the intake goes on routing every other partner meanwhile.
fn look_up(
    rewind: Rewind,
    deliveries: &Arc<LaneConsumer>,
    retries: &Arc<LaneConsumer>,
    to_self: &UnboundedSender<Command>,
) {
    let (deliveries, retries, to_self) =
        (Arc::clone(deliveries), Arc::clone(retries), to_self.clone());
    tokio::task::spawn_blocking(move || {
        let rewound = rewind.look_up(&deliveries, &retries);
        let _ = to_self.send(Command::Rewound(rewound));
    });
}
