//! Metric names and the Prometheus recorder. Labels are bounded: event type, outcome,
//! HTTP status; never an order or event id.

use metrics_exporter_prometheus::PrometheusHandle;

/// Events Kafka acknowledged, by `event_type`.
pub const PUBLISHED: &str = "producer_events_published_total";
/// Events that could not be published, by `reason` (invalid, registry, kafka).
pub const FAILED: &str = "producer_publish_failures_total";
/// Time from `publish` to Kafka's acknowledgement, in seconds.
pub const LATENCY: &str = "producer_publish_duration_seconds";
/// HTTP ingest answers, by `status`.
pub const INGEST_RESPONSES: &str = "producer_ingest_responses_total";
/// Events between enqueue and acknowledgement right now.
pub const IN_FLIGHT: &str = "producer_events_in_flight";

/// Latency buckets from 1 ms (a local broker, lingering) to 30 s (delivery timeout).
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// The process-wide recorder, installed on first use.
pub fn handle() -> PrometheusHandle {
    orderhooks_runtime::prometheus(&[(LATENCY, &LATENCY_BUCKETS)])
}
