//! Large parked backlogs (#22 items 1 and 2): the read-back's reader answers each
//! partition as it is read, and records waiting by policy do not pause a healthy
//! partner at the instance's global cap.

use super::*;

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
    let subscription = format!("{down}-s");
    e2e::write_parked(
        &world.brokers,
        &down,
        &subscription,
        partitions,
        400,
        40,
        2,
        chrono::Duration::hours(1),
    )
    .await;
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
