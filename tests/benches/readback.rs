//! The read-back of a large retry backlog after a restart (#22 item 1). Partner `big`
//! has BENCH_RECORDS (1,000,000) parked records over BENCH_KEYS (1,000) orders in its
//! retry topic (BENCH_PAYLOAD bytes each, 600; due in a day, as after days of a failing
//! endpoint), partner `small` has BENCH_SMALL (100) parked records over 10 orders; each
//! also has one fresh event of an order that is not parked. Then one `dispatcher run`
//! starts: a delivery partition's records wait until its parked keys are read back.
//! Prints, from the start:
//!
//! - when each partner's fresh event arrived (its partition's read-back had answered);
//! - when the dispatcher had counted all of each partner's parked keys
//!   (`dispatcher_parked_keys`, sampled every second: every partition read back);
//! - the dispatcher's peak resident memory (VmHWM) and CPU seconds.
//!
//!   BENCH_PROFILE=release scripts/bench-on-stack.sh readback
//!
//! BENCH_STORAGE (`sqlite`, the default stack; `memory` reports high watermarks below
//! what a consumer reads, so its read-backs miss records), BENCH_TIMEOUT_SECS (300), BENCH_DISPATCHER_BIN
//! (another `dispatcher` binary, measured the same way).

use std::time::{Duration, Instant};

use e2e::{cpu_seconds, env_or, write_parked, BenchWorld, BrokerStorage, PrivateBroker};
use order_schemas::{EventType, OrderEvent};

/// The partition count of a partner's topics in `dispatcher run`'s default settings.
const PARTNER_PARTITIONS: i32 = 2;

/// Peak resident memory of process `pid` in MiB (VmHWM of `/proc/PID/status`).
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let records = env_or("BENCH_RECORDS", 1_000_000);
    let keys = env_or("BENCH_KEYS", 1_000);
    let small = env_or("BENCH_SMALL", 100);
    let payload = env_or("BENCH_PAYLOAD", 600);
    let timeout = Duration::from_secs(env_or("BENCH_TIMEOUT_SECS", 300) as u64);
    let binary = std::env::var("BENCH_DISPATCHER_BIN").unwrap_or_else(|_| "this build".into());
    let storage = match std::env::var("BENCH_STORAGE").as_deref() {
        Ok("memory") => BrokerStorage::Memory,
        Ok("sqlite") | Err(_) => BrokerStorage::Sqlite,
        Ok(other) => panic!("BENCH_STORAGE: unknown `{other}` (memory, sqlite)"),
    };
    println!(
        "readback: {records} parked records of {payload} bytes over {keys} orders for `big`, {small} over 10 orders for `small`, one `dispatcher run` ({binary}), broker storage {storage:?}, timeout {} s",
        timeout.as_secs()
    );
    let broker = PrivateBroker::with_storage(storage);
    let world = BenchWorld::on(&broker.brokers).await;
    let (big, big_rx) = world.partners("big", 1).await.remove(0);
    let (small_partner, small_rx) = world.partners("small", 1).await.remove(0);
    let written = Instant::now();
    // (`subscriptions apply` made `deliveries.<partner>`; BenchWorld names a partner's
    // subscription `<partner>.s`.)
    for (p, n, orders) in [(&big, records, keys), (&small_partner, small, 10)] {
        let subscription = format!("{p}.s");
        write_parked(
            &broker.brokers,
            p,
            &subscription,
            PARTNER_PARTITIONS,
            n,
            orders,
            payload,
            chrono::Duration::days(1),
        )
        .await;
    }
    eprintln!(
        "  parked records written in {:.0} s",
        written.elapsed().as_secs_f64()
    );
    let publisher = world.publisher().await;
    for p in [&big, &small_partner] {
        publisher
            .publish(&OrderEvent::sample(EventType::OrderCreated, "fresh", p, 1))
            .await
            .expect("published");
    }
    let started = Instant::now();
    let (dispatcher, addr) = world.start_dispatcher();
    let pid = dispatcher.0.id();
    let parked_keys = |metrics: &str, p: &str| {
        let prefix = format!("dispatcher_parked_keys{{partner=\"{p}\"");
        metrics
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>() as usize
    };
    // When each fresh event arrived, and when each partner's parked keys were all counted.
    let (mut big_at, mut small_at, mut big_keys_at, mut small_keys_at) = (None, None, None, None);
    let (mut big_keys, mut small_keys) = (0, 0);
    let mut last_report = Instant::now();
    while [big_at, small_at, big_keys_at, small_keys_at].contains(&None)
        && started.elapsed() < timeout
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = Some(started.elapsed().as_secs_f64());
        if big_at.is_none() && big_rx.unique() > 0 {
            big_at = now;
        }
        if small_at.is_none() && small_rx.unique() > 0 {
            small_at = now;
        }
        let Ok(metrics) = reqwest::get(format!("{addr}/metrics")).await else {
            continue;
        };
        let metrics = metrics.text().await.unwrap_or_default();
        if std::env::var("BENCH_DEBUG").is_ok() && last_report.elapsed() >= Duration::from_secs(14)
        {
            for l in metrics
                .lines()
                .filter(|l| l.contains(&big) && !l.ends_with(" 0"))
            {
                eprintln!("    {l}");
            }
        }
        (big_keys, small_keys) = (
            parked_keys(&metrics, &big),
            parked_keys(&metrics, &small_partner),
        );
        if big_keys_at.is_none() && big_keys >= keys {
            big_keys_at = now;
        }
        if small_keys_at.is_none() && small_keys >= 10 {
            small_keys_at = now;
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "  {:.0} s: parked keys {big_keys} and {small_keys}, peak RSS {:.0} MiB",
                started.elapsed().as_secs_f64(),
                peak_rss_mib(pid)
            );
        }
    }
    let at = |s: Option<f64>| s.map_or("not by the timeout".to_string(), |s| format!("{s:.1} s"));
    eprintln!(
        "  requests received: big {}, small {} (1 each expected: parked records are due in a day)",
        big_rx.unique(),
        small_rx.unique()
    );
    println!("| big: fresh event / all {keys} parked keys counted | small: fresh event / all 10 parked keys counted | peak RSS | CPU |");
    println!("|---|---|---|---|");
    println!(
        "| {} / {} ({big_keys}) | {} / {} ({small_keys}) | {:.0} MiB | {:.1} s |",
        at(big_at),
        at(big_keys_at),
        at(small_at),
        at(small_keys_at),
        peak_rss_mib(pid),
        cpu_seconds(pid),
    );
    drop(dispatcher);
}
