//! Following a topic for good: a task that hands each record of an assigned consumer to
//! a closure until stopped, waiting 500 ms after an error (the console ledger, the
//! partner health view).

use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::StreamConsumer;
use rdkafka::message::BorrowedMessage;
use tokio_util::sync::CancellationToken;

/// Spawns the task: every record `consumer` reads goes to `record`, until `stop`.
pub fn follow(
    consumer: StreamConsumer,
    topic: String,
    stop: CancellationToken,
    mut record: impl FnMut(&BorrowedMessage<'_>) + Send + 'static,
) {
    tokio::spawn(async move {
        let mut stream = consumer.stream();
        loop {
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(m)) => record(&m),
                Some(Err(error)) => {
                    tracing::warn!(%topic, %error, "following a topic");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                None => break,
            }
        }
    });
}
