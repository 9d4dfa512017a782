//! A second factor for the hazardous operations, on the real stack: codes computed in
//! the test from the enrolled secret (RFC 6238, checked against the RFC's vectors in
//! `totp.rs`); enrolment enforced only once confirmed; a code accepted once, also
//! across API instances; wrong codes locked out; every outcome audited; an operator's
//! reset; `--require-second-factor`.

use super::*;
use dispatcher::api::second_factor::totp;
use e2e::{api_tokens, partner_token, ApiProcess, ADMIN_TOKEN};

/// A call with an optional `X-Second-Factor`: (status, Retry-After, body).
async fn call(
    api: &ApiProcess,
    method: reqwest::Method,
    path: &str,
    token: &str,
    code: Option<&str>,
    body: Option<Value>,
) -> (u16, Option<String>, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", api.url))
        .bearer_auth(token);
    if let Some(code) = code {
        request = request.header("X-Second-Factor", code);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("call");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

/// A code of six digits that is none of the current ones.
fn wrong(secret: &[u8]) -> String {
    let taken: Vec<String> = (-1..=1).map(|o| code(secret, o)).collect();
    (0..10u32)
        .map(|d| d.to_string().repeat(6))
        .find(|c| !taken.contains(c))
        .expect("a wrong code")
}

/// The code of the step `offset` steps from now.
fn code(secret: &[u8], offset: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    totp::code(secret, totp::step_at(now) + offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hazardous_changes_need_a_code_used_once_and_wrong_codes_lock_out() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let (partner, other) = (unique("tfa"), unique("tfb"));
    let token = partner_token(&partner);
    let tokens = api_tokens(&[&partner, &other]);
    let topic = ["--second-factor-topic", &unique("factors")].map(str::to_string);
    let plain: Vec<&str> = topic.iter().map(String::as_str).collect();
    let api = world.start_api(
        &tokens,
        &[&plain[..], &["--require-endpoint-verification", "false"]].concat(),
    );
    // A second instance of the same deployment, which also requires enrolment.
    let strict = world.start_api(
        &tokens,
        &[
            &plain[..],
            &[
                "--require-second-factor",
                "--require-endpoint-verification",
                "false",
            ],
        ]
        .concat(),
    );
    let url = "http://127.0.0.1:9/hook";
    let new = |n: u32| json!({"id": format!("{partner}.s{n}"), "url": url, "event_types": ["order.created"]});
    let post = reqwest::Method::POST;

    // Not enrolled: nothing asked (but where enrolment is required).
    let (s, _, created) = call(
        &api,
        post.clone(),
        "/v1/subscriptions",
        &token,
        None,
        Some(new(1)),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let (s, _, refused) = call(
        &strict,
        post.clone(),
        "/v1/subscriptions",
        &partner_token(&other),
        None,
        Some(json!({"url": url, "event_types": ["order.created"]})),
    )
    .await;
    assert_eq!(
        (s, refused["error"]["code"].as_str()),
        (403, Some("second_factor_required")),
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("/totp")),
        "{refused}"
    );

    // Enrol: the URI once; not enforced until confirmed.
    let (s, _, enrolled) = call(
        &api,
        post.clone(),
        &format!("/v1/partners/{partner}/totp"),
        &token,
        None,
        None,
    )
    .await;
    assert_eq!(s, 201, "{enrolled}");
    let uri = enrolled["otpauth_uri"].as_str().expect("uri");
    assert!(uri.starts_with("otpauth://totp/Orderhooks"), "{uri}");
    let secret = uri
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("secret="))
        .and_then(totp::base32_decode)
        .expect("secret");
    let (s, _, _) = call(
        &api,
        post.clone(),
        "/v1/subscriptions",
        &token,
        None,
        Some(new(2)),
    )
    .await;
    assert_eq!(s, 201, "pending: not enforced");
    // Another partner's enrolment is not this token's business.
    let (s, _, _) = call(
        &api,
        reqwest::Method::GET,
        &format!("/v1/partners/{other}/totp"),
        &token,
        None,
        None,
    )
    .await;
    assert_eq!(s, 404);

    let confirm = |c: String| json!({ "code": c });
    let (s, _, refused) = call(
        &api,
        post.clone(),
        &format!("/v1/partners/{partner}/totp/confirm"),
        &token,
        None,
        Some(confirm(wrong(&secret))),
    )
    .await;
    assert_eq!(
        (s, refused["error"]["code"].as_str()),
        (403, Some("second_factor_invalid")),
        "{refused}"
    );
    let (s, _, ok) = call(
        &api,
        post.clone(),
        &format!("/v1/partners/{partner}/totp/confirm"),
        &token,
        None,
        Some(confirm(code(&secret, -1))),
    )
    .await;
    assert_eq!(s, 200, "{ok}");

    // Enforced: without a code, refused, naming what is missing.
    let (s, _, missing) = call(
        &api,
        post.clone(),
        "/v1/subscriptions",
        &token,
        None,
        Some(new(3)),
    )
    .await;
    assert_eq!(
        (s, missing["error"]["code"].as_str()),
        (403, Some("second_factor_required")),
        "{missing}"
    );
    assert!(missing["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("X-Second-Factor")));
    let current = code(&secret, 0);
    let (s, _, created) = call(
        &api,
        post.clone(),
        "/v1/subscriptions",
        &token,
        Some(&current),
        Some(new(3)),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    // The same code again, on the other instance: refused (a code is accepted once).
    let rotate = format!("/v1/subscriptions/{partner}.s1/rotate-secret");
    let (s, _, replayed) = call(&strict, post.clone(), &rotate, &token, Some(&current), None).await;
    assert_eq!(
        (s, replayed["error"]["code"].as_str()),
        (403, Some("second_factor_invalid")),
        "{replayed}"
    );
    // A URL change is hazardous; other changes are not.
    let (s, _, _) = call(
        &api,
        reqwest::Method::PATCH,
        &format!("/v1/subscriptions/{partner}.s1"),
        &token,
        None,
        Some(json!({"max_in_flight": 4})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, moved) = call(
        &api,
        reqwest::Method::PATCH,
        &format!("/v1/subscriptions/{partner}.s1"),
        &token,
        None,
        Some(json!({"url": "http://127.0.0.1:10/hook"})),
    )
    .await;
    assert_eq!(
        (s, moved["error"]["code"].as_str()),
        (403, Some("second_factor_required"))
    );

    // A manage link for the partner needs the partner's code, from the operator too.
    let link = json!({"partner": partner, "scope": "manage", "ttl_secs": 600});
    let links = "/v1/admin/portal-links";
    let (s, _, refused) = call(
        &api,
        post.clone(),
        links,
        ADMIN_TOKEN,
        None,
        Some(link.clone()),
    )
    .await;
    assert_eq!(
        (s, refused["error"]["code"].as_str()),
        (403, Some("second_factor_required"))
    );
    let (s, _, issued) = call(
        &api,
        post.clone(),
        links,
        ADMIN_TOKEN,
        Some(&code(&secret, 1)),
        Some(link.clone()),
    )
    .await;
    assert_eq!(s, 201, "{issued}");
    // (A read-only link is not hazardous.)
    let read = json!({"partner": partner, "scope": "read", "ttl_secs": 600});
    let (s, _, _) = call(&api, post.clone(), links, ADMIN_TOKEN, None, Some(read)).await;
    assert_eq!(s, 201);

    // Wrong codes: two so far (the wrong confirmation, the replay); three more and the
    // operations answer 429 with Retry-After, a right code included.
    let delete = format!("/v1/subscriptions/{partner}.s2");
    // (A code that cannot be one is a malformed request, not a wrong code.)
    let (s, _, malformed) = call(
        &api,
        reqwest::Method::DELETE,
        &delete,
        &token,
        Some("12345"),
        None,
    )
    .await;
    assert_eq!(
        (s, malformed["error"]["code"].as_str()),
        (400, Some("invalid_parameter")),
        "{malformed}"
    );
    assert_eq!(malformed["error"]["field"], "X-Second-Factor");
    for n in 0..3 {
        let (s, _, e) = call(
            &api,
            reqwest::Method::DELETE,
            &delete,
            &token,
            Some(&wrong(&secret)),
            None,
        )
        .await;
        assert_eq!(
            (s, e["error"]["code"].as_str()),
            (403, Some("second_factor_invalid")),
            "wrong code {n}: {e}"
        );
    }
    let (s, retry_after, locked) = call(
        &api,
        reqwest::Method::DELETE,
        &delete,
        &token,
        Some(&code(&secret, 1)),
        None,
    )
    .await;
    assert_eq!(
        (s, locked["error"]["code"].as_str()),
        (429, Some("second_factor_locked")),
        "{locked}"
    );
    let wait: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((800..=901).contains(&wait), "about 15 minutes: {wait}");
    let (s, _, _) = call(
        &strict,
        reqwest::Method::DELETE,
        &delete,
        &token,
        Some(&code(&secret, 1)),
        None,
    )
    .await;
    assert_eq!(s, 429, "locked on every instance");
    // A partner cannot re-enrol over a confirmed authenticator; an operator resets it.
    let (s, _, _) = call(
        &api,
        post.clone(),
        &format!("/v1/partners/{partner}/totp"),
        &token,
        None,
        None,
    )
    .await;
    assert_eq!(s, 409);
    let (s, _, _) = call(
        &api,
        post.clone(),
        &format!("/v1/admin/partners/{partner}/totp/reset"),
        &token,
        None,
        None,
    )
    .await;
    assert_eq!(s, 403, "a partner token does not reset");
    let (s, _, reset) = call(
        &api,
        post.clone(),
        &format!("/v1/admin/partners/{partner}/totp/reset"),
        ADMIN_TOKEN,
        None,
        None,
    )
    .await;
    assert_eq!(s, 200, "{reset}");
    let (s, _, state) = call(
        &api,
        reqwest::Method::GET,
        &format!("/v1/partners/{partner}/totp"),
        &token,
        None,
        None,
    )
    .await;
    assert_eq!((s, state["state"].as_str()), (200, Some("none")));
    let (s, _, _) = call(&api, reqwest::Method::DELETE, &delete, &token, None, None).await;
    assert_eq!(s, 204, "after the reset, not asked");

    // Every outcome is in the audit trail.
    let audit =
        e2e::read_to_end_on(&world.brokers, &api.audit_topic, Duration::from_secs(10)).await;
    let actions: Vec<(String, String)> = audit
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(rdkafka::Message::payload(m)?).ok())
        .filter(|a| {
            a["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("second-factor"))
        })
        .map(|a| {
            (
                a["actor"].as_str().unwrap_or("").to_string(),
                a["action"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let me = format!("partner:{partner}");
    for expected in [
        (me.as_str(), "second-factor-enrol"),
        (me.as_str(), "second-factor-refused"),
        (me.as_str(), "second-factor-confirm"),
        (me.as_str(), "second-factor-required"),
        (me.as_str(), "second-factor-accepted"),
        (me.as_str(), "second-factor-replayed"),
        (me.as_str(), "second-factor-locked"),
        ("admin", "second-factor-accepted"),
        ("admin", "second-factor-reset"),
    ] {
        assert!(
            actions
                .iter()
                .any(|(a, b)| a == expected.0 && b == expected.1),
            "{expected:?} audited: {actions:?}"
        );
    }
}
