//! A job against a real receiver over loopback: what it records of the lane's hop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use consumer_examples::receiver::{Receiver, Script};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::kafka::{KafkaSettings, TopicOnDemand};
use crate::subscriptions::RetryPolicy;
use crate::webhook::flow::{FlowConfig, PartnerFlow};
use crate::webhook::signing::Secret;
use crate::webhook::ssrf::Allowlist;

const BODY: &str =
    r#"{"type":"order.created","timestamp":"2026-12-02T10:00:00.000Z","data":{"order_id":"o"}}"#;

fn subscription(url: String, secret: &str, paused: bool) -> Subscription {
    Subscription {
        id: "p.s".into(),
        partner_id: "p".into(),
        url,
        event_types: ["order.created".to_string()].into(),
        secrets: vec![secret.to_string()],
        internal: false,
        max_in_flight: 4,
        request_timeout_ms: 2_000,
        retry: RetryPolicy {
            initial_backoff_ms: 10,
            ..RetryPolicy::default()
        },
        rate_limit_per_sec: None,
        disabled: false,
        paused,
        previous_secrets_until: None,
        disconnected: None,
        tls: None,
        verification: None,
        filter: None,
        kind: Default::default(),
    }
}

/// A record of the delivery topic, read by the intake now.
fn job(webhook_id: &str) -> Job {
    Job {
        topic: Arc::from("deliveries.p"),
        partition: 0,
        offset: 0,
        key: b"o".to_vec(),
        body: Bytes::from_static(BODY.as_bytes()),
        webhook_id: webhook_id.into(),
        subscription_id: "p.s".into(),
        traceparent: None,
        occurred_at_ms: None,
        read_at: Some(Instant::now()),
        headers: None,
        parked: None,
        follow: false,
        followers: Vec::new(),
        epoch: 0,
    }
}

fn timed(text: &str) -> f64 {
    let line = "dispatcher_hop_seconds_count{hop=\"lane_to_request\"} ";
    text.lines()
        .find_map(|l| l.strip_prefix(line))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_lane_hop_is_timed_once_per_record_and_not_after_a_paused_subscription_held_it() {
    // A recorder of this test's own (the process-wide one is shared by every test).
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let rendered = recorder.handle();
    let lane_metrics = ::metrics::with_local_recorder(&recorder, || LaneMetrics::new("p"));
    let secret = Secret::generate();
    let script = Script {
        fail_first: 1,
        ..Script::default()
    };
    let receiver = Receiver::start("127.0.0.1:0".parse().expect("addr"), &secret, script)
        .await
        .expect("receiver");
    let table = SubscriptionTable::default();
    table.upsert(subscription(receiver.url(), &secret, false));
    let settings = KafkaSettings {
        brokers: "127.0.0.1:9".into(),
        session_timeout: Duration::from_secs(6),
        max_poll_interval: Duration::from_secs(30),
        options: Vec::new(),
        replication: None,
    };
    let ctx = Arc::new(JobContext {
        partner: "p".into(),
        client: WebhookClient::new(
            Arc::new(Allowlist::parse(&["127.0.0.1".into()]).expect("allowlist")),
            Duration::from_secs(1),
        )
        .expect("client"),
        table: table.clone(),
        producer: settings.producer().create().expect("producer"),
        flow: PartnerFlow::new("p", 4, None, FlowConfig::default()),
        on_gone: GoneHook(Arc::new(|_| {})),
        metrics: lane_metrics,
        health: Default::default(),
        park_after: None,
        dead_letter_topic: Arc::new(TopicOnDemand::existing("dlq.p".into())),
        retry_topic: Arc::new(TopicOnDemand::existing("retries.p".into())),
        log: None,
        shutdown: CancellationToken::new(),
    });
    let starting = Starting::default();

    // Refused once (503), retried, delivered: one sample, not one per attempt.
    let done = spawn(job("w1"), Arc::clone(&ctx), &starting).await;
    assert!(matches!(done.end, JobEnd::Finished), "{done:?}");
    assert_eq!(receiver.unique(), 1);
    assert_eq!(timed(&rendered.render()), 1.0);

    // Its subscription paused before the first attempt and resumed later: the pause is
    // not the lane's time, so no sample.
    table.upsert(subscription(receiver.url(), &secret, true));
    let held = tokio::spawn(spawn(job("w2"), Arc::clone(&ctx), &starting));
    // Held: a job waiting for its subscription gives up its place among the starting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while starting.count() > 0 {
        assert!(Instant::now() < deadline, "the job was never held");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    table.upsert(subscription(receiver.url(), &secret, false));
    let done = held.await.expect("job");
    assert!(matches!(done.end, JobEnd::Finished), "{done:?}");
    assert_eq!(receiver.unique(), 2);
    assert_eq!(timed(&rendered.render()), 1.0, "{}", rendered.render());
}
