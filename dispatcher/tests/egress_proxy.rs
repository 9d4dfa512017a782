//! Webhooks ignore the proxy variables of the environment (a proxy resolves the
//! partner's host itself, so the SSRF guard would never see it) and go through a proxy
//! only when one is configured explicitly (`--egress-proxy`).
//!
//! Its own test binary: it sets process-wide environment variables.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dispatcher::webhook::client::{Webhook, WebhookClient};
use dispatcher::webhook::outcome::Attempt;
use dispatcher::webhook::signing::Secret;
use dispatcher::webhook::ssrf::Allowlist;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A stand-in for a company proxy on 127.0.0.1: it counts connections and answers 200
/// to whatever it is asked, so a webhook sent through it looks delivered.
async fn counting_proxy() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    (url, seen)
}

async fn send(client: &WebhookClient, url: &str) -> Attempt {
    let secret = Secret::parse(&Secret::generate()).expect("secret");
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string());
    let body = Bytes::from_static(b"{}");
    client
        .send(&Webhook {
            url: &parsed,
            id: "msg_1",
            body: &body,
            secrets: std::slice::from_ref(&secret),
            traceparent: None,
            timeout: Duration::from_secs(5),
            ca: None,
        })
        .await
        .attempt
}

#[tokio::test]
async fn proxy_variables_do_not_bypass_the_ssrf_guard_and_an_explicit_proxy_is_used() {
    let (proxy, through_proxy) = counting_proxy().await;
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        std::env::set_var(name, &proxy);
    }
    // As in a company network: the broker and the registry are reached directly.
    std::env::set_var("NO_PROXY", "127.0.0.1");
    std::env::set_var("no_proxy", "127.0.0.1");

    // Public addresses only, plain http allowed for host names (so only the guard can
    // refuse these).
    let allowlist = Arc::new(Allowlist::default().with_plain_http(true));
    let client =
        WebhookClient::new(Arc::clone(&allowlist), Duration::from_secs(2)).expect("client");
    for url in [
        "http://localhost:9/hook",
        "http://LOCALHOST:9/hook",
        "http://localhost.:9/hook",
        "https://localhost:9/hook",
    ] {
        match send(&client, url).await {
            Attempt::Refused(why) => assert!(why.contains("SSRF guard"), "{url}: {why}"),
            // `localhost.` does not resolve on every machine: then nothing is sent either.
            Attempt::Transport(why) if url.contains("localhost.") => {
                assert!(why.contains("dns error"), "{url}: {why}")
            }
            other => panic!("{url} must be refused by the guard, got {other:?}"),
        }
    }
    assert_eq!(
        through_proxy.load(Ordering::SeqCst),
        0,
        "no webhook may reach the proxy of the environment"
    );

    // An egress proxy configured on purpose carries the webhooks (it then enforces the
    // address rules for host names).
    let explicit =
        WebhookClient::with_egress_proxy(allowlist, Duration::from_secs(2), Some(&proxy))
            .expect("client");
    match send(&explicit, "http://hooks.partner.example/orders").await {
        Attempt::Status { status: 200, .. } => {}
        other => panic!("sent through the egress proxy, got {other:?}"),
    }
    assert_eq!(through_proxy.load(Ordering::SeqCst), 1);
    // IP literals are still judged by the guard before anything is sent.
    match send(&explicit, "http://10.11.12.13/hook").await {
        Attempt::Refused(why) => assert!(why.contains("private"), "{why}"),
        other => panic!("a private literal must be refused, got {other:?}"),
    }
    assert_eq!(through_proxy.load(Ordering::SeqCst), 1);
    // A proxy given by name (here `localhost`, a loopback name the guard would refuse
    // for a partner) is reached: its own name is not judged as a webhook target.
    let named_proxy = proxy.replace("127.0.0.1", "localhost");
    let by_name = WebhookClient::with_egress_proxy(
        Arc::new(Allowlist::default()),
        Duration::from_secs(2),
        Some(&named_proxy),
    )
    .expect("client");
    match send(&by_name, "http://hooks.partner.example/orders").await {
        Attempt::Status { status: 200, .. } => {}
        other => panic!("sent through the proxy named {named_proxy}, got {other:?}"),
    }
    assert_eq!(through_proxy.load(Ordering::SeqCst), 2);
    assert!(WebhookClient::with_egress_proxy(
        Arc::new(Allowlist::default()),
        Duration::from_secs(2),
        Some("not a url")
    )
    .is_err());
}
