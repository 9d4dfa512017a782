//! The web console (#24) in a real headless Chromium: this sets up the stack, two
//! partners and their messages, then runs the browser tests in tests/console
//! (Node's test runner, playwright-core, axe-core; scripts/setup-examples.sh installs
//! them and scripts/install-deps.sh Debian's Chromium).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use consumer_examples::receiver::Script;
use e2e::{api_tokens, partner_token, DispatchWorld, ADMIN_TOKEN};
use order_schemas::{EventType, OrderEvent};
use serde_json::Value;

/// What the partner's server answers the first time: markup that would run if the
/// console showed it as HTML.
const HOSTILE: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>";

fn dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/console"))
}

/// Waits until `webhook_id` shows `status` in the API's log for `partner`.
async fn logged(api: &e2e::ApiProcess, partner: &str, webhook_id: &str, status: &str) -> Value {
    let token = partner_token(partner);
    let mut seen = Value::Null;
    for _ in 0..300 {
        let (s, m) = api
            .call(
                reqwest::Method::GET,
                &format!("/v1/messages/{webhook_id}"),
                Some(&token),
                None,
            )
            .await;
        if s == 200 && m["status"] == status {
            return m;
        }
        seen = m;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{webhook_id} never {status}: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_and_operators_use_the_console_in_a_real_browser() {
    let runner = dir().join("node_modules/playwright-core");
    assert!(
        runner.exists(),
        "the browser tests are not set up: run scripts/setup-examples.sh"
    );
    let world = DispatchWorld::new("127.0.0.1").await;
    // A's server refuses the first two events with a 400 and markup (dead-lettered at
    // once), then takes everything.
    let (a, _a_rx) = world
        .partner_with_receiver(
            "console",
            Script {
                fail_first: 2,
                fail_status: Some(400),
                fail_body: Some(HOSTILE.into()),
                ..Default::default()
            },
            "",
        )
        .await;
    let (b, _b_rx) = world
        .partner_with_receiver("console-other", Script::default(), "")
        .await;
    let api = world.start_api(&api_tokens(&[&a, &b]), &[]);
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let failed = OrderEvent::sample(EventType::OrderCreated, "order-console-1", &a, 1);
    publisher.publish(&failed).await.expect("publish");
    let failed2 = OrderEvent::sample(EventType::OrderCreated, "order-console-3", &a, 1);
    publisher.publish(&failed2).await.expect("publish");
    let theirs = OrderEvent::sample(EventType::OrderCreated, "order-console-2", &b, 1);
    publisher.publish(&theirs).await.expect("publish");
    let (failed_id, their_id) = (failed.event_id().to_string(), theirs.event_id().to_string());
    let failed2_id = failed2.event_id().to_string();
    logged(&api, &a, &failed_id, "dead_lettered").await;
    logged(&api, &a, &failed2_id, "dead_lettered").await;
    logged(&api, &b, &their_id, "delivered").await;

    let out = tokio::task::spawn_blocking({
        let url = api.url.clone();
        let (a, b, failed_id, their_id) =
            (a.clone(), b.clone(), failed_id.clone(), their_id.clone());
        let failed2_id = failed2_id.clone();
        move || {
            let mut node = Command::new("node");
            node.current_dir(dir())
                .args(["--test", "--test-reporter=spec", "console.test.mjs"])
                .env("CONSOLE_API", url)
                .env("ADMIN_TOKEN", ADMIN_TOKEN)
                .env("PARTNER", &a)
                .env("SUBSCRIPTION", format!("{a}-s"))
                .env("FAILED_ID", failed_id)
                .env("FAILED2_ID", failed2_id)
                .env("OTHER_SUBSCRIPTION", format!("{b}-s"))
                .env("OTHER_ID", their_id)
                .env("PARTNER_TOKEN", partner_token(&a));
            if let Ok(shots) = std::env::var("CONSOLE_SCREENSHOTS") {
                node.env("SCREENSHOTS", shots);
            }
            node.output().expect("run node")
        }
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser tests failed:\n{text}\n{}\n--- dispatcher ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        dispatcher.log_tail()
    );
    eprintln!("{text}");
    // What the console did is in the audit trail, by the partner's session.
    let audit =
        e2e::read_to_end_on(&world.brokers, &world.audit_topic, Duration::from_secs(10)).await;
    let actions: Vec<(String, String)> = audit
        .iter()
        .filter_map(|m| {
            let v: Value = serde_json::from_slice(rdkafka::Message::payload(m)?).ok()?;
            Some((
                v["actor"].as_str()?.to_string(),
                v["action"].as_str()?.to_string(),
            ))
        })
        .collect();
    for (actor, action) in [
        ("admin".to_string(), "portal-link-issued"),
        ("console".to_string(), "portal-link-opened"),
        (format!("partner:{a}"), "pause"),
        (format!("partner:{a}"), "resume"),
        (format!("partner:{a}"), "rotate-secret"),
        (format!("partner:{a}"), "recover"),
        // The URL change made with the authenticator's code in the form.
        (format!("partner:{a}"), "second-factor-accepted"),
        (format!("partner:{a}"), "second-factor-required"),
        ("admin".to_string(), "portal-sessions-expired"),
    ] {
        assert!(
            actions.iter().any(|(w, x)| *w == actor && x == action),
            "no `{action}` by `{actor}` in the audit trail: {actions:?}"
        );
    }
}
