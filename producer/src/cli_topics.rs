//! `producer ensure-topic`: create a topic with the given partition count, or check that
//! it exists with at least that many, then wait until every partition has a leader.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;

use crate::KafkaArgs;

#[derive(Debug, Args)]
pub struct TopicArgs {
    /// Topic name.
    #[arg(long)]
    name: String,
    /// Partitions; an existing topic must have at least this many.
    #[arg(long)]
    partitions: i32,
    /// Replication factor; unset uses the broker's `default.replication.factor`
    /// (production: 3 with `min.insync.replicas=2`; a single local broker: 1).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    replication: Option<i32>,
    /// Topic setting `key=value`; repeatable (e.g. `cleanup.policy=compact`).
    #[arg(long = "config", value_parser = crate::parse_option)]
    configs: Vec<(String, String)>,
    /// How long to wait for the brokers and the partitions, in seconds.
    #[arg(long, default_value_t = 30)]
    wait_secs: u64,
}

pub async fn run(kafka: &KafkaArgs, args: &TopicArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.partitions >= 1,
        "--partitions must be at least 1, got {}",
        args.partitions
    );
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &kafka.brokers);
    for (k, v) in &kafka.kafka_options {
        config.set(k, v);
    }
    let admin: AdminClient<DefaultClientContext> =
        config.create().context("invalid Kafka settings")?;
    let wait = Duration::from_secs(args.wait_secs);
    let mut topic = NewTopic::new(
        &args.name,
        args.partitions,
        // -1: the broker's default (CreateTopics, Kafka 2.4 and later).
        TopicReplication::Fixed(args.replication.unwrap_or(-1)),
    );
    for (k, v) in &args.configs {
        topic = topic.set(k, v);
    }
    let options = AdminOptions::new()
        .operation_timeout(Some(Timeout::After(wait)))
        .request_timeout(Some(Timeout::After(wait)));
    let results = admin
        .create_topics([&topic], &options)
        .await
        .with_context(|| format!("cannot reach Kafka at {}", kafka.brokers))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic `{name}`: {code}"),
        }
    }
    let deadline = Instant::now() + wait;
    loop {
        let name = &args.name;
        let found = tokio::task::block_in_place(|| {
            admin
                .inner()
                .fetch_metadata(Some(name), Timeout::After(Duration::from_secs(5)))
                .map(|m| {
                    m.topics()
                        .iter()
                        .find(|t| t.name() == name && t.error().is_none())
                        .map(|t| {
                            (
                                t.partitions().len(),
                                t.partitions().iter().all(|p| p.leader() >= 0),
                            )
                        })
                })
        });
        match found {
            Ok(Some((n, true))) if n as i32 >= args.partitions => {
                println!("topic {} ready with {n} partitions", args.name);
                return Ok(ExitCode::SUCCESS);
            }
            Ok(Some((n, _))) if n as i32 > 0 && (n as i32) < args.partitions => {
                bail!(
                    "topic `{}` exists with {n} partitions, fewer than the {} asked for",
                    args.name,
                    args.partitions
                )
            }
            _ if Instant::now() >= deadline => {
                bail!(
                    "topic `{}` not ready on {} after {wait:?}: {found:?}",
                    args.name,
                    kafka.brokers
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
