use super::*;
use crate::webhook::signing::Secret;

fn record(id: &str, url: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id, "partner_id": "p", "url": url,
        "event_types": ["order.created"], "secrets": [Secret::generate()],
    }))
    .expect("json")
}

#[test]
fn an_invalid_record_without_a_valid_version_is_kept_as_invalid_and_still_matches() {
    let narrow = Allowlist::parse(&["10.0.0.1".into()]).expect("list");
    let table = SubscriptionTable::default();
    table.apply_record(
        Some(b"s1"),
        Some(&record("s1", "http://127.0.0.1:9/h")),
        &narrow,
    );
    assert!(table.target("s1").is_none());
    let invalid = table.invalid("s1").expect("kept as invalid");
    assert!(
        invalid.reason.contains("subscription `s1`: url: "),
        "{}",
        invalid.reason
    );
    assert_eq!(table.invalid_partners(), vec!["p".to_string()]);
    let matched = table.matching("order.created", "p");
    assert_eq!(
        matched.len(),
        1,
        "routed, to be dead-lettered with the reason"
    );
    assert!(matched[0].invalid, "to its lane, whatever its kind");
    // Fixed: valid again, no longer invalid.
    let wide = Allowlist::parse(&["127.0.0.1".into()]).expect("list");
    table.apply_record(
        Some(b"s1"),
        Some(&record("s1", "http://127.0.0.1:9/h")),
        &wide,
    );
    assert!(table.target("s1").is_some());
    assert!(table.invalid("s1").is_none());
    // An invalid update of a valid subscription leaves the valid one in force.
    table.apply_record(
        Some(b"s1"),
        Some(&record("s1", "http://127.0.0.1:9/h")),
        &narrow,
    );
    assert!(table.target("s1").is_some());
    assert!(table.invalid("s1").is_none());
    // Not routed: a partner id that names no topic, or an internal flag.
    let mut bad =
        serde_json::from_slice::<serde_json::Value>(&record("s3", "http://127.0.0.1:9/h"))
            .expect("json");
    bad["partner_id"] = "Bad Name".into();
    table.apply_record(
        Some(b"s3"),
        Some(&serde_json::to_vec(&bad).expect("json")),
        &narrow,
    );
    bad["partner_id"] = "p".into();
    bad["internal"] = true.into();
    table.apply_record(
        Some(b"s4"),
        Some(
            &serde_json::to_vec(&{
                let mut b = bad.clone();
                b["id"] = "s4".into();
                b
            })
            .expect("json"),
        ),
        &narrow,
    );
    assert!(table
        .invalid("s3")
        .is_some_and(|i| i.subscription.is_none()));
    assert!(table
        .invalid("s4")
        .is_some_and(|i| i.subscription.is_none()));
    assert_eq!(table.all_invalid().len(), 2);
    // A record that does not parse is named too; a tombstone forgets it.
    table.apply_record(Some(b"s2"), Some(b"{not json"), &wide);
    assert!(table
        .invalid("s2")
        .expect("invalid")
        .reason
        .contains("`s2`"));
    table.apply_record(Some(b"s2"), None, &wide);
    assert!(table.invalid("s2").is_none());
}

/// #22 item 7: a change decided on an older version is written onto the latest one,
/// field by field: what another writer changed meanwhile stays, what this change sets
/// wins, and a field this change clears is cleared.
#[test]
fn a_change_merged_onto_a_newer_version_keeps_the_other_writers_fields() {
    let parse = |bytes: Vec<u8>| serde_json::from_slice::<Subscription>(&bytes).expect("record");
    let mut base = parse(record("s1", "http://127.0.0.1:9/old"));
    base.disconnected = Some(crate::subscriptions::Disconnected {
        at: chrono::Utc::now(),
        reason: "manual".into(),
        by: "admin".into(),
    });
    // Another writer disabled it (a 410) after the change was decided.
    let mut latest = base.clone();
    latest.disabled = true;
    // The change: a new URL, and a reconnect (the mark cleared).
    let mut ours = base.clone();
    ours.url = "http://127.0.0.1:9/new".into();
    ours.disconnected = None;
    let merged = merge(&latest, &base, &ours, &[]).expect("merged");
    assert_eq!(
        (
            merged.url.as_str(),
            merged.disabled,
            merged.disconnected.is_none()
        ),
        ("http://127.0.0.1:9/new", true, true),
        "{merged:?}"
    );
    // Nothing changed meanwhile: the change as decided.
    assert_eq!(merge(&base, &base, &ours, &[]).expect("merged"), ours);
    // A field the change names is set even when the base had that value already: a
    // reconnect decided on a copy from before an automatic disconnect reconnects.
    let mut disconnected = latest.clone();
    disconnected.disconnected = base.disconnected.clone();
    let mut reconnected_base = base.clone();
    reconnected_base.disconnected = None;
    let reconnect = reconnected_base.clone();
    let merged = merge(
        &disconnected,
        &reconnected_base,
        &reconnect,
        &["disconnected"],
    )
    .expect("merged");
    assert!(merged.disconnected.is_none(), "{merged:?}");
    let ignored = merge(&disconnected, &reconnected_base, &reconnect, &[]).expect("merged");
    assert!(
        ignored.disconnected.is_some(),
        "without the name, nothing to set"
    );
}
