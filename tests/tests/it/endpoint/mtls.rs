//! Mutual TLS: every HTTPS webhook presents our client certificate; the pair rotates
//! without a restart and without losing a webhook; a pair that does not load keeps the
//! one in use; a subscription's own CA is the only one trusted for its server.

use super::*;
use e2e::tls::{Handshake, TestCa, TlsListener};

fn accepted_with(handshakes: &std::sync::Mutex<Vec<Handshake>>, fingerprint: &str) -> usize {
    handshakes
        .lock()
        .expect("handshakes")
        .iter()
        .filter(|h| matches!(h, Handshake::Accepted { client_cert: Some(c) } if c == fingerprint))
        .count()
}

const LOADED: &str = "dispatcher_client_cert_reloads_total{outcome=\"loaded\"} ";
const REFUSED: &str = "dispatcher_client_cert_reloads_total{outcome=\"refused\"} ";

/// Waits (at most 10 s) until the dispatcher's metric `line` is at least `n`.
async fn metric_reaches(dispatcher: &e2e::DispatcherProcess, line: &str, n: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while dispatcher.metric(line).await.unwrap_or(0.0) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{line}did not reach {n}\n{}",
            dispatcher.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_present_our_client_certificate_and_rotating_it_loses_nothing() {
    let ours = TestCa::new("orderhooks webhook clients");
    let partners_ca = TestCa::new("partner internal CA");
    let (first, second) = (ours.client("orderhooks 1"), ours.client("orderhooks 2"));
    let dir = tempfile::tempdir().expect("dir");
    let (cert, key) = (dir.path().join("client.pem"), dir.path().join("client.key"));
    replace_file(&cert, &first.cert_pem);
    replace_file(&key, &first.key_pem);

    // The partner's server: its certificate from its own CA, and it lets in only
    // clients whose certificate our CA signed.
    let (listener, handshakes) = TlsListener::bind(&partners_ca.server(), Some(&ours)).await;
    let secret = Secret::generate();
    let receiver = Receiver::serve(listener, true, &secret, Script::default()).expect("receiver");

    // Without a client certificate (our own client, trusting the partner's CA): refused.
    let allow = std::sync::Arc::new(
        dispatcher::webhook::ssrf::Allowlist::parse(&["127.0.0.1".into()]).expect("allow"),
    );
    let bare = dispatcher::webhook::client::WebhookClient::new(allow, Duration::from_secs(2))
        .expect("client");
    let ca = dispatcher::webhook::tls::TrustedCa::parse(&partners_ca.pem()).expect("ca");
    let url = Ok(reqwest::Url::parse(&receiver.url()).expect("url"));
    let report = bare
        .send(&dispatcher::webhook::client::Webhook {
            url: &url,
            id: "msg_no_cert",
            body: &bytes::Bytes::from_static(b"{}"),
            secrets: &[],
            traceparent: None,
            timeout: Duration::from_secs(5),
            ca: Some(&ca),
        })
        .await;
    match &report.attempt {
        dispatcher::webhook::outcome::Attempt::Transport(text) => {
            assert_eq!(dispatcher::attempts::transport_class(text), "tls", "{text}")
        }
        other => panic!("a call without a client certificate got through: {other:?}"),
    }
    assert_eq!(receiver.requests(), 0);

    let mut world = DispatchWorld::new("127.0.0.1").await;
    world.run_args.extend([
        "--client-cert".into(),
        cert.display().to_string(),
        "--client-key".into(),
        key.display().to_string(),
    ]);
    let partner = unique("mtls");
    let stranger = unique("noca");
    let strangers_secret = Secret::generate();
    // (JSON is YAML: the PEM goes in as a JSON string.)
    let file = json!({"subscriptions": [
        {"id": format!("{partner}-s"), "partner_id": partner, "url": receiver.url(),
         "event_types": ["order.created"], "secrets": [secret],
         "tls": {"ca_pem": partners_ca.pem()}},
        // The same server, without the partner's CA: its certificate is trusted by no
        // public root.
        {"id": format!("{stranger}-s"), "partner_id": stranger, "url": receiver.url(),
         "event_types": ["order.created"], "secrets": [strangers_secret],
         "retry": {"max_attempts": 1}},
    ]});
    let applied = world.apply(&file.to_string());
    assert!(applied.status.success(), "{applied:?}");
    let dispatcher = world.start();
    let p = world.publisher().await;
    let orders: Vec<String> = (0..5).map(|i| format!("o-{i}")).collect();

    let mut sent = publish(&p, &partner, &orders).await;
    assert!(
        eventually(Duration::from_secs(30), || receiver.unique() == sent.len()).await,
        "delivered over mutual TLS: {} of {}\n{}",
        receiver.unique(),
        sent.len(),
        dispatcher.log_tail()
    );
    assert!(accepted_with(&handshakes, &first.fingerprint) >= 1);
    let refused_before = handshakes
        .lock()
        .expect("handshakes")
        .iter()
        .filter(|h| matches!(h, Handshake::Refused(_)))
        .count();
    assert_eq!(
        refused_before, 1,
        "only the call without a certificate was refused"
    );

    // Rotation while events flow: the key first, then the certificate. Between the
    // two the watcher sees a mismatched pair: refused, and the pair in use stays.
    let publishing = {
        let (p, partner, orders) = (world.publisher().await, partner.clone(), orders.clone());
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for _ in 0..8 {
                sent.extend(publish(&p, &partner, &orders).await);
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            sent
        })
    };
    let flowing = sent.len();
    assert!(
        eventually(Duration::from_secs(30), || receiver.unique() > flowing).await,
        "events flow before the rotation"
    );
    replace_file(&key, &second.key_pem);
    metric_reaches(&dispatcher, REFUSED, 1.0).await;
    assert!(dispatcher
        .log_tail()
        .contains("does not belong to the certificate"));
    replace_file(&cert, &second.cert_pem);
    sent.extend(publishing.await.expect("published"));
    assert!(
        eventually(Duration::from_secs(30), || receiver.unique() == sent.len()).await,
        "every webhook delivered across the rotation: {} of {}\n{}",
        receiver.unique(),
        sent.len(),
        dispatcher.log_tail()
    );
    e2e::assert_per_order(&receiver, &sent);
    // Until the rotation is seen (the files are looked at every second), calls go on
    // with the first pair; once it is, new connections present the second.
    metric_reaches(&dispatcher, LOADED, 1.0).await;
    let more = publish(&p, &partner, &orders).await;
    sent.extend(more);
    assert!(
        eventually(Duration::from_secs(30), || receiver.unique() == sent.len()).await,
        "delivered after the rotation"
    );
    assert!(
        accepted_with(&handshakes, &second.fingerprint) >= 1,
        "the receiver saw the new certificate: {:?}\n{}",
        handshakes.lock().expect("handshakes"),
        dispatcher.log_tail()
    );

    // A pair that does not load (a truncated key): refused with a log line naming it,
    // and the pair in use stays.
    replace_file(&key, "-----BEGIN PRIVATE KEY-----\ntruncated\n");
    metric_reaches(&dispatcher, REFUSED, 2.0).await;
    assert!(
        dispatcher
            .log_tail()
            .contains("client certificate not reloaded")
            && dispatcher.log_tail().contains("not a PEM key"),
        "the refusal is logged, naming why\n{}",
        dispatcher.log_tail()
    );
    let more = publish(&p, &partner, &orders).await;
    sent.extend(more);
    assert!(
        eventually(Duration::from_secs(30), || receiver.unique() == sent.len()).await,
        "still delivered with the pair in use"
    );
    assert_eq!(
        dispatcher.metric(LOADED).await,
        Some(1.0),
        "none loaded since"
    );
    // SIGHUP reads the files again at once, changed or not (here the bad pair again:
    // refused once more, the pair in use stays).
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &dispatcher.process.0.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    metric_reaches(&dispatcher, REFUSED, 3.0).await;
    assert!(
        dispatcher.log_tail().contains("SIGHUP"),
        "{}",
        dispatcher.log_tail()
    );
    assert!(receiver
        .deliveries()
        .iter()
        .all(|d| d.partner_id == partner));

    // The subscription without the partner's CA: its server's certificate is not
    // trusted, and the delivery log says `tls`.
    let noca = publish(&p, &stranger, &orders[..1]).await;
    let id = format!("{stranger}-s");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let attempt = loop {
        let records = log_records(&world, &id).await;
        if let Some(a) = records.into_iter().find(|r| r["attempt"] == 1) {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt logged for {id}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(attempt["webhook_id"], noca[0].event_id().to_string());
    assert_eq!(attempt["error"], "tls", "{attempt}");
    assert!(
        attempt["error_detail"]
            .as_str()
            .is_some_and(|d| d.contains("certificate")),
        "{attempt}"
    );
    assert!(receiver
        .deliveries()
        .iter()
        .all(|d| d.partner_id != stranger));
    assert_eq!(dispatcher.terminate(), Some(0));
}
