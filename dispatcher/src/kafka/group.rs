//! A consumer group member's context, shared by the router and the lanes: it logs
//! rebalances and notes what they changed for the consumer's loop (rebalance callbacks
//! run inside poll, where the loop cannot act), and publishes the consumer lag of its
//! topic from librdkafka's statistics.

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, TopicPartitionList};

/// Logs rebalances and remembers what they changed for the consumer's loop (rebalance
/// callbacks run inside poll, where the loop cannot act); publishes the consumer lag of
/// `topic` from librdkafka's statistics.
#[derive(Debug, Default)]
pub struct GroupContext {
    pub name: String,
    topic: String,
    /// Partitions revoked and assigned since the last [`GroupContext::take_changes`], in
    /// the order the rebalances happened.
    changes: Mutex<Vec<GroupChange>>,
    /// Set when partitions were assigned (a paused lane must pause them too).
    assigned: std::sync::atomic::AtomicBool,
    /// A lane's partner health, told the lag too.
    health: Option<Arc<crate::health::PartnerHealth>>,
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
            topic: topic.to_string(),
            changes: Mutex::default(),
            assigned: Default::default(),
            health: None,
        }
    }

    /// Also reports the lag to a partner's health.
    pub fn with_health(mut self, health: Arc<crate::health::PartnerHealth>) -> Self {
        self.health = Some(health);
        self
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
        std::mem::take(&mut *self.changes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn note(
        &self,
        list: &TopicPartitionList,
        change: fn(String, i32) -> GroupChange,
    ) -> Vec<(String, i32)> {
        let partitions: Vec<(String, i32)> = list
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        self.changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(partitions.iter().cloned().map(|(t, p)| change(t, p)));
        partitions
    }
}

impl ClientContext for GroupContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        let known: Vec<i64> = topic
            .partitions
            .values()
            .filter_map(partition_lag)
            .collect();
        if known.is_empty() {
            return;
        }
        let lag: i64 = known.iter().sum();
        if let Some(h) = &self.health {
            h.lag.store(lag, std::sync::atomic::Ordering::Relaxed);
        }
        metrics::gauge!(crate::metrics::CONSUMER_LAG, "topic" => self.topic.clone())
            .set(lag as f64);
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
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            let partitions = self.note(list, GroupChange::Revoked);
            tracing::info!(consumer = %self.name, ?partitions, "partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = self.note(list, GroupChange::Assigned);
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
        ctx.note(&list, GroupChange::Revoked);
        ctx.note(&list, GroupChange::Assigned);
        assert_eq!(
            ctx.take_changes(),
            vec![
                GroupChange::Revoked(DELIVERIES.into(), 1),
                GroupChange::Assigned(DELIVERIES.into(), 1)
            ]
        );
        assert!(ctx.take_changes().is_empty(), "taken once");
    }
}
