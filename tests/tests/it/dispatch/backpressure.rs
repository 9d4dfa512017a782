//! A stalled partner pauses its lane and stays in its group.

use super::*;

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
