//! A few poison orders beside many good ones (#22 item 0), as a new user would try it on
//! the default stack. Partner `mixed` gets BENCH_EVENTS (20,000) events: half of them for
//! BENCH_POISON (100) orders its endpoint always answers 500 to (a handler that crashes
//! on those orders), the other half for BENCH_ORDERS (1,000) orders it accepts. Partner
//! `clean` gets BENCH_EVENTS accepted events over BENCH_ORDERS orders. Everything is
//! published first (interleaved), then one `dispatcher run` with default settings and the
//! default retry policy starts. Prints:
//!
//! - for each partner, its accepted events' rate from its first arrival to its last (the
//!   group's start-up is the same for both and left out), and the seconds from start;
//! - the ratio mixed ÷ clean (the target: at least 0.8);
//! - whether every accepted event arrived, in order per order; the poison records parked
//!   so far, dead-lettered so far, and how often `mixed`'s circuit opened.
//!
//!   BENCH_PROFILE=release scripts/bench-on-stack.sh poison
//!
//! BENCH_STORAGE (`sqlite`, the default stack, or `memory`), BENCH_TIMEOUT_SECS (180): when `mixed` has not had all its accepted events by then, its
//! rate is what it had by then. BENCH_DISPATCHER_BIN: another `dispatcher` binary (an
//! earlier version, measured the same way). BENCH_RUNS (1).

use std::time::{Duration, Instant};

use consumer_examples::receiver::{Receiver, Script};
use e2e::{
    arrivals_per_order, env_or, metric_value, sent_ids_of, BenchWorld, BrokerStorage, PrivateBroker,
};
use order_schemas::{EventType, OrderEvent};

/// Accepted events per second from a receiver's first arrival to its last.
fn rate(receiver: &Receiver) -> Option<f64> {
    let arrivals = receiver.arrivals();
    let (first, last) = (*arrivals.first()?, *arrivals.last()?);
    let secs = (last - first).as_secs_f64();
    (secs > 0.0).then(|| receiver.unique().saturating_sub(1) as f64 / secs)
}

/// Whether every event of `sent` arrived, in publish order per order.
fn all_in_order(receiver: &Receiver, sent: &[OrderEvent]) -> bool {
    let got = arrivals_per_order(receiver);
    let mut orders: Vec<&str> = sent.iter().map(|e| e.order_id()).collect();
    orders.sort();
    orders.dedup();
    orders
        .iter()
        .all(|o| got.get(*o).cloned().unwrap_or_default() == sent_ids_of(sent, o))
}

/// The sum of every line of `metrics` starting with `prefix` (one per label set).
fn metric_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

struct Outcome {
    clean_rate: f64,
    clean_secs: Option<f64>,
    mixed_rate: f64,
    mixed_secs: Option<f64>,
    mixed_accepted: usize,
    in_order: bool,
    parked: f64,
    dead_lettered: f64,
    circuit_opened: f64,
}

async fn run(
    storage: BrokerStorage,
    events: usize,
    poison: usize,
    orders: usize,
    timeout: Duration,
) -> Outcome {
    let broker = PrivateBroker::with_storage(storage);
    let world = BenchWorld::on(&broker.brokers).await;
    let poison_ids: Vec<String> = (0..poison).map(|i| format!("poison-{i}")).collect();
    let (mixed, mixed_rx) = world
        .partners_with(
            "mixed",
            1,
            &Script {
                fail_orders: poison_ids.clone(),
                fail_status: Some(500),
                ..Script::default()
            },
            "",
        )
        .await
        .remove(0);
    let (clean, clean_rx) = world.partners("clean", 1).await.remove(0);
    let publisher = world.publisher().await;
    let (mut mixed_good, mut clean_sent) = (Vec::new(), Vec::new());
    let mut pending = Vec::new();
    for i in 0..events {
        let kind = if i < orders {
            EventType::OrderCreated
        } else {
            EventType::OrderStatusChanged
        };
        // Every other event of `mixed` is a poison order's; the others cycle over
        // `orders` accepted orders, as do `clean`'s.
        let mixed_event = if i % 2 == 0 {
            OrderEvent::sample(kind, &poison_ids[(i / 2) % poison], &mixed, 1)
        } else {
            let e = OrderEvent::sample(kind, &format!("m-{}", (i / 2) % orders), &mixed, 1);
            mixed_good.push(e.clone());
            e
        };
        let clean_event = OrderEvent::sample(kind, &format!("c-{}", i % orders), &clean, 1);
        clean_sent.push(clean_event.clone());
        for e in [mixed_event, clean_event] {
            pending.push(publisher.enqueue(&e, None).await.expect("enqueue"));
        }
    }
    for p in pending {
        p.wait().await.expect("published");
    }
    eprintln!(
        "  published {} events ({} accepted for mixed)",
        2 * events,
        mixed_good.len()
    );
    let started = Instant::now();
    let (dispatcher, addr) = world.start_dispatcher();
    let (mut clean_secs, mut mixed_secs) = (None, None);
    let mut last_report = Instant::now();
    while (clean_secs.is_none() || mixed_secs.is_none()) && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if clean_secs.is_none() && clean_rx.unique() >= clean_sent.len() {
            clean_secs = Some(started.elapsed().as_secs_f64());
        }
        if mixed_secs.is_none() && mixed_rx.unique() >= mixed_good.len() {
            mixed_secs = Some(started.elapsed().as_secs_f64());
        }
        if last_report.elapsed() >= Duration::from_secs(15) {
            last_report = Instant::now();
            eprintln!(
                "  {:.0} s: clean {} of {}, mixed {} of {}",
                started.elapsed().as_secs_f64(),
                clean_rx.unique(),
                clean_sent.len(),
                mixed_rx.unique(),
                mixed_good.len()
            );
        }
    }
    for (name, rx) in [("clean", &clean_rx), ("mixed", &mixed_rx)] {
        let per_second: Vec<usize> = {
            let arrivals = rx.arrivals();
            let mut counts = Vec::new();
            for t in arrivals {
                let s = t.saturating_duration_since(started).as_secs() as usize;
                counts.resize(counts.len().max(s + 1), 0);
                counts[s] += 1;
            }
            counts
        };
        eprintln!("  {name} requests per second from start: {per_second:?}");
    }
    let metrics = reqwest::get(format!("{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    let of = |name: &str| format!("{name}{{partner=\"{mixed}\"");
    let outcome = Outcome {
        clean_rate: rate(&clean_rx).unwrap_or(0.0),
        clean_secs,
        mixed_rate: rate(&mixed_rx).unwrap_or(0.0),
        mixed_secs,
        mixed_accepted: mixed_rx.unique(),
        in_order: all_in_order(&mixed_rx, &mixed_good) && all_in_order(&clean_rx, &clean_sent),
        parked: metric_sum(&metrics, &of("dispatcher_parked_records_total")),
        dead_lettered: metric_sum(&metrics, &of("dispatcher_dead_lettered_total")),
        circuit_opened: metric_value(
            &metrics,
            &format!("dispatcher_circuit_opened_total{{partner=\"{mixed}\"}} "),
        )
        .unwrap_or(0.0),
    };
    drop(dispatcher);
    outcome
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = env_or("BENCH_EVENTS", 20_000);
    let poison = env_or("BENCH_POISON", 100);
    let orders = env_or("BENCH_ORDERS", 1_000);
    let timeout = Duration::from_secs(env_or("BENCH_TIMEOUT_SECS", 180) as u64);
    let binary = std::env::var("BENCH_DISPATCHER_BIN").unwrap_or_else(|_| "this build".into());
    let storage = match std::env::var("BENCH_STORAGE").as_deref() {
        Ok("memory") => BrokerStorage::Memory,
        Ok("sqlite") | Err(_) => BrokerStorage::Sqlite,
        Ok(other) => panic!("BENCH_STORAGE: unknown `{other}` (sqlite, memory)"),
    };
    println!(
        "poison: {events} events to each of mixed ({poison} poison orders answered 500, half the events; {orders} accepted orders) and clean ({orders} orders), one `dispatcher run` ({binary}), broker storage {storage:?}, timeout {} s",
        timeout.as_secs()
    );
    println!("| run | clean: rate (done at) | mixed accepted: rate (done at) | mixed ÷ clean | every accepted event, in order | poison parked / dead-lettered | mixed's circuit opened |");
    println!("|---|---|---|---|---|---|---|");
    for run_no in 1..=env_or("BENCH_RUNS", 1) {
        let o = run(storage, events, poison, orders, timeout).await;
        let at = |s: Option<f64>, got: usize| {
            s.map_or(format!("{got} by the timeout"), |s| format!("{s:.1} s"))
        };
        println!(
            "| {run_no} | {:.0}/s ({}) | {:.0}/s ({}) | {:.2} | {} | {:.0} / {:.0} | {:.0} |",
            o.clean_rate,
            at(o.clean_secs, 0),
            o.mixed_rate,
            at(o.mixed_secs, o.mixed_accepted),
            if o.clean_rate > 0.0 {
                o.mixed_rate / o.clean_rate
            } else {
                0.0
            },
            if o.in_order { "yes" } else { "no" },
            o.parked,
            o.dead_lettered,
            o.circuit_opened,
        );
    }
}
