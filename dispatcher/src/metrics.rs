//! Metric names. Labels are bounded: partner, outcome, stage; never an order or event id.

use metrics_exporter_prometheus::PrometheusHandle;

/// Finished deliveries, by `partner` and `outcome` (delivered, dead_lettered, gone, dropped).
pub const DELIVERIES: &str = "dispatcher_deliveries_total";
/// Attempts, by `partner` and `result` (2xx, 4xx, 5xx, transport, refused).
pub const ATTEMPTS: &str = "dispatcher_attempts_total";
/// Attempt latency in seconds, by `partner`.
pub const ATTEMPT_SECONDS: &str = "dispatcher_attempt_duration_seconds";
/// Retries scheduled, by `partner`.
pub const RETRIES: &str = "dispatcher_retries_total";
/// Records written to a dead-letter topic, by `partner` and `reason`.
pub const DEAD_LETTERED: &str = "dispatcher_dead_lettered_total";
/// Dead-letter writes that failed (and are retried; the offset waits), by `partner`.
pub const DEAD_LETTER_WRITE_FAILURES: &str = "dispatcher_dead_letter_write_failures_total";
/// Delivery-log writes that failed (and are retried; the job's offset waits).
pub const ATTEMPT_LOG_ERRORS: &str = "dispatcher_attempt_log_write_failures_total";
/// Records and messages the API's delivery-log view holds.
pub const LOG_VIEW_RECORDS: &str = "dispatcher_log_view_records";
pub const LOG_VIEW_MESSAGES: &str = "dispatcher_log_view_messages";
/// Records of the delivery log topic the API's view has not read yet (every 10 s).
pub const LOG_VIEW_LAG: &str = "dispatcher_log_view_lag_records";
/// Batches the view could not store (tried again every 5 s).
pub const LOG_VIEW_ERRORS: &str = "dispatcher_log_view_errors_total";
/// Delivery-log records the view could not read (not a record of a version it knows).
pub const LOG_VIEW_SKIPPED: &str = "dispatcher_log_view_skipped_total";
/// Requests in flight, by `partner`.
pub const IN_FLIGHT: &str = "dispatcher_in_flight";
/// Records taken from Kafka and not finished, by `partner`.
pub const BUFFERED: &str = "dispatcher_buffered_records";
/// Seconds since the oldest record of the delivery topic taken in and not finished was
/// taken in, by `partner` (0 when nothing is pending; parked records, which wait on
/// purpose, are not counted). Sampled every second.
pub const OLDEST_AGE: &str = "dispatcher_oldest_undelivered_age_seconds";
/// Consumer lag in records (log end minus committed offset, summed over the assigned
/// partitions), by `topic` (`deliveries.<partner>` or the orders topic). Every 5 s.
pub const CONSUMER_LAG: &str = "dispatcher_consumer_lag_records";
/// 1 while a lane's partitions are paused because its buffer is full, by `partner`.
pub const LANE_PAUSED: &str = "dispatcher_lane_paused";
/// The adaptive limit of requests in flight, by `partner`.
pub const CONCURRENCY_LIMIT: &str = "dispatcher_concurrency_limit";
/// The partner's circuit: 0 closed, 1 half-open (probing), 2 open, by `partner`.
pub const CIRCUIT_STATE: &str = "dispatcher_circuit_state";
/// Times the partner's circuit opened, by `partner`.
pub const CIRCUIT_OPENED: &str = "dispatcher_circuit_opened_total";
/// Server errors judged the key's own, not the partner's (the key failed before and
/// the partner accepted other requests since): they neither throttle the partner nor
/// count towards its circuit; by `partner`.
pub const KEY_FAILURES: &str = "dispatcher_key_failures_total";
/// Subscriptions disabled after a 410 Gone, by `partner`.
pub const DISABLED: &str = "dispatcher_subscriptions_disabled_total";
/// The partner's state: 1 for the current one of healthy, degraded, failing,
/// disconnected, by `partner` and `state`.
pub const PARTNER_STATE: &str = "dispatcher_partner_state";
/// Partners disconnected automatically after failing too long, by `partner`.
pub const DISCONNECTS: &str = "dispatcher_partner_disconnects_total";
/// Records moved to the partner's retry topic (parked after the lane's retry budget,
/// or following a parked key), by `partner`.
pub const PARKED: &str = "dispatcher_parked_records_total";
/// Keys parked now (their records wait in the retry topic), by `partner`.
pub const PARKED_KEYS: &str = "dispatcher_parked_keys";
/// Delivery lanes that ended while the dispatcher ran (failed or panicked) and were
/// started again, by `partner`.
pub const LANE_RESTARTS: &str = "dispatcher_lane_restarts_total";
/// Router: orders records routed, by `outcome` (routed, unmatched, dead_lettered).
pub const ROUTED: &str = "dispatcher_router_records_total";
/// Router: events a subscription's payload filter kept from it, by `partner`,
/// `subscription` and `outcome` (`filtered_out`: the filter was false; `error`: it failed
/// on the event, for example an optional field the event does not have). Neither is
/// delivered nor has a delivery record.
pub const FILTERED: &str = "dispatcher_filtered_events_total";
/// API: live streams open on this instance (`GET /v1/partners/{p}/stream`).
pub const STREAMS_OPEN: &str = "dispatcher_streams_open";
/// API: live streams ended, by `reason` (`client_gone`, `slow_client`: it took no
/// event for the slow-client time while its buffer was full, `shutdown`, `error`).
pub const STREAMS_CLOSED: &str = "dispatcher_streams_closed_total";
/// API: events sent on live streams.
pub const STREAM_EVENTS: &str = "dispatcher_stream_events_total";
/// Subscription records (changes and deletions) read from the topic and in force.
pub const SUBSCRIPTION_CHANGES: &str = "dispatcher_subscription_changes_total";
/// Subscription records refused when read from the topic.
pub const INVALID_SUBSCRIPTIONS: &str = "dispatcher_invalid_subscriptions_total";
/// Client certificate reloads, by `outcome` (`loaded`, `refused`: the new pair did not
/// load and the one in use stayed).
pub const CLIENT_CERT_RELOADS: &str = "dispatcher_client_cert_reloads_total";
/// Endpoint ownership challenges, by `outcome` (`verified`, `failed_attempt`,
/// `verification_failed`).
pub const ENDPOINT_VERIFICATIONS: &str = "dispatcher_endpoint_verifications_total";

/// Counts one client certificate reload ([`CLIENT_CERT_RELOADS`]).
pub fn client_cert_reload(loaded: bool) {
    let outcome = if loaded { "loaded" } else { "refused" };
    metrics::counter!(CLIENT_CERT_RELOADS, "outcome" => outcome).increment(1);
}

/// Seconds from an event's `occurred_at` to its partner's 2xx, per partner (retries
/// included: the latency the partner feels).
pub const TIME_TO_WEBHOOK: &str = "dispatcher_time_to_webhook_seconds";
const TIME_TO_WEBHOOK_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];
/// Seconds a record spends in one hop of the pipeline, per instance (`hop`, three
/// values): `orders_to_router`, from the orders record's timestamp (the publisher's
/// create time) to the router reading it; `deliveries_to_lane`, from the delivery
/// record's timestamp (the router's write) to the lanes' intake reading it;
/// `lane_to_request`, from the intake reading it to its first request being made (the
/// lane's queue, a key's earlier records, a flow-control permit: waits the partner's
/// pace can cause too; once per record, not for parked ones nor after a paused
/// subscription held it). The Kafka hops against the dispatcher's share of the time to
/// webhook. Record timestamps come from the writer's clock: across hosts, clock skew is
/// in the first two.
pub const HOP_SECONDS: &str = "dispatcher_hop_seconds";
const HOP_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const LATENCY_BUCKETS: [f64; 12] = [
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder, installed on first use.
pub fn handle() -> PrometheusHandle {
    orderhooks_runtime::prometheus(&[
        (ATTEMPT_SECONDS, &LATENCY_BUCKETS),
        (TIME_TO_WEBHOOK, &TIME_TO_WEBHOOK_BUCKETS),
        (HOP_SECONDS, &HOP_BUCKETS),
    ])
}

/// The histogram of one hop of [`HOP_SECONDS`] (resolve it once, not per record).
pub fn hop(name: &'static str) -> metrics::Histogram {
    metrics::histogram!(HOP_SECONDS, "hop" => name)
}

/// Records in `hop` the age of a record read from Kafka: its timestamp to now (nothing
/// when it has none).
pub fn record_age(hop: &metrics::Histogram, timestamp: rdkafka::Timestamp) {
    if let Some(ms) = timestamp.to_millis() {
        let age = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(ms)
            .max(0);
        hop.record(age as f64 / 1000.0);
    }
}
