//! The ledger (what was handled) and the audit trail (who handled what) of the DLQ tool.

use super::*;

pub(super) fn ledger_key(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// What the ledger says about a handled record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerEntry {
    /// `replayed` or `resolved`.
    pub action: String,
    /// The replay or resolve that handled it (its audit record's id).
    pub operation: String,
    pub at: String,
    pub operator: String,
}

/// One replay or resolve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub id: String,
    /// `replay` or `resolve`.
    pub action: String,
    pub operator: String,
    pub started_at: String,
    pub finished_at: String,
    pub partner: String,
    pub source_topic: String,
    /// Where replayed records went (none for a resolve).
    pub destination_topic: Option<String>,
    pub filter: Filter,
    pub again: bool,
    /// Records the filter matched, of which already handled (skipped), and handled now.
    pub matched: usize,
    pub skipped: usize,
    pub count: usize,
    /// `started` (written before the first record is handled), then `completed`,
    /// `interrupted` or `failed`.
    pub status: String,
    /// Why a `failed` run stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// First and last offset handled, per partition.
    pub offsets: BTreeMap<i32, (i64, i64)>,
}

pub(super) async fn write_audit(
    producer: &FutureProducer,
    topic: &str,
    a: &AuditRecord,
) -> anyhow::Result<()> {
    producer
        .send(
            FutureRecord::to(topic)
                .key(&a.partner)
                .payload(&serde_json::to_vec(a)?),
            Timeout::After(Duration::from_secs(30)),
        )
        .await
        .map_err(|(e, _)| e)
        .context("writing the audit record")?;
    Ok(())
}
