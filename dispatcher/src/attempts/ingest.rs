//! Fills a [`LogView`] from the log topic: a reader assigned to every partition at the
//! view's stored positions (the beginning for a partition it never read), batches of
//! up to 1,000 records or 100 ms written in one transaction each, and retention applied
//! every minute.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::view::LogView;
use super::Entry;
use crate::kafka::KafkaSettings;
use crate::metrics as m;

/// How long the view keeps records, and how large it may grow.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::from_secs(7 * 86_400),
            max_bytes: 10 << 30,
        }
    }
}

/// Reads `topic` into `view` until `stop`; errors only when the topic cannot be read at
/// all (no such topic).
pub async fn follow(
    settings: KafkaSettings,
    topic: String,
    view: Arc<Mutex<LogView>>,
    retention: Retention,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = settings.reader().create()?;
    let partitions = crate::kafka::partitions_of(&consumer, &topic, "delivery log topic")?;
    let stored = lock(&view).positions()?;
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(&topic, *p, Duration::from_secs(10))?;
        let at = match stored.iter().find(|(sp, _)| sp == p) {
            None => Offset::Beginning,
            Some(&(_, next)) if (low..=high).contains(&next) => Offset::Offset(next),
            // The view was down past the topic's retention, or the topic was made
            // again: what it can still read, from the oldest (a reader whose position
            // is gone would never move again).
            Some(&(_, next)) => {
                tracing::warn!(%topic, partition = p, next, low, high, "delivery log view: stored position is not in the topic any more; reading from the oldest record kept");
                Offset::Beginning
            }
        };
        assignment.add_partition_offset(&topic, *p, at)?;
    }
    consumer.assign(&assignment)?;
    tracing::info!(%topic, partitions = partitions.len(), "delivery log view following");
    let mut stream = consumer.stream();
    let mut expiry = tokio::time::interval(Duration::from_secs(60));
    // What the view holds and how far it lags the topic, every 10 s.
    let mut sample = tokio::time::interval(Duration::from_secs(10));
    let ends: rdkafka::consumer::BaseConsumer = settings.reader().create()?;
    let ends = Arc::new(ends);
    let mut batch: Vec<(i32, i64, Option<Entry>)> = Vec::new();
    loop {
        let deadline = tokio::time::sleep(Duration::from_millis(100));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = &mut deadline => break,
                _ = expiry.tick() => {
                    let view = Arc::clone(&view);
                    let before = chrono::Utc::now()
                        - chrono::Duration::from_std(retention.max_age).unwrap_or_default();
                    let removed = tokio::task::spawn_blocking(move || {
                        lock(&view).expire(before, retention.max_bytes)
                    })
                    .await?;
                    match removed {
                        Ok(n) if n > 0 => tracing::info!(removed = n, "delivery log view: old records removed"),
                        Ok(_) => {}
                        Err(error) => tracing::warn!(%error, "delivery log view: retention"),
                    }
                }
                _ = sample.tick() => {
                    let (view, ends, topic, partitions) =
                        (Arc::clone(&view), Arc::clone(&ends), topic.clone(), partitions.clone());
                    let sampled = tokio::task::spawn_blocking(move || -> anyhow::Result<(u64, u64, i64)> {
                        let (held, positions) = {
                            let v = lock(&view);
                            (v.counts()?, v.positions()?)
                        };
                        let mut lag = 0;
                        for p in partitions {
                            let (_, high) = ends.fetch_watermarks(&topic, p, Duration::from_secs(5))?;
                            let next = positions.iter().find(|(sp, _)| *sp == p).map_or(0, |(_, o)| *o);
                            lag += (high - next).max(0);
                        }
                        Ok((held.0, held.1, lag))
                    })
                    .await?;
                    match sampled {
                        Ok((records, messages, lag)) => {
                            metrics::gauge!(m::LOG_VIEW_RECORDS).set(records as f64);
                            metrics::gauge!(m::LOG_VIEW_MESSAGES).set(messages as f64);
                            metrics::gauge!(m::LOG_VIEW_LAG).set(lag as f64);
                        }
                        Err(error) => tracing::warn!(%error, "delivery log view: measuring"),
                    }
                }
                message = stream.next() => match message {
                    Some(Ok(message)) => {
                        let record = message.payload().and_then(|p| {
                            Entry::parse(p)
                                .inspect_err(|e| {
                                    tracing::warn!(partition = message.partition(), offset = message.offset(), error = %e, "delivery log record skipped");
                                    metrics::counter!(m::LOG_VIEW_SKIPPED).increment(1);
                                })
                                .ok()
                        });
                        batch.push((message.partition(), message.offset(), record));
                        if batch.len() >= 1_000 {
                            break;
                        }
                    }
                    Some(Err(error)) => tracing::warn!(%error, "reading the delivery log"),
                    None => return Ok(()),
                },
            }
        }
        if batch.is_empty() {
            continue;
        }
        let done = Arc::new(std::mem::take(&mut batch));
        // A batch that cannot be stored (a full disk) is tried again, not dropped and
        // not skipped: the view stays behind (the lag shows it) until it can.
        loop {
            let (view, stored) = (Arc::clone(&view), Arc::clone(&done));
            let applied = tokio::task::spawn_blocking(move || lock(&view).apply(&stored)).await?;
            match applied {
                Ok(()) => break,
                Err(error) => {
                    tracing::error!(%error, "delivery log view: cannot store a batch; trying again");
                    metrics::counter!(m::LOG_VIEW_ERRORS).increment(1);
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
            }
        }
    }
}

fn lock(view: &Mutex<LogView>) -> std::sync::MutexGuard<'_, LogView> {
    view.lock().unwrap_or_else(|p| p.into_inner())
}
