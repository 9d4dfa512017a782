//! Kafka plumbing shared by both stages and the control plane: client settings and
//! snapshot reads, the group member's context, the committable-offset tracker, the
//! consumer loop's back-pressure, and the header names records carry between stages.

pub mod backpressure;
pub mod group;
pub mod headers;
pub mod offsets;
mod on_demand;
mod settings;

mod follow;
mod journal;
pub use follow::follow;
pub use journal::{Journal, Journaled};
pub use on_demand::TopicOnDemand;

pub use settings::{read_ranges, visit_ranges, KafkaSettings, Patience, TopicRecord};

/// The partitions of `topic` (`what` names it in the error: "subscriptions topic").
/// An error when it does not exist or has none.
pub fn partitions_of<C: rdkafka::consumer::ConsumerContext>(
    client: &impl rdkafka::consumer::Consumer<C>,
    topic: &str,
    what: &str,
) -> anyhow::Result<Vec<i32>> {
    Some(existing_partitions(client, topic)?)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| anyhow::anyhow!("{what} `{topic}` does not exist"))
}

/// The partitions of `topic`: none when it does not exist (yet).
pub fn existing_partitions<C: rdkafka::consumer::ConsumerContext>(
    client: &impl rdkafka::consumer::Consumer<C>,
    topic: &str,
) -> anyhow::Result<Vec<i32>> {
    let metadata = client.fetch_metadata(Some(topic), std::time::Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}
