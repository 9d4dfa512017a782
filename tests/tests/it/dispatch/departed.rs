//! #22 item 11: a partner that lost its last subscription is forgotten by the running
//! dispatcher once `--departed-lane-ms` has passed (its lane stops, it leaves `/status`
//! and the lanes' group), without disturbing the others; its next subscription starts
//! it again and its new events are delivered.

use super::*;

/// The partners `/status` lists.
async fn listed(d: &e2e::DispatcherProcess) -> Vec<String> {
    let url = d.metrics_url.replace("/metrics", "/status");
    let Ok(status) = reqwest::get(&url).await else {
        return Vec::new();
    };
    let status: serde_json::Value = status.json().await.unwrap_or_default();
    status["partners"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// The partners `/status` lists once `done` holds of them, or after 30 s.
async fn listed_until(d: &e2e::DispatcherProcess, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let names = listed(d).await;
        if done(&names) || std::time::Instant::now() >= deadline {
            return names;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `subscriptions apply` (with `--prune` when `prune`) of `yaml`.
fn apply(world: &DispatchWorld, yaml: &str, prune: bool) {
    let file = std::env::temp_dir().join(format!("{}.yaml", unique("departed")));
    std::fs::write(&file, yaml).expect("write");
    let mut args = world.common_args();
    args.extend(["subscriptions".into(), "apply".into()]);
    if prune {
        args.push("--prune".into());
    }
    args.push(file.display().to_string());
    let out = e2e::run(
        "dispatcher",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "",
    );
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_without_subscriptions_is_forgotten_and_comes_back_with_its_next_one() {
    let mut world = DispatchWorld::new("127.0.0.1").await;
    world.run_args = vec!["--departed-lane-ms".into(), "2000".into()];
    let (stay, leave) = (unique("stay"), unique("leave"));
    let (stay_secret, leave_secret) = (
        Secret::generate().to_string(),
        Secret::generate().to_string(),
    );
    let stay_rx = receiver(&stay_secret, Script::default()).await;
    let leave_rx = receiver(&leave_secret, Script::default()).await;
    let types = ["order.created", "order.status_changed"];
    let stay_sub = subscription(
        &format!("{stay}-s"),
        &stay,
        &stay_rx.url(),
        &stay_secret,
        &types,
        "",
    );
    let leave_sub = subscription(
        &format!("{leave}-s"),
        &leave,
        &leave_rx.url(),
        &leave_secret,
        &types,
        "",
    );
    let both = format!("subscriptions:\n{stay_sub}{leave_sub}");
    apply(&world, &both, false);
    let d = world.start();
    let publisher = world.publisher().await;
    let send =
        |partner: &str, order: &str| OrderEvent::sample(EventType::OrderCreated, order, partner, 1);
    for e in [send(&stay, "s-1"), send(&leave, "l-1")] {
        publisher.publish(&e).await.expect("publish");
    }
    assert!(
        eventually(Duration::from_secs(60), || stay_rx.unique() == 1
            && leave_rx.unique() == 1)
        .await,
        "first events: stay {}, leave {}\n{}",
        stay_rx.unique(),
        leave_rx.unique(),
        d.log_tail()
    );
    // (`/status` is refreshed by the health monitor, every few seconds.)
    let names = listed_until(&d, |n| n.contains(&leave) && n.contains(&stay)).await;
    assert!(names.contains(&leave) && names.contains(&stay), "{names:?}");

    // `leave` loses its only subscription: after the grace its lane stops and the
    // instance forgets it; `stay` goes on meanwhile.
    apply(&world, &format!("subscriptions:\n{stay_sub}"), true);
    let names = listed_until(&d, |n| !n.contains(&leave)).await;
    assert!(
        !names.contains(&leave),
        "a partner without subscriptions is still held 30 s later: {names:?}\n{}",
        d.log_tail()
    );
    assert!(names.contains(&stay), "{names:?}");
    publisher
        .publish(&send(&stay, "s-2"))
        .await
        .expect("publish");
    assert!(
        eventually(Duration::from_secs(30), || stay_rx.unique() == 2).await,
        "the other partner goes on: {}\n{}",
        stay_rx.unique(),
        d.log_tail()
    );

    // Its next subscription brings it back, and its new events arrive.
    apply(&world, &both, false);
    publisher
        .publish(&send(&leave, "l-2"))
        .await
        .expect("publish");
    assert!(
        eventually(Duration::from_secs(60), || leave_rx.unique() == 2).await,
        "the partner that came back got {} events\n{}",
        leave_rx.unique(),
        d.log_tail()
    );
    assert_eq!(stay_rx.unique(), 2, "nothing lost for the other");
    // The lane stopped as at shutdown: what it finished was committed, so nothing is
    // sent twice when the partner comes back.
    assert_eq!(
        (leave_rx.requests(), stay_rx.requests()),
        (2, 2),
        "nothing sent twice"
    );
}
