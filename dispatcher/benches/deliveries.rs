//! Deliveries per second to a local receiver, next to wrk and a bare reqwest loop against
//! the same receiver, in one run (targets: >= 0.6x wrk, >= 0.9x bare client).
//!
//!   cargo bench -p dispatcher --bench deliveries
//!
//! The dispatcher side is one partner's delivery lane reading a pre-filled delivery topic
//! on librdkafka's mock cluster (in-process, so the figure is the lane's own cost: fetch,
//! per-key scheduling, signing, HTTP, offsets). The receiver answers 204 at once.
//! Settings: BENCH_RECORDS (20000), BENCH_CONCURRENCY (64), BENCH_WRK_SECS (10),
//! BENCH_ONLY=lane|bare (one part alone, for profiling).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::env_or;

use axum::http::StatusCode;
use axum::routing::post;
use dispatcher::lane::{self, LaneConfig};
use dispatcher::subscription::RetryPolicy;
use futures::stream::{self, StreamExt};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const BODY: &str = r#"{"type":"order.created","timestamp":"2026-11-22T10:00:00.000Z","data":{"order_id":"o","partner_id":"p","order":{"customer_ref":"C-1","status":"PENDING","items":[{"sku":"SKU-1","name":"Espresso beans","quantity":2,"unit_price":{"amount_minor":1250,"currency":"EUR"}}],"total":{"amount_minor":2500,"currency":"EUR"}}}}"#;

/// The receiver runs in a child process (this binary, re-executed with BENCH_ROLE=receiver),
/// as a partner's server would: wrk, the bare loop and the lane all reach it over loopback
/// and none of them shares its runtime. It answers 204 and counts; `GET /count` reads the
/// count.
fn receiver_main() {
    // One thread, like wrk's one: on two cores more threads only add context switches.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let count = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&count);
        let app = axum::Router::new()
            .route(
                "/webhook",
                post(move || {
                    let c = Arc::clone(&c);
                    async move {
                        c.fetch_add(1, Ordering::Relaxed);
                        StatusCode::NO_CONTENT
                    }
                }),
            )
            .route(
                "/count",
                axum::routing::get(move || {
                    let count = Arc::clone(&count);
                    async move { count.load(Ordering::Relaxed).to_string() }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("http://{}", listener.local_addr().expect("addr"));
        let _ = axum::serve(listener, app).await;
    });
}

struct Receiver {
    child: std::process::Child,
    base: String,
    client: reqwest::Client,
}

impl Receiver {
    fn start() -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .env("BENCH_ROLE", "receiver")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the receiver process");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("receiver address");
        Self {
            child,
            base: line.trim().to_string(),
            client: reqwest::Client::new(),
        }
    }

    fn url(&self) -> String {
        format!("{}/webhook", self.base)
    }

    async fn count(&self) -> u64 {
        let text = self
            .client
            .get(format!("{}/count", self.base))
            .send()
            .await
            .expect("count")
            .text()
            .await
            .expect("count body");
        text.parse().expect("count is a number")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wrk(url: &str, concurrency: usize) -> Option<f64> {
    let dir = std::env::temp_dir().join(format!("bench-deliveries-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let script = dir.join("post.lua");
    std::fs::write(&script, format!("wrk.method = \"POST\"\nwrk.body = [==[{BODY}]==]\nwrk.headers[\"content-type\"] = \"application/json\"\n")).ok()?;
    let secs = env_or("BENCH_WRK_SECS", 10);
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{concurrency}"),
            &format!("-d{secs}s"),
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .await
        .ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The same reqwest settings as the webhook client (pooled, no redirects, nodelay), no
/// Kafka, no signing: the HTTP ceiling of this process.
async fn bare(url: &str, n: usize, concurrency: usize) -> f64 {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let start = Instant::now();
    let ok = stream::iter(0..n)
        .map(|_| {
            let client = client.clone();
            async move {
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(BODY)
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(ok, n);
    n as f64 / start.elapsed().as_secs_f64()
}

async fn dispatcher_lane(receiver: &Receiver, n: usize, concurrency: usize) -> f64 {
    let url = receiver.url();
    let cluster = MockCluster::new(1).expect("mock");
    cluster
        .create_topic("deliveries.bench", 6, 1)
        .expect("topic");
    cluster.create_topic("dlq.bench", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let (id, key) = (format!("evt-{i}"), format!("order-{}", i % 5000));
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "webhook-id",
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: "subscription-id",
                value: Some("bench-s"),
            });
        pending.push(
            producer
                .send_result(
                    FutureRecord::to("deliveries.bench")
                        .key(&key)
                        .payload(BODY)
                        .headers(headers),
                )
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    for p in pending {
        p.await.expect("delivered").expect("written");
    }
    let common::Lane {
        settings,
        ctx,
        shutdown,
    } = common::lane("bench", brokers, url, concurrency, RetryPolicy::default());
    let config = LaneConfig {
        group_prefix: "bench".into(),
        max_buffered: 4096,
        shutdown_deadline: Duration::from_secs(5),
        partitions: 6,
        flow: dispatcher::flow::FlowConfig::default(),
        park_after: None,
    };
    let before = receiver.count().await;
    let lane = tokio::spawn(lane::run("bench".into(), settings, config, ctx));
    // Timed from the first delivery (the group join is not delivery work).
    let mut first = before;
    while first == before {
        tokio::time::sleep(Duration::from_millis(1)).await;
        first = receiver.count().await;
    }
    let start = Instant::now();
    while receiver.count().await < before + n as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = (before + n as u64 - first) as f64 / start.elapsed().as_secs_f64();
    shutdown.cancel();
    let _ = lane.await;
    rate
}

fn main() {
    if std::env::var("BENCH_ROLE").as_deref() == Ok("receiver") {
        return receiver_main();
    }
    let threads = env_or("BENCH_THREADS", 2);
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    runtime.expect("runtime").block_on(bench());
}

async fn bench() {
    let n = env_or("BENCH_RECORDS", 20_000);
    let concurrency = env_or("BENCH_CONCURRENCY", 64);
    let receiver = Receiver::start();
    let url = receiver.url();
    // BENCH_ONLY=lane|bare runs one part alone (for profiling).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wrk_rate = match only.as_str() {
        "" => wrk(&url, concurrency).await,
        _ => None,
    };
    let bare_rate = match only.as_str() {
        "" | "bare" => bare(&url, n, concurrency).await,
        _ => f64::NAN,
    };
    let lane_rate = match only.as_str() {
        "" | "lane" => dispatcher_lane(&receiver, n, concurrency).await,
        _ => f64::NAN,
    };
    println!("deliveries to a local receiver: {n} records, {concurrency} in flight");
    match wrk_rate {
        Some(w) => println!("  wrk -t1 -c{concurrency}          {w:>9.0} req/s"),
        None => println!("  wrk                     not installed (apt-get install wrk)"),
    }
    println!("  bare reqwest loop       {bare_rate:>9.0} req/s");
    println!("  dispatcher lane         {lane_rate:>9.0} deliveries/s (signed, per-key ordered, offsets stored)");
    if let Some(w) = wrk_rate {
        println!(
            "  dispatcher / wrk        {:.2}x (target >= 0.6)",
            lane_rate / w
        );
    }
    println!(
        "  dispatcher / bare       {:.2}x (target >= 0.9)",
        lane_rate / bare_rate
    );
}
