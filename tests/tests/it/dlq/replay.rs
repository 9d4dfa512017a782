//! Replay and resolve: exactly the filtered records, once, resumable, audited.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_sends_exactly_the_filtered_records_once_resumes_and_is_audited() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("dlqp");
    let secret = Secret::generate();
    // The partner refuses everything at first: every event is dead-lettered at once.
    let receiver = Receiver::start(
        "127.0.0.1:0".parse().expect("addr"),
        &secret,
        Script {
            always_status: Some(400),
            ..Default::default()
        },
    )
    .await
    .expect("receiver");
    let yaml = format!(
        "subscriptions:\n  - id: {partner}-s\n    partner_id: {partner}\n    url: {}\n    event_types: [order.created, order.status_changed, order.cancelled]\n    secrets: [\"{secret}\"]\n",
        receiver.url()
    );
    let applied = world.apply(&yaml);
    assert!(applied.status.success(), "{applied:?}");
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let mut events = Vec::new();
    for (i, kind) in [
        EventType::OrderCreated,
        EventType::OrderCreated,
        EventType::OrderCreated,
        EventType::OrderCreated,
        EventType::OrderCancelled,
        EventType::OrderCancelled,
        EventType::OrderCancelled,
        EventType::OrderStatusChanged,
        EventType::OrderStatusChanged,
    ]
    .into_iter()
    .enumerate()
    {
        let event = OrderEvent::sample(kind, &format!("order-{i}"), &partner, 1);
        publisher.publish(&event).await.expect("publish");
        events.push(event);
    }
    let dlq_topic = format!("dlq.{partner}");
    let deliveries = format!("deliveries.{partner}");
    let all_dead = eventually(Duration::from_secs(60), || end_offsets(&dlq_topic) == 9).await;
    assert!(
        all_dead,
        "9 dead letters expected\n{}",
        dispatcher.log_tail()
    );
    // The partner fixed their endpoint.
    receiver.set_script(Script::default());
    let of = |t: EventType| -> Vec<&OrderEvent> {
        events.iter().filter(|e| e.event_type() == t).collect()
    };
    let dlq = Dlq {
        world: world.clone(),
        ledger: unique("ledger"),
        audit: unique("audit"),
    };

    let summary = dlq.expect(0, &["summary", "--partner", &partner]).await;
    assert!(summary.contains("9 records, 9 pending"), "{summary}");
    assert!(
        summary.contains("order.created: 4") && summary.contains("order.cancelled: 3"),
        "{summary}"
    );
    assert!(summary.contains("400: 9"), "{summary}");

    // Dry run: prints, sends nothing, audits nothing.
    let sent_before = end_offsets_async(&deliveries).await;
    let dry = dlq
        .expect(
            0,
            &[
                "replay",
                "--partner",
                &partner,
                "--event-type",
                "order.created",
                "--dry-run",
            ],
        )
        .await;
    assert!(dry.contains("would replay 4 records"), "{dry}");
    assert_eq!(end_offsets_async(&deliveries).await, sent_before);
    let audit = dlq.expect(0, &["audit", "--partner", &partner]).await;
    assert!(audit.contains("no audit records"), "{audit}");

    // Replay the created ones: exactly those four reach the partner, with their ids.
    let replay_created = [
        "replay",
        "--partner",
        &partner,
        "--event-type",
        "order.created",
        "--operator",
        "sre-test",
    ];
    let out = dlq.expect(0, &replay_created).await;
    assert!(out.contains("replayed 4 records"), "{out}");
    let created = ids(&of(EventType::OrderCreated));
    let got = eventually(Duration::from_secs(30), || receiver.unique() == 4).await;
    assert!(got, "{} of 4 replayed delivered", receiver.unique());
    let received: BTreeSet<String> = receiver
        .deliveries()
        .iter()
        .map(|d| d.webhook_id.clone())
        .collect();
    assert_eq!(
        received, created,
        "exactly the filtered records, original ids"
    );

    // The same replay again sends nothing new.
    let after_first = end_offsets_async(&deliveries).await;
    assert_eq!(after_first, sent_before + 4);
    let again = dlq.expect(0, &replay_created).await;
    assert!(again.contains("nothing to replay"), "{again}");
    assert_eq!(end_offsets_async(&deliveries).await, after_first);

    // An interrupted replay (1 record/s, Ctrl-C after the first) resumes on a rerun.
    let slow = Command::new(binary("dispatcher"))
        .args(dlq.args(&[
            "replay",
            "--partner",
            &partner,
            "--event-type",
            "order.cancelled",
            "--rate",
            "1",
        ]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replay");
    let started = eventually(Duration::from_secs(30), || {
        end_offsets(&deliveries) > after_first
    })
    .await;
    assert!(started, "the slow replay sent nothing");
    let _ = Command::new("kill")
        .args(["-INT", &slow.id().to_string()])
        .status();
    let slow = tokio::task::spawn_blocking(move || slow.wait_with_output().expect("wait"))
        .await
        .expect("join");
    let text = String::from_utf8_lossy(&slow.stdout);
    assert_eq!(slow.status.code(), Some(130), "{text} {slow:?}");
    assert!(text.contains("interrupted"), "{text}");
    let partial = end_offsets_async(&deliveries).await - after_first;
    assert!(
        (1..3).contains(&partial),
        "{partial} of 3 sent before Ctrl-C"
    );
    let resumed = dlq
        .expect(
            0,
            &[
                "replay",
                "--partner",
                &partner,
                "--event-type",
                "order.cancelled",
            ],
        )
        .await;
    assert!(
        resumed.contains(&format!("replayed {} records", 3 - partial)),
        "{resumed}"
    );
    assert_eq!(end_offsets_async(&deliveries).await, after_first + 3);
    let got = eventually(Duration::from_secs(30), || receiver.unique() == 7).await;
    assert!(got, "{} of 7 delivered", receiver.unique());
    assert!(
        receiver.deliveries().iter().all(|d| !d.duplicate),
        "no record replayed twice"
    );

    // Resolve one status change; a replay of the rest sends only the other.
    let status_changed = of(EventType::OrderStatusChanged);
    let resolved_key = status_changed[0].order_id().to_string();
    let out = dlq
        .expect(
            0,
            &[
                "resolve",
                "--partner",
                &partner,
                "--key",
                &resolved_key,
                "--operator",
                "sre-test",
            ],
        )
        .await;
    assert!(out.contains("resolved 1 records"), "{out}");
    let out = dlq.expect(0, &["replay", "--partner", &partner]).await;
    assert!(
        out.contains("replayed 1 records") && out.contains("8 already handled"),
        "{out}"
    );
    let got = eventually(Duration::from_secs(30), || receiver.unique() == 8).await;
    assert!(got, "{} of 8 delivered", receiver.unique());
    let received: BTreeSet<String> = receiver
        .deliveries()
        .iter()
        .map(|d| d.webhook_id.clone())
        .collect();
    assert!(received.contains(&status_changed[1].event_id().to_string()));
    assert!(
        !received.contains(&status_changed[0].event_id().to_string()),
        "a resolved record is never sent"
    );

    // The audit trail: every replay and resolve, who, how many, how it ended.
    let audit = dlq.expect(0, &["audit", "--partner", &partner]).await;
    let lines: Vec<&str> = audit.lines().collect();
    assert_eq!(lines.len(), 5, "{audit}");
    assert!(
        lines[0].contains("replay") && lines[0].contains("by sre-test"),
        "{audit}"
    );
    assert!(
        lines[0].contains("count=4") && lines[0].contains("status=completed"),
        "{audit}"
    );
    assert!(lines[1].contains("status=interrupted"), "{audit}");
    assert!(
        lines[3].contains(" resolve ") && lines[3].contains("count=1"),
        "{audit}"
    );

    // list and show tell the state of each record.
    let list = dlq.expect(0, &["list", "--partner", &partner]).await;
    assert_eq!(list.matches("replayed").count(), 8, "{list}");
    assert_eq!(list.matches("resolved").count(), 1, "{list}");
    let first = list
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a record line");
    let (partition, offset) = first.split_once('/').expect("partition/offset");
    let show = dlq
        .expect(
            0,
            &[
                "show",
                "--partner",
                &partner,
                "--partition",
                partition,
                "--offset",
                offset,
            ],
        )
        .await;
    assert!(
        show.contains("webhook-id: ") && show.contains("dlq-reason: status 400"),
        "{show}"
    );
    assert!(show.contains("\"type\": \"order."), "{show}");
    assert!(show.contains("state: re"), "{show}");
    assert_eq!(dispatcher.terminate(), Some(0));
}

/// A replay that fails part way (here: the third record is larger than the producer
/// accepts) records what it sent before stopping: ledger entries and a `failed` audit
/// record, so the rerun sends only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_fails_part_way_records_what_it_sent() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("partial");
    let secret = Secret::generate();
    let yaml = format!(
        "subscriptions:\n  - id: {partner}-s\n    partner_id: {partner}\n    url: http://127.0.0.1:9/hook\n    event_types: [order.created]\n    secrets: [\"{secret}\"]\n"
    );
    assert!(world.apply(&yaml).status.success());
    let subscription = format!("{partner}-s");
    for (i, size) in [100usize, 100, 20_000].iter().enumerate() {
        let id = format!("evt-{i}");
        e2e::produce_with_headers(
            &brokers(),
            &format!("dlq.{partner}"),
            Some(0),
            "o-1",
            "x".repeat(*size).as_bytes(),
            &[
                ("webhook-id", &id),
                ("subscription-id", &subscription),
                ("dlq-partner", &partner),
                ("dlq-reason", "status 400 is not retried"),
            ],
        )
        .await;
    }
    let dlq = Dlq {
        world: world.clone(),
        ledger: unique("ledger"),
        audit: unique("audit"),
    };
    let deliveries = format!("deliveries.{partner}");
    let before = end_offsets_async(&deliveries).await;
    let mut small = dlq.args(&["replay", "--partner", &partner]);
    small.extend(["--kafka-option".into(), "message.max.bytes=10000".into()]);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(binary("dispatcher"))
            .args(&small)
            .stdin(Stdio::null())
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("replayed 2 of 3 records") && stderr.contains("0/2"),
        "names how far it got and the record that failed: {stderr}"
    );
    assert_eq!(end_offsets_async(&deliveries).await, before + 2);
    let listed = dlq.expect(0, &["list", "--partner", &partner]).await;
    assert_eq!(listed.matches(" replayed ").count(), 2, "{listed}");
    assert_eq!(listed.matches(" pending ").count(), 1, "{listed}");
    let audit = dlq.expect(0, &["audit", "--partner", &partner]).await;
    assert!(
        audit.contains("status=failed") && audit.contains("count=2"),
        "{audit}"
    );
    // The rerun sends only the one that was not sent.
    let out = dlq.expect(0, &["replay", "--partner", &partner]).await;
    assert!(out.contains("replayed 1 records"), "{out}");
    assert_eq!(end_offsets_async(&deliveries).await, before + 3);
}
