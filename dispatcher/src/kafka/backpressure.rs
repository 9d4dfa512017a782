//! Back-pressure of a consumer loop that owns its consumer (the router; the lanes share
//! theirs and pause only their own partitions, `lane/throttle.rs`): at most `max`
//! unfinished records are taken in; past that the loop stops reading, then pauses its
//! partitions and keeps polling, so it stays in its group and the backlog waits in Kafka.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::TopicPartitionList;

use crate::kafka::group::GroupContext;

/// Back-pressure of a consumer loop that holds at most `max` unfinished records.
///
/// When full, the loop stops reading until a quarter of `max` has finished (then it takes
/// in that quarter in a few turns, rather than one record per finished one: half the
/// loop's turns per record in the deliveries bench); once it has stayed full for [`PAUSE_AFTER`] the
/// partitions are paused and the loop reads again (nothing arrives from paused
/// partitions, but polling serves rebalances and keeps the member in its group past
/// `max.poll.interval.ms`); they are resumed at half. Pausing drops what librdkafka
/// prefetched, so a loop that is full only for moments (a fast partner) never pauses.
#[derive(Debug)]
pub struct Backpressure {
    max: usize,
    /// Reading again once no more than this many are unfinished.
    low: usize,
    /// Full since it last was at `low` or below: not reading.
    draining: bool,
    paused: bool,
    full_since: Option<std::time::Instant>,
}

/// How long a consumer loop stays full before its partitions are paused.
pub const PAUSE_AFTER: Duration = Duration::from_secs(1);

impl Backpressure {
    pub fn new(max: usize) -> Self {
        let max = max.max(1);
        Self {
            max,
            low: max - (max / 4).max(1),
            draining: false,
            paused: false,
            full_since: None,
        }
    }

    /// Call once per loop turn with the unfinished records and whether partitions were
    /// assigned since the last turn; acts on the partitions of `topic` only (all when
    /// `None`). Returns whether the loop may read the stream now.
    pub fn update(
        &mut self,
        consumer: &StreamConsumer<GroupContext>,
        pending: usize,
        assigned: bool,
        topic: Option<&str>,
        gauge: Option<&metrics::Gauge>,
    ) -> bool {
        let change = if self.paused {
            if pending <= self.max / 2 {
                Some(false)
            } else if assigned {
                Some(true) // newly assigned partitions are paused too
            } else {
                None
            }
        } else if pending >= self.max {
            let since = *self.full_since.get_or_insert_with(std::time::Instant::now);
            (since.elapsed() >= PAUSE_AFTER).then_some(true)
        } else {
            self.full_since = None;
            None
        };
        if let Some(pause) = change {
            let result = consumer.assignment().and_then(|assignment| {
                let mut list = TopicPartitionList::new();
                for e in assignment.elements() {
                    if topic.is_none_or(|t| t == e.topic()) {
                        list.add_partition(e.topic(), e.partition());
                    }
                }
                if pause {
                    consumer.pause(&list)
                } else {
                    consumer.resume(&list)
                }
            });
            match result {
                Ok(()) => {
                    self.paused = pause;
                    self.full_since = None;
                    if let Some(g) = gauge {
                        g.set(if pause { 1.0 } else { 0.0 });
                    }
                    tracing::debug!(consumer = %consumer.context().name, ?topic, pause, "fetching paused or resumed");
                }
                Err(error) => tracing::warn!(%error, "pause/resume"),
            }
        }
        if pending >= self.max {
            self.draining = true;
        } else if pending <= self.low {
            self.draining = false;
        }
        self.paused || !self.draining
    }
}
