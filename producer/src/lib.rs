//! Publishing order events to Kafka: the typed [`Publisher`], the HTTP ingest endpoint
//! and the metrics they share. The `producer` binary wraps them in a CLI.
//!
//! Guarantees:
//! - an event is acknowledged ([`Published`], HTTP 202) only after Kafka has written it
//!   with the idempotent producer (acks=all), so nothing acknowledged is lost;
//! - the key is the order id and events are enqueued in call order, so one order's
//!   events keep their order on the partition;
//! - when librdkafka's queue is full the caller waits (a permit per in-flight event);
//!   nothing is dropped;
//! - every refusal says what is wrong: the bad field, the unreachable broker or registry.

pub mod ingest;
pub mod metrics;
mod publisher;

pub use publisher::{PendingDelivery, PublishError, Published, Publisher, PublisherConfig};
