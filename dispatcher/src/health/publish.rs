//! Every dispatcher's partner health, for the API: each instance writes its `/status`
//! board to a topic (`--health-topic`, default `partner-health`; one partition, kept an
//! hour) every few seconds, and the API merges the newest of each instance
//! (`api/health.rs`) for the operators' partners table.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use super::{status_json, StatusBoard};

pub const DEFAULT_TOPIC: &str = "partner-health";

/// How often an instance writes its board.
pub const EVERY: Duration = Duration::from_secs(5);

/// Writes `board` to `topic` every [`EVERY`], keyed by this instance, until `shutdown`.
pub async fn publish(
    producer: FutureProducer,
    topic: String,
    board: StatusBoard,
    shutdown: CancellationToken,
) {
    let instance = uuid::Uuid::new_v4().to_string();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut snapshot = status_json(&board, None);
        snapshot["instance"] = instance.clone().into();
        snapshot["at"] = chrono::Utc::now().to_rfc3339().into();
        let payload = snapshot.to_string();
        let sent = producer
            .send(
                FutureRecord::to(&topic).key(&instance).payload(&payload),
                Duration::from_secs(5),
            )
            .await;
        if let Err((error, _)) = sent {
            tracing::warn!(%topic, %error, "writing the partner health snapshot");
        }
    }
}
