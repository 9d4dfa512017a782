//! `producer load`: a paced load generator of sample events with a progress bar and a
//! summary (rate, latency percentiles). Each order's events are created, then changed.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use order_schemas::{EventType, OrderEvent};

use crate::KafkaArgs;

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Events to publish.
    #[arg(long, default_value_t = 10_000)]
    count: u64,
    /// Events per second; 0 publishes as fast as Kafka acknowledges.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Distinct orders (keys) the events are spread over.
    #[arg(long, default_value_t = 1_000)]
    orders: u64,
    /// Distinct partners the orders belong to (`partner-0`, `partner-1`, ...).
    #[arg(long, default_value_t = 3)]
    partners: u64,
    /// Line items per event (8 items make an event of about 1 KB).
    #[arg(long, default_value_t = 8)]
    items: usize,
    /// Hide the progress bar (for logs and CI).
    #[arg(long)]
    quiet: bool,
}

pub async fn run(kafka: &KafkaArgs, args: &LoadArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.orders > 0, "--orders must be at least 1");
    anyhow::ensure!(args.partners > 0, "--partners must be at least 1");
    let publisher = kafka.connect().await?;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.count)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let mut latencies_us: Vec<u64> = Vec::with_capacity(args.count.min(10_000_000) as usize);
    let mut failed = 0u64;
    let mut pending = FuturesUnordered::new();
    let mut record = |outcome: Result<u64, producer::PublishError>| match outcome {
        Ok(us) => latencies_us.push(us),
        Err(e) => {
            failed += 1;
            bar.suspend(|| eprintln!("error: {e}"));
        }
    };
    for i in 0..args.count {
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        while let Some(Some(outcome)) = futures::FutureExt::now_or_never(pending.next()) {
            record(outcome);
        }
        let order = i % args.orders;
        let kind = if i < args.orders {
            EventType::OrderCreated
        } else {
            EventType::OrderStatusChanged
        };
        let event = OrderEvent::sample(
            kind,
            &format!("order-{order}"),
            &format!("partner-{}", order % args.partners),
            args.items,
        );
        let sent = Instant::now();
        match publisher.enqueue(&event, None).await {
            Ok(delivery) => pending.push(async move {
                delivery
                    .wait()
                    .await
                    .map(|_| sent.elapsed().as_micros() as u64)
            }),
            Err(e) => record(Err(e)),
        }
        bar.inc(1);
    }
    while let Some(outcome) = pending.next().await {
        record(outcome);
    }
    bar.finish_and_clear();
    let elapsed = start.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    let pct = |p: f64| {
        latencies_us
            .get(
                ((latencies_us.len() as f64 * p) as usize)
                    .min(latencies_us.len().saturating_sub(1)),
            )
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "published {} events, failed {failed}, in {elapsed:.2} s: {:.0} events/s; ack latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies_us.len(),
        latencies_us.len() as f64 / elapsed.max(1e-9),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
