//! `dispatcher::app::App` started in-process, the way the binary starts it: it delivers,
//! serves `/status` with its consumer groups and `/metrics` with the time to webhook,
//! and stops cleanly.

use std::sync::Arc;
use std::time::Duration;

use consumer_examples::receiver::Script;
use dispatcher::app::{App, RunConfig, Shared};
use dispatcher::kafka::KafkaSettings;
use dispatcher::webhook::ssrf::Allowlist;
use e2e::{assert_per_order, eventually, metric_value, DispatchWorld};
use order_schemas::{EventType, OrderEvent};

fn config(world: &DispatchWorld) -> RunConfig {
    RunConfig {
        shared: Shared {
            kafka: KafkaSettings {
                brokers: world.brokers.clone(),
                session_timeout: Duration::from_secs(6),
                max_poll_interval: Duration::from_secs(300),
                // As `DispatchWorld::common_args` (nisshi serves big fetches slowly).
                options: vec![("max.partition.fetch.bytes".into(), "65536".into())],
                replication: None,
            },
            subscriptions_topic: world.subscriptions_topic.clone(),
            audit_topic: world.audit_topic.clone(),
            allowlist: Arc::new(Allowlist::parse(&["127.0.0.1".to_string()]).expect("allow")),
            partitions: 3,
            partner_partitions: 3,
            client_cert: None,
        },
        registry: world.registry.clone(),
        orders_topic: world.orders_topic.clone(),
        orders_dead_letter_topic: world.orders_dead_letter_topic.clone(),
        listen: "127.0.0.1:0".parse().expect("addr"),
        router_group: world.router_group.clone(),
        lane_group_prefix: world.lane_group_prefix.clone(),
        unknown_schema_wait: Duration::from_secs(20),
        max_buffered: 1024,
        max_buffered_total: 65_536,
        departed_lane: Duration::from_secs(60),
        shutdown_deadline: Duration::from_secs(5),
        breaker_failures: 10,
        breaker_cooldown: Duration::from_secs(5),
        park_after: Some(3),
        disconnect_after: None,
        degraded_age: Duration::from_secs(60),
        failing_age: Duration::from_secs(900),
        egress_proxy: None,
        health_interval: Duration::from_secs(1),
        attempts_topic: Some(e2e::unique("attempts")),
        attempts_body_bytes: 4096,
        filter_tally_interval: Duration::from_secs(10),
        health_topic: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_started_in_process_delivers_in_order_shows_its_groups_and_stops() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let (partner, receiver) = world
        .partner_with_receiver("inproc", Script::default(), "")
        .await;

    // Settings that cannot work are refused before anything starts.
    let mut bad = config(&world);
    bad.failing_age = Duration::from_secs(1);
    let refused = App::start(bad)
        .await
        .expect_err("failing age below degraded age");
    assert!(refused.to_string().contains("failing_age"), "{refused}");

    // The hop histogram has no partner label, and this process's recorder is shared
    // with other tests' apps: the counts before ours.
    let hops_before = hop_counts(&dispatcher::metrics::handle().render());
    let app = App::start(config(&world)).await.expect("started");
    let publisher = world.publisher().await;
    let mut sent = Vec::new();
    for i in 0..20 {
        let kind = if i < 4 {
            EventType::OrderCreated
        } else {
            EventType::OrderStatusChanged
        };
        let e = OrderEvent::sample(kind, &format!("order-{}", i % 4), &partner, 1);
        publisher.publish(&e).await.expect("publish");
        sent.push(e);
    }
    let all = eventually(Duration::from_secs(60), || receiver.unique() >= sent.len()).await;
    assert!(all, "received {} of {}", receiver.unique(), sent.len());
    assert_per_order(&receiver, &sent);

    let status: serde_json::Value = reqwest::get(format!("http://{}/status", app.addr))
        .await
        .expect("/status")
        .json()
        .await
        .expect("json");
    for member in ["router", "lanes"] {
        assert_eq!(
            status["groups"][member]["last_rebalance"], "assigned",
            "{member}: {status}"
        );
    }
    // Time to webhook, per partner, for SREs: every delivered event counted once.
    let metrics = reqwest::get(format!("http://{}/metrics", app.addr))
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("text");
    let count = format!("dispatcher_time_to_webhook_seconds_count{{partner=\"{partner}\"}} ");
    let counted = metric_value(&metrics, &count);
    assert_eq!(counted, Some(sent.len() as f64), "{metrics}");
    // Where that time goes, per hop: each of our records once (at least: another
    // test's app may have added some meanwhile).
    let hops_after = hop_counts(&metrics);
    for (hop, before) in hops_before {
        let after = hops_after
            .iter()
            .find(|(h, _)| *h == hop)
            .map_or(0.0, |(_, n)| *n);
        let added = after - before;
        assert!(added >= sent.len() as f64, "{hop}: {added}\n{metrics}");
    }
    // A partner that never parked nor dead-lettered has no retry or dead-letter topic
    // (#14: they are made on first use), only its delivery topic.
    let topics = topic_names(&world.brokers);
    assert!(
        topics.contains(&format!("deliveries.{partner}")),
        "{topics:?}"
    );
    for unused in [format!("retries.{partner}"), format!("dlq.{partner}")] {
        assert!(
            !topics.contains(&unused),
            "{unused} was made before it was needed"
        );
    }
    app.stop().await.expect("stopped cleanly");
}

/// The sample count of each hop of `dispatcher_hop_seconds` in `/metrics` text (0 when
/// not there yet).
fn hop_counts(metrics: &str) -> Vec<(&'static str, f64)> {
    ["orders_to_router", "deliveries_to_lane", "lane_to_request"]
        .into_iter()
        .map(|hop| {
            let count = format!("dispatcher_hop_seconds_count{{hop=\"{hop}\"}} ");
            (hop, metric_value(metrics, &count).unwrap_or_default())
        })
        .collect()
}

/// Every topic of the cluster.
fn topic_names(brokers: &str) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("client");
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect()
}
