//! The payload filters' side of the table: each subscription's compiled filter with its
//! counters, and the tallies the router writes to the delivery log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::SubscriptionTable;
use crate::metrics as m;
use crate::subscriptions::Subscription;

/// What a subscription's filter kept from it since the last [`SubscriptionTable::take_tallies`].
#[derive(Debug)]
pub struct Tally {
    partner: String,
    filtered_out: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
}

/// One subscription's counts taken from its [`Tally`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub partner: String,
    pub subscription_id: String,
    pub filtered_out: u64,
    pub errors: u64,
}

/// A subscription's compiled filter and what it counts (per subscription, in
/// `dispatcher_filtered_events_total`).
#[derive(Debug)]
pub struct TargetFilter {
    /// `None` when it did not compile here (it did when validated: only a failure of
    /// this instance, such as no thread to parse on): then it delivers nothing, and
    /// counts every event as an error.
    pub filter: Option<crate::subscriptions::filter::Filter>,
    /// Events the filter refused.
    pub filtered_out: metrics::Counter,
    /// Events the filter failed on (not delivered either).
    pub errors: metrics::Counter,
    /// The same counts for the delivery log (kept across versions of the subscription).
    tally: Arc<Tally>,
}

impl TargetFilter {
    /// Counts an event the filter kept back: `failed` when it failed on it.
    pub fn kept_back(&self, failed: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if failed {
            self.errors.increment(1);
            self.tally.errors.fetch_add(1, Relaxed);
        } else {
            self.filtered_out.increment(1);
            self.tally.filtered_out.fetch_add(1, Relaxed);
        }
    }

    pub(super) fn new(
        s: &Subscription,
        tallies: &Mutex<HashMap<String, Arc<Tally>>>,
    ) -> Option<Arc<Self>> {
        let source = s.filter.as_deref()?;
        let filter = crate::subscriptions::filter::Filter::compile(source, &s.event_types)
            .inspect_err(|error| {
                tracing::error!(subscription = %s.id, %error, "a filter that was valid does not compile here: its events are not delivered");
            })
            .ok();
        let counter = |outcome: &'static str| {
            metrics::counter!(
                m::FILTERED,
                "partner" => s.partner_id.clone(),
                "subscription" => s.id.clone(),
                "outcome" => outcome
            )
        };
        let tally = tallies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(s.id.clone())
            .or_insert_with(|| {
                Arc::new(Tally {
                    partner: s.partner_id.clone(),
                    filtered_out: Default::default(),
                    errors: Default::default(),
                })
            })
            .clone();
        Some(Arc::new(Self {
            filter,
            filtered_out: counter("filtered_out"),
            errors: counter("error"),
            tally,
        }))
    }
}

impl SubscriptionTable {
    /// Takes the counts of every filter since the last call (the tallies of deleted
    /// subscriptions, once taken, are forgotten).
    pub fn take_tallies(&self) -> Vec<Taken> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut tallies = self.tallies.lock().unwrap_or_else(|p| p.into_inner());
        let mut taken = Vec::new();
        for (id, t) in tallies.iter() {
            let (filtered_out, errors) =
                (t.filtered_out.swap(0, Relaxed), t.errors.swap(0, Relaxed));
            if filtered_out + errors > 0 {
                taken.push(Taken {
                    partner: t.partner.clone(),
                    subscription_id: id.clone(),
                    filtered_out,
                    errors,
                });
            }
        }
        // A tally no filter holds any more (its subscription deleted, or its filter
        // removed): nothing counts into it after the swap above. (Not a look-up in the
        // table: the table's lock is never taken inside this one's.)
        tallies.retain(|_, t| Arc::strong_count(t) > 1);
        taken
    }
}
