//! How often a partner token may change things. Every change of a subscription costs an
//! audit record and a write of the compacted topic, and wakes the held jobs of every
//! dispatcher instance (they look at their subscription again), so a partner token may
//! make at most `rate` changes a second, in bursts of up to `burst`; past that the
//! answer is 429 with Retry-After. Admin tokens are not limited (an operator's scripts
//! are trusted, and audited like every change).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Per-partner token buckets of writes.
#[derive(Debug, Clone)]
pub struct WriteLimit {
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
    rate: f64,
    burst: f64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl WriteLimit {
    /// `rate` writes a second per partner, in bursts of up to `burst`.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            buckets: Arc::default(),
            rate: rate.max(f64::MIN_POSITIVE),
            burst: f64::from(burst.max(1)),
        }
    }

    /// Takes one of `partner`'s writes at `now`, or says how long until one is allowed.
    pub(super) fn take(&self, partner: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let b = buckets.entry(partner.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.at = b.at.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::try_from_secs_f64((1.0 - b.tokens) / self.rate).unwrap_or(Duration::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_gets_its_burst_then_its_rate_and_others_are_not_affected() {
        let limit = WriteLimit::new(2.0, 3);
        let now = Instant::now();
        for _ in 0..3 {
            assert!(limit.take("a", now).is_ok());
        }
        let wait = limit.take("a", now).expect_err("burst spent");
        assert!(
            wait > Duration::from_millis(450) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(limit.take("b", now).is_ok(), "another partner's bucket");
        assert!(limit.take("a", now + Duration::from_millis(500)).is_ok());
        assert!(limit.take("a", now + Duration::from_millis(500)).is_err());
    }
}
