//! Producer throughput for ~1 KB order events, printed as events/s and as ratios to a raw
//! rdkafka FutureProducer sending the same encoded bytes with the same settings, all in
//! one run (targets: library >= 0.8x raw, HTTP ingest >= 0.5x raw).
//!
//!   cargo bench -p producer --bench throughput            # librdkafka mock cluster
//!   KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 cargo bench ... # also the real broker
//!
//! Settings (environment): BENCH_EVENTS (default 20000), BENCH_ROUNDS (4, best kept, order alternating),
//! BENCH_HTTP_CONCURRENCY (256). The registry is served in-process on 127.0.0.1.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use order_schemas::{EventType, OrderCodec, OrderEvent};
use producer::ingest::{self, IngestConfig};
use producer::{Publisher, PublisherConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Target {
    name: &'static str,
    brokers: String,
    mock: Option<MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
}

impl Target {
    async fn topic(&self, prefix: &str) -> String {
        let name = format!(
            "{prefix}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        match &self.mock {
            Some(cluster) => cluster.create_topic(&name, 6, 1).expect("mock topic"),
            None => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", &self.brokers)
                    .create()
                    .expect("admin");
                let t = NewTopic::new(&name, 6, TopicReplication::Fixed(1));
                for r in admin
                    .create_topics([&t], &AdminOptions::new())
                    .await
                    .expect("create")
                {
                    r.expect("topic created");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        name
    }
}

fn events(n: usize) -> Vec<OrderEvent> {
    (0..n)
        .map(|i| {
            let kind = if i < 1000 {
                EventType::OrderCreated
            } else {
                EventType::OrderStatusChanged
            };
            OrderEvent::sample(
                kind,
                &format!("order-{}", i % 1000),
                &format!("partner-{}", i % 3),
                16,
            )
        })
        .collect()
}

/// Raw baseline: a FutureProducer with the publisher's settings sending pre-encoded bytes.
async fn raw(target: &Target, registry: &str, events: &[OrderEvent]) -> (f64, usize) {
    let topic = target.topic("raw").await;
    let codec = OrderCodec::new(registry, &topic, Duration::from_secs(5)).expect("codec");
    let mut payloads = Vec::with_capacity(events.len());
    for e in events {
        payloads.push((
            e.order_id().to_string(),
            e.event_type().name(),
            e.event_id().to_string(),
            codec.encode(e).await.expect("encode"),
        ));
    }
    let bytes = payloads.iter().map(|(_, _, _, p)| p.len()).sum::<usize>() / payloads.len();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &target.brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    let start = Instant::now();
    let mut pending = Vec::with_capacity(payloads.len());
    for (key, event_type, event_id, payload) in &payloads {
        // The same record the library writes: key, payload and headers.
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "event-type",
                value: Some(*event_type),
            })
            .insert(Header {
                key: "event-id",
                value: Some(event_id.as_str()),
            });
        let record = FutureRecord::to(&topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        pending.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("enqueue"),
        );
    }
    for p in pending {
        p.await.expect("delivery").expect("acknowledged");
    }
    (events.len() as f64 / start.elapsed().as_secs_f64(), bytes)
}

async fn connect(target: &Target, registry: &str, topic: &str) -> Publisher {
    let config = PublisherConfig::new(&target.brokers, topic, registry);
    Publisher::connect(&config).await.expect("publisher")
}

/// The library: validate + encode + enqueue in order, acknowledgements awaited together.
async fn library(target: &Target, registry: &str, events: &[OrderEvent]) -> f64 {
    let topic = target.topic("lib").await;
    let publisher = connect(target, registry, &topic).await;
    let start = Instant::now();
    let mut pending = Vec::with_capacity(events.len());
    for e in events {
        pending.push(publisher.enqueue(e, None).await.expect("enqueue"));
    }
    for p in pending {
        p.wait().await.expect("acknowledged");
    }
    events.len() as f64 / start.elapsed().as_secs_f64()
}

/// HTTP ingest: `concurrency` connections posting JSON over loopback, each waiting for
/// 202. The load comes from wrk (a separate process) when it is installed, otherwise
/// from a reqwest client in this process (which then competes with the server for CPU).
async fn http(target: &Target, registry: &str, events: &[OrderEvent], concurrency: usize) -> f64 {
    let topic = target.topic("http").await;
    let publisher = Arc::new(connect(target, registry, &topic).await);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1/events", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ingest::serve(
        listener,
        ingest::router(publisher, IngestConfig::default()),
        async move {
            let _ = stopped.await;
        },
    ));
    let rate = if wrk_available() {
        wrk(&url, &events[0], concurrency).await
    } else {
        reqwest_load(&url, events, concurrency).await
    };
    let _ = stop.send(());
    let _ = server.await;
    rate
}

fn wrk_available() -> bool {
    std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_ok()
}

/// Runs wrk for BENCH_WRK_SECS (default 10) with a Lua script that gives each request its
/// own order id; fails if any answer was not 2xx.
async fn wrk(url: &str, template: &OrderEvent, concurrency: usize) -> f64 {
    let mut json = template.to_json();
    let fields = json.as_object_mut().expect("object");
    fields.remove("event_id");
    fields.remove("occurred_at");
    fields.insert("order_id".into(), "__ORDER__".into());
    let body = json.to_string();
    let (prefix, suffix) = body.split_once("__ORDER__").expect("marker");
    let script = format!(
        "counter = 0\nrequest = function()\n  counter = counter + 1\n  local body = [==[{prefix}]==] .. \"order-\" .. (counter % 1000) .. [==[{suffix}]==]\n  return wrk.format(\"POST\", nil, {{[\"content-type\"] = \"application/json\"}}, body)\nend\n"
    );
    let dir = std::env::temp_dir().join(format!("bench-wrk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("post.lua");
    std::fs::write(&path, script).expect("script");
    let secs = env_or("BENCH_WRK_SECS", 10);
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{concurrency}"),
            &format!("-d{secs}s"),
            "-s",
        ])
        .arg(&path)
        .arg(url)
        .output()
        .await
        .expect("wrk");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx"),
        "some requests were not accepted:\n{text}"
    );
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{text}"))
}

async fn reqwest_load(url: &str, events: &[OrderEvent], concurrency: usize) -> f64 {
    let url = url.to_string();
    let bodies: Vec<String> = events.iter().map(|e| e.to_json().to_string()).collect();
    let client = reqwest::Client::new();
    let start = Instant::now();
    let accepted = stream::iter(bodies)
        .map(|body| {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let resp = client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                resp.map(|r| r.status().as_u16()).unwrap_or(0)
            }
        })
        .buffer_unordered(concurrency)
        .filter(|s| futures::future::ready(*s == 202))
        .count()
        .await;
    let rate = accepted as f64 / start.elapsed().as_secs_f64();
    assert_eq!(accepted, events.len(), "every request accepted");
    rate
}

#[tokio::main]
async fn main() {
    let n = env_or("BENCH_EVENTS", 20_000);
    let rounds = env_or("BENCH_ROUNDS", 4).max(1);
    let concurrency = env_or("BENCH_HTTP_CONCURRENCY", 256);
    let (listener, addr) = schema_registry::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    tokio::spawn(schema_registry::serve(
        listener,
        Arc::new(schema_registry::Store::in_memory()),
        std::future::pending(),
    ));
    let registry = format!("http://{addr}");

    let mock = MockCluster::new(1).expect("mock cluster");
    let mut targets = vec![Target {
        name: "mock cluster",
        brokers: mock.bootstrap_servers(),
        mock: Some(mock),
    }];
    if let Ok(brokers) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        targets.push(Target {
            name: "nisshi broker",
            brokers,
            mock: None,
        });
    }
    let events = events(n);
    let client = if wrk_available() {
        "wrk -t1 (separate process)"
    } else {
        "reqwest in-process"
    };
    println!("producer throughput: {n} events per run, best of {rounds} rounds, HTTP load from {client} with {concurrency} connections");
    for target in &targets {
        let (mut best_raw, mut best_lib, mut best_http, mut size) = (0f64, 0f64, 0f64, 0);
        for round in 0..rounds {
            // Alternate the order: a broker may slow down as its storage grows, which
            // must not favour whichever path runs first.
            let (r, l, h);
            if round % 2 == 0 {
                (r, size) = raw(target, &registry, &events).await;
                l = library(target, &registry, &events).await;
                h = http(target, &registry, &events, concurrency).await;
            } else {
                h = http(target, &registry, &events, concurrency).await;
                l = library(target, &registry, &events).await;
                (r, size) = raw(target, &registry, &events).await;
            }
            println!(
                "  {} round {round}: raw {r:.0}, library {l:.0}, http {h:.0} events/s",
                target.name
            );
            best_raw = best_raw.max(r);
            best_lib = best_lib.max(l);
            best_http = best_http.max(h);
        }
        println!(
            "{} ({}), event size {size} bytes:",
            target.name, target.brokers
        );
        println!("  raw FutureProducer  {best_raw:>9.0} events/s  1.00x");
        println!(
            "  library Publisher   {best_lib:>9.0} events/s  {:.2}x raw (target >= 0.80)",
            best_lib / best_raw
        );
        println!(
            "  HTTP ingest         {best_http:>9.0} events/s  {:.2}x raw (target >= 0.50)",
            best_http / best_raw
        );
    }
}
