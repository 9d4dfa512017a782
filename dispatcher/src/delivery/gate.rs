//! The lane's start gate: how many of its jobs are started but not yet sending.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts a lane's jobs that are started but have neither sent their first request nor
/// begun to wait for a paused subscription. The lane starts more only while few are
/// ([`Starting::count`]), so its backlog waits in its own queue rather than as hundreds of
/// tasks parked on the partner's permit, each woken in turn (the deliveries bench: 20 %
/// more deliveries/s). Jobs waiting for a retry or a pause do not count, so a few failing
/// orders never keep the partner's others from starting.
#[derive(Debug, Default, Clone)]
pub struct Starting(Arc<StartingInner>);

#[derive(Debug, Default)]
struct StartingInner {
    count: AtomicUsize,
    /// Told each time a job leaves the count (the lane may start another).
    left: tokio::sync::Notify,
}

impl Starting {
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::Relaxed)
    }

    /// Resolves once a job has left the count since the last call.
    pub async fn left(&self) {
        self.0.left.notified().await
    }

    pub(super) fn ticket(&self) -> Ticket {
        self.0.count.fetch_add(1, Ordering::Relaxed);
        Ticket(Some(Arc::clone(&self.0)))
    }
}

/// A job's place in [`Starting`], given up once (at its first request, its first wait
/// for a pause, or its end).
#[derive(Debug)]
pub(super) struct Ticket(Option<Arc<StartingInner>>);

impl Ticket {
    pub(super) fn give_up(&mut self) {
        if let Some(s) = self.0.take() {
            s.count.fetch_sub(1, Ordering::Relaxed);
            s.left.notify_one();
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.give_up();
    }
}
