//! The live stream (#26): a partner without an inbound port reads its events as
//! Server-Sent Events, with real SSE client libraries (the Python example's httpx-sse,
//! the TypeScript example's eventsource). Resumed with Last-Event-ID on another API
//! instance after a kill -9, nothing is missing and nothing comes twice; the connection
//! cap, heartbeats, a connection's own filter and a client too slow to read.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{api_tokens, eventually, partner_token, unique, ApiProcess, DispatchWorld, Running};
use order_schemas::{EventType, OrderEvent};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

async fn create_stream(api: &ApiProcess, token: &str) -> String {
    let (status, created) = api
        .create_subscription(
            token.to_string(),
            json!({"kind": "stream", "event_types": ["order.created", "order.cancelled"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["kind"], "stream");
    assert!(
        created.get("secret").is_none(),
        "a stream has no secret: {created}"
    );
    created["id"].as_str().expect("id").to_string()
}

async fn publish(p: &producer::Publisher, partner: &str, n: usize, tag: &str) -> Vec<OrderEvent> {
    let mut sent = Vec::new();
    for i in 0..n {
        let e = e2e::order_event(
            EventType::OrderCreated,
            partner,
            &format!("{tag}-{}", i % 5),
            1000 + i as i64,
        );
        p.publish(&e).await.expect("publish");
        sent.push(e);
    }
    sent
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

/// Retention passing a cursor (DeleteRecords, as Kafka's retention does): reconnecting
/// with it is 410 with where to go on, and going on from there gives every event still
/// kept after the cursor, none twice; a cursor past the cut resumes as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_retention_passed_is_410_with_where_to_go_on() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("stream-gone");
    let token = partner_token(&partner);
    let api = world.start_api(&api_tokens(&[&partner]), &[]);
    let _dispatcher = world.start();
    create_stream(&api, &token).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/partners/{partner}/stream", api.url);
    let open = |cursor: Option<String>| {
        let mut r = client.get(&url).bearer_auth(&token);
        if let Some(c) = cursor {
            r = r.header("last-event-id", c);
        }
        r.send()
    };
    let mut live = e2e::poll(Duration::from_secs(20), || async {
        let r = open(None).await.expect("call");
        (r.status() == 200).then_some(r)
    })
    .await
    .expect("the stream opened once its topic was made");
    let mut text = read_ready(&mut live).await;
    let p = world.publisher().await;
    let sent = publish(&p, &partner, 10, "gone").await;
    assert!(
        read_until(&mut live, &mut text, Duration::from_secs(30), |t| {
            ids_of(t, "order.created").len() == sent.len()
        })
        .await,
        "{text}"
    );
    drop(live);
    let got = ids_of(&text, "order.created");
    let ready = ids_of(&text, "ready");
    let decode = |id: &str| dispatcher::api::Cursor::decode(id).expect("a cursor");
    // Each event's partition: the one its cursor moved on.
    let mut at = decode(&ready[0].0);
    let mut part = Vec::new();
    for (id, _) in &got {
        let next = decode(id);
        let moved = next.0.iter().find(|(p, o)| at.0.get(p) != Some(o));
        part.push(*moved.expect("each event moves its partition's cursor").0);
        at = next;
    }
    // The partner read the first event (partition R), then was away; retention removed
    // every event of another partition P (the keys are fixed: they use at least two).
    let r = part[0];
    let p_gone = *part
        .iter()
        .find(|&&p| p != r)
        .expect("events in two partitions");
    let first = decode(&got[0].0);
    let last = decode(&got[got.len() - 1].0);
    let cut = last.0[&p_gone];
    let lows = e2e::delete_records_on(
        &e2e::brokers(),
        &dispatcher::subscriptions::stream_topic(&partner),
        &[(p_gone, cut)],
    )
    .await;
    assert_eq!(
        lows,
        [(p_gone, cut)],
        "the broker's low watermark after the deletion"
    );

    // The first event's cursor: events after it are gone. 410, with where to go on:
    // partition P from its oldest kept, the others where the cursor was.
    let resp = open(Some(got[0].0.clone())).await.expect("call");
    assert_eq!(resp.status(), 410);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "gone", "{body}");
    let on = body["oldest_cursor"].as_str().expect("oldest_cursor");
    let mut want = first.0.clone();
    want.insert(p_gone, cut);
    assert_eq!(decode(on).0, want, "{body}");
    // A marker per partition the events used (an order of that partition), written
    // now: a reader that has every marker has read each partition to its end, so a
    // repeat or a missing event shows without waiting on a clock.
    let event_id = |data: &Value| data["data"]["event_id"].as_str().unwrap_or("").to_string();
    let mut order_of_partition = std::collections::BTreeMap::new();
    for ((_, data), &partition) in got.iter().zip(&part) {
        let id = event_id(data);
        let order = sent
            .iter()
            .find(|e| e.event_id().to_string() == id)
            .expect("an event we sent")
            .order_id()
            .to_string();
        order_of_partition.entry(partition).or_insert(order);
    }
    let mut markers = BTreeSet::new();
    for order in order_of_partition.values() {
        let marker = e2e::order_event(EventType::OrderCreated, &partner, order, 1);
        p.publish(&marker).await.expect("publish");
        markers.insert(marker.event_id().to_string());
    }
    let read_to_markers = |cursor: String| {
        let (open, markers) = (&open, &markers);
        async move {
            let mut r = open(Some(cursor.clone())).await.expect("call");
            assert_eq!(r.status(), 200, "from {cursor}");
            let mut text = String::new();
            let ids = |t: &str| -> BTreeSet<String> {
                ids_of(t, "order.created")
                    .iter()
                    .map(|(_, d)| event_id(d))
                    .collect()
            };
            assert!(
                read_until(&mut r, &mut text, Duration::from_secs(30), |t| ids(t)
                    .is_superset(markers))
                .await,
                "every marker, from {cursor}: {text}"
            );
            let read: Vec<String> = ids_of(&text, "order.created")
                .iter()
                .map(|(_, d)| event_id(d))
                .filter(|id| !markers.contains(id))
                .collect();
            read
        }
    };
    // Going on from there: every later event still kept (none of P), each once, not
    // the first again.
    let mut kept: Vec<String> = got
        .iter()
        .zip(&part)
        .skip(1)
        .filter(|(_, &p)| p != p_gone)
        .map(|((_, data), _)| event_id(data))
        .collect();
    let mut again = read_to_markers(on.to_string()).await;
    again.sort();
    kept.sort();
    assert_eq!(again, kept);
    // A cursor past the cut resumes as before: nothing but what came since, no 410.
    let past = read_to_markers(got[got.len() - 1].0.clone()).await;
    assert!(past.is_empty(), "{past:?}");
}

/// The `id:` and `data:` of each SSE event of `event` type in `text`.
fn ids_of(text: &str, event: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|block| block.lines().any(|l| l == format!("event: {event}")))
        .filter_map(|block| {
            let id = block.lines().find_map(|l| l.strip_prefix("id: "))?;
            let data = block.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((id.to_string(), serde_json::from_str(data).ok()?))
        })
        .collect()
}

/// Reads a stream's first event (`ready`, within 5 s): what arrived so far.
async fn read_ready(response: &mut reqwest::Response) -> String {
    let mut text = String::new();
    assert!(
        read_until(response, &mut text, Duration::from_secs(5), |t| t
            .contains("event: ready"))
        .await,
        "no ready event: {text:?}"
    );
    text
}

/// Reads a streaming response until `until` holds for what arrived, at most `wait`.
async fn read_until(
    response: &mut reqwest::Response,
    text: &mut String,
    wait: Duration,
    until: impl Fn(&str) -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    while !until(text) {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            _ => return false,
        }
    }
    true
}

/// The `data:` of each SSE event of `event` type in `text`.
fn data_of(text: &str, event: &str) -> Vec<Value> {
    ids_of(text, event)
        .into_iter()
        .map(|(_, data)| data)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_capped_kept_alive_filtered_and_a_slow_reader_is_let_go() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("stream-caps");
    let token = partner_token(&partner);
    let api = world.start_api(
        &api_tokens(&[&partner]),
        &[
            "--max-streams-per-partner",
            "1",
            "--stream-heartbeat-ms",
            "300",
            "--stream-buffer-events",
            "4",
            "--stream-slow-after-ms",
            "1000",
        ],
    );
    let _dispatcher = world.start();
    let p = world.publisher().await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/partners/{partner}/stream", api.url);
    let open = |query: &str| {
        client
            .get(format!("{url}{query}"))
            .bearer_auth(&token)
            .send()
    };

    // Without a stream subscription: 404 saying how to make one.
    let r = open("").await.expect("call");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("\"kind\": \"stream\""),
        "{body}"
    );
    create_stream(&api, &token).await;
    // Bad parameters, named.
    for (query, field, says) in [
        (
            "?filter=event.order.total.amount_minor%20%3E%3D",
            "filter",
            "line 1, column 34",
        ),
        ("?types=order.shipped", "types", "unknown event type"),
        ("?types=order.status_changed", "types", "not among"),
        ("?after=garbage", "after", "not a cursor"),
        ("?from=yesterday", "from", "earliest"),
    ] {
        let r = open(query).await.expect("call");
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["field"], field, "{query}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(says),
            "{body}"
        );
    }

    // Open, with heartbeats while idle.
    let mut first = open("").await.expect("open");
    assert_eq!(first.status(), 200);
    assert!(first.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let mut text = String::new();
    assert!(
        read_until(&mut first, &mut text, Duration::from_secs(5), |t| t
            .contains("event: ready")
            && t.lines().filter(|l| l.starts_with(':')).count() >= 2)
        .await,
        "the ready event, then heartbeats: {text:?}"
    );
    // One stream per partner here: the next is 429 with Retry-After.
    let refused = open("").await.expect("call");
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    // Closed: its place is given back (noticed at the next heartbeat).
    drop(first);
    let filtered = e2e::poll(Duration::from_secs(5), || async {
        let r = open("?types=order.created&filter=event.order.total.amount_minor%20%3E%3D%2010000")
            .await
            .expect("call");
        (r.status() == 200).then_some(r)
    })
    .await;
    let mut filtered = filtered.expect("a new stream once the first closed");
    let mut text = read_ready(&mut filtered).await;
    // A connection's own types and filter: only the big order.created events, then the
    // marker (so what was skipped is not merely late).
    let mut wanted = Vec::new();
    for (t, amount) in [
        (EventType::OrderCreated, 20_000),
        (EventType::OrderCreated, 500),
        (EventType::OrderCancelled, 30_000),
        (EventType::OrderCreated, 15_000),
        (EventType::OrderCreated, 40_000),
    ] {
        let e = e2e::order_event(t, &partner, "f-1", amount);
        p.publish(&e).await.expect("publish");
        if t == EventType::OrderCreated && amount >= 10_000 {
            wanted.push(e.event_id().to_string());
        }
    }
    assert!(
        read_until(
            &mut filtered,
            &mut text,
            Duration::from_secs(30),
            |t| data_of(t, "order.created").len() >= 3
        )
        .await,
        "{text}"
    );
    let got: Vec<String> = data_of(&text, "order.created")
        .iter()
        .map(|b| {
            b["data"]["event_id"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(got, wanted, "the connection's filter, in order");
    assert!(data_of(&text, "order.cancelled").is_empty());
    drop(filtered);

    // A client that reads nothing: let go once its buffer has waited 1 s.
    let slow = e2e::poll(Duration::from_secs(5), || async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(2048).expect("rcvbuf");
        let addr = api.url.trim_start_matches("http://").parse().expect("addr");
        let mut s = socket.connect(addr).await.expect("connect");
        let request = format!(
            "GET /v1/partners/{partner}/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.expect("request");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.expect("status line");
        head.ends_with(b"200").then_some(s)
    })
    .await;
    let slow = slow.expect("the slow client's stream opened");
    let metrics = format!("{}/metrics", api.url);
    let let_go = || async {
        let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
        e2e::metric_value(
            &text,
            "dispatcher_streams_closed_total{reason=\"slow_client\"} ",
        )
    };
    // Large events (40 items, about 5 KB): the kernel buffers up to a few MB of a
    // loopback connection before the stream's own buffer fills.
    let mut published = 0;
    while let_go().await.unwrap_or(0.0) < 1.0 {
        assert!(
            published < 3000,
            "a client that reads nothing was never let go"
        );
        for i in 0..100 {
            let e = OrderEvent::sample(
                EventType::OrderCreated,
                &format!("slow-{}", i % 7),
                &partner,
                40,
            );
            p.publish(&e).await.expect("publish");
        }
        published += 100;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Its connection still holds its place (it is what the cap bounds) ...
    let held = open("").await.expect("call");
    assert_eq!(held.status(), 429, "the stuck connection still counts");
    // ... until it closes: then the place is given back.
    drop(slow);
    let again = e2e::poll(Duration::from_secs(10), || async {
        (open("").await.expect("call").status() == 200).then_some(200)
    })
    .await;
    assert_eq!(again, Some(200), "the slow client's place was given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_subscription_from_an_operators_file_gets_its_topic_and_its_events() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("stream-file");
    let token = partner_token(&partner);
    let applied = world.apply(&format!(
        "subscriptions:\n  - id: {partner}.live\n    partner_id: {partner}\n    kind: stream\n    event_types: [order.created]\n    filter: 'event.order.total.amount_minor > 100'\n"
    ));
    assert!(applied.status.success(), "{applied:?}");
    let api = world.start_api(&api_tokens(&[&partner]), &[]);
    // The dispatcher makes the stream's topic (the API made none: the file did not go
    // through it).
    let _dispatcher = world.start();
    let client = reqwest::Client::new();
    let url = format!("{}/v1/partners/{partner}/stream", api.url);
    let stream = e2e::poll(Duration::from_secs(20), || async {
        let r = client
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("call");
        if r.status() != 200 {
            assert_eq!(r.status(), 503, "only while the topic is being made");
        }
        (r.status() == 200).then_some(r)
    })
    .await;
    let mut stream = stream.expect("the stream opened once its topic was made");
    let mut text = read_ready(&mut stream).await;
    let p = world.publisher().await;
    let small = e2e::order_event(EventType::OrderCreated, &partner, "s-1", 50);
    let big = e2e::order_event(EventType::OrderCreated, &partner, "s-1", 5_000);
    for e in [&small, &big] {
        p.publish(e).await.expect("publish");
    }
    assert!(
        read_until(&mut stream, &mut text, Duration::from_secs(30), |t| {
            !data_of(t, "order.created").is_empty()
        })
        .await,
        "{text}"
    );
    let got = data_of(&text, "order.created");
    assert_eq!(got.len(), 1, "the file's filter decides: {text}");
    assert_eq!(got[0]["data"]["event_id"], big.event_id().to_string());
}
