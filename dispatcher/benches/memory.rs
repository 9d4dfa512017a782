//! Resident memory of a delivery lane whose partner is down while its delivery topic
//! holds 1,000,000 undelivered records (target: flat, below 256 MB).
//!
//!   cargo bench -p dispatcher --bench memory
//!
//! The broker is librdkafka's mock cluster in a child process (this binary re-executed
//! with BENCH_ROLE=broker), so the records it holds are not counted in the lane's
//! memory. The partner's URL is a closed port: every attempt fails, the circuit opens,
//! the lane's buffer fills and its partitions pause. RSS is sampled every 2 s.
//! Settings: BENCH_RECORDS (1000000), BENCH_SECS (60).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

mod common;

use common::env_or;

use dispatcher::lane;
use dispatcher::subscriptions::RetryPolicy;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

const BODY: &str = r#"{"type":"order.created","timestamp":"2026-11-22T10:00:00.000Z","data":{"order_id":"o","partner_id":"down","order":{"customer_ref":"C-1","status":"PENDING","items":[{"sku":"SKU-1","name":"Espresso beans","quantity":2,"unit_price":{"amount_minor":1250,"currency":"EUR"}}],"total":{"amount_minor":2500,"currency":"EUR"}}}}"#;

/// The child: a mock cluster holding `n` delivery records; prints its address, then
/// "ready", then lives until killed.
fn broker_main() {
    let n = env_or("BENCH_RECORDS", 1_000_000);
    let cluster = MockCluster::new(1).expect("mock");
    cluster
        .create_topic("deliveries.down", 6, 1)
        .expect("topic");
    cluster.create_topic("dlq.down", 1, 1).expect("topic");
    println!("{}", cluster.bootstrap_servers());
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "500000")
        .create()
        .expect("producer");
    for i in 0..n {
        let (id, key) = (format!("evt-{i}"), format!("order-{}", i % 50_000));
        let headers = common::delivery_headers(id.as_str(), "down-s");
        let mut record = BaseRecord::to("deliveries.down")
            .key(&key)
            .payload(BODY)
            .headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        if i % 10_000 == 0 {
            producer.poll(Duration::ZERO);
        }
    }
    producer.flush(Duration::from_secs(120)).expect("flushed");
    println!("ready");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("broker") {
        return broker_main();
    }
    let n = env_or("BENCH_RECORDS", 1_000_000);
    let secs = env_or("BENCH_SECS", 60) as u64;
    let started = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env("BENCH_ROLE", "broker")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("broker process");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let brokers = lines.next().expect("address").expect("address");
    assert_eq!(lines.next().expect("ready").expect("ready"), "ready");
    println!(
        "{n} undelivered records written in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let metrics = dispatcher::metrics::handle();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async move {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/webhook", closed.local_addr().expect("addr"));
        drop(closed);
        let common::Lane {
            settings,
            ctx,
            shutdown,
        } = common::lane(
            "down",
            brokers,
            url,
            64,
            RetryPolicy {
                max_attempts: 1_000_000,
                max_elapsed_secs: 86_400,
                initial_backoff_ms: 100,
                max_backoff_ms: 5_000,
            },
        );
        let config = common::lane_config("memory", 1024, Duration::from_secs(2), 6);
        let before = rss_mb();
        println!("partner down; lane RSS over time (MB):");
        println!("  before the lane: {before:.1}");
        let lane = tokio::spawn(lane::run("down".into(), settings, config, ctx));
        let start = Instant::now();
        let mut samples = Vec::new();
        while start.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let rss = rss_mb();
            samples.push(rss);
            let text = metrics.render();
            let gauge = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}{{partner=\"down\"}} ")))
                    .unwrap_or("-")
                    .to_string()
            };
            println!(
                "  t={:>3}s  {rss:.1}   buffered {} paused {} circuit {} attempts failed {}",
                start.elapsed().as_secs(),
                gauge("dispatcher_buffered_records"),
                gauge("dispatcher_lane_paused"),
                gauge("dispatcher_circuit_state"),
                text.lines()
                    .find(|l| l.starts_with("dispatcher_attempts_total{partner=\"down\",result=\"transport\"}"))
                    .and_then(|l| l.rsplit(' ').next())
                    .unwrap_or("-"),
            );
        }
        shutdown.cancel();
        let _ = lane.await;
        let half = samples.len() / 2;
        let first = samples[..half.max(1)].iter().cloned().fold(0.0, f64::max);
        let last = samples[half..].iter().cloned().fold(0.0, f64::max);
        let peak = samples.iter().cloned().fold(0.0, f64::max);
        println!(
            "peak {peak:.1} MB (target < 256); max of the first half {first:.1} MB, of the second half {last:.1} MB ({:+.1} MB)",
            last - first
        );
    });
    let _ = child.kill();
    let _ = child.wait();
}
