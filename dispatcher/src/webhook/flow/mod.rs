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
//! - **Whose failure** (a partner-wide failure is throttled, a key-local one parked):
//!   timeouts, connection errors, 408, 429 and 502-504 are always the partner's
//!   (overloaded or down). A server error (500, 501, 505-599) may be either: a partner
//!   whose database is down answers 500 to every order, a handler that crashes on one
//!   order answers 500 to that order only. It is the **key's own** when the record's key
//!   failed before and the partner accepted another request since ([`Accepted`]): it
//!   neither cuts the limit nor counts towards the circuit, and the lane parks the key
//!   at once ([`Blame::Key`]). Otherwise it is the partner's, but while the partner
//!   accepted a request less than a cooldown ago (`cooldown`, 5 s) it does not open the
//!   circuit, and a key counts once (its retries are spaced by its own backoff): a lane
//!   whose buffer a few failing orders fill has only those orders left to try, which
//!   looks like a partner failing everywhere; they park within that time and the
//!   others flow again. A partner failing everywhere accepts nothing, so past that
//!   cooldown every failure counts as an overload's does, and its circuit opens at
//!   most a cooldown later than on overloads, its limit halved meanwhile.
//! - **Circuit breaker**: after `failures_to_open` of the partner's failures in a row
//!   the circuit opens: no request for a cooldown (doubling on each
//!   reopen, up to `max_cooldown`), then one probe; a success closes it, a failure
//!   opens it again (a probe that met a key's own failure tested nothing: another
//!   goes). Jobs waiting for the circuit keep their place (per-key order) and
//!   spend no attempt; the lane's buffer fills and its partitions pause, so the backlog
//!   waits in Kafka.

use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock (the same as std's outside paused-time tests), so holds and cooldowns can
// be tested with paused time.
use tokio::time::Instant;

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
    /// Failed without an answer (connection error, reset): the partner's.
    Failed,
    /// A server error (500, 501, 505-599). `key_failed_at`: when the record's key last
    /// failed (a mark of [`PartnerFlow::accepted`]), if it did: the error is the key's
    /// when the partner accepted a request since, else the partner's.
    ServerError { key_failed_at: Option<Accepted> },
    /// Nothing learnt (the request was refused before it left, e.g. by the SSRF guard).
    Neutral,
}

/// How many requests the partner had accepted (2xx, or a 4xx about the record) at some
/// moment: a job keeps the mark of its key's last failure, and a later failure of the
/// key after the partner accepted anything else is the key's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Accepted(u64);

/// Whose failure an attempt was, as flow control judged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Not a failure, or nothing learnt.
    Nobody,
    /// The partner's: it may be down or overloaded.
    Partner,
    /// The record's key's own: the partner takes its other orders (park the key).
    Key,
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
    /// Requests the partner accepted so far, and when it last did.
    accepted: u64,
    last_accepted: Option<Instant>,
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
    key_failures: metrics::Counter,
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
                accepted: 0,
                last_accepted: None,
                cooldown: config.cooldown,
                rate,
                tokens: rate.unwrap_or(0.0),
                refilled: Instant::now(),
            }),
            changed: Notify::new(),
            limit_gauge: metrics::gauge!(m::CONCURRENCY_LIMIT, "partner" => p.clone()),
            circuit_gauge: metrics::gauge!(m::CIRCUIT_STATE, "partner" => p.clone()),
            opened: metrics::counter!(m::CIRCUIT_OPENED, "partner" => p.clone()),
            key_failures: metrics::counter!(m::KEY_FAILURES, "partner" => p),
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

    /// The mark to keep when a key fails (see [`Signal::ServerError`]).
    pub fn accepted(&self) -> Accepted {
        Accepted(self.lock().accepted)
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

    /// Gives a permit back with what the attempt showed; says whose failure it was.
    pub fn release(&self, permit: Permit, signal: Signal) -> Blame {
        let now = Instant::now();
        let mut s = self.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        let mut blame = Blame::Nobody;
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
                s.accepted += 1;
                s.last_accepted = Some(now);
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
                self.failure(&mut s, now, permit.probe, true, true);
                blame = Blame::Partner;
            }
            Signal::Failed => {
                s.slow_start = false;
                s.limit = (s.limit * 0.5).max(1.0);
                self.failure(&mut s, now, permit.probe, true, true);
                blame = Blame::Partner;
            }
            Signal::ServerError {
                key_failed_at: Some(Accepted(mark)),
            } if s.accepted > mark => {
                // The key's own failure: it failed before and the partner has accepted
                // other requests since. Nothing about the partner's capacity or health;
                // a probe that met it tested nothing, so another may go.
                self.key_failures.increment(1);
                if permit.probe && s.circuit == (Circuit::HalfOpen { probing: true }) {
                    s.circuit = Circuit::HalfOpen { probing: false };
                }
                blame = Blame::Key;
            }
            Signal::ServerError { key_failed_at } => {
                // The partner's, as far as we can tell. Within a cooldown of the
                // partner's last accepted request, a key that failed before (nothing
                // accepted since) was counted already: once per run, and the circuit
                // does not open yet. Past that, every failure counts, as an overload's.
                let vouched = s
                    .last_accepted
                    .is_some_and(|t| now.saturating_duration_since(t) < self.config.cooldown);
                let counted = key_failed_at.is_none() || !vouched;
                if counted {
                    s.slow_start = false;
                    s.limit = (s.limit * 0.5).max(1.0);
                }
                self.failure(&mut s, now, permit.probe, counted, !vouched);
                blame = Blame::Partner;
            }
            Signal::Neutral => {
                if permit.probe && s.circuit == (Circuit::HalfOpen { probing: true }) {
                    // The probe did not test anything: let another one go.
                    s.circuit = Circuit::HalfOpen { probing: false };
                }
            }
        }
        self.limit_gauge.set(s.limit.floor());
        drop(s);
        // One slot freed: one waiter tries (and wakes the next if there is more room).
        self.changed.notify_one();
        blame
    }

    /// A failure of the partner's; `counted` towards the failures in a row, which open the
    /// circuit when `may_open` (a failed probe reopens it either way).
    fn failure(&self, s: &mut State, now: Instant, probe: bool, counted: bool, may_open: bool) {
        if counted {
            s.failures += 1;
        }
        let reopen = matches!(s.circuit, Circuit::HalfOpen { .. }) && probe;
        if reopen
            || (may_open
                && s.circuit == Circuit::Closed
                && s.failures >= self.config.failures_to_open)
        {
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
mod tests;
