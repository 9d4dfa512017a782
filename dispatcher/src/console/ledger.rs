//! What every API instance must agree on for the console, kept in a topic they all
//! follow (`--console-topic`, default `console-ledger`; one partition, records kept 2
//! days, longer than any link or session lives): the portal links used, the partners
//! whose sessions were ended, the sessions signed out.
//!
//! A link is used by whoever's claim comes first in the topic: an instance writes its
//! claim, waits until it has read the topic up to that record, and takes the link only
//! if the first claim it read for it is its own. So two instances opening one link at
//! the same moment start one session, and a restart forgets nothing.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::kafka::{Journal, KafkaSettings};

/// How long the topic keeps its records (2 days): more than a link (24 h) or a session
/// (8 h) lives.
pub const RETENTION_MS: &str = "172800000";

/// One record of the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// An instance claims portal link `id` (expiring at `exp`, Unix ms).
    LinkClaimed { id: String, exp: i64, claim: String },
    /// Every session of `partner` issued until `at` (Unix ms) is over.
    PartnerEnded { partner: String, at: i64 },
    /// Session `id` (expiring at `exp`) was signed out.
    SessionRevoked { id: String, exp: i64 },
}

/// What the ledger says, as read so far.
#[derive(Debug, Default)]
pub struct State {
    /// Link id -> (the first claim read, its expiry).
    used: HashMap<String, (String, i64)>,
    ended: HashMap<String, i64>,
    revoked: HashMap<String, i64>,
}

impl State {
    pub fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::LinkClaimed { id, exp, claim } => {
                self.used.entry(id).or_insert((claim, exp));
            }
            Entry::PartnerEnded { partner, at } => {
                let e = self.ended.entry(partner).or_insert(at);
                *e = (*e).max(at);
            }
            Entry::SessionRevoked { id, exp } => {
                self.revoked.insert(id, exp);
            }
        }
    }

    /// Forgets what expired before `now` (links and sessions past their expiry).
    fn prune(&mut self, now: i64) {
        self.used.retain(|_, (_, exp)| *exp > now);
        self.revoked.retain(|_, exp| *exp > now);
    }

    pub fn link_used(&self, id: &str) -> bool {
        self.used.contains_key(id)
    }

    /// The claim that won link `id`, if any.
    pub fn winner(&self, id: &str) -> Option<&str> {
        self.used.get(id).map(|(c, _)| c.as_str())
    }

    /// Whether a grant of `partner` (if any) issued at `iat` with id `id` is over.
    pub fn ended(&self, partner: Option<&str>, iat: i64, id: &str) -> bool {
        partner
            .and_then(|p| self.ended.get(p))
            .is_some_and(|until| iat <= *until)
            || self.revoked.contains_key(id)
    }
}

impl crate::kafka::Journaled for State {
    type Entry = Entry;
    const WHAT: &'static str = "the console ledger";

    fn apply(&mut self, entry: Entry) {
        State::apply(self, entry)
    }

    fn prune(&mut self, now_ms: i64) {
        State::prune(self, now_ms)
    }
}

/// The ledger of one API instance (`crate::kafka::Journal`).
pub type Ledger = Journal<State>;

impl Journal<State> {
    /// Makes the topic if missing, starts following it, and returns once everything in
    /// it when called has been read.
    pub async fn open(
        settings: &KafkaSettings,
        topic: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        Self::start(
            settings,
            topic,
            &[("retention.ms", RETENTION_MS), ("cleanup.policy", "delete")],
            stop,
        )
        .await
    }

    /// Writes `entry` (keyed by what it is about) and waits until this instance has
    /// read it back.
    pub async fn note(&self, entry: &Entry) -> anyhow::Result<()> {
        let key = match entry {
            Entry::LinkClaimed { id, .. } | Entry::SessionRevoked { id, .. } => id.as_str(),
            Entry::PartnerEnded { partner, .. } => partner.as_str(),
        };
        self.write(key, entry).await
    }

    /// Claims portal link `id`: true if this claim is the first in the topic.
    pub async fn claim_link(&self, id: &str, exp: i64) -> anyhow::Result<bool> {
        let claim = uuid::Uuid::new_v4().simple().to_string();
        self.note(&Entry::LinkClaimed {
            id: id.to_string(),
            exp,
            claim: claim.clone(),
        })
        .await?;
        Ok(self.read(|s| s.winner(id) == Some(claim.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_claim_of_a_link_wins_and_expiries_only_grow() {
        let mut s = State::default();
        let claim = |id: &str, c: &str| Entry::LinkClaimed {
            id: id.into(),
            exp: 10_000,
            claim: c.into(),
        };
        s.apply(claim("l1", "a"));
        s.apply(claim("l1", "b"));
        assert_eq!(s.winner("l1"), Some("a"));
        assert!(s.link_used("l1") && !s.link_used("l2"));
        s.apply(Entry::PartnerEnded {
            partner: "acme".into(),
            at: 500,
        });
        s.apply(Entry::PartnerEnded {
            partner: "acme".into(),
            at: 100,
        });
        assert!(s.ended(Some("acme"), 500, "x"), "issued at the end: over");
        assert!(!s.ended(Some("acme"), 501, "x"), "issued after: not");
        assert!(
            !s.ended(None, 0, "x"),
            "an operator's session is not a partner's"
        );
        s.apply(Entry::SessionRevoked {
            id: "s1".into(),
            exp: 10_000,
        });
        assert!(s.ended(None, 0, "s1"));
        s.prune(20_000);
        assert!(
            !s.link_used("l1") && !s.ended(None, 0, "s1"),
            "expired ones forgotten"
        );
    }
}
