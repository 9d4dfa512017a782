//! Writing subscriptions without undoing another writer's change (#22): catching up
//! with the partition that holds a subscription, one writer at a time per process, own
//! writes applied at once, and a change merged field by field onto the latest version.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::SubscriptionTable;
use crate::subscriptions::Subscription;

impl SubscriptionTable {
    /// Waits (at most `timeout`) until the version of subscription `id` in force here
    /// is the latest the topic holds: the follower has applied its partition up to the
    /// end it has now, or what it has not applied yet are own writes (applied here when
    /// written). A writer decides on that version, so it does not write back a copy a
    /// moment old over another writer's change (the dispatcher's 410 disable and
    /// automatic disconnect, the API's changes). Returns at once for an id never seen
    /// or a table that follows no topic. One ListOffsets of one partition; a wait only
    /// when another process wrote to that partition within the last fetch wait (50 ms).
    pub async fn catch_up(&self, id: &str, timeout: Duration) -> anyhow::Result<()> {
        let Some(follower) = self.follower.clone() else {
            return Ok(());
        };
        let Some(partition) = self.partition_of(id).or(match follower.partitions[..] {
            [only] => Some(only),
            _ => None,
        }) else {
            return Ok(());
        };
        let mut progress = self.progress.subscribe();
        let caught_up = async {
            let end = tokio::task::spawn_blocking(move || {
                follower
                    .ends
                    .fetch_watermarks(&follower.topic, partition, Duration::from_secs(5))
            })
            .await??
            .1;
            loop {
                progress.borrow_and_update();
                if self
                    .positions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .applied(partition, end)
                {
                    return Ok(());
                }
                let ended = self
                    .follower
                    .as_ref()
                    .is_some_and(|f| f.ended.load(std::sync::atomic::Ordering::SeqCst));
                if ended || progress.changed().await.is_err() {
                    anyhow::bail!("the subscriptions table stopped following its topic");
                }
            }
        };
        tokio::time::timeout(timeout, caught_up).await.map_err(|_| {
            anyhow::anyhow!(
                "the subscriptions table did not read partition {partition} to its end within {timeout:?}"
            )
        })?
    }

    fn partition_of(&self, id: &str) -> Option<i32> {
        self.positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .placed
            .get(id)
            .map(|&(p, _)| p)
    }

    /// Writes `value` as subscription `id` (`None`: a tombstone) and applies it here at
    /// once, so the writer reads its own write. Callers hold [`Self::writing`]
    /// ([`WriteLock::write`]).
    async fn write_own(
        &self,
        producer: &FutureProducer,
        topic: &str,
        id: &str,
        value: Option<&Subscription>,
    ) -> anyhow::Result<()> {
        let bytes = value.map(serde_json::to_vec).transpose()?;
        let mut record = FutureRecord::<str, [u8]>::to(topic).key(id);
        if let Some(bytes) = &bytes {
            record = record.payload(bytes);
        }
        let delivered = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("writing subscription `{id}`: {e}"))?;
        let (partition, offset) = (delivered.partition, delivered.offset);
        let mut at = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        // The follower may have read it (or a later record) already.
        let read = at
            .placed
            .get(id)
            .is_some_and(|&(p, o)| p == partition && o >= offset);
        if !read {
            match value {
                Some(s) => self.upsert(s.clone()),
                None => self.remove(id),
            }
            at.placed.insert(id.to_string(), (partition, offset));
            if at.next.get(&partition).is_none_or(|&next| next <= offset) {
                at.own.entry(partition).or_default().insert(offset);
            }
        }
        Ok(())
    }

    /// The right to write subscriptions from this process, one writer at a time (at
    /// most `timeout` to get it): a writer catches up ([`WriteLock::catch_up`]), decides
    /// on the latest version, and writes ([`WriteLock::write`]) before another writer
    /// of this process reads.
    pub async fn write_lock(&self, timeout: Duration) -> anyhow::Result<WriteLock<'_>> {
        let guard = tokio::time::timeout(timeout, self.writing.lock())
            .await
            .map_err(|_| {
                anyhow::anyhow!("another subscription write took longer than {timeout:?}")
            })?;
        Ok(WriteLock {
            table: self,
            _guard: guard,
            timeout,
        })
    }
}

/// One writer of subscriptions at a time in this process ([`SubscriptionTable::write_lock`]).
pub struct WriteLock<'t> {
    table: &'t SubscriptionTable,
    _guard: tokio::sync::MutexGuard<'t, ()>,
    timeout: Duration,
}

impl std::fmt::Debug for WriteLock<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteLock")
    }
}

impl WriteLock<'_> {
    /// [`SubscriptionTable::catch_up`] within the lock's timeout; then the table's
    /// version of `id` is the latest.
    pub async fn catch_up(&self, id: &str) -> anyhow::Result<Option<Arc<Subscription>>> {
        self.table.catch_up(id, self.timeout).await?;
        Ok(self.table.get(id))
    }

    /// Writes `value` as subscription `id` (`None`: deletes it), applied here at once.
    pub async fn write(
        &self,
        producer: &FutureProducer,
        topic: &str,
        id: &str,
        value: Option<&Subscription>,
    ) -> anyhow::Result<()> {
        self.table.write_own(producer, topic, id, value).await
    }
}

/// `latest` with the fields that `ours` changes from `base`, and the fields `named`
/// (those a request sets, even to the value `base` had: a reconnect decided on a copy
/// from before an automatic disconnect still reconnects). Each top-level field of the
/// record is one unit: a URL, the event types, the secrets, the disconnect mark.
pub fn merge(
    latest: &Subscription,
    base: &Subscription,
    ours: &Subscription,
    named: &[&str],
) -> anyhow::Result<Subscription> {
    let fields = |s: &Subscription| -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
        match serde_json::to_value(s)? {
            serde_json::Value::Object(m) => Ok(m),
            _ => anyhow::bail!("a subscription is not a JSON object"),
        }
    };
    let (base, ours, mut merged) = (fields(base)?, fields(ours)?, fields(latest)?);
    let names = base
        .keys()
        .chain(ours.keys())
        .map(String::as_str)
        .chain(named.iter().copied());
    for name in names {
        let changed = base.get(name) != ours.get(name) || named.contains(&name);
        match ours.get(name) {
            Some(o) if changed => {
                merged.insert(name.to_string(), o.clone());
            }
            None if changed => {
                merged.remove(name);
            }
            _ => {}
        }
    }
    Ok(serde_json::from_value(serde_json::Value::Object(merged))?)
}
