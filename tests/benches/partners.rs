//! Thousands of partners on one dispatcher (#14), as a new user would try it: N partners
//! each with a receiver answering 204 at once and one subscription, BENCH_EVENTS events
//! published per partner (an order event goes to its own partner's subscriptions), then
//! one `dispatcher run` with default settings. Prints, per N:
//!
//! - seconds from `dispatcher run` until every partner received every event;
//! - the dispatcher's threads and RSS then;
//! - idle CPU of the dispatcher and of the broker over 10 s (nothing published);
//! - while events flow to 10 of the partners, BENCH_GAP_RATE per second each, one new
//!   partner is added: seconds until it gets its first event, and the longest gap
//!   between two deliveries to any of those 10 from then until 3 s after it was served,
//!   beside the same figure over the 8 s just before (the gap the rate itself makes).
//!
//!   scripts/bench-partners.sh           (starts the registry, runs this, stops it)
//!
//! BENCH_PARTNERS (comma-separated, default `100,1000`), BENCH_EVENTS (10),
//! BENCH_GAP_RATE (5), BENCH_IDLE_SECS (10), BENCH_TIMEOUT_SECS (600), BENCH_STORAGE (`sqlite`, the default
//! stack, or `memory`), BENCH_DISPATCHER_BIN (another `dispatcher` binary, to measure an
//! earlier version in the same way), BENCH_KAFKA_OPTIONS.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::{cpu_seconds, env_or, BenchWorld, BrokerStorage, PrivateBroker};
use order_schemas::{EventType, OrderEvent};

/// A field of /proc/PID/status (`Threads`, `VmRSS` in kB).
fn status_field(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The longest time between two arrivals in `from..to` (or from `from` to the first, and
/// from the last to `to`) of any receiver.
fn longest_gap(arrivals: &[Vec<Instant>], from: Instant, to: Instant) -> Duration {
    let mut longest = Duration::ZERO;
    for list in arrivals {
        let mut last = from;
        for &t in list.iter().filter(|t| **t >= from && **t <= to) {
            longest = longest.max(t - last);
            last = t;
        }
        longest = longest.max(to - last);
    }
    longest
}

struct Outcome {
    all_served: Option<f64>,
    threads: u64,
    rss_mb: f64,
    idle_cpu: f64,
    broker_idle_cpu: f64,
    new_partner_secs: Option<f64>,
    gap: Duration,
    gap_before: Duration,
}

async fn run(
    storage: BrokerStorage,
    n: usize,
    events: usize,
    rate: f64,
    timeout: Duration,
) -> Outcome {
    let broker = PrivateBroker::with_storage(storage);
    let world = BenchWorld::on(&broker.brokers).await;
    let started = Instant::now();
    let partners = world.partners("p", n).await;
    eprintln!(
        "  {n} partners subscribed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let publisher = world.publisher().await;
    let mut pending = Vec::new();
    for (partner, _) in &partners {
        for i in 0..events {
            let event = OrderEvent::sample(EventType::OrderCreated, &format!("o-{i}"), partner, 1);
            pending.push(publisher.enqueue(&event, None).await.expect("enqueue"));
        }
    }
    for p in pending {
        p.wait().await.expect("published");
    }
    eprintln!("  {} events published", events * n);

    let started = Instant::now();
    let (dispatcher, _) = world.start_dispatcher();
    let pid = dispatcher.0.id();
    let served = || {
        partners
            .iter()
            .filter(|(_, r)| r.unique() >= events)
            .count()
    };
    let mut last_report = Instant::now();
    while served() < n && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_report.elapsed() >= Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "  {:.0} s: {} of {n} partners served",
                started.elapsed().as_secs_f64(),
                served()
            );
        }
    }
    let all_served = (served() == n).then(|| started.elapsed().as_secs_f64());
    let (threads, rss_mb) = (
        status_field(pid, "Threads"),
        status_field(pid, "VmRSS") as f64 / 1024.0,
    );

    // Idle: nothing published for 10 s (after 2 s for the last commits).
    tokio::time::sleep(Duration::from_secs(2)).await;
    eprintln!("  idle from now (dispatcher pid {pid})");
    let (d0, b0, t0) = (cpu_seconds(pid), cpu_seconds(broker.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs(env_or("BENCH_IDLE_SECS", 10) as u64)).await;
    let secs = t0.elapsed().as_secs_f64();
    let idle_cpu = (cpu_seconds(pid) - d0) / secs;
    let broker_idle_cpu = (cpu_seconds(broker.pid()) - b0) / secs;

    // A steady flow to 10 partners; one partner added in the middle.
    let watched: Vec<String> = partners.iter().take(10).map(|(p, _)| p.clone()).collect();
    let flow = {
        let publisher = world.publisher().await;
        let watched = watched.clone();
        tokio::spawn(async move {
            let mut i = 0;
            let start = Instant::now();
            loop {
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                for partner in &watched {
                    let event =
                        OrderEvent::sample(EventType::OrderCreated, &format!("g-{i}"), partner, 1);
                    let pending = publisher.enqueue(&event, None).await.expect("enqueue");
                    tokio::spawn(async move { pending.wait().await });
                }
                i += 1;
            }
        })
    };
    // 4 s for the flow to reach the partners, then 8 s measured before the addition.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let added_at = Instant::now();
    let new = world.partners("new", 1).await;
    let (new_partner, new_receiver) = &new[0];
    // Its events, once a second, until it has one.
    let publisher = world.publisher().await;
    let mut next = Instant::now();
    while new_receiver.unique() == 0 && added_at.elapsed() < Duration::from_secs(120) {
        if Instant::now() >= next {
            let event = OrderEvent::sample(EventType::OrderCreated, "n", new_partner, 1);
            publisher.publish(&event).await.expect("publish");
            next += Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new_partner_secs = (new_receiver.unique() > 0).then(|| added_at.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ended = Instant::now();
    flow.abort();
    let arrivals: Vec<Vec<Instant>> = partners
        .iter()
        .filter(|(p, _)| watched.contains(p))
        .map(|(_, r)| r.arrivals())
        .collect();
    let gap = longest_gap(&arrivals, added_at, ended);
    let gap_before = longest_gap(&arrivals, before_from, added_at);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let mut dispatcher = dispatcher;
    let _ = dispatcher.0.wait();
    Outcome {
        all_served,
        threads,
        rss_mb,
        idle_cpu,
        broker_idle_cpu,
        new_partner_secs,
        gap,
        gap_before,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = env_or("BENCH_EVENTS", 10);
    let rate = env_or("BENCH_GAP_RATE", 5) as f64;
    let timeout = Duration::from_secs(env_or("BENCH_TIMEOUT_SECS", 600) as u64);
    let counts = std::env::var("BENCH_PARTNERS").unwrap_or_else(|_| "100,1000".into());
    let storage = match std::env::var("BENCH_STORAGE").as_deref() {
        Ok("memory") => BrokerStorage::Memory,
        Ok("sqlite") | Err(_) => BrokerStorage::Sqlite,
        Ok(other) => panic!("BENCH_STORAGE: unknown `{other}` (sqlite, memory)"),
    };
    let binary = std::env::var("BENCH_DISPATCHER_BIN").unwrap_or_else(|_| "this build".into());
    println!(
        "partners: {events} events to every partner, one `dispatcher run` ({binary}), broker storage {storage:?}, flow while adding a partner {rate}/s to each of 10 partners"
    );
    println!("| partners | every partner served | threads | RSS | idle CPU dispatcher | idle CPU broker | new partner's first event | longest gap, others (before) |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in counts
        .split(',')
        .filter_map(|c| c.trim().parse::<usize>().ok())
    {
        eprintln!("{n} partners:");
        let o = run(storage, n, events, rate, timeout).await;
        let secs = |s: Option<f64>| s.map_or("did not finish".to_string(), |s| format!("{s:.1} s"));
        println!(
            "| {n} | {} | {} | {:.0} MB | {:.1} % | {:.1} % | {} | {:.2} s ({:.2} s) |",
            secs(o.all_served),
            o.threads,
            o.rss_mb,
            o.idle_cpu * 100.0,
            o.broker_idle_cpu * 100.0,
            secs(o.new_partner_secs),
            o.gap.as_secs_f64(),
            o.gap_before.as_secs_f64(),
        );
    }
}
