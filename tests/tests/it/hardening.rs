//! Operators' mistakes and odd records against the real broker, registry and receivers:
//! nothing is dropped silently, a stale write never undoes a newer change.

use std::time::Duration;

use consumer_examples::receiver::Script;
use e2e::{dead_letters, produce_with_headers, DispatchWorld};

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
        produce_with_headers(
            &world.brokers,
            &deliveries,
            None,
            order,
            b"{\"type\":\"order.created\"}",
            &[("webhook-id", &id), ("subscription-id", &subscription)],
        )
        .await;
    }
    produce_with_headers(
        &world.brokers,
        &deliveries,
        None,
        "o-3",
        b"{\"type\":\"order.created\"}",
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
    // Operators see it, and can prune it.
    let listed = listing(&narrowed);
    assert!(
        listed.contains(&format!("{subscription} partner={partner} INVALID reason=")),
        "{listed}"
    );
    let mut prune = narrowed.common_args();
    let empty = std::env::temp_dir().join(format!("{}.yaml", e2e::unique("empty")));
    std::fs::write(&empty, "subscriptions: []\n").expect("write");
    prune.extend([
        "subscriptions".into(),
        "apply".into(),
        "--prune".into(),
        empty.display().to_string(),
    ]);
    let pruned = e2e::run(
        "dispatcher",
        &prune.iter().map(String::as_str).collect::<Vec<_>>(),
        "",
    );
    let _ = std::fs::remove_file(&empty);
    assert!(
        String::from_utf8_lossy(&pruned.stdout).contains("deleted 1"),
        "{pruned:?}"
    );
    assert!(!listing(&narrowed).contains(&subscription));
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
    let secret = dispatcher::webhook::signing::Secret::generate();
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
    // The topic as a new instance reads it (the 410 was handled before the retry that
    // reached the new URL, so a stale write would already be there).
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

/// A follower that does not know an id yet, or refuses us (401, 403) or sheds load
/// (408, 429), is asked again by the next call: nothing negative is cached, and the
/// refusals are retryable (routing pauses), not reasons to dead-letter the record.
#[tokio::test]
async fn registry_hiccups_are_not_remembered_by_the_codec() {
    use order_schemas::{wire, CodecError, EventType, OrderCodec, OrderEvent};
    let topic = e2e::unique("orders");
    let codec_of = |url: &str| OrderCodec::new(url, &topic, Duration::from_secs(2)).expect("codec");
    let event = OrderEvent::sample(EventType::OrderCreated, "o-1", "p", 2);
    let bytes = codec_of(&e2e::registry_url())
        .encode(&event)
        .await
        .expect("encode");
    let (id, _) = wire::unframe(&bytes).expect("framed");
    let follower = e2e::FlakyRegistry::start(404).await;

    let codec = codec_of(&follower.url);
    assert_eq!(
        codec.decode(&bytes).await,
        Err(CodecError::UnknownSchemaId(id))
    );
    follower.answer(0);
    assert_eq!(
        codec.decode(&bytes).await.as_ref(),
        Ok(&event),
        "known a moment later"
    );
    for refusal in [401, 403, 408, 429] {
        let codec = codec_of(&follower.url);
        follower.answer(refusal);
        let err = codec.decode(&bytes).await.expect_err("refused");
        assert!(err.is_retryable(), "{refusal}: {err}");
        follower.answer(0);
        assert_eq!(codec.decode(&bytes).await.as_ref(), Ok(&event), "{refusal}");
    }
}

/// Through a dispatcher whose registry follower lags a registration (404 for a few
/// seconds), then refuses it (401), then sheds load (429): every event is delivered,
/// none lands in the orders dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_or_refusing_registry_never_dead_letters_good_events() {
    let mut world = DispatchWorld::new("127.0.0.1").await;
    let (partner, receiver) = world
        .partner_with_receiver("lagging", Script::default(), "")
        .await;
    let follower = e2e::FlakyRegistry::start(404).await;
    world.registry = follower.url.clone();
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let events: Vec<_> = (0..3)
        .map(|i| {
            order_schemas::OrderEvent::sample(
                order_schemas::EventType::OrderCreated,
                &format!("o-{i}"),
                &partner,
                1,
            )
        })
        .collect();
    for e in &events {
        publisher.publish(e).await.expect("publish");
    }
    // Each answer is given to at least two of the router's asks (it asked again:
    // nothing was dead-lettered), and nothing is delivered meanwhile.
    for answer in [404, 401, 429] {
        let before = follower.refused();
        follower.answer(answer);
        assert!(
            e2e::eventually(Duration::from_secs(30), || follower.refused() >= before + 2).await,
            "the router asks again while the registry says {answer}\n{}",
            dispatcher.log_tail()
        );
        assert_eq!(
            receiver.unique(),
            0,
            "nothing decoded while the registry says {answer}"
        );
    }
    follower.answer(0);
    assert!(
        e2e::eventually(Duration::from_secs(60), || receiver.unique()
            == events.len())
        .await,
        "{} of {} delivered\n{}",
        receiver.unique(),
        events.len(),
        dispatcher.log_tail()
    );
    assert_eq!(
        dispatcher
            .metric("dispatcher_router_records_total{outcome=\"routed\"}")
            .await,
        Some(3.0)
    );
    let dead_lettered = dispatcher
        .metric("dispatcher_router_records_total{outcome=\"dead_lettered\"}")
        .await;
    assert!(
        dead_lettered.is_none_or(|n| n == 0.0),
        "nothing dead-lettered by the router: {dead_lettered:?}"
    );
    assert_eq!(dispatcher.terminate(), Some(0));
}

/// Every change that affects where data goes is in the audit trail, whoever made it:
/// `subscriptions apply` (created; the internal flag changed) and the dispatcher's own
/// disable after a 410, each written before the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_audited_whoever_makes_it() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = e2e::unique("audited");
    let secret = &dispatcher::webhook::signing::Secret::generate();
    let receiver = consumer_examples::receiver::Receiver::start(
        "127.0.0.1:0".parse().expect("addr"),
        secret,
        Script {
            always_status: Some(410),
            ..Script::default()
        },
    )
    .await
    .expect("receiver");
    let yaml = |types: &str, internal: bool| {
        format!(
            "subscriptions:\n  - id: {partner}-s\n    partner_id: {partner}\n    url: {}\n    event_types: [{types}]\n    secrets: [\"{secret}\"]\n    internal: {internal}\n",
            receiver.url()
        )
    };
    assert!(world.apply(&yaml("order.created", false)).status.success());
    // The operator widens it: internal (every partner's orders), one more event type.
    let widened = yaml("order.created, order.cancelled", true);
    assert!(world.apply(&widened).status.success());
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    publisher
        .publish(&order_schemas::OrderEvent::sample(
            order_schemas::EventType::OrderCreated,
            "o-1",
            &partner,
            1,
        ))
        .await
        .expect("publish");
    let audit: Vec<serde_json::Value> =
        e2e::read_exactly(&world.audit_topic, 3, Duration::from_secs(60))
            .await
            .iter()
            .map(|m| {
                use rdkafka::Message;
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("audit JSON")
            })
            .collect();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap_or(""),
                a["actor"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(actions[0].0, "apply-create", "{audit:?}");
    assert!(actions[0].1.contains("subscriptions apply"), "{audit:?}");
    assert_eq!(audit[0]["details"]["url"], receiver.url().as_str());
    assert_eq!(actions[1].0, "apply-update", "{audit:?}");
    assert_eq!(audit[1]["details"]["internal"]["to"], true, "{audit:?}");
    assert_eq!(
        actions[2],
        ("disable after 410 Gone", "dispatcher"),
        "{audit:?}"
    );
    assert_eq!(audit[2]["details"]["disabled"], true, "{audit:?}");
    for a in &audit {
        assert!(
            !a.to_string().contains(secret.trim_start_matches("whsec_")),
            "{a}"
        );
    }
    assert_eq!(dispatcher.terminate(), Some(0));
}
