//! The API's queryable view of the delivery log (#23): an embedded SQLite database,
//! filled by a reader of the log topic. Each batch of records is written in one
//! transaction together with the next offset of every partition it came from, so a
//! restart goes on exactly where the last committed batch ended (no gap, no double).
//!
//! - `attempts`: one row per log record (its JSON as written), keyed by (partition,
//!   offset): a record read twice is stored once.
//! - `messages`: one row per message (subscription, webhook-id) with what a list shows:
//!   its status, attempts so far, the last status code and times.
//! - `positions`: the next offset per partition of the log topic.
//!
//! Why SQLite (rusqlite, bundled): the queries are filters and ranges over a few
//! columns with a cursor, newest first (indexes do that; a key-value store such as redb
//! would need every secondary index written by hand), retention is a `DELETE ... WHERE`,
//! and one file per API instance is all there is to operate.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::{AttemptRecord, Entry, Outcome, Trigger};

/// What a message's list entry says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Delivered,
    /// Not attempted yet, or waiting behind its key (parked without an attempt).
    Pending,
    /// Its last attempt failed; another follows (in the lane or from the retry topic).
    Failing,
    DeadLettered,
    Dropped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Pending => "pending",
            Self::Failing => "failing",
            Self::DeadLettered => "dead_lettered",
            Self::Dropped => "dropped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Delivered,
            Self::Pending,
            Self::Failing,
            Self::DeadLettered,
            Self::Dropped,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// The status a message has after `record`.
    fn after(record: &AttemptRecord) -> Self {
        match record.outcome {
            Outcome::Delivered => Self::Delivered,
            Outcome::DeadLettered => Self::DeadLettered,
            Outcome::Dropped => Self::Dropped,
            Outcome::RetryScheduled => Self::Failing,
            Outcome::Parked if record.attempt == 0 => Self::Pending,
            Outcome::Parked => Self::Failing,
        }
    }
}

/// One message as a list shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Message {
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: Option<String>,
    pub order_id: String,
    pub partner: String,
    pub subscription_id: String,
    pub status: Status,
    pub attempts_count: u32,
    pub last_status_code: Option<u16>,
    pub last_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Which messages a list wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<Status>,
    pub event_type: Option<String>,
    pub order_id: Option<String>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub until: Option<chrono::DateTime<chrono::Utc>>,
}

/// Where a page of a list starts: after this (updated-at ms, webhook-id), newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub updated_ms: i64,
    pub webhook_id: String,
}

/// The layout of the view's tables (`PRAGMA user_version`).
const LAYOUT: i64 = 4;

/// The view, on one SQLite file.
pub struct LogView {
    db: Connection,
}

impl std::fmt::Debug for LogView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogView").finish_non_exhaustive()
    }
}

pub(super) fn ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: Option<i64>) -> Option<chrono::DateTime<chrono::Utc>> {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
}

impl LogView {
    /// Opens (or makes) the view at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let db = Connection::open(path)
            .map_err(|e| anyhow::anyhow!("delivery log view `{}`: {e}", path.display()))?;
        // The view is derived data: a file of another layout is emptied and read again
        // from the topic.
        let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != LAYOUT {
            db.execute_batch(
                "DROP TABLE IF EXISTS attempts; DROP TABLE IF EXISTS messages;
                 DROP TABLE IF EXISTS positions; DROP TABLE IF EXISTS filter_tallies;",
            )?;
        }
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS attempts (
                 partition INTEGER NOT NULL,
                 offset INTEGER NOT NULL,
                 subscription_id TEXT NOT NULL,
                 webhook_id TEXT NOT NULL,
                 partner TEXT NOT NULL,
                 started_ms INTEGER NOT NULL,
                 outcome TEXT NOT NULL,
                 attempted INTEGER NOT NULL,
                 duration_ms INTEGER NOT NULL,
                 to_webhook_ms INTEGER,
                 record TEXT NOT NULL,
                 PRIMARY KEY (partition, offset)
             );
             CREATE INDEX IF NOT EXISTS attempts_of_message
                 ON attempts (subscription_id, webhook_id, started_ms);
             CREATE INDEX IF NOT EXISTS attempts_in_window ON attempts (subscription_id, started_ms);
             CREATE INDEX IF NOT EXISTS attempts_by_age ON attempts (started_ms);
             CREATE TABLE IF NOT EXISTS messages (
                 subscription_id TEXT NOT NULL,
                 webhook_id TEXT NOT NULL,
                 partner TEXT NOT NULL,
                 event_id TEXT NOT NULL,
                 event_type TEXT,
                 order_id TEXT NOT NULL,
                 status TEXT NOT NULL,
                 attempts_count INTEGER NOT NULL,
                 last_status_code INTEGER,
                 last_attempt_ms INTEGER,
                 next_attempt_ms INTEGER,
                 updated_ms INTEGER NOT NULL,
                 PRIMARY KEY (subscription_id, webhook_id)
             );
             CREATE INDEX IF NOT EXISTS messages_newest
                 ON messages (subscription_id, updated_ms DESC, webhook_id DESC);
             CREATE INDEX IF NOT EXISTS messages_by_partner ON messages (partner, webhook_id);
             CREATE INDEX IF NOT EXISTS messages_by_webhook ON messages (webhook_id);
             CREATE INDEX IF NOT EXISTS messages_by_status ON messages (subscription_id, status);
             CREATE TABLE IF NOT EXISTS filter_tallies (
                 partition INTEGER NOT NULL,
                 offset INTEGER NOT NULL,
                 subscription_id TEXT NOT NULL,
                 partner TEXT NOT NULL,
                 to_ms INTEGER NOT NULL,
                 filtered_out INTEGER NOT NULL,
                 errors INTEGER NOT NULL,
                 PRIMARY KEY (partition, offset)
             );
             CREATE INDEX IF NOT EXISTS tallies_in_window ON filter_tallies (subscription_id, to_ms);
             CREATE TABLE IF NOT EXISTS positions (
                 partition INTEGER PRIMARY KEY,
                 next_offset INTEGER NOT NULL
             );",
        )?;
        db.execute_batch(&format!("PRAGMA user_version = {LAYOUT};"))?;
        Ok(Self { db })
    }

    /// The next offset to read per partition (what the last committed batch ended at).
    pub fn positions(&self) -> anyhow::Result<Vec<(i32, i64)>> {
        let mut q = self
            .db
            .prepare("SELECT partition, next_offset FROM positions ORDER BY partition")?;
        let rows = q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a batch of log records read from (partition, offset), and where each
    /// partition goes on, in one transaction. A record that does not parse is skipped
    /// (and counted by the caller); its position still moves.
    pub fn apply(&mut self, batch: &[(i32, i64, Option<Entry>)]) -> anyhow::Result<()> {
        let tx = self.db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO attempts (partition, offset, subscription_id,
                     webhook_id, started_ms, outcome, attempted, duration_ms,
                     to_webhook_ms, record, partner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            let mut message = tx.prepare_cached(
                "INSERT INTO messages (subscription_id, webhook_id, partner, event_id,
                     event_type, order_id, status, attempts_count, last_status_code,
                     last_attempt_ms, next_attempt_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT (subscription_id, webhook_id) DO UPDATE SET
                     event_type = coalesce(excluded.event_type, event_type),
                     attempts_count = attempts_count + excluded.attempts_count,
                     -- A record older than what the message shows (a job of a revoked
                     -- assignment ending late, a record written twice) counts, but
                     -- does not move the message's state back.
                     status = CASE WHEN excluded.updated_ms >= updated_ms
                         THEN excluded.status ELSE status END,
                     last_status_code = CASE WHEN excluded.attempts_count > 0
                         AND excluded.updated_ms >= coalesce(last_attempt_ms, 0)
                         THEN excluded.last_status_code ELSE last_status_code END,
                     last_attempt_ms = max(coalesce(excluded.last_attempt_ms, 0),
                         coalesce(last_attempt_ms, 0)),
                     next_attempt_ms = CASE WHEN excluded.updated_ms >= updated_ms
                         THEN excluded.next_attempt_ms ELSE next_attempt_ms END,
                     updated_ms = max(updated_ms, excluded.updated_ms)",
            )?;
            let mut position = tx.prepare_cached(
                "INSERT INTO positions (partition, next_offset) VALUES (?1, ?2)
                 ON CONFLICT (partition) DO UPDATE SET
                     next_offset = max(next_offset, excluded.next_offset)",
            )?;
            let mut tally = tx.prepare_cached(
                "INSERT OR IGNORE INTO filter_tallies (partition, offset, subscription_id,
                     partner, to_ms, filtered_out, errors)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for (partition, offset, record) in batch {
                position.execute(params![partition, offset + 1])?;
                let r = match record {
                    Some(Entry::Attempt(r)) => r,
                    Some(Entry::Tally(t)) => {
                        tally.execute(params![
                            partition,
                            offset,
                            t.subscription_id,
                            t.partner,
                            ms(t.to),
                            t.filtered_out as i64,
                            t.errors as i64
                        ])?;
                        continue;
                    }
                    None => continue,
                };
                let json = serde_json::to_string(r)?;
                // (A resend, recover or replay delivers later on purpose: not counted.)
                let first_delivery = matches!(r.trigger, Trigger::Scheduled | Trigger::Retry);
                let to_webhook = r
                    .occurred_at
                    .filter(|_| r.outcome == Outcome::Delivered && r.attempt > 0 && first_delivery)
                    .map(|at| (ms(r.started_at) + r.duration_ms as i64 - ms(at)).max(0));
                let fresh = insert.execute(params![
                    partition,
                    offset,
                    r.subscription_id,
                    r.webhook_id,
                    ms(r.started_at),
                    serde_json::to_value(r.outcome)?
                        .as_str()
                        .unwrap_or_default(),
                    r.attempt > 0,
                    r.duration_ms as i64,
                    to_webhook,
                    json,
                    r.partner
                ])?;
                if fresh == 0 {
                    // Read before (a restart between its batch and the next).
                    continue;
                }
                let attempted = r.attempt > 0;
                message.execute(params![
                    r.subscription_id,
                    r.webhook_id,
                    r.partner,
                    r.event_id,
                    r.event_type,
                    r.order_id,
                    Status::after(r).as_str(),
                    u32::from(attempted),
                    r.status_code,
                    attempted.then(|| ms(r.started_at)),
                    r.next_attempt_at.map(ms),
                    ms(r.started_at),
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// One message of `subscription` and its records, oldest first.
    pub fn message(
        &self,
        subscription: &str,
        webhook_id: &str,
    ) -> anyhow::Result<Option<(Message, Vec<AttemptRecord>)>> {
        let Some(message) = self
            .db
            .query_row(
                &format!("{SELECT_MESSAGE} WHERE subscription_id = ?1 AND webhook_id = ?2"),
                params![subscription, webhook_id],
                row_message,
            )
            .optional()?
        else {
            return Ok(None);
        };
        let mut q = self.db.prepare_cached(
            // (One message's records are in one partition, in the order written.)
            "SELECT record FROM attempts WHERE subscription_id = ?1 AND webhook_id = ?2
             ORDER BY partition, offset",
        )?;
        let records = q
            .query_map(params![subscription, webhook_id], |r| r.get::<_, String>(0))?
            .filter_map(|j| j.ok().and_then(|j| serde_json::from_str(&j).ok()))
            .collect();
        Ok(Some((message, records)))
    }

    /// The subscriptions of `partner` (or of anyone, `None`) that have a message
    /// `webhook_id`: an event goes to every subscription that matched it.
    pub fn subscriptions_of(
        &self,
        webhook_id: &str,
        partner: Option<&str>,
    ) -> anyhow::Result<Vec<String>> {
        let mut q = self.db.prepare_cached(
            "SELECT subscription_id FROM messages
             WHERE webhook_id = ?1 AND (?2 IS NULL OR partner = ?2)
             ORDER BY subscription_id",
        )?;
        let rows = q.query_map(params![webhook_id, partner], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Of `webhook_ids`, the messages of `subscription` the log shows as anything but
    /// dead-lettered now (a resend delivered one, or is on its way): what a recover
    /// leaves alone. A message the view does not have yet is not among them.
    pub fn not_dead_lettered(
        &self,
        subscription: &str,
        webhook_ids: &[String],
    ) -> anyhow::Result<std::collections::HashSet<String>> {
        let mut q = self.db.prepare_cached(
            "SELECT status FROM messages WHERE subscription_id = ?1 AND webhook_id = ?2",
        )?;
        let mut found = std::collections::HashSet::new();
        for id in webhook_ids {
            let status: Option<String> = q
                .query_row(params![subscription, id], |r| r.get(0))
                .optional()?;
            if status.is_some_and(|s| s != Status::DeadLettered.as_str()) {
                found.insert(id.clone());
            }
        }
        Ok(found)
    }

    /// A page of `subscription`'s messages, newest first (by their last record), at most
    /// `limit`, after `cursor`; and the cursor of the next page when there may be one.
    pub fn messages(
        &self,
        subscription: &str,
        partner: Option<&str>,
        filter: &Filter,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> anyhow::Result<(Vec<Message>, Option<Cursor>)> {
        let mut q = self.db.prepare_cached(&format!(
            "{SELECT_MESSAGE}
             WHERE subscription_id = ?1
               AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR event_type = ?3)
               AND (?4 IS NULL OR order_id = ?4)
               AND (?5 IS NULL OR updated_ms >= ?5)
               AND (?6 IS NULL OR updated_ms < ?6)
               AND (?7 IS NULL OR updated_ms < ?7 OR (updated_ms = ?7 AND webhook_id < ?8))
               AND (?10 IS NULL OR partner = ?10)
             ORDER BY updated_ms DESC, webhook_id DESC
             LIMIT ?9"
        ))?;
        let rows = q.query_map(
            params![
                subscription,
                filter.status.map(Status::as_str),
                filter.event_type,
                filter.order_id,
                filter.since.map(ms),
                filter.until.map(ms),
                cursor.map(|c| c.updated_ms),
                cursor.map(|c| c.webhook_id.as_str()),
                limit as i64 + 1,
                partner,
            ],
            |r| Ok((row_message(r)?, r.get::<_, i64>(11)?)),
        )?;
        let mut page: Vec<(Message, i64)> = rows.collect::<Result<_, _>>()?;
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            let (last, updated_ms) = &page[limit - 1];
            Cursor {
                updated_ms: *updated_ms,
                webhook_id: last.webhook_id.clone(),
            }
        });
        Ok((page.into_iter().map(|(m, _)| m).collect(), next))
    }
}

const SELECT_MESSAGE: &str = "SELECT webhook_id, event_id, event_type, order_id, partner,
        subscription_id, status, attempts_count, last_status_code, last_attempt_ms,
        next_attempt_ms, updated_ms FROM messages";

fn row_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<Message> {
    let status: String = r.get(6)?;
    Ok(Message {
        webhook_id: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        order_id: r.get(3)?,
        partner: r.get(4)?,
        subscription_id: r.get(5)?,
        status: Status::parse(&status).unwrap_or(Status::Pending),
        attempts_count: r.get(7)?,
        last_status_code: r.get(8)?,
        last_attempt_at: time(r.get(9)?),
        next_attempt_at: time(r.get(10)?),
    })
}

mod retention;
mod stats;
pub use stats::Stats;

#[cfg(test)]
mod tests;
