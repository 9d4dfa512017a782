//! A small state every API instance must agree on, kept in a one-partition topic they
//! all follow: each instance applies every record in topic order to its copy, and a
//! writer waits until it has read its own record back, so what it wrote holds on it
//! from then on (and on the others once they read it, within moments). Two writers
//! racing are ordered by the topic: "the first claim in the topic wins" is decided the
//! same way everywhere. Used by the console's ledger and the partners' second factors.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::KafkaSettings;

/// A state built from a journal's records.
pub trait Journaled: Default + Send + 'static {
    type Entry: Serialize + DeserializeOwned;
    /// What the journal is, for errors and the log (`the console ledger`).
    const WHAT: &'static str;
    fn apply(&mut self, entry: Self::Entry);
    /// Forgets what expired before `now` (Unix ms); called now and then.
    fn prune(&mut self, _now_ms: i64) {}
}

/// One instance's copy of a journal, kept up to date by a follower task, and a writer.
pub struct Journal<S> {
    topic: String,
    state: Arc<Mutex<S>>,
    /// The next offset the follower will read.
    applied: watch::Receiver<i64>,
    producer: FutureProducer,
}

impl<S> Clone for Journal<S> {
    fn clone(&self) -> Self {
        Self {
            topic: self.topic.clone(),
            state: Arc::clone(&self.state),
            applied: self.applied.clone(),
            producer: self.producer.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Journal<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<S: Journaled> Journal<S> {
    /// Makes the topic if missing (one partition, with `config`), starts following it
    /// from its oldest record, and returns once everything in it when called was read.
    pub async fn start(
        settings: &KafkaSettings,
        topic: &str,
        config: &[(&str, &str)],
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        settings
            .ensure_topics(&[topic.to_string()], 1, config)
            .await?;
        let consumer: StreamConsumer = settings.reader().create()?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let (low, high) = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))
        })?;
        let state = Arc::new(Mutex::new(S::default()));
        // From the oldest record kept: a topic that retention emptied (low == high)
        // has nothing to read before serving.
        let (tx, applied) = watch::channel(low);
        let follow_state = Arc::clone(&state);
        let follow_topic = topic.to_string();
        super::follow(consumer, follow_topic.clone(), stop, move |m| {
            let entry = m
                .payload()
                .and_then(|p| serde_json::from_slice::<S::Entry>(p).ok());
            let mut state = follow_state.lock().unwrap_or_else(|p| p.into_inner());
            match entry {
                Some(entry) => state.apply(entry),
                None => {
                    tracing::warn!(topic = %follow_topic, offset = m.offset(), "a record of {} that is not one: skipped", S::WHAT)
                }
            }
            // (Now and then: catching up on a long topic stays linear.)
            if m.offset() % 256 == 0 {
                state.prune(chrono::Utc::now().timestamp_millis());
            }
            drop(state);
            tx.send_replace(m.offset() + 1);
        });
        let journal = Self {
            topic: topic.to_string(),
            state,
            applied,
            producer: settings.producer().create()?,
        };
        journal.wait_applied(high).await?;
        Ok(journal)
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Writes `entry` under `key` and waits until this instance has read it back.
    pub async fn write(&self, key: &str, entry: &S::Entry) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(entry)?;
        let delivery = self
            .producer
            .send(
                FutureRecord::to(&self.topic).key(key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("{} refused a record: {e}", S::WHAT))?;
        self.wait_applied(delivery.offset + 1).await
    }

    async fn wait_applied(&self, next: i64) -> anyhow::Result<()> {
        let mut applied = self.applied.clone();
        tokio::time::timeout(Duration::from_secs(10), applied.wait_for(|a| *a >= next))
            .await
            .map_err(|_| anyhow::anyhow!("{} was not read back within 10 s", S::WHAT))?
            .map_err(|_| anyhow::anyhow!("the reader of {} stopped", S::WHAT))?;
        Ok(())
    }
}
