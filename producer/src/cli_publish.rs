//! `producer publish`: JSON lines in, one event per line.
//!
//! Good lines are published even when others are bad; each bad line is reported with
//! its number and the field that is wrong, and the exit code is 2 when any line was
//! refused, 1 when Kafka or the registry failed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use order_schemas::OrderEvent;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::KafkaArgs;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// File of JSON lines; `-` or nothing reads stdin.
    #[arg(long, short)]
    file: Option<PathBuf>,
}

pub async fn run(kafka: &KafkaArgs, args: &PublishArgs) -> anyhow::Result<ExitCode> {
    let reader: Box<dyn tokio::io::AsyncRead + Unpin> = match &args.file {
        Some(p) if p.as_os_str() != "-" => Box::new(
            tokio::fs::File::open(p)
                .await
                .with_context(|| format!("--file {}", p.display()))?,
        ),
        _ => Box::new(tokio::io::stdin()),
    };
    let publisher = kafka.connect().await?;
    let mut lines = BufReader::new(reader).lines();
    let (mut published, mut refused, mut failed, mut number) = (0u64, 0u64, 0u64, 0u64);
    let mut pending = FuturesUnordered::new();
    let settle = |outcome: Result<producer::Published, producer::PublishError>,
                  published: &mut u64,
                  failed: &mut u64| match outcome {
        Ok(_) => *published += 1,
        Err(e) => {
            eprintln!("error: {e}");
            *failed += 1;
        }
    };
    while let Some(line) = lines.next_line().await.context("reading input")? {
        number += 1;
        // Handle finished deliveries before taking more input.
        while let Some(Some(outcome)) = futures::FutureExt::now_or_never(pending.next()) {
            settle(outcome, &mut published, &mut failed);
        }
        if line.trim().is_empty() {
            continue;
        }
        let event = match OrderEvent::from_json(line.as_bytes()) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("line {number}: {e}");
                refused += 1;
                continue;
            }
        };
        match publisher.enqueue(&event, None).await {
            Ok(delivery) => pending.push(delivery.wait()),
            Err(e) if !e.is_retryable() => {
                eprintln!("line {number}: {e}");
                refused += 1;
            }
            Err(e) => {
                eprintln!("line {number}: {e}");
                failed += 1;
            }
        }
    }
    while let Some(outcome) = pending.next().await {
        settle(outcome, &mut published, &mut failed);
    }
    println!("published {published}, refused {refused}, failed {failed}");
    Ok(match (failed, refused) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(2),
        _ => ExitCode::from(1),
    })
}
