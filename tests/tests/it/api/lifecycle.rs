//! A subscription's life through the API, seen by a running dispatcher.

use super::*;

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
    // Nothing answers the URL yet: it waits for its ownership challenge.
    assert_eq!(created["verification"]["state"], "pending_verification");
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
    assert_eq!(updated["verification"]["state"], "pending_verification");
    assert_eq!(
        updated["verification"]["delivering_to"],
        format!("http://{addr}/webhook")
    );
    api.wait_verification(&token, &id, "verified").await;
    dispatcher_sees(&metrics_url, before, 2.0).await;
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
    let audit: Vec<Value> = e2e::read_exactly(&api.audit_topic, 8, Duration::from_secs(30))
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
            "endpoint-verified",
            "rotate-secret",
            "pause",
            "resume",
            "change-url",
            "endpoint-verified",
            "delete"
        ]
    );
    assert!(audit.iter().all(|a| a["actor"]
        == if a["action"] == "endpoint-verified" {
            "endpoint-verifier".to_string()
        } else {
            format!("partner:{partner}")
        }));
    assert_eq!(audit[6]["details"]["url"], third.url().as_str());
    assert_eq!(audit[5]["details"]["to"], third.url().as_str());
    assert_eq!(
        audit[5]["details"]["from"],
        format!("http://{addr}/webhook")
    );
    assert_eq!(dispatcher.terminate(), Some(0));
}

/// Issue #22, item 7: a change never undoes a field it did not mean to change. The
/// dispatcher writes whole subscription records too (a 410 disables one, a partner
/// failing for a day is disconnected); a PATCH arriving right after must not write back
/// the API's copy from before, re-enabling the subscription unaudited. Raced eight
/// times, each PATCH sent as soon as the broker acknowledged the disable. (Before: the
/// API's table lagged the topic by up to a fetch wait, and the PATCHes re-enabled
/// them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_right_after_the_dispatcher_disabled_a_subscription_does_not_undo_it() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    const RACES: usize = 8;
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("lost");
    // (No ownership challenge: its records would be writes of their own.)
    let api = world.start_api(
        &tokens(&[&partner]),
        &["--require-endpoint-verification", "false"],
    );
    let token = partner_token(&partner);
    for _ in 0..RACES {
        let (s, created) = api
            .create_subscription(
                token.clone(),
                json!({"url": "http://127.0.0.1:9/hook", "event_types": ["order.created"]}),
            )
            .await;
        assert_eq!(s, 201, "{created}");
    }
    // The records as written (secrets included), to disable as the dispatcher's 410
    // path writes them: whole.
    let written =
        e2e::read_exactly(&world.subscriptions_topic, RACES, Duration::from_secs(30)).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &world.brokers)
        .create()
        .expect("producer");
    let mut kept = Vec::new();
    for message in &written {
        let mut record: Value = serde_json::from_slice(
            rdkafka::Message::payload(message).expect("a subscription record"),
        )
        .expect("json");
        let id = record["id"].as_str().expect("id").to_string();
        record["disabled"] = json!(true);
        let value = record.to_string();
        producer
            .send(
                FutureRecord::to(&world.subscriptions_topic)
                    .key(&id)
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .expect("disable written");
        let (s, patched) = api
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/subscriptions/{id}"),
                Some(&token),
                Some(json!({"max_in_flight": 4})),
            )
            .await;
        assert_eq!(s, 200, "{patched}");
        kept.push((
            id,
            patched["state"].as_str().map(str::to_string),
            patched["max_in_flight"].as_u64(),
        ));
    }
    let undone: Vec<_> = kept
        .iter()
        .filter(|(_, state, max)| (state.as_deref(), *max) != (Some("disabled"), Some(4)))
        .collect();
    assert!(
        undone.is_empty(),
        "each PATCH changed what it meant to and kept the disable; these did not: {undone:?}"
    );
}
