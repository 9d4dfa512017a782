//! `producer`: publish order events from JSON lines, generate load, or serve HTTP ingest.

mod cli_load;
mod cli_publish;
mod cli_topics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use producer::{ingest, Publisher, PublisherConfig};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Publish order events to Kafka (Avro, Confluent Schema Registry framing)"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where events go. Shared by every subcommand.
#[derive(Debug, Args)]
struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        global = true,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    /// The orders topic (must exist).
    #[arg(long, global = true, env = "ORDERS_TOPIC", default_value = "orders")]
    topic: String,
    /// Schema Registry base URL.
    #[arg(
        long,
        global = true,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    registry: String,
    /// How long Kafka may take to acknowledge an event, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "PRODUCER_DELIVERY_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    delivery_timeout_ms: u64,
    /// Extra librdkafka setting, `key=value`; repeatable (e.g. `linger.ms=20`).
    #[arg(long = "kafka-option", global = true, value_parser = parse_option)]
    kafka_options: Vec<(String, String)>,
}

pub(crate) use orderhooks_runtime::parse_key_value as parse_option;

#[derive(Debug, Subcommand)]
enum Command {
    /// Publish events given as JSON lines (one event per line) from a file or stdin.
    Publish(cli_publish::PublishArgs),
    /// Generate sample events at a given rate, with a progress bar and a summary.
    Load(cli_load::LoadArgs),
    /// Serve the HTTP ingest endpoint (POST /v1/events) and /metrics.
    Serve(ServeArgs),
    /// Create a topic (or check it exists) and wait until its partitions are ready.
    EnsureTopic(cli_topics::TopicArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on; the bound address is printed as `listening on http://ADDR`.
    #[arg(long, env = "INGEST_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Largest accepted request body in bytes; larger ones get 413.
    #[arg(long, env = "INGEST_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// Requests published at once; more get 503 with Retry-After.
    #[arg(long, env = "INGEST_MAX_IN_FLIGHT", default_value_t = 2048)]
    max_in_flight: usize,
}

impl KafkaArgs {
    fn publisher_config(&self) -> PublisherConfig {
        let mut config = PublisherConfig::new(&self.brokers, &self.topic, &self.registry);
        config.delivery_timeout = Duration::from_millis(self.delivery_timeout_ms);
        config.connect_timeout = config.delivery_timeout.min(Duration::from_secs(10));
        config.kafka_options = self.kafka_options.clone();
        config
    }

    async fn connect(&self) -> anyhow::Result<Publisher> {
        Publisher::connect(&self.publisher_config())
            .await
            .context("cannot start publishing")
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    orderhooks_runtime::init_tracing();
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Publish(args) => cli_publish::run(&cli.kafka, args).await,
        Command::Load(args) => cli_load::run(&cli.kafka, args).await,
        Command::Serve(args) => serve(&cli.kafka, args).await,
        Command::EnsureTopic(args) => cli_topics::run(&cli.kafka, args).await,
    };
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve(kafka: &KafkaArgs, args: &ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let publisher = Arc::new(kafka.connect().await?);
    let config = ingest::IngestConfig {
        max_body_bytes: args.max_body_bytes,
        max_in_flight: args.max_in_flight,
        ..Default::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    println!("listening on http://{}", listener.local_addr()?);
    tracing::info!(addr = %args.listen, topic = %kafka.topic, "ingest started");
    ingest::serve(
        listener,
        ingest::router(Arc::clone(&publisher), config),
        orderhooks_runtime::shutdown_signal(),
    )
    .await?;
    publisher.flush(Duration::from_secs(30)).await?;
    tracing::info!("ingest stopped");
    Ok(std::process::ExitCode::SUCCESS)
}
