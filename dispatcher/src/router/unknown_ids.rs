//! How long routing waits for a schema id the registry does not know yet.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Since when each schema id has been answered "unknown" without a success since. Not
/// a cache of answers: every record still asks the registry; this only bounds how long
/// routing waits for one id (once per episode, not once per record).
///
/// Routing waits inline (every partner waits with it), so the waiting is bounded
/// overall too: once an id's wait ran out without the registry learning it (records
/// with ids nobody registered are flowing), a new unknown id is not waited for during
/// the next 30 waits' time; its records are dead-lettered at once (replayable with
/// `dlq replay --router`).
#[derive(Debug, Default)]
pub struct UnknownIds {
    since: HashMap<u32, Instant>,
    /// When an id's wait last ran out without success.
    expired_at: Option<Instant>,
}

impl UnknownIds {
    /// Most ids remembered; past that the oldest episodes are forgotten.
    const MAX: usize = 10_000;
    /// After an expired wait, new ids are not waited for during this many waits' time.
    const QUIET_WAITS: u32 = 30;

    /// Whether a record with `id`, answered unknown at `now`, should wait and ask again.
    pub fn wait_more(&mut self, id: u32, now: Instant, wait: Duration) -> bool {
        if self.since.len() >= Self::MAX && !self.since.contains_key(&id) {
            self.since.clear();
        }
        let garbage_flowing = self
            .expired_at
            .is_some_and(|t| now.saturating_duration_since(t) < wait * Self::QUIET_WAITS);
        let since = *self.since.entry(id).or_insert_with(|| {
            if garbage_flowing {
                now.checked_sub(wait).unwrap_or(now)
            } else {
                now
            }
        });
        let more = now.saturating_duration_since(since) < wait;
        if !more {
            self.expired_at = Some(now);
        }
        more
    }

    /// The registry knows `id` now.
    pub fn known(&mut self, id: u32) {
        self.since.remove(&id);
    }

    /// A record decoded: its id is known (framing read again only while some id is
    /// being waited for, not for every record).
    pub fn decoded(&mut self, payload: &[u8]) {
        if self.since.is_empty() {
            return;
        }
        if let Ok((id, _)) = order_schemas::wire::unframe(payload) {
            self.known(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_id_is_waited_for_once_per_episode() {
        let mut unknown = UnknownIds::default();
        let wait = Duration::from_secs(20);
        let t0 = Instant::now();
        assert!(unknown.wait_more(7, t0, wait));
        assert!(unknown.wait_more(7, t0 + Duration::from_secs(19), wait));
        // Past the wait: the record is dead-lettered, and so is the next one of that id
        // without another wait (the registry is still asked each time).
        assert!(!unknown.wait_more(7, t0 + Duration::from_secs(20), wait));
        assert!(!unknown.wait_more(7, t0 + Duration::from_secs(30), wait));
        // Once the registry knows the id, a later unknown answer starts a new wait.
        unknown.known(7);
        assert!(unknown.wait_more(7, t0 + Duration::from_secs(20 * 40), wait));
    }

    #[test]
    fn after_a_wait_ran_out_new_unknown_ids_do_not_stall_routing() {
        let mut unknown = UnknownIds::default();
        let wait = Duration::from_secs(20);
        let t0 = Instant::now();
        assert!(unknown.wait_more(7, t0, wait));
        assert!(!unknown.wait_more(7, t0 + wait, wait), "7 ran out");
        // Garbage is flowing: a burst of new ids is dead-lettered at once.
        for id in 100..200 {
            assert!(!unknown.wait_more(id, t0 + wait + Duration::from_secs(1), wait));
        }
        // Long after, a new id is waited for again.
        assert!(unknown.wait_more(8, t0 + wait * 32, wait));
    }
}
