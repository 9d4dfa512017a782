//! The dispatcher: order events in, signed at-least-once webhook calls out.
//!
//! Stage 1, the router, reads the orders topic, matches subscriptions and writes one
//! record per (event, subscription) into that partner's delivery topic. Stage 2, the
//! delivery lanes, read each partner's delivery topic and call the partner: per key in
//! order, different keys in parallel up to the partner's cap, retried with backoff, and
//! dead-lettered with the reason when the policy is spent. Offsets are committed only
//! for the contiguous prefix of finished records (delivered or durably dead-lettered).
//!
//! The modules in pipeline order, then the control plane:

/// Control plane: the partner API.
pub mod api;
/// The wiring of `dispatcher run`: one `App` that starts and stops every stage.
pub mod app;
/// The delivery log: one record per attempt and per end of a message.
pub mod attempts;
/// The web console (#24): pages under `/console/` on the partner API.
pub mod console;
/// One delivery: attempts, retry and backoff, parking, the dead letter.
pub mod delivery;
/// Control plane: inspect and replay dead-letter topics.
pub mod dlq;
/// Partner health: automatic disconnect of a partner that keeps failing, `/status`.
pub mod health;
/// Kafka plumbing both stages share: settings, group context, offsets, back-pressure, headers.
pub mod kafka;
/// Data plane, stage 2: one lane per partner reads its delivery topic, keeps per-key order.
pub mod lane;
/// Prometheus metrics names and the exporter.
pub mod metrics;
/// Data plane, stage 1: orders topic → match subscriptions → `deliveries.<partner>`.
pub mod router;
/// Subscriptions: model and validation, the shared table, the audit trail, our own writes.
pub mod subscriptions;
/// The partner call: signed client, SSRF guard, outcome rules, per-partner flow control.
pub mod webhook;
