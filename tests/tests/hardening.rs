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
