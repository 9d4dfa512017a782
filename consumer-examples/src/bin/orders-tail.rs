//! `orders-tail`: read the orders topic from the beginning (or the end), decode each
//! record through the Schema Registry and print one JSON line per event. It commits no
//! offsets: it is a viewer, not a member of any pipeline.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use order_schemas::OrderCodec;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;

#[derive(Debug, Parser)]
#[command(version, about = "Print order events of a topic as JSON lines, decoded through the registry")]
struct Args {
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders")]
    topic: String,
    #[arg(long, env = "SCHEMA_REGISTRY_URL", default_value = "http://127.0.0.1:8081")]
    registry: String,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// Stop when no event arrives for this many seconds.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
    /// Start at the end of the topic instead of the beginning.
    #[arg(long)]
    from_end: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("orders-tail-{}", uuid::Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", if args.from_end { "latest" } else { "earliest" })
        .set("session.timeout.ms", "6000")
        .create()
        .context("invalid Kafka settings")?;
    consumer.subscribe(&[&args.topic]).context("subscribe")?;
    let codec = OrderCodec::new(&args.registry, &args.topic, Duration::from_secs(5))?;
    let mut stream = consumer.stream();
    let mut seen = 0u64;
    while args.count.is_none_or(|c| seen < c) {
        let next = tokio::time::timeout(Duration::from_secs(args.idle_secs), stream.next()).await;
        let Ok(Some(message)) = next else { break };
        let message = message.context("consuming")?;
        let payload = message.payload().unwrap_or_default();
        let line = match codec.decode(payload).await {
            Ok(event) => serde_json::json!({
                "partition": message.partition(),
                "offset": message.offset(),
                "event": event.to_json(),
            }),
            Err(e) => serde_json::json!({
                "partition": message.partition(),
                "offset": message.offset(),
                "undecodable": e.to_string(),
            }),
        };
        println!("{line}");
        seen += 1;
    }
    eprintln!("{seen} events");
    Ok(())
}
