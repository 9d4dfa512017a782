//! Parked keys against the real broker and a scripted receiver: one order the partner
//! keeps rejecting moves to the partner's retry topic after the lane's budget; the
//! partner's other orders and its committed offset go on; the order's later events
//! follow it there, so its order holds, also across a kill -9; once the partner accepts
//! it, everything arrives in order and nothing is dead-lettered.

use std::time::{Duration, Instant};

use consumer_examples::receiver::Script;
use e2e::{arrivals_per_order, assert_per_order, DispatchWorld, DispatcherProcess};
use order_schemas::{EventType, OrderEvent};

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

/// The read-back's reader (#22 item 1): it reads several topics' partitions at once,
/// answers each as soon as its range is read while the others go on, keeps nothing but
/// what its caller counts, and when one partition cannot be finished (here its range
/// runs past what the partition holds) it fails after a pause without records, naming
/// the topic, having handed over every record it read (so a retry goes on from there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_back_answers_each_partition_as_it_is_read_and_names_the_one_it_cannot_finish() {
    use dispatcher::kafka::{visit_ranges, KafkaSettings, Patience};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::Message;
    let (done_topic, stuck_topic) = (
        e2e::fresh_topic("readback-done", 2).await,
        e2e::fresh_topic("readback-stuck", 1).await,
    );
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", e2e::brokers())
        .create()
        .expect("producer");
    for (topic, partition, n) in [
        (&done_topic, 0, 30),
        (&done_topic, 1, 5),
        (&stuck_topic, 0, 3),
    ] {
        for i in 0..n {
            let key = format!("order-{}", i % 4);
            producer
                .send(
                    FutureRecord::to(topic)
                        .partition(partition)
                        .key(&key)
                        .payload("{}"),
                    Duration::from_secs(30),
                )
                .await
                .expect("produced");
        }
    }
    let settings = KafkaSettings {
        brokers: e2e::brokers(),
        session_timeout: Duration::from_secs(6),
        max_poll_interval: Duration::from_secs(60),
        options: Vec::new(),
        replication: None,
    };
    let ranges: std::collections::BTreeMap<(String, i32), (i64, i64)> = [
        ((done_topic.clone(), 0), (0, 30)),
        ((done_topic.clone(), 1), (2, 5)),
        // Asks for 10 records of a partition that holds 3.
        ((stuck_topic.clone(), 0), (0, 10)),
    ]
    .into();
    let outcome = tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer =
            settings.reader().create().expect("consumer");
        let mut seen: std::collections::BTreeMap<(String, i32), Vec<i64>> = Default::default();
        let mut done = Vec::new();
        let result = visit_ranges(
            &consumer,
            &ranges,
            Patience {
                idle: Duration::from_secs(3),
                deadline: None,
                stop: None,
            },
            |m| {
                seen.entry((m.topic().to_string(), m.partition()))
                    .or_default()
                    .push(m.offset());
                true
            },
            |topic, partition| done.push((topic.to_string(), partition)),
        );
        (result, seen, done)
    })
    .await
    .expect("read");
    let (result, seen, mut done) = outcome;
    done.sort();
    assert_eq!(
        done,
        vec![(done_topic.clone(), 0), (done_topic.clone(), 1)],
        "the readable partitions are answered; the stuck one is not"
    );
    assert_eq!(seen[&(done_topic.clone(), 0)], (0..30).collect::<Vec<_>>());
    assert_eq!(seen[&(done_topic.clone(), 1)], vec![2, 3, 4]);
    assert_eq!(
        seen[&(stuck_topic.clone(), 0)],
        vec![0, 1, 2],
        "what it read of the stuck partition is handed over"
    );
    let error = result
        .expect_err("a partition it cannot finish is an error")
        .to_string();
    assert!(
        error.contains(&stuck_topic)
            && !error.contains(&done_topic)
            && error.contains("no record for 3s"),
        "{error}"
    );
}

/// #22 item 2: records waiting by policy fill the instance's global cap (here a partner
/// down for hours: its parked records wait an hour for their backoff); a healthy
/// partner beside it must not be paused for them. Before, every lane holding a record
/// paused at the cap and resumed only at three quarters of it, which records due in an
/// hour never allow: the healthy partner stopped for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_records_waiting_for_their_backoff_do_not_pause_a_healthy_partner_at_the_global_cap()
{
    use dispatcher::kafka::headers;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut world = DispatchWorld::new("127.0.0.1").await;
    world.run_args = ["--max-buffered", "100", "--max-buffered-total", "150"]
        .map(String::from)
        .to_vec();
    let (down, _) = world
        .partner_with_receiver("down", Script::default(), "")
        .await;
    let (healthy, healthy_rx) = world
        .partner_with_receiver("healthy", Script::default(), "")
        .await;
    // The down partner's retry topic: 400 parked records over 40 orders, due in an hour.
    // (With as many partitions as its delivery topic, as the lanes require.)
    let retries = format!("retries.{down}");
    let partitions = {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &world.brokers)
            .create()
            .expect("metadata client");
        let m = c
            .fetch_metadata(Some(&format!("deliveries.{down}")), Duration::from_secs(10))
            .expect("metadata");
        m.topics()[0].partitions().len() as i32
    };
    assert!(partitions > 0, "the down partner's delivery topic exists");
    e2e::create_topic_on(&world.brokers, &retries, partitions).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &world.brokers)
        .create()
        .expect("producer");
    let (due, subscription) = (
        (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        format!("{down}-s"),
    );
    let mut written = Vec::new();
    for i in 0..400 {
        let (id, key) = (format!("parked-{i}"), format!("order-{}", i % 40));
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: headers::WEBHOOK_ID,
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: headers::SUBSCRIPTION_ID,
                value: Some(subscription.as_str()),
            })
            .insert(Header {
                key: headers::RETRY_ATTEMPTS,
                value: Some("3"),
            })
            .insert(Header {
                key: headers::RETRY_NOT_BEFORE,
                value: Some(due.as_str()),
            });
        let record = FutureRecord::to(&retries)
            .partition(i % partitions)
            .key(&key)
            .payload("{}")
            .headers(headers);
        written.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("queued"),
        );
    }
    for w in written {
        w.await.expect("delivery").expect("produced");
    }
    let d = world.start();
    // The down partner takes in its parked records, more than the cap.
    let deadline = Instant::now() + Duration::from_secs(60);
    let buffered = format!("dispatcher_buffered_records{{partner=\"{down}\"}} ");
    while d.metric(&buffered).await.unwrap_or(0.0) < 150.0 {
        assert!(
            Instant::now() < deadline,
            "the down partner never held its parked records: {:?}\n{}",
            d.metric(&buffered).await,
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The healthy partner's events, in rounds: later rounds are fetched after any pause.
    let publisher = world.publisher().await;
    let orders: Vec<String> = (0..20).map(|i| format!("h-{i}")).collect();
    let refs: Vec<&str> = orders.iter().map(String::as_str).collect();
    let mut sent = Vec::new();
    for round in 0..5 {
        sent.extend(publish(&publisher, &healthy, &refs, round).await);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while healthy_rx.unique() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "the healthy partner got {} of {} events beside the down one's parked records\n{}",
            healthy_rx.unique(),
            sent.len(),
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_per_order(&healthy_rx, &sent);
}
