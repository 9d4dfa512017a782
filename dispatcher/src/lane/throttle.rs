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

/// Records held by every lane of the instance, against a global cap; of them, those
/// waiting by policy (parked records before their backoff, records of a paused or
/// disconnected subscription), which no other lane's pause would make go faster.
#[derive(Debug, Clone)]
pub struct GlobalCap {
    held: Arc<AtomicUsize>,
    waiting: Arc<AtomicUsize>,
    max: usize,
}

impl GlobalCap {
    pub fn new(max: usize) -> Self {
        Self {
            held: Arc::default(),
            waiting: Arc::default(),
            max: max.max(1),
        }
    }

    /// Records held by every lane now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Records held by every lane now that can go out (not waiting by policy).
    pub fn workable(&self) -> usize {
        self.held()
            .saturating_sub(self.waiting.load(Ordering::Relaxed))
    }

    /// At the cap: counting every record held (`all`), or those that can go out.
    fn over(&self, all: bool) -> bool {
        (if all { self.held() } else { self.workable() }) >= self.max
    }

    /// Low enough again for paused lanes to resume.
    fn eased(&self, all: bool) -> bool {
        (if all { self.held() } else { self.workable() }) <= self.max - self.max / 4
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
    /// What this lane last counted in the global cap (held, and waiting by policy).
    counted: [usize; 2],
}

/// What a lane holds, per topic (delivery, retry): its unfinished records, how many
/// of them wait by policy, and the records waiting in the lane's channel.
#[derive(Debug, Clone, Copy)]
pub(super) struct Load {
    pub pending: [usize; 2],
    pub waiting: [usize; 2],
    pub queued: usize,
}

impl Throttle {
    pub(super) fn new(max: usize, global: GlobalCap) -> Self {
        Self {
            max: max.max(1),
            paused: [false; 2],
            global,
            counted: [0; 2],
        }
    }

    pub(super) fn paused(&self, retry: bool) -> bool {
        self.paused[usize::from(retry)]
    }

    /// Call once per loop turn with the lane's [`Load`]; pauses or resumes the lane's
    /// `assigned` partitions of `topics` on `consumers`.
    pub(super) fn update(
        &mut self,
        consumers: [&LaneConsumer; 2],
        topics: [&str; 2],
        assigned: &[BTreeSet<i32>; 2],
        load: Load,
        gauge: &metrics::Gauge,
    ) {
        let Load {
            pending,
            waiting,
            queued,
        } = load;
        self.count(
            pending[0] + pending[1],
            waiting[0].min(pending[0]) + waiting[1].min(pending[1]),
        );
        for k in 0..2 {
            let pause = self.should_pause(k, pending[k], waiting[k], queued);
            if pause != self.paused[k] {
                set_paused(consumers[k], topics[k], &assigned[k], pause);
                self.paused[k] = pause;
                if k == 0 {
                    gauge.set(if pause { 1.0 } else { 0.0 });
                }
            }
        }
    }

    /// Counts the lane's unfinished records (`total`, of them `waiting` by policy) in
    /// the global cap.
    fn count(&mut self, total: usize, waiting: usize) {
        for (i, (now, counter)) in [(total, &self.global.held), (waiting, &self.global.waiting)]
            .into_iter()
            .enumerate()
        {
            let before = self.counted[i];
            if now > before {
                counter.fetch_add(now - before, Ordering::Relaxed);
            } else {
                counter.fetch_sub(before - now, Ordering::Relaxed);
            }
            self.counted[i] = now;
        }
    }

    /// Whether topic `k`'s partitions should be paused now: at twice `max` held (taken
    /// in and queued) or, holding some, when all lanes hold the global cap; once paused,
    /// until `max` held and the global count is down to three quarters. A topic holding
    /// records that can go out is measured against the records of every lane that can
    /// go out: records waiting by policy elsewhere (a partner down for hours, its parked
    /// records waiting for their backoff) would otherwise keep it paused until they are
    /// due. One holding only records waiting by policy is measured against all, so they
    /// stay bounded by the cap.
    fn should_pause(&self, k: usize, pending: usize, waiting: usize, queued: usize) -> bool {
        let held = pending + queued;
        // (Holding none, a topic is measured by what can go out: a healthy lane that was
        // paused and drained must resume when that eases, not when others' waiting
        // records are due.)
        let all = pending > 0 && pending <= waiting;
        if self.paused[k] {
            !(held <= self.max && self.global.eased(all))
        } else {
            held >= 2 * self.max || (pending > 0 && self.global.over(all))
        }
    }

    /// A partition became the lane's: paused or resumed as its topic is. Either way,
    /// because librdkafka keeps a pause the application set across a revoke and a new
    /// assignment: a partition paused by this lane (or by one before it) and assigned
    /// again would otherwise never be fetched.
    pub(super) fn assigned(
        &self,
        consumer: &LaneConsumer,
        topic: &str,
        retry: bool,
        partition: i32,
    ) {
        set_paused(
            consumer,
            topic,
            &BTreeSet::from([partition]),
            self.paused(retry),
        );
    }

    /// The lane ends: it holds nothing any more.
    pub(super) fn release(&mut self) {
        self.count(0, 0);
    }
}

impl Drop for Throttle {
    /// A lane that panicked gives its count back too (else the global total would stay
    /// over the cap and pause every lane for good).
    fn drop(&mut self) {
        self.release();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `pending` (delivery topic) and `queued` for `t`, and applies its decision
    /// as `update` would (without a consumer).
    fn turn(t: &mut Throttle, pending: usize, queued: usize) -> bool {
        waiting_turn(t, pending, 0, queued)
    }

    /// As [`turn`], with `waiting` of the `pending` records waiting by policy.
    fn waiting_turn(t: &mut Throttle, pending: usize, waiting: usize, queued: usize) -> bool {
        t.count(pending, waiting);
        let pause = t.should_pause(0, pending, waiting, queued);
        t.paused[0] = pause;
        pause
    }

    /// #22 item 2: partners down for hours hold their parked records (waiting for their
    /// backoff) up to the global cap; a healthy lane beside them must not pause for
    /// them, and they must still stop taking more at the cap.
    #[test]
    fn records_waiting_by_policy_pause_only_the_lanes_holding_nothing_else() {
        let global = GlobalCap::new(1_000);
        let mut down: Vec<Throttle> = (0..5)
            .map(|_| Throttle::new(1_024, global.clone()))
            .collect();
        for lane in &mut down[..3] {
            assert!(!waiting_turn(lane, 250, 250, 0));
        }
        assert!(
            waiting_turn(&mut down[3], 250, 250, 0),
            "a lane holding only waiting records stops at the cap"
        );
        assert_eq!((global.held(), global.workable()), (1_000, 0));
        assert!(
            waiting_turn(&mut down[4], 10, 10, 0),
            "and so does every such lane"
        );
        let mut healthy = Throttle::new(1_024, global.clone());
        assert!(
            !turn(&mut healthy, 500, 0),
            "a lane with records that can go out does not pause for records that wait"
        );
        // Its records go out and come in; it never pauses while the others wait.
        for pending in [100, 900, 20, 700] {
            assert!(!turn(&mut healthy, pending, 0));
        }
        // A mixed lane is measured by what can go out too.
        let mut mixed = Throttle::new(1_024, global.clone());
        assert!(!waiting_turn(&mut mixed, 400, 300, 0));
        // What can go out reaches the cap: then the healthy lanes pause as before...
        assert!(turn(&mut healthy, 1_000, 0));
        // ...and resume once it is down to three quarters, though the waiting stay;
        // also when the paused lane drained every record meanwhile.
        assert!(turn(&mut healthy, 900, 0));
        assert!(
            !turn(&mut healthy, 0, 0),
            "a drained lane resumes by what can go out"
        );
        assert!(turn(&mut healthy, 1_000, 0));
        assert!(!turn(&mut healthy, 600, 0));
        assert_eq!(global.workable(), 700);
        assert!(
            waiting_turn(&mut down[4], 10, 10, 0),
            "the waiting-only lane stays paused while all held are over three quarters"
        );
        for lane in &mut down {
            lane.release();
        }
        assert!(
            !waiting_turn(&mut Throttle::new(1_024, global.clone()), 0, 0, 0),
            "nothing held: never paused"
        );
    }

    #[test]
    fn a_lane_pauses_at_twice_its_max_held_and_resumes_with_max_still_in_hand() {
        let mut t = Throttle::new(100, GlobalCap::default());
        assert!(
            !turn(&mut t, 100, 50),
            "full but little queued: keeps fetching"
        );
        assert!(turn(&mut t, 100, 100), "twice max held: paused");
        assert!(turn(&mut t, 100, 1), "still above max");
        assert!(
            !turn(&mut t, 100, 0),
            "max held: resumed while it has max to work on"
        );
    }

    #[test]
    fn the_global_cap_pauses_every_lane_holding_some_and_resumes_them_below_three_quarters() {
        let global = GlobalCap::new(1_000);
        let mut lanes: Vec<Throttle> = (0..3)
            .map(|_| Throttle::new(1_024, global.clone()))
            .collect();
        // Each far below its own cap, together at the global one.
        assert!(!turn(&mut lanes[0], 400, 0));
        assert!(!turn(&mut lanes[1], 400, 0));
        assert!(
            turn(&mut lanes[2], 200, 0),
            "the lane that reached the cap pauses"
        );
        assert_eq!(global.held(), 1_000);
        assert!(
            turn(&mut lanes[0], 400, 0),
            "so does every lane holding some"
        );
        assert!(
            !turn(&mut Throttle::new(1_024, global.clone()), 0, 0),
            "a lane holding none does not"
        );
        // Down to 800 (above three quarters): still paused.
        assert!(turn(&mut lanes[0], 200, 0));
        assert_eq!(global.held(), 800);
        // Down to 700: every lane resumes.
        assert!(!turn(&mut lanes[1], 300, 0));
        assert!(!turn(&mut lanes[0], 200, 0));
        assert!(!turn(&mut lanes[2], 200, 0));
        // A lane that ends gives its count back.
        lanes[1].release();
        assert_eq!(global.held(), 400);
    }
}
