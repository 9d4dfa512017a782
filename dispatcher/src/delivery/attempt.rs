//! The attempt loop: before each attempt the subscription as it is now (held while
//! paused), a flow permit, the signed request, then what the outcome table decides:
//! delivered, retried after backoff, parked, or dead-lettered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::dead_letter::{dead_letter, DeadLetterReason, Failure};
use super::gate::Ticket;
use super::park::{park, Parked};
use super::trail::{Attempted, Trail};
use super::{Job, JobContext, JobEnd};
use crate::attempts::Outcome;
use crate::metrics as m;
use crate::webhook::client::Webhook;
use crate::webhook::flow::{Blame, Circuit, Signal};
use crate::webhook::outcome::{backoff, classify, flow_signal, may_retry, Attempt, Decision};

pub(super) async fn deliver(
    job: &Job,
    ctx: &JobContext,
    ticket: &mut Ticket,
    trail: &mut Trail<'_>,
) -> JobEnd {
    let partner = &ctx.partner;
    let lm = &ctx.metrics;
    let mut started = Instant::now();
    let mut first = chrono::Utc::now();
    let mut attempts = 0u32;
    // When the record's key last failed (see flow::Signal::ServerError): a record of the
    // retry topic is there because its key failed; one of the delivery topic learns it
    // at its first failure.
    let mut key_failed_at = job.parked.as_ref().map(|_| ctx.flow.accepted());
    if let Some(parked) = &job.parked {
        // Go on where the lane stopped: the same attempt count and retry budget.
        attempts = parked.attempts;
        if let Some(f) = parked.first {
            first = f;
            let spent = (chrono::Utc::now() - f).to_std().unwrap_or_default();
            started = Instant::now().checked_sub(spent).unwrap_or(started);
        }
        let wait = (parked.not_before - chrono::Utc::now())
            .to_std()
            .unwrap_or_default();
        // A retry: waiting for it must not keep new records from starting.
        ticket.give_up();
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return JobEnd::Interrupted,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let done = |written: bool| {
        if written {
            JobEnd::Finished
        } else {
            JobEnd::Interrupted
        }
    };
    // The `lane_to_request` hop: from the intake's read to the first request, once, for
    // a record of the delivery topic (a parked one waited on purpose), and not when a
    // paused subscription held it (the pause is not the lane's time).
    let mut untimed = job.read_at.filter(|_| job.parked.is_none());
    loop {
        // Before every attempt: the subscription as it is now (a URL or secret change
        // applies to the next attempt). A paused or disconnected one holds the record
        // here, in order, until it is resumed (or deleted, or shutdown leaves the record
        // unfinished for the next owner); the retry budget starts again after a hold.
        let (target, held) = match hold(job, ctx, ticket).await {
            Hold::Ready { target, held } => (target, held),
            Hold::Unsubscribed => {
                lm.dropped.increment(1);
                let why = "the subscription was deleted".to_string();
                trail.ended(Outcome::Dropped, Some(("subscription_deleted", why)));
                return JobEnd::Finished;
            }
            Hold::Invalid(reason) => {
                let logged = (reason.code(), reason.to_string());
                let failure = Failure::unsent(reason, attempts, first);
                let written = dead_letter(job, ctx, failure).await;
                if written {
                    trail.ended(Outcome::DeadLettered, Some(logged));
                }
                return done(written);
            }
            Hold::Shutdown => return JobEnd::Interrupted,
        };
        if held {
            untimed = None;
            started = Instant::now();
            first = chrono::Utc::now();
            attempts = 0;
        }
        let subscription = &target.subscription;
        if subscription.disabled {
            let reason = DeadLetterReason::SubscriptionDisabled;
            let logged = (reason.code(), reason.to_string());
            let failure = Failure::unsent(reason, attempts, first);
            let written = dead_letter(job, ctx, failure).await;
            if written {
                trail.ended(Outcome::DeadLettered, Some(logged));
            }
            return done(written);
        }
        let permit = tokio::select! {
            _ = ctx.shutdown.cancelled() => return JobEnd::Interrupted,
            p = ctx.flow.acquire(&ctx.shutdown) => match p { Some(p) => p, None => return JobEnd::Interrupted },
        };
        ticket.give_up();
        // The wait for a permit can be long (an open circuit): look again.
        let latest = ctx.table.target(&job.subscription_id);
        if latest
            .as_ref()
            .is_none_or(|t| !Arc::ptr_eq(&t.subscription, &target.subscription))
        {
            ctx.flow.release(permit, Signal::Neutral);
            continue;
        }
        attempts += 1;
        if let Some(read_at) = untimed.take() {
            lm.lane_to_request.record(read_at.elapsed().as_secs_f64());
        }
        lm.in_flight.increment(1.0);
        let hook = Webhook {
            url: &target.url,
            id: &job.webhook_id,
            body: &job.body,
            secrets: &target.keys[..subscription.active_keys(chrono::Utc::now())],
            traceparent: job.traceparent.as_deref(),
            timeout: subscription.request_timeout(),
            ca: target.ca.as_ref(),
        };
        let attempt_started = chrono::Utc::now();
        let report = ctx.client.send(&hook).await;
        let attempted = || Attempted {
            url: &target.url,
            started_at: attempt_started,
            report: &report,
        };
        let signal = flow_signal(&report.attempt, report.elapsed, key_failed_at);
        let server_error = matches!(signal, Signal::ServerError { .. });
        let blame = ctx.flow.release(permit, signal);
        lm.in_flight.decrement(1.0);
        lm.attempt(&report.attempt).increment(1);
        ctx.health.attempt(matches!(
            report.attempt,
            Attempt::Status {
                status: 200..=299,
                ..
            }
        ));
        lm.attempt_seconds.record(report.elapsed.as_secs_f64());
        let (last_status, last_error) = match &report.attempt {
            Attempt::Status { status, .. } => (Some(*status), None),
            Attempt::Transport(e) | Attempt::Refused(e) => (None, Some(e.clone())),
        };
        let failure = |reason: DeadLetterReason| Failure {
            reason,
            attempts,
            first: Some(first),
            last: Some(chrono::Utc::now()),
            last_status,
            last_error: last_error.clone(),
            excerpt: report.excerpt.clone().map(|mut e| {
                crate::attempts::truncate(&mut e, crate::webhook::client::EXCERPT_BYTES);
                e
            }),
        };
        let mut decision = classify(&report.attempt);
        if decision == Decision::Gone && subscription.checking_new_url() {
            // A 410 from the previous URL while the new one is not verified (pending,
            // or failed and to be asked again): the partner turned the old endpoint off
            // early. Not a reason to disable the subscription (the partner wants the
            // new URL): retried like a 503, within the retry policy, until the new URL
            // is verified.
            tracing::info!(partner = %partner, subscription = %subscription.id, "410 Gone from the previous URL while the new one is checked: retrying");
            decision = Decision::Retry { at_least: None };
        }
        match decision {
            Decision::Delivered => {
                lm.delivered.increment(1);
                if let Some(at) = job.occurred_at_ms {
                    let ms = chrono::Utc::now()
                        .timestamp_millis()
                        .saturating_sub(at)
                        .max(0);
                    lm.time_to_webhook.record(ms as f64 / 1000.0);
                }
                trail.attempted(attempted(), Outcome::Delivered, None);
                return JobEnd::Finished;
            }
            Decision::Gone
                if ctx.table.get(&subscription.id).is_some_and(|now| {
                    now.url != subscription.url || now.delivery_url() != subscription.delivery_url()
                }) =>
            {
                // The URL changed while this request was out: the old endpoint is gone,
                // the new one has not been asked yet.
                tracing::info!(partner = %partner, subscription = %subscription.id, "410 Gone from a URL no longer in use: retrying at the current URL");
                let now = Some(chrono::Utc::now());
                trail.attempted(attempted(), Outcome::RetryScheduled, now);
                continue;
            }
            Decision::Gone => {
                tracing::warn!(partner = %partner, subscription = %subscription.id, "410 Gone: disabling the subscription");
                metrics::counter!(m::DISABLED, "partner" => partner.clone()).increment(1);
                let mut disabled = (**subscription).clone();
                disabled.disabled = true;
                (ctx.on_gone.0)(disabled);
                let written = dead_letter(job, ctx, failure(DeadLetterReason::Gone)).await;
                if written {
                    trail.attempted(attempted(), Outcome::DeadLettered, None);
                }
                return done(written);
            }
            Decision::DeadLetter => {
                let reason = match (&report.attempt, last_status) {
                    (Attempt::Refused(why), _) => DeadLetterReason::Refused(why.clone()),
                    (_, Some(s)) => DeadLetterReason::Status(s),
                    _ => DeadLetterReason::NotRetried,
                };
                let written = dead_letter(job, ctx, failure(reason)).await;
                if written {
                    trail.attempted(attempted(), Outcome::DeadLettered, None);
                }
                return done(written);
            }
            Decision::Retry { at_least } => {
                // Only a server error marks the key (a timeout or 503 is the partner's).
                if server_error {
                    key_failed_at = Some(ctx.flow.accepted());
                }
                let delay = backoff(
                    &subscription.retry,
                    attempts,
                    at_least,
                    rand::random::<f64>(),
                );
                if !may_retry(&subscription.retry, attempts, started.elapsed(), delay) {
                    let spent = failure(DeadLetterReason::RetriesSpent { attempts });
                    let written = dead_letter(job, ctx, spent).await;
                    if written {
                        trail.attempted(attempted(), Outcome::DeadLettered, None);
                    }
                    return done(written);
                }
                lm.retries.increment(1);
                // The lane's budget is spent, or the failure is the key's own (it failed
                // before and the partner accepted others since), while the partner takes
                // other records (its circuit is closed): the record waits in the retry
                // topic, its key is parked, and the lane's offset moves on. When the
                // whole partner fails, parking would only copy its backlog: records wait
                // in the lane.
                if job.parked.is_none()
                    && ctx
                        .park_after
                        .is_some_and(|n| attempts >= n || blame == Blame::Key)
                    && ctx.flow.circuit() == Circuit::Closed
                {
                    let parked = Parked {
                        attempts,
                        first: Some(first),
                        not_before: later(delay),
                    };
                    let end = park(job, ctx, &parked).await;
                    if matches!(end, JobEnd::Parked { .. }) {
                        let next = Some(parked.not_before);
                        trail.attempted(attempted(), Outcome::Parked, next);
                    }
                    return end;
                }
                trail.attempted(attempted(), Outcome::RetryScheduled, Some(later(delay)));
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return JobEnd::Interrupted,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Now plus `delay`, saturating instead of panicking past chrono's range (delays are
/// bounded by the validated retry policy; this only keeps a bad one from killing the lane).
fn later(delay: Duration) -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

enum Hold {
    Ready {
        target: Arc<crate::subscriptions::table::Target>,
        /// Whether the record waited for a pause or disconnect to end.
        held: bool,
    },
    /// The subscription was deleted: its backlog is dropped (the partner guide says so).
    Unsubscribed,
    /// The record cannot be delivered as its subscription stands (invalid here, or the
    /// record names none): it is dead-lettered with this reason.
    Invalid(DeadLetterReason),
    Shutdown,
}

/// Waits while the record's subscription is paused, disconnected or new and not verified
/// yet (woken by changes of
/// the subscription table, not by polling it).
async fn hold(job: &Job, ctx: &JobContext, ticket: &mut Ticket) -> Hold {
    let mut held = false;
    // Counted as waiting by policy while held (lane::throttle).
    let mut _holding = None;
    let mut changes = ctx.table.watch();
    loop {
        // Marked seen before the look, so a change right after it still wakes us.
        changes.borrow_and_update();
        let Some(target) = ctx.table.target(&job.subscription_id) else {
            if job.subscription_id.is_empty() {
                return Hold::Invalid(DeadLetterReason::NoSubscriptionId);
            }
            if let Some(invalid) = ctx.table.invalid(&job.subscription_id) {
                return Hold::Invalid(DeadLetterReason::SubscriptionInvalid(
                    invalid.reason.clone(),
                ));
            }
            // Deleted: nothing to deliver, nothing to keep.
            return Hold::Unsubscribed;
        };
        let s = &target.subscription;
        // (A new subscription whose URL is not verified yet has none to deliver to.)
        if !s.paused && s.disconnected.is_none() && s.delivery_url().is_some() {
            return Hold::Ready { target, held };
        }
        held = true;
        if job.parked.is_none() && _holding.is_none() {
            // (A parked record counts as waiting already.)
            _holding = Some(ctx.health.holding());
        }
        ticket.give_up();
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Hold::Shutdown,
            changed = changes.changed() => if changed.is_err() { return Hold::Shutdown },
        }
    }
}
