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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::kafka::KafkaSettings;

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

/// The ledger of one API instance: its state, kept up to date by a follower task, and a
/// writer.
#[derive(Clone)]
pub struct Ledger {
    topic: String,
    state: Arc<Mutex<State>>,
    /// The next offset the follower will read.
    applied: watch::Receiver<i64>,
    producer: FutureProducer,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Makes the topic if missing, starts following it, and returns once everything in
    /// it when called has been read.
    pub async fn start(
        settings: &KafkaSettings,
        topic: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<Self> {
        settings
            .ensure_topics(
                &[topic.to_string()],
                1,
                &[("retention.ms", RETENTION_MS), ("cleanup.policy", "delete")],
            )
            .await?;
        let consumer: StreamConsumer = settings.reader().create()?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Beginning)?;
        consumer.assign(&assignment)?;
        let (low, high) = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))
        })?;
        let state = Arc::new(Mutex::new(State::default()));
        // From the oldest record kept: a topic that retention emptied (low == high)
        // has nothing to read before serving.
        let (tx, applied) = watch::channel(low);
        let follow_state = Arc::clone(&state);
        let follow_topic = topic.to_string();
        crate::kafka::follow(consumer, follow_topic.clone(), stop, move |m| {
            let entry = m
                .payload()
                .and_then(|p| serde_json::from_slice::<Entry>(p).ok());
            let mut state = follow_state.lock().unwrap_or_else(|p| p.into_inner());
            match entry {
                Some(entry) => state.apply(entry),
                None => {
                    tracing::warn!(topic = %follow_topic, offset = m.offset(), "a console ledger record that is not one: skipped")
                }
            }
            // (Now and then: catching up on a long topic stays linear.)
            if m.offset() % 256 == 0 {
                state.prune(super::now());
            }
            drop(state);
            tx.send_replace(m.offset() + 1);
        });
        let ledger = Self {
            topic: topic.to_string(),
            state,
            applied,
            producer: settings.producer().create()?,
        };
        ledger.wait_applied(high).await?;
        Ok(ledger)
    }

    /// Reads the state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Writes `entry` and waits until this instance has read it back: what it says
    /// holds here from then on (and on the others once they read it, within moments).
    pub async fn write(&self, entry: &Entry) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(entry)?;
        let key = match entry {
            Entry::LinkClaimed { id, .. } | Entry::SessionRevoked { id, .. } => id.as_str(),
            Entry::PartnerEnded { partner, .. } => partner.as_str(),
        };
        let delivery = self
            .producer
            .send(
                FutureRecord::to(&self.topic).key(key).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("the console ledger refused a record: {e}"))?;
        self.wait_applied(delivery.offset + 1).await
    }

    async fn wait_applied(&self, next: i64) -> anyhow::Result<()> {
        let mut applied = self.applied.clone();
        tokio::time::timeout(Duration::from_secs(10), applied.wait_for(|a| *a >= next))
            .await
            .map_err(|_| anyhow::anyhow!("the console ledger was not read back within 10 s"))?
            .map_err(|_| anyhow::anyhow!("the console ledger's reader stopped"))?;
        Ok(())
    }

    /// Claims portal link `id`: true if this claim is the first in the topic.
    pub async fn claim_link(&self, id: &str, exp: i64) -> anyhow::Result<bool> {
        let claim = uuid::Uuid::new_v4().simple().to_string();
        self.write(&Entry::LinkClaimed {
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
