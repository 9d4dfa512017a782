use super::*;
use rdkafka::message::Headers;

fn record(headers: &[(&str, &str)], offset: i64, secs: i64) -> DlqRecord {
    DlqRecord {
        partition: 1,
        offset,
        timestamp: DateTime::from_timestamp(secs, 0),
        key: b"order-1".to_vec(),
        payload: b"{}".to_vec(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect(),
    }
}

fn filter() -> Filter {
    Filter {
        partner: "acme".into(),
        router: false,
        event_type: None,
        reason: None,
        status: None,
        since: None,
        until: None,
        partition: None,
        from_offset: None,
        to_offset: None,
        key: None,
        subscription: None,
    }
}

#[test]
fn every_condition_given_must_hold() {
    let r = record(
        &[
            ("event-type", "order.created"),
            ("dlq-reason", "status 400 is not retried"),
            ("dlq-last-status", "400"),
        ],
        7,
        1_000,
    );
    assert!(filter().matches(&r), "no condition matches all");
    let f = |edit: &dyn Fn(&mut Filter)| {
        let mut f = filter();
        edit(&mut f);
        f.matches(&r)
    };
    assert!(f(&|f| f.event_type = Some("order.created".into())));
    assert!(!f(&|f| f.event_type = Some("order.cancelled".into())));
    assert!(f(&|f| f.reason = Some("NOT RETRIED".into())));
    assert!(!f(&|f| f.reason = Some("retry policy".into())));
    assert!(f(&|f| f.status = Some(400)));
    assert!(!f(&|f| f.status = Some(500)));
    assert!(f(&|f| f.since = DateTime::from_timestamp(1_000, 0)));
    assert!(
        !f(&|f| f.until = DateTime::from_timestamp(1_000, 0)),
        "until is exclusive"
    );
    assert!(f(&|f| {
        f.from_offset = Some(7);
        f.to_offset = Some(7)
    }));
    assert!(!f(&|f| f.from_offset = Some(8)));
    assert!(!f(&|f| f.partition = Some(0)));
    assert!(f(&|f| f.key = Some("order-1".into())));
    assert!(!f(&|f| f.key = Some("order-2".into())));
}

#[test]
fn bad_filters_are_refused_before_anything_is_read() {
    let now = Utc::now();
    let mut f = filter();
    f.since = Some(now + chrono::Duration::hours(1));
    let e = f.validate(now).expect_err("future");
    assert!(e.0.contains("--since") && e.0.contains("future"), "{e}");
    let mut f = filter();
    f.event_type = Some("order.shipped".into());
    let e = f.validate(now).expect_err("unknown type");
    assert!(
        e.0.contains("order.shipped") && e.0.contains("order.created"),
        "{e}"
    );
    let mut f = filter();
    f.from_offset = Some(5);
    f.to_offset = Some(4);
    assert!(f.validate(now).is_err());
    let mut f = filter();
    f.since = Some(now - chrono::Duration::hours(1));
    f.until = Some(now - chrono::Duration::hours(2));
    assert!(f.validate(now).is_err());
    assert!(filter().validate(now).is_ok());
}

#[test]
fn replayed_records_keep_their_headers_but_not_the_dead_letter_ones() {
    let r = record(
        &[
            ("webhook-id", "evt-1"),
            ("subscription-id", "acme-s"),
            ("dlq-reason", "status 400 is not retried"),
        ],
        3,
        0,
    );
    let headers = replay_headers(&r, "dlq.acme", "op-1", false);
    let names: Vec<(String, String)> = headers
        .iter()
        .map(|h| {
            (
                h.key.to_string(),
                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    assert_eq!(
        names,
        vec![
            ("webhook-id".to_string(), "evt-1".to_string()),
            ("subscription-id".into(), "acme-s".into()),
            ("replayed-from".into(), "dlq.acme/1/3".into()),
            ("replay-operation".into(), "op-1".into()),
        ]
    );
}

#[test]
fn ledger_entries_written_before_the_typed_records_or_by_a_newer_version_still_read() {
    // As the string-typed ledger wrote them.
    let old = r#"{"action":"replayed","operation":"op-1","at":"2026-12-01T10:00:00.123Z","operator":"sre"}"#;
    let entry: LedgerEntry = serde_json::from_str(old).expect("old entry");
    assert_eq!(entry.action, Handled::Replayed);
    assert_eq!(
        serde_json::to_string(&entry).expect("json"),
        old,
        "same JSON back"
    );
    // An action this version does not know still counts as handled (never re-sent).
    let newer = old.replace("replayed", "archived");
    let entry: LedgerEntry = serde_json::from_str(&newer).expect("newer entry");
    assert_eq!(entry.action, Handled::Other);
}
