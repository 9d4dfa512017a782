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
#[command(
    version,
    about = "Print order events of a topic as JSON lines, decoded through the registry"
)]
struct Args {
    #[arg(
        long,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders")]
    topic: String,
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
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
    /// Print each event as a JSON line (the whole event) instead of a one-line summary.
    #[arg(long)]
    json: bool,
}

/// `p1@3 order.status_changed order-1 partner-1 SHIPPED 209.85 EUR (8 items)`
fn summary(partition: i32, offset: i64, event: &order_schemas::OrderEvent) -> String {
    let order = event.order();
    // ISO 4217 minor-unit exponents: most currencies have 2, these differ.
    let exponent = match order.total.currency.as_str() {
        "JPY" | "KRW" | "CLP" | "ISK" | "VND" | "XAF" | "XOF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    };
    let units = 10f64.powi(exponent);
    format!(
        "p{partition}@{offset} {} {} {} {:?} {:.prec$} {} ({} items) event {}",
        event.event_type(),
        event.order_id(),
        event.partner_id(),
        order.status,
        order.total.amount_minor as f64 / units,
        order.total.currency,
        order.items.len(),
        event.event_id(),
        prec = exponent as usize,
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set(
            "group.id",
            format!("orders-tail-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("enable.auto.commit", "false")
        .set(
            "auto.offset.reset",
            if args.from_end { "latest" } else { "earliest" },
        )
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
        let (partition, offset) = (message.partition(), message.offset());
        let line = match codec.decode(payload).await {
            Ok(event) if args.json => {
                serde_json::json!({ "partition": partition, "offset": offset, "event": event.to_json() }).to_string()
            }
            Ok(event) => summary(partition, offset, &event),
            Err(e) if args.json => {
                serde_json::json!({ "partition": partition, "offset": offset, "undecodable": e.to_string() }).to_string()
            }
            Err(e) => format!("p{partition}@{offset} undecodable: {e}"),
        };
        println!("{line}");
        seen += 1;
    }
    eprintln!("{seen} events");
    Ok(())
}
