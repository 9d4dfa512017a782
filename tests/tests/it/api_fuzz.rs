//! The property-based fuzzer schemathesis against a real `dispatcher api` with
//! docs/openapi.yaml: no 5xx but the documented 503, and no answer (status, content
//! type, body) the document does not describe, for a partner's and an admin's token.
//! Its stateful phase follows the document's links from a created subscription to the
//! operations that need one, and from the partner's subscription, which has one
//! delivered message, through its messages to one message and its resend. Set up by
//! scripts/setup-examples.sh (test.sh runs it).

use std::path::PathBuf;
use std::process::Command;

use e2e::{partner_token, DispatchWorld, ADMIN_TOKEN};
use order_schemas::{EventType, OrderEvent};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn fuzz(url: &str, token: &str, examples: &str) {
    let dir = root().join("tests/schemathesis");
    let program = dir.join(".venv/bin/schemathesis");
    assert!(
        program.exists(),
        "schemathesis not set up: run scripts/setup-examples.sh"
    );
    let seed = std::env::var("E2E_FUZZ_SEED").unwrap_or_else(|_| "20261202".into());
    let out = Command::new(program)
        .current_dir(&dir)
        .env("SCHEMATHESIS_HOOKS", "hooks")
        .env("PYTHONPATH", &dir)
        .args(["run", "../../docs/openapi.yaml", "--url", url])
        // A stream's 200 never ends (it is an SSE stream): schemathesis cannot read one.
        // Its answers are tested by it/stream.rs, with real SSE clients.
        .args(["--exclude-operation-id", "streamEvents"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args([
            "--checks",
            "all",
            "--max-examples",
            examples,
            "--seed",
            &seed,
        ])
        .args(["--no-color"])
        .output()
        .expect("run schemathesis");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems (E2E_FUZZ_SEED={seed} reproduces):\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("Stateful"), "{text}");
}

#[test]
fn schemathesis_finds_no_5xx_and_no_answer_the_document_does_not_describe() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let world = rt.block_on(DispatchWorld::new("127.0.0.1"));
    let (partner, _receiver) = rt.block_on(world.partner_with_receiver(
        "fuzz",
        consumer_examples::receiver::Script::default(),
        "",
    ));
    // Schemathesis counts a 429 as a valid request refused: the partner's write limit
    // (tested on its own in `api::tenancy`) is set out of its reach here.
    let api = world.start_api(
        &e2e::api_tokens(&[&partner]),
        &[
            "--partner-writes-per-sec",
            "10000",
            "--partner-write-burst",
            "100000",
        ],
    );
    // One delivered message in the delivery log, for the links that need one.
    let dispatcher = world.start();
    rt.block_on(async {
        let event = OrderEvent::sample(EventType::OrderCreated, "order-fuzz", &partner, 1);
        world
            .publisher()
            .await
            .publish(&event)
            .await
            .expect("publish");
        let path = format!("/v1/messages/{}", event.event_id());
        let token = partner_token(&partner);
        let mut seen = (0, serde_json::Value::Null);
        for _ in 0..600 {
            seen = api
                .call(reqwest::Method::GET, &path, Some(&token), None)
                .await;
            if seen.0 == 200 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(
            seen.0,
            200,
            "the message is in the log: {}\n{}",
            seen.1,
            dispatcher.log_tail()
        );
    });
    fuzz(&api.url, &partner_token(&partner), "25");
    fuzz(&api.url, ADMIN_TOKEN, "10");
}
