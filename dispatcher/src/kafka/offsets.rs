//! Offsets to commit: only the contiguous prefix of finished records of a partition.
//! A record is finished when delivered or durably dead-lettered; one unfinished record
//! holds the committable offset back even when later ones are finished, so a restart
//! redoes it (and at most the finished ones after it: duplicates bounded by the window).

use std::collections::BTreeMap;
use std::time::Instant;

/// Per partition (`P`: a partition number, or a lane's (topic, partition)): offsets
/// taken in, and which of them are finished.
#[derive(Debug)]
pub struct OffsetTracker<P = i32> {
    partitions: BTreeMap<P, Partition>,
}

impl<P> Default for OffsetTracker<P> {
    fn default() -> Self {
        Self {
            partitions: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Default)]
struct Partition {
    /// Unfinished offsets, with when each was taken in (the first is the oldest: a
    /// partition is taken in offset order).
    pending: BTreeMap<i64, Instant>,
    /// Highest offset taken in so far.
    highest: Option<i64>,
}

impl<P: Ord + Copy> OffsetTracker<P> {
    /// Records that `offset` of `partition` was taken in and is not finished.
    pub fn begin(&mut self, partition: P, offset: i64) {
        self.begin_at(partition, offset, Instant::now());
    }

    /// [`OffsetTracker::begin`], taken in at `at`.
    fn begin_at(&mut self, partition: P, offset: i64, at: Instant) {
        let p = self.partitions.entry(partition).or_default();
        p.pending.insert(offset, at);
        p.highest = Some(p.highest.map_or(offset, |h| h.max(offset)));
    }

    /// Marks `offset` finished. Returns the offset to commit for the partition (the
    /// next one to read: one past the finished prefix) when it moved.
    pub fn finish(&mut self, partition: P, offset: i64) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        let was_first = p.pending.first_key_value().map(|(o, _)| *o) == Some(offset);
        if p.pending.remove(&offset).is_none() || !was_first {
            return None;
        }
        Some(match p.pending.first_key_value() {
            Some((first, _)) => *first,
            None => p.highest.map_or(offset + 1, |h| h + 1),
        })
    }

    /// Unfinished records of `partition`.
    pub fn pending(&self, partition: P) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |p| p.pending.len())
    }

    /// Unfinished records in all.
    pub fn total_pending(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }

    /// Unfinished records of the partitions `which` selects.
    pub fn pending_in(&self, which: impl Fn(&P) -> bool) -> usize {
        self.partitions
            .iter()
            .filter(|(p, _)| which(p))
            .map(|(_, p)| p.pending.len())
            .sum()
    }

    /// When the oldest unfinished record of the partitions `which` selects was taken in.
    pub fn oldest_in(&self, which: impl Fn(&P) -> bool) -> Option<Instant> {
        self.partitions
            .iter()
            .filter(|(p, _)| which(p))
            .filter_map(|(_, p)| p.pending.first_key_value().map(|(_, t)| *t))
            .min()
    }

    /// Forgets a partition (after it was revoked).
    pub fn forget(&mut self, partition: P) {
        self.partitions.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_contiguous_finished_prefix_is_committed() {
        let mut t: OffsetTracker = OffsetTracker::default();
        for o in 10..15 {
            t.begin(0, o);
        }
        assert_eq!(t.finish(0, 12), None, "12 finished but 10 is not");
        assert_eq!(t.finish(0, 11), None);
        assert_eq!(t.finish(0, 10), Some(13), "10-12 done: next to read is 13");
        assert_eq!(t.finish(0, 14), None, "13 still pending");
        assert_eq!(t.finish(0, 13), Some(15));
        assert_eq!(t.pending(0), 0);
    }

    #[test]
    fn partitions_are_independent_and_unknown_finishes_are_ignored() {
        let mut t: OffsetTracker = OffsetTracker::default();
        t.begin(0, 5);
        t.begin(1, 7);
        assert_eq!(t.finish(1, 7), Some(8));
        assert_eq!(t.finish(1, 7), None, "twice");
        assert_eq!(t.finish(2, 1), None, "never begun");
        assert_eq!(t.total_pending(), 1);
        t.forget(0);
        assert_eq!(t.finish(0, 5), None, "forgotten after revoke");
    }

    #[test]
    fn the_oldest_unfinished_record_is_the_first_taken_of_those_left() {
        let mut t: OffsetTracker = OffsetTracker::default();
        assert_eq!(t.oldest_in(|_| true), None);
        let t0 = Instant::now();
        let later = |ms| t0 + std::time::Duration::from_millis(ms);
        t.begin_at(0, 1, t0);
        t.begin_at(0, 2, later(5));
        t.begin_at(1, 9, later(3));
        assert_eq!(t.oldest_in(|_| true), Some(t0));
        assert_eq!(t.oldest_in(|p| *p == 1), Some(later(3)));
        t.finish(0, 1);
        assert_eq!(t.oldest_in(|_| true), Some(later(3)), "1 finished");
        assert_eq!(t.oldest_in(|p| *p == 0), Some(later(5)));
    }
}
