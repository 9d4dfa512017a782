//! Encode and decode order events in Confluent wire format through a Schema Registry,
//! with schema_registry_converter (registry calls, caching) and apache-avro (bodies).
//!
//! Encoding registers each event type's schema under `<topic>-<record full name>` on
//! first use and caches the id. Decoding fetches the writer schema by id, then resolves
//! the record into the current schema, so data written with an earlier compatible
//! version reads into today's types. Registry failures are never left in the caches.

use std::sync::Arc;
use std::time::Duration;

use apache_avro::types::Value;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::avro_common::get_supplied_schema;
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use crate::wire::{self, FramingError};
use crate::{EventType, OrderEvent};

/// Why an event could not be encoded or a record decoded. Only
/// [`CodecError::RegistryUnavailable`] is worth retrying at once;
/// [`CodecError::UnknownSchemaId`] is worth retrying for a while (a registry follower
/// may not have the id yet); everything else is about the data and will fail the same
/// way again.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("schema registry unavailable: {0}")]
    RegistryUnavailable(String),
    #[error("schema registry refused the request: {0}")]
    RegistryRefused(String),
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("schema id {0} is not known to the schema registry")]
    UnknownSchemaId(u32),
    #[error("record written with schema id {id} ({name}) is not an order event")]
    NotAnOrderEvent { id: u32, name: String },
    #[error("cannot decode the Avro body written with schema id {id}: {reason}")]
    Undecodable { id: u32, reason: String },
    #[error("event does not fit its Avro schema: {0}")]
    Encode(String),
    #[error("invalid schema registry settings: {0}")]
    Settings(String),
}

impl CodecError {
    /// True when the same call may succeed later (registry down, 5xx, timeout).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::RegistryUnavailable(_))
    }
}

fn describe(e: &SRCError) -> String {
    match &e.cause {
        Some(cause) => format!("{}: {cause}", e.error),
        None => e.error.clone(),
    }
}

/// Maps a converter error on a registry call: connection failures, 5xx, and the
/// answers that say nothing about the data (401 and 403: our credentials; 408 and 429:
/// the registry's load) are retryable; a 404 means the id or subject does not exist
/// (yet: a follower may lag a registration); the rest is a refusal.
fn registry_error(e: &SRCError, id: Option<u32>) -> CodecError {
    let text = describe(e);
    let transient = ["401", "403", "408", "429"]
        .iter()
        .any(|s| text.contains(&format!("with status {s}")));
    if e.retriable
        || transient
        || text.contains("with status 5")
        || text.contains("http call to schema registry failed")
    {
        CodecError::RegistryUnavailable(text)
    } else if let (Some(id), true) = (id, text.contains("status 404")) {
        CodecError::UnknownSchemaId(id)
    } else {
        CodecError::RegistryRefused(text)
    }
}

/// Encoder and decoder of order events for one topic, sharing one registry client.
#[derive(Clone)]
pub struct OrderCodec {
    topic: String,
    encoder: Arc<AvroEncoder<'static>>,
    decoder: Arc<AvroDecoder<'static>>,
    strategies: Arc<[SubjectNameStrategy; 3]>,
    /// Each event type's schema id for this topic, once registered.
    ids: Arc<[OnceCell<u32>; 3]>,
}

impl std::fmt::Debug for OrderCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderCodec")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl OrderCodec {
    /// A codec for records of `topic`, talking to the registry at `registry_url`.
    pub fn new(registry_url: &str, topic: &str, timeout: Duration) -> Result<Self, CodecError> {
        let settings = SrSettings::new_builder(registry_url.trim_end_matches('/').to_string())
            .set_timeout(timeout)
            .build()
            .map_err(|e| CodecError::Settings(describe(&e)))?;
        let strategy = |t: EventType| {
            SubjectNameStrategy::TopicRecordNameStrategyWithSchema(
                topic.to_string(),
                get_supplied_schema(t.schema()),
            )
        };
        Ok(Self {
            topic: topic.to_string(),
            encoder: Arc::new(AvroEncoder::new(settings.clone())),
            decoder: Arc::new(AvroDecoder::new(settings)),
            strategies: Arc::new(EventType::ALL.map(strategy)),
            ids: Arc::new([OnceCell::new(), OnceCell::new(), OnceCell::new()]),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The subject an event type is registered under for this topic.
    pub fn subject(&self, t: EventType) -> String {
        format!("{}-{}", self.topic, t.avro_name())
    }

    fn strategy(&self, t: EventType) -> &SubjectNameStrategy {
        &self.strategies[t as usize]
    }

    /// Registers every event type's schema (or finds it registered) and returns the ids,
    /// so that a bad registry URL or an incompatible schema stops start-up.
    pub async fn register_all(&self) -> Result<Vec<(EventType, u32)>, CodecError> {
        let mut out = Vec::new();
        for t in EventType::ALL {
            out.push((t, self.schema_id(t).await?));
        }
        Ok(out)
    }

    /// The schema id of `t` under this topic's subject, registering it on first use.
    pub async fn schema_id(&self, t: EventType) -> Result<u32, CodecError> {
        let cell = &self.ids[t as usize];
        let id = cell
            .get_or_try_init(|| async {
                match self
                    .encoder
                    .get_schema_and_id(&self.subject(t), self.strategy(t).clone())
                    .await
                {
                    Ok(schema) => Ok(schema.id),
                    Err(e) => Err(self.encoder_failed(&e)),
                }
            })
            .await?;
        Ok(*id)
    }

    fn encoder_failed(&self, e: &SRCError) -> CodecError {
        let err = match e.error.as_str() {
            "Failed to resolve" | "Could not transform to apache_avro value" => {
                CodecError::Encode(describe(e))
            }
            _ => registry_error(e, None),
        };
        // Nothing negative is kept: the next call asks the registry again.
        self.encoder.remove_errors_from_cache();
        err
    }

    /// Encodes `event` in Confluent wire format.
    pub async fn encode(&self, event: &OrderEvent) -> Result<Vec<u8>, CodecError> {
        let id = self.schema_id(event.event_type()).await?;
        let mut out = Vec::with_capacity(1024);
        out.push(wire::MAGIC);
        out.extend_from_slice(&id.to_be_bytes());
        crate::binary::encode(event, &mut out);
        Ok(out)
    }

    /// Encodes `event` through schema_registry_converter and apache-avro's generic
    /// serde path: the reference the fast encoder is tested against.
    pub async fn encode_generic(&self, event: &OrderEvent) -> Result<Vec<u8>, CodecError> {
        let strategy = self.strategy(event.event_type());
        let encoded = match event {
            OrderEvent::Created(e) => self.encoder.encode_struct(e, strategy).await,
            OrderEvent::StatusChanged(e) => self.encoder.encode_struct(e, strategy).await,
            OrderEvent::Cancelled(e) => self.encoder.encode_struct(e, strategy).await,
        };
        encoded.map_err(|e| self.encoder_failed(&e))
    }

    /// Decodes a record in Confluent wire format into the current event types.
    pub async fn decode(&self, bytes: &[u8]) -> Result<OrderEvent, CodecError> {
        let (id, _) = wire::unframe(bytes)?;
        let decoded = match self.decoder.decode(Some(bytes)).await {
            Ok(d) => d,
            Err(e) if e.error == "Could not transform bytes using schema" => {
                return Err(CodecError::Undecodable {
                    id,
                    reason: describe(&e),
                })
            }
            Err(e) => {
                // Nothing negative is kept (an unknown id may be known a moment later):
                // the next record with this id asks the registry again.
                self.decoder.remove_errors_from_cache();
                return Err(registry_error(&e, Some(id)));
            }
        };
        let name = decoded
            .name
            .map(|n| n.fullname(None))
            .unwrap_or_else(|| "not a record".to_string());
        let t = EventType::from_avro_name(&name).ok_or(CodecError::NotAnOrderEvent { id, name })?;
        let undecodable = |reason: String| CodecError::Undecodable { id, reason };
        let value = decoded
            .value
            .resolve(t.schema())
            .map_err(|e| undecodable(e.to_string()))?;
        Ok(match t {
            EventType::OrderCreated => {
                OrderEvent::Created(from_value(&value).map_err(undecodable)?)
            }
            EventType::OrderStatusChanged => {
                OrderEvent::StatusChanged(from_value(&value).map_err(undecodable)?)
            }
            EventType::OrderCancelled => {
                OrderEvent::Cancelled(from_value(&value).map_err(undecodable)?)
            }
        })
    }
}

fn from_value<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    apache_avro::from_value(value).map_err(|e| e.to_string())
}
