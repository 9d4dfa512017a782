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
    pub(super) settings: KafkaSettings,
    pub(super) group: String,
    pub(super) retry_topic: String,
    pub(super) answers: tokio::sync::mpsc::UnboundedSender<ReadBack>,
    pub(super) stop: CancellationToken,
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
    /// Reads back the parked keys of `partition` (with [`read_parked`], again every
    /// second until it succeeds or `stop`) and sends the answer to the lane.
    pub(super) fn start(&self, partition: i32, generation: u64) {
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
                    Ok(((from, to), counts)) => {
                        let _ = answers.send(ReadBack {
                            partition,
                            generation,
                            from,
                            to,
                            counts,
                        });
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
/// same partition of the retry topic from the committed offset of `group` (the retry
/// offsets group) on. Returns
/// (the range read, count per key). Blocking.
pub(super) fn read_parked(
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
