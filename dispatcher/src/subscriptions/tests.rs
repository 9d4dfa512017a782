use super::*;

fn sub() -> Subscription {
    Subscription {
        id: "a-1".into(),
        partner_id: "partner-a".into(),
        url: "https://hooks.example.com/orders".into(),
        event_types: ["order.created".to_string()].into(),
        secrets: vec![Secret::generate()],
        internal: false,
        max_in_flight: 16,
        request_timeout_ms: 5000,
        retry: RetryPolicy::default(),
        rate_limit_per_sec: None,
        disabled: false,
        disconnected: None,
        tls: None,
        verification: None,
        filter: None,
        kind: Default::default(),
        paused: false,
        previous_secrets_until: None,
    }
}

fn error(f: impl FnOnce(&mut Subscription)) -> InvalidSubscription {
    let mut s = sub();
    f(&mut s);
    s.validate(&Allowlist::default()).expect_err("invalid")
}

#[test]
fn each_bad_field_is_named() {
    assert!(sub().validate(&Allowlist::default()).is_ok());
    assert_eq!(
        error(|s| s.partner_id = "Partner A".into()).field,
        "partner_id"
    );
    assert_eq!(error(|s| s.url = "ftp://x.example".into()).field, "url");
    assert_eq!(
        error(|s| s.url = "http://hooks.example.com".into()).field,
        "url"
    );
    assert_eq!(
        error(|s| s.url = "https://user:pw@hooks.example.com".into()).field,
        "url"
    );
    let ssrf = error(|s| s.url = "https://169.254.169.254/latest".into());
    assert!(ssrf.message.contains("link-local"), "{ssrf}");
    assert!(error(|s| s.url = "https://[::ffff:10.0.0.1]/".into())
        .message
        .contains("private"));
    let unknown = error(|s| s.event_types = ["order.shipped".to_string()].into());
    assert_eq!(unknown.field, "event_types");
    assert!(unknown
        .to_string()
        .contains("subscription `a-1`: event_types: unknown event type `order.shipped`"));
    assert_eq!(error(|s| s.secrets = vec!["plain".into()]).field, "secrets");
    assert_eq!(error(|s| s.secrets.clear()).field, "secrets");
    assert_eq!(error(|s| s.max_in_flight = 0).field, "max_in_flight");
    assert_eq!(error(|s| s.id = " ".into()).field, "id");
    for bad in ["", " a", "a b", "a/b", "-a", &"x".repeat(129), "é"] {
        let mut s = sub();
        s.id = bad.to_string();
        assert_eq!(s.validate_new_id().expect_err(bad).field, "id", "{bad:?}");
    }
    // An existing odd id read from the topic stays valid.
    let mut old = sub();
    old.id = "acme/orders".into();
    assert!(old.validate(&Allowlist::default()).is_ok());
    assert_eq!(
        error(|s| s.retry.max_attempts = 0).field,
        "retry.max_attempts"
    );
}

#[test]
fn numbers_past_their_bounds_are_refused_with_the_field() {
    let tiny = error(|s| s.rate_limit_per_sec = Some(1e-30));
    assert_eq!(tiny.field, "rate_limit_per_sec");
    assert!(tiny.message.contains("0.01"), "{tiny}");
    for bad in [f64::NAN, f64::INFINITY, 0.0, -1.0, 10_001.0] {
        assert_eq!(
            error(|s| s.rate_limit_per_sec = Some(bad)).field,
            "rate_limit_per_sec",
            "{bad}"
        );
    }
    assert_eq!(
        error(|s| s.retry.max_backoff_ms = u64::MAX).field,
        "retry.max_backoff_ms"
    );
    assert_eq!(
        error(|s| s.retry.max_elapsed_secs = u64::MAX).field,
        "retry.max_elapsed_secs"
    );
    assert_eq!(
        error(|s| s.retry.max_elapsed_secs = 0).field,
        "retry.max_elapsed_secs"
    );
    assert_eq!(
        error(|s| s.retry.max_attempts = u32::MAX).field,
        "retry.max_attempts"
    );
    let mut edge = sub();
    edge.rate_limit_per_sec = Some(MIN_RATE_PER_SEC);
    edge.retry.max_backoff_ms = MAX_BACKOFF_MS;
    edge.retry.max_elapsed_secs = MAX_ELAPSED_SECS;
    edge.retry.max_attempts = MAX_ATTEMPTS;
    assert!(edge.validate(&Allowlist::default()).is_ok());
}

#[test]
fn debug_output_never_shows_a_secret() {
    let s = sub();
    let text = format!("{s:?} {:?}", std::slice::from_ref(&s));
    let secret = s.secrets[0].trim_start_matches("whsec_");
    assert!(!text.contains(secret), "{text}");
    assert!(text.contains("secrets: [1 redacted]"), "{text}");
    assert!(text.contains("partner-a"), "{text}");
}

#[test]
fn plain_http_is_allowed_only_to_allowlisted_addresses() {
    let mut s = sub();
    s.url = "http://127.0.0.1:8080/hook".into();
    assert_eq!(
        s.validate(&Allowlist::default())
            .expect_err("loopback")
            .field,
        "url"
    );
    assert!(s
        .validate(&Allowlist::parse(&["127.0.0.1".into()]).expect("list"))
        .is_ok());
    s.url = "http://partner:8090/webhook".into();
    assert_eq!(
        s.validate(&Allowlist::default())
            .expect_err("plain http")
            .field,
        "url"
    );
    assert!(s
        .validate(&Allowlist::default().with_plain_http(true))
        .is_ok());
}

#[test]
fn partners_see_only_their_own_orders_unless_internal() {
    let mut s = sub();
    assert!(s.wants("order.created", "partner-a"));
    assert!(!s.wants("order.created", "partner-b"));
    assert!(!s.wants("order.cancelled", "partner-a"));
    s.internal = true;
    assert!(s.wants("order.created", "partner-b"));
    s.disabled = true;
    assert!(!s.wants("order.created", "partner-a"));
}

#[test]
fn a_file_with_a_duplicate_or_a_typo_is_refused_with_its_name() {
    let secret = Secret::generate();
    let text = format!("subscriptions:\n  - id: x\n    partner_id: p\n    url: https://h.example\n    event_types: [order.created]\n    secrets: [{secret}]\n    max_inflight: 3\n");
    assert!(SubscriptionFile::parse(&text, &Allowlist::default())
        .expect_err("typo")
        .contains("max_inflight"));
    let one = format!("  - id: x\n    partner_id: p\n    url: https://h.example\n    event_types: [order.created]\n    secrets: [{secret}]\n");
    let twice = format!("subscriptions:\n{one}{one}");
    assert!(SubscriptionFile::parse(&twice, &Allowlist::default())
        .expect_err("dup")
        .contains("appears twice"));
}

#[test]
fn a_file_with_a_bad_filter_is_refused_naming_where() {
    let secret = Secret::generate();
    let file = |filter: &str| {
        format!("subscriptions:\n  - id: x\n    partner_id: p\n    url: https://h.example\n    event_types: [order.created]\n    secrets: [{secret}]\n    filter: '{filter}'\n")
    };
    let refused = SubscriptionFile::parse(
        &file("event.order.total.amount_minor >"),
        &Allowlist::default(),
    )
    .expect_err("syntax");
    assert!(
        refused.starts_with("subscription `x`: filter: at line 1, column 33: "),
        "{refused}"
    );
    let refused = SubscriptionFile::parse(&file("event.reason == \"x\""), &Allowlist::default())
        .expect_err("not a field of order.created");
    assert!(refused.contains("no field `reason`"), "{refused}");
    let parsed = SubscriptionFile::parse(
        &file("event.order.total.amount_minor > 100"),
        &Allowlist::default(),
    )
    .expect("valid");
    assert_eq!(
        parsed[0].filter.as_deref(),
        Some("event.order.total.amount_minor > 100")
    );
}

#[test]
fn https_only_refuses_plain_http_even_to_an_allowlisted_address() {
    let mut s = sub();
    s.url = "http://127.0.0.1:9000/hook".into();
    let allow = Allowlist::parse(&["127.0.0.1".into()]).expect("allowlist");
    assert!(s.validate(&allow).is_ok(), "allowlisted plain http");
    let only = allow.with_https_only(true);
    let e = s.validate(&only).expect_err("https only");
    assert_eq!(e.field, "url");
    assert!(e.message.contains("--https-only"), "{e}");
    let dev = Allowlist::default()
        .with_plain_http(true)
        .with_https_only(true);
    s.url = "http://hooks.example.com/x".into();
    assert_eq!(s.validate(&dev).expect_err("https only wins").field, "url");
}

#[test]
fn a_ca_that_does_not_parse_is_refused_naming_the_field_and_the_url_in_force_follows_verification()
{
    let e = error(|s| {
        s.tls = Some(EndpointTls {
            ca_pem: Some(
                "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into(),
            ),
        })
    });
    assert_eq!(e.field, "tls.ca_pem");
    let mut s = sub();
    assert_eq!(s.delivery_url(), Some(s.url.as_str()), "grandfathered");
    let pending = |previous: Option<&str>| Verification {
        state: VerificationState::PendingVerification,
        url: None,
        previous_tls: None,
        previous_url: previous.map(str::to_string),
        since: chrono::Utc::now(),
        verified_at: None,
        last_error: None,
    };
    s.verification = Some(pending(None));
    assert_eq!(s.delivery_url(), None, "a new URL not verified: held");
    s.verification = Some(pending(Some("https://old.example.com/h")));
    assert_eq!(s.delivery_url(), Some("https://old.example.com/h"));
    if let Some(v) = s.verification.as_mut() {
        v.state = VerificationState::Verified;
    }
    assert_eq!(s.delivery_url(), Some(s.url.as_str()));
    // A verification of another URL (two changes merged) does not count for this one.
    if let Some(v) = s.verification.as_mut() {
        v.url = Some("https://old.example.com/h".into());
    }
    assert_eq!(s.delivery_url(), None);
}
