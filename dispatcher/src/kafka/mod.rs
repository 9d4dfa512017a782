//! Kafka plumbing shared by both stages and the control plane: client settings and
//! snapshot reads, the group member's context, the committable-offset tracker, the
//! consumer loop's back-pressure, and the header names records carry between stages.

pub mod backpressure;
pub mod group;
pub mod headers;
pub mod offsets;
mod on_demand;
mod settings;

pub use on_demand::TopicOnDemand;

pub use settings::{read_ranges, visit_ranges, KafkaSettings, Patience, TopicRecord};
