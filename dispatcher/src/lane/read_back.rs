//! Following a lane's group: what rebalances changed, and the read-back of a delivery
//! partition's parked keys from the retry topic.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::state::{LaneState, ParkedCounts, ReadBack};
use crate::kafka::group::GroupChange;
use crate::kafka::KafkaSettings;

/// What a lane needs to follow its group's rebalances ([`LaneState::follow`]).
pub(super) struct Rebalances {
    pub(super) partner: String,
    pub(super) topic: String,
    pub(super) retry_topic: String,
    /// When the lane parks keys: where read-backs of parked keys start.
    pub(super) read_backs: Option<ReadBacks>,
}

/// Starts read-backs of a delivery partition's parked keys; they answer on one channel.
pub(super) struct ReadBacks {
    pub(super) pool: ReadBackPool,
    pub(super) retry_topic: String,
    pub(super) answers: tokio::sync::mpsc::UnboundedSender<ReadBack>,
}

impl Rebalances {
    /// Follows partition changes ([`LaneState::follow`]) and starts the read-backs they
    /// call for.
    pub(super) fn follow(&self, state: &mut LaneState, changes: Vec<GroupChange>) {
        let started = state.follow(self, changes);
        if let Some(read_backs) = &self.read_backs {
            for (partition, generation) in started {
                read_backs.start(partition, generation);
            }
        }
    }
}

impl ReadBacks {
    /// Reads back the parked keys of `partition` (in the instance's [`ReadBackPool`])
    /// and sends the answer to the lane.
    pub(super) fn start(&self, partition: i32, generation: u64) {
        let _ = self.pool.requests.send(Request {
            topic: self.retry_topic.clone(),
            partition,
            generation,
            answers: self.answers.clone(),
        });
    }
}

/// Read-backs of every lane of an instance, done together: the partitions assigned at
/// once (all of them at start-up) cost one committed-offsets request, one request for
/// the ends of the retry partitions, and reads only of the partitions that hold parked
/// records, rather than a consumer each.
#[derive(Debug, Clone)]
pub struct ReadBackPool {
    requests: tokio::sync::mpsc::UnboundedSender<Request>,
}

#[derive(Debug)]
struct Request {
    topic: String,
    partition: i32,
    generation: u64,
    answers: tokio::sync::mpsc::UnboundedSender<ReadBack>,
}

/// Most partitions read back in one batch.
const BATCH: usize = 10_000;

impl ReadBackPool {
    /// Read-backs from the committed offsets of `group` (the retry offsets group), until
    /// `stop`; a batch that fails is tried again a second later.
    pub fn start(settings: KafkaSettings, group: String, stop: CancellationToken) -> Self {
        let (requests, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            let mut batch: Vec<Request> = Vec::new();
            loop {
                if batch.is_empty() {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        r = receiver.recv() => match r {
                            Some(r) => batch.push(r),
                            None => return,
                        },
                    }
                }
                while batch.len() < BATCH {
                    let Ok(r) = receiver.try_recv() else { break };
                    batch.push(r);
                }
                let wanted: Vec<(String, i32)> = batch
                    .iter()
                    .map(|r| (r.topic.clone(), r.partition))
                    .collect();
                let (s, g) = (settings.clone(), group.clone());
                let read = tokio::task::spawn_blocking(move || read_parked(&s, &g, &wanted))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|read| read);
                match read {
                    Ok(found) => {
                        for r in batch.drain(..) {
                            // (Two requests for one partition, from before and after a
                            // revoke or a lane restart, both get the answer: the lane keeps
                            // the one of its current generation.)
                            let Some(((from, to), counts)) =
                                found.get(&(r.topic, r.partition)).cloned()
                            else {
                                continue;
                            };
                            let _ = r.answers.send(ReadBack {
                                partition: r.partition,
                                generation: r.generation,
                                from,
                                to,
                                counts,
                            });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(partitions = batch.len(), %error, "reading parked keys back; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        });
        Self { requests }
    }

    /// A pool that never answers (unit tests of the lane's state).
    #[cfg(test)]
    pub(super) fn unstarted() -> Self {
        Self {
            requests: tokio::sync::mpsc::unbounded_channel().0,
        }
    }
}

/// What a read-back found in one retry partition: the range read and the count per key.
type Found = ((i64, i64), ParkedCounts);

/// Reads back the parked keys of delivery partitions: for each (retry topic, partition)
/// the records of that retry partition from the committed offset of `group` (the retry
/// offsets group) to its end. Blocking.
pub(super) fn read_parked(
    settings: &KafkaSettings,
    group: &str,
    wanted: &[(String, i32)],
) -> anyhow::Result<std::collections::HashMap<(String, i32), Found>> {
    let mut config = settings.reader();
    config.set("group.id", group);
    let consumer: BaseConsumer = config.create()?;
    let mut found = std::collections::HashMap::new();
    // A retry topic is made on the partner's first parked record: where there is none
    // (or not that partition yet), nothing is parked.
    let metadata = consumer.fetch_metadata(None, Duration::from_secs(30))?;
    let exists: std::collections::HashSet<(&str, i32)> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(move |p| (t.name(), p.id())))
        .collect();
    let mut list = TopicPartitionList::new();
    for (topic, partition) in wanted {
        if exists.contains(&(topic.as_str(), *partition)) {
            list.add_partition(topic, *partition);
        } else {
            found.insert((topic.clone(), *partition), ((0, 0), ParkedCounts::new()));
        }
    }
    if list.count() == 0 {
        return Ok(found);
    }
    let committed = consumer.committed_offsets(list.clone(), Duration::from_secs(30))?;
    // Both ends of every partition in one request each (timestamp -2: earliest, -1:
    // latest).
    let ends = |at: Offset| -> anyhow::Result<TopicPartitionList> {
        let mut l = list.clone();
        l.set_all_offsets(at)?;
        Ok(consumer.offsets_for_times(l, Duration::from_secs(30))?)
    };
    let (lows, highs) = (ends(Offset::Beginning)?, ends(Offset::End)?);
    let offset_in = |l: &TopicPartitionList, topic: &str, partition: i32| match l
        .find_partition(topic, partition)
        .map(|e| e.offset())
    {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    };
    let mut to_read: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<i32, (i64, i64)>,
    > = Default::default();
    for (topic, partition) in wanted {
        if found.contains_key(&(topic.clone(), *partition)) {
            continue;
        }
        let (low, high) = (
            offset_in(&lows, topic, *partition).unwrap_or(0),
            offset_in(&highs, topic, *partition)
                .ok_or_else(|| anyhow::anyhow!("no end offset for {topic}/{partition}"))?,
        );
        let from = offset_in(&committed, topic, *partition).map_or(low, |o| o.max(low));
        found.insert(
            (topic.clone(), *partition),
            ((from, high.max(from)), ParkedCounts::new()),
        );
        if from < high {
            to_read
                .entry(topic.clone())
                .or_default()
                .insert(*partition, (from, high));
        }
    }
    for (topic, ranges) in to_read {
        let records =
            crate::kafka::read_ranges(&consumer, &topic, &ranges, Duration::from_secs(30))?;
        for r in records {
            if let Some((_, counts)) = found.get_mut(&(topic.clone(), r.partition)) {
                *counts.entry(r.key).or_default() += 1;
            }
        }
    }
    Ok(found)
}
