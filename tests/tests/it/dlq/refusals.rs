//! Bad input is refused and nothing is sent.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_message_and_nothing_is_sent() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("quiet");
    let secret = Secret::generate();
    // A partner with (empty) delivery and dead-letter topics.
    let yaml = format!(
        "subscriptions:\n  - id: {partner}-s\n    partner_id: {partner}\n    url: http://127.0.0.1:9/hook\n    event_types: [order.created]\n    secrets: [\"{secret}\"]\n"
    );
    let applied = world.apply(&yaml);
    assert!(applied.status.success(), "{applied:?}");
    let dlq = Dlq {
        world: world.clone(),
        ledger: unique("ledger"),
        audit: unique("audit"),
    };
    let deliveries = format!("deliveries.{partner}");

    let unknown = unique("nobody");
    let err = dlq.expect(2, &["replay", "--partner", &unknown]).await;
    assert!(
        err.contains(&format!("unknown partner `{unknown}`")) && err.contains(&partner),
        "names the partner and the known ones: {err}"
    );

    let err = dlq.expect(2, &["replay", "--partner", &partner]).await;
    assert!(
        err.contains(&format!("no record of dlq.{partner} matches")),
        "{err}"
    );

    let err = dlq
        .expect(
            2,
            &[
                "replay",
                "--partner",
                &partner,
                "--since",
                "2999-01-01T00:00:00Z",
            ],
        )
        .await;
    assert!(err.contains("--since") && err.contains("future"), "{err}");

    let err = dlq
        .expect(
            2,
            &[
                "list",
                "--partner",
                &partner,
                "--event-type",
                "order.shipped",
            ],
        )
        .await;
    assert!(err.contains("unknown event type `order.shipped`"), "{err}");

    // An unreachable broker: a clear message, exit 1, and no waiting forever.
    let mut args = dlq.args(&["replay", "--partner", &partner]);
    let at = args.iter().position(|a| a == "--brokers").expect("flag") + 1;
    let closed = closed_port();
    args[at] = closed.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(binary("dispatcher"))
            .args(&args)
            .output()
            .expect("run")
    })
    .await
    .expect("join");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("cannot reach the Kafka brokers at {closed}")),
        "{err}"
    );

    assert_eq!(end_offsets_async(&deliveries).await, 0, "nothing was sent");
    let audit = dlq.expect(0, &["audit"]).await;
    assert!(audit.contains("no audit records"), "{audit}");
}
