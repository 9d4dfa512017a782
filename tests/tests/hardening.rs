//! Operators' mistakes and odd records against the real broker, registry and receivers:
//! nothing is dropped silently, a stale write never undoes a newer change.

use std::time::Duration;

use consumer_examples::receiver::Script;
use e2e::{dead_letters, DispatchWorld};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

async fn produce(brokers: &str, topic: &str, key: &str, body: &str, headers: &[(&str, &str)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(body).headers(h),
            Duration::from_secs(30),
        )
        .await
        .expect("produce");
}

/// A subscription that became invalid (the operator narrowed the allowlist) and a
/// delivery record that names no subscription: both dead-lettered with why, never
/// committed as dropped; the receiver gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_an_invalid_subscription_or_none_are_dead_lettered_with_the_reason() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let (partner, receiver) = world
        .partner_with_receiver("invalid", Script::default(), "")
        .await;
    let deliveries = format!("deliveries.{partner}");
    let subscription = format!("{partner}-s");
    for (i, order) in ["o-1", "o-2"].iter().enumerate() {
        let id = format!("evt-{i}");
        produce(
            &world.brokers,
            &deliveries,
            order,
            "{\"type\":\"order.created\"}",
            &[("webhook-id", &id), ("subscription-id", &subscription)],
        )
        .await;
    }
    produce(
        &world.brokers,
        &deliveries,
        "o-3",
        "{\"type\":\"order.created\"}",
        &[("webhook-id", "evt-2")],
    )
    .await;

    // The same subscription read by a dispatcher whose allowlist no longer has it.
    let mut narrowed = world.clone();
    narrowed.allow = "10.9.9.9".into();
    let dispatcher = narrowed.start();
    let letters = dead_letters(&format!("dlq.{partner}"), 3).await;
    let mut reasons: Vec<(String, String)> = letters
        .iter()
        .map(|(h, _)| (h["webhook-id"].clone(), h["dlq-reason"].clone()))
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    for (id, reason) in &reasons[..2] {
        assert!(
            reason.starts_with("subscription invalid: ")
                && reason.contains(&subscription)
                && reason.contains(": url: "),
            "{id}: {reason}"
        );
    }
    assert_eq!(
        reasons[2],
        (
            "evt-2".to_string(),
            "no subscription-id header on the delivery record".to_string()
        )
    );
    assert_eq!(receiver.requests(), 0, "nothing sent to the invalid URL");
    assert!(
        dispatcher
            .metric(&format!(
                "dispatcher_deliveries_total{{partner=\"{partner}\",outcome=\"dropped\"}}"
            ))
            .await
            .is_none_or(|n| n == 0.0),
        "nothing counted as dropped"
    );
    assert_eq!(dispatcher.terminate(), Some(0));
}

/// `dispatcher subscriptions list` of the world's topic.
fn listing(world: &DispatchWorld) -> String {
    let mut args = world.common_args();
    args.extend(["subscriptions".into(), "list".into()]);
    let out = e2e::run(
        "dispatcher",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "",
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 410 answered to a request sent before the partner moved its endpoint: the
/// subscription is neither disabled nor set back to the old URL (the stale in-flight
/// copy is never written back), and the event goes to the new URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_from_an_old_url_does_not_undo_a_newer_change() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let (partner, old) = world
        .partner_with_receiver(
            "moved",
            Script {
                always_status: Some(410),
                delay_ms: 3000,
                ..Script::default()
            },
            "",
        )
        .await;
    let secret = dispatcher::signing::Secret::generate();
    let new = consumer_examples::receiver::Receiver::start(
        "127.0.0.1:0".parse().expect("addr"),
        &secret,
        Script::default(),
    )
    .await
    .expect("receiver");
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let event = order_schemas::OrderEvent::sample(
        order_schemas::EventType::OrderCreated,
        "o-1",
        &partner,
        1,
    );
    publisher.publish(&event).await.expect("publish");
    assert!(
        e2e::eventually(Duration::from_secs(60), || old.requests() == 1).await,
        "the first request reached the old URL\n{}",
        dispatcher.log_tail()
    );
    // While that request waits for its 410, the partner moves (and rotates its secret).
    let moved = format!(
        "subscriptions:\n  - id: {partner}-s\n    partner_id: {partner}\n    url: {}\n    event_types: [order.created, order.status_changed]\n    secrets: [\"{secret}\"]\n",
        new.url()
    );
    assert!(world.apply(&moved).status.success());
    assert!(
        e2e::eventually(Duration::from_secs(30), || new.unique() == 1).await,
        "the event reached the new URL\n{}",
        dispatcher.log_tail()
    );
    // Give a stale write time to land, then read the topic as a new instance would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listed = listing(&world);
    let line = listed
        .lines()
        .find(|l| l.starts_with(&format!("{partner}-s ")))
        .unwrap_or_else(|| panic!("listed: {listed}"));
    assert!(
        line.contains(" active ") && line.contains(&new.url()),
        "the newer change stands: {line}"
    );
    assert_eq!(old.requests(), 1);
    assert_eq!(dispatcher.terminate(), Some(0));
}
