//! A restarted lane's rewind: its partitions' committed offsets are looked up away from
//! the intake task, then the shared consumers' positions are moved back to them and the
//! partitions handed to the new lane ([`Routes::rewound`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::{LaneConsumer, Routes};

/// A restarted lane's partitions to move back to their committed offsets: looked up
/// away from the intake task ([`Rewind::look_up`]), then applied by [`Routes::rewound`].
#[derive(Debug)]
pub(in crate::lane::intake) struct Rewind {
    partner: Arc<str>,
    /// Which rewind of the partner (a later restart supersedes it).
    number: u64,
    /// Delivery partitions, then retry partitions (with their topics).
    lists: [TopicPartitionList; 2],
}

/// The committed offsets a [`Rewind`] found (per consumer: deliveries, retries).
#[derive(Debug)]
pub(in crate::lane::intake) struct Rewound {
    partner: Arc<str>,
    number: u64,
    found: [Result<TopicPartitionList, String>; 2],
}

/// A restarted lane's partitions whose records wait (are not routed) until they are
/// rewound: the intake read on from where the lane before it stopped taking.
#[derive(Debug, Default)]
pub(super) struct Rewinding {
    pub(super) number: u64,
    pub(super) delivery: BTreeSet<i32>,
    pub(super) retry: BTreeSet<i32>,
}

impl Rewinding {
    /// The look-up of these partitions' committed offsets (`topics`: the partner's
    /// delivery and retry topic).
    pub(super) fn look_up_for(&self, partner: &Arc<str>, topics: &[Arc<str>; 2]) -> Rewind {
        Rewind {
            partner: Arc::clone(partner),
            number: self.number,
            lists: [
                partition_list(&topics[0], &self.delivery),
                partition_list(&topics[1], &self.retry),
            ],
        }
    }
}

impl Routes {
    /// A restarted lane's committed offsets were looked up: moves the consumers'
    /// positions back to them and hands the partitions to the lane. A partition that
    /// could not be rewound is not handed to the new lane, so nothing of it is taken in
    /// and its committed offset stays where it is (it waits for its next assignment,
    /// here or elsewhere) rather than being skipped.
    pub(in crate::lane::intake) fn rewound(
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
        let again = left.look_up_for(&rewound.partner, &r.topics);
        r.rewinding = Some(left);
        Some(again)
    }
}

impl Rewind {
    /// Looks up the committed offsets of the partitions to rewind, on `deliveries` and
    /// `retries` (a few tries, a second apart). Blocking.
    pub(in crate::lane::intake) fn look_up(
        self,
        deliveries: &LaneConsumer,
        retries: &LaneConsumer,
    ) -> Rewound {
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
pub(super) fn partition_list(topic: &str, partitions: &BTreeSet<i32>) -> TopicPartitionList {
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
