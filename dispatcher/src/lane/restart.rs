//! A lane that ends while the dispatcher runs (it failed, or it panicked) is started
//! again after a backoff: 1 s, doubling up to 60 s, back to 1 s once a run lasted
//! 5 minutes. Each end is reported (the caller counts it in a metric and `/status`), so
//! a partner never silently stops receiving until the process restarts. Its records wait
//! in Kafka meanwhile: nothing of an ended lane was committed past what it finished.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// First delay before a restart.
pub const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest delay before a restart.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A run that lasted this long resets the delay to [`FIRST_DELAY`].
pub const STABLE_AFTER: Duration = Duration::from_secs(300);

/// Runs `start()` as a task of its own until `shutdown`; whenever the task ends before
/// that, calls `ended` with why (the error or the panic message) and starts it again
/// after the backoff. Returns once the last run has ended after `shutdown`.
pub async fn keep_running<F, Fut>(mut start: F, ended: impl Fn(&str), shutdown: CancellationToken)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut delay = FIRST_DELAY;
    loop {
        let began = tokio::time::Instant::now();
        let why = match tokio::spawn(start()).await {
            Ok(Ok(())) if shutdown.is_cancelled() => return,
            Ok(Ok(())) => "stopped on its own".to_string(),
            Ok(Err(error)) => format!("failed: {error:#}"),
            Err(e) if e.is_panic() => format!("panicked: {}", panic_text(e.into_panic())),
            Err(e) => format!("cancelled: {e}"),
        };
        if shutdown.is_cancelled() {
            return;
        }
        ended(&why);
        if began.elapsed() >= STABLE_AFTER {
            delay = FIRST_DELAY;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_DELAY);
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    #[tokio::test(start_paused = true)]
    async fn a_lane_that_panics_or_fails_is_started_again_with_backoff() {
        let runs = Arc::new(AtomicUsize::new(0));
        let ends = Arc::new(Mutex::new(Vec::<(String, Duration)>::new()));
        let shutdown = CancellationToken::new();
        let t0 = tokio::time::Instant::now();
        let (r, e, stop) = (Arc::clone(&runs), Arc::clone(&ends), shutdown.clone());
        let supervised = tokio::spawn(keep_running(
            move || {
                let n = r.fetch_add(1, Ordering::SeqCst);
                let stop = stop.clone();
                async move {
                    match n {
                        0 => panic!("rate overflow"),
                        1 => anyhow::bail!("consumer gone"),
                        _ => {
                            stop.cancelled().await;
                            Ok(())
                        }
                    }
                }
            },
            move |why| {
                e.lock()
                    .expect("lock")
                    .push((why.to_string(), t0.elapsed()))
            },
            shutdown.clone(),
        ));
        // The first restart waits 1 s, the second 2 s.
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "not restarted before its delay"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(2000)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let seen = ends.lock().expect("lock").clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].0, "panicked: rate overflow");
        assert_eq!(seen[1].0, "failed: consumer gone");
        // A run that ends because of shutdown is not restarted.
        shutdown.cancel();
        supervised.await.expect("supervisor");
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        assert_eq!(ends.lock().expect("lock").len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_doubles_up_to_its_cap() {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let r = Arc::clone(&runs);
        let t0 = tokio::time::Instant::now();
        let supervised = tokio::spawn(keep_running(
            move || {
                r.lock().expect("lock").push(t0.elapsed());
                async { anyhow::bail!("always") }
            },
            |_| {},
            shutdown.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(400)).await;
        shutdown.cancel();
        supervised.await.expect("supervisor");
        let starts = runs.lock().expect("lock").clone();
        let gaps: Vec<u64> = starts.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
        assert_eq!(&gaps[..8], &[1, 2, 4, 8, 16, 32, 60, 60], "{gaps:?}");
    }
}
