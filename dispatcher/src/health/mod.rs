//! Each partner's health — healthy, degraded, failing, disconnected — derived from the
//! error rate of its recent attempts, its circuit, the consumer lag of its delivery
//! topic and the age of its oldest undelivered record. Exposed as metrics and on the
//! dispatcher's `/status` endpoint; a partner failing for longer than
//! `--disconnect-after` is disconnected: its subscriptions are marked so in the
//! subscriptions topic, delivery stops, its events keep accumulating in Kafka, and an
//! operator (or the partner, through the API) reconnects it.
//!
//! Every dispatcher instance judges from what it sees (the partitions it owns); an
//! automatic disconnect by any of them applies to all, through the topic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

pub mod publish;

use crate::metrics as m;
use crate::subscriptions::table::SubscriptionTable;
use crate::subscriptions::{Disconnected, Subscription};
use crate::webhook::flow::{Circuit, PartnerFlow};

/// A partner's state, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PartnerState {
    Healthy,
    Degraded,
    Failing,
    Disconnected,
}

impl PartnerState {
    pub const ALL: [PartnerState; 4] = [
        PartnerState::Healthy,
        PartnerState::Degraded,
        PartnerState::Failing,
        PartnerState::Disconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PartnerState::Healthy => "healthy",
            PartnerState::Degraded => "degraded",
            PartnerState::Failing => "failing",
            PartnerState::Disconnected => "disconnected",
        }
    }
}

/// Thresholds of the states, and the automatic disconnect.
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// Share of failed attempts in the window that makes a partner degraded.
    pub degraded_error_rate: f64,
    /// ... and failing.
    pub failing_error_rate: f64,
    /// Fewer attempts than this in the window say nothing about the error rate.
    pub min_attempts: u64,
    /// Oldest undelivered record older than this: degraded.
    pub degraded_age: Duration,
    /// ... and failing.
    pub failing_age: Duration,
    /// Consumer lag of the delivery topic above this many records: degraded.
    pub degraded_lag: i64,
    /// Failing this long: disconnected automatically. `None`: never.
    pub disconnect_after: Option<Duration>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            degraded_error_rate: 0.1,
            failing_error_rate: 0.5,
            min_attempts: 5,
            degraded_age: Duration::from_secs(60),
            failing_age: Duration::from_secs(900),
            degraded_lag: 10_000,
            disconnect_after: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

/// What a partner's state is judged from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inputs {
    /// Attempts and failed attempts (anything but 2xx) in the last [`WINDOW`].
    pub attempts: u64,
    pub failures: u64,
    /// The circuit is open (or probing).
    pub circuit_open: bool,
    /// Consumer lag of the delivery topic, when known.
    pub lag: Option<i64>,
    pub oldest_age: Duration,
    pub disconnected: bool,
    /// Every subscription of the partner is paused: its records wait on purpose, so
    /// their age and the lag say nothing about the partner.
    pub paused: bool,
}

/// The state and why: each reason names the input and its value.
pub fn judge(i: &Inputs, c: &HealthConfig) -> (PartnerState, Vec<String>) {
    if i.disconnected {
        return (PartnerState::Disconnected, vec!["disconnected".into()]);
    }
    let mut failing = Vec::new();
    let mut degraded = Vec::new();
    if i.attempts >= c.min_attempts {
        let rate = i.failures as f64 / i.attempts as f64;
        let why = format!(
            "error rate {:.0}% ({} of {} attempts)",
            rate * 100.0,
            i.failures,
            i.attempts
        );
        if rate >= c.failing_error_rate {
            failing.push(why);
        } else if rate >= c.degraded_error_rate {
            degraded.push(why);
        }
    }
    if i.circuit_open {
        failing.push("circuit open".into());
    }
    // A fully paused partner's records wait on purpose: age and lag say nothing then.
    if !i.paused {
        let age = format!("oldest undelivered record {}s old", i.oldest_age.as_secs());
        if i.oldest_age >= c.failing_age {
            failing.push(age);
        } else if i.oldest_age >= c.degraded_age {
            degraded.push(age);
        }
        if let Some(lag) = i.lag.filter(|l| *l > c.degraded_lag) {
            degraded.push(format!("consumer lag {lag} records"));
        }
    }
    if !failing.is_empty() {
        failing.extend(degraded);
        (PartnerState::Failing, failing)
    } else if !degraded.is_empty() {
        (PartnerState::Degraded, degraded)
    } else {
        (PartnerState::Healthy, Vec::new())
    }
}

/// The error-rate window.
pub const WINDOW: Duration = Duration::from_secs(60);
const BUCKETS: usize = 6;

/// What a partner's lane reports, read by [`monitor`].
#[derive(Debug)]
pub struct PartnerHealth {
    /// (bucket number, attempts, failures) per 10 s bucket of the window.
    window: Mutex<[(u64, u64, u64); BUCKETS]>,
    epoch: Instant,
    /// Consumer lag of the delivery topic (-1: not known yet).
    pub lag: AtomicI64,
    /// Age of the oldest undelivered record, in milliseconds.
    pub oldest_age_ms: AtomicU64,
    /// Times the partner's lane ended unexpectedly and was restarted, and the last why.
    lane_restarts: AtomicU64,
    last_lane_failure: Mutex<Option<(chrono::DateTime<chrono::Utc>, String)>>,
    /// Records held because their subscription is paused or disconnected (the lane's
    /// back-pressure counts them as waiting by policy).
    holding: AtomicU64,
}

/// A record held by its paused or disconnected subscription, counted in
/// [`PartnerHealth::holding`] while this lives.
#[derive(Debug)]
pub struct Holding(Arc<PartnerHealth>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.holding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for PartnerHealth {
    fn default() -> Self {
        Self {
            window: Mutex::new([(0, 0, 0); BUCKETS]),
            epoch: Instant::now(),
            lag: AtomicI64::new(-1),
            oldest_age_ms: AtomicU64::new(0),
            lane_restarts: AtomicU64::new(0),
            last_lane_failure: Mutex::new(None),
            holding: AtomicU64::new(0),
        }
    }
}

impl PartnerHealth {
    /// Counts a record held by its paused or disconnected subscription until the
    /// returned value is dropped.
    pub fn holding(self: &Arc<Self>) -> Holding {
        self.holding.fetch_add(1, Ordering::Relaxed);
        Holding(Arc::clone(self))
    }

    /// Records held by their paused or disconnected subscription now.
    pub fn held_by_subscription(&self) -> usize {
        self.holding.load(Ordering::Relaxed) as usize
    }

    /// Notes that the partner's lane ended unexpectedly (it is being restarted).
    pub fn lane_ended(&self, why: &str) {
        self.lane_restarts.fetch_add(1, Ordering::Relaxed);
        *self
            .last_lane_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((chrono::Utc::now(), why.to_string()));
    }

    fn bucket_now(&self) -> u64 {
        self.epoch.elapsed().as_secs() / (WINDOW.as_secs() / BUCKETS as u64)
    }

    /// Records one attempt's result.
    pub fn attempt(&self, ok: bool) {
        let now = self.bucket_now();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut w[(now % BUCKETS as u64) as usize];
        if slot.0 != now {
            *slot = (now, 0, 0);
        }
        slot.1 += 1;
        slot.2 += u64::from(!ok);
    }

    /// Attempts and failures in the window.
    pub fn window(&self) -> (u64, u64) {
        let now = self.bucket_now();
        let w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.iter()
            .filter(|(b, _, _)| now.saturating_sub(*b) < BUCKETS as u64)
            .fold((0, 0), |(a, f), (_, x, y)| (a + x, f + y))
    }
}

/// One partner as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PartnerStatus {
    pub state: PartnerState,
    pub reasons: Vec<String>,
    pub attempts_last_minute: u64,
    pub failures_last_minute: u64,
    pub circuit: &'static str,
    pub concurrency_limit: f64,
    pub consumer_lag: Option<i64>,
    pub oldest_undelivered_age_seconds: f64,
    /// Since when the partner has been failing (this instance's view).
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    pub disconnected: Option<Disconnected>,
    /// Times this instance restarted the partner's lane after it failed or panicked.
    pub lane_restarts: u64,
    /// When and why the lane last ended unexpectedly.
    pub last_lane_failure: Option<LaneFailure>,
}

/// A lane's unexpected end, as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LaneFailure {
    pub at: chrono::DateTime<chrono::Utc>,
    pub why: String,
}

/// Every partner's status, shared with the HTTP endpoint.
pub type StatusBoard = Arc<Mutex<HashMap<String, PartnerStatus>>>;

/// `/status` (every partner) or `/status/{partner}` as JSON:
/// `{"partners": {"<id>": PartnerStatus}}` (empty when the partner is unknown here).
pub fn status_json(board: &StatusBoard, partner: Option<&str>) -> serde_json::Value {
    let board = board.lock().unwrap_or_else(|p| p.into_inner());
    let partners: serde_json::Map<String, serde_json::Value> = board
        .iter()
        .filter(|(k, _)| partner.is_none_or(|p| p == k.as_str()))
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
        .collect();
    serde_json::json!({ "partners": partners })
}

/// A partner the monitor watches.
#[derive(Debug, Clone)]
pub struct Watched {
    pub health: Arc<PartnerHealth>,
    pub flow: Arc<PartnerFlow>,
}

/// Writes subscriptions to the subscriptions topic (the automatic disconnect).
pub type Writer = Arc<dyn Fn(Vec<Subscription>) + Send + Sync>;

/// Judges every partner every `every`, updates the metrics and the board, and
/// disconnects a partner failing past the configured time. Runs until `shutdown`.
pub async fn monitor(
    partners: Arc<Mutex<HashMap<String, Watched>>>,
    table: SubscriptionTable,
    config: HealthConfig,
    board: StatusBoard,
    write: Writer,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut failing_since: HashMap<String, (Instant, chrono::DateTime<chrono::Utc>)> =
        HashMap::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let watched: Vec<(String, Watched)> = partners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let all = table.all();
        // A partner whose lane stopped (no subscription any more) leaves `/status`.
        let names: std::collections::HashSet<&str> =
            watched.iter().map(|(p, _)| p.as_str()).collect();
        board
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|p, _| {
                let keep = names.contains(p.as_str());
                if !keep {
                    // Its series stay (the exporter cannot drop them): no state, so no
                    // alert fires on a partner that is gone.
                    for s in PartnerState::ALL {
                        metrics::gauge!(m::PARTNER_STATE, "partner" => p.clone(), "state" => s.as_str())
                            .set(0.0);
                    }
                }
                keep
            });
        failing_since.retain(|p, _| names.contains(p.as_str()));
        drop(names);
        for (partner, w) in watched {
            let subscriptions: Vec<&Arc<Subscription>> =
                all.iter().filter(|s| s.partner_id == partner).collect();
            let disconnected = subscriptions.iter().find_map(|s| s.disconnected.clone());
            let (attempts, failures) = w.health.window();
            let lag = w.health.lag.load(Ordering::Relaxed);
            let circuit = w.flow.circuit();
            let inputs = Inputs {
                attempts,
                failures,
                circuit_open: circuit != Circuit::Closed,
                lag: (lag >= 0).then_some(lag),
                oldest_age: Duration::from_millis(w.health.oldest_age_ms.load(Ordering::Relaxed)),
                disconnected: disconnected.is_some(),
                paused: !subscriptions.is_empty() && subscriptions.iter().all(|s| s.paused),
            };
            let (state, reasons) = judge(&inputs, &config);
            for s in PartnerState::ALL {
                metrics::gauge!(m::PARTNER_STATE, "partner" => partner.clone(), "state" => s.as_str())
                    .set(if s == state { 1.0 } else { 0.0 });
            }
            let since = if state == PartnerState::Failing {
                Some(
                    *failing_since
                        .entry(partner.clone())
                        .or_insert_with(|| (Instant::now(), chrono::Utc::now())),
                )
            } else {
                failing_since.remove(&partner);
                None
            };
            if let (Some((at, _)), Some(after)) = (since, config.disconnect_after) {
                if at.elapsed() >= after {
                    let reason = format!(
                        "failing for {}s: {}",
                        at.elapsed().as_secs(),
                        reasons.join(", ")
                    );
                    tracing::warn!(partner = %partner, %reason, "disconnecting the partner: delivery stops, events are kept");
                    metrics::counter!(m::DISCONNECTS, "partner" => partner.clone()).increment(1);
                    let mark = Disconnected {
                        at: chrono::Utc::now(),
                        reason,
                        by: "dispatcher".into(),
                    };
                    let changed: Vec<Subscription> = subscriptions
                        .iter()
                        .map(|s| {
                            let mut s = (***s).clone();
                            s.disconnected = Some(mark.clone());
                            s
                        })
                        .collect();
                    write(changed);
                    failing_since.remove(&partner);
                }
            }
            let status = PartnerStatus {
                state,
                reasons,
                attempts_last_minute: attempts,
                failures_last_minute: failures,
                circuit: match circuit {
                    Circuit::Closed => "closed",
                    Circuit::HalfOpen { .. } => "half-open",
                    Circuit::Open { .. } => "open",
                },
                concurrency_limit: w.flow.limit(),
                consumer_lag: inputs.lag,
                oldest_undelivered_age_seconds: inputs.oldest_age.as_secs_f64(),
                failing_since: since.map(|(_, t)| t),
                disconnected,
                lane_restarts: w.health.lane_restarts.load(Ordering::Relaxed),
                last_lane_failure: w
                    .health
                    .last_lane_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .map(|(at, why)| LaneFailure { at, why }),
            };
            board
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(partner, status);
        }
    }
}

#[cfg(test)]
mod tests;
