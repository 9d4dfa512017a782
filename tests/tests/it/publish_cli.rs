//! The `producer` binary: JSON lines in, bad lines named, good lines published; the load
//! generator; clear failures for an unreachable broker or registry.

use std::time::Duration;

use e2e::{brokers, closed_port, fresh_topic, read_exactly, registry_url, run};
use order_schemas::{EventType, OrderCodec, OrderEvent};
use rdkafka::Message;

fn base_args(topic: &str) -> Vec<String> {
    vec![
        "--brokers".into(),
        brokers(),
        "--topic".into(),
        topic.into(),
        "--registry".into(),
        registry_url(),
    ]
}

fn args_with<'a>(base: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
    base.iter()
        .map(String::as_str)
        .chain(extra.iter().copied())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_good_lines_and_names_each_bad_one() {
    let topic = fresh_topic("cli", 2).await;
    let good: Vec<OrderEvent> = (0..5)
        .map(|i| OrderEvent::sample(EventType::OrderCreated, &format!("o-{i}"), "partner-a", 2))
        .collect();
    let mut lines: Vec<String> = good.iter().map(|e| e.to_json().to_string()).collect();
    lines.insert(1, "{\"type\": \"order.created\", ".into());
    let mut wrong_type = good[0].to_json();
    wrong_type["order"]["items"][0]["quantity"] = "many".into();
    wrong_type["event_id"] = uuid::Uuid::new_v4().to_string().into();
    lines.insert(3, wrong_type.to_string());
    let mut unknown = good[0].to_json();
    unknown["type"] = "order.teleported".into();
    lines.push(unknown.to_string());
    lines.push(String::new());

    let base = base_args(&topic);
    let out = run(
        "producer",
        &args_with(&base, &["publish"]),
        &lines.join("\n"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(2),
        "exit 2 when lines were refused\n{stderr}"
    );
    assert!(
        stdout.contains("published 5, refused 3, failed 0"),
        "{stdout}"
    );
    assert!(stderr.contains("line 2: malformed JSON"), "{stderr}");
    assert!(
        stderr.contains("line 4: order.items[0].quantity: invalid type"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 8: type: unknown event type `order.teleported`"),
        "{stderr}"
    );

    let records = read_exactly(&topic, 5, Duration::from_secs(30)).await;
    let codec = OrderCodec::new(&registry_url(), &topic, Duration::from_secs(5)).expect("codec");
    let mut ids = Vec::new();
    for r in &records {
        ids.push(
            codec
                .decode(r.payload().expect("payload"))
                .await
                .expect("decode")
                .event_id(),
        );
    }
    ids.sort();
    let mut expected: Vec<_> = good.iter().map(|e| e.event_id()).collect();
    expected.sort();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_generator_publishes_the_count_and_prints_a_summary() {
    let topic = fresh_topic("cli-load", 3).await;
    let base = base_args(&topic);
    let out = run(
        "producer",
        &args_with(
            &base,
            &[
                "load", "--count", "400", "--orders", "40", "--rate", "2000", "--quiet",
            ],
        ),
        "",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("published 400 events, failed 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("events/s") && stdout.contains("p99"),
        "{stdout}"
    );
    let records = read_exactly(&topic, 400, Duration::from_secs(60)).await;
    let keys: std::collections::HashSet<_> = records
        .iter()
        .map(|r| r.key().map(<[u8]>::to_vec))
        .collect();
    assert_eq!(keys.len(), 40);
}

#[test]
fn unreachable_broker_and_registry_fail_with_a_message_naming_them() {
    let dead = closed_port();
    let out = run(
        "producer",
        &[
            "--brokers",
            &dead,
            "--topic",
            "orders",
            "--delivery-timeout-ms",
            "2000",
            "publish",
        ],
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach Kafka at {dead}")),
        "{stderr}"
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let topic = rt.block_on(fresh_topic("cli-noreg", 1));
    let registry = format!("http://{}", closed_port());
    let out = run(
        "producer",
        &[
            "--brokers",
            &brokers(),
            "--topic",
            &topic,
            "--registry",
            &registry,
            "publish",
        ],
        "",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("schema registry unavailable"), "{stderr}");

    let out = run("producer", &["--kafka-option", "nonsense", "publish"], "");
    assert_eq!(out.status.code(), Some(2), "clap usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("`nonsense` is not key=value"));
}
