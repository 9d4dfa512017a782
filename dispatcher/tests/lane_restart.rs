//! Fault injection with librdkafka's mock cluster (#22 item 10): a lane that restarts
//! has its partitions rewound to their committed offsets, which asks the group
//! coordinator. When the coordinator answers slowly, no other partner's records wait
//! for that answer (the shared intake used to ask it inline, routing nothing
//! meanwhile), and the restarted lane still gets every record its predecessor had not
//! finished.

#[path = "../benches/common/mod.rs"]
#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use dispatcher::lane::{self, Intake};
use dispatcher::subscriptions::RetryPolicy;
use rdkafka::mocking::{MockCluster, MockCoordinator};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// What a receiver saw: each request's `seq` and when it came.
type Seen = Arc<Mutex<Vec<(u64, Instant)>>>;

/// A receiver answering 204 at once; returns its URL and what it saw.
async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let log = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/webhook",
        post(move |body: Bytes| {
            let log = Arc::clone(&log);
            async move {
                let seq = std::str::from_utf8(&body)
                    .ok()
                    .and_then(|b| b.split("\"seq\":").nth(1))
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|d| d.parse::<u64>().ok());
                if let Some(seq) = seq {
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((seq, Instant::now()));
                }
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/webhook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

async fn produce(producer: &FutureProducer, partner: &str, seq: u64) {
    let (id, sub) = (format!("{partner}-{seq}"), format!("{partner}-s"));
    let payload = format!(r#"{{"type":"order.created","data":{{"seq":{seq}}}}}"#);
    let key = format!("order-{}", seq % 5);
    producer
        .send(
            FutureRecord::to(&format!("deliveries.{partner}"))
                .key(&key)
                .payload(&payload)
                .headers(common::delivery_headers(&id, &sub)),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
}

/// The offset `group` committed for partition 0 of `topic` (-1: none).
fn committed(brokers: &str, group: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = rdkafka::TopicPartitionList::new();
    list.add_partition(topic, 0);
    consumer
        .committed_offsets(list, Duration::from_secs(5))
        .ok()
        .and_then(|l| match l.find_partition(topic, 0)?.offset() {
            rdkafka::Offset::Offset(o) => Some(o),
            _ => None,
        })
        .unwrap_or(-1)
}

fn seqs(seen: &Seen) -> BTreeSet<u64> {
    seen.lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(s, _)| *s)
        .collect()
}

async fn wait_for(seen: &Seen, want: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while (0..want).any(|s| !seqs(seen).contains(&s)) {
        assert!(
            Instant::now() < deadline,
            "{what}: got {:?} of 0..{want}",
            seqs(seen)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_lane_waiting_for_a_slow_coordinator_holds_no_other_partner() {
    let group = "restart";
    // Broker 1 leads the partitions, broker 2 coordinates the groups: slowing broker 2
    // slows the offset look-ups, not the fetches.
    let cluster = MockCluster::new(2).expect("mock cluster");
    for topic in ["deliveries.a", "deliveries.b"] {
        cluster.create_topic(topic, 1, 1).expect("topic");
        cluster.partition_leader(topic, 0, Some(1)).expect("leader");
    }
    for g in [group.to_string(), lane::intake::retry_offsets_group(group)] {
        cluster
            .coordinator(MockCoordinator::Group(g), 2)
            .expect("coordinator");
    }
    let brokers = cluster.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    let ((url_a, seen_a), (url_b, seen_b)) = (receiver().await, receiver().await);
    let config = common::lane_config(group, 1024, Duration::from_secs(1), 1);
    let mut a = common::lane("a", brokers.clone(), url_a, 8, RetryPolicy::default());
    // Heartbeats go to the slowed coordinator too: a session that outlasts it.
    a.settings.session_timeout = Duration::from_secs(30);
    a.settings
        .options
        .push(("fetch.wait.max.ms".into(), "5".into()));
    let shutdown = a.shutdown.clone();
    let (intake, intake_task) =
        Intake::start(&a.settings, group, &config.groups, shutdown.clone()).expect("intake");
    let mut b = common::lane("b", brokers.clone(), url_b, 8, RetryPolicy::default());
    b.ctx.shutdown = shutdown.clone();
    b.ctx.producer = a.ctx.producer.clone();
    let start = |name: &str, ctx: dispatcher::delivery::JobContext| {
        let link = intake.join(name, false, None);
        tokio::spawn(lane::run_linked(name.into(), link, config.clone(), ctx))
    };
    let lane_a = start("a", a.ctx.clone());
    let lane_b = start("b", b.ctx.clone());
    for seq in 0..20 {
        produce(&producer, "a", seq).await;
    }
    produce(&producer, "b", 0).await;
    wait_for(&seen_a, 20, "a before the restart").await;
    wait_for(&seen_b, 1, "b before the restart").await;
    // Offsets are committed in the background: until a's 20 are.
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed(&brokers, group, "deliveries.a") < 20 {
        assert!(Instant::now() < deadline, "a's offsets never committed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The coordinator slows down; a's lane ends and starts again, as restart.rs does,
    // with records waiting for it.
    cluster
        .broker_round_trip_time(2, Duration::from_secs(3))
        .expect("rtt");
    lane_a.abort();
    let _ = lane_a.await;
    for seq in 20..40 {
        produce(&producer, "a", seq).await;
    }
    let restarted = Instant::now();
    let lane_a = start("a", a.ctx.clone());
    // b's records meanwhile, 50 a second for 5 s.
    for seq in 1..=250 {
        tokio::time::sleep_until((restarted + Duration::from_millis(20 * seq)).into()).await;
        produce(&producer, "b", seq).await;
    }
    wait_for(&seen_b, 251, "b beside a's restart").await;
    wait_for(&seen_a, 40, "a after its restart").await;
    let mut arrivals: Vec<Instant> = seen_b
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(_, t)| *t)
        .filter(|t| *t >= restarted)
        .collect();
    arrivals.sort();
    let longest = arrivals
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
        .max(arrivals.first().map_or(Duration::MAX, |t| *t - restarted));
    assert!(
        longest < Duration::from_millis(1_500),
        "b waited {longest:?} between two deliveries while a's lane was rewound"
    );
    shutdown.cancel();
    for l in [lane_a, lane_b] {
        let _ = l.await;
    }
    let _ = intake_task.await;
    intake.close();
}
