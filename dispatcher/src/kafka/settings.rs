//! Kafka client settings shared by the dispatcher's consumers and producers.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::types::RDKafkaErrorCode;

/// Where the dispatcher's Kafka clients connect, and how.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    /// Consumer group session timeout. Default 10 s; tests use 6 s.
    pub session_timeout: Duration,
    /// librdkafka `max.poll.interval.ms`: also the time a rebalance waits for members
    /// to rejoin. Default 300 s.
    pub max_poll_interval: Duration,
    /// Extra librdkafka settings for every client (`key`, under what the code sets), or
    /// for one stage's client (`router:key`, `lanes:key`, `log:key`; [`KafkaSettings::STAGES`]),
    /// over the stage's own defaults.
    pub options: Vec<(String, String)>,
    /// Replication factor of the topics the dispatcher creates; `None` leaves it to
    /// the broker (`default.replication.factor`), never a fixed 1 that would keep a
    /// partner's deliveries on one broker's disk.
    pub replication: Option<i32>,
}

impl KafkaSettings {
    /// Stages whose client takes options of its own (`STAGE:key=value`): the router's
    /// and the lanes' consumers, the delivery log's producer.
    pub const STAGES: [&'static str; 3] = ["router", "lanes", "log"];

    /// Settings a stage's option may not change: its group and its membership in it
    /// (a static `group.instance.id` keeps a dead instance's partitions unread for a
    /// session timeout, and two instances with one id fence each other), the assignor
    /// (the lanes' retry reader follows cooperative-sticky's incremental changes), and
    /// how offsets are stored, committed (how much a revoke or crash redoes) and reset
    /// (at-least-once rests on them).
    const KEPT: [&'static str; 7] = [
        "group.id",
        "group.instance.id",
        "partition.assignment.strategy",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.commit.interval.ms",
        "auto.offset.reset",
    ];

    /// Whether `key` (of `key=value`) may be given: a stage's prefix names a stage of
    /// [`Self::STAGES`] and leaves the settings at-least-once rests on alone.
    pub fn check_option(key: &str) -> Result<(), String> {
        let Some((stage, name)) = key.split_once(':') else {
            return Ok(());
        };
        if !Self::STAGES.contains(&stage) {
            return Err(format!(
                "`{key}`: no stage `{stage}` (`router:`, `lanes:` or `log:`, or no prefix for every client)"
            ));
        }
        if Self::KEPT.contains(&name) {
            return Err(format!(
                "`{key}`: `{name}` is the dispatcher's to set (delivery guarantees rest on it)"
            ));
        }
        Ok(())
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("allow.auto.create.topics", "false");
        for (k, v) in self.options.iter().filter(|(k, _)| !k.contains(':')) {
            c.set(k, v);
        }
        c
    }

    /// `c` (a stage's client, with the stage's own defaults set) with the options given
    /// for `stage`, which win over those defaults. (Options for every client are already
    /// in `c`, under the code's settings, as for every other client.)
    pub fn staged(&self, stage: &str, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.options {
            if let Some(key) = k.strip_prefix(stage).and_then(|k| k.strip_prefix(':')) {
                c.set(key, v);
            }
        }
        c
    }

    /// A consumer that joins no group and commits nothing: for reading whole topics with
    /// `assign` (the `dlq` commands).
    pub fn reader(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", "orderhooks-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            // A position that is gone is an error, never a silent jump to the end.
            .set("auto.offset.reset", "error");
        c
    }

    /// An at-least-once consumer: offsets are stored by the code once work is finished
    /// and committed in the background (and on revoke) by librdkafka.
    pub fn consumer(&self, group: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group)
            .set("enable.auto.commit", "true")
            // Stored offsets are committed 4 times a second: a crash redoes at most
            // this much finished work (duplicates). At 1 s, five kill -9s during the
            // 20,000-event test redid 12,779 deliveries (docs/BENCHMARKS.md).
            .set("auto.commit.interval.ms", "250")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "max.poll.interval.ms",
                self.max_poll_interval.as_millis().to_string(),
            )
            .set("topic.metadata.refresh.interval.ms", "10000")
            // Bounded prefetch per partition: memory does not grow with lag.
            .set("queued.max.messages.kbytes", "8192")
            // Once that prefetch is full librdkafka waits this long before fetching
            // again (default 1 s): a lane that drains 8 MB faster than that sat idle
            // for the rest of the second (the deliveries bench showed gaps of 200-300
            // ms with nothing delivered). 50 ms keeps it fed at little cost.
            .set("fetch.queue.backoff.ms", "50");
        c
    }

    /// An idempotent producer (acks=all, per-partition order kept across retries) that
    /// retries without a deadline: a record is either written or the process stops.
    pub fn producer(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "0");
        c
    }

    /// The delivery log's producer ([`crate::attempts::AttemptLog`]): the instance's
    /// producer settings with a 50 ms linger, and the `log:` options. A job's offset
    /// waits for its record, its key does not, so nothing waits for the linger but the
    /// commit; the longer batches cost the lanes a fifth less CPU than the instance's
    /// 5 ms producer did (docs/BENCHMARKS.md, delivery log cost).
    pub fn log_producer(&self) -> ClientConfig {
        let mut c = self.producer();
        c.set("linger.ms", "50");
        self.staged("log", c)
    }

    /// A topic to create: `partitions` partitions, replicated as configured or as the
    /// broker's default (-1 in CreateTopics, Kafka 2.4 and later).
    pub fn new_topic<'a>(&self, name: &'a str, partitions: i32) -> NewTopic<'a> {
        NewTopic::new(
            name,
            partitions,
            TopicReplication::Fixed(self.replication.unwrap_or(-1)),
        )
    }

    /// Creates `names` (if missing) with `partitions` partitions and `configs`.
    pub async fn ensure_topics(
        &self,
        names: &[String],
        partitions: i32,
        configs: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        if names.is_empty() {
            // librdkafka refuses an empty CreateTopics (`apply --prune` of an empty file).
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.base().create()?;
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| {
                configs
                    .iter()
                    .fold(self.new_topic(n, partitions), |t, (k, v)| t.set(k, v))
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin.create_topics(topics.iter(), &options).await? {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => anyhow::bail!("cannot create topic `{name}`: {code}"),
            }
        }
        Ok(())
    }

    /// The number of partitions of `topic` (an error when it does not exist). Blocking.
    pub fn partition_count(&self, topic: &str) -> anyhow::Result<usize> {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = self.reader().create()?;
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && !t.partitions().is_empty())
            .map(|t| t.partitions().len())
            .ok_or_else(|| anyhow::anyhow!("topic `{topic}` has no partitions"))
    }

    /// The partition count of every topic of the cluster, in one metadata request.
    /// Blocking.
    pub fn all_partition_counts(&self) -> anyhow::Result<std::collections::HashMap<String, usize>> {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = self.reader().create()?;
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(30))?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| !t.partitions().is_empty())
            .map(|t| (t.name().to_string(), t.partitions().len()))
            .collect())
    }
}

/// One record as read by [`read_ranges`].
#[derive(Debug, Clone)]
pub struct TopicRecord {
    pub partition: i32,
    pub offset: i64,
    /// The record's timestamp.
    pub timestamp: Option<chrono::DateTime<chrono::Utc>>,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl TopicRecord {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

/// Reads offsets `from..to` of each listed partition of `topic` with a group-less
/// consumer (`assign`, nothing committed), sorted by partition and offset; an error when
/// `timeout` passes first. Blocking: call from `spawn_blocking`.
pub fn read_ranges(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    ranges: &std::collections::BTreeMap<i32, (i64, i64)>,
    timeout: Duration,
) -> anyhow::Result<Vec<TopicRecord>> {
    use rdkafka::message::Headers;
    use rdkafka::Message;
    let ranges = ranges
        .iter()
        .map(|(&p, &range)| ((topic.to_string(), p), range))
        .collect();
    let patience = Patience {
        idle: timeout,
        deadline: Some(std::time::Instant::now() + timeout),
        stop: None,
    };
    let mut records = Vec::new();
    visit_ranges(
        consumer,
        &ranges,
        patience,
        |m| {
            records.push(TopicRecord {
                partition: m.partition(),
                offset: m.offset(),
                timestamp: m
                    .timestamp()
                    .to_millis()
                    .and_then(chrono::DateTime::from_timestamp_millis),
                key: m.key().unwrap_or_default().to_vec(),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
            });
            true
        },
        |_, _| {},
    )?;
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

/// How long [`visit_ranges`] waits: at most `idle` for the next record, until
/// `deadline` in all, and not past `stop`.
#[derive(Debug, Clone)]
pub struct Patience {
    pub idle: Duration,
    pub deadline: Option<std::time::Instant>,
    pub stop: Option<tokio_util::sync::CancellationToken>,
}

/// Reads offsets `from..to` of each listed (topic, partition) at once with a group-less
/// consumer (`assign`, nothing committed), handing each record to `record` as it comes
/// (nothing is kept: memory does not grow with the ranges' size; `record` answering
/// false stops reading that partition, without `done`) and calling `done` for a
/// partition as soon as its range is read, while others go on. An error when no
/// record comes for `patience.idle`, when its deadline passes, or when the consumer
/// fails; the records handed over until then stay handed over (a caller may resume
/// after the last one it saw). Blocking: call from `spawn_blocking`.
pub fn visit_ranges(
    consumer: &rdkafka::consumer::BaseConsumer,
    ranges: &std::collections::BTreeMap<(String, i32), (i64, i64)>,
    patience: Patience,
    mut record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> bool,
    mut done: impl FnMut(&str, i32),
) -> anyhow::Result<()> {
    use anyhow::Context;
    use rdkafka::consumer::Consumer;
    use rdkafka::Message;
    let mut end: std::collections::HashMap<(String, i32), i64> = Default::default();
    let mut list = rdkafka::TopicPartitionList::new();
    for ((topic, p), &(from, to)) in ranges {
        if from < to {
            end.insert((topic.clone(), *p), to);
            list.add_partition_offset(topic, *p, rdkafka::Offset::Offset(from))?;
        } else {
            done(topic, *p);
        }
    }
    if end.is_empty() {
        return Ok(());
    }
    // The topics of the partitions not finished yet, for errors.
    let topics = |end: &std::collections::HashMap<(String, i32), i64>| {
        let mut t: Vec<&str> = end.keys().map(|(t, _)| t.as_str()).collect();
        t.sort_unstable();
        t.dedup();
        t.join(", ")
    };
    consumer.assign(&list)?;
    let mut last = std::time::Instant::now();
    while !end.is_empty() {
        if patience.stop.as_ref().is_some_and(|s| s.is_cancelled()) {
            anyhow::bail!("reading {}: stopped", topics(&end));
        }
        let now = std::time::Instant::now();
        if patience.deadline.is_some_and(|d| now > d) || now - last > patience.idle {
            anyhow::bail!(
                "reading {} timed out: {} ({} partitions unfinished)",
                topics(&end),
                if now - last > patience.idle {
                    format!("no record for {}s", patience.idle.as_secs())
                } else {
                    "past the deadline".to_string()
                },
                end.len()
            );
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = message.with_context(|| format!("reading {}", topics(&end)))?;
        let tp = (m.topic().to_string(), m.partition());
        // (A record of a partition already read, fetched before its pause below, is
        // no progress.)
        let Some(&to) = end.get(&tp) else { continue };
        last = std::time::Instant::now();
        let wanted = m.offset() >= to || record(&m);
        if !wanted || m.offset() + 1 >= to {
            end.remove(&tp);
            if wanted {
                done(&tp.0, tp.1);
            }
            // Stop fetching it: what is written there now is not wanted, and would fill
            // the prefetch beside the partitions still being read.
            let mut finished = rdkafka::TopicPartitionList::new();
            finished.add_partition(&tp.0, tp.1);
            let _ = consumer.pause(&finished);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(replication: Option<i32>) -> KafkaSettings {
        KafkaSettings {
            brokers: "127.0.0.1:9".into(),
            session_timeout: Duration::from_secs(6),
            max_poll_interval: Duration::from_secs(60),
            options: Vec::new(),
            replication,
        }
    }

    #[test]
    fn a_stage_takes_its_own_options_over_its_defaults_and_every_client_the_common_ones() {
        // A stage's option wins whatever the order of the flags.
        let options = [
            ("lanes:fetch.wait.max.ms", "100"),
            ("fetch.wait.max.ms", "300"),
            ("router:fetch.min.bytes", "10"),
            ("auto.offset.reset", "latest"),
        ];
        let kafka = KafkaSettings {
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..settings(None)
        };
        // No client is given a stage's key (librdkafka would refuse it).
        let reader = kafka.reader();
        assert_eq!(reader.get("fetch.wait.max.ms"), Some("300"));
        assert_eq!(reader.get("lanes:fetch.wait.max.ms"), None);
        let lanes = kafka.staged("lanes", kafka.consumer("g"));
        assert_eq!(lanes.get("fetch.wait.max.ms"), Some("100"));
        let log = kafka.log_producer();
        assert_eq!(log.get("linger.ms"), Some("50"), "the log's own default");
        assert_eq!(log.get("fetch.wait.max.ms"), Some("300"));
        let log = KafkaSettings {
            options: vec![("log:linger.ms".into(), "20".into())],
            ..settings(None)
        }
        .log_producer();
        assert_eq!(log.get("linger.ms"), Some("20"), "the log's option wins");
        let router = kafka.staged("router", kafka.consumer("g"));
        assert_eq!(router.get("fetch.wait.max.ms"), Some("300"));
        assert_eq!(router.get("fetch.min.bytes"), Some("10"));
        // An option for every client stays under what the code sets (at-least-once).
        assert_eq!(router.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(router.get("enable.auto.offset.store"), Some("false"));
        // and a stage's option may not change those.
        assert!(KafkaSettings::check_option("lanes:fetch.wait.max.ms").is_ok());
        // #22 item 9: membership, assignor and commit interval are fenced too.
        for kept in [
            "lanes:auto.commit.interval.ms",
            "lanes:partition.assignment.strategy",
            "router:group.instance.id",
        ] {
            let refused = KafkaSettings::check_option(kept).expect_err(kept);
            assert!(refused.contains("the dispatcher's to set"), "{refused}");
        }
        let kept = KafkaSettings::check_option("lanes:enable.auto.offset.store")
            .expect_err("a kept setting");
        assert!(kept.contains("enable.auto.offset.store"), "{kept}");
        let typo =
            KafkaSettings::check_option("lane:fetch.wait.max.ms").expect_err("no such stage");
        assert!(typo.contains("no stage `lane`"), "{typo}");
    }

    #[test]
    fn topics_take_the_brokers_replication_factor_unless_one_is_configured() {
        let default = settings(None);
        let topic = default.new_topic("deliveries.p", 3);
        assert!(matches!(topic.replication, TopicReplication::Fixed(-1)));
        let three = settings(Some(3));
        assert!(matches!(
            three.new_topic("deliveries.p", 3).replication,
            TopicReplication::Fixed(3)
        ));
    }
}
