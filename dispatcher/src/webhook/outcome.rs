//! What a delivery attempt's result makes us do (kept apart from the mechanism that
//! does it), and the retry schedule.
//!
//! | result | action |
//! |---|---|
//! | 2xx | done |
//! | timeout, connection error, 408, 429, 5xx | retry after backoff (Retry-After honoured within bounds) |
//! | 410 Gone | dead-letter and disable the subscription |
//! | other 4xx, 1xx, 3xx (redirects are not followed) | dead-letter at once |

use std::time::Duration;

use crate::subscriptions::RetryPolicy;

/// The result of one attempt, as far as the decision needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The partner answered with this status (and maybe a Retry-After, in seconds).
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No answer: connect failure, timeout, reset.
    Transport(String),
    /// Refused before sending (SSRF guard, bad URL): retrying cannot help.
    Refused(String),
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Delivered,
    /// Try again; the server asked for at least this long (Retry-After), if anything.
    Retry {
        at_least: Option<Duration>,
    },
    DeadLetter,
    /// 410 Gone: dead-letter and disable the subscription.
    Gone,
}

pub fn classify(attempt: &Attempt) -> Decision {
    match attempt {
        Attempt::Status {
            status,
            retry_after,
        } => match status {
            200..=299 => Decision::Delivered,
            408 | 429 | 500..=599 => Decision::Retry {
                at_least: *retry_after,
            },
            410 => Decision::Gone,
            _ => Decision::DeadLetter,
        },
        Attempt::Transport(_) => Decision::Retry { at_least: None },
        Attempt::Refused(_) => Decision::DeadLetter,
    }
}

/// What an attempt tells flow control about the partner's health (separate from what
/// happens to the record, which [`classify`] decides). `key_failed_at`: the mark of the
/// key's last failure, if it failed before (a server error may then be the key's own).
pub fn flow_signal(
    attempt: &Attempt,
    latency: Duration,
    key_failed_at: Option<crate::webhook::flow::Accepted>,
) -> crate::webhook::flow::Signal {
    use crate::webhook::flow::Signal;
    match attempt {
        Attempt::Status {
            status: 408 | 429 | 502..=504,
            retry_after,
        } => Signal::Overloaded {
            retry_after: *retry_after,
        },
        Attempt::Status {
            status: 500..=599, ..
        } => Signal::ServerError { key_failed_at },
        Attempt::Status { .. } => Signal::Answered { latency },
        Attempt::Transport(_) => Signal::Failed,
        Attempt::Refused(_) => Signal::Neutral,
    }
}

/// The delay before retry number `retry` (1 = the first retry): exponential from
/// `initial_backoff_ms`, capped, with "equal jitter" (half fixed, half random) so that
/// retries of many records do not arrive together. A Retry-After raises the delay, up to
/// the cap.
pub fn backoff(
    policy: &RetryPolicy,
    retry: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Duration {
    let cap = Duration::from_millis(policy.max_backoff_ms);
    let exp = policy
        .initial_backoff_ms
        .saturating_mul(1u64 << retry.saturating_sub(1).min(30));
    let base = Duration::from_millis(exp).min(cap);
    let jittered = base / 2 + base.mul_f64(jitter.clamp(0.0, 1.0) / 2.0);
    match retry_after {
        Some(ra) => jittered.max(ra.min(cap)),
        None => jittered,
    }
}

/// Whether another attempt may start after `attempts` attempts and `elapsed` since the
/// first, waiting `delay` first.
pub fn may_retry(policy: &RetryPolicy, attempts: u32, elapsed: Duration, delay: Duration) -> bool {
    attempts < policy.max_attempts
        && elapsed + delay <= Duration::from_secs(policy.max_elapsed_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(s: u16) -> Decision {
        classify(&Attempt::Status {
            status: s,
            retry_after: None,
        })
    }

    #[test]
    fn the_outcome_table() {
        for s in [200, 201, 204, 299] {
            assert_eq!(status(s), Decision::Delivered, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert_eq!(status(s), Decision::Retry { at_least: None }, "{s}");
        }
        assert_eq!(status(410), Decision::Gone);
        for s in [100, 301, 302, 307, 400, 401, 403, 404, 413, 422] {
            assert_eq!(status(s), Decision::DeadLetter, "{s}");
        }
        assert_eq!(
            classify(&Attempt::Transport("timeout".into())),
            Decision::Retry { at_least: None }
        );
        assert_eq!(
            classify(&Attempt::Refused("ssrf".into())),
            Decision::DeadLetter
        );
        let ra = Some(Duration::from_secs(7));
        assert_eq!(
            classify(&Attempt::Status {
                status: 429,
                retry_after: ra
            }),
            Decision::Retry { at_least: ra }
        );
    }

    #[test]
    fn backoff_doubles_is_capped_jittered_and_honours_retry_after_within_the_cap() {
        let p = RetryPolicy {
            initial_backoff_ms: 100,
            max_backoff_ms: 1000,
            ..Default::default()
        };
        assert_eq!(backoff(&p, 1, None, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&p, 1, None, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(&p, 3, None, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(&p, 10, None, 1.0), Duration::from_millis(1000));
        assert_eq!(
            backoff(&p, 60, None, 1.0),
            Duration::from_millis(1000),
            "no overflow"
        );
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_millis(700)), 0.0),
            Duration::from_millis(700)
        );
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(3600)), 0.0),
            Duration::from_millis(1000),
            "Retry-After capped"
        );
    }

    #[test]
    fn the_policy_is_spent_by_attempts_or_by_time() {
        let p = RetryPolicy {
            max_attempts: 3,
            max_elapsed_secs: 10,
            ..Default::default()
        };
        assert!(may_retry(
            &p,
            2,
            Duration::from_secs(1),
            Duration::from_secs(1)
        ));
        assert!(!may_retry(
            &p,
            3,
            Duration::from_secs(1),
            Duration::from_secs(1)
        ));
        assert!(!may_retry(
            &p,
            1,
            Duration::from_secs(9),
            Duration::from_secs(2)
        ));
    }
}
