//! Flow control's rules, on an injected clock, and its waits with tokio's paused time
//! (a hold or cooldown is waited exactly, not slept through in real time).

use super::*;

fn flow(max: usize) -> Arc<PartnerFlow> {
    PartnerFlow::new(
        "t",
        max,
        None,
        FlowConfig {
            failures_to_open: 3,
            cooldown: Duration::from_millis(100),
            ..FlowConfig::default()
        },
    )
}

/// An overload answer with a Retry-After of `secs`.
fn retry_after(secs: u64) -> Signal {
    Signal::Overloaded {
        retry_after: Some(Duration::from_secs(secs)),
    }
}

const FAST: Signal = Signal::Answered {
    latency: Duration::from_millis(1),
};

#[test]
fn the_limit_grows_on_normal_answers_and_halves_on_overload() {
    let f = flow(16);
    let now = Instant::now();
    for _ in 0..40 {
        let p = f.try_acquire(now).expect("permit");
        f.release(p, FAST);
    }
    let grown = f.limit();
    assert!(grown > 6.0 && grown <= 16.0, "{grown}");
    let p = f.try_acquire(now).expect("permit");
    f.release(p, Signal::Overloaded { retry_after: None });
    assert!((f.limit() - grown / 2.0).abs() < 0.01);
    for _ in 0..1000 {
        let p = f.try_acquire(now).expect("permit");
        f.release(p, FAST);
    }
    assert_eq!(f.limit(), 16.0, "capped at max_in_flight");
}

#[test]
fn the_limit_doubles_per_round_trip_until_the_first_overload_then_grows_by_one() {
    let f = flow(64);
    let now = Instant::now();
    // One round trip: every permit the limit allows, then every answer.
    let round_trip = |f: &PartnerFlow| {
        let permits: Vec<_> = std::iter::from_fn(|| f.try_acquire(now).ok()).collect();
        let sent = permits.len();
        for p in permits {
            f.release(p, FAST);
        }
        sent
    };
    let sent: Vec<usize> = (0..5).map(|_| round_trip(&f)).collect();
    assert_eq!(sent, [1, 2, 4, 8, 16], "slow start doubles");
    let p = f.try_acquire(now).expect("permit");
    f.release(p, Signal::Overloaded { retry_after: None });
    assert_eq!(f.limit(), 16.0, "halved from 32");
    round_trip(&f);
    assert!(
        (f.limit() - 17.0).abs() < 0.1,
        "after an overload, about +1 per round trip: {}",
        f.limit()
    );
}

#[test]
fn in_flight_is_bounded_by_the_limit() {
    let f = flow(16);
    let now = Instant::now();
    let first = f.try_acquire(now).expect("permit");
    assert!(f.try_acquire(now).is_err(), "limit 1 at start");
    f.release(first, FAST);
    assert!(f.try_acquire(now).is_ok());
}

#[test]
fn retry_after_holds_the_whole_partner() {
    let f = flow(16);
    let now = Instant::now();
    let p = f.try_acquire(now).expect("permit");
    f.release(p, retry_after(2));
    let wait = f.try_acquire(Instant::now()).expect_err("held");
    assert!(
        wait.is_some_and(|w| w > Duration::from_millis(1900)),
        "{wait:?}"
    );
    assert!(f.try_acquire(now + Duration::from_secs(3)).is_ok());
}

#[test]
fn the_circuit_opens_probes_and_closes() {
    let f = flow(16);
    let now = Instant::now();
    for _ in 0..3 {
        let p = f.try_acquire(now).expect("permit");
        f.release(p, Signal::Failed);
    }
    assert!(matches!(f.circuit(), Circuit::Open { .. }));
    assert!(f.try_acquire(Instant::now()).is_err(), "open: nothing goes");
    let later = Instant::now() + Duration::from_millis(150);
    let probe = f.try_acquire(later).expect("one probe after the cooldown");
    assert!(f.try_acquire(later).is_err(), "only one probe");
    f.release(probe, Signal::Failed);
    let Circuit::Open { until } = f.circuit() else {
        panic!("a failed probe reopens")
    };
    assert!(
        until >= Instant::now() + Duration::from_millis(150),
        "cooldown doubled"
    );
    let probe = f
        .try_acquire(until + Duration::from_millis(1))
        .expect("probe");
    f.release(probe, FAST);
    assert_eq!(f.circuit(), Circuit::Closed);
}

/// A server error of a key that failed before (`mark`: the partner's count then).
fn key_error(mark: Accepted) -> Signal {
    Signal::ServerError {
        key_failed_at: Some(mark),
    }
}

const FIRST_ERROR: Signal = Signal::ServerError {
    key_failed_at: None,
};

#[test]
fn a_key_that_keeps_failing_while_others_are_accepted_neither_throttles_nor_opens_the_circuit() {
    // Opens after 3 of the partner's failures in a row.
    let f = flow(64);
    let now = Instant::now();
    for _ in 0..40 {
        let p = f.try_acquire(now).expect("permit");
        f.release(p, FAST);
    }
    let grown = f.limit();
    // Four poison orders fail once each (nothing tells them from a partner failing yet):
    // the partner's, interleaved with accepted requests of other orders.
    let mut marks = Vec::new();
    for _ in 0..4 {
        let p = f.try_acquire(now).expect("permit");
        f.release(p, FIRST_ERROR);
        marks.push(f.accepted());
        let p = f.try_acquire(now).expect("permit");
        f.release(p, FAST);
    }
    assert_eq!(f.circuit(), Circuit::Closed);
    let after_first = f.limit();
    assert!(after_first < grown, "first failures are the partner's");
    // Then they fail again and again, each time after the partner accepted others: the
    // keys' own failures.
    for _ in 0..50 {
        for mark in &mut marks {
            let p = f.try_acquire(now).expect("never held by the circuit");
            assert_eq!(f.release(p, key_error(*mark)), Blame::Key);
            *mark = f.accepted();
            let p = f.try_acquire(now).expect("permit");
            f.release(p, FAST);
        }
    }
    assert_eq!(
        f.circuit(),
        Circuit::Closed,
        "200 key failures, circuit closed"
    );
    assert!(
        f.limit() > after_first,
        "the limit grew on the accepted requests: {} -> {}",
        after_first,
        f.limit()
    );
}

#[tokio::test(start_paused = true)]
async fn a_partner_that_was_fine_and_answers_500_everywhere_opens_a_cooldown_after_its_last_acceptance(
) {
    // Opens after failures of 3 keys in a row; cooldown 100 ms.
    let f = flow(64);
    let now = Instant::now();
    for _ in 0..10 {
        let p = f.try_acquire(now).expect("permit");
        f.release(p, FAST);
    }
    let grown = f.limit();
    // One key fails, then again and again with nothing accepted in between (the
    // partner may be down, or only that key may be tried): the partner's, but the key
    // counts once, for the limit and the circuit.
    let p = f.try_acquire(now).expect("permit");
    assert_eq!(f.release(p, FIRST_ERROR), Blame::Partner);
    let mark = f.accepted();
    for _ in 0..5 {
        let p = f.try_acquire(now).expect("permit");
        assert_eq!(f.release(p, key_error(mark)), Blame::Partner);
    }
    assert_eq!(f.limit(), (grown / 2.0).max(1.0), "halved once");
    // Two more keys fail: three keys in a row. The partner accepted requests a moment
    // ago (its lane may hold only orders it refuses): not yet.
    for _ in 0..2 {
        let p = f.try_acquire(now).expect("permit");
        f.release(p, FIRST_ERROR);
    }
    assert_eq!(
        f.circuit(),
        Circuit::Closed,
        "within a cooldown of an acceptance"
    );
    // A cooldown after its last acceptance, the next failure opens it.
    tokio::time::advance(Duration::from_millis(100)).await;
    let p = f.try_acquire(Instant::now()).expect("permit");
    f.release(p, key_error(mark));
    assert!(
        matches!(f.circuit(), Circuit::Open { .. }),
        "three keys failing, nothing accepted for a cooldown: {:?}",
        f.circuit()
    );
    // A probe of a key that failed before, nothing accepted since: still the partner's.
    tokio::time::advance(Duration::from_millis(150)).await;
    let probe = f.try_acquire(Instant::now()).expect("probe");
    f.release(probe, key_error(mark));
    assert!(
        matches!(f.circuit(), Circuit::Open { .. }),
        "a failed probe reopens it"
    );
}

#[test]
fn overloads_open_the_circuit_at_once_even_right_after_acceptances() {
    let f = flow(64);
    let now = Instant::now();
    let p = f.try_acquire(now).expect("permit");
    f.release(p, FAST);
    for _ in 0..3 {
        let p = f.try_acquire(now).expect("permit");
        assert_eq!(
            f.release(p, Signal::Overloaded { retry_after: None }),
            Blame::Partner
        );
    }
    assert!(matches!(f.circuit(), Circuit::Open { .. }));
}

#[test]
fn a_probe_that_meets_a_keys_own_failure_lets_another_probe_go() {
    let f = flow(16);
    let now = Instant::now();
    let p = f.try_acquire(now).expect("permit");
    f.release(p, FAST);
    let mark = Accepted(0);
    for _ in 0..3 {
        let p = f.try_acquire(now).expect("permit");
        f.release(p, Signal::Failed);
    }
    let later = Instant::now() + Duration::from_millis(150);
    let probe = f.try_acquire(later).expect("probe");
    // A poison order's retry was the probe: it says nothing about the partner.
    f.release(probe, key_error(mark));
    let again = f
        .try_acquire(later)
        .expect("another probe, no new cooldown");
    f.release(again, FAST);
    assert_eq!(f.circuit(), Circuit::Closed);
}

#[test]
fn a_rate_limit_spaces_requests() {
    let f = PartnerFlow::new("t", 100, Some(5.0), FlowConfig::default());
    let now = Instant::now();
    let mut sent = 0;
    for _ in 0..20 {
        if let Ok(p) = f.try_acquire(now) {
            f.release(p, FAST);
            sent += 1;
        }
    }
    assert_eq!(sent, 5, "a burst of one second");
    let wait = f.try_acquire(now).expect_err("empty");
    assert!(wait.is_some_and(|w| w <= Duration::from_millis(200)));
    assert!(f.try_acquire(now + Duration::from_millis(250)).is_ok());
}

#[test]
fn permits_of_an_ended_lane_are_forgotten_before_the_next_one_starts() {
    let f = flow(1);
    let now = Instant::now();
    // A lane whose job held the only permit panicked: the permit is never released.
    let _never_released = f.try_acquire(now).expect("permit");
    assert!(f.try_acquire(now).is_err(), "the limit is used up");
    f.forget_permits();
    assert!(
        f.try_acquire(now).is_ok(),
        "the restarted lane can send again"
    );
}

#[test]
fn an_absurd_rate_waits_bounded_instead_of_overflowing() {
    // Validation refuses such a rate; flow control must not panic on one anyway.
    let f = PartnerFlow::new("t", 100, Some(1e-30), FlowConfig::default());
    let now = Instant::now();
    let first = f.try_acquire(now);
    let wait = match first {
        Ok(p) => {
            f.release(p, FAST);
            f.try_acquire(now).expect_err("no token left")
        }
        Err(wait) => wait,
    };
    assert_eq!(wait, Some(Duration::from_secs(3600)));
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_holds_every_request_for_exactly_that_long_within_the_cap() {
    let f = flow(16);
    let cancel = CancellationToken::new();
    let p = f.acquire(&cancel).await.expect("permit");
    f.release(p, retry_after(30));
    let start = Instant::now();
    let p = f.acquire(&cancel).await.expect("a permit after the hold");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_millis(30_050),
        "held {waited:?}"
    );
    // A Retry-After past the cap (60 s) holds for the cap only.
    f.release(p, retry_after(3_600));
    let start = Instant::now();
    let _p = f
        .acquire(&cancel)
        .await
        .expect("a permit after the capped hold");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_millis(60_050),
        "held {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_waits_its_cooldown_and_doubles_it_after_a_failed_probe() {
    // Opens after 3 failures; cooldown 100 ms.
    let f = flow(16);
    let cancel = CancellationToken::new();
    for _ in 0..3 {
        let p = f.acquire(&cancel).await.expect("permit");
        f.release(p, Signal::Failed);
    }
    let waits = [Duration::from_millis(100), Duration::from_millis(200)];
    for (i, want) in waits.iter().enumerate() {
        let start = Instant::now();
        let probe = f
            .acquire(&cancel)
            .await
            .expect("a probe after the cooldown");
        let waited = start.elapsed();
        assert!(
            waited >= *want && waited < *want + Duration::from_millis(20),
            "probe {i}: waited {waited:?}, cooldown {want:?}"
        );
        let last = i + 1 == waits.len();
        f.release(probe, if last { FAST } else { Signal::Failed });
    }
    assert_eq!(f.circuit(), Circuit::Closed, "a good probe closes it");
    let start = Instant::now();
    let _p = f.acquire(&cancel).await.expect("permit");
    assert_eq!(start.elapsed(), Duration::ZERO, "closed: no wait");
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_is_let_go_by_cancellation_without_a_permit() {
    let f = flow(16);
    let cancel = CancellationToken::new();
    let p = f.acquire(&cancel).await.expect("permit");
    f.release(p, retry_after(30));
    let stop = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.cancel();
    });
    let start = Instant::now();
    assert!(f.acquire(&cancel).await.is_none(), "cancelled, no permit");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn a_few_keys_failing_alone_open_the_circuit_once_nothing_was_accepted_for_a_cooldown() {
    // A partner down with one order in flight: past a cooldown without an accepted
    // request, each of its failures counts, as an overload's would.
    let f = flow(16);
    let p = f.acquire(&CancellationToken::new()).await.expect("permit");
    f.release(p, FAST);
    let p = f.acquire(&CancellationToken::new()).await.expect("permit");
    f.release(p, FIRST_ERROR);
    let mark = f.accepted();
    tokio::time::advance(Duration::from_millis(100)).await;
    for _ in 0..2 {
        assert_eq!(f.circuit(), Circuit::Closed);
        let p = f.acquire(&CancellationToken::new()).await.expect("permit");
        assert_eq!(f.release(p, key_error(mark)), Blame::Partner);
    }
    assert!(
        matches!(f.circuit(), Circuit::Open { .. }),
        "one key, three failures, nothing accepted for a cooldown: {:?}",
        f.circuit()
    );
}
