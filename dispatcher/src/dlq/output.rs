//! What `summary` and `show` print.

use super::*;

pub(super) fn print_summary(
    partner: &str,
    topic: &str,
    records: &[DlqRecord],
    ledger: &HashMap<String, LedgerEntry>,
) {
    let pending = records
        .iter()
        .filter(|r| !ledger.contains_key(&r.ledger_key(topic)))
        .count();
    say!(
        "partner {partner} ({topic}): {} records, {pending} pending, {} handled",
        records.len(),
        records.len() - pending
    );
    if records.is_empty() {
        return;
    }
    let count = |f: &dyn Fn(&DlqRecord) -> String| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for r in records {
            *m.entry(f(r)).or_default() += 1;
        }
        m.into_iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    say!("  by reason:     {}", count(&|r| r.reason_class()));
    say!(
        "  by event type: {}",
        count(&|r| r
            .header(headers::EVENT_TYPE)
            .unwrap_or("(none)")
            .to_string())
    );
    say!(
        "  by status:     {}",
        count(&|r| r.status().map_or("(none)".into(), |s| s.to_string()))
    );
    let times: Vec<DateTime<Utc>> = records.iter().filter_map(|r| r.timestamp).collect();
    let text = |t: Option<&DateTime<Utc>>| {
        t.map_or("-".into(), |t| {
            t.to_rfc3339_opts(SecondsFormat::Millis, true)
        })
    };
    say!("  oldest:        {}", text(times.iter().min()));
    say!("  newest:        {}", text(times.iter().max()));
}

pub(super) fn print_record(topic: &str, r: &DlqRecord, state: Option<&LedgerEntry>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "record {topic}/{}/{}", r.partition, r.offset);
    let _ = writeln!(
        out,
        "dead-lettered at: {}",
        r.timestamp.map_or("-".into(), |t| t
            .to_rfc3339_opts(SecondsFormat::Millis, true))
    );
    let _ = writeln!(out, "key: {}", String::from_utf8_lossy(&r.key));
    match state {
        Some(e) => {
            let _ = writeln!(
                out,
                "state: {} at {} by {} (operation {})",
                e.action, e.at, e.operator, e.operation
            );
        }
        None => {
            let _ = writeln!(out, "state: pending");
        }
    }
    let _ = writeln!(out, "headers:");
    for (k, v) in &r.headers {
        let _ = writeln!(out, "  {k}: {}", String::from_utf8_lossy(v));
    }
    match serde_json::from_slice::<serde_json::Value>(&r.payload) {
        Ok(json) => {
            let _ = writeln!(
                out,
                "payload (webhook body):\n{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
        Err(_) => {
            use base64::Engine;
            let _ = writeln!(
                out,
                "payload ({} bytes, not JSON), base64:\n{}",
                r.payload.len(),
                base64::engine::general_purpose::STANDARD.encode(&r.payload)
            );
        }
    }
}
