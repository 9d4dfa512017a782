use super::*;

fn state(i: Inputs) -> PartnerState {
    judge(&i, &HealthConfig::default()).0
}

#[test]
fn states_follow_error_rate_circuit_age_and_lag() {
    let ok = Inputs {
        attempts: 100,
        failures: 2,
        ..Default::default()
    };
    assert_eq!(state(ok.clone()), PartnerState::Healthy);
    let some = Inputs {
        failures: 20,
        ..ok.clone()
    };
    assert_eq!(state(some), PartnerState::Degraded);
    let most = Inputs {
        failures: 60,
        ..ok.clone()
    };
    let (s, why) = judge(&most, &HealthConfig::default());
    assert_eq!(s, PartnerState::Failing);
    assert_eq!(why, vec!["error rate 60% (60 of 100 attempts)"]);
    let few = Inputs {
        attempts: 2,
        failures: 2,
        ..Default::default()
    };
    assert_eq!(
        state(few),
        PartnerState::Healthy,
        "too few attempts to judge"
    );
    let open = Inputs {
        circuit_open: true,
        ..Default::default()
    };
    assert_eq!(state(open), PartnerState::Failing);
    let old = Inputs {
        oldest_age: Duration::from_secs(120),
        ..ok.clone()
    };
    assert_eq!(state(old), PartnerState::Degraded);
    let older = Inputs {
        oldest_age: Duration::from_secs(3600),
        ..ok.clone()
    };
    assert_eq!(state(older.clone()), PartnerState::Failing);
    let paused = Inputs {
        paused: true,
        lag: Some(50_000),
        ..older
    };
    assert_eq!(state(paused), PartnerState::Healthy, "held on purpose");
    let lagging = Inputs {
        lag: Some(50_000),
        ..ok.clone()
    };
    assert_eq!(state(lagging), PartnerState::Degraded);
    let off = Inputs {
        disconnected: true,
        circuit_open: true,
        ..ok
    };
    assert_eq!(state(off), PartnerState::Disconnected);
}

#[test]
fn the_window_counts_recent_attempts() {
    let h = PartnerHealth::default();
    for i in 0..10 {
        h.attempt(i % 2 == 0);
    }
    assert_eq!(h.window(), (10, 5));
}
