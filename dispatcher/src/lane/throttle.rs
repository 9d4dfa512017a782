//! A lane's back-pressure on the shared consumers. A lane holding `max` unfinished
//! records stops taking more (they wait in its channel from the intake). Its partitions
//! of a topic are paused when it holds twice `max` (taken in and waiting in the
//! channel), or when every lane together holds the instance's global cap and this one
//! holds some; they are resumed once it holds `max` again, so `max` records are still
//! there to work on while fetching starts again (a lane that drained its channel before
//! resuming sat idle for a fetch each time; pausing on every full moment cost a fast
//! lane 60 % of its throughput, issue 4). The other partners' partitions keep flowing:
//! nothing stops the shared stream.
//!
//! Pausing drops what librdkafka prefetched for those partitions and fetching resumes at
//! the next record the intake has not read, so nothing is skipped.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use rdkafka::consumer::Consumer;
use rdkafka::TopicPartitionList;

use super::intake::LaneConsumer;

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
    global: GlobalCap,
    /// What this lane last counted in the global cap.
    counted: usize,
}

impl Throttle {
    pub(super) fn new(max: usize, global: GlobalCap) -> Self {
        Self {
            max: max.max(1),
            paused: [false; 2],
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
            let held = pending[k] + queued;
            let pause = if self.paused[k] {
                !(held <= self.max && self.global.eased())
            } else {
                held >= 2 * self.max || (pending[k] > 0 && self.global.over())
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
