//! The typed publisher against the real broker and registry: every event arrives once,
//! keyed by order id, in publish order per order, and decodes through the registry.

use std::collections::HashMap;
use std::time::Duration;

use e2e::{brokers, closed_port, fresh_topic, read_exactly, registry_url};
use order_schemas::{EventType, OrderCodec, OrderEvent};
use producer::{PublishError, Publisher, PublisherConfig};
use rdkafka::message::Headers;
use rdkafka::Message;

fn config(topic: &str) -> PublisherConfig {
    let mut c = PublisherConfig::new(&brokers(), topic, &registry_url());
    c.delivery_timeout = Duration::from_secs(10);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_keyed_in_order_and_decodes() {
    let topic = fresh_topic("lib", 3).await;
    let publisher = Publisher::connect(&config(&topic)).await.expect("connect");
    let kinds = [
        EventType::OrderCreated,
        EventType::OrderStatusChanged,
        EventType::OrderCancelled,
    ];
    let mut sent = Vec::new();
    let mut pending = Vec::new();
    for i in 0..300 {
        let order = format!("order-{}", i % 20);
        let event = OrderEvent::sample(
            kinds[(i / 20) % 3],
            &order,
            &format!("partner-{}", i % 4),
            1 + i % 5,
        );
        pending.push(
            publisher
                .enqueue(
                    &event,
                    Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                )
                .await
                .expect("enqueue"),
        );
        sent.push(event);
    }
    for p in pending {
        p.wait().await.expect("acknowledged");
    }

    let records = read_exactly(&topic, sent.len(), Duration::from_secs(60)).await;
    let codec = OrderCodec::new(&registry_url(), &topic, Duration::from_secs(5)).expect("codec");
    let mut by_id = HashMap::new();
    // Records of one partition arrive in offset order; per order they must follow publish order.
    let mut seen_per_order: HashMap<String, Vec<uuid::Uuid>> = HashMap::new();
    for r in &records {
        let event = codec
            .decode(r.payload().expect("payload"))
            .await
            .expect("decodes");
        assert_eq!(
            r.key(),
            Some(event.order_id().as_bytes()),
            "key is the order id"
        );
        let headers = r.headers().expect("headers");
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(
            header("event-type").as_deref(),
            Some(event.event_type().name())
        );
        assert_eq!(header("event-id"), Some(event.event_id().to_string()));
        assert!(header("traceparent").is_some());
        seen_per_order
            .entry(event.order_id().to_string())
            .or_default()
            .push(event.event_id());
        assert!(
            by_id.insert(event.event_id(), event).is_none(),
            "no duplicates"
        );
    }
    for event in &sent {
        assert_eq!(
            by_id.get(&event.event_id()),
            Some(event),
            "sent event arrived unchanged"
        );
    }
    for (order, ids) in seen_per_order {
        let expected: Vec<_> = sent
            .iter()
            .filter(|e| e.order_id() == order)
            .map(|e| e.event_id())
            .collect();
        assert_eq!(ids, expected, "{order}: events in publish order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_broker_missing_topic_and_unreachable_registry_are_named() {
    let mut c = config("orders");
    c.brokers = closed_port();
    c.connect_timeout = Duration::from_secs(2);
    let err = Publisher::connect(&c).await.expect_err("no broker");
    assert!(
        err.to_string()
            .contains(&format!("cannot reach Kafka at {}", c.brokers)),
        "{err}"
    );

    let err = Publisher::connect(&config("no-such-topic-anywhere"))
        .await
        .expect_err("no topic");
    assert!(
        err.to_string()
            .contains("topic `no-such-topic-anywhere` does not exist"),
        "{err}"
    );

    let topic = fresh_topic("lib-noreg", 1).await;
    let mut c = config(&topic);
    c.registry_url = format!("http://{}", closed_port());
    let err = Publisher::connect(&c).await.expect_err("no registry");
    assert!(
        matches!(&err, PublishError::Codec(e) if e.is_retryable()),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("schema registry unavailable"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_event_is_refused_and_nothing_is_written() {
    let topic = fresh_topic("lib-invalid", 1).await;
    let publisher = Publisher::connect(&config(&topic)).await.expect("connect");
    let mut bad = OrderEvent::sample(EventType::OrderCreated, "o-1", "partner-a", 2);
    if let OrderEvent::Created(e) = &mut bad {
        e.order.items[1].quantity = 0;
    }
    let err = publisher.publish(&bad).await.expect_err("invalid");
    assert!(matches!(err, PublishError::Invalid(_)));
    assert!(err.to_string().contains("order.items[1].quantity"), "{err}");
    let good = OrderEvent::sample(EventType::OrderCreated, "o-2", "partner-a", 2);
    publisher.publish(&good).await.expect("good one still goes");
    let records = read_exactly(&topic, 1, Duration::from_secs(30)).await;
    assert_eq!(records[0].key(), Some(&b"o-2"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueueing_past_the_in_flight_cap_waits_for_acknowledgements_not_for_the_caller() {
    // A caller may enqueue far more than the cap before awaiting any outcome: permits are
    // released by Kafka's delivery reports, not by the caller polling.
    let topic = fresh_topic("lib-cap", 2).await;
    let mut c = config(&topic);
    c.max_in_flight = 5;
    let publisher = Publisher::connect(&c).await.expect("connect");
    let mut pending = Vec::new();
    for i in 0..60 {
        let event = OrderEvent::sample(EventType::OrderCreated, &format!("o-{i}"), "partner-a", 1);
        let enqueued =
            tokio::time::timeout(Duration::from_secs(20), publisher.enqueue(&event, None)).await;
        pending.push(
            enqueued
                .expect("enqueue must not deadlock")
                .expect("enqueue"),
        );
    }
    for p in pending {
        p.wait().await.expect("acknowledged");
    }
    read_exactly(&topic, 60, Duration::from_secs(30)).await;
}
