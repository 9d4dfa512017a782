//! The intake's routing table: which lane each topic's records go to, which partitions
//! each lane has (with the epoch of each assignment), and which retry partitions are
//! read; following rebalances, partners joining, and a restarted lane's rewind.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{Change, Inbox, LaneConsumer, Record};
use crate::delivery::{self, Job};
use crate::kafka::group::GroupChange;
use crate::kafka::headers;
use crate::subscriptions::{delivery_topic, retry_topic};
use rewind::{partition_list, Rewinding};
pub(super) use rewind::{Rewind, Rewound};

mod rewind;

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
        let rewind = rewinding.look_up_for(&partner, &old.topics);
        old.rewinding = Some(rewinding);
        (subscribe, Some(rewind))
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
