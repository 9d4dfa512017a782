//! Recovery by polling the events stream.

use super::*;

/// The path of a page of `partner`'s events after `cursor` (from the start if `None`).
fn events_page(partner: &str, limit: usize, cursor: Option<&str>) -> String {
    match cursor {
        Some(c) => format!("/v1/partners/{partner}/events?limit={limit}&after={c}"),
        None => format!("/v1/partners/{partner}/events?limit={limit}"),
    }
}

/// An API, and a partner with a subscription whose endpoint is down (so that its
/// delivery topic exists), for tests that write that topic themselves: the partner, its
/// token and the topic.
async fn a_partner_polling(
    world: &DispatchWorld,
    prefix: &str,
) -> (e2e::ApiProcess, String, String, String) {
    let partner = unique(prefix);
    let api = world.start_api(&tokens(&[&partner]), &[]);
    let token = partner_token(&partner);
    let (s, created) = api
        .call(
            reqwest::Method::POST,
            "/v1/subscriptions",
            Some(&token),
            Some(json!({
                "url": format!("http://{}/hook", closed_port()),
                "event_types": ["order.created"],
            })),
        )
        .await;
    assert_eq!(s, 201, "{created}");
    let topic = dispatcher::subscriptions::delivery_topic(&partner);
    (api, partner, token, topic)
}

/// Writes an event to a delivery topic as the router would (webhook-id `id`, key and
/// order `id`), in `partition`, with the record timestamp `at` (ms).
async fn write_event(topic: &str, partition: i32, id: &str, at: i64) {
    let body = json!({"type": "order.created", "timestamp": "t", "data": {"order_id": id}});
    e2e::produce_at(
        &e2e::brokers(),
        topic,
        Some(partition),
        id,
        body.to_string().as_bytes(),
        &[("webhook-id", id), ("subscription-id", "s")],
        Some(at),
    )
    .await;
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
        let path = events_page(&partner, 3, cursor.as_deref());
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
    assert_eq!((s, e["error"]["field"].as_str()), (400, Some("after")));
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

/// Issue #22, item 4: record timestamps within a partition are not monotonic (two
/// instances writing with skewed clocks, batching). A page must never move the cursor
/// past a record it did not return: each partition's records are taken in offset order,
/// merged across partitions by timestamp. (Before: the page was sorted by timestamp and
/// truncated, and the cursor moved past the latest included offset, so a record with a
/// later timestamp but an earlier offset was skipped for good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_never_skips_an_event_whose_timestamp_is_out_of_order() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let (api, partner, token, topic) = a_partner_polling(&world, "skew").await;
    // Two partitions; partition 0's timestamps out of order (its second record is the
    // oldest of all).
    let base = chrono::Utc::now().timestamp_millis() - 60_000;
    let skew = [
        (0, 5_000),
        (0, 0),
        (0, 6_000),
        (0, 1_000),
        (1, 2_000),
        (1, 3_000),
        (1, 4_000),
    ];
    let mut written: HashMap<i32, Vec<String>> = HashMap::new();
    for (i, (partition, dt)) in skew.iter().enumerate() {
        let id = format!("evt-{i}");
        write_event(&topic, *partition, &id, base + dt).await;
        written.entry(*partition).or_default().push(id);
    }
    let mut cursor: Option<String> = None;
    let mut got: Vec<String> = Vec::new();
    for _ in 0..20 {
        let path = events_page(&partner, 2, cursor.as_deref());
        let (s, page) = api
            .call(reqwest::Method::GET, &path, Some(&token), None)
            .await;
        if s == 503 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        assert_eq!(s, 200, "{page}");
        got.extend(
            page["data"]
                .as_array()
                .expect("data")
                .iter()
                .map(|e| e["id"].as_str().expect("id").to_string()),
        );
        cursor = Some(page["next"].as_str().expect("next").to_string());
        if page["done"] == json!(true) {
            break;
        }
    }
    let mut per_partition: HashMap<i32, Vec<String>> = HashMap::new();
    for id in &got {
        let i: usize = id["evt-".len()..].parse().expect("an id we wrote");
        per_partition.entry(skew[i].0).or_default().push(id.clone());
    }
    assert_eq!(
        per_partition, written,
        "every event once, in its partition's order (polled: {got:?})"
    );
}

/// Retention passing a cursor (DeleteRecords, as Kafka's retention does): the page is
/// 410 with where to go on, never a silent jump past what was lost; going on from there
/// gives every event still kept, none twice. (Before: the page started at the oldest
/// kept event and said nothing.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_retention_passed_is_410_with_where_to_go_on() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let (api, partner, token, topic) = a_partner_polling(&world, "poll-gone").await;
    // a0 b0 a1 b1 a2 b2 a3 b3 by time; a in partition 0, b in partition 1.
    let base = chrono::Utc::now().timestamp_millis() - 60_000;
    for i in 0..8 {
        let (partition, name) = (i % 2, format!("{}{}", ["a", "b"][i as usize % 2], i / 2));
        write_event(&topic, partition, &name, base + i64::from(i) * 1000).await;
    }
    let page = |cursor: Option<String>| {
        let path = events_page(&partner, 10, cursor.as_deref());
        let (api, token) = (&api, &token);
        async move {
            e2e::poll(Duration::from_secs(20), || async {
                let (s, page) = api
                    .call(reqwest::Method::GET, &path, Some(token), None)
                    .await;
                (s != 503).then_some((s, page))
            })
            .await
            .expect("an answer other than 503")
        }
    };
    let ids = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|e| e["id"].as_str().unwrap_or("").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (s, first) = page(None).await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(
        ids(&first),
        ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]
    );
    // A partner read a0 and b0, then was away; retention removed a0, a1, a2.
    let lows = e2e::delete_records_on(&e2e::brokers(), &topic, &[(0, 3)]).await;
    assert_eq!(lows, [(0, 3)]);
    let read_two = dispatcher::api::Cursor([(0, 1), (1, 1)].into()).encode();
    let (s, gone) = page(Some(read_two)).await;
    assert_eq!(s, 410, "{gone}");
    assert_eq!(gone["error"]["code"], "gone");
    let on = gone["oldest_cursor"].as_str().expect("oldest_cursor");
    let on_cursor = dispatcher::api::Cursor::decode(on).expect("a cursor");
    assert_eq!(
        on_cursor.0.get(&0),
        Some(&3),
        "partition 0 from its oldest kept"
    );
    assert_eq!(
        on_cursor.0.get(&1),
        Some(&1),
        "partition 1 where the cursor was"
    );
    // Going on: what is kept after the cursor, each once (b1 b2 a3 b3, by time).
    let (s, rest) = page(Some(on.to_string())).await;
    assert_eq!(s, 200, "{rest}");
    assert_eq!(ids(&rest), ["b1", "b2", "a3", "b3"]);
    // Without a cursor: from the oldest kept, as before.
    let (s, all) = page(None).await;
    assert_eq!(s, 200, "{all}");
    assert_eq!(ids(&all), ["b0", "b1", "b2", "a3", "b3"]);
}
