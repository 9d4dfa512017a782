use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::lane::read_back::{ReadBackPool, ReadBacks};

const DELIVERIES: &str = "deliveries.p";
const RETRIES: &str = "retries.p";

fn lane() -> Rebalances {
    let (answers, _) = tokio::sync::mpsc::unbounded_channel();
    Rebalances {
        partner: "p".into(),
        topic: DELIVERIES.into(),
        retry_topic: RETRIES.into(),
        read_backs: Some(ReadBacks {
            pool: ReadBackPool::unstarted(),
            retry_topic: RETRIES.into(),
            answers,
        }),
    }
}

fn record(partition: i32, offset: i64, key: &str) -> Job {
    Job {
        topic: Arc::from(DELIVERIES),
        partition,
        offset,
        key: key.as_bytes().to_vec(),
        body: Bytes::new(),
        webhook_id: format!("{key}-{offset}"),
        subscription_id: "s".into(),
        traceparent: None,
        occurred_at_ms: None,
        read_at: None,
        headers: None,
        parked: None,
        follow: false,
        followers: Vec::new(),
        epoch: 0,
    }
}

fn assigned(partition: i32) -> GroupChange {
    GroupChange::Assigned(DELIVERIES.into(), partition)
}

fn revoked(partition: i32) -> GroupChange {
    GroupChange::Revoked(DELIVERIES.into(), partition)
}

#[test]
fn a_record_of_a_reassigned_partition_follows_its_parked_key() {
    // The new owner of partition 1 reads back that `bad` has 3 records in the retry
    // topic: the delivery topic's `bad` taken meanwhile must follow them there, the
    // other key goes out at once.
    let lane = lane();
    let mut state = LaneState::default();
    let started = state.follow(&lane, vec![assigned(1)]);
    let [(1, generation)] = started[..] else {
        panic!("one read-back of partition 1: {started:?}")
    };
    assert!(state.take(record(1, 7, "bad")).is_none(), "held");
    assert!(state.take(record(1, 8, "ok")).is_none(), "held");
    let ready = state.finish_rebuild(ReadBack {
        partition: 1,
        generation,
        from: 0,
        to: 3,
        counts: [(b"bad".to_vec(), 3)].into(),
    });
    let follows: Vec<(String, bool)> = ready
        .iter()
        .map(|j| (j.webhook_id.clone(), j.follow))
        .collect();
    assert_eq!(
        follows,
        vec![("bad-7".to_string(), true), ("ok-8".to_string(), false)]
    );
}

#[test]
fn a_write_to_the_retry_topic_during_a_read_back_is_counted_once() {
    // A job that began before partition 1 was revoked and assigned back parks its
    // record while the new read-back runs: at offset 4, which the read-back (0..5)
    // saw, and at offset 5, which it did not.
    let lane = lane();
    let mut state = LaneState::default();
    let [(1, generation)] = state.follow(&lane, vec![assigned(1)])[..] else {
        panic!("one read-back")
    };
    let parked_at = |at: i64, key: &str| Done {
        retry: false,
        partition: 1,
        offset: 0,
        key: key.as_bytes().to_vec(),
        subscription_id: "s".into(),
        end: JobEnd::Parked { at },
        followed: Vec::new(),
        epoch: 0,
        logged: None,
    };
    assert!(state.done_now(parked_at(4, "seen")).is_none());
    assert!(state.done_now(parked_at(5, "unseen")).is_none());
    state.finish_rebuild(ReadBack {
        partition: 1,
        generation,
        from: 0,
        to: 5,
        counts: [(b"seen".to_vec(), 1)].into(),
    });
    assert_eq!(
        state.parked.get(&(1, b"seen".to_vec())),
        Some(&1),
        "not twice"
    );
    assert_eq!(state.parked.get(&(1, b"unseen".to_vec())), Some(&1));
    // Without a read-back going on, a write counts at once.
    assert!(state.done_now(parked_at(6, "seen")).is_none());
    assert_eq!(state.parked.get(&(1, b"seen".to_vec())), Some(&2));
}

#[test]
fn a_revoke_and_assignment_in_one_batch_are_followed_in_their_order() {
    let lane = lane();
    let mut state = LaneState::default();
    // Taken before the rebalance, then revoked: left to the new owner.
    assert!(state.take(record(1, 3, "a")).is_some());
    // Revoked, then assigned back (an eager rebalance): the partition is ours and
    // its records wait for its parked keys.
    let started = state.follow(&lane, vec![revoked(1), assigned(1)]);
    assert_eq!(started.len(), 1);
    assert_eq!(
        state.tracker.total_pending(),
        0,
        "the revoked record is forgotten"
    );
    assert!(
        state.take(record(1, 3, "a")).is_none(),
        "held for the read-back"
    );
    // Assigned, then revoked: nothing is held for it any more.
    let mut state = LaneState::default();
    state.follow(&lane, vec![assigned(2), revoked(2)]);
    assert!(state.rebuilding.is_empty());
    assert!(state.take(record(2, 0, "b")).is_some());
}

#[test]
fn a_lane_that_does_not_park_reads_nothing_back() {
    let mut lane = lane();
    lane.read_backs = None;
    let mut state = LaneState::default();
    assert!(state.follow(&lane, vec![assigned(0)]).is_empty());
    assert!(state.take(record(0, 0, "a")).is_some());
}

#[test]
fn a_parked_keys_queued_records_follow_it_in_one_go_and_each_is_finished() {
    let mut state = LaneState::default();
    state.parked_add(0, b"k".to_vec(), 1);
    let first = state.take(record(0, 1, "k")).expect("the key is free");
    assert!(first.follow && first.followers.is_empty());
    assert!(state.take(record(0, 2, "k")).is_none(), "queued behind it");
    assert!(state.take(record(0, 3, "k")).is_none());
    let done = |offset: i64, at: i64, followed: Vec<(i64, JobEnd)>| Done {
        retry: false,
        partition: 0,
        offset,
        key: b"k".to_vec(),
        subscription_id: "s".into(),
        end: JobEnd::Parked { at },
        followed,
        epoch: 0,
        logged: None,
    };
    let next = state
        .done_now(done(1, 10, vec![]))
        .expect("the key's next record");
    assert!(next.follow);
    assert_eq!(
        next.followers.iter().map(|j| j.offset).collect::<Vec<_>>(),
        [3],
        "the records queued behind it go with it"
    );
    assert!(state.waiting.is_empty());
    assert!(
        state.take(record(0, 4, "k")).is_none(),
        "the key is busy meanwhile"
    );
    let after = state
        .done_now(done(2, 11, vec![(3, JobEnd::Parked { at: 12 })]))
        .expect("record 4, queued meanwhile");
    assert_eq!(after.offset, 4);
    assert_eq!(
        state.parked.get(&(0, b"k".to_vec())),
        Some(&4),
        "1 + 3 written"
    );
    assert_eq!(
        state.to_store.get(&Tp {
            retry: false,
            partition: 0
        }),
        Some(&4),
        "offsets 1 to 3 finished"
    );
    // A follower that shutdown interrupted stops the key: nothing overtakes it.
    assert!(state.take(record(0, 5, "k")).is_none());
    let mut interrupted = done(4, 13, vec![]);
    interrupted.followed = vec![(5, JobEnd::Interrupted)];
    assert!(state.done_now(interrupted).is_none());
    assert!(state.waiting.is_empty());
}

#[test]
fn a_retry_record_ending_after_its_partition_was_revoked_leaves_its_key_parked_when_it_comes_back()
{
    // Issue #22, item 5. Delivery and retry partition 1 are the lane's (epoch 1); key
    // k has one record in the retry topic, which is being retried.
    let lane = lane();
    let mut state = LaneState::default();
    let own = |state: &mut LaneState, epoch: u64| {
        for retry in [false, true] {
            state.epochs.insert(
                Tp {
                    retry,
                    partition: 1,
                },
                epoch,
            );
        }
    };
    own(&mut state, 1);
    state.parked_add(1, b"k".to_vec(), 1);
    let mut retry = record(1, 0, "k");
    retry.parked = Some(crate::delivery::Parked::from_headers(|_| None));
    retry.epoch = 1;
    let started = state.take(retry).expect("starts");
    // Revoked (rolling deploy); the job goes on and is delivered after the revoke.
    state.follow(&lane, vec![revoked(1)]);
    state.epochs.clear();
    let end = Done {
        retry: true,
        partition: 1,
        offset: started.offset,
        key: b"k".to_vec(),
        subscription_id: "s".into(),
        end: JobEnd::Finished,
        followed: Vec::new(),
        epoch: 1,
        logged: None,
    };
    assert!(state.done_now(end).is_none());
    // Assigned back (epoch 2): its offset was not stored, so the read-back finds the
    // record again: the key is parked, once.
    own(&mut state, 2);
    let [(1, generation)] = state.follow(&lane, vec![assigned(1)])[..] else {
        panic!("one read-back")
    };
    state.finish_rebuild(ReadBack {
        partition: 1,
        generation,
        from: 0,
        to: 1,
        counts: [(b"k".to_vec(), 1)].into(),
    });
    assert_eq!(
        state.parked.get(&(1, b"k".to_vec())),
        Some(&1),
        "k is still parked: its record in the retry topic is read again"
    );
    assert!(
        state.to_store.is_empty(),
        "nothing of the old assignment stored"
    );
}

#[test]
fn a_park_by_a_job_of_an_assignment_that_is_over_counts_when_the_new_read_back_missed_it() {
    // A delivery job of epoch 1 retries for a while; its partition is revoked and
    // assigned back (epoch 2), read back (the retry partition then ended at 5), and
    // only then does the old job park its record, at offset 5 of the retry partition.
    let lane = lane();
    let mut state = LaneState::default();
    state.epochs.insert(
        Tp {
            retry: false,
            partition: 1,
        },
        1,
    );
    let mut old = record(1, 0, "k");
    old.epoch = 1;
    let started = state.take(old).expect("starts");
    state.follow(&lane, vec![revoked(1)]);
    state.epochs.insert(
        Tp {
            retry: false,
            partition: 1,
        },
        2,
    );
    let [(1, generation)] = state.follow(&lane, vec![assigned(1)])[..] else {
        panic!("one read-back")
    };
    state.finish_rebuild(ReadBack {
        partition: 1,
        generation,
        from: 0,
        to: 5,
        counts: ParkedCounts::new(),
    });
    let parked = |at: i64| Done {
        retry: false,
        partition: 1,
        offset: started.offset,
        key: b"k".to_vec(),
        subscription_id: "s".into(),
        end: JobEnd::Parked { at },
        followed: Vec::new(),
        epoch: 1,
        logged: None,
    };
    state.done_now(parked(5));
    assert_eq!(
        state.parked.get(&(1, b"k".to_vec())),
        Some(&1),
        "past the read-back's range: k is parked, its next records follow it"
    );
    // One the read-back did see is not counted twice.
    state.done_now(parked(4));
    assert_eq!(state.parked.get(&(1, b"k".to_vec())), Some(&1));
    assert!(
        state.to_store.is_empty(),
        "no offset of the old assignment stored"
    );
}

#[test]
fn a_read_back_nobody_waits_for_any_more_is_cancelled() {
    // #22 item 1: a read-back of a huge backlog must not go on (and hold one of the
    // pool's slots) once its answer is no use: superseded by a newer one, or its
    // partition revoked.
    let lane = lane();
    let mut state = LaneState::default();
    state.follow(&lane, vec![assigned(1)]);
    let first = state.rebuilding[&1].cancel.clone();
    state.follow(&lane, vec![revoked(1), assigned(1)]);
    let second = state.rebuilding[&1].cancel.clone();
    assert!(first.is_cancelled(), "superseded by the new assignment's");
    assert!(!second.is_cancelled());
    // Assigned again without a revoke in between (a lane restart's rewind): superseded.
    state.follow(&lane, vec![assigned(1)]);
    assert!(second.is_cancelled());
    let third = state.rebuilding[&1].cancel.clone();
    state.follow(&lane, vec![revoked(1)]);
    assert!(third.is_cancelled(), "revoked");
}

/// #23: a finished job whose delivery-log records are on their way frees its key at
/// once (the order's next event does not wait for the log), but its offset moves only
/// once the log acknowledged them.
#[test]
fn a_finished_job_frees_its_key_at_once_and_its_offset_once_logged() {
    let mut state = LaneState::default();
    let _first = state.take(record(0, 1, "k")).expect("the key is free");
    assert!(state.take(record(0, 2, "k")).is_none(), "queued behind it");
    let mut unlogged = Vec::new();
    let finished = Done {
        retry: false,
        partition: 0,
        offset: 1,
        key: b"k".to_vec(),
        subscription_id: "s".into(),
        end: JobEnd::Finished,
        followed: Vec::new(),
        epoch: 0,
        logged: Some(crate::delivery::Logged::new(async { true })),
    };
    let next = state
        .done(finished, &mut unlogged)
        .expect("the key's next record");
    assert_eq!(next.offset, 2);
    let tp = Tp {
        retry: false,
        partition: 0,
    };
    assert_eq!(
        state.to_store.get(&tp),
        None,
        "no offset before the log has it"
    );
    let u = unlogged.pop().expect("waiting for the log");
    state.logged(u.tp, u.offset, &u.key, u.epoch);
    assert_eq!(state.to_store.get(&tp), Some(&2), "offset 1 finished");
}

impl LaneState {
    /// `done` for a job without delivery-log records.
    fn done_now(&mut self, done: Done) -> Option<Job> {
        let mut unlogged = Vec::new();
        let next = self.done(done, &mut unlogged);
        assert!(unlogged.is_empty());
        next
    }
}

#[test]
fn one_order_waits_behind_its_own_subscription_only() {
    // Order `o` for subscriptions `a` and `b`: `a`'s record is held (paused, or its
    // URL not verified yet); `b`'s records of `o` start anyway, and `a`'s next waits.
    let mut state = LaneState::default();
    let of = |offset: i64, subscription: &str| Job {
        subscription_id: subscription.into(),
        ..record(0, offset, "o")
    };
    assert!(state.admit(of(1, "a")).is_some(), "a's first starts");
    assert!(
        state.admit(of(2, "b")).is_some(),
        "b's does not wait for a's"
    );
    assert!(
        state.admit(of(3, "a")).is_none(),
        "a's next waits behind a's first"
    );
    assert!(
        state.admit(of(4, "b")).is_none(),
        "b's next waits behind b's first"
    );
    let mut unlogged = Vec::new();
    let done = |offset: i64, subscription: &str| Done {
        retry: false,
        partition: 0,
        offset,
        key: b"o".to_vec(),
        subscription_id: subscription.into(),
        end: JobEnd::Finished,
        followed: Vec::new(),
        epoch: 0,
        logged: None,
    };
    let next = state.done(done(2, "b"), &mut unlogged).expect("b's next");
    assert_eq!((next.offset, next.subscription_id.as_str()), (4, "b"));
    let next = state.done(done(1, "a"), &mut unlogged).expect("a's next");
    assert_eq!((next.offset, next.subscription_id.as_str()), (3, "a"));
}
