//! Payload filters (#26) on the real stack: a subscription receives only the events its
//! CEL filter lets through, in order per order, and no delivery record of the others; a
//! filter that fails on an event counts it and delivers nothing; a change takes effect
//! for later events; a bad filter is refused naming where and why; `filter-test` says
//! which events would match.

use std::collections::BTreeSet;
use std::time::Duration;

use consumer_examples::receiver::{Receiver, Script};
use e2e::{api_tokens, eventually, partner_token, unique, ApiProcess, DispatchWorld};
use order_schemas::{EventType, OrderEvent};
use serde_json::{json, Value};

const BIG_AND_OPEN: &str =
    "event.order.total.amount_minor >= 10000 && event.order.status != \"CANCELLED\"";

use e2e::order_event as event;

/// Creates a subscription to order.created and order.cancelled with `filter` and starts
/// its receiver; returns both once it is verified.
async fn subscribe(api: &ApiProcess, token: &str, filter: Option<&str>) -> (String, Receiver) {
    let addr = e2e::closed_port();
    let mut body = json!({
        "url": format!("http://{addr}/webhook"),
        "event_types": ["order.created", "order.cancelled"],
    });
    if let Some(f) = filter {
        body["filter"] = f.into();
    }
    let (status, created) = api.create_subscription(token.to_string(), body).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["filter"].as_str(), filter, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    let secret = created["secret"].as_str().expect("secret");
    let receiver = Receiver::start(addr.parse().expect("addr"), secret, Script::default())
        .await
        .expect("receiver");
    api.wait_verification(token, &id, "verified").await;
    (id, receiver)
}

fn ids(events: &[OrderEvent]) -> BTreeSet<String> {
    events.iter().map(|e| e.event_id().to_string()).collect()
}

fn received(r: &Receiver) -> BTreeSet<String> {
    r.deliveries().into_iter().map(|d| d.webhook_id).collect()
}

/// `dispatcher_filtered_events_total` of `subscription` with `outcome`.
fn filtered(metrics: &str, subscription: &str, outcome: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("dispatcher_filtered_events_total{"))
        .filter(|l| l.contains(&format!("subscription=\"{subscription}\"")))
        .filter(|l| l.contains(&format!("outcome=\"{outcome}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_delivers_what_matches_in_order_counts_the_rest_and_changes_live() {
    let mut world = DispatchWorld::new("127.0.0.1").await;
    world
        .run_args
        .extend(["--filter-tally-interval-ms".into(), "300".into()]);
    let partner = unique("filters");
    let token = partner_token(&partner);
    let api = world.start_api(&api_tokens(&[&partner]), &[]);
    let dispatcher = world.start();
    let p = world.publisher().await;

    // Refused, naming the field, the position and what was expected.
    for (filter, says) in [
        ("event.order.total.amount_minor >=", "line 1, column 34"),
        ("event.order.total.amount_minor >=", "expecting"),
        ("event.order.totl.amount_minor > 1", "no field `totl`"),
        ("event.reasn == \"x\"", "no field `reasn`"),
        ("event.order.status == \"CANCELED\"", "CANCELLED"),
    ] {
        let (status, refused) = api
            .create_subscription(
                token.clone(),
                json!({"url": "http://127.0.0.1:9/h", "event_types": ["order.created"], "filter": filter}),
            )
            .await;
        assert_eq!(status, 422, "{filter}: {refused}");
        assert_eq!(refused["error"]["field"], "filter", "{refused}");
        let message = refused["error"]["message"].as_str().unwrap_or("");
        assert!(message.contains(says), "{filter}: `{message}` names {says}");
    }

    let (big, big_rx) = subscribe(&api, &token, Some(BIG_AND_OPEN)).await;
    // `reason` is only in order.cancelled: on order.created the filter fails.
    let (reasons, reasons_rx) = subscribe(&api, &token, Some("event.reason != \"test\"")).await;
    let (all, all_rx) = subscribe(&api, &token, None).await;

    let mut sent = Vec::new();
    for (t, order, amount) in [
        (EventType::OrderCreated, "o-0", 15_000),
        (EventType::OrderCreated, "o-1", 5_000),
        (EventType::OrderCreated, "o-2", 10_000),
        (EventType::OrderCreated, "o-0", 20_000),
        (EventType::OrderCancelled, "o-1", 5_000),
        (EventType::OrderCancelled, "o-0", 20_000),
        (EventType::OrderCreated, "o-2", 9_999),
        (EventType::OrderCreated, "o-2", 30_000),
    ] {
        let e = event(t, &partner, order, amount);
        p.publish(&e).await.expect("publish");
        sent.push(e);
    }
    let matching = |f: &dyn Fn(&OrderEvent) -> bool| -> Vec<OrderEvent> {
        sent.iter().filter(|e| f(e)).cloned().collect()
    };
    let want_big = matching(&|e| {
        e.order().total.amount_minor >= 10_000 && e.event_type() != EventType::OrderCancelled
    });
    let want_reasons = matching(&|e| e.event_type() == EventType::OrderCancelled);
    assert_eq!((want_big.len(), want_reasons.len()), (4, 2));

    assert!(
        eventually(Duration::from_secs(30), || all_rx.unique() == sent.len()
            && big_rx.unique() >= want_big.len()
            && reasons_rx.unique() >= want_reasons.len())
        .await,
        "all {} / {}, big {} / {}, reasons {} / {}\n{}",
        all_rx.unique(),
        sent.len(),
        big_rx.unique(),
        want_big.len(),
        reasons_rx.unique(),
        want_reasons.len(),
        dispatcher.log_tail()
    );
    assert_eq!(
        received(&big_rx),
        ids(&want_big),
        "exactly the matching events"
    );
    assert_eq!(received(&reasons_rx), ids(&want_reasons));
    // A filter never reorders: what matches of one order arrives in publish order.
    e2e::assert_per_order(&big_rx, &want_big);
    e2e::assert_per_order(&reasons_rx, &want_reasons);
    e2e::assert_per_order(&all_rx, &sent);

    // Counted per subscription; no delivery record for what was kept back.
    let metrics = dispatcher.metrics_text().await;
    assert_eq!(filtered(&metrics, &big, "filtered_out"), 4.0, "{metrics}");
    assert_eq!(filtered(&metrics, &big, "error"), 0.0);
    assert_eq!(
        filtered(&metrics, &reasons, "error"),
        6.0,
        "the order.created events"
    );
    assert_eq!(filtered(&metrics, &reasons, "filtered_out"), 0.0);
    assert_eq!(filtered(&metrics, &all, "filtered_out"), 0.0);
    let routed: Vec<(String, String)> = e2e::read_to_end_on(
        &world.brokers,
        &format!("deliveries.{partner}"),
        Duration::from_secs(10),
    )
    .await
    .iter()
    .map(|m| {
        let header = |name: &str| {
            use rdkafka::message::Headers;
            rdkafka::Message::headers(m)
                .and_then(|h| h.iter().find(|x| x.key == name)?.value.map(<[u8]>::to_vec))
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default()
        };
        (header("subscription-id"), header("webhook-id"))
    })
    .collect();
    let records_of = |id: &str| -> BTreeSet<String> {
        routed
            .iter()
            .filter(|(s, _)| s == id)
            .map(|(_, w)| w.clone())
            .collect()
    };
    assert_eq!(
        records_of(&big),
        ids(&want_big),
        "delivery records of `big`"
    );
    assert_eq!(records_of(&reasons), ids(&want_reasons));
    assert_eq!(records_of(&all), ids(&sent));

    // In the delivery log's stats too (the router's tallies).
    let stats_of = |id: &str| {
        let (api, token, path) = (&api, &token, format!("/v1/subscriptions/{id}/stats"));
        async move {
            api.call(reqwest::Method::GET, &path, Some(token), None)
                .await
                .1
        }
    };
    let counted = e2e::poll(Duration::from_secs(20), || async {
        let (b, r) = (stats_of(&big).await, stats_of(&reasons).await);
        (b["filtered"] == json!({"filtered_out": 4, "errors": 0})
            && r["filtered"] == json!({"filtered_out": 0, "errors": 6}))
        .then_some(())
    })
    .await;
    assert!(
        counted.is_some(),
        "stats: {} / {}",
        stats_of(&big).await["filtered"],
        stats_of(&reasons).await["filtered"]
    );

    // filter-test: the latest events against a filter not set yet, and a sample.
    let small = "event.order.total.amount_minor < 10000";
    let (status, tested) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/subscriptions/{big}/filter-test"),
            Some(&token),
            Some(json!({"filter": small, "last": 50})),
        )
        .await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["tested"], sent.len(), "{tested}");
    let matched: BTreeSet<String> = tested["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["matched"] == true)
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(
        matched,
        ids(&matching(&|e| e.order().total.amount_minor < 10_000))
    );
    let sample = json!({"type": "order.created", "data": event(EventType::OrderCreated, &partner, "o-9", 1).to_json()});
    let (status, tested) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/subscriptions/{reasons}/filter-test"),
            Some(&token),
            Some(json!({"event": sample})),
        )
        .await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["results"][0]["matched"], false, "{tested}");
    assert!(
        tested["results"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("reason")),
        "{tested}"
    );

    // Changed live: later events go by the new filter.
    let changes = "dispatcher_subscription_changes_total ";
    let before = dispatcher.metric(changes).await.unwrap_or(0.0);
    let (status, changed) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/subscriptions/{big}"),
            Some(&token),
            Some(json!({"filter": small})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["filter"], small);
    let read = e2e::poll(Duration::from_secs(10), || async {
        (dispatcher.metric(changes).await.unwrap_or(0.0) > before).then_some(())
    })
    .await;
    assert!(read.is_some(), "the dispatcher did not read the change");
    let later = [
        event(EventType::OrderCreated, &partner, "o-3", 500),
        event(EventType::OrderCreated, &partner, "o-4", 50_000),
    ];
    for e in &later {
        p.publish(e).await.expect("publish");
    }
    assert!(
        eventually(Duration::from_secs(30), || all_rx.unique()
            == sent.len() + 2
            && big_rx.unique() > want_big.len())
        .await,
        "big {} all {}",
        big_rx.unique(),
        all_rx.unique()
    );
    let mut want = ids(&want_big);
    want.insert(later[0].event_id().to_string());
    assert_eq!(received(&big_rx), want, "the new filter for later events");

    // Removed with "": every event again.
    let (status, changed) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/subscriptions/{big}"),
            Some(&token),
            Some(json!({"filter": ""})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert!(changed.get("filter").is_none(), "{changed}");
    let _: Value = changed;
}
