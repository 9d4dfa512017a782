//! Every event to exactly its subscriptions, in order per key.

use super::*;

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
