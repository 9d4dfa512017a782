//! Bad URLs and fields are refused with the field named.

use super::*;

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

/// `--https-only` (#25): a plain http URL is refused wherever a subscription is
/// validated, to an allowlisted address too, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_only_refuses_plain_http_in_the_api_and_in_apply() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("tls-only");
    let api = world.start_api(&tokens(&[&partner]), &["--https-only"]);
    let (s, e) = api
        .create_subscription(
            partner_token(&partner),
            json!({"url": "http://127.0.0.1:9/hook", "event_types": ["order.created"]}),
        )
        .await;
    assert_eq!((s, e["error"]["field"].as_str()), (422, Some("url")), "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("https-only")),
        "{e}"
    );
    let dir = std::env::temp_dir();
    let file = dir.join(format!("{}.yaml", unique("subs")));
    std::fs::write(
        &file,
        format!("subscriptions:\n  - id: {partner}-s\n    partner_id: {partner}\n    url: http://127.0.0.1:9/hook\n    event_types: [order.created]\n    secrets: [\"{}\"]\n",
            dispatcher::webhook::signing::Secret::generate()),
    )
    .expect("file");
    let mut args = world.common_args();
    args.extend([
        "--https-only".into(),
        "subscriptions".into(),
        "apply".into(),
        file.display().to_string(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = e2e::run("dispatcher", &refs, "");
    let _ = std::fs::remove_file(&file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "refused");
    assert!(
        stderr.contains("url") && stderr.contains("https-only"),
        "{stderr}"
    );
}
