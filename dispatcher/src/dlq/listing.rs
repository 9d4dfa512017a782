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
    let mut letters: Vec<DeadLetter> = records.iter().map(|r| letter(r, &topic, &ledger)).collect();
    letters.sort_by(|a, b| {
        b.dead_lettered_at
            .cmp(&a.dead_lettered_at)
            .then(b.offset.cmp(&a.offset))
    });
    Ok(letters)
}

fn letter(r: &DlqRecord, topic: &str, ledger: &HashMap<String, LedgerEntry>) -> DeadLetter {
    DeadLetter {
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
        state: match ledger.get(&r.ledger_key(topic)).map(|e| e.action) {
            None => "pending",
            Some(Handled::Replayed) => "replayed",
            Some(Handled::Resolved) => "resolved",
            Some(Handled::Other) => "handled",
        }
        .to_string(),
    }
}

/// One dead letter in full: what the list shows, every header, the payload (the
/// webhook body, as text) and what the ledger says of it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterShown {
    #[serde(flatten)]
    pub letter: DeadLetter,
    pub headers: BTreeMap<String, String>,
    pub payload: String,
    pub handled: Option<LedgerEntry>,
}

/// The dead letter of `partner` at `partition`/`offset`, if there is one.
pub async fn dead_letter(
    settings: &KafkaSettings,
    partner: &str,
    partition: i32,
    offset: i64,
    ledger_topic: &str,
) -> Result<Option<DeadLetterShown>, DlqError> {
    let kafka = Topics::connect(settings).await?;
    let partner = kafka.partner(partner)?;
    let topic = dead_letter_topic(&partner);
    if !kafka
        .partitions
        .get(&topic)
        .is_some_and(|p| p.contains(&partition))
    {
        return Ok(None);
    }
    let (s, t) = (settings.clone(), topic.clone());
    let records = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<DlqRecord>> {
        use rdkafka::consumer::Consumer;
        let consumer: BaseConsumer = s.reader().create()?;
        let (low, high) = consumer.fetch_watermarks(&t, partition, Duration::from_secs(10))?;
        if offset < low || offset >= high {
            return Ok(Vec::new());
        }
        let ranges = [(partition, (offset, offset + 1))].into_iter().collect();
        crate::kafka::read_ranges(&consumer, &t, &ranges, Duration::from_secs(10))
    })
    .await
    .map_err(|e| DlqError::Failed(e.into()))?
    .map_err(DlqError::Failed)?;
    let Some(r) = records.into_iter().find(|r| r.offset == offset) else {
        return Ok(None);
    };
    let ledger = kafka.ledger(ledger_topic).await?;
    Ok(Some(DeadLetterShown {
        letter: letter(&r, &topic, &ledger),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect(),
        payload: String::from_utf8_lossy(&r.payload).into_owned(),
        handled: ledger.get(&r.ledger_key(&topic)).cloned(),
    }))
}
