//! Partner tokens: their own subscriptions only, their namespace, quota and share of the events reader.

use super::*;

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

/// Issue #22, item 8: an internal subscription receives every partner's events. Filed
/// under a partner id that has a token, that token must not change it (point it
/// elsewhere, pause, rotate, delete): only an admin token does. (Before: `update` and
/// the others checked only that the caller sees the partner.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_token_cannot_change_an_internal_subscription_filed_under_it() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let pa = unique("ia");
    let api = world.start_api(&tokens(&[&pa]), &[]);
    let ta = partner_token(&pa);
    let (s, internal) = api
        .create_subscription(
            ADMIN.to_string(),
            json!({"partner_id": pa, "url": "http://127.0.0.1:9/audit", "event_types": ["order.created"], "internal": true}),
        )
        .await;
    assert_eq!(s, 201, "{internal}");
    let path = format!("/v1/subscriptions/{}", internal["id"].as_str().expect("id"));
    let refused = [
        (
            reqwest::Method::PATCH,
            path.clone(),
            Some(json!({"url": "http://127.0.0.1:9/evil"})),
        ),
        (reqwest::Method::POST, format!("{path}/pause"), None),
        (reqwest::Method::POST, format!("{path}/rotate-secret"), None),
        (reqwest::Method::DELETE, path.clone(), None),
    ];
    for (method, p, body) in refused {
        let (s, e) = api.call(method.clone(), &p, Some(&ta), body).await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (403, Some("forbidden")),
            "{method} {p} with the partner's token: {e}"
        );
    }
    let (s, still) = api
        .call(reqwest::Method::GET, &path, Some(ADMIN), None)
        .await;
    assert_eq!(
        (s, still["url"].as_str(), still["state"].as_str()),
        (200, Some("http://127.0.0.1:9/audit"), Some("active")),
        "untouched: {still}"
    );
    let (s, e) = api
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(ADMIN),
            Some(json!({"url": "http://127.0.0.1:9/audit2"})),
        )
        .await;
    assert_eq!(s, 200, "the admin changes it: {e}");
}

/// Issue #22, item 3: the quota holds when creates race each other. Ten creates of one
/// partner fired at once against a quota of 3: exactly 3 are made, 7 refused with
/// `quota_exceeded`. (Before: the count was taken before each create's awaits (DNS,
/// topic, audit, save), so creates in flight together all passed it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_holds_when_many_creates_race() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let pa = unique("race");
    let api = world.start_api(&tokens(&[&pa]), &["--max-subscriptions-per-partner", "3"]);
    let ta = partner_token(&pa);
    let creates = (0..10).map(|i| {
        api.create_subscription(
            ta.clone(),
            json!({"url": format!("http://127.0.0.1:9/{i}"), "event_types": ["order.created"]}),
        )
    });
    let answers = futures::future::join_all(creates).await;
    let made = answers.iter().filter(|(s, _)| *s == 201).count();
    let refused = answers
        .iter()
        .filter(|(s, e)| *s == 403 && e["error"]["code"] == "quota_exceeded")
        .count();
    assert_eq!((made, refused), (3, 7), "{answers:?}");
    let (s, list) = api
        .call(reqwest::Method::GET, "/v1/subscriptions", Some(&ta), None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        list["subscriptions"].as_array().map(Vec::len),
        Some(3),
        "{list}"
    );
}

/// Issue #22, item 6: a partner token's changes are rate limited (each wakes every
/// dispatcher instance's held jobs): past the burst, 429 with Retry-After, and the
/// change is not made; another partner and the admin are not held by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_tokens_changes_are_rate_limited_with_retry_after() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let (pa, pb) = (unique("wa"), unique("wb"));
    let api = world.start_api(
        &tokens(&[&pa, &pb]),
        &[
            "--partner-writes-per-sec",
            "1",
            "--partner-write-burst",
            "3",
        ],
    );
    let (ta, tb) = (partner_token(&pa), partner_token(&pb));
    let hook = json!({"url": "http://127.0.0.1:9/a", "event_types": ["order.created"]});
    let (s, a) = api.create_subscription(ta.clone(), hook.clone()).await;
    assert_eq!(s, 201, "{a}");
    let path = format!("/v1/subscriptions/{}", a["id"].as_str().expect("id"));
    let patch = |n: u32| json!({"max_in_flight": n});
    // The create took one of the burst of 3: changes go until the burst is spent.
    let client = reqwest::Client::new();
    let mut accepted = Vec::new();
    let refused = loop {
        let n = accepted.len() as u32 + 1;
        assert!(n <= 10, "never limited: {accepted:?}");
        let answer = client
            .patch(format!("{}{path}", api.url))
            .bearer_auth(&ta)
            .json(&patch(n))
            .send()
            .await
            .expect("patch");
        if answer.status() == 429 {
            break answer;
        }
        assert_eq!(answer.status(), 200);
        accepted.push(n);
    };
    assert!(accepted.len() >= 2, "the burst: {accepted:?}");
    let after: u64 = refused
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .expect("Retry-After");
    assert!((1..=2).contains(&after), "Retry-After: {after}");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    let (s, now) = api.call(reqwest::Method::GET, &path, Some(&ta), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        now["max_in_flight"].as_u64(),
        accepted.last().map(|n| u64::from(*n)),
        "the refused change is not made: {now}"
    );
    // Partner B and the admin are not held by A's limit.
    let (s, b) = api.create_subscription(tb.clone(), hook.clone()).await;
    assert_eq!(s, 201, "{b}");
    let (s, e) = api
        .call(reqwest::Method::PATCH, &path, Some(ADMIN), Some(patch(7)))
        .await;
    assert_eq!(s, 200, "{e}");
}
