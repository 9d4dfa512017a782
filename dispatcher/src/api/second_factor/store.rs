//! The partners' second factors, shared by every API instance through a compacted
//! topic (`--second-factor-topic`, `crate::kafka::Journal`): per partner its enrolment
//! (the TOTP secret, pending or confirmed), the last step whose code was accepted (a
//! code is accepted once: the first claim of a step in the topic wins, and no older
//! step is accepted after it), and its wrong codes of the last 15 minutes.
//!
//! Keys: `<partner>/enrolment`, `<partner>/used`, `<partner>/failed`; compaction keeps
//! the last of each, which is all a restart needs (the failures of a window are kept
//! while the topic is not compacted, so a restart may forget some of them).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// How long wrong codes count towards the lockout.
pub const FAILURE_WINDOW_MS: i64 = 15 * 60 * 1000;
/// Wrong codes in [`FAILURE_WINDOW_MS`] after which the operations answer 429.
pub const MAX_FAILURES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrolState {
    /// Enrolled, not confirmed with a code yet: not enforced.
    Pending,
    Confirmed,
    /// Reset by an operator: none.
    Reset,
}

/// One record of the topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Enrolment {
        partner: String,
        state: EnrolState,
        /// Base32 (empty once reset).
        secret: String,
        at: i64,
    },
    /// A claim of a code of `step`.
    Used {
        partner: String,
        step: i64,
        claim: String,
        at: i64,
    },
    Failed {
        partner: String,
        at: i64,
    },
}

impl Record {
    pub fn key(&self) -> String {
        match self {
            Record::Enrolment { partner, .. } => format!("{partner}/enrolment"),
            Record::Used { partner, .. } => format!("{partner}/used"),
            Record::Failed { partner, .. } => format!("{partner}/failed"),
        }
    }
}

/// A partner's enrolment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolment {
    pub state: EnrolState,
    pub secret: Vec<u8>,
    pub at: i64,
}

/// What the topic says, as read so far.
#[derive(Debug, Default)]
pub struct Factors {
    enrolments: HashMap<String, Enrolment>,
    last_step: HashMap<String, i64>,
    /// Claims that won, with when (kept 10 minutes).
    accepted: HashMap<String, i64>,
    failures: HashMap<String, Vec<i64>>,
}

impl Factors {
    /// The partner's enrolment, pending or confirmed (`None`: none, or reset).
    pub fn enrolment(&self, partner: &str) -> Option<&Enrolment> {
        self.enrolments
            .get(partner)
            .filter(|e| e.state != EnrolState::Reset)
    }

    /// The last enrolment record in force for `partner` (a reset included).
    pub fn in_force(&self, partner: &str) -> Option<&Enrolment> {
        self.enrolments.get(partner)
    }

    pub fn accepted(&self, claim: &str) -> bool {
        self.accepted.contains_key(claim)
    }

    /// The wrong codes of `partner` within the window before `now` (Unix ms), oldest
    /// first.
    pub fn failures(&self, partner: &str, now: i64) -> Vec<i64> {
        self.failures
            .get(partner)
            .map(|f| {
                f.iter()
                    .copied()
                    .filter(|at| now - at < FAILURE_WINDOW_MS)
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl crate::kafka::Journaled for Factors {
    type Entry = Record;
    const WHAT: &'static str = "the second-factor topic";

    fn apply(&mut self, record: Record) {
        match record {
            Record::Enrolment {
                partner,
                state,
                secret,
                at,
            } => {
                let Some(secret) = super::totp::base32_decode(&secret) else {
                    tracing::warn!(%partner, "a second-factor enrolment whose secret is not base32: skipped");
                    return;
                };
                // Decided in topic order, whatever each writer read: a new enrolment
                // does not replace a confirmed one (only a reset does), and a
                // confirmation counts only for the secret waiting for it. The first
                // record of a partner applies whatever it is: after compaction it is the
                // last one written, and a writer whose record did not apply writes the
                // state in force again (`SecondFactors::restate`), so the last record is
                // always the state in force.
                let current = self.enrolments.get(&partner);
                let applies = match (state, current) {
                    (_, None) | (EnrolState::Reset, _) => true,
                    (EnrolState::Pending, Some(c)) => c.state != EnrolState::Confirmed,
                    (EnrolState::Confirmed, Some(c)) => {
                        c.state != EnrolState::Reset && c.secret == secret
                    }
                };
                if applies {
                    self.enrolments
                        .insert(partner, Enrolment { state, secret, at });
                }
            }
            Record::Used {
                partner,
                step,
                claim,
                at,
            } => {
                let last = self.last_step.entry(partner).or_insert(i64::MIN);
                if step > *last {
                    *last = step;
                    self.accepted.insert(claim, at);
                }
            }
            Record::Failed { partner, at } => {
                self.failures.entry(partner).or_default().push(at);
            }
        }
    }

    fn prune(&mut self, now_ms: i64) {
        self.accepted.retain(|_, at| now_ms - *at < 10 * 60 * 1000);
        self.failures.retain(|_, f| {
            f.retain(|at| now_ms - at < FAILURE_WINDOW_MS);
            !f.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::Journaled;

    #[test]
    fn the_first_claim_of_a_step_wins_and_no_older_step_is_accepted_after_it() {
        let mut f = Factors::default();
        let used = |step: i64, claim: &str| Record::Used {
            partner: "acme".into(),
            step,
            claim: claim.into(),
            at: 1,
        };
        f.apply(used(10, "a"));
        f.apply(used(10, "b"));
        f.apply(used(9, "c"));
        f.apply(used(11, "d"));
        assert!(f.accepted("a") && !f.accepted("b") && !f.accepted("c") && f.accepted("d"));
    }

    #[test]
    fn wrong_codes_count_for_fifteen_minutes_and_a_reset_forgets_the_enrolment() {
        let mut f = Factors::default();
        for at in [0, 1000, FAILURE_WINDOW_MS] {
            f.apply(Record::Failed {
                partner: "acme".into(),
                at,
            });
        }
        assert_eq!(f.failures("acme", FAILURE_WINDOW_MS + 500).len(), 2);
        let enrol = |state, secret: &str| Record::Enrolment {
            partner: "acme".into(),
            state,
            secret: secret.into(),
            at: 5,
        };
        f.apply(enrol(EnrolState::Reset, ""));
        f.apply(enrol(EnrolState::Confirmed, "MZXW6YTBOI"));
        assert!(
            f.enrolment("acme").is_none(),
            "a confirmation after a reset"
        );
        f.apply(enrol(EnrolState::Pending, "MZXW6YTBOI"));
        f.apply(enrol(EnrolState::Confirmed, "MY"));
        assert_eq!(
            f.enrolment("acme").map(|e| e.state),
            Some(EnrolState::Pending),
            "a confirmation of another secret"
        );
        f.apply(enrol(EnrolState::Confirmed, "MZXW6YTBOI"));
        assert_eq!(
            f.enrolment("acme").map(|e| e.state),
            Some(EnrolState::Confirmed)
        );
        f.apply(enrol(EnrolState::Pending, "MY"));
        assert_eq!(
            f.enrolment("acme").map(|e| e.state),
            Some(EnrolState::Confirmed),
            "a racing enrolment does not undo a confirmed one"
        );
        f.apply(Record::Enrolment {
            partner: "acme".into(),
            state: EnrolState::Reset,
            secret: String::new(),
            at: 6,
        });
        assert!(f.enrolment("acme").is_none());
    }

    #[test]
    fn after_compaction_a_partners_only_record_applies() {
        let mut f = Factors::default();
        f.apply(Record::Enrolment {
            partner: "acme".into(),
            state: EnrolState::Confirmed,
            secret: "MZXW6YTBOI".into(),
            at: 5,
        });
        assert_eq!(
            f.enrolment("acme").map(|e| e.state),
            Some(EnrolState::Confirmed)
        );
    }
}
