//! The router's dead letters are replayed to the orders topic.

use super::*;

/// Records the router dead-lettered (here: its registry did not know their schema)
/// have a way back: `dlq replay --router` writes them to the orders topic with the same
/// safety as a partner's (dry run, ledger, audit), and the router delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routers_dead_letters_are_replayed_to_the_orders_topic() {
    let mut world = DispatchWorld::new("127.0.0.1").await;
    let (partner, receiver) = world
        .partner_with_receiver("routerdlq", Script::default(), "")
        .await;
    // A registry that does not know the ids, long past the router's wait.
    let follower = e2e::FlakyRegistry::start(404).await;
    world.registry = follower.url.clone();
    world.run_args = vec!["--unknown-schema-wait-ms".into(), "300".into()];
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let events: Vec<OrderEvent> = (0..3)
        .map(|i| OrderEvent::sample(EventType::OrderCreated, &format!("o-{i}"), &partner, 1))
        .collect();
    for e in &events {
        publisher.publish(e).await.expect("publish");
    }
    let dead = e2e::dead_letters(&world.orders_dead_letter_topic, 3).await;
    assert!(
        dead.iter()
            .all(|(h, _)| h["dlq-reason"].contains("not known to the schema registry")),
        "{dead:?}"
    );
    assert_eq!(receiver.unique(), 0);
    // The registry knows them now.
    follower.answer(0);
    let dlq = Dlq {
        world: world.clone(),
        ledger: unique("ledger"),
        audit: unique("audit"),
    };
    let router_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "replay",
            "--router",
            "--orders-topic",
            &world.orders_topic,
            "--orders-dead-letter-topic",
            &world.orders_dead_letter_topic,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let before = end_offsets_async(&world.orders_topic).await;
    let dry = router_args(&["--dry-run"]);
    let dry = dlq
        .expect(0, &dry.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(dry.contains("would replay 3 records"), "{dry}");
    assert_eq!(end_offsets_async(&world.orders_topic).await, before);
    let replay = router_args(&[]);
    let out = dlq
        .expect(0, &replay.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(out.contains("replayed 3 records"), "{out}");
    assert!(
        eventually(Duration::from_secs(60), || receiver.unique() == 3).await,
        "{} of 3 delivered after the replay\n{}",
        receiver.unique(),
        dispatcher.log_tail()
    );
    let got: BTreeSet<String> = receiver
        .deliveries()
        .iter()
        .map(|d| d.webhook_id.clone())
        .collect();
    assert_eq!(got, ids(&events.iter().collect::<Vec<_>>()));
    // A rerun sends nothing; the audit names the router's topic.
    let again = dlq
        .expect(0, &replay.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(again.contains("nothing to replay"), "{again}");
    assert_eq!(end_offsets_async(&world.orders_topic).await, before + 3);
    let audit = dlq.expect(0, &["audit"]).await;
    assert!(
        audit.contains(&format!(
            "{} -> {}",
            world.orders_dead_letter_topic, world.orders_topic
        )) && audit.contains("status=completed"),
        "{audit}"
    );
    assert_eq!(dispatcher.terminate(), Some(0));
}
