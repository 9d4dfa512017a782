//! The dispatcher against the real broker, registry and receivers over loopback:
//! delivery to every matching subscription, per-key order, tenant isolation, signatures.

use std::collections::HashMap;
use std::time::Duration;

use consumer_examples::receiver::{Receiver, Script};
use dispatcher::webhook::signing::Secret;
use e2e::{brokers, eventually, unique, DispatchWorld};
use order_schemas::{EventType, OrderEvent};

async fn receiver(secret: &str, script: Script) -> Receiver {
    Receiver::start("127.0.0.1:0".parse().expect("addr"), secret, script)
        .await
        .expect("receiver")
}

fn subscription(
    id: &str,
    partner: &str,
    url: &str,
    secret: &str,
    types: &[&str],
    extra: &str,
) -> String {
    format!(
        "  - id: {id}\n    partner_id: {partner}\n    url: {url}\n    event_types: [{}]\n    secrets: [\"{secret}\"]\n{extra}",
        types.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_exactly_its_subscriptions_in_order_per_key() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let (pa, pb, ops) = (unique("pa"), unique("pb"), unique("ops"));
    let (sa, sb, so) = (Secret::generate(), Secret::generate(), Secret::generate());
    let (ra, rb, ro) = (
        receiver(&sa, Script::default()).await,
        receiver(&sb, Script::default()).await,
        receiver(&so, Script::default()).await,
    );
    let all = ["order.created", "order.status_changed", "order.cancelled"];
    let yaml = format!(
        "subscriptions:\n{}{}{}",
        subscription(&format!("{pa}-all"), &pa, &ra.url(), &sa, &all, ""),
        subscription(
            &format!("{pb}-some"),
            &pb,
            &rb.url(),
            &sb,
            &["order.created", "order.cancelled"],
            ""
        ),
        subscription(
            &format!("{ops}-audit"),
            &ops,
            &ro.url(),
            &so,
            &all,
            "    internal: true\n"
        ),
    );
    let applied = world.apply(&yaml);
    assert!(
        applied.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let dispatcher = world.start();

    let publisher = world.publisher().await;
    let kinds = [
        EventType::OrderCreated,
        EventType::OrderStatusChanged,
        EventType::OrderCancelled,
    ];
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut sent = Vec::new();
    let mut pending = Vec::new();
    for i in 0..180 {
        let order = format!("order-{}", i % 24);
        let partner = if (i % 24) % 2 == 0 { &pa } else { &pb };
        let event = OrderEvent::sample(kinds[i % 3], &order, partner, 2);
        pending.push(
            publisher
                .enqueue(&event, Some(traceparent))
                .await
                .expect("enqueue"),
        );
        sent.push(event);
    }
    for p in pending {
        p.wait().await.expect("published");
    }

    let expect_a: Vec<&OrderEvent> = sent.iter().filter(|e| e.partner_id() == pa).collect();
    let expect_b: Vec<&OrderEvent> = sent
        .iter()
        .filter(|e| e.partner_id() == pb && e.event_type() != EventType::OrderStatusChanged)
        .collect();
    let done = eventually(Duration::from_secs(90), || {
        ra.unique() == expect_a.len() && rb.unique() == expect_b.len() && ro.unique() == sent.len()
    })
    .await;
    assert!(
        done,
        "delivered a {}/{}, b {}/{}, ops {}/{}\n{}",
        ra.unique(),
        expect_a.len(),
        rb.unique(),
        expect_b.len(),
        ro.unique(),
        sent.len(),
        dispatcher.log_tail()
    );

    for (receiver, partner, expected) in [(&ra, &pa, &expect_a), (&rb, &pb, &expect_b)] {
        let got = receiver.deliveries();
        // Tenant isolation: nothing of another partner's orders.
        assert!(
            got.iter().all(|d| &d.partner_id == partner),
            "{partner} received another partner's order"
        );
        // Per-key order: each order's events arrive in publish order (duplicates aside).
        let mut per_order: HashMap<&str, Vec<&str>> = HashMap::new();
        for d in got.iter().filter(|d| !d.duplicate) {
            per_order
                .entry(d.order_id.as_str())
                .or_default()
                .push(d.webhook_id.as_str());
        }
        for (order, ids) in per_order {
            let want: Vec<String> = expected
                .iter()
                .filter(|e| e.order_id() == order)
                .map(|e| e.event_id().to_string())
                .collect();
            assert_eq!(ids, want, "{partner} {order}: events out of order");
        }
        assert!(
            got.iter()
                .all(|d| d.traceparent.as_deref() == Some(traceparent)),
            "traceparent passed on"
        );
        assert_eq!(receiver.rejected_signatures(), 0);
    }
    // The webhook body is the contract's shape.
    let body = &ra.deliveries()[0].body;
    assert!(
        body["type"].is_string()
            && body["timestamp"].is_string()
            && body["data"]["order"].is_object(),
        "{body}"
    );
    assert!(body["data"].get("type").is_none());

    let metrics = reqwest::get(&dispatcher.metrics_url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(&format!(
            "dispatcher_deliveries_total{{partner=\"{pa}\",outcome=\"delivered\"}}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "dispatcher_attempt_duration_seconds_bucket{{partner=\"{pa}\""
        )),
        "{metrics}"
    );
    // Everything was delivered, so nothing is waiting: the oldest-age gauge (sampled every
    // second) comes down to 0, and so does the lane's consumer lag once its offsets are
    // committed (auto-commit every 250 ms, statistics every 5 s).
    let idle = format!("dispatcher_oldest_undelivered_age_seconds{{partner=\"{pa}\"}} 0");
    let caught_up = format!("dispatcher_consumer_lag_records{{topic=\"deliveries.{pa}\"}} 0");
    let mut last = String::new();
    for _ in 0..200 {
        last = reqwest::get(&dispatcher.metrics_url)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        if last.contains(&idle) && last.contains(&caught_up) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.contains(&idle), "{last}");
    assert!(last.contains(&caught_up), "{last}");
    assert_eq!(dispatcher.terminate(), Some(0), "SIGTERM exits 0");
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_targets_are_refused_and_bad_signatures_are_refused_by_the_receiver() {
    // No allowlist at all: public addresses only.
    let world = DispatchWorld::new("").await;
    let secret = Secret::generate();
    let local = receiver(&secret, Script::default()).await;
    let port = local.addr.port();
    // IP literals are refused when the subscription is applied, naming the field.
    for url in [
        "https://169.254.169.254/latest/meta-data",
        "https://10.0.0.8/hook",
        "https://[::ffff:127.0.0.1]/hook",
        format!("http://127.0.0.1:{port}/webhook").as_str(),
    ] {
        let out = world.apply(&format!(
            "subscriptions:\n{}",
            subscription("s", "p", url, &secret, &["order.created"], "")
        ));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {stderr}");
        assert!(stderr.contains("subscription `s`: url:"), "{url}: {stderr}");
    }
    // A name that resolves to 127.0.0.1 passes validation but is refused at delivery.
    let partner = unique("sneaky");
    let yaml = format!(
        "subscriptions:\n{}",
        subscription(
            &format!("{partner}-s"),
            &partner,
            &format!("https://localhost:{port}/webhook"),
            &secret,
            &["order.created"],
            ""
        )
    );
    assert!(world.apply(&yaml).status.success());
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    publisher
        .publish(&OrderEvent::sample(
            EventType::OrderCreated,
            "o-1",
            &partner,
            1,
        ))
        .await
        .expect("publish");
    let (refused, _) =
        e2e::dead_letters(&dispatcher::subscriptions::dead_letter_topic(&partner), 1)
            .await
            .remove(0);
    assert!(refused["dlq-reason"].contains("SSRF guard"), "{refused:?}");
    assert!(
        refused["dlq-reason"].contains("localhost resolves to")
            && refused["dlq-reason"].contains("loopback"),
        "{refused:?}"
    );
    assert_eq!(refused["dlq-attempts"], "1", "not retried");
    assert_eq!(local.requests(), 0, "nothing reached the local address");
    assert_eq!(dispatcher.terminate(), Some(0));

    // Signed with a secret the partner does not have: the receiver answers 401.
    let world = DispatchWorld::new("127.0.0.1").await;
    let (ours, theirs) = (Secret::generate(), Secret::generate());
    let strict = receiver(&theirs, Script::default()).await;
    let partner = unique("strict");
    let yaml = format!(
        "subscriptions:\n{}",
        subscription(
            &format!("{partner}-s"),
            &partner,
            &strict.url(),
            &ours,
            &["order.created"],
            ""
        )
    );
    assert!(world.apply(&yaml).status.success());
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    publisher
        .publish(&OrderEvent::sample(
            EventType::OrderCreated,
            "o-2",
            &partner,
            1,
        ))
        .await
        .expect("publish");
    let (unsigned, _) =
        e2e::dead_letters(&dispatcher::subscriptions::dead_letter_topic(&partner), 1)
            .await
            .remove(0);
    assert_eq!(unsigned["dlq-last-status"], "401");
    assert_eq!(strict.rejected_signatures(), 1);
    assert_eq!(strict.unique(), 0);
    assert_eq!(dispatcher.terminate(), Some(0));
}

/// A partner that stops answering for longer than max.poll.interval.ms: its lane's
/// buffer fills, the lane pauses its partitions (nothing more is fetched) and keeps
/// polling, so it stays in its group; when the partner answers again everything arrives
/// once, in order per key, and the lane resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_partner_pauses_its_lane_without_leaving_the_group() {
    let mut world = DispatchWorld::new("127.0.0.1").await;
    // A lane that stopped polling would be out of its group after 7 s: the stall is longer.
    world.run_args = vec![
        "--max-buffered".into(),
        "16".into(),
        "--max-poll-interval-ms".into(),
        "7000".into(),
    ];
    let partner = unique("stalled");
    let secret = Secret::generate();
    let slow = receiver(
        &secret,
        Script {
            delay_ms: 10_000,
            ..Default::default()
        },
    )
    .await;
    let yaml = format!(
        "subscriptions:\n{}",
        subscription(
            &format!("{partner}-s"),
            &partner,
            &slow.url(),
            &secret,
            &["order.created", "order.status_changed"],
            "    max_in_flight: 2\n    request_timeout_ms: 30000\n"
        )
    );
    assert!(world.apply(&yaml).status.success());
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let mut sent = Vec::new();
    for i in 0..60 {
        let kind = if i < 20 {
            EventType::OrderCreated
        } else {
            EventType::OrderStatusChanged
        };
        let event = OrderEvent::sample(kind, &format!("order-{}", i % 20), &partner, 1);
        publisher.publish(&event).await.expect("publish");
        sent.push(event);
    }
    let metrics = |url: String| async move {
        reqwest::get(&url)
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    let paused = format!("dispatcher_lane_paused{{partner=\"{partner}\"}} 1");
    let buffered = format!("dispatcher_buffered_records{{partner=\"{partner}\"}} ");
    let mut max_buffered = 0.0f64;
    let mut paused_at = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while paused_at.is_none() && std::time::Instant::now() < deadline {
        let text = metrics(dispatcher.metrics_url.clone()).await;
        if text.contains(&paused) {
            paused_at = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        paused_at.is_some(),
        "the lane paused its partitions\n{}",
        dispatcher.log_tail()
    );
    // Stay stalled past max.poll.interval.ms, watching the buffer.
    while paused_at.is_some_and(|t| t.elapsed() < Duration::from_secs(8)) {
        let text = metrics(dispatcher.metrics_url.clone()).await;
        if let Some(v) = text
            .lines()
            .find_map(|l| l.strip_prefix(buffered.as_str()))
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            max_buffered = max_buffered.max(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The partner answers again.
    slow.set_script(Script::default());
    let all = eventually(Duration::from_secs(90), || slow.unique() == sent.len()).await;
    assert!(
        all,
        "{} of {} delivered\n{}",
        slow.unique(),
        sent.len(),
        dispatcher.log_tail()
    );
    assert!(max_buffered <= 16.0 + 1.0, "buffer bounded: {max_buffered}");
    let got = slow.deliveries();
    assert_eq!(
        got.iter().filter(|d| d.duplicate).count(),
        0,
        "no redelivery: the lane never left its group\n{}",
        dispatcher.log_tail()
    );
    for order in 0..20 {
        let order = format!("order-{order}");
        let want: Vec<String> = sent
            .iter()
            .filter(|e| e.order_id() == order)
            .map(|e| e.event_id().to_string())
            .collect();
        let have: Vec<String> = got
            .iter()
            .filter(|d| d.order_id == order)
            .map(|d| d.webhook_id.clone())
            .collect();
        assert_eq!(have, want, "{order} in order");
    }
    let resumed = format!("dispatcher_lane_paused{{partner=\"{partner}\"}} 0");
    let url = dispatcher.metrics_url.clone();
    let mut text = String::new();
    for _ in 0..50 {
        text = metrics(url.clone()).await;
        if text.contains(&resumed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.contains(&resumed), "resumed once idle: {text}");
    assert_eq!(dispatcher.terminate(), Some(0));
}
