//! The live stream (#26): a partner without an inbound port reads its events as
//! Server-Sent Events. Here: the connection cap, heartbeats, a connection's own filter,
//! a client too slow to read, a stream subscription from an operator's file; real SSE
//! client libraries across a kill -9 in `clients.rs`; cursors retention passed in
//! `retention.rs`.

use std::time::Duration;

use e2e::{api_tokens, partner_token, unique, ApiProcess, DispatchWorld};
use order_schemas::{EventType, OrderEvent};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod clients;
mod retention;

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
