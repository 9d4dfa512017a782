//! Per-partner flow control against the real broker and scripted receivers: the circuit
//! opens, probes and closes; 429 with Retry-After holds the whole partner; the adaptive
//! concurrency limit finds an overloaded partner's capacity; a rate limit spaces requests.

use std::time::{Duration, Instant};

use consumer_examples::receiver::{Receiver, Script};
use e2e::{eventually, DispatchWorld};
use order_schemas::{EventType, OrderEvent};

struct Setup {
    world: DispatchWorld,
    partner: String,
    receiver: Receiver,
}

async fn setup(script: Script, extra: &str, run_args: &[&str]) -> Setup {
    let mut world = DispatchWorld::new("127.0.0.1").await;
    world.run_args = run_args.iter().map(|s| s.to_string()).collect();
    let (partner, receiver) = world.partner_with_receiver("flow", script, extra).await;
    Setup {
        world,
        partner,
        receiver,
    }
}

/// Publishes one order.created for each of `orders` distinct orders.
async fn publish(world: &DispatchWorld, partner: &str, orders: usize) -> Vec<OrderEvent> {
    let publisher = world.publisher().await;
    let mut sent = Vec::new();
    let mut pending = Vec::new();
    for i in 0..orders {
        let e = OrderEvent::sample(EventType::OrderCreated, &format!("order-{i}"), partner, 1);
        pending.push(publisher.enqueue(&e, None).await.expect("enqueue"));
        sent.push(e);
    }
    for p in pending {
        p.wait().await.expect("published");
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_opens_probes_and_closes_and_nothing_is_lost() {
    let s = setup(
        Script {
            always_status: Some(500),
            ..Default::default()
        },
        "    retry: { max_attempts: 1000, max_elapsed_secs: 600, initial_backoff_ms: 20, max_backoff_ms: 100 }\n",
        &["--breaker-failures", "5", "--breaker-cooldown-ms", "1000"],
    )
    .await;
    let dispatcher = s.world.start();
    let sent = publish(&s.world, &s.partner, 20).await;
    let state = format!("dispatcher_circuit_state{{partner=\"{}\"}} ", s.partner);
    let opened = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if dispatcher.metric(&state).await == Some(2.0) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(opened, "the circuit opened\n{}", dispatcher.log_tail());
    // While open, only probes go: one per cooldown (1 s, then 2 s, 4 s...).
    let before = s.receiver.requests();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = s.receiver.requests() - before;
    assert!(
        during <= 3,
        "{during} requests in 3 s while open: probes only"
    );
    assert!(during >= 1, "a probe went");
    // The partner recovers: a probe succeeds, the circuit closes, the backlog arrives.
    s.receiver.set_script(Script::default());
    let all = eventually(Duration::from_secs(60), || {
        s.receiver.unique() == sent.len()
    })
    .await;
    assert!(
        all,
        "{} of {} after recovery\n{}",
        s.receiver.unique(),
        sent.len(),
        dispatcher.log_tail()
    );
    assert_eq!(dispatcher.metric(&state).await, Some(0.0), "closed again");
    let opened_total = format!(
        "dispatcher_circuit_opened_total{{partner=\"{}\"}} ",
        s.partner
    );
    assert!(dispatcher.metric(&opened_total).await >= Some(1.0));
    assert_eq!(dispatcher.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_holds_the_whole_partner() {
    let s = setup(
        Script {
            fail_first: 1,
            fail_status: Some(429),
            retry_after_secs: Some(2),
            ..Default::default()
        },
        "",
        &[],
    )
    .await;
    let dispatcher = s.world.start();
    let sent = publish(&s.world, &s.partner, 10).await;
    let all = eventually(Duration::from_secs(60), || {
        s.receiver.unique() == sent.len()
    })
    .await;
    assert!(all, "{}", dispatcher.log_tail());
    let arrivals = s.receiver.arrivals();
    assert_eq!(arrivals.len(), sent.len() + 1, "one 429, then each once");
    // Ten different orders could go in parallel; after the 429 nothing goes for 2 s.
    let gap = arrivals[1] - arrivals[0];
    assert!(
        gap >= Duration::from_millis(1900),
        "next request {gap:?} after the 429 with Retry-After: 2"
    );
    assert_eq!(dispatcher.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_adapts_to_an_overloaded_partner() {
    // The partner handles 4 requests at once; more get 503. Our cap is 32.
    let s = setup(
        Script {
            capacity: Some(4),
            delay_ms: 30,
            ..Default::default()
        },
        "    max_in_flight: 32\n    retry: { max_attempts: 50, initial_backoff_ms: 20, max_backoff_ms: 200 }\n",
        &["--breaker-failures", "1000"],
    )
    .await;
    let dispatcher = s.world.start();
    let sent = publish(&s.world, &s.partner, 300).await;
    let all = eventually(Duration::from_secs(90), || {
        s.receiver.unique() == sent.len()
    })
    .await;
    assert!(
        all,
        "{} of {}\n{}",
        s.receiver.unique(),
        sent.len(),
        dispatcher.log_tail()
    );
    let overloaded = s.receiver.overloaded();
    let requests = s.receiver.requests();
    let limit = dispatcher
        .metric(&format!(
            "dispatcher_concurrency_limit{{partner=\"{}\"}} ",
            s.partner
        ))
        .await
        .expect("limit gauge");
    println!(
        "capacity 4: {requests} requests, {overloaded} over capacity, max concurrent {}, final limit {limit}",
        s.receiver.max_concurrent()
    );
    // A fixed 32 in flight would send 28 of every 32 requests into 503s.
    assert!(
        (overloaded as f64) < 0.25 * requests as f64,
        "{overloaded} of {requests} requests over capacity"
    );
    assert!(limit <= 12.0, "limit {limit} near the partner's capacity");
    assert_eq!(dispatcher.terminate(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spaces_requests_to_the_partner() {
    let s = setup(Script::default(), "    rate_limit_per_sec: 5\n", &[]).await;
    let dispatcher = s.world.start();
    let sent = publish(&s.world, &s.partner, 20).await;
    let all = eventually(Duration::from_secs(60), || {
        s.receiver.unique() == sent.len()
    })
    .await;
    assert!(all, "{}", dispatcher.log_tail());
    let arrivals = s.receiver.arrivals();
    assert_eq!(arrivals.len(), 20);
    // A burst of 5 (one second's worth), then 5 per second: the 15 after the burst take
    // at least 14 / 5 = 2.8 s.
    let after_burst = arrivals[19] - arrivals[5];
    assert!(
        after_burst >= Duration::from_millis(2600),
        "15 requests after the burst in {after_burst:?}"
    );
    assert_eq!(dispatcher.terminate(), Some(0));
}
