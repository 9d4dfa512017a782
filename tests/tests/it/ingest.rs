//! HTTP ingest over loopback against the real broker and registry; the broker-down case
//! uses librdkafka's mock cluster to take the broker away.

use std::sync::Arc;
use std::time::Duration;

use e2e::{brokers, fresh_topic, read_exactly, registry_url};
use order_schemas::{EventType, OrderCodec, OrderEvent};
use producer::ingest::{self, IngestConfig};
use producer::{Publisher, PublisherConfig};
use rdkafka::message::Headers;
use rdkafka::mocking::MockCluster;
use rdkafka::Message;
use serde_json::{json, Value};
use tokio::sync::oneshot;

struct Ingest {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn start(config: PublisherConfig, limits: IngestConfig) -> Ingest {
    let publisher = Arc::new(Publisher::connect(&config).await.expect("connect"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(ingest::serve(
        listener,
        ingest::router(publisher, limits),
        async move {
            let _ = stopped.await;
        },
    ));
    Ingest { url, _stop: stop }
}

async fn post(
    url: &str,
    body: impl Into<reqwest::Body>,
    content_type: &str,
) -> (u16, Option<String>, Value) {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/events"))
        .header("content-type", content_type)
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(body)
        .send()
        .await
        .expect("ingest answers");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("").to_string());
    (
        status,
        retry_after,
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_are_in_kafka_and_bad_ones_get_a_clear_4xx() {
    let topic = fresh_topic("ingest", 2).await;
    let limits = IngestConfig {
        max_body_bytes: 4096,
        ..Default::default()
    };
    let ingest = start(
        PublisherConfig::new(&brokers(), &topic, &registry_url()),
        limits,
    )
    .await;
    let event = OrderEvent::sample(EventType::OrderStatusChanged, "o-7", "partner-b", 2);

    let (status, _, body) =
        post(&ingest.url, event.to_json().to_string(), "application/json").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["event_id"], json!(event.event_id()));
    assert!(body["offset"].as_i64().is_some());

    let valid = event.to_json();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = valid.clone();
        f(&mut v);
        v.to_string()
    };
    let cases: Vec<(String, &str, u16, &str)> = vec![
        (
            "{\"type\":".into(),
            "application/json",
            400,
            "malformed JSON",
        ),
        (
            with(&|v| {
                v.as_object_mut().expect("obj").remove("partner_id");
            }),
            "application/json",
            400,
            "missing field `partner_id`",
        ),
        (
            with(&|v| v["order"]["total"]["amount_minor"] = json!("12.50")),
            "application/json",
            400,
            "order.total.amount_minor",
        ),
        (
            with(&|v| v["type"] = json!("order.lost")),
            "application/json",
            400,
            "unknown event type `order.lost`",
        ),
        (valid.to_string(), "text/plain", 415, "application/json"),
        (
            OrderEvent::sample(EventType::OrderCreated, "o-8", "p", 60)
                .to_json()
                .to_string(),
            "application/json",
            413,
            "4096 bytes",
        ),
    ];
    for (body, content_type, want, mentions) in cases {
        let (status, _, answer) = post(&ingest.url, body, content_type).await;
        assert_eq!(status, want, "{answer}");
        assert!(
            answer["error"].as_str().unwrap_or("").contains(mentions),
            "{answer} should mention {mentions}"
        );
    }

    // Exactly the accepted event is in Kafka, with the caller's traceparent.
    let records = read_exactly(&topic, 1, Duration::from_secs(30)).await;
    let codec = OrderCodec::new(&registry_url(), &topic, Duration::from_secs(5)).expect("codec");
    assert_eq!(
        codec
            .decode(records[0].payload().expect("payload"))
            .await
            .expect("decode"),
        event
    );
    let traceparent = records[0].headers().and_then(|h| {
        h.iter()
            .find(|h| h.key == "traceparent")
            .and_then(|h| h.value)
    });
    assert_eq!(
        traceparent,
        Some(&b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"[..])
    );

    let metrics = reqwest::get(format!("{}/metrics", ingest.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("producer_events_published_total{event_type=\"order.status_changed\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("producer_publish_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains("producer_ingest_responses_total{status=\"400\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_goes_away_gets_503_with_retry_after_never_202() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("orders-mock", 1, 1).expect("topic");
    let mut config =
        PublisherConfig::new(&cluster.bootstrap_servers(), "orders-mock", &registry_url());
    config.delivery_timeout = Duration::from_secs(3);
    let limits = IngestConfig {
        max_in_flight: 1,
        ..Default::default()
    };
    let ingest = start(config, limits).await;

    let first = OrderEvent::sample(EventType::OrderCreated, "o-1", "p", 1);
    let (status, _, _) = post(&ingest.url, first.to_json().to_string(), "application/json").await;
    assert_eq!(status, 202, "broker up: accepted");

    cluster.broker_down(1).expect("broker down");
    let url = ingest.url.clone();
    let slow = tokio::spawn(async move {
        let e = OrderEvent::sample(EventType::OrderCreated, "o-2", "p", 1);
        post(&url, e.to_json().to_string(), "application/json").await
    });
    // Wait until that request holds the only in-flight slot.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status: Value = reqwest::get(format!("{}/v1/status", ingest.url))
            .await
            .expect("status")
            .json()
            .await
            .expect("json");
        if status["in_flight"] == json!(1) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow request never started: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The only in-flight slot is taken by the request waiting on the dead broker.
    let third = OrderEvent::sample(EventType::OrderCreated, "o-3", "p", 1);
    let (status, retry_after, body) =
        post(&ingest.url, third.to_json().to_string(), "application/json").await;
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    assert!(
        body["error"].as_str().unwrap_or("").contains("in flight"),
        "{body}"
    );

    let (status, retry_after, body) = slow.await.expect("join");
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")), "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("Kafka did not acknowledge"),
        "{body}"
    );
}
