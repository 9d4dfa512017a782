//! Time to webhook (issue #16): how long after an internal service publishes an order
//! event its partners receive the webhook, split per hop, next to the broker's own floor
//! measured in the same run.
//!
//!   scripts/bench-latency.sh            (starts the registry, runs this, stops it)
//!
//! For each rate of BENCH_RATES (events/s, default `100,1000`): a broker of its own
//! started as `scripts/stack.sh` starts it, 10 partners each with a receiver answering at
//! once, one `dispatcher run` with default settings; events are published at the rate for
//! BENCH_SECS (15) seconds, round robin over the partners, once every group is assigned
//! (read from `/status`). Per event, from timestamps the pipeline already carries:
//!
//! - publish → routed: the orders record's timestamp (the producer's create time) to the
//!   `deliveries.<partner>` record's (the router's create time): the first Kafka hop,
//!   the router's fetch wait, decode, match and produce;
//! - routed → partner: that timestamp to the receiver's arrival: the second Kafka hop,
//!   the lane, signing and the HTTP round trip;
//! - total.
//!
//! Each hop is then split with the dispatcher's own `dispatcher_hop_seconds` histogram
//! (read from `/metrics` at the end; quantiles interpolated within its buckets, the mean
//! exact): publish → router read, routed → lane read (the second Kafka hop), lane read →
//! request sent (the lane's queue, flow control, signing). What remains of routed →
//! partner is the HTTP round trip.
//!
//! The floor: on the same broker, a bare producer and consumer made from the
//! dispatcher's own client settings (`KafkaSettings`, the consumer's as the lanes' with any
//! `lanes:` options) send records at the same rate; its
//! latency is record timestamp to the consumer's receipt. The two hops plus the HTTP
//! round trip should cost about twice the floor. Figures print; nothing is asserted.
//! BENCH_SHADOW=1 adds a bare consumer beside the lanes (the broker's own second hop
//! under the same load). BENCH_DUMP=DIR writes each delivery's timestamps to DIR/latency-RATE.csv.
//! BENCH_KAFKA_OPTIONS (comma-separated librdkafka `key=value`) are given to the
//! dispatcher (`--kafka-option`) and to the floor's clients alike. A rate with a
//! `-nolog` suffix (`1000-nolog`) runs the dispatcher with the delivery log off, to
//! measure what the log costs (e.g. `BENCH_RATES=1000,1000-nolog,1000,1000-nolog`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dispatcher::kafka::{read_ranges, KafkaSettings, TopicRecord};
use e2e::{bench_kafka_options, create_topic_on, env_or, unique, BenchWorld, PrivateBroker};
use futures::StreamExt;
use order_schemas::{EventType, OrderEvent};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

const PARTNERS: usize = 10;

fn settings(brokers: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: brokers.to_string(),
        session_timeout: Duration::from_secs(10),
        max_poll_interval: Duration::from_secs(300),
        options: bench_kafka_options(),
        replication: None,
    }
}

/// Milliseconds since the epoch.
fn millis(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn record_millis(r: &TopicRecord) -> Option<f64> {
    r.timestamp.map(|t| t.timestamp_millis() as f64)
}

/// p50, p90, p99, max of `ms`, as text.
fn summary(mut ms: Vec<f64>) -> String {
    if ms.is_empty() {
        return "no samples".into();
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    format!(
        "{:>6.0} {:>6.0} {:>6.0} {:>6.0}",
        at(0.5),
        at(0.9),
        at(0.99),
        ms[ms.len() - 1]
    )
}

fn quantile(mut ms: Vec<f64>, q: f64) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms.get(((ms.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Every record of `topic`, read with a group-less reader.
async fn read_all(brokers: &str, topic: &str) -> Vec<TopicRecord> {
    let (settings, topic) = (settings(brokers), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = settings.reader().create().expect("reader");
        let partitions = settings.partition_count(&topic).expect("partitions");
        let mut ranges = BTreeMap::new();
        for p in 0..partitions as i32 {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .expect("watermarks");
            ranges.insert(p, (low, high));
        }
        read_ranges(&consumer, &topic, &ranges, Duration::from_secs(60)).expect("read")
    })
    .await
    .expect("reader task")
}

/// Latencies (ms) of a bare producer → consumer round trip at `rate` for `secs`.
async fn floor(brokers: &str, rate: usize, secs: usize) -> Vec<f64> {
    let topic = unique("floor");
    create_topic_on(brokers, &topic, 6).await;
    let kafka = settings(brokers);
    // The lanes' consumer settings (`lanes:` options included): the floor is one hop as
    // the pipeline's second hop reads it.
    let consumer: StreamConsumer = kafka
        .staged("lanes", kafka.consumer(&unique("floor")))
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let producer: FutureProducer = kafka.producer().create().expect("producer");
    // Wait for the assignment before measuring.
    let warm = FutureRecord::to(&topic).key("warm").payload("warm");
    let _ = producer.send(warm, Duration::from_secs(10)).await;
    let mut stream = consumer.stream();
    let _ = tokio::time::timeout(Duration::from_secs(60), stream.next()).await;
    let count = rate * secs;
    let sending = {
        let (producer, topic) = (producer.clone(), topic.clone());
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for i in 0..count {
                tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64))
                    .await;
                let key = format!("k{}", i % 1000);
                let record = FutureRecord::to(&topic).key(&key).payload("x");
                let _ = producer.send_result(record);
            }
        })
    };
    let mut latencies = Vec::with_capacity(count);
    let deadline = Instant::now() + Duration::from_secs(secs as u64 + 60);
    while latencies.len() < count && Instant::now() < deadline {
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), stream.next()).await
        else {
            continue;
        };
        if m.key() == Some(b"warm".as_slice()) {
            continue;
        }
        if let Some(ts) = m.timestamp().to_millis() {
            latencies.push(millis(SystemTime::now()) - ts as f64);
        }
    }
    let _ = sending.await;
    latencies
}

/// The dispatcher's own `dispatcher_hop_seconds{hop}` histogram in `/metrics` text:
/// p50, p90 and p99 interpolated within its buckets and the exact mean, in ms.
fn hop_from_metrics(text: &str, hop: &str) -> Option<[f64; 4]> {
    let label = format!("hop=\"{hop}\"");
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines().filter(|l| l.contains(&label)) {
        let (name, value) = line.rsplit_once(' ')?;
        let value: f64 = value.parse().ok()?;
        if name.starts_with("dispatcher_hop_seconds_bucket") {
            let le = name.split("le=\"").nth(1)?.split('"').next()?;
            buckets.push((le.parse::<f64>().unwrap_or(f64::INFINITY), value));
        } else if name.starts_with("dispatcher_hop_seconds_sum") {
            sum = value;
        } else if name.starts_with("dispatcher_hop_seconds_count") {
            count = value;
        }
    }
    if count == 0.0 {
        return None;
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let at = |q: f64| {
        let rank = q * count;
        let (mut low, mut below) = (0.0, 0.0);
        for &(le, n) in &buckets {
            if n >= rank {
                if le.is_infinite() {
                    return low * 1000.0;
                }
                let share = if n > below {
                    (rank - below) / (n - below)
                } else {
                    0.0
                };
                return (low + (le - low) * share) * 1000.0;
            }
            (low, below) = (le, n);
        }
        low * 1000.0
    };
    Some([at(0.5), at(0.9), at(0.99), sum / count * 1000.0])
}

/// BENCH_SHADOW=1: a bare consumer beside the lanes, with the lanes' client settings,
/// reading every partner's delivery topic from its end (group-less) while the pipeline
/// runs: the broker's own latency for the second hop under the same load (it adds a
/// fetch of those partitions to the broker's work). Its latencies (record timestamp →
/// receipt) come back once `stop` is set.
fn shadow(
    brokers: &str,
    topics: Vec<String>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<f64>> {
    let kafka = settings(brokers);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = kafka
            .staged("lanes", kafka.reader())
            .create()
            .expect("shadow consumer");
        let mut assignment = rdkafka::TopicPartitionList::new();
        for topic in &topics {
            for p in 0..kafka.partition_count(topic).expect("partitions") as i32 {
                assignment
                    .add_partition_offset(topic, p, rdkafka::Offset::End)
                    .expect("offset");
            }
        }
        consumer.assign(&assignment).expect("assign");
        let mut latencies = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                if let Some(ts) = m.timestamp().to_millis() {
                    latencies.push(millis(SystemTime::now()) - ts as f64);
                }
            }
        }
        latencies
    })
}

struct Hops {
    /// The bare consumer's latencies beside the lanes (BENCH_SHADOW=1).
    shadow: Vec<f64>,
    /// The dispatcher's `/metrics` at the end of the run.
    metrics: String,
    /// (publish, routed, arrived) milliseconds since the epoch, per delivery.
    samples: Vec<(f64, f64, f64)>,
    routed: Vec<f64>,
    delivered: Vec<f64>,
    total: Vec<f64>,
    missing: usize,
}

async fn pipeline(broker: &PrivateBroker, rate: usize, secs: usize, log: bool) -> Hops {
    let brokers = broker.brokers.clone();
    let world = BenchWorld::on(&brokers).await;
    let receivers = world.partners("l", PARTNERS).await;
    let off: &[&str] = if log { &[] } else { &["--attempts-topic="] };
    let (dispatcher, addr) = world.start_dispatcher_with(off);
    // The router and the lanes assigned (every partner's delivery partitions) before
    // the clock starts.
    let status = format!("{addr}/status");
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let ready = match reqwest::get(&status).await {
            Ok(r) => r.json::<serde_json::Value>().await.ok().is_some_and(|s| {
                s["groups"].as_object().is_some_and(|g| {
                    let lanes = g.get("lanes").and_then(|l| l["partitions"].as_array());
                    // Every partner's delivery topic (`topic/partition`), not some.
                    let every = lanes.is_some_and(|parts| {
                        receivers.iter().all(|(p, _)| {
                            let topic = format!("deliveries.{p}/");
                            parts
                                .iter()
                                .any(|x| x.as_str().is_some_and(|s| s.starts_with(&topic)))
                        })
                    });
                    g.contains_key("router")
                        && every
                        && g.values().all(|m| m["last_rebalance"] == "assigned")
                })
            }),
            Err(_) => false,
        };
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let shadowing = (std::env::var("BENCH_SHADOW").as_deref() == Ok("1")).then(|| {
        let topics = receivers
            .iter()
            .map(|(p, _)| format!("deliveries.{p}"))
            .collect();
        shadow(&brokers, topics, stop.clone())
    });
    if shadowing.is_some() {
        // Its assignment at the end of each topic, before the first event.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let publisher = world.publisher().await;
    let count = rate * secs;
    let start = tokio::time::Instant::now();
    let mut pending = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64)).await;
        let (partner, _) = &receivers[i % PARTNERS];
        let order = i % 2_000;
        let kind = if i < 2_000 {
            EventType::OrderCreated
        } else {
            EventType::OrderStatusChanged
        };
        let event = OrderEvent::sample(kind, &format!("o-{order}"), partner, 1);
        pending.push(publisher.enqueue(&event, None).await.expect("enqueue"));
    }
    for p in pending {
        p.wait().await.expect("published");
    }
    let delivered = || receivers.iter().map(|(_, r)| r.unique()).sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(120);
    while delivered() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let shadow = match shadowing {
        Some(task) => task.await.expect("shadow task"),
        None => Vec::new(),
    };
    // The dispatcher's own view of each hop, before it stops.
    let metrics = match reqwest::get(format!("{addr}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    drop(dispatcher);

    let published: HashMap<String, f64> = read_all(&brokers, &world.orders_topic)
        .await
        .iter()
        .filter_map(|r| Some((r.header("event-id")?.to_string(), record_millis(r)?)))
        .collect();
    let mut hops = Hops {
        shadow,
        metrics,
        samples: Vec::new(),
        routed: Vec::new(),
        delivered: Vec::new(),
        total: Vec::new(),
        missing: count.saturating_sub(delivered()),
    };
    for (partner, receiver) in &receivers {
        let routed: HashMap<String, f64> = read_all(&brokers, &format!("deliveries.{partner}"))
            .await
            .iter()
            .filter_map(|r| Some((r.header("webhook-id")?.to_string(), record_millis(r)?)))
            .collect();
        for d in receiver.deliveries().iter().filter(|d| !d.duplicate) {
            let (Some(p), Some(r)) = (published.get(&d.webhook_id), routed.get(&d.webhook_id))
            else {
                continue;
            };
            let arrived = millis(d.received_at);
            hops.routed.push(r - p);
            hops.delivered.push(arrived - r);
            hops.total.push(arrived - p);
            hops.samples.push((*p, *r, arrived));
        }
    }
    hops
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = env_or("BENCH_SECS", 15);
    let rates: Vec<(usize, bool, String)> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|r| {
            let r = r.trim();
            let (n, log) = match r.strip_suffix("-nolog") {
                Some(n) => (n, false),
                None => (r, true),
            };
            Some((n.parse().ok()?, log, r.to_string()))
        })
        .collect();
    println!(
        "time to webhook: {PARTNERS} partners, 1 dispatcher (default settings), {secs} s per rate; milliseconds"
    );
    println!("| rate/s | hop | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for (rate, log, label) in rates {
        let broker = PrivateBroker::start();
        let floor = floor(&broker.brokers, rate, secs).await;
        let hops = pipeline(&broker, rate, secs, log).await;
        let rate = label;
        let row = |name: &str, ms: &Vec<f64>| {
            let cells = summary(ms.clone());
            let cells: Vec<&str> = cells.split_whitespace().collect();
            println!("| {rate} | {name} | {} |", cells.join(" | "));
        };
        row("broker floor (producer → consumer)", &floor);
        row("publish → routed", &hops.routed);
        row("routed → partner", &hops.delivered);
        if !hops.shadow.is_empty() {
            row(
                "  bare consumer beside the lanes (routed → read)",
                &hops.shadow,
            );
        }
        for (hop, name) in [
            ("orders_to_router", "  of which: publish → router read"),
            ("deliveries_to_lane", "  of which: routed → lane read"),
            ("lane_to_request", "  of which: lane read → request sent"),
        ] {
            if let Some([p50, p90, p99, mean]) = hop_from_metrics(&hops.metrics, hop) {
                println!(
                    "| {rate} | {name} (dispatcher_hop_seconds; mean {mean:.1}) | {p50:.0} | {p90:.0} | {p99:.0} | |"
                );
            }
        }
        row("total (publish → partner)", &hops.total);
        println!(
            "| {rate} | total p50 / (2 × floor p50); p99 / (2 × floor p99) | {:.2} | | {:.2} | |",
            quantile(hops.total.clone(), 0.5) / (2.0 * quantile(floor.clone(), 0.5)),
            quantile(hops.total.clone(), 0.99) / (2.0 * quantile(floor.clone(), 0.99)),
        );
        if let Ok(dir) = std::env::var("BENCH_DUMP") {
            let path = format!("{dir}/latency-{rate}.csv");
            let mut text = String::from("published_ms,routed_ms,arrived_ms\n");
            for (p, r, a) in &hops.samples {
                text.push_str(&format!("{p:.0},{r:.0},{a:.1}\n"));
            }
            std::fs::write(&path, text).expect("write BENCH_DUMP");
            println!("samples written to {path}");
        }
        if hops.missing > 0 {
            println!(
                "| {rate} | not delivered within 120 s | {} | | | |",
                hops.missing
            );
        }
    }
}
