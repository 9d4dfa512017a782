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
