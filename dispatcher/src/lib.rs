//! The dispatcher: order events in, signed at-least-once webhook calls out.
//!
//! Stage 1, the router, reads the orders topic, matches subscriptions and writes one
//! record per (event, subscription) into that partner's delivery topic. Stage 2, the
//! delivery lanes, read each partner's delivery topic and call the partner: per key in
//! order, different keys in parallel up to the partner's cap, retried with backoff, and
//! dead-lettered with the reason when the policy is spent. Offsets are committed only
//! for the contiguous prefix of finished records (delivered or durably dead-lettered).

pub mod api;
pub mod audit;
pub mod backpressure;
pub mod dlq;
pub mod flow;
pub mod group;
pub mod headers;
pub mod health;
pub mod http;
pub mod job;
pub mod kafka;
pub mod lane;
pub mod metrics;
pub mod offsets;
pub mod outcome;
pub mod router;
pub mod signing;
pub mod ssrf;
pub mod subscription;
pub mod table;
pub mod updater;
