//! The router's payload filters (#26): which of an event's matched subscriptions pass
//! their filters, and the filters' tallies written to the delivery log.

use std::time::Duration;

use order_schemas::OrderEvent;
use tokio_util::sync::CancellationToken;

use crate::subscriptions::filter::{Bound, Paths};
use crate::subscriptions::table::SubscriptionTable;

/// The subscriptions among `matched` whose payload filter passes `event` (the event is
/// bound once, and only when one of them has a filter). A filter that fails on the
/// event counts as not passing; both are counted per subscription.
pub fn filtered(
    event: &OrderEvent,
    matched: Vec<crate::subscriptions::table::Matched>,
) -> Vec<crate::subscriptions::table::Matched> {
    // The paths the filters CEL runs read, together (most often one filter, or one
    // repeated); those of the common shape run on the typed event.
    let mut paths: Option<std::borrow::Cow<'_, Paths>> = None;
    for f in matched
        .iter()
        .filter_map(|m| m.filter.as_ref()?.filter.as_ref())
        .filter(|f| !f.is_typed())
    {
        let more = f.paths();
        match &mut paths {
            None => paths = Some(std::borrow::Cow::Borrowed(more)),
            Some(p) if p.covers(more) => {}
            Some(p) => p.to_mut().merge(more),
        }
    }
    if matched.iter().all(|m| m.filter.is_none()) {
        return matched;
    }
    let bound = paths.map(|p| Bound::new(event, &p));
    matched
        .into_iter()
        .filter(|m| {
            let Some(f) = &m.filter else { return true };
            let Some(filter) = &f.filter else {
                f.kept_back(true);
                return false;
            };
            let passes = filter.matches_typed(event).unwrap_or_else(|| match &bound {
                Some(bound) => filter.matches(bound),
                // (Not reached: a filter without the common shape added its paths.)
                None => Err("the event was not bound".into()),
            });
            match passes {
                Ok(true) => true,
                Ok(false) => {
                    f.kept_back(false);
                    false
                }
                Err(why) => {
                    f.kept_back(true);
                    tracing::debug!(subscription = %m.subscription.id, event_id = %event.event_id(), %why, "filter failed on an event: not delivered");
                    false
                }
            }
        })
        .collect()
}

/// Writes the filters' tallies ([`SubscriptionTable::take_tallies`]) to the delivery
/// log every `every`, and once more when `routed` is cancelled (the router finished;
/// waiting at most 5 s for it).
pub async fn write_tallies(
    table: SubscriptionTable,
    log: crate::attempts::AttemptLog,
    every: Duration,
    routed: CancellationToken,
) {
    let mut from = chrono::Utc::now();
    loop {
        let stopping = tokio::select! {
            _ = routed.cancelled() => true,
            _ = tokio::time::sleep(every) => false,
        };
        let to = chrono::Utc::now();
        let pending: Vec<_> = table
            .take_tallies()
            .into_iter()
            .map(|t| {
                log.queue_tally(&crate::attempts::FilterTally {
                    v: crate::attempts::VERSION,
                    kind: "filter_tally".into(),
                    partner: t.partner,
                    subscription_id: t.subscription_id,
                    from,
                    to,
                    filtered_out: t.filtered_out,
                    errors: t.errors,
                })
            })
            .collect();
        from = to;
        if !pending.is_empty() {
            // (A write that fails for 5 s loses these counts, never delays routing.)
            let never = CancellationToken::new();
            let written = log.acknowledged(pending, &never);
            if tokio::time::timeout(Duration::from_secs(5), written)
                .await
                .is_err()
            {
                tracing::warn!("filter tallies not written to the delivery log within 5 s");
            }
        }
        if stopping {
            return;
        }
    }
}
