//! Partner isolation: partner B's throughput and p99 delivery latency alone, and among
//! BENCH_PARTNERS (100) partners of which BENCH_BAD (10) are down, answer in 2 s, or
//! return 503 to everything (targets: B keeps >= 0.9 of its solo throughput, p99 within
//! 2x of its solo figure). The others are subscribed and idle. Scenario `held` (#22
//! item 2; targets >= 0.9 and p99 <= 1.2x): B among BENCH_HELD (100) partners down for
//! hours, each with BENCH_HELD_BACKLOG (3,000) parked records in its retry topic that
//! wait an hour for their backoff (records held by policy, more than the global cap
//! together).
//!
//!   cargo bench -p dispatcher --bench isolation      # BENCH_MODES=down,slow,503,held
//!
//! Every lane runs in this process over librdkafka's mock cluster, sharing the runtime
//! and one intake (two Kafka consumers), as in `dispatcher run`; each scenario runs in a
//! process of its own. Each bad partner has a backlog of BENCH_BAD_BACKLOG (2,000)
//! records throughout. For each scenario:
//! - throughput: B drains a backlog of BENCH_RECORDS (80,000; about 2 s of work, so start-up noise weighs less) records;
//! - latency: B's records are produced at BENCH_RATE (1,000/s) for BENCH_SECS (8 s),
//!   each carrying its production time; B's receiver computes the delivery latency.

mod common;

use common::env_or;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use dispatcher::lane::{self, Intake};
use dispatcher::subscriptions::RetryPolicy;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Alone,
    Down,
    Slow,
    Failing,
    /// Partners whose parked records wait for their backoff.
    Held,
}

/// `dispatcher run`'s default `--max-buffered-total`.
const GLOBAL_CAP: usize = 65_536;

/// Writes `n` parked records of `partner` to `retries.<partner>` (over 500 orders), due
/// in an hour.
fn park(
    producer: &FutureProducer,
    partner: &str,
    n: usize,
) -> Vec<rdkafka::producer::DeliveryFuture> {
    use rdkafka::message::Header;
    let topic = format!("retries.{partner}");
    let sub = format!("{partner}-s");
    let due = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    (0..n)
        .map(|i| {
            let (id, key) = (
                format!("{partner}-parked-{i}"),
                format!("order-{}", i % 500),
            );
            let headers = common::delivery_headers(id.as_str(), sub.as_str())
                .insert(Header {
                    key: dispatcher::kafka::headers::RETRY_ATTEMPTS,
                    value: Some("3"),
                })
                .insert(Header {
                    key: dispatcher::kafka::headers::RETRY_NOT_BEFORE,
                    value: Some(due.as_str()),
                });
            let payload = body(now_us());
            producer
                .send_result(
                    FutureRecord::to(&topic)
                        .key(&key)
                        .payload(&payload)
                        .headers(headers),
                )
                .map_err(|(e, _)| e)
                .expect("enqueued")
        })
        .collect()
}

/// A receiver: answers after `delay` with `status`; records delivery latencies (from
/// the `sent_us` in the body) and counts.
#[derive(Clone, Default)]
struct Seen {
    latencies_us: Arc<Mutex<Vec<u128>>>,
}

async fn receiver(status: StatusCode, delay: Duration, seen: Seen) -> String {
    let app = axum::Router::new().route(
        "/webhook",
        post(move |body: Bytes| {
            let seen = seen.clone();
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if let Some(sent) = std::str::from_utf8(&body)
                    .ok()
                    .and_then(|b| b.split("\"sent_us\":").nth(1))
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|d| d.parse::<u128>().ok())
                {
                    let mut l = seen.latencies_us.lock().unwrap_or_else(|p| p.into_inner());
                    l.push(now_us().saturating_sub(sent));
                }
                status
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/webhook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn body(sent_us: u128) -> String {
    format!(
        r#"{{"type":"order.created","timestamp":"2026-11-22T10:00:00.000Z","data":{{"sent_us":{sent_us},"order_id":"o","order":{{"customer_ref":"C-1","status":"PENDING","items":[],"total":{{"amount_minor":2500,"currency":"EUR"}}}}}}}}"#
    )
}

/// Enqueues one delivery record of `partner` (its body carries the time of now).
fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    partner: &str,
    i: usize,
) -> rdkafka::producer::DeliveryFuture {
    let (id, key) = (format!("{partner}-{i}"), format!("order-{}", i % 2000));
    let sub = format!("{partner}-s");
    let headers = common::delivery_headers(id.as_str(), sub.as_str());
    let payload = body(now_us());
    producer
        .send_result(
            FutureRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .headers(headers),
        )
        .map_err(|(e, _)| e)
        .expect("enqueued")
}

async fn settle(pending: Vec<rdkafka::producer::DeliveryFuture>) {
    for p in pending {
        p.await.expect("delivered").expect("written");
    }
}

/// The mock cluster answers a fetch only when fetch.wait.max.ms (500 ms) has passed,
/// where Apache Kafka answers as soon as data arrives: without this, the latency figures
/// would be the fetch wait.
fn fast_fetch() -> (String, String) {
    ("fetch.wait.max.ms".into(), "5".into())
}

fn p99(mut v: Vec<u128>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[(v.len() * 99 / 100).min(v.len() - 1)] as f64 / 1000.0
}

/// B's throughput (records/s) and p99 delivery latency (ms) with the bad partners in
/// `mode` (none with `Mode::Alone`).
async fn scenario(mode: Mode, n: usize, rate: usize, secs: u64) -> (f64, f64) {
    let (crowd, bad) = match mode {
        Mode::Alone => (0, 0),
        Mode::Held => (0, env_or("BENCH_HELD", 100)),
        _ => {
            let partners = env_or("BENCH_PARTNERS", 100);
            let bad = env_or("BENCH_BAD", 10).min(partners.saturating_sub(1));
            (partners - 1 - bad, bad)
        }
    };
    let backlog = env_or("BENCH_BAD_BACKLOG", 2_000);
    let cluster = MockCluster::new(1).expect("mock");
    cluster.create_topic("deliveries.b", 6, 1).expect("topic");
    let bad_names: Vec<String> = (0..bad).map(|i| format!("a{i}")).collect();
    let crowd_names: Vec<String> = (0..crowd).map(|i| format!("h{i}")).collect();
    for p in bad_names.iter().chain(&crowd_names) {
        cluster
            .create_topic(&format!("deliveries.{p}"), 2, 1)
            .expect("topic");
        if mode == Mode::Held {
            cluster
                .create_topic(&format!("retries.{p}"), 2, 1)
                .expect("topic");
        }
    }
    let brokers = cluster.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    // The bad partners' backlogs, for the whole run.
    let mut pending = Vec::new();
    for p in &bad_names {
        if mode == Mode::Held {
            pending.extend(park(&producer, p, env_or("BENCH_HELD_BACKLOG", 3_000)));
            // (A bounded local queue: settle as it goes.)
            settle(std::mem::take(&mut pending)).await;
            continue;
        }
        let topic = format!("deliveries.{p}");
        pending.extend((0..backlog).map(|i| enqueue(&producer, &topic, p, i)));
    }
    settle(pending).await;
    let url_a = match mode {
        Mode::Down | Mode::Alone | Mode::Held => {
            let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let url = format!("http://{}/webhook", closed.local_addr().expect("addr"));
            drop(closed);
            url
        }
        Mode::Slow => {
            receiver(
                StatusCode::NO_CONTENT,
                Duration::from_secs(2),
                Seen::default(),
            )
            .await
        }
        Mode::Failing => {
            receiver(
                StatusCode::SERVICE_UNAVAILABLE,
                Duration::ZERO,
                Seen::default(),
            )
            .await
        }
    };
    let url_idle = receiver(StatusCode::NO_CONTENT, Duration::ZERO, Seen::default()).await;
    let seen = Seen::default();
    let url_b = receiver(StatusCode::NO_CONTENT, Duration::ZERO, seen.clone()).await;
    let retry = RetryPolicy {
        max_attempts: 1_000,
        max_elapsed_secs: 3_600,
        initial_backoff_ms: 100,
        max_backoff_ms: 2_000,
    };
    let mut config = common::lane_config("isolation", 1024, Duration::from_secs(1), 6);
    // As `dispatcher run` has it.
    config.global = lane::GlobalCap::new(GLOBAL_CAP);
    // One intake and one producer for every lane, as `dispatcher run` has.
    let mut b = common::lane("b", brokers.clone(), url_b, 64, retry.clone());
    b.settings.options.push(fast_fetch());
    let shutdown = b.shutdown.clone();
    let (intake, intake_task) =
        Intake::start(&b.settings, "isolation", &config.groups, shutdown.clone()).expect("intake");
    let mut lanes = Vec::new();
    let mut start_lane = |name: &str, mut l: common::Lane| {
        l.ctx.producer = b.ctx.producer.clone();
        l.ctx.shutdown = shutdown.clone();
        let link = intake.join(name, l.ctx.park_after.is_some(), None);
        lanes.push(tokio::spawn(lane::run_linked(
            name.into(),
            link,
            config.clone(),
            l.ctx,
        )));
    };
    for p in &bad_names {
        let mut l = common::lane(p, brokers.clone(), url_a.clone(), 64, retry.clone());
        if mode == Mode::Held {
            l.ctx.park_after = Some(3);
        }
        start_lane(p, l);
    }
    for p in &crowd_names {
        start_lane(
            p,
            common::lane(p, brokers.clone(), url_idle.clone(), 64, retry.clone()),
        );
    }
    let b_ctx = common::Lane {
        settings: b.settings.clone(),
        ctx: b.ctx.clone(),
        shutdown: shutdown.clone(),
    };
    start_lane("b", b_ctx);
    let count = || seen.latencies_us.lock().map_or(0, |l| l.len());
    if mode == Mode::Held {
        // B is measured beside partners that hold their records, not while they start:
        // until the records all lanes hold stop growing (at the global cap, or all
        // taken in).
        let began = Instant::now();
        while config.global.held() == 0 && began.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (mut last, mut since) = (config.global.held(), Instant::now());
        while since.elapsed() < Duration::from_secs(3) && began.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if config.global.held() != last {
                (last, since) = (config.global.held(), Instant::now());
            }
        }
        println!(
            "  held by the {bad} partners: {} records ({:.0} s to take them in)",
            last,
            began.elapsed().as_secs_f64() - 3.0
        );
    }

    // Latency at a fixed rate first (the lanes join their groups meanwhile: the first
    // record is produced once B answers a warm-up record).
    settle(vec![enqueue(
        &producer,
        "deliveries.b",
        "b",
        usize::MAX / 2,
    )])
    .await;
    while count() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = rate * secs as usize;
    let start = Instant::now();
    let mut pending = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        pending.push(enqueue(&producer, "deliveries.b", "b", i));
    }
    settle(pending).await;
    while count() < total + 1 && start.elapsed() < Duration::from_secs(secs + 30) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let latencies: Vec<u128> = seen
        .latencies_us
        .lock()
        .map(|l| l[1..].to_vec())
        .unwrap_or_default();
    let latency = p99(latencies);

    // Throughput: a backlog of n.
    let before = count();
    let pending = (0..n)
        .map(|i| enqueue(&producer, "deliveries.b", "b", total + i))
        .collect();
    let start = Instant::now();
    settle(pending).await;
    let target = total + 1 + n;
    while count() < target && start.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let throughput = (count() - before.min(count())) as f64 / start.elapsed().as_secs_f64();
    shutdown.cancel();
    for l in lanes {
        let _ = l.await;
    }
    let _ = intake_task.await;
    intake.close();
    (throughput, latency)
}

/// Runs one scenario in a child process (this binary, BENCH_SCENARIO=<mode>), so that no
/// scenario inherits another's leftovers (connections, timers, receivers).
fn run_child(mode: &str) -> (f64, f64) {
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env("BENCH_SCENARIO", mode)
        .output()
        .expect("scenario process");
    let text = String::from_utf8_lossy(&out.stdout);
    for note in text.lines().filter(|l| l.starts_with("  held")) {
        println!("{note}");
    }
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("scenario {mode} failed: {text}"));
    let mut parts = line
        .split_whitespace()
        .map(|v| v.parse::<f64>().expect("number"));
    (
        parts.next().expect("throughput"),
        parts.next().expect("p99"),
    )
}

fn main() {
    let n = env_or("BENCH_RECORDS", 80_000);
    let rate = env_or("BENCH_RATE", 1_000);
    let secs = env_or("BENCH_SECS", 8) as u64;
    if let Ok(mode) = std::env::var("BENCH_SCENARIO") {
        let mode = match mode.as_str() {
            "alone" => Mode::Alone,
            "down" => Mode::Down,
            "slow" => Mode::Slow,
            "held" => Mode::Held,
            _ => Mode::Failing,
        };
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (tp, p) = runtime.block_on(scenario(mode, n, rate, secs));
        println!("RESULT {tp} {p}");
        return;
    }
    println!(
        "partner B among {} partners, {} of them bad (B: backlog {n}; latency at {rate}/s for {secs} s)",
        env_or("BENCH_PARTNERS", 100),
        env_or("BENCH_BAD", 10)
    );
    let (solo_tp, solo_p99) = run_child("alone");
    println!(
        "  {:<28} {solo_tp:>8.0} records/s  p99 {solo_p99:>7.1} ms",
        "B alone"
    );
    // BENCH_MODES=down,slow,503 picks scenarios (default: all).
    let modes = std::env::var("BENCH_MODES").unwrap_or_else(|_| "down,slow,503,held".into());
    for (key, name) in [
        ("down", "bad ones down (refused)"),
        ("slow", "bad ones answering in 2 s"),
        ("503", "bad ones answering 503"),
        ("held", "100 holding parked records"),
    ] {
        if !modes.split(',').any(|m| m == key) {
            continue;
        }
        let (tp, p) = run_child(key);
        println!(
            "  {name:<28} {tp:>8.0} records/s  p99 {p:>7.1} ms   throughput {:.2}x (target >= 0.9), p99 {:.2}x (target <= 2)",
            tp / solo_tp,
            p / solo_p99
        );
    }
}
