//! The SSRF guard and signatures.

use super::*;

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
