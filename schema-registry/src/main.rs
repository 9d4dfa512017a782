//! `schema-registry`: serves the Confluent-compatible registry until SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

/// A small Schema Registry speaking the Confluent REST API (AVRO subjects).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on. Port 0 picks a free port; the chosen address is printed
    /// on standard output as `listening on http://ADDR`.
    #[arg(long, env = "SCHEMA_REGISTRY_LISTEN", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// Directory of the durable state (`state.json`); created when missing.
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_DATA_DIR",
        default_value = "./data/schema-registry"
    )]
    data_dir: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    orderhooks_runtime::init_tracing();
    let args = Args::parse();
    let store = schema_registry::Store::open(&args.data_dir)
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
    let (listener, addr) = schema_registry::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    println!("listening on http://{addr}");
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "schema registry started");
    schema_registry::serve(
        listener,
        Arc::new(store),
        orderhooks_runtime::shutdown_signal(),
    )
    .await?;
    tracing::info!("schema registry stopped");
    Ok(())
}
