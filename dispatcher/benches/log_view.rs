//! The delivery log's view (#23) with a million attempts: how fast it takes them in,
//! how long a message or a page takes to answer, and its size on disk.
//!
//!   cargo bench -p dispatcher --bench log_view
//!
//! BENCH_ATTEMPTS (1,000,000) records over 20 subscriptions; a fifth of the messages
//! fail once or twice before delivery, 2 % are dead-lettered. Records go in as the
//! API's reader writes them (batches of 1,000 in one transaction with the positions),
//! from JSON as they come off the topic. The baseline, in the same run: parsing the
//! same records from JSON alone (what any reader of the topic pays). Then 2,000 look-ups
//! of one message (with its attempts), 2,000 first pages (20, newest first) and 2,000
//! pages of dead-lettered messages, each timed, and 100 stats of a subscription's
//! 50,000 records; p50 / p99 printed.

use std::time::Instant;

use dispatcher::attempts::view::{Filter, LogView, Status};
use dispatcher::attempts::{AttemptRecord, Entry, Outcome, Source, Trigger};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn records(n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(n);
    let start = 1_767_225_600_000i64;
    let mut message = 0u64;
    while out.len() < n {
        message += 1;
        let sub = format!("partner{}.s", message % 20);
        let failures = match message % 10 {
            0 => 2,
            1 => 1,
            _ => 0,
        };
        let dead = message % 50 == 7;
        for attempt in 1..=failures + 1 {
            let last = attempt == failures + 1;
            let (status, outcome) = match (last, dead) {
                (false, _) => (500, Outcome::RetryScheduled),
                (true, true) => (400, Outcome::DeadLettered),
                (true, false) => (204, Outcome::Delivered),
            };
            let r = AttemptRecord {
                v: 1,
                webhook_id: format!("{:08x}-0000-4000-8000-{message:012x}", message),
                event_id: format!("{:08x}-0000-4000-8000-{message:012x}", message),
                event_type: Some("order.status_changed".into()),
                order_id: format!("order-{}", message % 100_000),
                partner: format!("partner{}", message % 20),
                subscription_id: sub.clone(),
                url: Some("https://partner.example/hooks/orders".into()),
                attempt,
                trigger: if attempt == 1 {
                    Trigger::Scheduled
                } else {
                    Trigger::Retry
                },
                started_at: chrono::DateTime::from_timestamp_millis(start + (out.len() as i64) * 5)
                    .expect("time"),
                duration_ms: 40,
                status_code: Some(status),
                error: None,
                error_detail: None,
                outcome,
                next_attempt_at: None,
                response_content_type: Some("application/json".into()),
                response_retry_after: None,
                response_excerpt: Some(if status == 204 {
                    String::new()
                } else {
                    r#"{"error":"order not found","detail":"the order service answered 404"}"#
                        .into()
                }),
                occurred_at: None,
                source: Some(Source {
                    topic: format!("deliveries.partner{}", message % 20),
                    partition: (message % 6) as i32,
                    offset: message as i64,
                }),
            };
            out.push(serde_json::to_vec(&r).expect("json"));
            if out.len() == n {
                break;
            }
        }
    }
    out
}

fn quantiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

fn main() {
    let n = env_or("BENCH_ATTEMPTS", 1_000_000);
    let raw = records(n);
    // Baseline: parsing alone.
    let started = Instant::now();
    let parsed: Vec<AttemptRecord> = raw
        .iter()
        .map(|r| serde_json::from_slice(r).expect("parse"))
        .collect();
    let parse_rate = n as f64 / started.elapsed().as_secs_f64();
    drop(parsed);

    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("view.db");
    let mut view = LogView::open(&path).expect("open");
    let started = Instant::now();
    for (b, chunk) in raw.chunks(1_000).enumerate() {
        let batch: Vec<(i32, i64, Option<Entry>)> = chunk
            .iter()
            .enumerate()
            .map(|(i, r)| ((b % 6) as i32, (b * 1_000 + i) as i64, Entry::parse(r).ok()))
            .collect();
        view.apply(&batch).expect("apply");
    }
    let ingest = started.elapsed().as_secs_f64();
    let (records, messages) = view.counts().expect("counts");
    drop(view);
    let bytes: u64 = ["", "-wal", "-shm"]
        .iter()
        .filter_map(|s| std::fs::metadata(format!("{}{s}", path.display())).ok())
        .map(|m| m.len())
        .sum();
    let view = LogView::open(&path).expect("reopen");

    let timed = |f: &mut dyn FnMut(usize)| -> (f64, f64) {
        let ms: Vec<f64> = (0..2_000)
            .map(|i| {
                let t = Instant::now();
                f(i);
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        quantiles(ms)
    };
    let total_messages = messages as usize;
    let one = timed(&mut |i| {
        let m = (i * 7_919) % total_messages + 1;
        let id = format!("{:08x}-0000-4000-8000-{m:012x}", m as u64);
        let sub = format!("partner{}.s", m % 20);
        let found = view.message(&sub, &id).expect("message");
        assert!(found.is_some(), "{sub} {id}");
    });
    let page = timed(&mut |i| {
        let (items, _) = view
            .messages(
                &format!("partner{}.s", i % 20),
                Some(&format!("partner{}", i % 20)),
                &Filter::default(),
                None,
                20,
            )
            .expect("page");
        assert_eq!(items.len(), 20);
    });
    let dead = Filter {
        status: Some(Status::DeadLettered),
        ..Default::default()
    };
    let dead_page = timed(&mut |i| {
        let (items, _) = view
            // (Messages 7 mod 50 are dead-lettered: those of partners 7 and 17.)
            .messages(
                &format!("partner{}.s", [7, 17][i % 2]),
                None,
                &dead,
                None,
                20,
            )
            .expect("page");
        assert!(!items.is_empty());
    });
    // A subscription's stats over all it holds (50,000 records each): the 7-day window
    // of a busy subscription.
    let since = chrono::DateTime::from_timestamp_millis(0).expect("time");
    let stats_ms: Vec<f64> = (0..100)
        .map(|i| {
            let t = Instant::now();
            let s = view
                .stats(&format!("partner{}.s", i % 20), None, since)
                .expect("stats");
            assert!(s.attempts > 0);
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    let stats = quantiles(stats_ms);
    println!("delivery log view: {records} attempts of {messages} messages, 20 subscriptions (SQLite, WAL)");
    println!(
        "  ingest                 {:>9.0} attempts/s ({ingest:.1} s; batches of 1,000, one transaction each)",
        n as f64 / ingest
    );
    println!("  baseline: JSON parse   {parse_rate:>9.0} records/s (same records, same run)");
    println!(
        "  ingest / parse         {:>9.3}x",
        (n as f64 / ingest) / parse_rate
    );
    println!(
        "  disk                   {:>9.0} MiB ({:.0} bytes per attempt)",
        bytes as f64 / (1 << 20) as f64,
        bytes as f64 / n as f64
    );
    println!(
        "  one message + attempts  p50 {:.3} ms  p99 {:.3} ms",
        one.0, one.1
    );
    println!(
        "  first page (20)         p50 {:.3} ms  p99 {:.3} ms",
        page.0, page.1
    );
    println!(
        "  dead-lettered page      p50 {:.3} ms  p99 {:.3} ms",
        dead_page.0, dead_page.1
    );
    println!(
        "  stats of 50,000 records p50 {:.1} ms  p99 {:.1} ms (100 questions)",
        stats.0, stats.1
    );
}
