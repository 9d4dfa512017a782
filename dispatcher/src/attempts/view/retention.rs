//! The view's retention: records older than `--log-retention-hours`, then the oldest
//! tenth at a time while the file is over `--log-max-mib`; and the gauges' sizes.

use rusqlite::params;

use super::{ms, LogView};

impl LogView {
    /// Removes records that started before `before` and messages whose last record is
    /// older; then, while the file is over `max_bytes`, the oldest tenth of what is
    /// left. Returns the records removed.
    pub fn expire(
        &mut self,
        before: chrono::DateTime<chrono::Utc>,
        max_bytes: u64,
    ) -> anyhow::Result<usize> {
        let cut = ms(before);
        let mut removed = self.remove_before(cut)?;
        for _ in 0..10 {
            if self.bytes()? <= max_bytes {
                break;
            }
            let (oldest, count): (Option<i64>, i64) =
                self.db
                    .query_row("SELECT min(started_ms), count(*) FROM attempts", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
            let Some(oldest) = oldest else { break };
            if count == 0 {
                break;
            }
            let tenth: i64 = self.db.query_row(
                "SELECT started_ms FROM attempts ORDER BY started_ms LIMIT 1 OFFSET ?1",
                params![count / 10],
                |r| r.get(0),
            )?;
            removed += self.remove_before(tenth.max(oldest + 1))?;
            self.db
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")?;
        }
        Ok(removed)
    }

    fn remove_before(&mut self, cut: i64) -> anyhow::Result<usize> {
        let tx = self.db.transaction()?;
        let removed = tx.execute("DELETE FROM attempts WHERE started_ms < ?1", params![cut])?;
        tx.execute("DELETE FROM filter_tallies WHERE to_ms < ?1", params![cut])?;
        tx.execute("DELETE FROM messages WHERE updated_ms < ?1", params![cut])?;
        tx.commit()?;
        Ok(removed)
    }

    /// The database's size in bytes (pages in use).
    pub fn bytes(&self) -> anyhow::Result<u64> {
        let (pages, size, free): (i64, i64, i64) = self.db.query_row(
            "SELECT (SELECT page_count FROM pragma_page_count()),
                    (SELECT page_size FROM pragma_page_size()),
                    (SELECT freelist_count FROM pragma_freelist_count())",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(((pages - free).max(0) * size) as u64)
    }

    /// Records and messages held.
    pub fn counts(&self) -> anyhow::Result<(u64, u64)> {
        Ok(self.db.query_row(
            "SELECT (SELECT count(*) FROM attempts), (SELECT count(*) FROM messages)",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }
}
