//! Each row of the outcome table, end to end.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_row_of_the_outcome_table() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let fast_retry = "    request_timeout_ms: 400\n    retry: { max_attempts: 3, initial_backoff_ms: 100, max_backoff_ms: 2000 }\n";
    let rows: Vec<(&str, Script)> = vec![
        (
            "retried",
            Script {
                fail_first: 2,
                ..Default::default()
            },
        ),
        (
            "ratelimited",
            Script {
                fail_first: 1,
                fail_status: Some(429),
                retry_after_secs: Some(1),
                ..Default::default()
            },
        ),
        (
            "gone",
            Script {
                always_status: Some(410),
                ..Default::default()
            },
        ),
        (
            "badrequest",
            Script {
                always_status: Some(400),
                ..Default::default()
            },
        ),
        (
            "redirect",
            Script {
                redirect_to: Some("http://169.254.169.254/latest/meta-data".into()),
                ..Default::default()
            },
        ),
        (
            "hangs",
            Script {
                hang: true,
                ..Default::default()
            },
        ),
        (
            "down",
            Script {
                always_status: Some(503),
                ..Default::default()
            },
        ),
    ];
    let mut partners = HashMap::new();
    let mut yaml = String::from("subscriptions:\n");
    for (name, script) in rows {
        let partner = unique(name);
        let secret = Secret::generate();
        let r = receiver(&secret, script).await;
        yaml.push_str(&subscription(
            &format!("{partner}-s"),
            &partner,
            &r.url(),
            &secret,
            &["order.created"],
            fast_retry,
        ));
        partners.insert(name, (partner, r));
    }
    assert!(world.apply(&yaml).status.success());
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let mut events = HashMap::new();
    for (name, (partner, _)) in &partners {
        let event = OrderEvent::sample(
            EventType::OrderCreated,
            &format!("order-{name}"),
            partner,
            1,
        );
        publisher.publish(&event).await.expect("publish");
        events.insert(*name, event);
    }
    // A poison record on the orders topic: not Confluent framing at all.
    let poison: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("producer");
    poison
        .send(
            rdkafka::producer::FutureRecord::to(&world.orders_topic)
                .key("poison")
                .payload("{\"not\": \"avro\"}"),
            Duration::from_secs(10),
        )
        .await
        .expect("poison sent");

    let started = std::time::Instant::now();
    let (retried, ratelimited) = (&partners["retried"].1, &partners["ratelimited"].1);
    let done = eventually(Duration::from_secs(60), || {
        retried.unique() == 1 && ratelimited.unique() == 1
    })
    .await;
    assert!(
        done,
        "retryable failures end delivered\n{}",
        dispatcher.log_tail()
    );
    assert_eq!(retried.requests(), 3, "503, 503, then 204");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 honoured"
    );
    assert_eq!(
        retried.deliveries()[0].webhook_id,
        events["retried"].event_id().to_string(),
        "same webhook-id across retries"
    );

    let dlq = |name: &str| dispatcher::subscriptions::dead_letter_topic(&partners[name].0);
    let (gone, _) = e2e::dead_letters(&dlq("gone"), 1).await.remove(0);
    assert!(gone["dlq-reason"].starts_with("410 Gone"), "{gone:?}");
    let (bad, body) = e2e::dead_letters(&dlq("badrequest"), 1).await.remove(0);
    assert_eq!(
        (
            bad["dlq-attempts"].as_str(),
            bad["dlq-last-status"].as_str()
        ),
        ("1", "400"),
        "dead-lettered at once"
    );
    assert_eq!(bad["dlq-response-excerpt"], "scripted failure");
    assert_eq!(
        bad["webhook-id"],
        events["badrequest"].event_id().to_string(),
        "original headers kept"
    );
    assert_eq!(
        bad["dlq-subscription"],
        format!("{}-s", partners["badrequest"].0)
    );
    assert!(bad.contains_key("dlq-first-attempt-at") && bad.contains_key("dlq-source-offset"));
    let original: serde_json::Value = serde_json::from_slice(&body).expect("original body kept");
    assert_eq!(original["data"]["order_id"], "order-badrequest");
    let (redirect, _) = e2e::dead_letters(&dlq("redirect"), 1).await.remove(0);
    assert_eq!(
        redirect["dlq-last-status"], "302",
        "redirects are not followed"
    );
    assert_eq!(partners["redirect"].1.requests(), 1);
    let (hangs, _) = e2e::dead_letters(&dlq("hangs"), 1).await.remove(0);
    assert_eq!(hangs["dlq-reason"], "retry policy spent after 3 attempts");
    assert!(
        hangs["dlq-last-error"].contains("timed out")
            || hangs["dlq-last-error"].contains("timeout"),
        "{hangs:?}"
    );
    let (down, _) = e2e::dead_letters(&dlq("down"), 1).await.remove(0);
    assert_eq!(
        (
            down["dlq-reason"].as_str(),
            down["dlq-last-status"].as_str()
        ),
        ("retry policy spent after 3 attempts", "503")
    );

    let (poisoned, payload) = e2e::dead_letters(&world.orders_dead_letter_topic, 1)
        .await
        .remove(0);
    assert!(
        poisoned["dlq-reason"].contains("magic byte"),
        "{poisoned:?}"
    );
    assert_eq!(payload, b"{\"not\": \"avro\"}", "the poison bytes kept");

    // 410 disabled the subscription for every instance: the topic says so.
    let args = [
        "--brokers".to_string(),
        brokers(),
        "--subscriptions-topic".into(),
        world.subscriptions_topic.clone(),
        "--allow".into(),
        "127.0.0.1".into(),
        "subscriptions".into(),
        "list".into(),
    ];
    let listed = e2e::run(
        "dispatcher",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "",
    );
    let listing = String::from_utf8_lossy(&listed.stdout);
    let gone_line = listing
        .lines()
        .find(|l| l.starts_with(&format!("{}-s", partners["gone"].0)))
        .expect("listed");
    assert!(gone_line.contains("DISABLED"), "{listing}");
    let metrics = reqwest::get(&dispatcher.metrics_url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("dispatcher_subscriptions_disabled_total"),
        "{metrics}"
    );
    assert_eq!(dispatcher.terminate(), Some(0));
}
