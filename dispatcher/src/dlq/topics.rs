//! Topic metadata of the cluster, and group-less reads of whole topics.

use super::*;

/// Topic metadata of the cluster, read once, and group-less reads of whole topics.
pub(super) struct Topics {
    pub(super) settings: KafkaSettings,
    /// Topic name -> partitions.
    pub(super) partitions: BTreeMap<String, Vec<i32>>,
}

pub(super) const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl Topics {
    pub(super) async fn connect(settings: &KafkaSettings) -> anyhow::Result<Self> {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = settings.reader().create()?;
            // Every topic's metadata: asking for one topic auto-creates it on some brokers.
            let metadata = consumer
                .fetch_metadata(None, Duration::from_secs(10))
                .with_context(|| {
                    format!("cannot reach the Kafka brokers at {}", settings.brokers)
                })?;
            let partitions = metadata
                .topics()
                .iter()
                .map(|t| {
                    (
                        t.name().to_string(),
                        t.partitions().iter().map(|p| p.id()).collect(),
                    )
                })
                .collect();
            Ok(Self {
                settings,
                partitions,
            })
        })
        .await?
    }

    pub(super) fn exists(&self, topic: &str) -> bool {
        self.partitions.contains_key(topic)
    }

    /// Partners that have a delivery topic (a dead-letter topic is made on a partner's
    /// first dead letter: a partner without one has none).
    pub(super) fn partners(&self) -> Vec<String> {
        self.partitions
            .keys()
            .filter_map(|t| t.strip_prefix("deliveries."))
            .map(str::to_string)
            .collect()
    }

    /// `partner` when it has a delivery topic; else an error naming the known ones.
    pub(super) fn partner(&self, partner: &str) -> Result<String, Invalid> {
        if self.exists(&delivery_topic(partner)) {
            return Ok(partner.to_string());
        }
        let known = self.partners();
        Err(Invalid(format!(
            "unknown partner `{partner}`: there is no delivery topic `{}` (known partners: {}); nothing sent",
            delivery_topic(partner),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )))
    }

    /// The topic `filter` reads and where a replay of it goes.
    pub(super) fn source(&self, filter: &Filter, topics: &TopicArgs) -> Result<Source, Invalid> {
        if filter.router {
            let topic = topics.orders_dead_letter_topic.clone();
            if !self.exists(&topic) {
                return Err(Invalid(format!(
                    "the router's dead-letter topic `{topic}` does not exist (--orders-dead-letter-topic); nothing sent"
                )));
            }
            return Ok(Source {
                label: format!("router:{topic}"),
                topic,
                destination: topics.orders_topic.clone(),
                partner: false,
            });
        }
        let partner = self.partner(&filter.partner)?;
        Ok(Source {
            topic: dead_letter_topic(&partner),
            destination: delivery_topic(&partner),
            label: partner,
            partner: true,
        })
    }

    /// Every record of `topic` up to its end offsets at the time of the call.
    pub(super) async fn read(&self, topic: &str) -> anyhow::Result<Vec<DlqRecord>> {
        let Some(partitions) = self.partitions.get(topic).cloned() else {
            return Ok(Vec::new());
        };
        let (settings, topic) = (self.settings.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || read_topic(&settings, &topic, &partitions)).await?
    }

    /// The ledger: handled records by key (latest entry wins, as compaction keeps).
    pub(super) async fn ledger(&self, topic: &str) -> anyhow::Result<HashMap<String, LedgerEntry>> {
        let mut ledger = HashMap::new();
        for r in self.read(topic).await? {
            let key = String::from_utf8_lossy(&r.key).into_owned();
            match serde_json::from_slice::<LedgerEntry>(&r.payload) {
                Ok(entry) => {
                    ledger.insert(key, entry);
                }
                Err(_) if r.payload.is_empty() => {
                    ledger.remove(&key);
                }
                Err(e) => tracing::warn!(%key, error = %e, "unreadable ledger entry skipped"),
            }
        }
        Ok(ledger)
    }

    /// One record per operation, as it last stood (`started` is followed by how the
    /// run ended; a run that died shows `started`), in the order they began.
    pub(super) async fn audit(&self, topic: &str) -> anyhow::Result<Vec<AuditRecord>> {
        let mut out: Vec<AuditRecord> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for r in self.read(topic).await? {
            let Ok(a) = serde_json::from_slice::<AuditRecord>(&r.payload) else {
                continue;
            };
            match at.get(&a.id) {
                Some(&i) => out[i] = a,
                None => {
                    at.insert(a.id.clone(), out.len());
                    out.push(a);
                }
            }
        }
        Ok(out)
    }
}

pub(super) fn read_topic(
    settings: &KafkaSettings,
    topic: &str,
    partitions: &[i32],
) -> anyhow::Result<Vec<DlqRecord>> {
    let consumer: BaseConsumer = settings.reader().create()?;
    let mut ranges = BTreeMap::new();
    for &p in partitions {
        let range = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .with_context(|| format!("end offsets of {topic} partition {p}"))?;
        ranges.insert(p, range);
    }
    crate::kafka::read_ranges(&consumer, topic, &ranges, READ_TIMEOUT)
}
