//! The ledger (what was handled) and the audit trail (who handled what) of the DLQ tool.

use super::*;

pub(super) fn ledger_key(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}/{partition}/{offset}")
}

/// A replay or a resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The records are written again to where they came from.
    Replay,
    /// The records are marked handled without being sent.
    Resolve,
}

impl Action {
    /// What the ledger says of a record it handled.
    pub fn done(self) -> Handled {
        match self {
            Action::Replay => Handled::Replayed,
            Action::Resolve => Handled::Resolved,
        }
    }
}

/// How a record was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handled {
    Replayed,
    Resolved,
    /// A value this version does not know (written by a newer one, or by hand): the
    /// record still counts as handled, so it is not sent again.
    #[serde(other)]
    Other,
}

/// How a replay or resolve stands in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditStatus {
    /// Written before the first record is handled.
    Started,
    Completed,
    /// Ctrl-C: a rerun resumes.
    Interrupted,
    /// A write failed part way; `error` says which.
    Failed,
    /// A value this version does not know: the record is still listed.
    #[serde(other)]
    Other,
}

macro_rules! lowercase_display {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                // The serde name: one word, as stored.
                let text = serde_json::to_value(self).map_err(|_| std::fmt::Error)?;
                f.write_str(text.as_str().unwrap_or_default())
            }
        }
    )*};
}
lowercase_display!(Action, Handled, AuditStatus);

/// A moment as the ledger and audit records store it: RFC 3339, UTC, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    pub fn now() -> Self {
        Self(Utc::now())
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| Self(t.with_timezone(&Utc)))
            .map_err(serde::de::Error::custom)
    }
}

/// What the ledger says about a handled record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerEntry {
    pub action: Handled,
    /// The replay or resolve that handled it (its audit record's id).
    pub operation: String,
    pub at: Timestamp,
    pub operator: String,
}

/// One replay or resolve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    pub id: String,
    pub action: Action,
    pub operator: String,
    pub started_at: Timestamp,
    pub finished_at: Timestamp,
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
    /// `started` (written before the first record is handled), then how it ended.
    pub status: AuditStatus,
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
