//! A lane's back-pressure on the shared consumers. A lane holding `max` unfinished
//! records stops taking more (they wait in its channel from the intake); its partitions
//! of that topic are paused once it has stayed full for [`PAUSE_AFTER`], or at once when
//! `max` more records wait in the channel, or when every lane together holds the
//! instance's global cap and this one holds some. They are resumed at half. The other
//! partners' partitions keep flowing: nothing stops the shared stream.
//!
//! Pausing drops what librdkafka prefetched for those partitions and fetching resumes at
//! the next record the lane has not seen, so nothing is skipped. It is not done on every
//! full moment: a fast lane is full for moments all the time, and refetching after each
//! pause cost such a lane 60 % of its throughput (issue 4). So a lane holds at most about
//! twice `max` records (taken in, and waiting in its channel).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;

use super::intake::LaneConsumer;

/// How long a lane stays full before its partitions are paused (unless its channel
/// fills first).
pub const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// Records held by every lane of the instance, against a global cap.
#[derive(Debug, Clone)]
pub struct GlobalCap {
    held: Arc<AtomicUsize>,
    max: usize,
}

impl GlobalCap {
    pub fn new(max: usize) -> Self {
        Self {
            held: Arc::default(),
            max: max.max(1),
        }
    }

    /// Records held by every lane now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.held() >= self.max
    }

    /// Low enough again for paused lanes to resume.
    fn eased(&self) -> bool {
        self.held() <= self.max - self.max / 4
    }
}

impl Default for GlobalCap {
    fn default() -> Self {
        Self::new(usize::MAX / 2)
    }
}

/// One lane's pause state, per topic (0: deliveries, 1: retries).
#[derive(Debug)]
pub(super) struct Throttle {
    max: usize,
    paused: [bool; 2],
    /// Since when each topic has been full (reset when it is not).
    full_since: [Option<Instant>; 2],
    global: GlobalCap,
    /// What this lane last counted in the global cap.
    counted: usize,
}

impl Throttle {
    pub(super) fn new(max: usize, global: GlobalCap) -> Self {
        Self {
            max: max.max(1),
            paused: [false; 2],
            full_since: [None; 2],
            global,
            counted: 0,
        }
    }

    pub(super) fn paused(&self, retry: bool) -> bool {
        self.paused[usize::from(retry)]
    }

    /// Call once per loop turn with the unfinished records per topic and the records
    /// waiting in the lane's channel; pauses or resumes the lane's `assigned` partitions
    /// of `topics` on `consumers`.
    pub(super) fn update(
        &mut self,
        consumers: [&LaneConsumer; 2],
        topics: [&str; 2],
        assigned: &[BTreeSet<i32>; 2],
        pending: [usize; 2],
        queued: usize,
        gauge: &metrics::Gauge,
    ) {
        let total = pending[0] + pending[1];
        if total != self.counted {
            if total > self.counted {
                self.global.held.fetch_add(total - self.counted, Ordering::Relaxed);
            } else {
                self.global.held.fetch_sub(self.counted - total, Ordering::Relaxed);
            }
            self.counted = total;
        }
        for k in 0..2 {
            let full = pending[k] >= self.max;
            let since = if full {
                *self.full_since[k].get_or_insert_with(Instant::now)
            } else {
                self.full_since[k] = None;
                Instant::now()
            };
            let pause = if self.paused[k] {
                !(pending[k] <= self.max / 2 && self.global.eased())
            } else {
                (full && (since.elapsed() >= PAUSE_AFTER || queued >= self.max))
                    || (pending[k] > 0 && self.global.over())
            };
            if pause != self.paused[k] {
                set_paused(consumers[k], topics[k], &assigned[k], pause);
                self.paused[k] = pause;
                if k == 0 {
                    gauge.set(if pause { 1.0 } else { 0.0 });
                }
            }
        }
    }

    /// A partition became the lane's: paused too when its topic is.
    pub(super) fn assigned(&self, consumer: &LaneConsumer, topic: &str, retry: bool, partition: i32) {
        if self.paused(retry) {
            set_paused(consumer, topic, &BTreeSet::from([partition]), true);
        }
    }

    /// The lane ends: it holds nothing any more.
    pub(super) fn release(&mut self) {
        self.global.held.fetch_sub(self.counted, Ordering::Relaxed);
        self.counted = 0;
    }
}

fn set_paused(consumer: &LaneConsumer, topic: &str, partitions: &BTreeSet<i32>, pause: bool) {
    if partitions.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for &p in partitions {
        list.add_partition(topic, p);
    }
    let result = if pause {
        consumer.pause(&list)
    } else {
        consumer.resume(&list)
    };
    match result {
        Ok(()) => tracing::debug!(%topic, pause, "fetching paused or resumed"),
        Err(error) => tracing::warn!(%topic, %error, "pause/resume"),
    }
}
