//! The partner-facing API (`dispatcher api`) against the real broker, a running
//! dispatcher and receivers: changes take effect without a restart, tokens see only their
//! own partner, URLs are checked, and the events endpoint lets a partner recover.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use consumer_examples::receiver::{Receiver, Script};
use e2e::{
    api_tokens as tokens, closed_port, eventually, partner_token, unique, DispatchWorld,
    ADMIN_TOKEN as ADMIN,
};
use order_schemas::{EventType, OrderEvent};
use producer::Publisher;
use serde_json::{json, Value};

async fn metric(dispatcher_metrics: &str, line_prefix: &str) -> f64 {
    let text = reqwest::get(dispatcher_metrics)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the running dispatcher has read `n` more subscription changes than
/// `before` (so an API call has taken effect there).
async fn dispatcher_sees(metrics_url: &str, before: f64, n: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(metrics_url, "dispatcher_subscription_changes_total ").await < before + n {
        assert!(
            std::time::Instant::now() < deadline,
            "the dispatcher did not pick the change up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn publish(p: &Publisher, partner: &str, orders: &[&str]) -> Vec<OrderEvent> {
    let mut out = Vec::new();
    for order in orders {
        let e = OrderEvent::sample(EventType::OrderCreated, order, partner, 1);
        p.publish(&e).await.expect("publish");
        out.push(e);
    }
    out
}

fn ids(events: &[OrderEvent]) -> BTreeSet<String> {
    events.iter().map(|e| e.event_id().to_string()).collect()
}

fn received(r: &Receiver) -> BTreeSet<String> {
    r.deliveries()
        .iter()
        .map(|d| d.webhook_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rotate_pause_update_delete_take_effect_on_a_running_dispatcher() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("apip");
    let api = world.start_api(&tokens(&[&partner]), &[]);
    let dispatcher = world.start();
    let metrics_url = dispatcher.metrics_url.clone();
    let token = partner_token(&partner);
    let changes = || metric(&metrics_url, "dispatcher_subscription_changes_total ");

    // Create: the secret comes back once; the receiver verifies with it.
    let addr = closed_port();
    let before = changes().await;
    let (status, created) = api
        .call(
            reqwest::Method::POST,
            "/v1/subscriptions",
            Some(&token),
            Some(
                json!({"url": format!("http://{addr}/webhook"), "event_types": ["order.created"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let secret = created["secret"].as_str().expect("secret").to_string();
    assert_eq!(created["partner_id"], partner.as_str());
    let first = Receiver::start(addr.parse().expect("addr"), &secret, Script::default())
        .await
        .expect("receiver");
    dispatcher_sees(&metrics_url, before, 1.0).await;
    let p = world.publisher().await;
    let batch = publish(&p, &partner, &["o-1", "o-2"]).await;
    assert!(
        eventually(Duration::from_secs(30), || received(&first) == ids(&batch)).await,
        "created subscription delivers\n{}",
        dispatcher.log_tail()
    );
    let (status, got) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/subscriptions/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        got.get("secret").is_none() && got.get("secrets").is_none(),
        "{got}"
    );

    // Rotate: the new secret signs at once (the old one too, during the overlap).
    let before = changes().await;
    let (status, rotated) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/subscriptions/{id}/rotate-secret"),
            Some(&token),
            Some(json!({"overlap_secs": 3600})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().expect("secret").to_string();
    assert_ne!(new_secret, secret);
    dispatcher_sees(&metrics_url, before, 1.0).await;
    first.stop();
    drop(first);
    // Same address, only the new secret (the old server may take a moment to let go).
    let mut second = None;
    for _ in 0..50 {
        match Receiver::start(addr.parse().expect("addr"), &new_secret, Script::default()).await {
            Ok(r) => {
                second = Some(r);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let second = second.expect("receiver with the new secret");
    let batch = publish(&p, &partner, &["o-3"]).await;
    assert!(
        eventually(Duration::from_secs(30), || received(&second) == ids(&batch)).await,
        "signed with the new secret\n{}",
        dispatcher.log_tail()
    );
    assert_eq!(second.rejected_signatures(), 0);

    // Pause: events wait; resume: they arrive, in order.
    let before = changes().await;
    let (status, paused) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/subscriptions/{id}/pause"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((status, paused["state"].as_str()), (200, Some("paused")));
    dispatcher_sees(&metrics_url, before, 1.0).await;
    let held = publish(&p, &partner, &["o-4", "o-4", "o-5"]).await;
    // The lane has taken the three in and holds them (no fixed wait: the gauge says so).
    let buffered = format!("dispatcher_buffered_records{{partner=\"{partner}\"}} ");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(&metrics_url, &buffered).await < 3.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the lane took the events in"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(received(&second).len(), 1, "nothing sent while paused");
    let before = changes().await;
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/subscriptions/{id}/resume"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    dispatcher_sees(&metrics_url, before, 1.0).await;
    assert!(
        eventually(Duration::from_secs(30), || received(&second).len() == 4).await,
        "held events delivered after resume"
    );
    let o4: Vec<String> = second
        .deliveries()
        .iter()
        .filter(|d| d.order_id == "o-4")
        .map(|d| d.webhook_id.clone())
        .collect();
    assert_eq!(
        o4,
        vec![
            held[0].event_id().to_string(),
            held[1].event_id().to_string()
        ],
        "per-key order kept across the pause"
    );

    // Update the URL: the next events go to the new endpoint.
    let third = Receiver::start(
        "127.0.0.1:0".parse().expect("addr"),
        &new_secret,
        Script::default(),
    )
    .await
    .expect("receiver");
    let before = changes().await;
    let (status, updated) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(&token),
            Some(json!({"url": third.url()})),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    dispatcher_sees(&metrics_url, before, 1.0).await;
    let batch = publish(&p, &partner, &["o-6"]).await;
    assert!(
        eventually(Duration::from_secs(30), || received(&third) == ids(&batch)).await,
        "delivered to the new URL"
    );

    // Delete: nothing more is routed to the partner.
    let before = changes().await;
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/subscriptions/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    dispatcher_sees(&metrics_url, before, 1.0).await;
    let unmatched = "dispatcher_router_records_total{outcome=\"unmatched\"} ";
    let unmatched_before = metric(&metrics_url, unmatched).await;
    publish(&p, &partner, &["o-7"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(&metrics_url, unmatched).await < unmatched_before + 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the event was not routed anywhere"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(received(&third).len(), 1, "nothing after delete");
    let (status, gone) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/subscriptions/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        (status, gone["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // Every change is in the audit trail, the URL change with both URLs.
    let audit: Vec<Value> = e2e::read_exactly(&api.audit_topic, 6, Duration::from_secs(30))
        .await
        .iter()
        .map(|m| {
            use rdkafka::Message;
            serde_json::from_slice(m.payload().unwrap_or_default()).expect("audit JSON")
        })
        .collect();
    let actions: Vec<&str> = audit.iter().filter_map(|a| a["action"].as_str()).collect();
    assert_eq!(
        actions,
        [
            "create",
            "rotate-secret",
            "pause",
            "resume",
            "change-url",
            "delete"
        ]
    );
    assert!(audit
        .iter()
        .all(|a| a["actor"] == format!("partner:{partner}")));
    assert_eq!(audit[4]["details"]["to"], third.url().as_str());
    assert_eq!(
        audit[4]["details"]["from"],
        format!("http://{addr}/webhook")
    );
    assert_eq!(dispatcher.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_token_sees_and_changes_only_its_own_subscriptions() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let (pa, pb) = (unique("pa"), unique("pb"));
    let api = world.start_api(&tokens(&[&pa, &pb]), &[]);
    let (ta, tb) = (partner_token(&pa), partner_token(&pb));
    let create = |token: String, body: Value| api.create_subscription(token, body);
    let (s, a) = create(
        ta.clone(),
        json!({"url": "http://127.0.0.1:9/a", "event_types": ["order.created"]}),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let (s, b) = create(
        tb.clone(),
        json!({"url": "http://127.0.0.1:9/b", "event_types": ["order.created"]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let b_id = b["id"].as_str().expect("id");

    let (s, list) = api
        .call(reqwest::Method::GET, "/v1/subscriptions", Some(&ta), None)
        .await;
    assert_eq!(s, 200);
    let partners: BTreeSet<&str> = list["subscriptions"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["partner_id"].as_str())
        .collect();
    assert_eq!(partners, BTreeSet::from([pa.as_str()]), "{list}");

    let path = format!("/v1/subscriptions/{b_id}");
    for (method, body) in [
        (reqwest::Method::GET, None),
        (
            reqwest::Method::PATCH,
            Some(json!({"url": "http://127.0.0.1:9/evil"})),
        ),
        (reqwest::Method::DELETE, None),
    ] {
        let (s, e) = api.call(method.clone(), &path, Some(&ta), body).await;
        assert_eq!(s, 404, "{method} another partner's subscription: {e}");
    }
    for action in ["pause", "rotate-secret"] {
        let (s, _) = api
            .call(
                reqwest::Method::POST,
                &format!("{path}/{action}"),
                Some(&ta),
                None,
            )
            .await;
        assert_eq!(s, 404, "{action}");
    }
    let (s, e) = create(
        ta.clone(),
        json!({"partner_id": pb, "url": "http://127.0.0.1:9/x", "event_types": ["order.created"]}),
    )
    .await;
    assert_eq!((s, e["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, e) = create(
        ta.clone(),
        json!({"url": "http://127.0.0.1:9/x", "event_types": ["order.created"], "internal": true}),
    )
    .await;
    assert_eq!(s, 403, "{e}");
    // b's subscription is untouched, and the admin sees both.
    let (s, still) = api.call(reqwest::Method::GET, &path, Some(&tb), None).await;
    assert_eq!(
        (s, still["url"].as_str()),
        (200, Some("http://127.0.0.1:9/b"))
    );
    let (s, all) = api
        .call(reqwest::Method::GET, "/v1/subscriptions", Some(ADMIN), None)
        .await;
    assert_eq!(s, 200);
    assert!(all["subscriptions"].as_array().expect("list").len() >= 2);
    let (s, e) = api
        .call(reqwest::Method::GET, "/v1/subscriptions", None, None)
        .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let (s, _) = api
        .call(
            reqwest::Method::GET,
            "/v1/subscriptions",
            Some("not-a-token-at-all-xxxx"),
            None,
        )
        .await;
    assert_eq!(s, 401);
    let (s, _) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/partners/{pb}/events"),
            Some(&ta),
            None,
        )
        .await;
    assert_eq!(s, 404, "another partner's events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_and_bad_fields_are_refused_with_the_field_named() {
    // No allowlist: only public addresses.
    let world = DispatchWorld::new("").await;
    let partner = unique("ssrf");
    let api = world.start_api(&tokens(&[&partner]), &["--require-https"]);
    let token = partner_token(&partner);
    let refused = |url: &'static str| {
        let (api, token) = (&api, token.clone());
        async move {
            api.call(
                reqwest::Method::POST,
                "/v1/subscriptions",
                Some(&token),
                Some(json!({"url": url, "event_types": ["order.created"]})),
            )
            .await
        }
    };
    for (url, why) in [
        ("https://169.254.169.254/latest/meta-data", "SSRF"),
        ("https://10.1.2.3/hook", "SSRF"),
        ("https://[::ffff:127.0.0.1]/hook", "SSRF"),
        ("https://localhost/hook", "resolves to"),
        ("http://hooks.example.com/hook", "http"),
        ("ftp://hooks.example.com/hook", "scheme"),
    ] {
        let (s, e) = refused(url).await;
        assert_eq!(s, 422, "{url}: {e}");
        assert_eq!(e["error"]["field"], "url", "{url}: {e}");
        assert!(
            e["error"]["message"].as_str().unwrap_or("").contains(why),
            "{url}: {e}"
        );
        // What a name resolves to inside our network is not told.
        let message = e["error"]["message"].as_str().unwrap_or("");
        if url.contains("localhost") {
            assert!(
                !message.contains("127.0.0.1") && !message.contains("::1"),
                "{url}: {e}"
            );
        }
    }
    let (s, e) = api
        .call(
            reqwest::Method::POST,
            "/v1/subscriptions",
            Some(&token),
            Some(json!({"url": "https://hooks.example.com/x", "event_types": ["order.shipped"]})),
        )
        .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (422, Some("event_types")),
        "{e}"
    );
    let (s, e) = api.call(
        reqwest::Method::POST,
        "/v1/subscriptions",
        Some(&token),
        Some(json!({"url": "https://hooks.example.com/x", "event_types": ["order.created"], "max_in_flight": "many"})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (422, Some("max_in_flight")),
        "{e}"
    );
    let (s, list) = api
        .call(
            reqwest::Method::GET,
            "/v1/subscriptions",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(list["subscriptions"], json!([]), "nothing was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_recovers_missed_events_by_polling_in_order() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("poll");
    let api = world.start_api(&tokens(&[&partner, "other"]), &[]);
    let token = partner_token(&partner);
    // The partner's endpoint is down: nothing is acknowledged.
    let down = closed_port();
    let (s, created) = api
        .call(
            reqwest::Method::POST,
            "/v1/subscriptions",
            Some(&token),
            Some(json!({
                "url": format!("http://{down}/hook"),
                "event_types": ["order.created", "order.status_changed"],
                "retry": {"max_attempts": 2, "initial_backoff_ms": 100, "max_backoff_ms": 200}
            })),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let dispatcher = world.start();
    let p = world.publisher().await;
    let mut sent = Vec::new();
    for i in 0..11 {
        let kind = if i < 4 {
            EventType::OrderCreated
        } else {
            EventType::OrderStatusChanged
        };
        let e = OrderEvent::sample(kind, &format!("order-{}", i % 4), &partner, 1);
        p.publish(&e).await.expect("publish");
        sent.push(e);
    }
    // Wait until the stream holds all 11 (the router writes them while we look), so the
    // pages below are read from a stream that no longer changes.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (s, page) = api
            .call(
                reqwest::Method::GET,
                &format!("/v1/partners/{partner}/events?limit=100"),
                Some(&token),
                None,
            )
            .await;
        let n = page["data"].as_array().map_or(0, Vec::len);
        if s == 200 && n == sent.len() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stream has {n} of {} ({s})\n{}",
            sent.len(),
            dispatcher.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Page through with limit 3.
    let mut cursor: Option<String> = None;
    let mut pages: Vec<(String, Vec<Value>)> = Vec::new();
    let mut got: Vec<Value> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while got.len() < sent.len() {
        assert!(
            std::time::Instant::now() < deadline,
            "polled {} of {}\n{}",
            got.len(),
            sent.len(),
            dispatcher.log_tail()
        );
        let path = match &cursor {
            Some(c) => format!("/v1/partners/{partner}/events?limit=3&after={c}"),
            None => format!("/v1/partners/{partner}/events?limit=3"),
        };
        let (s, page) = api
            .call(reqwest::Method::GET, &path, Some(&token), None)
            .await;
        if s == 503 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(s, 200, "{page}");
        let data = page["data"].as_array().expect("data").clone();
        assert!(!data.is_empty() && data.len() <= 3, "{page}");
        got.extend(data.iter().cloned());
        pages.push((path, data));
        cursor = Some(page["next"].as_str().expect("next").to_string());
    }
    assert!(pages.len() >= 4, "paged by 3");
    // The same cursor gives the same page (the endpoint is down: nothing more is written
    // to the stream).
    for (path, data) in &pages {
        let mut again = Value::Null;
        for _ in 0..20 {
            let (s, body) = api
                .call(reqwest::Method::GET, path, Some(&token), None)
                .await;
            if s == 200 {
                again = body;
                break;
            }
            assert_eq!(s, 503, "{body}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            &again["data"],
            &Value::Array(data.clone()),
            "stable cursor {path}"
        );
    }
    let polled: Vec<String> = got
        .iter()
        .map(|e| e["id"].as_str().expect("id").to_string())
        .collect();
    let expected: BTreeSet<String> = ids(&sent);
    assert_eq!(polled.len(), sent.len(), "no event twice: {polled:?}");
    assert_eq!(polled.iter().cloned().collect::<BTreeSet<_>>(), expected);
    // Per order, the stream keeps publish order.
    let mut per_order: HashMap<String, Vec<String>> = HashMap::new();
    for e in &got {
        per_order
            .entry(
                e["event"]["data"]["order_id"]
                    .as_str()
                    .expect("order")
                    .to_string(),
            )
            .or_default()
            .push(e["id"].as_str().expect("id").to_string());
    }
    for (order, list) in per_order {
        let want: Vec<String> = sent
            .iter()
            .filter(|e| e.order_id() == order)
            .map(|e| e.event_id().to_string())
            .collect();
        assert_eq!(list, want, "{order}");
    }
    assert_eq!(got[0]["event"]["type"], "order.created");
    // Nothing new: an empty page, and the cursor stays usable.
    let (s, tail) = api
        .call(
            reqwest::Method::GET,
            &format!(
                "/v1/partners/{partner}/events?after={}",
                cursor.expect("cursor")
            ),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((s, tail["data"].as_array().map(Vec::len)), (200, Some(0)));
    assert_eq!(tail["done"], true);
    let (s, e) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/partners/{partner}/events?after=garbage!"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!((s, e["error"]["field"].as_str()), (422, Some("after")));
    let (s, _) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/partners/{partner}/events"),
            Some(&partner_token("other")),
            None,
        )
        .await;
    assert_eq!(s, 404, "another partner's token");
    assert_eq!(dispatcher.terminate(), Some(0));
}

/// A partner names subscriptions only inside its own namespace (an id of another
/// partner's is refused without saying whether it exists), has a quota of
/// subscriptions, and `/events` answers 429 with Retry-After when saturated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_are_confined_to_their_namespace_quota_and_a_share_of_the_events_reader() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let (pa, pb) = (unique("qa"), unique("qb"));
    let api = world.start_api(
        &tokens(&[&pa, &pb]),
        &[
            "--max-subscriptions-per-partner",
            "2",
            "--events-concurrency",
            "1",
        ],
    );
    let (ta, tb) = (partner_token(&pa), partner_token(&pb));
    let create = |token: String, body: Value| api.create_subscription(token, body);
    let hook = |id: Option<String>| {
        let mut b = json!({"url": "http://127.0.0.1:9/a", "event_types": ["order.created"]});
        if let Some(id) = id {
            b["id"] = id.into();
        }
        b
    };
    // Numbers that would overflow flow control or parking are refused, field named.
    for (extra, field) in [
        (json!({"rate_limit_per_sec": 1e-30}), "rate_limit_per_sec"),
        (
            json!({"retry": {"max_backoff_ms": 9_000_000_000_000_000u64, "max_elapsed_secs": 9_000_000_000_000_000u64}}),
            "retry.max_elapsed_secs",
        ),
    ] {
        let mut body = hook(None);
        for (k, v) in extra.as_object().expect("object") {
            body[k] = v.clone();
        }
        let (s, e) = create(ta.clone(), body).await;
        assert_eq!((s, e["error"]["field"].as_str()), (422, Some(field)), "{e}");
    }
    let mine = format!("{pa}.orders");
    let (s, a) = create(ta.clone(), hook(Some(mine.clone()))).await;
    assert_eq!(s, 201, "{a}");
    // Partner B asking for A's id learns nothing about it: the same answer as for
    // any id outside its namespace.
    for asked in [mine.clone(), format!("{pa}.unused"), "plain".to_string()] {
        let (s, e) = create(tb.clone(), hook(Some(asked.clone()))).await;
        assert_eq!(
            (s, e["error"]["field"].as_str()),
            (422, Some("id")),
            "{asked}: {e}"
        );
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("{pb}.")),
            "{e}"
        );
    }
    // Inside its own namespace a taken id is a conflict.
    let (s, e) = create(ta.clone(), hook(Some(mine.clone()))).await;
    assert_eq!(s, 409, "{e}");
    // Generated ids are in the namespace too; the quota counts them.
    let (s, second) = create(ta.clone(), hook(None)).await;
    assert_eq!(s, 201, "{second}");
    assert!(
        second["id"]
            .as_str()
            .unwrap_or("")
            .starts_with(&format!("{pa}.")),
        "{second}"
    );
    let (s, e) = create(ta.clone(), hook(None)).await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (403, Some("quota_exceeded")),
        "{e}"
    );
    assert!(
        e["error"]["message"].as_str().unwrap_or("").contains("(2)"),
        "{e}"
    );
    let (s, _) = create(tb.clone(), hook(None)).await;
    assert_eq!(s, 201, "the quota is per partner");

    // One events page at a time: a burst gets 429 with Retry-After, never a 5xx.
    let client = reqwest::Client::new();
    let calls = (0..16).map(|_| {
        client
            .get(format!("{}/v1/partners/{pa}/events", api.url))
            .bearer_auth(&ta)
            .send()
    });
    let answers = futures::future::join_all(calls).await;
    let mut statuses = Vec::new();
    for a in answers {
        let a = a.expect("answer");
        if a.status().as_u16() == 429 {
            assert_eq!(
                a.headers().get("retry-after").and_then(|v| v.to_str().ok()),
                Some("1")
            );
        }
        statuses.push(a.status().as_u16());
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
}
