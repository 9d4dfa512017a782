//! Per-partner flow control: how many requests may be in flight to a partner right now,
//! and whether it may be called at all.
//!
//! - **Adaptive concurrency** (AIMD, after Vector's adaptive request concurrency): the
//!   limit starts at 1 and, like TCP's slow start, grows by 1 per answer that came as
//!   fast as usual (doubling per round trip) until the first sign of overload or slowness;
//!   from then on by 1/limit per such answer (about +1 per round trip). It is halved on
//!   overload (timeout, 429, 502, 503, 504)
//!   and cut by a tenth when answers take more than twice the usual time (and 50 ms
//!   more); it stays within
//!   1..=`max_in_flight`.
//! - **Retry-After / 429 hold the whole partner**, not just the one request: nothing is
//!   sent to it before the time it asked for (bounded by `max_hold`).
//! - **Optional rate limit**: a token bucket (requests per second, burst of one second).
//! - **Circuit breaker**: after `failures_to_open` failures in a row (5xx, timeout,
//!   connection error) the circuit opens: no request for a cooldown (doubling on each
//!   reopen, up to `max_cooldown`), then one probe; a success closes it, a failure
//!   opens it again. Jobs waiting for the circuit keep their place (per-key order) and
//!   spend no attempt; the lane's buffer fills and its partitions pause, so the backlog
//!   waits in Kafka.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;

/// Settings shared by every partner.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub failures_to_open: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// The longest a Retry-After holds a partner.
    pub max_hold: Duration,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            failures_to_open: 10,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(120),
            max_hold: Duration::from_secs(60),
        }
    }
}

/// How an attempt ended, as flow control sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// Answered (2xx, or a 4xx that is about the record, not the partner's health).
    Answered { latency: Duration },
    /// The partner is overloaded: timeout, 429, 502, 503, 504; with its Retry-After.
    Overloaded { retry_after: Option<Duration> },
    /// Failed: other 5xx, connection error.
    Failed,
    /// Nothing learnt (the request was refused before it left, e.g. by the SSRF guard).
    Neutral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    Open {
        until: Instant,
    },
    /// Open past its cooldown: one probe may go.
    HalfOpen {
        probing: bool,
    },
}

#[derive(Debug)]
struct State {
    max: usize,
    limit: f64,
    /// Until the partner first shows overload or slowness: the limit doubles per round
    /// trip instead of growing by one.
    slow_start: bool,
    in_flight: usize,
    /// Smoothed latency of normal answers, seconds.
    usual: Option<f64>,
    not_before: Option<Instant>,
    circuit: Circuit,
    failures: u32,
    cooldown: Duration,
    rate: Option<f64>,
    tokens: f64,
    refilled: Instant,
}

/// One partner's flow control, shared by its lane's jobs.
pub struct PartnerFlow {
    state: Mutex<State>,
    changed: Notify,
    config: FlowConfig,
    limit_gauge: metrics::Gauge,
    circuit_gauge: metrics::Gauge,
    opened: metrics::Counter,
}

impl std::fmt::Debug for PartnerFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerFlow")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Leave to send one request; give it back with [`PartnerFlow::release`].
#[derive(Debug)]
#[must_use]
pub struct Permit {
    probe: bool,
}

impl PartnerFlow {
    pub fn new(partner: &str, max: usize, rate: Option<f64>, config: FlowConfig) -> Arc<Self> {
        let p = partner.to_string();
        let flow = Self {
            state: Mutex::new(State {
                max: max.max(1),
                limit: 1.0,
                slow_start: true,
                in_flight: 0,
                usual: None,
                not_before: None,
                circuit: Circuit::Closed,
                failures: 0,
                cooldown: config.cooldown,
                rate,
                tokens: rate.unwrap_or(0.0),
                refilled: Instant::now(),
            }),
            changed: Notify::new(),
            limit_gauge: metrics::gauge!(m::CONCURRENCY_LIMIT, "partner" => p.clone()),
            circuit_gauge: metrics::gauge!(m::CIRCUIT_STATE, "partner" => p.clone()),
            opened: metrics::counter!(m::CIRCUIT_OPENED, "partner" => p),
            config,
        };
        flow.limit_gauge.set(1.0);
        flow.circuit_gauge.set(0.0);
        Arc::new(flow)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets every permit handed out: called before a lane starts, since the jobs of
    /// a lane that ended (a panic aborts them) never gave theirs back, and a restarted
    /// lane would otherwise find its partner's limit used up for good.
    pub fn forget_permits(&self) {
        let mut s = self.lock();
        s.in_flight = 0;
        if s.circuit == (Circuit::HalfOpen { probing: true }) {
            s.circuit = Circuit::HalfOpen { probing: false };
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Changes the cap (a subscription's `max_in_flight`) and the rate limit.
    pub fn configure(&self, max: usize, rate: Option<f64>) {
        let mut s = self.lock();
        s.max = max.max(1);
        s.limit = s.limit.min(s.max as f64);
        if s.rate != rate {
            s.rate = rate;
            s.tokens = s.tokens.min(rate.unwrap_or(0.0));
        }
        drop(s);
        self.changed.notify_waiters();
    }

    pub fn circuit(&self) -> Circuit {
        self.lock().circuit
    }

    pub fn limit(&self) -> f64 {
        self.lock().limit
    }

    /// Waits until a request may go; `None` when `cancel` fires first.
    pub async fn acquire(&self, cancel: &CancellationToken) -> Option<Permit> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = match self.try_acquire(Instant::now()) {
                Ok(permit) => return Some(permit),
                Err(wait) => wait,
            };
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = &mut notified => {}
                _ = sleep_for(wait) => {}
            }
        }
    }

    /// A permit now, or how long to wait at most before trying again (`None`: until a
    /// release or a change).
    fn try_acquire(&self, now: Instant) -> Result<Permit, Option<Duration>> {
        let mut s = self.lock();
        if let Some(t) = s.not_before {
            if now < t {
                return Err(Some(t - now));
            }
            s.not_before = None;
        }
        // Decide first, change nothing until the request is sure to go.
        let probe = match s.circuit {
            Circuit::Closed => false,
            Circuit::Open { until } if now < until => return Err(Some(until - now)),
            Circuit::Open { .. } | Circuit::HalfOpen { probing: false } => true,
            Circuit::HalfOpen { probing: true } => return Err(None),
        };
        if !probe && s.in_flight >= (s.limit.floor() as usize).max(1) {
            return Err(None);
        }
        if let Some(rate) = s.rate {
            let elapsed = now.saturating_duration_since(s.refilled).as_secs_f64();
            s.tokens = (s.tokens + elapsed * rate).min(rate.max(1.0));
            s.refilled = s.refilled.max(now);
            if s.tokens < 1.0 {
                // Rates are validated (subscriptions/mod.rs); a wait past an hour is still
                // looked at again after an hour rather than overflowing.
                let wait = Duration::try_from_secs_f64((1.0 - s.tokens) / rate)
                    .unwrap_or(Duration::MAX)
                    .min(Duration::from_secs(3600));
                return Err(Some(wait));
            }
            s.tokens -= 1.0;
        }
        if probe {
            s.circuit = Circuit::HalfOpen { probing: true };
            self.circuit_gauge.set(1.0);
        }
        s.in_flight += 1;
        if !probe && s.in_flight < s.limit.floor() as usize {
            // Room for more: wake the next waiter (one at a time, no thundering herd of
            // the up to max_buffered jobs waiting).
            self.changed.notify_one();
        }
        Ok(Permit { probe })
    }

    /// Gives a permit back with what the attempt showed.
    pub fn release(&self, permit: Permit, signal: Signal) {
        let now = Instant::now();
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        match signal {
            Signal::Answered { latency } => {
                let secs = latency.as_secs_f64();
                // Slower than twice the usual time and by more than 50 ms: a partner
                // going from 2 ms to 6 ms is not overloaded, one going from 100 ms to
                // 400 ms is.
                let slow = s.usual.is_some_and(|u| secs > 2.0 * u && secs - u > 0.05);
                s.usual = Some(match s.usual {
                    Some(u) => 0.9 * u + 0.1 * secs,
                    None => secs,
                });
                if slow {
                    s.slow_start = false;
                    s.limit = (s.limit * 0.9).max(1.0);
                } else {
                    let step = if s.slow_start { 1.0 } else { 1.0 / s.limit };
                    s.limit = (s.limit + step).min(s.max as f64);
                }
                s.failures = 0;
                if s.circuit != Circuit::Closed {
                    tracing::info!("partner answered: circuit closed");
                    s.circuit = Circuit::Closed;
                    s.cooldown = self.config.cooldown;
                    self.circuit_gauge.set(0.0);
                }
            }
            Signal::Overloaded { retry_after } => {
                s.slow_start = false;
                s.limit = (s.limit * 0.5).max(1.0);
                if let Some(wait) = retry_after {
                    let until = now + wait.min(self.config.max_hold);
                    s.not_before = Some(s.not_before.map_or(until, |t| t.max(until)));
                }
                self.failure(&mut s, now, permit.probe);
            }
            Signal::Failed => {
                s.slow_start = false;
                s.limit = (s.limit * 0.5).max(1.0);
                self.failure(&mut s, now, permit.probe);
            }
            Signal::Neutral => {
                if permit.probe {
                    // The probe did not test anything: let another one go.
                    s.circuit = Circuit::HalfOpen { probing: false };
                }
            }
        }
        self.limit_gauge.set(s.limit.floor());
        drop(s);
        // One slot freed: one waiter tries (and wakes the next if there is more room).
        self.changed.notify_one();
    }

    fn failure(&self, s: &mut State, now: Instant, probe: bool) {
        s.failures += 1;
        let reopen = matches!(s.circuit, Circuit::HalfOpen { .. }) && probe;
        if reopen || (s.circuit == Circuit::Closed && s.failures >= self.config.failures_to_open) {
            if reopen {
                s.cooldown = (s.cooldown * 2).min(self.config.max_cooldown);
            }
            tracing::warn!(
                failures = s.failures,
                cooldown_ms = s.cooldown.as_millis() as u64,
                "partner failing: circuit open"
            );
            s.circuit = Circuit::Open {
                until: now + s.cooldown,
            };
            self.circuit_gauge.set(2.0);
            self.opened.increment(1);
        }
    }
}

async fn sleep_for(wait: Option<Duration>) {
    match wait {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(max: usize) -> Arc<PartnerFlow> {
        PartnerFlow::new(
            "t",
            max,
            None,
            FlowConfig {
                failures_to_open: 3,
                cooldown: Duration::from_millis(100),
                ..FlowConfig::default()
            },
        )
    }

    const FAST: Signal = Signal::Answered {
        latency: Duration::from_millis(1),
    };

    #[test]
    fn the_limit_grows_on_normal_answers_and_halves_on_overload() {
        let f = flow(16);
        let now = Instant::now();
        for _ in 0..40 {
            let p = f.try_acquire(now).expect("permit");
            f.release(p, FAST);
        }
        let grown = f.limit();
        assert!(grown > 6.0 && grown <= 16.0, "{grown}");
        let p = f.try_acquire(now).expect("permit");
        f.release(p, Signal::Overloaded { retry_after: None });
        assert!((f.limit() - grown / 2.0).abs() < 0.01);
        for _ in 0..1000 {
            let p = f.try_acquire(now).expect("permit");
            f.release(p, FAST);
        }
        assert_eq!(f.limit(), 16.0, "capped at max_in_flight");
    }

    #[test]
    fn the_limit_doubles_per_round_trip_until_the_first_overload_then_grows_by_one() {
        let f = flow(64);
        let now = Instant::now();
        // One round trip: every permit the limit allows, then every answer.
        let round_trip = |f: &PartnerFlow| {
            let permits: Vec<_> = std::iter::from_fn(|| f.try_acquire(now).ok()).collect();
            let sent = permits.len();
            for p in permits {
                f.release(p, FAST);
            }
            sent
        };
        let sent: Vec<usize> = (0..5).map(|_| round_trip(&f)).collect();
        assert_eq!(sent, [1, 2, 4, 8, 16], "slow start doubles");
        let p = f.try_acquire(now).expect("permit");
        f.release(p, Signal::Overloaded { retry_after: None });
        assert_eq!(f.limit(), 16.0, "halved from 32");
        round_trip(&f);
        assert!(
            (f.limit() - 17.0).abs() < 0.1,
            "after an overload, about +1 per round trip: {}",
            f.limit()
        );
    }

    #[test]
    fn in_flight_is_bounded_by_the_limit() {
        let f = flow(16);
        let now = Instant::now();
        let first = f.try_acquire(now).expect("permit");
        assert!(f.try_acquire(now).is_err(), "limit 1 at start");
        f.release(first, FAST);
        assert!(f.try_acquire(now).is_ok());
    }

    #[test]
    fn retry_after_holds_the_whole_partner() {
        let f = flow(16);
        let now = Instant::now();
        let p = f.try_acquire(now).expect("permit");
        f.release(
            p,
            Signal::Overloaded {
                retry_after: Some(Duration::from_secs(2)),
            },
        );
        let wait = f.try_acquire(Instant::now()).expect_err("held");
        assert!(
            wait.is_some_and(|w| w > Duration::from_millis(1900)),
            "{wait:?}"
        );
        assert!(f.try_acquire(now + Duration::from_secs(3)).is_ok());
    }

    #[test]
    fn the_circuit_opens_probes_and_closes() {
        let f = flow(16);
        let now = Instant::now();
        for _ in 0..3 {
            let p = f.try_acquire(now).expect("permit");
            f.release(p, Signal::Failed);
        }
        assert!(matches!(f.circuit(), Circuit::Open { .. }));
        assert!(f.try_acquire(Instant::now()).is_err(), "open: nothing goes");
        let later = Instant::now() + Duration::from_millis(150);
        let probe = f.try_acquire(later).expect("one probe after the cooldown");
        assert!(f.try_acquire(later).is_err(), "only one probe");
        f.release(probe, Signal::Failed);
        let Circuit::Open { until } = f.circuit() else {
            panic!("a failed probe reopens")
        };
        assert!(
            until >= Instant::now() + Duration::from_millis(150),
            "cooldown doubled"
        );
        let probe = f
            .try_acquire(until + Duration::from_millis(1))
            .expect("probe");
        f.release(probe, FAST);
        assert_eq!(f.circuit(), Circuit::Closed);
    }

    #[test]
    fn a_rate_limit_spaces_requests() {
        let f = PartnerFlow::new("t", 100, Some(5.0), FlowConfig::default());
        let now = Instant::now();
        let mut sent = 0;
        for _ in 0..20 {
            if let Ok(p) = f.try_acquire(now) {
                f.release(p, FAST);
                sent += 1;
            }
        }
        assert_eq!(sent, 5, "a burst of one second");
        let wait = f.try_acquire(now).expect_err("empty");
        assert!(wait.is_some_and(|w| w <= Duration::from_millis(200)));
        assert!(f.try_acquire(now + Duration::from_millis(250)).is_ok());
    }

    #[test]
    fn permits_of_an_ended_lane_are_forgotten_before_the_next_one_starts() {
        let f = flow(1);
        let now = Instant::now();
        // A lane whose job held the only permit panicked: the permit is never released.
        let _never_released = f.try_acquire(now).expect("permit");
        assert!(f.try_acquire(now).is_err(), "the limit is used up");
        f.forget_permits();
        assert!(
            f.try_acquire(now).is_ok(),
            "the restarted lane can send again"
        );
    }

    #[test]
    fn an_absurd_rate_waits_bounded_instead_of_overflowing() {
        // Validation refuses such a rate; flow control must not panic on one anyway.
        let f = PartnerFlow::new("t", 100, Some(1e-30), FlowConfig::default());
        let now = Instant::now();
        let first = f.try_acquire(now);
        let wait = match first {
            Ok(p) => {
                f.release(p, FAST);
                f.try_acquire(now).expect_err("no token left")
            }
            Err(wait) => wait,
        };
        assert_eq!(wait, Some(Duration::from_secs(3600)));
    }
}
