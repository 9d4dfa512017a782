//! The end-to-end tests as one binary (one link, shared helpers from the `e2e` crate),
//! one module per area. They run against the broker and registry `scripts/test.sh`
//! starts; `scripts/test.sh --test it dlq::` runs one area.
//!
//! The crash tests (`tests/tests/dispatch_crash.rs`) stay a binary of their own: they
//! kill dispatchers under load on private brokers and must not share the machine's two
//! cores with other tests.

mod api;
mod api_fuzz;
mod app;
mod cli;
mod compose;
mod console;
mod contract;
mod dispatch;
mod dlq;
mod endpoint;
mod examples;
mod filters;
mod flow;
mod hardening;
mod health;
mod ingest;
mod parked;
mod publish_cli;
mod publish_library;
mod stream;
mod upgrade;
