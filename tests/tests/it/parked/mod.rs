//! Parked keys against the real broker and a scripted receiver: one order the partner
//! keeps rejecting moves to the partner's retry topic after the lane's budget; the
//! partner's other orders and its committed offset go on; the order's later events
//! follow it there, so its order holds, also across a kill -9; once the partner accepts
//! it, everything arrives in order and nothing is dead-lettered.

use std::time::{Duration, Instant};

use consumer_examples::receiver::Script;
use e2e::{arrivals_per_order, assert_per_order, DispatchWorld, DispatcherProcess};
use order_schemas::{EventType, OrderEvent};

mod backlog;

async fn wait_metric(d: &DispatcherProcess, line_prefix: &str, want: f64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = d.metric(line_prefix).await;
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {line_prefix} is {got:?}, not {want}\n{}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn publish(
    p: &producer::Publisher,
    partner: &str,
    orders: &[&str],
    round: usize,
) -> Vec<OrderEvent> {
    let mut sent = Vec::new();
    for order in orders {
        let kind = if round == 0 {
            EventType::OrderCreated
        } else {
            EventType::OrderStatusChanged
        };
        let e = OrderEvent::sample(kind, order, partner, 1);
        p.publish(&e).await.expect("publish");
        sent.push(e);
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_order_is_parked_without_holding_the_partner_and_keeps_its_order_across_kill_9()
{
    let mut world = DispatchWorld::new("127.0.0.1").await;
    // A killed member never leaves its group: let the rebalance stop waiting for it soon.
    world.run_args = [
        "--park-after-attempts",
        "2",
        "--max-poll-interval-ms",
        "15000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (partner, receiver) = world
        .partner_with_receiver(
            "parked",
            Script {
                fail_orders: vec!["bad".into()],
                fail_status: Some(500),
                ..Default::default()
            },
            "    retry: { max_attempts: 1000, max_elapsed_secs: 600, initial_backoff_ms: 2000, max_backoff_ms: 4000 }\n",
        )
        .await;
    let dispatcher = world.start();
    let orders = ["bad", "o1", "o2", "o3", "o4", "o5"];
    let publisher = world.publisher().await;
    let mut sent = Vec::new();
    for round in 0..4 {
        sent.extend(publish(&publisher, &partner, &orders, round).await);
    }

    // Every other order arrives while `bad` keeps failing; `bad` is parked and the
    // partner's committed offset reaches the end of its delivery topic.
    let good = sent.iter().filter(|e| e.order_id() != "bad").count();
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals_per_order(&receiver)
        .values()
        .map(Vec::len)
        .sum::<usize>()
        < good
    {
        assert!(
            Instant::now() < deadline,
            "{:?}\n{}",
            arrivals_per_order(&receiver),
            dispatcher.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!arrivals_per_order(&receiver).contains_key("bad"));
    let keys = format!("dispatcher_parked_keys{{partner=\"{partner}\"}} ");
    wait_metric(&dispatcher, &keys, 1.0, "one key parked").await;
    let lag = format!("dispatcher_consumer_lag_records{{topic=\"deliveries.{partner}\"}} ");
    wait_metric(
        &dispatcher,
        &lag,
        0.0,
        "the delivery topic's offset moved on",
    )
    .await;
    let parked = dispatcher
        .metric(&format!(
            "dispatcher_parked_records_total{{partner=\"{partner}\"}} "
        ))
        .await;
    assert_eq!(
        parked,
        Some(4.0),
        "bad's first event parked, its 3 others followed"
    );
    // One more event of `bad` follows it; kill -9 right after, most likely before its
    // offset is committed (every second): the new instance reads it again and must
    // send it behind the parked ones, not at once.
    sent.extend(publish(&publisher, &partner, &["bad"], 1).await);
    wait_metric(
        &dispatcher,
        &format!("dispatcher_parked_records_total{{partner=\"{partner}\"}} "),
        5.0,
        "bad's fifth event followed it",
    )
    .await;

    // kill -9 while parked; the new instance reads the parked key back from the retry
    // topic before it delivers anything of that partition.
    dispatcher.kill9();
    let dispatcher = world.start();
    wait_metric(
        &dispatcher,
        &keys,
        1.0,
        "the parked key read back after kill -9",
    )
    .await;
    // Right after a failed retry of `bad` (its next one is 2-4 s away), the partner
    // starts accepting it and `bad` gets new events: they must wait behind the parked
    // ones (sent at once, they would overtake them).
    let before = receiver.requests();
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.requests() == before {
        assert!(Instant::now() < deadline, "no retry of the parked order");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    receiver.set_script(Script::default());
    for round in 4..6 {
        sent.extend(publish(&publisher, &partner, &["bad", "o1"], round).await);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = arrivals_per_order(&receiver);
        if got.get("bad").map_or(0, Vec::len) == 7 && got.get("o1").map_or(0, Vec::len) == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{got:?}\n{}",
            dispatcher.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_per_order(&receiver, &sent);
    wait_metric(&dispatcher, &keys, 0.0, "unparked once delivered").await;
    let text = dispatcher.metrics_text().await;
    assert!(
        !text.contains(&format!(
            "dispatcher_dead_lettered_total{{partner=\"{partner}\""
        )),
        "nothing dead-lettered"
    );
    assert_eq!(dispatcher.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_order_ends_in_the_dead_letter_topic_when_its_retry_policy_is_spent() {
    let mut world = DispatchWorld::new("127.0.0.1").await;
    world.run_args = ["--park-after-attempts", "2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let (partner, receiver) = world
        .partner_with_receiver(
            "parkdlq",
            Script {
                fail_orders: vec!["bad".into()],
                fail_status: Some(500),
                ..Default::default()
            },
            "    retry: { max_attempts: 4, max_elapsed_secs: 600, initial_backoff_ms: 50, max_backoff_ms: 100 }\n",
        )
        .await;
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let mut sent = publish(&publisher, &partner, &["bad", "o1"], 0).await;
    sent.extend(publish(&publisher, &partner, &["bad", "o1"], 1).await);
    // Each of bad's events: 2 attempts in the lane (the first) or none (the second,
    // following it), then the rest of its 4 in the retry topic, then dead-lettered, in
    // order.
    let dead = e2e::dead_letters(&dispatcher::subscriptions::dead_letter_topic(&partner), 2).await;
    let want: Vec<String> = sent
        .iter()
        .filter(|e| e.order_id() == "bad")
        .map(|e| e.event_id().to_string())
        .collect();
    let got: Vec<String> = dead.iter().map(|(h, _)| h["webhook-id"].clone()).collect();
    assert_eq!(got, want, "bad's events dead-lettered in order");
    for (h, _) in &dead {
        assert_eq!(
            h["dlq-reason"], "retry policy spent after 4 attempts",
            "{h:?}"
        );
        assert_eq!(h["dlq-source-topic"], format!("retries.{partner}"), "{h:?}");
        assert_eq!(h["dlq-last-status"], "500", "{h:?}");
    }
    let o1 = arrivals_per_order(&receiver);
    assert_eq!(o1.get("o1").map(Vec::len), Some(2), "{o1:?}");
    // The retry topic carried the count on: 4 attempts per bad event in all.
    assert_eq!(receiver.requests(), 2 + 2 * 4, "o1's 2 and bad's 2 x 4");
    let keys = format!("dispatcher_parked_keys{{partner=\"{partner}\"}} ");
    wait_metric(&dispatcher, &keys, 0.0, "unparked once dead-lettered").await;
    assert_eq!(dispatcher.terminate(), Some(0));
}

/// Issue #22, item 0: a handler that crashes on a few orders. Their failures are the
/// keys' own (the partner accepts its other orders meanwhile): they never open the
/// partner's circuit nor throttle it, the poison orders are parked and dead-lettered by
/// policy, each in its order, and every other order arrives, in order. (Before: the
/// poison orders' retries opened the circuit, which held the partner's other orders
/// too, and the circuit reopened on each probe that met a poison order.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_orders_the_partner_always_refuses_neither_open_its_circuit_nor_hold_its_others() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let poison: Vec<String> = (0..5).map(|i| format!("poison-{i}")).collect();
    let (partner, receiver) = world
        .partner_with_receiver(
            "poison",
            Script {
                fail_orders: poison.clone(),
                fail_status: Some(500),
                ..Default::default()
            },
            "    retry: { max_attempts: 4, max_elapsed_secs: 600, initial_backoff_ms: 100, max_backoff_ms: 200 }\n",
        )
        .await;
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let good: Vec<String> = (0..100).map(|i| format!("good-{i}")).collect();
    let mut sent = Vec::new();
    for round in 0..4 {
        // Each round: the good orders, with the poison ones among them.
        let mut orders: Vec<&str> = good.iter().map(String::as_str).collect();
        for (i, p) in poison.iter().enumerate() {
            orders.insert(i * 20, p.as_str());
        }
        sent.extend(publish(&publisher, &partner, &orders, round).await);
    }
    let is_poison = |e: &OrderEvent| poison.iter().any(|p| p == e.order_id());
    let accepted: Vec<OrderEvent> = sent.iter().filter(|e| !is_poison(e)).cloned().collect();
    let want_dead: Vec<OrderEvent> = sent.iter().filter(|e| is_poison(e)).cloned().collect();
    // Every poison event ends in the dead-letter topic once its policy is spent (3
    // attempts in the lane for the first of each order, then the retry topic).
    let dead = e2e::dead_letters(
        &dispatcher::subscriptions::dead_letter_topic(&partner),
        want_dead.len(),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while arrivals_per_order(&receiver)
        .values()
        .map(Vec::len)
        .sum::<usize>()
        < accepted.len()
    {
        assert!(Instant::now() < deadline, "{}", dispatcher.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_per_order(&receiver, &accepted);
    for order in &poison {
        let got: Vec<String> = dead
            .iter()
            .map(|(h, _)| h["webhook-id"].clone())
            .filter(|id| e2e::sent_ids_of(&want_dead, order).contains(id))
            .collect();
        assert_eq!(
            got,
            e2e::sent_ids_of(&want_dead, order),
            "{order}: dead-lettered in order"
        );
    }
    for (h, _) in &dead {
        assert_eq!(
            h["dlq-reason"], "retry policy spent after 4 attempts",
            "{h:?}"
        );
    }
    let parked = format!("dispatcher_parked_records_total{{partner=\"{partner}\"}} ");
    assert_eq!(
        dispatcher.metric(&parked).await,
        Some(want_dead.len() as f64),
        "each poison event parked once (the first of each order after 3 attempts, the rest following it)"
    );
    let opened = format!("dispatcher_circuit_opened_total{{partner=\"{partner}\"}} ");
    assert_eq!(
        dispatcher.metric(&opened).await,
        Some(0.0),
        "the poison orders' failures are theirs, not the partner's\n{}",
        dispatcher.log_tail()
    );
    let own = format!("dispatcher_key_failures_total{{partner=\"{partner}\"}} ");
    assert!(
        dispatcher.metric(&own).await > Some(0.0),
        "counted as the keys' own"
    );
    assert_eq!(dispatcher.terminate(), Some(0));
}

/// Issue #22, item 0: parked orders waiting for their backoff fill the lane's retry side
/// (here `--max-buffered 8`: 2 orders with 10 events each, retried every 2-4 s). That
/// side has its own bound (its partitions pause); it must not stop the lane taking the
/// partner's other orders from the delivery topic. (Before: the lane stopped taking
/// records of either topic once either held `max_buffered`, so every other order waited
/// for the parked ones' retries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_orders_filling_the_retry_side_do_not_hold_the_partners_others() {
    let mut world = DispatchWorld::new("127.0.0.1").await;
    world.run_args = ["--max-buffered", "8", "--park-after-attempts", "1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let poison = ["bad-1", "bad-2"];
    let (partner, receiver) = world
        .partner_with_receiver(
            "retryfull",
            Script {
                fail_orders: poison.iter().map(|s| s.to_string()).collect(),
                fail_status: Some(500),
                ..Default::default()
            },
            "    retry: { max_attempts: 1000, max_elapsed_secs: 600, initial_backoff_ms: 2000, max_backoff_ms: 4000 }\n",
        )
        .await;
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let mut sent = Vec::new();
    for round in 0..10 {
        sent.extend(publish(&publisher, &partner, &poison, round).await);
    }
    let parked = format!("dispatcher_parked_records_total{{partner=\"{partner}\"}} ");
    wait_metric(&dispatcher, &parked, 20.0, "every bad event parked").await;
    // The retry side now holds 20 records (more than 8), waiting for their backoff.
    let good: Vec<String> = (0..40).map(|i| format!("good-{i}")).collect();
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    let mut accepted = Vec::new();
    for round in 0..2 {
        accepted.extend(publish(&publisher, &partner, &good, round).await);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals_per_order(&receiver)
        .values()
        .map(Vec::len)
        .sum::<usize>()
        < accepted.len()
    {
        assert!(
            Instant::now() < deadline,
            "{} of {} other orders' events arrived while the parked ones wait\n{}",
            arrivals_per_order(&receiver)
                .values()
                .map(Vec::len)
                .sum::<usize>(),
            accepted.len(),
            dispatcher.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_per_order(&receiver, &accepted);
    assert_eq!(dispatcher.terminate(), Some(0));
}
