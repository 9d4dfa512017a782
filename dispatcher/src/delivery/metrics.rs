//! A lane's metric handles.

use crate::metrics as m;
use crate::webhook::outcome::Attempt;

/// A lane's metric handles, resolved once (labels allocated once, not per delivery).
#[derive(Clone)]
pub struct LaneMetrics {
    pub(super) delivered: metrics::Counter,
    pub(super) dropped: metrics::Counter,
    pub(super) in_flight: metrics::Gauge,
    pub(super) attempt_seconds: metrics::Histogram,
    /// From the event's `occurred_at` to the 2xx.
    pub(super) time_to_webhook: metrics::Histogram,
    /// From the intake reading a delivery record to its first request (per instance).
    pub(super) lane_to_request: metrics::Histogram,
    pub(super) retries: metrics::Counter,
    attempts: [metrics::Counter; 6],
    pub buffered: metrics::Gauge,
    pub oldest_age: metrics::Gauge,
    pub paused: metrics::Gauge,
    /// Records written to the retry topic (parked, or following a parked key).
    pub parked: metrics::Counter,
    /// Keys parked now.
    pub parked_keys: metrics::Gauge,
}

impl LaneMetrics {
    pub fn new(partner: &str) -> Self {
        let p = partner.to_string();
        let attempt = |result: &'static str| metrics::counter!(m::ATTEMPTS, "partner" => p.clone(), "result" => result);
        Self {
            delivered: metrics::counter!(m::DELIVERIES, "partner" => p.clone(), "outcome" => "delivered"),
            dropped: metrics::counter!(m::DELIVERIES, "partner" => p.clone(), "outcome" => "dropped"),
            in_flight: metrics::gauge!(m::IN_FLIGHT, "partner" => p.clone()),
            attempt_seconds: metrics::histogram!(m::ATTEMPT_SECONDS, "partner" => p.clone()),
            time_to_webhook: metrics::histogram!(m::TIME_TO_WEBHOOK, "partner" => p.clone()),
            lane_to_request: m::hop("lane_to_request"),
            retries: metrics::counter!(m::RETRIES, "partner" => p.clone()),
            attempts: ["2xx", "4xx", "5xx", "other", "transport", "refused"].map(attempt),
            buffered: metrics::gauge!(m::BUFFERED, "partner" => p.clone()),
            oldest_age: metrics::gauge!(m::OLDEST_AGE, "partner" => p.clone()),
            paused: metrics::gauge!(m::LANE_PAUSED, "partner" => p.clone()),
            parked: metrics::counter!(m::PARKED, "partner" => p.clone()),
            parked_keys: metrics::gauge!(m::PARKED_KEYS, "partner" => p.clone()),
        }
    }

    pub(super) fn attempt(&self, attempt: &Attempt) -> &metrics::Counter {
        let i = match attempt {
            Attempt::Status {
                status: 200..=299, ..
            } => 0,
            Attempt::Status {
                status: 400..=499, ..
            } => 1,
            Attempt::Status {
                status: 500..=599, ..
            } => 2,
            Attempt::Status { .. } => 3,
            Attempt::Transport(_) => 4,
            Attempt::Refused(_) => 5,
        };
        &self.attempts[i]
    }
}

impl std::fmt::Debug for LaneMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaneMetrics")
    }
}
