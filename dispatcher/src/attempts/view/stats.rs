//! A subscription's figures over a window (`GET /v1/subscriptions/{id}/stats`): counts
//! by outcome, success rate, quantiles, the failures still open and an hourly series
//! (the console's chart).

use rusqlite::params;

use super::{ms, LogView};

/// What a subscription's attempts came to in a window.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Records by outcome (attempts and ends without one).
    pub by_outcome: std::collections::BTreeMap<String, u64>,
    /// Attempts made (requests sent).
    pub attempts: u64,
    /// Delivered attempts / attempts; `None` without attempts.
    pub success_rate: Option<f64>,
    /// p50 and p99 of the attempts' durations, in ms.
    pub attempt_duration_ms: Option<[u64; 2]>,
    /// p50 and p99 from the event to its delivery, in ms.
    pub time_to_webhook_ms: Option<[u64; 2]>,
    /// Messages whose last state is `failing`, and `dead_lettered` (whenever that was).
    pub open_failures: [u64; 2],
    /// Per hour of the window (oldest first, hours without attempts left out).
    pub hours: Vec<Hour>,
    /// Events the subscription's payload filter kept from it: `[filtered_out, errors]`
    /// (as of the router's last tally, every few seconds).
    pub filtered: [u64; 2],
}

/// One hour of a subscription's attempts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Hour {
    pub from: chrono::DateTime<chrono::Utc>,
    pub attempts: u64,
    pub delivered: u64,
    /// The mean time from the event to its delivery, of the deliveries of this hour.
    pub mean_time_to_webhook_ms: Option<u64>,
}

impl LogView {
    /// What `subscription`'s records since `since` came to.
    pub fn stats(
        &self,
        subscription: &str,
        partner: Option<&str>,
        since: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<Stats> {
        let since = ms(since);
        let mut by_outcome = std::collections::BTreeMap::new();
        let mut q = self.db.prepare_cached(
            "SELECT outcome, count(*) FROM attempts
             WHERE subscription_id = ?1 AND started_ms >= ?2 AND (?3 IS NULL OR partner = ?3)
             GROUP BY outcome",
        )?;
        for row in q.query_map(params![subscription, since, partner], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })? {
            let (outcome, n) = row?;
            by_outcome.insert(outcome, n as u64);
        }
        let (attempts, delivered): (i64, i64) = self.db.query_row(
            "SELECT count(*), coalesce(sum(outcome = 'delivered'), 0) FROM attempts
             WHERE subscription_id = ?1 AND started_ms >= ?2 AND attempted
               AND (?3 IS NULL OR partner = ?3)",
            params![subscription, since, partner],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let quantiles =
            |column: &str, only_delivered: bool| -> anyhow::Result<Option<[u64; 2]>> {
                let filter =
                    format!(
                "FROM attempts WHERE subscription_id = ?1 AND started_ms >= ?2 AND attempted
                 AND (?3 IS NULL OR partner = ?3) AND {column} IS NOT NULL{}",
                if only_delivered { " AND outcome = 'delivered'" } else { "" }
            );
                let n: i64 = self.db.query_row(
                    &format!("SELECT count(*) {filter}"),
                    params![subscription, since, partner],
                    |r| r.get(0),
                )?;
                if n == 0 {
                    return Ok(None);
                }
                let at = |q: f64| -> anyhow::Result<u64> {
                    let k = ((n - 1) as f64 * q).round() as i64;
                    Ok(self.db.query_row(
                        &format!("SELECT {column} {filter} ORDER BY {column} LIMIT 1 OFFSET ?4"),
                        params![subscription, since, partner, k],
                        |r| r.get::<_, i64>(0),
                    )? as u64)
                };
                Ok(Some([at(0.5)?, at(0.99)?]))
            };
        let mut open_failures = [0u64; 2];
        let mut q = self.db.prepare_cached(
            "SELECT status, count(*) FROM messages
             WHERE subscription_id = ?1 AND status IN ('failing', 'dead_lettered')
               AND (?2 IS NULL OR partner = ?2)
             GROUP BY status",
        )?;
        for row in q.query_map(params![subscription, partner], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })? {
            let (status, n) = row?;
            open_failures[usize::from(status == "dead_lettered")] = n as u64;
        }
        let mut q = self.db.prepare_cached(
            "SELECT started_ms / 3600000, count(*), coalesce(sum(outcome = 'delivered'), 0),
                    avg(CASE WHEN outcome = 'delivered' THEN to_webhook_ms END)
             FROM attempts
             WHERE subscription_id = ?1 AND started_ms >= ?2 AND attempted
               AND (?3 IS NULL OR partner = ?3)
             GROUP BY 1 ORDER BY 1",
        )?;
        let hours = q
            .query_map(params![subscription, since, partner], |r| {
                Ok(Hour {
                    from: chrono::DateTime::from_timestamp_millis(r.get::<_, i64>(0)? * 3_600_000)
                        .unwrap_or_default(),
                    attempts: r.get::<_, i64>(1)? as u64,
                    delivered: r.get::<_, i64>(2)? as u64,
                    mean_time_to_webhook_ms: r.get::<_, Option<f64>>(3)?.map(|m| m as u64),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let filtered: (i64, i64) = self.db.query_row(
            "SELECT coalesce(sum(filtered_out), 0), coalesce(sum(errors), 0) FROM filter_tallies
             WHERE subscription_id = ?1 AND to_ms >= ?2 AND (?3 IS NULL OR partner = ?3)",
            params![subscription, since, partner],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(Stats {
            filtered: [filtered.0 as u64, filtered.1 as u64],
            by_outcome,
            attempts: attempts as u64,
            success_rate: (attempts > 0).then(|| delivered as f64 / attempts as f64),
            attempt_duration_ms: quantiles("duration_ms", false)?,
            time_to_webhook_ms: quantiles("to_webhook_ms", true)?,
            open_failures,
            hours,
        })
    }
}
