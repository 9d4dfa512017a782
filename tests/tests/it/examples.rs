//! The Python and TypeScript receiver examples (consumer-examples/python, /typescript)
//! run against our dispatcher: they verify real deliveries with the official
//! standardwebhooks libraries, store each event once, and refuse tampered, foreign,
//! stale or unsigned requests. Set up by scripts/setup-examples.sh (test.sh runs it).

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use dispatcher::webhook::signing::{signature_header, Secret};
use e2e::{eventually, unique, DispatchWorld, Running};
use order_schemas::{EventType, OrderEvent};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The command that runs the example of `language`.
fn example(language: &str) -> (PathBuf, PathBuf) {
    let (program, script) = match language {
        "python" => (
            root().join("consumer-examples/python/.venv/bin/python"),
            root().join("consumer-examples/python/receiver.py"),
        ),
        _ => (
            PathBuf::from("node"),
            root().join("consumer-examples/typescript/dist/receiver.js"),
        ),
    };
    assert!(
        script.exists() && (language != "python" || program.exists()),
        "{language} example not set up: run scripts/setup-examples.sh"
    );
    (program, script)
}

fn accepted(out: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

async fn post(url: &str, id: &str, timestamp: i64, signature: &str, body: &str) -> u16 {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_string())
        .send()
        .await
        .expect("post")
        .status()
        .as_u16()
}

/// The status of the answer to `request` sent as it is over a connection left open
/// (so a server waiting for the peer to close never answers), or `None` within 5 s.
async fn raw_status(base: &str, request: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&answer[..n]);
    text.split(' ').nth(1)?.parse().ok()
}

async fn receives_verified_deliveries_once_and_refuses_the_rest(language: &str) {
    let (program, script) = example(language);
    // Subscribed through the API, as a partner does: its URL must answer the ownership
    // challenge before it gets any event.
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique(language);
    let token = e2e::partner_token(&partner);
    let api = world.start_api(&e2e::api_tokens(&[&partner]), &[]);
    let addr = e2e::closed_port();
    let (status, created) = api
        .create_subscription(
            token.clone(),
            serde_json::json!({"url": format!("http://{addr}/hooks/orders"),
                "event_types": ["order.created", "order.cancelled"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().expect("secret").to_string();
    let id = created["id"].as_str().expect("id").to_string();
    let out = std::env::temp_dir().join(format!("{}.jsonl", unique(language)));
    let mut child = Command::new(program)
        .arg(script)
        .args(["--listen", &addr, "--secret", &secret, "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the example");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("its address");
    let _receiver = Running(child);
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{language} example did not start: {line}"))
        .to_string();
    let url = format!("{base}/hooks/orders");
    api.wait_verification(&token, &id, "verified").await;
    assert!(
        accepted(&out).is_empty(),
        "{language}: the challenge is not an event"
    );
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let mut sent = Vec::new();
    for i in 0..6 {
        let kind = if i < 3 {
            EventType::OrderCreated
        } else {
            EventType::OrderCancelled
        };
        let e = OrderEvent::sample(kind, &format!("order-{}", i % 3), &partner, 1);
        publisher.publish(&e).await.expect("publish");
        sent.push(e);
    }
    assert!(
        eventually(Duration::from_secs(60), || accepted(&out).len()
            == sent.len())
        .await,
        "{language}: {} of {} stored\n{}",
        accepted(&out).len(),
        sent.len(),
        dispatcher.log_tail()
    );
    let got = accepted(&out);
    let ids: BTreeSet<String> = got
        .iter()
        .map(|r| r["webhook_id"].as_str().expect("id").to_string())
        .collect();
    let want: BTreeSet<String> = sent.iter().map(|e| e.event_id().to_string()).collect();
    assert_eq!(
        ids, want,
        "{language}: every delivery verified and stored once"
    );
    let mut per_order: HashMap<&str, Vec<&str>> = HashMap::new();
    for r in &got {
        per_order
            .entry(r["order_id"].as_str().expect("order"))
            .or_default()
            .push(r["type"].as_str().expect("type"));
    }
    assert!(
        per_order
            .values()
            .all(|types| types == &["order.created", "order.cancelled"]),
        "{language}: per-order order {per_order:?}"
    );

    // Requests not from us, or not as we sent them, are refused and not stored.
    let keys = [Secret::parse(&secret).expect("secret")];
    let body = serde_json::to_string(&got[0]["body"]).expect("body");
    let now = chrono::Utc::now().timestamp();
    let id = uuid::Uuid::new_v4().to_string();
    let good = signature_header(&keys, &id, now, body.as_bytes());
    let tampered = body.replacen("\"amount_minor\":", "\"amount_minor\":9", 1);
    assert_ne!(tampered, body);
    assert_eq!(
        post(&url, &id, now, &good, &tampered).await,
        401,
        "{language}: tampered body"
    );
    let other = [Secret::parse(&Secret::generate()).expect("secret")];
    let foreign = signature_header(&other, &id, now, body.as_bytes());
    assert_eq!(
        post(&url, &id, now, &foreign, &body).await,
        401,
        "{language}: other secret"
    );
    let stale = now - 3600;
    let old = signature_header(&keys, &id, stale, body.as_bytes());
    assert_eq!(
        post(&url, &id, stale, &old, &body).await,
        401,
        "{language}: stale timestamp"
    );
    assert_eq!(
        post(&url, &id, now, "", &body).await,
        401,
        "{language}: unsigned"
    );
    // A negative Content-Length is refused at once, not read until the peer closes.
    assert_eq!(
        raw_status(
            &base,
            "POST /hooks/orders HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n{}"
        )
        .await,
        Some(400),
        "{language}: negative content-length"
    );
    // A redelivery of an event it has: acknowledged, not stored twice.
    let known = got[0]["webhook_id"].as_str().expect("id");
    let again = signature_header(&keys, known, now, body.as_bytes());
    let status = post(&url, known, now, &again, &body).await;
    assert!(
        (200..300).contains(&status),
        "{language}: duplicate acknowledged, {status}"
    );
    assert_eq!(
        accepted(&out).len(),
        sent.len(),
        "{language}: nothing else stored"
    );
    assert_eq!(dispatcher.terminate(), Some(0));
    let _ = std::fs::remove_file(&out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_example_verifies_real_deliveries_and_refuses_tampered_ones() {
    receives_verified_deliveries_once_and_refuses_the_rest("python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_example_verifies_real_deliveries_and_refuses_tampered_ones() {
    receives_verified_deliveries_once_and_refuses_the_rest("typescript").await;
}
