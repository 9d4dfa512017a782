//! The ownership challenge against real receivers that answer right, wrong, late and
//! never: a new URL gets nothing until it answers; its events wait in Kafka and arrive
//! in order once it does; after a URL change the old URL keeps receiving until the new
//! one is verified.

use super::*;
use consumer_examples::receiver::ChallengeAnswer;
use e2e::{api_tokens, partner_token, ApiProcess};

/// Challenges time out after 1 s, and a check fails 3 s after it started.
const FAST: &[&str] = &[
    "--endpoint-verification-window-secs",
    "3",
    "--endpoint-verification-timeout-ms",
    "1000",
];

/// Creates a subscription of `partner` for order.created at `addr` (nothing listens
/// there yet): its id and secret.
async fn create(api: &ApiProcess, token: &str, addr: &str) -> (String, String) {
    let (status, created) = api
        .create_subscription(
            token.to_string(),
            json!({"url": format!("http://{addr}/webhook"), "event_types": ["order.created"]}),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["verification"]["state"], "pending_verification",
        "{created}"
    );
    assert!(
        created["verification"].get("delivering_to").is_none(),
        "{created}"
    );
    (
        created["id"].as_str().expect("id").to_string(),
        created["secret"].as_str().expect("secret").to_string(),
    )
}

async fn receiver_at(addr: &str, secret: &str, challenge: ChallengeAnswer) -> Receiver {
    Receiver::start(
        addr.parse().expect("addr"),
        secret,
        Script {
            challenge,
            ..Default::default()
        },
    )
    .await
    .expect("receiver")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_url_gets_nothing_until_it_answers_the_challenge_and_then_everything_in_order() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("verify");
    let token = partner_token(&partner);
    let api = world.start_api(&api_tokens(&[&partner]), FAST);
    let dispatcher = world.start();
    let p = world.publisher().await;

    let answers = [
        ChallengeAnswer::Right,
        ChallengeAnswer::Wrong,
        ChallengeAnswer::Late,
        ChallengeAnswer::Never,
        ChallengeAnswer::Ignore,
    ];
    let mut endpoints = Vec::new();
    for answer in answers {
        let addr = e2e::closed_port();
        let (id, secret) = create(&api, &token, &addr).await;
        endpoints.push((answer, addr, id, secret));
    }
    // Published before any endpoint listens: the events wait.
    let orders: Vec<String> = (0..3).map(|i| format!("o-{i}")).collect();
    let mut sent = publish(&p, &partner, &orders).await;
    sent.extend(publish(&p, &partner, &orders).await);
    let mut receivers = Vec::new();
    for (answer, addr, _, secret) in &endpoints {
        receivers.push(receiver_at(addr, secret, *answer).await);
    }

    let right = &endpoints[0].2;
    api.wait_verification(&token, right, "verified").await;
    assert!(
        eventually(Duration::from_secs(30), || receivers[0].unique()
            == sent.len())
        .await,
        "the verified endpoint got the events that waited: {} of {}\n{}",
        receivers[0].unique(),
        sent.len(),
        dispatcher.log_tail()
    );
    e2e::assert_per_order(&receivers[0], &sent);

    let expected = [
        "",
        "answered 200 with a different challenge",
        "timeout",
        "timeout",
        "answered 204 (expected 200 with the challenge)",
    ];
    for (i, (answer, _, id, _)) in endpoints.iter().enumerate().skip(1) {
        let failed = api
            .wait_verification(&token, id, "verification_failed")
            .await;
        let error = failed["verification"]["last_error"].as_str().unwrap_or("");
        assert!(
            error.contains(expected[i]),
            "{answer:?}: `{error}` names why ({})",
            expected[i]
        );
        assert!(receivers[i].challenges() >= 1, "{answer:?} was challenged");
        assert_eq!(receivers[i].unique(), 0, "{answer:?} got no event");
    }

    // The wrong one is fixed and asks again: the events it missed arrive, in order.
    receivers[1].set_script(Script::default());
    let wrong = &endpoints[1].2;
    let (status, asked) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/subscriptions/{wrong}/verify"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 202, "{asked}");
    assert_eq!(asked["verification"]["state"], "pending_verification");
    api.wait_verification(&token, wrong, "verified").await;
    assert!(
        eventually(Duration::from_secs(30), || receivers[1].unique()
            == sent.len())
        .await,
        "nothing was lost while it failed: {} of {}",
        receivers[1].unique(),
        sent.len()
    );
    e2e::assert_per_order(&receivers[1], &sent);

    // Each result is audited, by the verifier.
    let audit =
        e2e::read_to_end_on(&world.brokers, &api.audit_topic, Duration::from_secs(10)).await;
    let actions: Vec<(String, String)> = audit
        .iter()
        .filter_map(|m| serde_json::from_slice::<Value>(rdkafka::Message::payload(m)?).ok())
        .filter(|a| a["actor"] == "endpoint-verifier")
        .map(|a| {
            (
                a["subscription"].as_str().unwrap_or("").to_string(),
                a["action"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (_, _, id, _) in &endpoints[1..] {
        assert!(
            actions.contains(&(id.clone(), "endpoint-verification-failed".to_string())),
            "{id}: {actions:?}"
        );
    }
    assert!(actions.contains(&(right.clone(), "endpoint-verified".to_string())));
    assert_eq!(dispatcher.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_url_change_the_old_url_receives_until_the_new_one_is_verified() {
    let world = DispatchWorld::new("127.0.0.1").await;
    let partner = unique("moves");
    let token = partner_token(&partner);
    let api = world.start_api(&api_tokens(&[&partner]), FAST);
    let dispatcher = world.start();
    let p = world.publisher().await;
    let old_addr = e2e::closed_port();
    let (id, secret) = create(&api, &token, &old_addr).await;
    let old = receiver_at(&old_addr, &secret, ChallengeAnswer::Right).await;
    api.wait_verification(&token, &id, "verified").await;

    // The new URL never answers: the old one keeps receiving, also once the check failed.
    let new = Receiver::start(
        "127.0.0.1:0".parse().expect("addr"),
        &secret,
        Script {
            challenge: ChallengeAnswer::Never,
            ..Default::default()
        },
    )
    .await
    .expect("receiver");
    let (status, patched) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/subscriptions/{id}"),
            Some(&token),
            Some(json!({"url": new.url()})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["url"], new.url().as_str());
    assert_eq!(patched["verification"]["state"], "pending_verification");
    assert_eq!(patched["verification"]["delivering_to"], old.url().as_str());
    let orders: Vec<String> = (0..3).map(|i| format!("o-{i}")).collect();
    let mut sent = publish(&p, &partner, &orders).await;
    assert!(
        eventually(Duration::from_secs(30), || old.unique() == sent.len()).await,
        "the old URL kept receiving\n{}",
        dispatcher.log_tail()
    );
    let failed = api
        .wait_verification(&token, &id, "verification_failed")
        .await;
    assert_eq!(failed["verification"]["delivering_to"], old.url().as_str());
    let before = sent.len();
    sent.extend(publish(&p, &partner, &orders).await);
    assert!(
        eventually(Duration::from_secs(30), || old.unique() == sent.len()).await,
        "and after the check failed"
    );
    assert_eq!(new.unique(), 0);

    // The partner turns the old endpoint off (410 Gone) before the new one is verified:
    // the subscription is not disabled, its events wait (retried), nothing is lost.
    old.set_script(Script {
        always_status: Some(410),
        ..Default::default()
    });
    let waiting = publish(&p, &partner, &orders).await;
    assert!(
        eventually(Duration::from_secs(30), || old.requests() >= 1).await,
        "the old URL was called"
    );
    let (_, now) = api
        .call(
            reqwest::Method::GET,
            &format!("/v1/subscriptions/{id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(
        now["state"], "active",
        "not disabled by the old URL's 410: {now}"
    );

    // The new endpoint is fixed and verified: from then on it receives, the waiting
    // events first.
    new.set_script(Script::default());
    let (status, _) = api
        .call(
            reqwest::Method::POST,
            &format!("/v1/subscriptions/{id}/verify"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 202);
    let verified = api.wait_verification(&token, &id, "verified").await;
    assert!(
        verified["verification"].get("delivering_to").is_none(),
        "{verified}"
    );
    let later = publish(&p, &partner, &orders).await;
    let mut expected = waiting.clone();
    expected.extend(later.iter().cloned());
    assert!(
        eventually(Duration::from_secs(60), || new.unique() == expected.len()).await,
        "the verified new URL receives what waited and what follows: {} of {}\n{}",
        new.unique(),
        expected.len(),
        dispatcher.log_tail()
    );
    e2e::assert_per_order(&new, &expected);
    assert_eq!(
        old.unique(),
        before + orders.len(),
        "the old URL took nothing more"
    );
    assert_eq!(dispatcher.terminate(), Some(0));
}
