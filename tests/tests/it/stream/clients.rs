//! The stream read by real SSE client libraries (the Python example's httpx-sse, the
//! TypeScript example's eventsource), resumed on another API instance after a kill -9.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{api_tokens, eventually, partner_token, unique, DispatchWorld, Running};
use order_schemas::OrderEvent;
use serde_json::Value;

use super::{create_stream, publish};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// A stream client example running, and the events it printed so far.
struct Client {
    _process: Running,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Client {
    /// The example of `language` reading `partner`'s stream from `apis` (in turn, when
    /// one goes away) with `token`, until it has `count` events.
    fn start(language: &str, apis: &[&str], token: &str, partner: &str, count: usize) -> Self {
        let mut args: Vec<String> = apis
            .iter()
            .flat_map(|a| ["--api".into(), a.to_string()])
            .collect();
        args.extend([
            "--token".into(),
            token.into(),
            "--partner".into(),
            partner.into(),
        ]);
        args.extend(["--count".into(), count.to_string()]);
        let (program, script) = match language {
            "python" => (
                root().join("consumer-examples/python/.venv/bin/python"),
                root().join("consumer-examples/python/stream_client.py"),
            ),
            _ => (
                PathBuf::from("node"),
                root().join("consumer-examples/typescript/dist/stream_client.js"),
            ),
        };
        assert!(
            script.exists(),
            "{language} example not set up: run scripts/setup-examples.sh"
        );
        let mut child = Command::new(program)
            .arg(script)
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the stream client");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    into.lock().expect("lines").push(v);
                }
            }
        });
        Self {
            _process: Running(child),
            lines,
        }
    }

    fn events(&self) -> Vec<Value> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|l| l["event"] != "ready")
            .cloned()
            .collect()
    }

    fn readies(&self) -> usize {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter(|l| l["event"] == "ready")
            .count()
    }
}

/// The event id (webhook-id) of a printed event.
fn event_id(line: &Value) -> String {
    let body: Value =
        serde_json::from_str(line["data"].as_str().unwrap_or("{}")).unwrap_or_default();
    body["data"]["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumed_on_another_instance_after_a_kill_9_misses_nothing_and_repeats_nothing() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("stream");
    let token = partner_token(&partner);
    let tokens = api_tokens(&[&partner]);
    let mut first = world.start_api(&tokens, &[]);
    let second = world.start_api(&tokens, &[]);
    let _dispatcher = world.start();
    let p = world.publisher().await;
    create_stream(&first, &token).await;

    let client = Client::start("python", &[&first.url, &second.url], &token, &partner, 40);
    // And the TypeScript example on the other instance, the whole time.
    let typescript = Client::start("typescript", &[&second.url], &token, &partner, 40);
    assert!(
        eventually(Duration::from_secs(20), || client.readies() == 1
            && typescript.readies() == 1)
        .await,
        "the streams opened"
    );
    let mut sent = publish(&p, &partner, 20, "a").await;
    assert!(
        eventually(Duration::from_secs(30), || client.events().len() >= 5).await,
        "events flow: {}",
        client.events().len()
    );
    // The instance serving the stream dies mid-stream; more events come meanwhile.
    let _ = first.process.0.kill();
    let _ = first.process.0.wait();
    sent.extend(publish(&p, &partner, 20, "b").await);
    assert!(
        eventually(Duration::from_secs(60), || client.events().len()
            >= sent.len())
        .await,
        "resumed on the other instance: {} of {}",
        client.events().len(),
        sent.len()
    );
    assert!(client.readies() >= 2, "it reconnected");
    assert_all_once_in_order("python", &client.events(), &sent);
    assert!(
        eventually(Duration::from_secs(30), || typescript.events().len()
            >= sent.len())
        .await,
        "the TypeScript client: {} of {}",
        typescript.events().len(),
        sent.len()
    );
    assert_all_once_in_order("typescript", &typescript.events(), &sent);
}

/// `lines` (a client's events) are `sent`, each once, each order's in publish order,
/// `event:` naming the body's type.
fn assert_all_once_in_order(client: &str, lines: &[Value], sent: &[OrderEvent]) {
    let got: Vec<String> = lines.iter().map(event_id).collect();
    let unique_ids: BTreeSet<&String> = got.iter().collect();
    assert_eq!(
        unique_ids.len(),
        got.len(),
        "{client}: no event twice: {got:?}"
    );
    let want: BTreeSet<String> = sent.iter().map(|e| e.event_id().to_string()).collect();
    assert_eq!(
        got.iter().cloned().collect::<BTreeSet<_>>(),
        want,
        "{client}: every event"
    );
    // (Each client its own interleaving of partitions; each order's events in order.)
    let mut per_order: HashMap<String, Vec<String>> = HashMap::new();
    for line in lines {
        let body: Value =
            serde_json::from_str(line["data"].as_str().unwrap_or("{}")).expect("body");
        let order = body["data"]["order_id"].as_str().unwrap_or_default();
        per_order
            .entry(order.to_string())
            .or_default()
            .push(event_id(line));
        assert_eq!(line["event"], body["type"], "{client}: event: is the type");
    }
    for (order, ids) in per_order {
        assert_eq!(
            ids,
            e2e::sent_ids_of(sent, &order),
            "{client}: {order} in order"
        );
    }
}
