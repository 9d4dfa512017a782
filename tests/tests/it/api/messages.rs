//! The delivery log through the API (#23): a partner sees every attempt of its own
//! messages, and nothing of another partner's; two API instances answer the same; the
//! view survives a restart of the API without gaps or doubles.

use super::*;

/// The view's file for an API started by the test (removed at the end).
fn view_path() -> std::path::PathBuf {
    std::env::temp_dir()
        .join("orderhooks-e2e")
        .join(format!("{}.db", unique("log-view")))
}

/// `GET path` as `token`.
async fn get(api: &e2e::ApiProcess, token: &str, path: &str) -> (u16, Value) {
    api.call(reqwest::Method::GET, path, Some(token), None)
        .await
}

pub(super) async fn message(api: &e2e::ApiProcess, token: &str, webhook_id: &str) -> (u16, Value) {
    api.call(
        reqwest::Method::GET,
        &format!("/v1/messages/{webhook_id}"),
        Some(token),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_sees_each_attempt_of_its_messages_and_nothing_of_others() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let fast = "    request_timeout_ms: 2000\n    retry: { max_attempts: 5, initial_backoff_ms: 100, max_backoff_ms: 500 }\n";
    let (flaky, flaky_rx) = world
        .partner_with_receiver(
            "msgs",
            Script {
                fail_first: 2,
                fail_status: Some(500),
                ..Default::default()
            },
            fast,
        )
        .await;
    let (other, _other_rx) = world
        .partner_with_receiver("other", Script::default(), fast)
        .await;
    let path = view_path();
    let view = path.display().to_string();
    let mut api = world.start_api(
        &tokens(&[&flaky, &other]),
        &[
            "--attempts-topic",
            &world.attempts_topic,
            "--log-view-path",
            &view,
        ],
    );
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let event = OrderEvent::sample(EventType::OrderCreated, "order-4711", &flaky, 1);
    publisher.publish(&event).await.expect("publish");
    let id = event.event_id().to_string();
    assert!(
        eventually(Duration::from_secs(60), || flaky_rx.unique() == 1).await,
        "delivered on the third attempt\n{}",
        dispatcher.log_tail()
    );
    let token = partner_token(&flaky);
    let mut seen = (0, Value::Null);
    for _ in 0..100 {
        seen = message(&api, &token, &id).await;
        if seen.0 == 200 && seen.1["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = seen;
    assert_eq!(status, 200, "{body}");
    let attempts: Vec<(Option<u64>, Option<u64>, Option<&str>)> = body["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| {
            (
                a["attempt"].as_u64(),
                a["status_code"].as_u64(),
                a["trigger"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        vec![
            (Some(1), Some(500), Some("scheduled")),
            (Some(2), Some(500), Some("retry")),
            (Some(3), Some(204), Some("retry")),
        ],
        "{body:#}"
    );
    assert_eq!(
        (
            body["status"].as_str(),
            body["attempts_count"].as_u64(),
            body["order_id"].as_str()
        ),
        (Some("delivered"), Some(3), Some("order-4711"))
    );
    assert_eq!(body["attempts"][0]["response_excerpt"], "scripted failure");
    assert!(body["attempts"][0]["duration_ms"].is_u64());

    // The subscription's figures: two failures and a delivery.
    let (s, stats) = get(
        &api,
        &token,
        &format!("/v1/subscriptions/{flaky}-s/stats?window=1h"),
    )
    .await;
    assert_eq!(s, 200, "{stats}");
    assert_eq!(
        (
            stats["attempts"].as_u64(),
            stats["by_outcome"]["delivered"].as_u64(),
            stats["success_rate"].as_f64().map(|r| (r * 3.0).round())
        ),
        (Some(3), Some(1), Some(1.0)),
        "{stats}"
    );
    assert!(stats["time_to_webhook_ms"]["p99"].is_u64(), "{stats}");
    let hourly: u64 = stats["hours"]
        .as_array()
        .map(|h| h.iter().filter_map(|x| x["attempts"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(hourly, 3, "the hours hold the three attempts: {stats}");
    assert_eq!(
        (
            stats["open_failures"]["failing"].as_u64(),
            stats["open_failures"]["dead_lettered"].as_u64()
        ),
        (Some(0), Some(0)),
        "delivered in the end: nothing open"
    );
    let (s, _) = get(
        &api,
        &token,
        &format!("/v1/subscriptions/{flaky}-s/stats?window=2h"),
    )
    .await;
    assert_eq!(s, 400, "a malformed parameter is a bad request");

    // Another partner: 404 for the message and for the subscription's list, whatever
    // it tries.
    let stranger = partner_token(&other);
    assert_eq!(message(&api, &stranger, &id).await.0, 404);
    let list = format!("/v1/subscriptions/{flaky}-s/messages");
    let (s, _) = get(&api, &stranger, &list).await;
    assert_eq!(s, 404);
    let (s, _) = get(
        &api,
        &stranger,
        &format!("/v1/messages/{id}?subscription_id={flaky}-s"),
    )
    .await;
    assert_eq!(s, 404, "naming the subscription does not open it");

    // The owner's list, filtered; a bad filter is a bad request naming its field.
    let (s, page) = get(&api, &token, &format!("{list}?status=delivered")).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "{page}");
    assert_eq!(page["items"][0]["webhook_id"], id.as_str());
    let (s, page) = get(&api, &token, &format!("{list}?status=failing")).await;
    assert_eq!((s, page["items"].as_array().map(Vec::len)), (200, Some(0)));
    let (s, bad) = get(&api, &token, &format!("{list}?status=lost")).await;
    assert_eq!(
        (s, bad["error"]["field"].as_str()),
        (400, Some("status")),
        "{bad}"
    );
    let (s, bad) = get(&api, &token, &format!("{list}?since=yesterday")).await;
    assert_eq!(
        (s, bad["error"]["field"].as_str()),
        (400, Some("since")),
        "{bad}"
    );
    let (s, bad) = message(&api, &token, "not%20an%20id").await;
    assert_eq!(
        (s, bad["error"]["field"].as_str()),
        (400, Some("webhook_id")),
        "{bad}"
    );

    // Resend: the same event again, the same webhook-id, logged as a resend; another
    // partner cannot.
    let resend = format!("/v1/messages/{id}/resend");
    let (s, _) = api
        .call(reqwest::Method::POST, &resend, Some(&stranger), None)
        .await;
    assert_eq!(s, 404);
    let (s, accepted) = api
        .call(reqwest::Method::POST, &resend, Some(&token), None)
        .await;
    assert_eq!(s, 202, "{accepted}");
    let again_received = eventually(Duration::from_secs(30), || {
        flaky_rx
            .deliveries()
            .iter()
            .filter(|d| d.webhook_id == id)
            .count()
            >= 2
    })
    .await;
    assert!(
        again_received,
        "the resend arrived: a second delivery with the same webhook-id"
    );
    let mut resent = Value::Null;
    for _ in 0..100 {
        let (_, b) = message(&api, &token, &id).await;
        if b["attempts"].as_array().is_some_and(|a| a.len() == 4) {
            resent = b;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        (
            resent["attempts"][3]["trigger"].as_str(),
            resent["attempts"][3]["status_code"].as_u64()
        ),
        (Some("resend"), Some(204)),
        "{resent:#}"
    );
    let body = resent;
    // Once Kafka no longer keeps the record (retention: DeleteRecords here), a resend
    // is 409 saying so, and nothing is sent or logged.
    e2e::delete_all_records_on(
        &e2e::brokers(),
        &dispatcher::subscriptions::delivery_topic(&flaky),
    )
    .await;
    let (s, refused) = api
        .call(reqwest::Method::POST, &resend, Some(&token), None)
        .await;
    assert_eq!(s, 409, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("no longer kept"),
        "{refused}"
    );
    let (_, after) = message(&api, &token, &id).await;
    assert_eq!(after["attempts_count"], 4, "nothing sent: {after}");

    // The view's gauges: what it holds, and that it has read the topic to its end.
    let mut gauges = false;
    for _ in 0..60 {
        let text = reqwest::get(format!("{}/metrics", api.url))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        gauges = e2e::metric_value(&text, "dispatcher_log_view_records ").is_some_and(|n| n >= 4.0)
            && e2e::metric_value(&text, "dispatcher_log_view_lag_records ") == Some(0.0);
        if gauges {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(gauges, "the view's records and lag gauges on /metrics");

    // A second API instance keeps a view of its own and answers the same.
    let second = world.start_api(&tokens(&[&flaky, &other]), &[]);
    let mut same = Value::Null;
    for _ in 0..100 {
        let (_, b) = message(&second, &token, &id).await;
        if b["attempts"] == body["attempts"] {
            same = b;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(same, body, "both instances answer the same");
    drop(second);

    // A restart of the API: the view goes on from where it stopped, nothing doubled.
    let pid = api.process.0.id().to_string();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status();
    assert!(api.process.0.wait().expect("wait").success());
    api = world.start_api(
        &tokens(&[&flaky, &other]),
        &[
            "--attempts-topic",
            &world.attempts_topic,
            "--log-view-path",
            &view,
        ],
    );
    let (s, again) = message(&api, &token, &id).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        again["attempts"], body["attempts"],
        "the same attempts, once each"
    );
    assert_eq!(again["attempts_count"], 4);
    drop(api);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{view}{suffix}"));
    }
}

/// Whatever a partner's server answers (a megabyte of binary, invalid UTF-8, HTML) is
/// kept capped at 4 KiB and shown as JSON text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_answer_is_kept_capped_and_shown_as_text() {
    use axum::http::{header, StatusCode};
    // A server answering 400 with 1 MiB: HTML, then bytes that are not UTF-8.
    let mut body = b"<html><script>alert(1)</script>".to_vec();
    body.extend((0..(1 << 20)).map(|i: u32| (i % 256) as u8));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let body = body.clone();
            async move {
                (
                    StatusCode::BAD_REQUEST,
                    [(header::CONTENT_TYPE, "text/html")],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("bytes");
    let yaml = format!(
        "subscriptions:\n  - id: {partner}-s\n    partner_id: {partner}\n    url: {url}\n    event_types: [order.created]\n    secrets: [\"{}\"]\n",
        dispatcher::webhook::signing::Secret::generate()
    );
    assert!(world.apply(&yaml).status.success());
    let api = world.start_api(&tokens(&[&partner]), &[]);
    let dispatcher = world.start();
    let publisher = world.publisher().await;
    let event = OrderEvent::sample(EventType::OrderCreated, "order-bytes", &partner, 1);
    publisher.publish(&event).await.expect("publish");
    let id = event.event_id().to_string();
    let token = partner_token(&partner);
    let mut found = Value::Null;
    for _ in 0..300 {
        let (s, m) = message(&api, &token, &id).await;
        if s == 200 && m["status"] == "dead_lettered" {
            found = m;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attempt = &found["attempts"][0];
    let excerpt = attempt["response_excerpt"]
        .as_str()
        .unwrap_or_else(|| panic!("an excerpt as text: {found:#}\n{}", dispatcher.log_tail()));
    assert!(
        excerpt.starts_with("<html><script>"),
        "kept as sent, as text"
    );
    assert!(
        excerpt.len() <= 4096 && excerpt.len() > 1000,
        "capped at 4 KiB: {} bytes",
        excerpt.len()
    );
    assert!(excerpt.contains('\u{FFFD}'), "invalid UTF-8 replaced");
    assert_eq!(attempt["response_content_type"], "text/html");
    assert_eq!(attempt["status_code"], 400);
}
