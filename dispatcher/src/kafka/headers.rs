//! The Kafka header names the pipeline writes and reads, in one place: the router writes
//! the delivery headers, lanes read them and add the retry and dead-letter ones, the DLQ
//! tool and the events API read them back. A header's name is part of the contract
//! between these stages (and of the dead-letter records operators inspect), so none is
//! spelled twice.

// Written by the router on every delivery record (and kept through retry, dead letter
// and replay).
/// The event id; the `webhook-id` partners deduplicate on.
pub const WEBHOOK_ID: &str = "webhook-id";
pub const EVENT_TYPE: &str = "event-type";
/// The subscription the record is for.
pub const SUBSCRIPTION_ID: &str = "subscription-id";
pub const OCCURRED_AT: &str = "occurred-at";
/// Where in the orders topic the event came from.
pub const SOURCE_TOPIC: &str = "source-topic";
pub const SOURCE_PARTITION: &str = "source-partition";
pub const SOURCE_OFFSET: &str = "source-offset";
/// W3C trace context, passed through from the orders record.
pub const TRACEPARENT: &str = "traceparent";

// Written when a record is parked in `retries.<partner>` (delivery/).
/// Every retry header starts with this (they are dropped when a record is parked again).
pub const RETRY_PREFIX: &str = "retry-";
pub const RETRY_ATTEMPTS: &str = "retry-attempts";
pub const RETRY_FIRST_ATTEMPT_AT: &str = "retry-first-attempt-at";
pub const RETRY_NOT_BEFORE: &str = "retry-not-before";
pub const RETRY_SOURCE_OFFSET: &str = "retry-source-offset";

// Written on dead-letter records (delivery/ for partners, router/ for `orders.dlq`).
/// Every dead-letter header starts with this (they are dropped by a replay).
pub const DLQ_PREFIX: &str = "dlq-";
/// Why the record was dead-lettered.
pub const DLQ_REASON: &str = "dlq-reason";
/// The reason as a stable code (`status`, `retries_spent`, ...: `DeadLetterReason::code`).
pub const DLQ_REASON_CODE: &str = "dlq-reason-code";
/// `router` on the router's dead letters.
pub const DLQ_STAGE: &str = "dlq-stage";
pub const DLQ_PARTNER: &str = "dlq-partner";
pub const DLQ_SUBSCRIPTION: &str = "dlq-subscription";
pub const DLQ_SOURCE_TOPIC: &str = "dlq-source-topic";
pub const DLQ_SOURCE_PARTITION: &str = "dlq-source-partition";
pub const DLQ_SOURCE_OFFSET: &str = "dlq-source-offset";
pub const DLQ_ATTEMPTS: &str = "dlq-attempts";
pub const DLQ_FIRST_ATTEMPT_AT: &str = "dlq-first-attempt-at";
pub const DLQ_LAST_ATTEMPT_AT: &str = "dlq-last-attempt-at";
pub const DLQ_LAST_STATUS: &str = "dlq-last-status";
pub const DLQ_LAST_ERROR: &str = "dlq-last-error";
pub const DLQ_RESPONSE_EXCERPT: &str = "dlq-response-excerpt";

// Written by the API on the records it sends again.
/// Why the record is sent again: `resend` or `recover` (the delivery log's trigger).
pub const DELIVERY_TRIGGER: &str = "delivery-trigger";

// Written by `dispatcher dlq replay` on the records it sends back.
/// `<dead-letter topic>/<partition>/<offset>` of the record replayed.
pub const REPLAYED_FROM: &str = "replayed-from";
/// The replay operation's id (its audit record).
pub const REPLAY_OPERATION: &str = "replay-operation";
