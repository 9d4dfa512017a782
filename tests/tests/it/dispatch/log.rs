//! The delivery log (#23): every attempt and every end of a message is a record on the
//! log topic, in order per message, as `docs/schemas/attempt.v1.json` describes it.

use super::*;
use serde_json::Value;

/// The log's records for one message (`<subscription>/<webhook-id>`), in topic order,
/// each checked against the versioned schema.
async fn log_of(world: &DispatchWorld, count: usize) -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/schemas/attempt.v1.json"
    );
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("schema")).expect("json");
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("schema");
    let records = e2e::read_exactly(&world.attempts_topic, count, Duration::from_secs(30)).await;
    records
        .iter()
        .map(|m| {
            let value: Value = serde_json::from_slice(rdkafka::Message::payload(m).expect("value"))
                .expect("a log record is JSON");
            let errors: Vec<String> = validator
                .iter_errors(&value)
                .map(|e| format!("{e} at {}", e.instance_path))
                .collect();
            assert!(errors.is_empty(), "{errors:?} in {value}");
            let key = String::from_utf8_lossy(rdkafka::Message::key(m).expect("key")).into_owned();
            assert_eq!(
                key,
                format!(
                    "{}/{}",
                    value["subscription_id"].as_str().unwrap_or(""),
                    value["webhook_id"].as_str().unwrap_or("")
                ),
                "keyed by message"
            );
            value
        })
        .collect()
}

/// A partner answering 500 twice, then 2xx: three records of one message, in order,
/// with their statuses, durations, answers and what came next; a partner answering 400:
/// one attempt and the dead letter. Nothing of the request (signature, payload) is in
/// the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attempt_is_logged_in_order_with_what_the_partner_answered() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let fast = "    request_timeout_ms: 2000\n    retry: { max_attempts: 5, initial_backoff_ms: 100, max_backoff_ms: 500 }\n";
    let (flaky, flaky_rx) = world
        .partner_with_receiver(
            "flaky",
            Script {
                fail_first: 2,
                fail_status: Some(500),
                ..Default::default()
            },
            fast,
        )
        .await;
    let (strict, _strict_rx) = world
        .partner_with_receiver(
            "strict",
            Script {
                always_status: Some(400),
                ..Default::default()
            },
            fast,
        )
        .await;
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let flaky_event = OrderEvent::sample(EventType::OrderCreated, "order-4711", &flaky, 1);
    let strict_event = OrderEvent::sample(EventType::OrderCreated, "order-4712", &strict, 1);
    publisher.publish(&flaky_event).await.expect("publish");
    publisher.publish(&strict_event).await.expect("publish");
    assert!(
        eventually(Duration::from_secs(60), || flaky_rx.unique() == 1).await,
        "delivered on the third attempt\n{}",
        dispatcher.log_tail()
    );
    let records = log_of(&world, 4).await;
    let of = |partner: &str| -> Vec<&Value> {
        records.iter().filter(|r| r["partner"] == partner).collect()
    };
    let flaky_log = of(&flaky);
    let summary: Vec<_> = flaky_log
        .iter()
        .map(|r| {
            (
                r["attempt"].as_u64(),
                r["status_code"].as_u64(),
                r["trigger"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (Some(1), Some(500), Some("scheduled")),
            (Some(2), Some(500), Some("retry")),
            (Some(3), Some(204), Some("retry")),
        ],
        "{flaky_log:#?}"
    );
    let outcomes: Vec<_> = flaky_log.iter().map(|r| r["outcome"].as_str()).collect();
    assert!(
        matches!(
            outcomes[..],
            [
                Some("retry_scheduled" | "parked"),
                Some("retry_scheduled" | "parked"),
                Some("delivered")
            ]
        ),
        "{outcomes:?}"
    );
    let first = flaky_log[0];
    let webhook_id = flaky_event.event_id().to_string();
    assert_eq!(first["webhook_id"], webhook_id.as_str());
    assert_eq!(first["order_id"], "order-4711");
    assert_eq!(first["event_type"], "order.created");
    assert_eq!(first["subscription_id"], format!("{flaky}-s").as_str());
    assert_eq!(first["url"], flaky_rx.url().as_str());
    assert_eq!(first["response_excerpt"], "scripted failure");
    assert!(first["next_attempt_at"].is_string(), "{first}");
    assert!(flaky_log[2]["next_attempt_at"].is_null());
    for r in &flaky_log {
        assert!(r["duration_ms"].as_u64().is_some(), "{r}");
        let text = r.to_string();
        assert!(
            !text.contains("v1,") && !text.contains("order-4711\",\"status"),
            "no signature, no payload: {text}"
        );
    }
    // The same for SREs, from the topic: `dispatcher log message` and `failures`.
    let cli = |extra: &[&str]| {
        let mut args = world.common_args();
        args.extend(["log".to_string()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--attempts-topic".to_string(), world.attempts_topic.clone()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        e2e::run("dispatcher", &refs, "")
    };
    let shown = cli(&["message", &webhook_id]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{shown:?}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].contains("#1 Scheduled 500")
            && lines[2].contains("#3 Retry 204 ")
            && lines[2].ends_with("Delivered"),
        "{text}"
    );
    assert!(lines[0].contains("answer scripted failure"), "{text}");
    let failures = cli(&["failures", "--subscription", &format!("{strict}-s")]);
    let text = String::from_utf8_lossy(&failures.stdout);
    assert!(
        text.contains("400") && text.contains("DeadLettered") && text.contains("1 failures of"),
        "{text}"
    );
    let unknown = cli(&["message", "no-such-message"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no record of message `no-such-message`"),
        "{unknown:?}"
    );
    let strict_log = of(&strict);
    assert_eq!(strict_log.len(), 1, "{strict_log:#?}");
    assert_eq!(
        (
            strict_log[0]["status_code"].as_u64(),
            strict_log[0]["outcome"].as_str()
        ),
        (Some(400), Some("dead_lettered"))
    );
}
