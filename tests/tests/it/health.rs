//! Partner health against the real broker, a running dispatcher and API and a scripted
//! receiver: a failing partner is judged failing, then disconnected automatically;
//! nothing is sent while it is disconnected and its events keep accumulating; after a
//! reconnect every event arrives, in order per order, none dead-lettered.

use std::time::{Duration, Instant};

use consumer_examples::receiver::Script;
use e2e::{
    api_tokens, assert_per_order, partner_token, DispatchWorld, DispatcherProcess, ADMIN_TOKEN,
};
use order_schemas::{EventType, OrderEvent};
use serde_json::{json, Value};

async fn status(d: &DispatcherProcess, partner: &str) -> Value {
    let url = d
        .metrics_url
        .replace("/metrics", &format!("/status/{partner}"));
    match reqwest::get(&url).await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// Waits until the partner's state is one of `want` (`|`-separated); returns its status.
async fn wait_state(d: &DispatcherProcess, partner: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let s = status(d, partner).await;
        let p = &s["partners"][partner];
        if p["state"]
            .as_str()
            .is_some_and(|s| want.split('|').any(|w| w == s))
        {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "state never became {want}: {p}\n{}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn publish(world: &DispatchWorld, partner: &str, n: usize, from: usize) -> Vec<OrderEvent> {
    let p = world.publisher().await;
    let mut sent = Vec::new();
    for i in from..from + n {
        let kind = if i < 5 {
            EventType::OrderCreated
        } else {
            EventType::OrderStatusChanged
        };
        let e = OrderEvent::sample(kind, &format!("order-{}", i % 5), partner, 1);
        p.publish(&e).await.expect("publish");
        sent.push(e);
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_partner_is_disconnected_and_after_reconnect_gets_everything_in_order() {
    let mut world = DispatchWorld::new("127.0.0.1").await;
    world.run_args = [
        "--disconnect-after-ms",
        "3000",
        "--health-interval-ms",
        "250",
        "--breaker-failures",
        "3",
        "--breaker-cooldown-ms",
        "300",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (partner, receiver) = world
        .partner_with_receiver(
            "health",
            Script {
                always_status: Some(503),
                ..Default::default()
            },
            "    retry: { max_attempts: 100000, max_elapsed_secs: 3600, initial_backoff_ms: 20, max_backoff_ms: 200 }\n",
        )
        .await;
    let dispatcher = world.start();
    let api = world.start_api(&api_tokens(&[&partner, "other"]), &[]);
    let mut sent = publish(&world, &partner, 10, 0).await;

    // 503 to everything: failing (the reasons say why), then disconnected.
    let failing = wait_state(&dispatcher, &partner, "failing", Duration::from_secs(60)).await;
    let reasons = failing["reasons"].to_string();
    assert!(
        reasons.contains("error rate") || reasons.contains("circuit open"),
        "{failing}"
    );
    assert!(failing["failing_since"].is_string(), "{failing}");
    let off = wait_state(
        &dispatcher,
        &partner,
        "disconnected",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(off["disconnected"]["by"], "dispatcher", "{off}");
    assert!(
        off["disconnected"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("failing for")),
        "{off}"
    );
    let metrics = dispatcher.metrics_text().await;
    let line =
        format!("dispatcher_partner_state{{partner=\"{partner}\",state=\"disconnected\"}} 1");
    assert!(metrics.contains(&line), "{line} not in the metrics");
    let (s, view) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/subscriptions/{partner}-s"),
            Some(&partner_token(&partner)),
            None,
        )
        .await;
    assert_eq!(
        (s, view["state"].as_str()),
        (200, Some("disconnected")),
        "{view}"
    );

    // The partner fixes its endpoint; nothing is sent while disconnected, and what is
    // published meanwhile is kept.
    receiver.set_script(Script::default());
    sent.extend(publish(&world, &partner, 10, 10).await);
    let before = receiver.requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.requests(),
        before,
        "a request reached a disconnected partner"
    );
    assert_eq!(receiver.unique(), 0);

    // Only an operator disconnects; the partner may reconnect itself.
    let (s, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/partners/{partner}/disconnect"),
            Some(&partner_token(&partner)),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let (s, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/partners/{partner}/reconnect"),
            Some(&partner_token("other")),
            None,
        )
        .await;
    assert_eq!(s, 404, "another partner's token");
    let (s, body) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/partners/{partner}/reconnect"),
            Some(&partner_token(&partner)),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["subscriptions"][0]["state"], "active", "{body}");

    // Everything arrives, in order per order, none lost, none dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(90);
    while receiver.unique() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "delivered {} of {}\n{}",
            receiver.unique(),
            sent.len(),
            dispatcher.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_per_order(&receiver, &sent);
    let metrics = dispatcher.metrics_text().await;
    assert!(
        !metrics.contains(&format!(
            "dispatcher_dead_lettered_total{{partner=\"{partner}\""
        )),
        "nothing dead-lettered"
    );
    // Recovered: delivering again (the failures stay in the one-minute error-rate
    // window for a while, so degraded is allowed).
    let back = wait_state(
        &dispatcher,
        &partner,
        "healthy|degraded",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(back["circuit"], "closed", "{back}");
    assert!(back["disconnected"].is_null(), "{back}");
    // An operator disconnect holds it again, with the reason given.
    let (s, body) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/partners/{partner}/disconnect"),
            Some(ADMIN_TOKEN),
            Some(json!({"reason": "partner asked for a maintenance window"})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let off = wait_state(
        &dispatcher,
        &partner,
        "disconnected",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(off["disconnected"]["by"], "admin", "{off}");
    assert_eq!(dispatcher.terminate(), Some(0));
}
