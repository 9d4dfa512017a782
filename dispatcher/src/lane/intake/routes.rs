//! The intake's routing table: which lane each topic's records go to, which partitions
//! each lane has (with the epoch of each assignment), and which retry partitions are
//! read; following rebalances, partners joining, and a restarted lane's rewind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{Change, Inbox, LaneConsumer, Record};
use crate::delivery::{self, Job};
use crate::kafka::group::GroupChange;
use crate::kafka::headers;
use crate::subscriptions::{delivery_topic, retry_topic};

/// A partner joining: what [`Routes::join`] needs.
#[derive(Debug)]
pub(super) struct Join {
    pub(super) partner: String,
    pub(super) parking: bool,
    pub(super) health: Option<Arc<crate::health::PartnerHealth>>,
    pub(super) inbox: Inbox,
}

/// The intake's routing table.
#[derive(Default)]
pub(super) struct Routes {
    partners: HashMap<Arc<str>, Route>,
    /// Topic → (partner, whether it is the retry topic).
    by_topic: HashMap<Arc<str>, (Arc<str>, bool)>,
    /// The last assignment epoch handed out.
    epochs: u64,
    /// The last rewind started.
    rewinds: u64,
}

/// A restarted lane's partitions to move back to their committed offsets: looked up
/// away from the intake task ([`Rewind::look_up`]), then applied by [`Routes::rewound`].
#[derive(Debug)]
pub(super) struct Rewind {
    pub(super) partner: Arc<str>,
    /// Which rewind of the partner (a later restart supersedes it).
    pub(super) number: u64,
    /// Delivery partitions, then retry partitions (with their topics).
    lists: [TopicPartitionList; 2],
}

/// The committed offsets a [`Rewind`] found (per consumer: deliveries, retries).
#[derive(Debug)]
pub(super) struct Rewound {
    pub(super) partner: Arc<str>,
    pub(super) number: u64,
    found: [Result<TopicPartitionList, String>; 2],
}

/// A restarted lane's partitions whose records wait (are not routed) until they are
/// rewound: the intake read on from where the lane before it stopped taking.
#[derive(Debug, Default)]
struct Rewinding {
    number: u64,
    delivery: BTreeSet<i32>,
    retry: BTreeSet<i32>,
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
    /// While a restarted lane's partitions are rewound.
    rewinding: Option<Rewinding>,
    /// The partner left (its lane stopped for good): nothing is routed, and the route
    /// is kept only until the group has taken its partitions back, so a partner that
    /// comes back before that is rewound like a restarted lane.
    left: bool,
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

impl Routes {
    /// Hands a record to its partner's lane (a retry record only while its delivery
    /// partition is ours: one read before the revoke took effect is left to the new
    /// owner).
    /// Hands a record to its lane; whether it did (not for a partition that is no longer
    /// ours, or a topic no lane reads).
    pub(super) fn route(&self, message: &BorrowedMessage<'_>, retry: bool) -> bool {
        let Some((partner, _)) = self.by_topic.get(message.topic()) else {
            // (A partner that left, until the group's next assignment takes its
            // partitions away: read again from its committed offsets if it comes back.)
            tracing::debug!(topic = message.topic(), "a record of a topic no lane reads");
            return false;
        };
        let Some(r) = self.partners.get(partner) else {
            return false;
        };
        if r.left {
            return false;
        }
        let Some(&epoch) = r.assigned.get(&message.partition()) else {
            return false;
        };
        if retry && !r.reading.contains(&message.partition()) {
            return false;
        }
        if r.rewinding.as_ref().is_some_and(|w| {
            if retry { &w.retry } else { &w.delivery }.contains(&message.partition())
        }) {
            // Read again once the partition is rewound.
            return false;
        }
        let mut job = job_from(message, &r.topics, retry);
        job.epoch = epoch;
        r.inbox.records.send(Record { job, epoch }).is_ok()
    }

    /// Follows what the deliveries group's rebalances changed: tells each lane, and stops
    /// reading retry partition `p` when delivery partition `p` is revoked.
    pub(super) fn follow(&mut self, deliveries: &LaneConsumer, retries: &LaneConsumer) {
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
            let Some((partner, _)) = self.by_topic.get(topic.as_str()) else {
                continue;
            };
            let Some(r) = self.partners.get_mut(partner) else {
                continue;
            };
            let epoch = if assigned {
                self.epochs += 1;
                r.assigned.insert(partition, self.epochs);
                self.epochs
            } else {
                r.assigned.remove(&partition).unwrap_or_default()
            };
            r.change(false, partition, assigned, epoch);
            if let Some(w) = &mut r.rewinding {
                // A new assignment starts from the committed offset anyway, and a
                // revoked partition is its next owner's.
                w.delivery.remove(&partition);
                w.retry.remove(&partition);
            }
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
        self.drop_left();
    }

    /// A partner joins (or joins again after its lane restarted). Returns whether the
    /// subscription must change, and for a restarted lane the rewind to look up: what
    /// its predecessor held is read again from the committed offsets, and it is told
    /// which partitions are its once they are rewound. (The look-up asks the group
    /// coordinator; it runs away from the intake task so no other partner waits for it.)
    pub(super) fn join(&mut self, deliveries: &LaneConsumer, join: Join) -> (bool, Option<Rewind>) {
        let Join {
            partner,
            parking,
            health,
            inbox,
        } = join;
        let partner: Arc<str> = partner.into();
        let topics: [Arc<str>; 2] = [
            delivery_topic(&partner).into(),
            retry_topic(&partner).into(),
        ];
        deliveries.context().watch_lag(&topics[0], health);
        self.by_topic
            .insert(Arc::clone(&topics[0]), (Arc::clone(&partner), false));
        self.by_topic
            .insert(Arc::clone(&topics[1]), (Arc::clone(&partner), true));
        let Some(old) = self.partners.get_mut(&partner) else {
            self.partners.insert(
                partner,
                Route {
                    inbox,
                    parking,
                    topics,
                    assigned: BTreeMap::new(),
                    reading: BTreeSet::new(),
                    rewinding: None,
                    left: false,
                },
            );
            return (true, None);
        };
        // Back before the group took its partitions away: its topic must be in the
        // subscription again, and what it still has is rewound as for a restart.
        let subscribe = std::mem::take(&mut old.left);
        old.inbox = inbox;
        self.rewinds += 1;
        let rewinding = Rewinding {
            number: self.rewinds,
            delivery: old.assigned.keys().copied().collect(),
            retry: old.reading.clone(),
        };
        let rewind = Rewind {
            partner: Arc::clone(&partner),
            number: rewinding.number,
            lists: [
                partition_list(&old.topics[0], &rewinding.delivery),
                partition_list(&old.topics[1], &rewinding.retry),
            ],
        };
        old.rewinding = Some(rewinding);
        (subscribe, Some(rewind))
    }

    /// A restarted lane's committed offsets were looked up: moves the consumers'
    /// positions back to them and hands the partitions to the lane. A partition that
    /// could not be rewound is not handed to the new lane, so nothing of it is taken in
    /// and its committed offset stays where it is (it waits for its next assignment,
    /// here or elsewhere) rather than being skipped.
    pub(super) fn rewound(
        &mut self,
        deliveries: &LaneConsumer,
        retries: &LaneConsumer,
        rewound: Rewound,
    ) -> Option<Rewind> {
        let r = self.partners.get_mut(&rewound.partner)?;
        if r.rewinding
            .as_ref()
            .is_none_or(|w| w.number != rewound.number)
        {
            return None; // superseded by a later restart, or the partner left
        }
        let w = r.rewinding.take()?;
        let [found_delivery, found_retry] = rewound.found;
        let delivery = seek(deliveries, &r.topics[0], found_delivery, &w.delivery);
        let retry = seek(retries, &r.topics[1], found_retry, &w.retry);
        // Not rewound (the look-up failed): records stay unrouted, and it is looked up
        // again. A retry partition is handed over only with or after its delivery
        // partition (the lane reads its parked keys before its retry records).
        let pending: BTreeSet<i32> = w.delivery.difference(&delivery).copied().collect();
        let retry_done: BTreeSet<i32> = retry.difference(&pending).copied().collect();
        for (&partition, &epoch) in &r.assigned {
            if delivery.contains(&partition) {
                r.change(false, partition, true, epoch);
            }
            if retry_done.contains(&partition) {
                r.change(true, partition, true, epoch);
            }
        }
        let left = Rewinding {
            number: w.number,
            retry: w.retry.difference(&retry_done).copied().collect(),
            delivery: pending,
        };
        if left.delivery.is_empty() && left.retry.is_empty() {
            return None;
        }
        tracing::warn!(partner = %rewound.partner, "some of a restarted lane's partitions could not be rewound yet; looking their offsets up again");
        let again = Rewind {
            partner: Arc::clone(&rewound.partner),
            number: left.number,
            lists: [
                partition_list(&r.topics[0], &left.delivery),
                partition_list(&r.topics[1], &left.retry),
            ],
        };
        r.rewinding = Some(left);
        Some(again)
    }

    /// The lane of `partner` asks for retry partition `partition` to be read from `from`
    /// (the committed offset when `None`); added to `read` when it is not read yet.
    pub(super) fn read_retry(
        &mut self,
        partner: &str,
        partition: i32,
        from: Option<i64>,
        read: &mut TopicPartitionList,
    ) {
        let Some(r) = self.partners.get_mut(partner) else {
            return;
        };
        let Some(&epoch) = r.assigned.get(&partition) else {
            return;
        };
        if r.parking && r.reading.insert(partition) {
            // From where the read-back counted the parked keys, so the reader and the
            // counts agree even if the committed offset moved since.
            let at = from.map_or(Offset::Stored, Offset::Offset);
            let _ = read.add_partition_offset(&r.topics[1], partition, at);
            r.change(true, partition, true, epoch);
        }
    }

    /// A partner left: its topics are no longer routed, its lag no longer watched, its
    /// retry partitions no longer read (what its lane stored is committed first).
    /// Returns whether the subscription must change.
    pub(super) fn leave(
        &mut self,
        deliveries: &LaneConsumer,
        retries: &LaneConsumer,
        partner: &str,
    ) -> bool {
        let Some(r) = self.partners.get_mut(partner) else {
            return false;
        };
        r.left = true;
        r.rewinding = None;
        deliveries.context().unwatch_lag(&r.topics[0]);
        if !r.reading.is_empty() {
            let lost = partition_list(&r.topics[1], &r.reading);
            r.reading.clear();
            // Synchronously: whoever reads these partitions next reads the committed
            // offsets back.
            if let Err(error) = retries.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(%error, "committing retry offsets of a partner that left");
            }
            if let Err(error) = retries.incremental_unassign(&lost) {
                tracing::error!(%error, "retry reader: unassign");
            }
        }
        self.drop_left();
        true
    }

    /// Forgets the routes of partners that left once none of their partitions is ours.
    fn drop_left(&mut self) {
        let gone: Vec<Arc<str>> = self
            .partners
            .iter()
            .filter(|(_, r)| r.left && r.assigned.is_empty())
            .map(|(p, _)| Arc::clone(p))
            .collect();
        for p in gone {
            if let Some(r) = self.partners.remove(&p) {
                for topic in &r.topics {
                    self.by_topic.remove(topic);
                }
            }
        }
    }

    /// Every partner's delivery topic, sorted (the subscription).
    pub(super) fn delivery_topics(&self) -> Vec<&str> {
        let mut topics: Vec<&str> = self
            .partners
            .values()
            .filter(|r| !r.left)
            .map(|r| &*r.topics[0])
            .collect();
        topics.sort_unstable();
        topics
    }
}

impl Rewind {
    /// Looks up the committed offsets of the partitions to rewind, on `deliveries` and
    /// `retries` (a few tries, a second apart). Blocking.
    pub(super) fn look_up(self, deliveries: &LaneConsumer, retries: &LaneConsumer) -> Rewound {
        let Self {
            partner,
            number,
            lists,
        } = self;
        let [delivery, retry] = lists;
        let look = |consumer: &LaneConsumer, list: TopicPartitionList| {
            if list.count() == 0 {
                return Ok(list);
            }
            let mut tries = 0;
            loop {
                tries += 1;
                match consumer.committed_offsets(list.clone(), Duration::from_secs(10)) {
                    Ok(found) => return Ok(found),
                    Err(error) if tries >= 3 => return Err(error.to_string()),
                    Err(_) => std::thread::sleep(Duration::from_secs(1)),
                }
            }
        };
        Rewound {
            partner,
            number,
            found: [look(deliveries, delivery), look(retries, retry)],
        }
    }
}

/// `partitions` of `topic` as a list.
fn partition_list(topic: &str, partitions: &BTreeSet<i32>) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        list.add_partition(topic, p);
    }
    list
}

/// Moves the consumer's position in the `wanted` partitions of `topic` back to their
/// committed offsets (`found`: from the start where none was ever committed, as a new
/// member would). Returns the partitions rewound.
fn seek(
    consumer: &LaneConsumer,
    topic: &str,
    found: Result<TopicPartitionList, String>,
    wanted: &BTreeSet<i32>,
) -> BTreeSet<i32> {
    if wanted.is_empty() {
        return BTreeSet::new();
    }
    let rewound = found.and_then(|committed| {
        let mut list = TopicPartitionList::new();
        for e in committed.elements_for_topic(topic) {
            if !wanted.contains(&e.partition()) {
                continue; // revoked, or assigned again, since the look-up
            }
            let at = match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            list.add_partition_offset(topic, e.partition(), at)
                .map_err(|e| e.to_string())?;
        }
        if list.count() == 0 {
            return Ok(list);
        }
        // (Local: the consumer's fetch position; no broker round trip.)
        consumer
            .seek_partitions(list, Duration::from_secs(10))
            .map_err(|e| e.to_string())
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
        read_at: Some(std::time::Instant::now()),
        headers: message.headers().map(|h| h.detach()),
        parked: retry.then(|| delivery::Parked::from_headers(text)),
        follow: false,
        followers: Vec::new(),
        epoch: 0,
    }
}
