//! A consumer group member's context, shared by the router and the lanes: it logs
//! rebalances and notes what they changed for the consumer's loop (rebalance callbacks
//! run inside poll, where the loop cannot act), and publishes the consumer lag of its
//! topic from librdkafka's statistics. Every member of the process also shows its
//! partitions and last rebalance on a [`GroupBoard`] (`/status`, `groups`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

/// Logs rebalances and remembers what they changed for the consumer's loop (rebalance
/// callbacks run inside poll, where the loop cannot act); publishes the consumer lag of
/// `topic` from librdkafka's statistics.
#[derive(Debug, Default)]
pub struct GroupContext {
    pub name: String,
    /// The topics whose consumer lag is published, each with the partner health told it
    /// too (the shared lanes consumer has one per partner, [`GroupContext::watch_lag`]).
    lag_of: Mutex<std::collections::HashMap<String, Option<Arc<crate::health::PartnerHealth>>>>,
    /// Partitions revoked and assigned since the last [`GroupContext::take_changes`], in
    /// the order the rebalances happened.
    changes: Mutex<Vec<GroupChange>>,
    /// Set after `changes` grew (read by [`GroupContext::take_changes`]).
    noted: std::sync::atomic::AtomicBool,
    /// Set when partitions were assigned (a paused lane must pause them too).
    assigned: std::sync::atomic::AtomicBool,
    /// Woken when a rebalance changed something (the loop follows it even when no
    /// record arrives).
    changed: Arc<tokio::sync::Notify>,
    /// Where this member shows its state, with its entry's generation.
    board: Option<(GroupBoard, u64)>,
    /// Commit the stored offsets before partitions are revoked (the lanes' shared
    /// consumer: a cooperative rebalance revokes only some partitions, and what was
    /// finished in them must not be redone by their next owner).
    commit_on_revoke: bool,
}

/// The consumer group members of this process, by name, as `/status` shows them (so
/// operators and tests see assignments without reading logs).
#[derive(Debug, Clone, Default)]
pub struct GroupBoard(Arc<Mutex<BTreeMap<String, Member>>>);

/// One member's state.
#[derive(Debug, Clone)]
struct Member {
    /// Which context owns the entry (a restarted lane's new one replaces it).
    generation: u64,
    /// Rebalance events seen (assignments and revocations).
    rebalances: u64,
    last_assigned: bool,
    last_at: chrono::DateTime<chrono::Utc>,
    partitions: BTreeSet<(String, i32)>,
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

impl GroupBoard {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Member>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `{"<member>": {"partitions": ["topic/0", ..], "last_rebalance": "assigned" |
    /// "revoked" | "none", "last_rebalance_at", "rebalances"}}`.
    pub fn status_json(&self) -> serde_json::Value {
        let members = self.lock();
        let shown = members.iter().map(|(name, m)| {
            let partitions: Vec<String> = m
                .partitions
                .iter()
                .map(|(t, p)| format!("{t}/{p}"))
                .collect();
            let last = match (m.rebalances, m.last_assigned) {
                (0, _) => "none",
                (_, true) => "assigned",
                (_, false) => "revoked",
            };
            let state = serde_json::json!({
                "partitions": partitions,
                "last_rebalance": last,
                "last_rebalance_at": (m.rebalances > 0)
                    .then(|| m.last_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                "rebalances": m.rebalances,
            });
            (name.clone(), state)
        });
        serde_json::Value::Object(shown.collect())
    }

    fn join(&self, name: &str) -> u64 {
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let member = Member {
            generation,
            rebalances: 0,
            last_assigned: false,
            last_at: chrono::Utc::now(),
            partitions: BTreeSet::new(),
        };
        self.lock().insert(name.to_string(), member);
        generation
    }

    fn rebalanced(
        &self,
        name: &str,
        generation: u64,
        partitions: &[(String, i32)],
        assigned: bool,
    ) {
        let mut members = self.lock();
        let Some(m) = members.get_mut(name).filter(|m| m.generation == generation) else {
            return;
        };
        m.rebalances += 1;
        m.last_assigned = assigned;
        m.last_at = chrono::Utc::now();
        for tp in partitions {
            if assigned {
                m.partitions.insert(tp.clone());
            } else {
                m.partitions.remove(tp);
            }
        }
    }

    fn leave(&self, name: &str, generation: u64) {
        let mut members = self.lock();
        if members
            .get(name)
            .is_some_and(|m| m.generation == generation)
        {
            members.remove(name);
        }
    }
}

/// A partition (topic, partition) that a rebalance took away or gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    Revoked(String, i32),
    Assigned(String, i32),
}

impl GroupContext {
    pub fn new(name: &str, topic: &str) -> Self {
        Self {
            name: name.to_string(),
            // (The lanes' shared consumer names no topic here: it watches one per
            // partner, `watch_lag`.)
            lag_of: Mutex::new(
                (!topic.is_empty())
                    .then(|| (topic.to_string(), None))
                    .into_iter()
                    .collect(),
            ),
            changes: Mutex::default(),
            assigned: Default::default(),
            noted: Default::default(),
            changed: Default::default(),
            board: None,
            commit_on_revoke: false,
        }
    }

    /// Shows this member on `board` until it is dropped.
    pub fn on_board(mut self, board: &GroupBoard) -> Self {
        let generation = board.join(&self.name);
        self.board = Some((board.clone(), generation));
        self
    }

    /// Commits the stored offsets before partitions are revoked.
    pub fn commit_on_revoke(mut self) -> Self {
        self.commit_on_revoke = true;
        self
    }

    /// Publishes the consumer lag of `topic` too, and tells it to a partner's health.
    pub fn watch_lag(&self, topic: &str, health: Option<Arc<crate::health::PartnerHealth>>) {
        self.lag_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_string(), health);
    }

    /// Stops publishing the consumer lag of `topic`.
    pub fn unwatch_lag(&self, topic: &str) {
        self.lag_of
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
    }

    /// Resolves once a rebalance changed something since the last [`Self::take_changes`]
    /// may have missed it (a permit is kept when nobody waits).
    pub fn changed(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.changed)
    }

    /// Whether partitions were assigned since the last call.
    pub fn take_assigned(&self) -> bool {
        self.assigned
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// What rebalances changed since the last call, oldest first.
    ///
    /// Call it before taking in each polled record: one poll of the stream can serve a
    /// rebalance, and the next poll, still inside the same `select!`, can already return
    /// a record of a partition it assigned.
    pub fn take_changes(&self) -> Vec<GroupChange> {
        // Called before each record the intake hands on: an atomic, not the lock, when
        // nothing changed (`note` sets it after adding its changes).
        if !self.noted.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn note(&self, list: &TopicPartitionList, assigned: bool) -> Vec<(String, i32)> {
        let change = if assigned {
            GroupChange::Assigned
        } else {
            GroupChange::Revoked
        };
        let partitions: Vec<(String, i32)> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(partitions.iter().cloned().map(|(t, p)| change(t, p)));
        if let Some((board, generation)) = &self.board {
            board.rebalanced(&self.name, *generation, &partitions, assigned);
        }
        self.noted.store(true, Ordering::Release);
        self.changed.notify_one();
        partitions
    }
}

impl Drop for GroupContext {
    fn drop(&mut self) {
        if let Some((board, generation)) = &self.board {
            board.leave(&self.name, *generation);
        }
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let watched = self.lag_of.lock().unwrap_or_else(|p| p.into_inner());
        for (name, topic) in &statistics.topics {
            let Some(health) = watched.get(name) else {
                continue;
            };
            let known: Vec<i64> = topic
                .partitions
                .values()
                .filter_map(partition_lag)
                .collect();
            if known.is_empty() {
                continue;
            }
            let lag: i64 = known.iter().sum();
            if let Some(h) = health {
                h.lag.store(lag, std::sync::atomic::Ordering::Relaxed);
            }
            metrics::gauge!(crate::metrics::CONSUMER_LAG, "topic" => name.clone()).set(lag as f64);
        }
    }
}

/// A partition's consumer lag from librdkafka's statistics: the records after the
/// group's committed offset, `None` when not known.
///
/// librdkafka reports -1 for a partition the group never committed: such a partition is
/// counted from its low watermark (where `auto.offset.reset=earliest` starts), once its
/// fetcher runs (`active`: the committed offset was looked up and there is none).
/// Leaving it out, as before, made a partition stuck on its very first record look
/// caught up.
fn partition_lag(p: &rdkafka::statistics::Partition) -> Option<i64> {
    // Partition -1 is librdkafka's internal one.
    if p.partition < 0 {
        return None;
    }
    if p.consumer_lag >= 0 {
        return Some(p.consumer_lag);
    }
    let never_committed =
        p.desired && p.fetch_state == "active" && p.committed_offset < 0 && p.hi_offset >= 0;
    never_committed.then(|| p.hi_offset - p.lo_offset.max(0))
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            if self.commit_on_revoke {
                use rdkafka::consumer::{CommitMode, Consumer};
                if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                    tracing::debug!(consumer = %self.name, %error, "commit before revoke");
                }
            }
            let partitions = self.note(list, false);
            tracing::info!(consumer = %self.name, ?partitions, "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = self.note(list, true);
                tracing::info!(consumer = %self.name, ?partitions, "partitions assigned");
                self.assigned
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Rebalance::Error(error) => {
                tracing::warn!(consumer = %self.name, %error, "rebalance failed")
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELIVERIES: &str = "deliveries.p";

    #[test]
    fn a_partition_never_committed_lags_by_all_its_records() {
        let stats = |committed: i64, lag: i64, state: &str| rdkafka::statistics::Partition {
            partition: 1,
            desired: true,
            fetch_state: state.into(),
            lo_offset: 2,
            hi_offset: 12,
            committed_offset: committed,
            consumer_lag: lag,
            ..Default::default()
        };
        assert_eq!(partition_lag(&stats(7, 5, "active")), Some(5));
        assert_eq!(partition_lag(&stats(-1001, -1, "active")), Some(10));
        // Before its committed offset is known, or not ours: not known.
        assert_eq!(partition_lag(&stats(-1001, -1, "offset-query")), None);
        let not_assigned = rdkafka::statistics::Partition {
            desired: false,
            ..stats(-1001, -1, "none")
        };
        assert_eq!(partition_lag(&not_assigned), None);
    }

    #[test]
    fn the_group_context_keeps_the_rebalances_in_their_order() {
        let ctx = GroupContext::new("lane p", DELIVERIES);
        let mut list = TopicPartitionList::new();
        list.add_partition(DELIVERIES, 1);
        ctx.note(&list, false);
        ctx.note(&list, true);
        assert_eq!(
            ctx.take_changes(),
            vec![
                GroupChange::Revoked(DELIVERIES.into(), 1),
                GroupChange::Assigned(DELIVERIES.into(), 1)
            ]
        );
        assert!(ctx.take_changes().is_empty(), "taken once");
    }

    #[test]
    fn the_board_shows_each_members_partitions_and_last_rebalance() {
        let board = GroupBoard::default();
        let old = GroupContext::new("lane p", DELIVERIES).on_board(&board);
        let mut list = TopicPartitionList::new();
        list.add_partition(DELIVERIES, 0);
        list.add_partition(DELIVERIES, 1);
        old.note(&list, true);
        let json = board.status_json();
        assert_eq!(json["lane p"]["last_rebalance"], "assigned");
        assert_eq!(
            json["lane p"]["partitions"],
            serde_json::json!([format!("{DELIVERIES}/0"), format!("{DELIVERIES}/1")])
        );
        let mut one = TopicPartitionList::new();
        one.add_partition(DELIVERIES, 1);
        old.note(&one, false);
        let json = board.status_json();
        assert_eq!(json["lane p"]["last_rebalance"], "revoked");
        assert_eq!(json["lane p"]["rebalances"], 2);
        assert_eq!(
            json["lane p"]["partitions"],
            serde_json::json!([format!("{DELIVERIES}/0")])
        );
        // A restarted lane's member replaces the entry; the old one leaving does not
        // remove it.
        let new = GroupContext::new("lane p", DELIVERIES).on_board(&board);
        drop(old);
        assert_eq!(board.status_json()["lane p"]["last_rebalance"], "none");
        drop(new);
        assert_eq!(board.status_json(), serde_json::json!({}));
    }
}
