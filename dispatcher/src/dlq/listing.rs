//! A partner's dead letters as data, for the API (what `summary` and `list` print).

use super::*;

/// One dead letter and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub dead_lettered_at: Option<DateTime<Utc>>,
    pub event_type: Option<String>,
    pub order_id: String,
    pub webhook_id: Option<String>,
    pub subscription_id: Option<String>,
    pub status: Option<u16>,
    pub reason: Option<String>,
    /// The reason without its details (`status 400 is not retried`).
    pub reason_class: String,
    /// `pending`, or what the ledger says was done (`replayed`, `resolved`).
    pub state: String,
}

/// A partner's dead letters: every record, newest first, with its ledger state.
pub async fn dead_letters(
    settings: &KafkaSettings,
    partner: &str,
    ledger_topic: &str,
) -> Result<Vec<DeadLetter>, DlqError> {
    let kafka = Topics::connect(settings).await?;
    let partner = kafka.partner(partner)?;
    let topic = dead_letter_topic(&partner);
    if !kafka.exists(&topic) {
        return Ok(Vec::new());
    }
    let ledger = kafka.ledger(ledger_topic).await?;
    let records = kafka.read(&topic).await?;
    let mut letters: Vec<DeadLetter> = records
        .iter()
        .map(|r| DeadLetter {
            partition: r.partition,
            offset: r.offset,
            dead_lettered_at: r.timestamp,
            event_type: r.header(headers::EVENT_TYPE).map(str::to_string),
            order_id: String::from_utf8_lossy(&r.key).into_owned(),
            webhook_id: r.header(headers::WEBHOOK_ID).map(str::to_string),
            subscription_id: r.header(headers::SUBSCRIPTION_ID).map(str::to_string),
            status: r.status(),
            reason: r.header(headers::DLQ_REASON).map(str::to_string),
            reason_class: r.reason_class(),
            state: match ledger.get(&r.ledger_key(&topic)).map(|e| e.action) {
                None => "pending",
                Some(Handled::Replayed) => "replayed",
                Some(Handled::Resolved) => "resolved",
                Some(Handled::Other) => "handled",
            }
            .to_string(),
        })
        .collect();
    letters.sort_by(|a, b| {
        b.dead_lettered_at
            .cmp(&a.dead_lettered_at)
            .then(b.offset.cmp(&a.offset))
    });
    Ok(letters)
}
