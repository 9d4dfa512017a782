//! The typed publisher: validate, encode through the registry, enqueue with the order id
//! as key, and await Kafka's acknowledgement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use order_schemas::{CodecError, InvalidEvent, OrderCodec, OrderEvent};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::Message;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use crate::metrics as m;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// The orders topic; it must exist.
    pub topic: String,
    /// Schema Registry base URL.
    pub registry_url: String,
    /// How long Kafka may take to acknowledge an event before it counts as failed
    /// (librdkafka `message.timeout.ms`). Default 30 s.
    pub delivery_timeout: Duration,
    /// How long start-up waits for broker metadata and registry answers. Default 10 s.
    pub connect_timeout: Duration,
    /// Events enqueued but not yet acknowledged, at most. Past it callers wait.
    /// Default 10,000 (librdkafka's own queue holds 100,000).
    pub max_in_flight: usize,
    /// Extra librdkafka settings (`linger.ms`, `compression.type`, security ...).
    pub kafka_options: Vec<(String, String)>,
}

impl PublisherConfig {
    pub fn new(brokers: &str, topic: &str, registry_url: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            registry_url: registry_url.to_string(),
            delivery_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_in_flight: 10_000,
            kafka_options: Vec::new(),
        }
    }
}

/// Where Kafka wrote an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    pub event_id: Uuid,
    pub partition: i32,
    pub offset: i64,
}

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event itself is wrong; retrying will not help.
    #[error("invalid event: {0}")]
    Invalid(#[from] InvalidEvent),
    /// Encoding failed; [`CodecError::is_retryable`] tells whether the registry was down.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// Kafka did not acknowledge the event (timeout, broker down ...): it may or may not
    /// have been written; publishing it again with the same event id is safe.
    #[error("Kafka did not acknowledge event {event_id}: {error}")]
    Delivery { event_id: Uuid, error: KafkaError },
    /// Start-up could not reach the brokers or found no such topic.
    #[error("{0}")]
    Connect(String),
}

impl PublishError {
    /// True when the same event may be published successfully later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Invalid(_) => false,
            Self::Codec(e) => e.is_retryable(),
            Self::Delivery { .. } | Self::Connect(_) => true,
        }
    }

    /// A bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Codec(e) if e.is_retryable() => "registry_unavailable",
            Self::Codec(_) => "registry_refused",
            Self::Delivery { .. } => "kafka",
            Self::Connect(_) => "connect",
        }
    }
}

/// What travels with a record through librdkafka, handed back in the delivery callback.
/// Dropping it there releases the in-flight permit, whether or not anyone awaits the
/// outcome, so a caller that enqueues more than the cap before waiting cannot deadlock.
struct InFlight {
    outcome: oneshot::Sender<Result<(i32, i64), KafkaError>>,
    event_type: &'static str,
    started: Instant,
    _permit: OwnedSemaphorePermit,
}

/// Delivery reports: release the permit, record metrics, pass the outcome on.
struct DeliveryContext;

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<InFlight>;

    fn delivery(&self, result: &DeliveryResult<'_>, in_flight: Box<InFlight>) {
        metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
        let outcome = match result {
            Ok(message) => {
                metrics::counter!(m::PUBLISHED, "event_type" => in_flight.event_type).increment(1);
                metrics::histogram!(m::LATENCY).record(in_flight.started.elapsed().as_secs_f64());
                Ok((message.partition(), message.offset()))
            }
            Err((error, _)) => {
                metrics::counter!(m::FAILED, "reason" => "kafka").increment(1);
                Err(error.clone())
            }
        };
        let InFlight { outcome: tx, .. } = *in_flight;
        let _ = tx.send(outcome);
    }
}

/// Publishes order events to one topic.
pub struct Publisher {
    producer: Arc<ThreadedProducer<DeliveryContext>>,
    codec: OrderCodec,
    topic: String,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// An event Kafka has accepted into its queue; [`PendingDelivery::wait`] gives the outcome.
/// Dropping it does not cancel the delivery.
#[derive(Debug)]
pub struct PendingDelivery {
    outcome: oneshot::Receiver<Result<(i32, i64), KafkaError>>,
    event_id: Uuid,
}

impl PendingDelivery {
    pub fn event_id(&self) -> Uuid {
        self.event_id
    }

    /// Waits for Kafka's acknowledgement.
    pub async fn wait(self) -> Result<Published, PublishError> {
        let event_id = self.event_id;
        match self.outcome.await {
            Ok(Ok((partition, offset))) => Ok(Published {
                event_id,
                partition,
                offset,
            }),
            Ok(Err(error)) => Err(PublishError::Delivery { event_id, error }),
            Err(_) => Err(PublishError::Delivery {
                event_id,
                error: KafkaError::Canceled,
            }),
        }
    }
}

impl Publisher {
    /// Creates the idempotent producer, checks that the brokers answer and the topic
    /// exists, and registers the event schemas, so a bad setting stops start-up here.
    pub async fn connect(config: &PublisherConfig) -> Result<Self, PublishError> {
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // A typo in the topic name must fail start-up, not create a new topic.
            .set("allow.auto.create.topics", "false")
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            )
            .set("client.id", "orderhooks-producer");
        for (k, v) in &config.kafka_options {
            client.set(k, v);
        }
        let producer: ThreadedProducer<DeliveryContext> = client
            .create_with_context(DeliveryContext)
            .map_err(|e| PublishError::Connect(format!("invalid Kafka settings: {e}")))?;
        let producer = Arc::new(producer);
        check_topic(&producer, config).await?;
        let codec = OrderCodec::new(&config.registry_url, &config.topic, config.connect_timeout)?;
        codec.register_all().await?;
        Ok(Self {
            producer,
            codec,
            topic: config.topic.clone(),
            permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Validates, encodes and enqueues `event`, waiting for room when the in-flight cap
    /// is reached. Calls made one after another are written in that order.
    pub async fn enqueue(
        &self,
        event: &OrderEvent,
        traceparent: Option<&str>,
    ) -> Result<PendingDelivery, PublishError> {
        let fail = |e: PublishError| {
            metrics::counter!(m::FAILED, "reason" => e.reason()).increment(1);
            e
        };
        event.validate().map_err(|e| fail(e.into()))?;
        let started = Instant::now();
        let payload = self.codec.encode(event).await.map_err(|e| fail(e.into()))?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| fail(PublishError::Connect("publisher is closed".into())))?;
        let event_id = event.event_id().to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "event-type",
                value: Some(event.event_type().name()),
            })
            .insert(Header {
                key: "event-id",
                value: Some(event_id.as_str()),
            });
        if let Some(tp) = traceparent {
            headers = headers.insert(Header {
                key: "traceparent",
                value: Some(tp),
            });
        }
        let (tx, rx) = oneshot::channel();
        let in_flight = Box::new(InFlight {
            outcome: tx,
            event_type: event.event_type().name(),
            started,
            _permit: permit,
        });
        let mut record = BaseRecord::with_opaque_to(&self.topic, in_flight)
            .key(event.order_id())
            .payload(&payload)
            .headers(headers);
        metrics::gauge!(m::IN_FLIGHT).increment(1.0);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The permit cap sits below librdkafka's queue size, so this only
                    // happens when queue.buffering.max.kbytes is the tighter limit.
                    record = back;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => {
                    metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
                    return Err(fail(PublishError::Delivery {
                        event_id: event.event_id(),
                        error,
                    }));
                }
            }
        }
        Ok(PendingDelivery {
            outcome: rx,
            event_id: event.event_id(),
        })
    }

    /// Publishes `event` and waits for Kafka's acknowledgement.
    pub async fn publish(&self, event: &OrderEvent) -> Result<Published, PublishError> {
        self.enqueue(event, None).await?.wait().await
    }

    /// Waits until every enqueued event is acknowledged or failed.
    pub async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let producer = Arc::clone(&self.producer);
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| PublishError::Connect(e.to_string()))?
            .map_err(|e| PublishError::Connect(format!("flush: {e}")))
    }
}

/// Fails with a message naming the brokers or the topic when either is not usable.
async fn check_topic(
    producer: &Arc<ThreadedProducer<DeliveryContext>>,
    config: &PublisherConfig,
) -> Result<(), PublishError> {
    let (producer, topic, timeout) = (
        Arc::clone(producer),
        config.topic.clone(),
        config.connect_timeout,
    );
    let metadata = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), Timeout::After(timeout))
    })
    .await
    .map_err(|e| PublishError::Connect(e.to_string()))?
    .map_err(|e| {
        PublishError::Connect(format!(
            "cannot reach Kafka at {} within {timeout:?}: {e}",
            config.brokers
        ))
    })?;
    match metadata.topics().iter().find(|t| t.name() == config.topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        _ => Err(PublishError::Connect(format!(
            "topic `{}` does not exist on {} (create it first: scripts/stack.sh up does)",
            config.topic, config.brokers
        ))),
    }
}
