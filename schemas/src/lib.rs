//! Order events: their Avro schemas (`schemas/avro/*.avsc`, the source of truth), their
//! Rust types, the JSON form internal services send, and the Confluent wire format
//! (magic byte 0, 4-byte big-endian schema id, Avro body) through a Schema Registry.
//!
//! Guarantees:
//! - an event that passes [`OrderEvent::from_json`] is valid: every error names the
//!   field that is wrong (`order.items[1].quantity`);
//! - encoding registers the schema under `<topic>-<record full name>` (Confluent's
//!   TopicRecordNameStrategy, so one topic carries all order event types) and decoding
//!   reads any registered writer version into the current Rust types;
//! - a registry failure is reported as retryable ([`CodecError::is_retryable`]) and is
//!   never cached, so the next call tries again.

mod binary;
mod codec;
mod events;
mod input;
mod samples;
pub mod wire;

pub use codec::{CodecError, OrderCodec};
pub use events::{
    EventType, LineItem, Money, Order, OrderCancelled, OrderCreated, OrderEvent, OrderStatus,
    OrderStatusChanged, Timestamp,
};
pub use input::InvalidEvent;
