//! Recovering a subscription's dead-lettered messages through the API.

use super::messages::message;
use super::*;

/// Recover: a dead-lettered message is sent again through the dead-letter ledger, with
/// its original webhook-id: the dry run counts it and sends nothing, the recover sends
/// it once (a second recover of the same window sends nothing), and the log shows the
/// attempt as a `recover`. A dead-lettered message that a resend delivered since is
/// left alone (before, the recover sent it a second time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_message_is_recovered_once_with_its_webhook_id() {
    let world = DispatchWorld::new("127.0.0.1").await;
    // The first two answers are 400s (not retried: dead-lettered at once), then 204s.
    let (partner, rx) = world
        .partner_with_receiver(
            "recover",
            Script {
                fail_first: 2,
                fail_status: Some(400),
                ..Default::default()
            },
            "",
        )
        .await;
    let api = world.start_api(&tokens(&[&partner]), &[]);
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let since = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let event = OrderEvent::sample(EventType::OrderCreated, "order-rec", &partner, 1);
    let resent = OrderEvent::sample(EventType::OrderCreated, "order-resent", &partner, 1);
    publisher.publish(&event).await.expect("publish");
    publisher.publish(&resent).await.expect("publish");
    let (id, resent_id) = (event.event_id().to_string(), resent.event_id().to_string());
    let token = partner_token(&partner);
    let status_of = |webhook_id: String, wanted: &'static str| {
        let (api, token) = (&api, &token);
        async move {
            for _ in 0..300 {
                let (_, m) = message(api, token, &webhook_id).await;
                if m["status"] == wanted {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    for webhook_id in [&id, &resent_id] {
        assert!(
            status_of(webhook_id.clone(), "dead_lettered").await,
            "{webhook_id} dead-lettered on a 400\n{}",
            dispatcher.log_tail()
        );
    }
    // One of them is resent and delivered: no longer the recover's.
    let (s, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/messages/{resent_id}/resend"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(s, 202);
    assert!(
        status_of(resent_id.clone(), "delivered").await,
        "the resend delivered\n{}",
        dispatcher.log_tail()
    );
    let recover = format!("/v1/subscriptions/{partner}-s/recover");
    let (s, dry) = api
        .call(
            reqwest::Method::POST,
            &recover,
            Some(&token),
            Some(json!({"since": since, "dry_run": true})),
        )
        .await;
    assert_eq!(
        (
            s,
            dry["matched"].as_u64(),
            dry["no_longer_dead_lettered"].as_u64(),
            dry["count"].as_u64()
        ),
        (200, Some(2), Some(1), Some(1)),
        "{dry}"
    );
    let (s, done) = api
        .call(
            reqwest::Method::POST,
            &recover,
            Some(&token),
            Some(json!({"since": since})),
        )
        .await;
    assert_eq!((s, done["count"].as_u64()), (200, Some(1)), "{done}");
    assert!(
        eventually(Duration::from_secs(30), || rx.unique() == 2).await,
        "recovered\n{}",
        dispatcher.log_tail()
    );
    let mut delivered: Vec<String> = rx.deliveries().into_iter().map(|d| d.webhook_id).collect();
    delivered.sort();
    let mut expected = vec![id.clone(), resent_id.clone()];
    expected.sort();
    assert_eq!(
        delivered, expected,
        "each with its original webhook-id, once"
    );
    // Two 400s, the resend, the recovered one: the dry run sent nothing (it would have
    // come before the recover's), and the recover did not send the resent one again.
    assert_eq!(rx.requests(), 4, "a dry run sends nothing");
    let (s, again) = api
        .call(
            reqwest::Method::POST,
            &recover,
            Some(&token),
            Some(json!({"since": since})),
        )
        .await;
    assert_eq!(
        (
            s,
            again["count"].as_u64(),
            again["already_recovered"].as_u64()
        ),
        (200, Some(0), Some(1)),
        "each once: {again}"
    );
    let mut logged = Value::Null;
    for _ in 0..100 {
        let (_, m) = message(&api, &token, &id).await;
        if m["status"] == "delivered" {
            logged = m;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let triggers: Vec<_> = logged["attempts"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| (x["trigger"].as_str(), x["status_code"].as_u64()))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        triggers,
        vec![(Some("scheduled"), Some(400)), (Some("recover"), Some(204))],
        "{logged:#}"
    );
    // A bad window names its field.
    let (s, bad) = api
        .call(
            reqwest::Method::POST,
            &recover,
            Some(&token),
            Some(json!({"since": "last week"})),
        )
        .await;
    assert_eq!(
        (s, bad["error"]["field"].as_str()),
        (422, Some("since")),
        "{bad}"
    );
}
