//! What a lane has taken in: offsets, the key in flight per (partition, subscription, key), the
//! records waiting behind it, the parked keys, and the partitions whose parked keys are
//! being read back.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::intake::LaneConsumer;
use super::read_back::Rebalances;
use crate::delivery::{Done, Job, JobEnd, Logged};
use crate::kafka::group::GroupChange;
use crate::kafka::offsets::OffsetTracker;

/// A finished job's offset waiting for its delivery-log records ([`LaneState::done`]).
pub(super) struct Unlogged {
    pub(super) logged: Logged,
    pub(super) tp: Tp,
    pub(super) offset: i64,
    pub(super) key: Vec<u8>,
    pub(super) epoch: u64,
}

/// A partition of the lane: of the delivery topic, or of the retry topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Tp {
    pub(super) retry: bool,
    pub(super) partition: i32,
}

impl Tp {
    pub(super) fn of(job: &Job) -> Self {
        Self {
            retry: job.parked.is_some(),
            partition: job.partition,
        }
    }
}

/// One order of one subscription in one partition: its records start one at a time,
/// in order. (Per subscription: a subscription that holds its records, paused or not
/// verified yet, does not hold the same orders' records of the partner's other
/// subscriptions, #25.)
pub(super) type Slot = (Tp, String, Vec<u8>);

fn slot_of(job: &Job) -> Slot {
    (Tp::of(job), job.subscription_id.clone(), job.key.clone())
}

/// What a lane has taken in: offsets, the key in flight per (partition, subscription,
/// key), the records waiting behind it, and the parked keys.
#[derive(Default)]
pub(super) struct LaneState {
    pub(super) tracker: OffsetTracker<Tp>,
    /// Records free to start (their key's turn), in the order they became so; started by
    /// [`launch`] while few started jobs are still before their first request.
    pub(super) ready: VecDeque<Job>,
    pub(super) waiting: HashMap<Slot, VecDeque<Job>>,
    pub(super) busy: HashSet<Slot>,
    /// Offsets to store at the next [`STORE_EVERY`] tick.
    pub(super) to_store: BTreeMap<Tp, i64>,
    /// Per (partition, key) of the delivery topic: its records in the retry topic not
    /// finished yet. A key with a positive count is parked: its next records follow
    /// the others into the retry topic, so one key's order holds.
    pub(super) parked: HashMap<(i32, Vec<u8>), i64>,
    /// Delivery partitions whose parked keys are being read back from the retry topic
    /// (after an assignment): their records wait here until then, and the retry
    /// records finished meanwhile are noted (offset, key).
    pub(super) rebuilding: HashMap<i32, Rebuild>,
    /// Numbers the read-backs, so that the answer of one started before a revoke is not
    /// taken for the one after the next assignment.
    pub(super) generation: u64,
    /// The epoch of each partition's current assignment (the intake's). A job of an
    /// assignment that is over (revoked since, maybe assigned again) still ends; its
    /// end must not touch the offsets or parked counts of the partition's new life.
    pub(super) epochs: HashMap<Tp, u64>,
    /// Per delivery partition of the current assignment: where its read-back of parked
    /// keys ended (a write to the retry topic from there on was not counted by it).
    pub(super) read_back_to: HashMap<i32, i64>,
}

/// A delivery partition's records held while its parked keys are read back, the retry
/// records finished meanwhile (offset, key), and the records this lane wrote to the
/// retry partition meanwhile (offset there, key: jobs that began before a revoke and
/// re-assignment end during the read-back).
#[derive(Default)]
pub(super) struct Rebuild {
    pub(super) generation: u64,
    /// Cancelled when this read-back is no longer wanted (superseded, or the partition
    /// revoked): the pool stops reading for it.
    pub(super) cancel: tokio_util::sync::CancellationToken,
    pub(super) held: Vec<Job>,
    pub(super) finished: Vec<(i64, Vec<u8>)>,
    pub(super) written: Vec<(i64, Vec<u8>)>,
}

/// A read-back's answer.
#[derive(Debug)]
pub(super) struct ReadBack {
    pub(super) partition: i32,
    /// Which read-back of the partition answered (a newer one supersedes it).
    pub(super) generation: u64,
    /// The range of the retry partition read: from the group's committed offset to the
    /// end it saw.
    pub(super) from: i64,
    pub(super) to: i64,
    /// The count per key of its records in that range.
    pub(super) counts: ParkedCounts,
}

/// Records per key in a retry partition.
pub(super) type ParkedCounts = HashMap<Vec<u8>, i64>;

impl LaneState {
    /// Takes in a record; returns it when its key is free (it is ready to start).
    pub(super) fn take(&mut self, job: Job) -> Option<Job> {
        let tp = Tp::of(&job);
        self.tracker.begin(tp, job.offset);
        if !tp.retry {
            if let Some(rebuild) = self.rebuilding.get_mut(&job.partition) {
                rebuild.held.push(job);
                return None;
            }
        }
        self.admit(job)
    }

    /// Starts the record when its key is free, else queues it behind the key.
    pub(super) fn admit(&mut self, job: Job) -> Option<Job> {
        let slot = slot_of(&job);
        if self.busy.contains(&slot) {
            self.waiting.entry(slot).or_default().push_back(job);
            None
        } else {
            self.busy.insert(slot);
            Some(self.prepare(job))
        }
    }

    /// The epoch of the current assignment of a partition (`None`: not the lane's).
    pub(super) fn epoch(&self, retry: bool, partition: i32) -> Option<u64> {
        self.epochs.get(&Tp { retry, partition }).copied()
    }

    /// Decided when a record starts: a delivery record of a parked key follows it, and
    /// takes the key's records queued behind it along (they would follow it one by one).
    pub(super) fn prepare(&mut self, mut job: Job) -> Job {
        // (No parked key at all is the usual case: no lookup, no key copy.)
        if job.parked.is_none() && !self.parked.is_empty() {
            job.follow = self
                .parked
                .get(&(job.partition, job.key.clone()))
                .is_some_and(|n| *n > 0);
            if job.follow {
                let slot = slot_of(&job);
                job.followers = self
                    .waiting
                    .remove(&slot)
                    .map(Vec::from)
                    .unwrap_or_default();
            }
        }
        job
    }

    pub(super) fn parked_add(&mut self, partition: i32, key: Vec<u8>, n: i64) {
        use std::collections::hash_map::Entry;
        match self.parked.entry((partition, key)) {
            Entry::Occupied(mut e) => {
                *e.get_mut() += n;
                if *e.get() == 0 {
                    e.remove();
                }
            }
            Entry::Vacant(e) => {
                if n != 0 {
                    e.insert(n);
                }
            }
        }
    }

    /// A delivery partition was assigned: hold its records until its parked keys are
    /// known. Returns the read-back's generation.
    pub(super) fn start_rebuild(&mut self, partition: i32) -> u64 {
        self.generation += 1;
        let rebuild = self.rebuilding.entry(partition).or_default();
        rebuild.generation = self.generation;
        // A read-back still running for this partition is superseded.
        rebuild.cancel.cancel();
        rebuild.cancel = tokio_util::sync::CancellationToken::new();
        self.generation
    }

    /// The parked keys of `partition` were read back: `counts` per key of the records in
    /// the retry partition from `from` to `to`. Returns the held records that can start.
    pub(super) fn finish_rebuild(&mut self, answer: ReadBack) -> Vec<Job> {
        let ReadBack {
            partition,
            generation,
            from,
            to,
            mut counts,
        } = answer;
        if self
            .rebuilding
            .get(&partition)
            .is_none_or(|r| r.generation != generation)
        {
            return Vec::new(); // revoked since, or superseded by a newer read-back
        }
        let Some(Rebuild {
            held,
            finished,
            written,
            ..
        }) = self.rebuilding.remove(&partition)
        else {
            return Vec::new();
        };
        for (offset, key) in finished {
            if offset >= from {
                *counts.entry(key).or_default() -= 1;
            }
        }
        // Written past what the read-back saw: not counted yet.
        for (offset, key) in written {
            if offset >= to {
                *counts.entry(key).or_default() += 1;
            }
        }
        for (key, n) in counts {
            if n > 0 {
                self.parked_add(partition, key, n);
            }
        }
        self.read_back_to.insert(partition, to);
        held.into_iter().filter_map(|job| self.admit(job)).collect()
    }

    /// Follows what rebalances changed, in order: a revoked partition's queued work is
    /// left to its new owner and its unstored offsets are not stored; an assigned
    /// delivery partition holds its records until its parked keys are read back.
    /// Returns the read-backs to start: (partition, generation).
    pub(super) fn follow(
        &mut self,
        lane: &Rebalances,
        changes: Vec<GroupChange>,
    ) -> Vec<(i32, u64)> {
        let mut read_backs = Vec::new();
        for change in changes {
            match change {
                GroupChange::Revoked(topic, partition) => {
                    self.forget(Tp {
                        retry: topic == lane.retry_topic,
                        partition,
                    });
                    tracing::debug!(partner = %lane.partner, %topic, partition, "queued work of a revoked partition left to its new owner");
                }
                GroupChange::Assigned(topic, partition)
                    if topic == lane.topic && lane.read_backs.is_some() =>
                {
                    let generation = self.start_rebuild(partition);
                    tracing::debug!(partner = %lane.partner, partition, generation, "reading the partition's parked keys back");
                    read_backs.push((partition, generation));
                }
                GroupChange::Assigned(..) => {}
            }
        }
        read_backs
    }

    /// Drops what the lane holds of a revoked partition.
    pub(super) fn forget(&mut self, tp: Tp) {
        self.tracker.forget(tp);
        self.to_store.remove(&tp);
        self.waiting.retain(|(t, _, _), _| *t != tp);
        // Not started: no job will end for them, so their keys are freed here.
        let busy = &mut self.busy;
        self.ready.retain(|job| {
            let keep = Tp::of(job) != tp;
            if !keep {
                busy.remove(&slot_of(job));
            }
            keep
        });
        if !tp.retry {
            if let Some(rebuild) = self.rebuilding.remove(&tp.partition) {
                rebuild.cancel.cancel();
            }
            self.read_back_to.remove(&tp.partition);
            self.parked.retain(|(p, _), _| *p != tp.partition);
        }
    }

    /// Hands the finished prefixes to the consumers (of the delivery topic, of the retry
    /// topic), committed in the background, before a revoke, or by the final commit.
    pub(super) fn store_offsets(&mut self, consumers: [&LaneConsumer; 2], topics: [&str; 2]) {
        if self.to_store.is_empty() {
            return;
        }
        let mut lists = [TopicPartitionList::new(), TopicPartitionList::new()];
        for (tp, next) in std::mem::take(&mut self.to_store) {
            let k = usize::from(tp.retry);
            // Stored as the next offset to read, as a commit expects.
            if let Err(error) =
                lists[k].add_partition_offset(topics[k], tp.partition, Offset::Offset(next))
            {
                tracing::warn!(%error, "offset list");
            }
        }
        for (consumer, list) in consumers.into_iter().zip(lists) {
            if list.count() == 0 {
                continue;
            }
            if let Err(error) = consumer.store_offsets(&list) {
                tracing::debug!(%error, "storing offsets (partition no longer assigned?)");
            }
        }
    }

    /// Records a job's end; returns the next record of its key to start, if any. A
    /// finished job whose delivery-log records are not acknowledged yet (`logged`)
    /// frees its key at once, but its offset waits: it is put in `unlogged`, for
    /// [`Self::logged`] when the acknowledgement comes.
    pub(super) fn done(&mut self, done: Done, unlogged: &mut Vec<Unlogged>) -> Option<Job> {
        let Done {
            retry,
            partition,
            offset,
            key,
            subscription_id,
            end,
            followed,
            epoch,
            logged,
        } = done;
        let tp = Tp { retry, partition };
        // A job of an assignment that is over: its records are the partition's next
        // owner's (their offsets were not stored, so they are read again, and a
        // read-back counts what is in the retry topic), so its end moves no offset and
        // no parked count, but for a write the next assignment's read-back may not
        // have seen (`finish`). Before #22, a retry record ending after its partition
        // was revoked took one off the key's count of the partition's next life, and
        // the key read as unparked with a record still in the retry topic.
        let over = epoch != 0 && self.epochs.get(&tp) != Some(&epoch);
        // Records that followed the job into the retry topic in the same go. One that
        // did not (shutdown) stops the key as the job's own interruption would.
        let mut interrupted = end == JobEnd::Interrupted;
        for (offset, end) in followed {
            interrupted |= end == JobEnd::Interrupted;
            if end != JobEnd::Interrupted {
                self.finish(tp, offset, &key, end, over);
            }
        }
        let slot = (tp, subscription_id, key);
        self.busy.remove(&slot);
        if end == JobEnd::Interrupted {
            // Later records of this key must not overtake it: leave them to a restart.
            self.waiting.remove(&slot);
            return None;
        }
        match logged {
            Some(logged) if end == JobEnd::Finished => unlogged.push(Unlogged {
                logged,
                tp,
                offset,
                key: slot.2.clone(),
                epoch,
            }),
            _ => self.finish(tp, offset, &slot.2, end, over),
        }
        if interrupted {
            // The job itself ended, a record that followed it did not.
            self.waiting.remove(&slot);
            return None;
        }
        let next = self.waiting.get_mut(&slot).and_then(VecDeque::pop_front);
        match &next {
            Some(_) => {
                self.busy.insert(slot);
            }
            None => {
                self.waiting.remove(&slot);
            }
        }
        next.map(|job| self.prepare(job))
    }

    /// A finished job's delivery-log records were acknowledged: its offset moves (as
    /// `done` would have moved it).
    pub(super) fn logged(&mut self, tp: Tp, offset: i64, key: &[u8], epoch: u64) {
        let over = epoch != 0 && self.epochs.get(&tp) != Some(&epoch);
        self.finish(tp, offset, key, JobEnd::Finished, over);
    }

    /// A finished record of `tp` (delivered, dead-lettered, dropped, or parked at
    /// `end`'s offset): its offset may be stored, and the parked counts follow. `over`:
    /// of an assignment that is over (see `done`): only a write to the retry topic that
    /// the partition's new read-back did not count is (during it, decided by the offset
    /// when it answers; after it, past the range it read).
    fn finish(&mut self, tp: Tp, offset: i64, key: &[u8], end: JobEnd, over: bool) {
        if over {
            if let JobEnd::Parked { at } = end {
                match self.rebuilding.get_mut(&tp.partition) {
                    Some(rebuild) => rebuild.written.push((at, key.to_vec())),
                    // Ours again and read back already: counted if past what was read.
                    None if self
                        .read_back_to
                        .get(&tp.partition)
                        .is_some_and(|to| at >= *to) =>
                    {
                        self.parked_add(tp.partition, key.to_vec(), 1)
                    }
                    None => {}
                }
            }
            return;
        }
        if let JobEnd::Parked { at } = end {
            // While its parked keys are read back, the read-back may or may not have seen
            // this write: decided by its offset when the answer comes.
            match self.rebuilding.get_mut(&tp.partition) {
                Some(rebuild) => rebuild.written.push((at, key.to_vec())),
                None => self.parked_add(tp.partition, key.to_vec(), 1),
            }
        } else if tp.retry {
            match self.rebuilding.get_mut(&tp.partition) {
                Some(rebuild) => rebuild.finished.push((offset, key.to_vec())),
                None => self.parked_add(tp.partition, key.to_vec(), -1),
            }
        }
        if let Some(next) = self.tracker.finish(tp, offset) {
            self.to_store.insert(tp, next);
        }
    }

    pub(super) fn pending(&self, retry: bool) -> usize {
        self.tracker.pending_in(|tp| tp.retry == retry)
    }
}

#[cfg(test)]
mod tests;
