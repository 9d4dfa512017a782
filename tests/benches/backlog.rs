//! A working day's backlog through the local broker, as a new user would try it: 100,000
//! events for 3 partners (2,000 orders) are published first, then 2 `dispatcher run`
//! instances start with their default settings, and a plain receiver per partner
//! answers at once. Prints, per broker set-up: seconds until every event was delivered,
//! events/s, the broker's CPU, and whether the delivery topics' high watermarks cover
//! what was delivered (nisshi's in-memory storage was seen reporting fewer records than
//! a consumer reads; more is allowed: a router may write a record twice).
//!
//!   scripts/bench-backlog.sh            (starts the registry, runs this, stops it)
//!
//! Each candidate runs on a broker of its own, started as `scripts/stack.sh` starts it
//! (`e2e::PrivateBroker`). BENCH_CANDIDATES (comma-separated, default
//! `sqlite,memory,sqlite-plain`): `sqlite` is the default stack (durable, with the
//! indexes of `scripts/nisshi-indexes.py`), `sqlite-plain` the SQLite schema as nisshi
//! makes it (the stack before), `memory` nisshi's in-memory store (not durable). A
//! `-nolog` suffix (`sqlite-nolog`) runs the dispatchers with the delivery log off
//! (`--attempts-topic=`), to measure what the log costs.
//! BENCH_EVENTS (100000), BENCH_ORDERS (2000), BENCH_TIMEOUT_SECS (300),
//! BENCH_KAFKA_OPTIONS (comma-separated librdkafka `key=value` settings given to the
//! dispatchers with `--kafka-option`, to measure client settings).

use std::collections::VecDeque;
use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{cpu_seconds, env_or, BenchWorld, BrokerStorage, PrivateBroker, Running};
use order_schemas::{EventType, OrderEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

const PARTNERS: usize = 3;
const INSTANCES: usize = 2;

/// Sum of the high watermarks of `topic`'s partitions.
fn high_watermarks(brokers: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    partitions
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, *p, Duration::from_secs(10))
                .map_or(0, |(_, high)| high)
        })
        .sum()
}

struct Outcome {
    published_per_sec: f64,
    delivered: usize,
    seconds: f64,
    broker_cpu: f64,
    watermarks_match: bool,
}

async fn run(
    storage: BrokerStorage,
    run_args: &[&str],
    events: usize,
    orders: usize,
    timeout: Duration,
) -> Outcome {
    let broker = PrivateBroker::with_storage(storage);
    let brokers = broker.brokers.clone();
    let world = BenchWorld::on(&brokers).await;
    let receivers = world.partners("p", PARTNERS).await;

    // The backlog: every event acknowledged before any dispatcher starts.
    let publisher = world.publisher().await;
    let started = Instant::now();
    let mut pending = VecDeque::new();
    for i in 0..events {
        let order = i % orders;
        let (partner, _) = &receivers[order % PARTNERS];
        let kind = if i < orders {
            EventType::OrderCreated
        } else {
            EventType::OrderStatusChanged
        };
        let event = OrderEvent::sample(kind, &format!("o-{order}"), partner, 1);
        pending.push_back(publisher.enqueue(&event, None).await.expect("enqueue"));
        if pending.len() >= 5_000 {
            if let Some(p) = pending.pop_front() {
                p.wait().await.expect("published");
            }
        }
    }
    for p in pending {
        p.wait().await.expect("published");
    }
    let published_per_sec = events as f64 / started.elapsed().as_secs_f64();
    eprintln!(
        "  published {events} in {:.1} s ({published_per_sec:.0}/s)",
        started.elapsed().as_secs_f64()
    );

    // Two instances, default settings.
    let cpu_before = cpu_seconds(broker.pid());
    let started = Instant::now();
    let instances: Vec<Running> = (0..INSTANCES)
        .map(|_| world.start_dispatcher_with(run_args).0)
        .collect();
    let delivered = || receivers.iter().map(|(_, r)| r.unique()).sum::<usize>();
    let mut last_report = Instant::now();
    while delivered() < events && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if last_report.elapsed() >= Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "  {:.0} s: {} of {events} delivered",
                started.elapsed().as_secs_f64(),
                delivered()
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let broker_cpu = (cpu_seconds(broker.pid()) - cpu_before) / seconds;
    let delivered = delivered();
    let watermarks_match = receivers.iter().all(|(partner, r)| {
        let high = high_watermarks(&brokers, &format!("deliveries.{partner}"));
        // Below what was read is a broker error; above is allowed (a record routed
        // twice after a rebalance).
        let ok = high >= r.unique() as i64;
        if !ok {
            eprintln!(
                "  deliveries.{partner}: high watermarks {high}, delivered {}",
                r.unique()
            );
        }
        ok
    });
    for mut instance in instances {
        let _ = Command::new("kill")
            .args(["-TERM", &instance.0.id().to_string()])
            .status();
        let _ = instance.0.wait();
    }
    Outcome {
        published_per_sec,
        delivered,
        seconds,
        broker_cpu,
        watermarks_match,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = env_or("BENCH_EVENTS", 100_000);
    let orders = env_or("BENCH_ORDERS", 2_000);
    let timeout = Duration::from_secs(env_or("BENCH_TIMEOUT_SECS", 300) as u64);
    let candidates =
        std::env::var("BENCH_CANDIDATES").unwrap_or_else(|_| "sqlite,memory,sqlite-plain".into());
    println!(
        "backlog: {events} events, {PARTNERS} partners, {orders} orders, {INSTANCES} dispatcher instances (default settings), timeout {} s",
        timeout.as_secs()
    );
    println!("| broker storage | published/s | delivered | seconds | events/s | broker CPU | watermarks ≥ delivered |");
    println!("|---|---|---|---|---|---|---|");
    for name in candidates.split(',').map(str::trim) {
        let (storage_name, run_args): (&str, &[&str]) = match name.strip_suffix("-nolog") {
            Some(storage) => (storage, &["--attempts-topic="]),
            None => (name, &[]),
        };
        let storage = match storage_name {
            "sqlite" => BrokerStorage::Sqlite,
            "sqlite-plain" => BrokerStorage::SqliteWithoutIndexes,
            "memory" => BrokerStorage::Memory,
            other => panic!("BENCH_CANDIDATES: unknown `{other}` (sqlite, sqlite-plain, memory; a -nolog suffix turns the delivery log off)"),
        };
        eprintln!("{name}:");
        let o = run(storage, run_args, events, orders, timeout).await;
        let finished = if o.delivered == events {
            format!("{:.1}", o.seconds)
        } else {
            format!("did not finish ({:.0})", o.seconds)
        };
        println!(
            "| {name} | {:.0} | {} of {events} | {finished} | {:.0} | {:.0} % | {} |",
            o.published_per_sec,
            o.delivered,
            o.delivered as f64 / o.seconds,
            o.broker_cpu * 100.0,
            if o.watermarks_match { "yes" } else { "NO" }
        );
    }
}
