use super::*;
use crate::attempts::{Outcome, Trigger};

/// A batch of attempt records as the reader hands them over.
fn entries(batch: Vec<(i32, i64, Option<AttemptRecord>)>) -> Vec<(i32, i64, Option<Entry>)> {
    batch
        .into_iter()
        .map(|(p, o, r)| (p, o, r.map(|r| Entry::Attempt(Box::new(r)))))
        .collect()
}

fn record(
    webhook: &str,
    attempt: u32,
    status: Option<u16>,
    outcome: Outcome,
    at_ms: i64,
) -> AttemptRecord {
    AttemptRecord {
        v: 1,
        webhook_id: webhook.into(),
        event_id: webhook.into(),
        event_type: Some("order.created".into()),
        order_id: format!("order-{webhook}"),
        partner: "p".into(),
        subscription_id: "p.s".into(),
        url: Some("http://127.0.0.1:9/hook".into()),
        attempt,
        trigger: if attempt > 1 {
            Trigger::Retry
        } else {
            Trigger::Scheduled
        },
        started_at: chrono::DateTime::from_timestamp_millis(at_ms).expect("time"),
        duration_ms: 3,
        status_code: status,
        error: None,
        error_detail: None,
        outcome,
        next_attempt_at: None,
        response_content_type: None,
        response_retry_after: None,
        response_excerpt: status.map(|s| format!("answer {s}")),
        occurred_at: None,
        source: None,
    }
}

fn view() -> (tempfile::TempDir, LogView) {
    let dir = tempfile::tempdir().expect("dir");
    let view = LogView::open(&dir.path().join("view.db")).expect("open");
    (dir, view)
}

/// A message failing twice then delivered: one message, three attempts in order; the
/// batch read again after a restart (same offsets) changes nothing; positions move.
#[test]
fn a_message_and_its_attempts_are_kept_once_each_in_order() {
    let (dir, mut view) = view();
    let batch = vec![
        (
            0,
            10,
            Some(record("w1", 1, Some(500), Outcome::RetryScheduled, 1_000)),
        ),
        (
            0,
            11,
            Some(record("w1", 2, Some(500), Outcome::RetryScheduled, 2_000)),
        ),
        (0, 12, None),
        (
            0,
            13,
            Some(record("w1", 3, Some(204), Outcome::Delivered, 3_000)),
        ),
    ];
    view.apply(&entries(batch.clone())).expect("apply");
    drop(view);
    let mut view = LogView::open(&dir.path().join("view.db")).expect("reopen");
    assert_eq!(view.positions().expect("positions"), vec![(0, 14)]);
    view.apply(&entries(batch.clone()))
        .expect("the same batch again");
    let (message, attempts) = view.message("p.s", "w1").expect("query").expect("found");
    assert_eq!(
        (
            message.status,
            message.attempts_count,
            message.last_status_code
        ),
        (Status::Delivered, 3, Some(204))
    );
    let seen: Vec<(u32, Option<u16>)> = attempts
        .iter()
        .map(|a| (a.attempt, a.status_code))
        .collect();
    assert_eq!(seen, vec![(1, Some(500)), (2, Some(500)), (3, Some(204))]);
    assert_eq!(attempts[0].response_excerpt.as_deref(), Some("answer 500"));
    assert!(view.message("p.s", "w2").expect("query").is_none());
    assert!(view.message("other.s", "w1").expect("query").is_none());
}

/// Lists are newest first, filtered, and paged by cursor without gaps or repeats.
#[test]
fn lists_are_filtered_and_paged_newest_first() {
    let (_dir, mut view) = view();
    let mut batch = Vec::new();
    for i in 0..25i64 {
        let outcome = if i % 5 == 0 {
            Outcome::DeadLettered
        } else {
            Outcome::Delivered
        };
        let status = if i % 5 == 0 { 400 } else { 204 };
        batch.push((
            1,
            i,
            Some(record(
                &format!("w{i:02}"),
                1,
                Some(status),
                outcome,
                1_000 + i,
            )),
        ));
    }
    view.apply(&entries(batch.clone())).expect("apply");
    let all = Filter::default();
    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..10 {
        let (page, next) = view
            .messages("p.s", None, &all, cursor.as_ref(), 10)
            .expect("page");
        seen.extend(page.into_iter().map(|m| m.webhook_id));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).rev().map(|i| format!("w{i:02}")).collect();
    assert_eq!(seen, expected, "every message once, newest first");
    let dead = Filter {
        status: Some(Status::DeadLettered),
        ..Default::default()
    };
    let (page, next) = view.messages("p.s", None, &dead, None, 10).expect("page");
    assert_eq!(page.len(), 5);
    assert!(next.is_none());
    assert!(page.iter().all(|m| m.last_status_code == Some(400)));
    let one = Filter {
        order_id: Some("order-w07".into()),
        ..Default::default()
    };
    let (page, _) = view.messages("p.s", None, &one, None, 10).expect("page");
    assert_eq!(page.len(), 1);
    let window = Filter {
        since: chrono::DateTime::from_timestamp_millis(1_010),
        until: chrono::DateTime::from_timestamp_millis(1_015),
        ..Default::default()
    };
    let (page, _) = view.messages("p.s", None, &window, None, 10).expect("page");
    assert_eq!(page.len(), 5, "1,010 <= t < 1,015");
}

/// Retention removes records and messages older than the cut, and keeps the rest.
#[test]
fn retention_removes_old_rows() {
    let (_dir, mut view) = view();
    let batch: Vec<_> = (0..100i64)
        .map(|i| {
            (
                0,
                i,
                Some(record(
                    &format!("w{i}"),
                    1,
                    Some(204),
                    Outcome::Delivered,
                    i * 1_000,
                )),
            )
        })
        .collect();
    view.apply(&entries(batch.clone())).expect("apply");
    let removed = view
        .expire(
            chrono::DateTime::from_timestamp_millis(50_000).expect("time"),
            u64::MAX,
        )
        .expect("expire");
    assert_eq!(removed, 50);
    assert_eq!(view.counts().expect("counts"), (50, 50));
    assert!(view.message("p.s", "w10").expect("query").is_none());
    assert!(view.message("p.s", "w60").expect("query").is_some());
}

/// Over its size limit, the view removes its oldest records until it fits.
#[test]
fn retention_by_size_removes_the_oldest_first() {
    let (_dir, mut view) = view();
    let batch: Vec<_> = (0..4_000i64)
        .map(|i| {
            (
                0,
                i,
                Some(record(
                    &format!("w{i}"),
                    1,
                    Some(204),
                    Outcome::Delivered,
                    i * 1_000,
                )),
            )
        })
        .collect();
    view.apply(&entries(batch.clone())).expect("apply");
    let full = view.bytes().expect("bytes");
    let limit = full / 2;
    let removed = view
        .expire(
            chrono::DateTime::from_timestamp_millis(0).expect("time"),
            limit,
        )
        .expect("expire by size");
    let now = view.bytes().expect("bytes");
    assert!(now <= limit, "{now} bytes left of {full}, limit {limit}");
    assert!(removed > 0 && removed < 4_000, "{removed}");
    assert!(
        view.message("p.s", "w3999").expect("query").is_some(),
        "the newest stay"
    );
    assert!(
        view.message("p.s", "w0").expect("query").is_none(),
        "the oldest go"
    );
}

/// A window's stats: records by outcome, the success rate of attempts, quantiles of
/// the attempts' durations and of the time from the event to its delivery.
#[test]
fn stats_count_a_window() {
    let (_dir, mut view) = view();
    let mut batch = Vec::new();
    for i in 0..10i64 {
        let mut failed = record(
            &format!("w{i}"),
            1,
            Some(500),
            Outcome::RetryScheduled,
            10_000 + i,
        );
        failed.duration_ms = 100 + i as u64;
        let mut ok = record(
            &format!("w{i}"),
            2,
            Some(204),
            Outcome::Delivered,
            11_000 + i,
        );
        ok.duration_ms = 10 + i as u64;
        ok.occurred_at = chrono::DateTime::from_timestamp_millis(9_000);
        batch.push((0, 2 * i, Some(failed)));
        batch.push((0, 2 * i + 1, Some(ok)));
    }
    // Before the window: not counted.
    batch.push((
        0,
        100,
        Some(record("old", 1, Some(204), Outcome::Delivered, 1_000)),
    ));
    view.apply(&entries(batch.clone())).expect("apply");
    let stats = view
        .stats(
            "p.s",
            None,
            chrono::DateTime::from_timestamp_millis(5_000).expect("time"),
        )
        .expect("stats");
    assert_eq!(stats.attempts, 20);
    assert_eq!(stats.by_outcome.get("delivered"), Some(&10));
    assert_eq!(stats.by_outcome.get("retry_scheduled"), Some(&10));
    assert_eq!(stats.success_rate, Some(0.5));
    assert_eq!(stats.attempt_duration_ms, Some([100, 109]));
    // Delivered at 11,000 + i + 10 + i, the event at 9,000: 2,010 to 2,028 ms.
    assert_eq!(stats.time_to_webhook_ms, Some([2_020, 2_028]));
}

/// A subscription id deleted and made again for another partner: each partner sees
/// only its own history under it. And a record older than what the message shows (a
/// job of a revoked assignment ending late) counts but does not move its state back.
#[test]
fn lists_and_stats_keep_to_the_partner_and_states_never_go_back() {
    let (_dir, mut view) = view();
    let mut theirs = record("old", 1, Some(204), Outcome::Delivered, 1_000);
    theirs.partner = "someone-else".into();
    let late = record("w1", 1, Some(500), Outcome::RetryScheduled, 1_500);
    let delivered = record("w1", 2, Some(204), Outcome::Delivered, 2_000);
    view.apply(&entries(vec![
        (0, 1, Some(theirs)),
        (0, 2, Some(delivered)),
        (0, 3, Some(late)),
    ]))
    .expect("apply");
    let (mine, _) = view
        .messages("p.s", Some("p"), &Filter::default(), None, 10)
        .expect("page");
    assert_eq!(
        mine.iter()
            .map(|m| m.webhook_id.as_str())
            .collect::<Vec<_>>(),
        ["w1"]
    );
    let (all, _) = view
        .messages("p.s", None, &Filter::default(), None, 10)
        .expect("page");
    assert_eq!(all.len(), 2, "an admin sees both");
    let stats = view
        .stats(
            "p.s",
            Some("p"),
            chrono::DateTime::from_timestamp_millis(0).expect("time"),
        )
        .expect("stats");
    assert_eq!(
        stats.attempts, 2,
        "the other partner's attempt is not counted"
    );
    let (m, _) = view.message("p.s", "w1").expect("query").expect("found");
    assert_eq!(
        (m.status, m.attempts_count, m.last_status_code),
        (Status::Delivered, 2, Some(204)),
        "the late record counted, the state kept"
    );
}

/// A filter's tallies add up in the stats of their window, once each however often a
/// batch is read, and only for their partner.
#[test]
fn filter_tallies_add_up_in_the_stats() {
    let (_dir, mut view) = view();
    let tally = |to: i64, out: u64, errors: u64, partner: &str| {
        Some(Entry::Tally(crate::attempts::FilterTally {
            v: 1,
            kind: "filter_tally".into(),
            partner: partner.into(),
            subscription_id: "p.s".into(),
            from: chrono::DateTime::from_timestamp_millis(to - 1_000).expect("time"),
            to: chrono::DateTime::from_timestamp_millis(to).expect("time"),
            filtered_out: out,
            errors,
        }))
    };
    let batch = vec![
        (0, 1, tally(1_000, 100, 100, "p")),
        (0, 2, tally(6_000, 3, 1, "p")),
        (1, 7, tally(7_000, 4, 0, "p")),
        (1, 8, tally(8_000, 50, 50, "q")),
    ];
    view.apply(&batch).expect("apply");
    view.apply(&batch).expect("read again");
    let since = chrono::DateTime::from_timestamp_millis(5_000).expect("time");
    assert_eq!(
        view.stats("p.s", Some("p"), since).expect("stats").filtered,
        [7, 1]
    );
    assert_eq!(
        view.stats("p.s", None, since).expect("stats").filtered,
        [57, 51]
    );
    assert_eq!(
        view.stats("p.t", None, since).expect("stats").filtered,
        [0, 0]
    );
    // The record as the router writes it parses as a tally; an attempt as an attempt.
    let json = serde_json::to_vec(&match &batch[1].2 {
        Some(Entry::Tally(t)) => t.clone(),
        _ => unreachable!(),
    })
    .expect("json");
    assert!(matches!(Entry::parse(&json), Ok(Entry::Tally(_))));
    let attempt =
        serde_json::to_vec(&record("w", 1, Some(204), Outcome::Delivered, 1)).expect("json");
    assert!(matches!(Entry::parse(&attempt), Ok(Entry::Attempt(_))));
    // Expired with the attempts.
    view.expire(
        chrono::DateTime::from_timestamp_millis(6_500).expect("time"),
        u64::MAX,
    )
    .expect("expire");
    assert_eq!(
        view.stats("p.s", Some("p"), since).expect("stats").filtered,
        [4, 0]
    );
}
