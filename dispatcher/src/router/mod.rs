//! Stage 1, the router: orders topic in, one record per (event, matching subscription)
//! out to that partner's delivery topic (key = order id, idempotent producer, enqueued in
//! the orders partition's order). An orders offset is stored only when every record it
//! produced is acknowledged, and only for the contiguous prefix of such offsets.
//!
//! A record that cannot be decoded (bad framing, unknown schema id, truncated body, not
//! an order event) goes to the router's dead-letter topic with the reason, and routing
//! goes on. An unreachable registry, or one that refuses us (401, 403) or sheds load
//! (408, 429), pauses routing (retried with backoff): good data is never dead-lettered
//! for it. A schema id the registry does not know is asked again for
//! `unknown_schema_wait` after it was first seen unknown (a follower may lag a
//! registration) before its records count as undecodable; no answer is cached, so a
//! record with that id decodes as soon as the registry knows it.

use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use order_schemas::{CodecError, OrderCodec, OrderEvent};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message;
use tokio_util::sync::CancellationToken;

use crate::kafka::group::GroupContext;
use crate::kafka::headers;
use crate::kafka::offsets::OffsetTracker;
use crate::kafka::KafkaSettings;
use crate::metrics as m;

use crate::subscriptions::delivery_topic;
use crate::subscriptions::table::SubscriptionTable;

mod filters;
mod unknown_ids;

pub use filters::{filtered, write_tallies};
pub use unknown_ids::UnknownIds;

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub orders_topic: String,
    /// Consumer group of the routers of all instances.
    pub group: String,
    /// Where undecodable orders records go.
    pub dead_letter_topic: String,
    /// Orders records taken in and not yet finished, at most. Default 1,000.
    pub max_in_flight: usize,
    /// How long shutdown waits for records in flight. Default 10 s.
    pub shutdown_deadline: Duration,
    /// How long a schema id the registry does not know is asked again (routing waits)
    /// before its records are dead-lettered. Default 20 s.
    pub unknown_schema_wait: Duration,
    /// Where the router's group member shows its state (`/status`).
    pub groups: crate::kafka::group::GroupBoard,
}

/// The webhook body partners receive: `{"type", "timestamp", "data"}`.
pub fn webhook_body(event: &OrderEvent) -> Vec<u8> {
    let mut data = event.to_json();
    if let Some(fields) = data.as_object_mut() {
        fields.remove("type");
    }
    let body = serde_json::json!({
        "type": event.event_type().name(),
        "timestamp": event.occurred_at().to_rfc3339(),
        "data": data,
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

fn header<'a>(message: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    message
        .headers()
        .and_then(|h| h.iter().find(|x| x.key == name).and_then(|x| x.value))
}

/// An owned record to produce, kept so a failed send can be retried.
struct Outgoing {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: OwnedHeaders,
}

impl Outgoing {
    fn record(&self) -> FutureRecord<'_, [u8], Vec<u8>> {
        let mut r = FutureRecord::to(&self.topic)
            .payload(&self.payload)
            .headers(self.headers.clone());
        if let Some(k) = &self.key {
            r = r.key(k.as_slice());
        }
        r
    }
}

/// Enqueues `records` now, in order (so records of one orders partition keep their
/// order in the delivery topics), and returns a future that waits until every one is
/// acknowledged, re-sending a failed one until it is written or shutdown; the future
/// gives `None` when shutdown came first.
fn produce_all(
    producer: &FutureProducer,
    records: Vec<Outgoing>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = Option<()>> + use<> {
    let mut deliveries = Vec::with_capacity(records.len());
    for r in &records {
        // With message.timeout.ms=0 librdkafka retries on its own; an enqueue error here
        // (queue full, unknown partition) is handled like a failed delivery below.
        deliveries.push(producer.send_result(r.record()).map_err(|(e, _)| e));
    }
    let producer = producer.clone();
    async move {
        for (r, delivery) in records.iter().zip(deliveries) {
            let mut result = match delivery {
                Ok(f) => f.await.ok()?.map(|_| ()).map_err(|(e, _)| e),
                Err(e) => Err(e),
            };
            while let Err(error) = result {
                tracing::warn!(topic = %r.topic, %error, "delivery record not written, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                result = producer
                    .send(r.record(), Timeout::Never)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e);
            }
        }
        Some(())
    }
}

/// Runs the router until `shutdown`, then finishes what it can within the deadline and
/// commits.
pub async fn run(
    settings: KafkaSettings,
    config: RouterConfig,
    table: SubscriptionTable,
    codec: OrderCodec,
    producer: FutureProducer,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut client = settings.consumer(&config.group);
    client.set("statistics.interval.ms", "5000");
    let consumer: StreamConsumer<GroupContext> =
        settings.staged("router", client).create_with_context(
            GroupContext::new("router", &config.orders_topic).on_board(&config.groups),
        )?;
    consumer.subscribe(&[&config.orders_topic])?;
    let mut tracker = OffsetTracker::default();
    let mut pending = FuturesUnordered::new();
    let topic = config.orders_topic.clone();
    let mut stream = consumer.stream();
    tracing::info!(topic = %topic, group = %config.group, "router started");
    let mut backpressure = crate::kafka::backpressure::Backpressure::new(config.max_in_flight);
    let mut unknown = UnknownIds::default();
    let hop = crate::metrics::hop("orders_to_router");
    loop {
        let assigned = consumer.context().take_assigned();
        let readable = backpressure.update(&consumer, pending.len(), assigned, None, None);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            Some(done) = pending.next(), if !pending.is_empty() => {
                if let Some((partition, offset)) = done {
                    if let Some(next) = tracker.finish(partition, offset) {
                        consumer.store_offset(&topic, partition, next - 1).ok();
                    }
                }
            }
            message = stream.next(), if readable => {
                for change in consumer.context().take_changes() {
                    if let crate::kafka::group::GroupChange::Revoked(_, partition) = change {
                        tracker.forget(partition);
                    }
                }
                let Some(message) = message else { break };
                let message = match message {
                    Ok(m) => m,
                    Err(error) => {
                        tracing::warn!(%error, "consuming orders");
                        continue;
                    }
                };
                crate::metrics::record_age(&hop, message.timestamp());
                let (partition, offset) = (message.partition(), message.offset());
                tracker.begin(partition, offset);
                let Some(records) = route(&message, &codec, &table, &config, &mut unknown, &shutdown).await else { break };
                let acknowledged = produce_all(&producer, records, shutdown.clone());
                pending.push(async move { acknowledged.await.map(|_| (partition, offset)) });
            }
        }
    }
    drop(stream);
    let deadline = tokio::time::sleep(config.shutdown_deadline);
    tokio::pin!(deadline);
    while !pending.is_empty() {
        tokio::select! {
            _ = &mut deadline => break,
            Some(Some((partition, offset))) = pending.next() => {
                if let Some(next) = tracker.finish(partition, offset) {
                    consumer.store_offset(&topic, partition, next - 1).ok();
                }
            }
        }
    }
    if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(%error, "final router commit");
    }
    tracing::info!("router stopped");
    Ok(())
}

/// Decides what one orders record becomes: delivery records, a dead-letter record, or
/// nothing (no subscription wants it). `None` only when shutdown interrupted a registry
/// outage.
async fn route(
    message: &BorrowedMessage<'_>,
    codec: &OrderCodec,
    table: &SubscriptionTable,
    config: &RouterConfig,
    unknown: &mut UnknownIds,
    shutdown: &CancellationToken,
) -> Option<Vec<Outgoing>> {
    let payload = message.payload().unwrap_or_default();
    let mut backoff = Duration::from_millis(200);
    let decoded = loop {
        let pause = match codec.decode(payload).await {
            Err(e) if e.is_retryable() => {
                tracing::warn!(error = %e, partition = message.partition(), offset = message.offset(), "registry unavailable, routing paused");
                Duration::from_secs(10)
            }
            Err(CodecError::UnknownSchemaId(id))
                if unknown.wait_more(id, std::time::Instant::now(), config.unknown_schema_wait) =>
            {
                tracing::warn!(
                    schema_id = id,
                    partition = message.partition(),
                    offset = message.offset(),
                    "schema id not known to the registry yet, asking again"
                );
                Duration::from_secs(2)
            }
            other => {
                if other.is_ok() {
                    unknown.decoded(payload);
                }
                break other;
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(pause);
    };
    let event = match decoded {
        Ok(e) => e,
        Err(reason) => {
            metrics::counter!(m::ROUTED, "outcome" => "dead_lettered").increment(1);
            tracing::warn!(%reason, partition = message.partition(), offset = message.offset(), "undecodable record dead-lettered");
            return Some(vec![router_dead_letter(message, &reason, config)]);
        }
    };
    let mut matched = table.matching(event.event_type().name(), event.partner_id());
    // One stream per partner: were there two (creates racing on two API instances),
    // the first by id (`matching` sorts by id) writes the partner's stream, its filter
    // alone deciding.
    let mut streams = std::collections::HashSet::new();
    matched.retain(|m| {
        let s = &m.subscription;
        m.invalid || !s.is_stream() || streams.insert(s.partner_id.clone())
    });
    if matched.is_empty() {
        metrics::counter!(m::ROUTED, "outcome" => "unmatched").increment(1);
        return Some(Vec::new());
    }
    let subscriptions = filtered(&event, matched);
    if subscriptions.is_empty() {
        metrics::counter!(m::ROUTED, "outcome" => "filtered_out").increment(1);
        return Some(Vec::new());
    }
    metrics::counter!(m::ROUTED, "outcome" => "routed").increment(1);
    let body = webhook_body(&event);
    let (event_id, partition, offset) = (
        event.event_id().to_string(),
        message.partition().to_string(),
        message.offset().to_string(),
    );
    let occurred_at = event.occurred_at().0.to_string();
    Some(
        subscriptions
            .iter()
            .map(|m| {
                let s = &m.subscription;
                let mut headers = OwnedHeaders::new()
                    .insert(Header {
                        key: headers::WEBHOOK_ID,
                        value: Some(event_id.as_str()),
                    })
                    .insert(Header {
                        key: headers::EVENT_TYPE,
                        value: Some(event.event_type().name()),
                    })
                    .insert(Header {
                        key: headers::SUBSCRIPTION_ID,
                        value: Some(s.id.as_str()),
                    })
                    .insert(Header {
                        key: headers::OCCURRED_AT,
                        value: Some(occurred_at.as_str()),
                    })
                    .insert(Header {
                        key: headers::SOURCE_TOPIC,
                        value: Some(config.orders_topic.as_str()),
                    })
                    .insert(Header {
                        key: headers::SOURCE_PARTITION,
                        value: Some(partition.as_str()),
                    })
                    .insert(Header {
                        key: headers::SOURCE_OFFSET,
                        value: Some(offset.as_str()),
                    });
                if let Some(tp) = header(message, headers::TRACEPARENT) {
                    headers = headers.insert(Header {
                        key: headers::TRACEPARENT,
                        value: Some(tp),
                    });
                }
                Outgoing {
                    // (A stream subscription's: the partner's stream topic; an invalid
                    // one's: its lane, to be dead-lettered with why.)
                    topic: if m.invalid {
                        delivery_topic(&s.partner_id)
                    } else {
                        s.topic()
                    },
                    key: Some(event.order_id().as_bytes().to_vec()),
                    payload: body.clone(),
                    headers,
                }
            })
            .collect(),
    )
}

fn router_dead_letter(
    message: &BorrowedMessage<'_>,
    reason: &CodecError,
    config: &RouterConfig,
) -> Outgoing {
    let mut headers = OwnedHeaders::new();
    if let Some(original) = message.headers() {
        for h in original.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let (partition, offset, reason) = (
        message.partition().to_string(),
        message.offset().to_string(),
        reason.to_string(),
    );
    headers = headers
        .insert(Header {
            key: headers::DLQ_REASON,
            value: Some(reason.as_str()),
        })
        .insert(Header {
            key: headers::DLQ_STAGE,
            value: Some("router"),
        })
        .insert(Header {
            key: headers::DLQ_SOURCE_TOPIC,
            value: Some(config.orders_topic.as_str()),
        })
        .insert(Header {
            key: headers::DLQ_SOURCE_PARTITION,
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: headers::DLQ_SOURCE_OFFSET,
            value: Some(offset.as_str()),
        });
    Outgoing {
        topic: config.dead_letter_topic.clone(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers,
    }
}
