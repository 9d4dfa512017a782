//! `dispatcher log`: the delivery log for SREs, read straight from the log topic (no
//! API needed): one message's records, a subscription's failures, or a live tail.

use std::time::Duration;

use clap::{Args, Subcommand};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{AttemptRecord, Outcome};
use crate::kafka::KafkaSettings;

#[derive(Debug, Clone, Args)]
pub struct LogTopic {
    /// The delivery log's topic.
    #[arg(long, env = "DISPATCHER_ATTEMPTS_TOPIC", default_value = super::DEFAULT_TOPIC)]
    pub attempts_topic: String,
}

#[derive(Debug, Clone, Subcommand)]
pub enum LogCommand {
    /// Every record of one message (an event for a subscription), oldest first.
    Message {
        webhook_id: String,
        /// Only this subscription's (an event goes to every subscription that wants it).
        #[arg(long)]
        subscription: Option<String>,
        #[command(flatten)]
        topic: LogTopic,
    },
    /// A subscription's failed attempts and dead letters, oldest first.
    Failures {
        #[arg(long)]
        subscription: String,
        /// Only records at or after this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        #[command(flatten)]
        topic: LogTopic,
    },
    /// Records as they are written, until Ctrl-C (or `--count` of them).
    Tail {
        #[arg(long)]
        partner: Option<String>,
        #[arg(long)]
        subscription: Option<String>,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<usize>,
        #[command(flatten)]
        topic: LogTopic,
    },
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time (e.g. 2026-12-05T10:00:00Z): {e}"))
}

/// One record as a line: when, where, which attempt, what came back, what next.
pub fn line(r: &AttemptRecord) -> String {
    let answer = match (&r.status_code, &r.error) {
        (Some(s), _) => s.to_string(),
        (None, Some(e)) => e.clone(),
        (None, None) => "-".into(),
    };
    let next = r
        .next_attempt_at
        .map(|t| {
            format!(
                " next {}",
                t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        })
        .unwrap_or_default();
    let excerpt = r
        .response_excerpt
        .as_deref()
        .filter(|e| !e.is_empty())
        .map(|e| {
            let mut e: String = e.chars().filter(|c| !c.is_control()).take(80).collect();
            e.insert_str(0, " answer ");
            e
        })
        .unwrap_or_default();
    format!(
        "{} {} {} #{} {:?} {} {}ms {:?}{next}{excerpt}",
        r.started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        r.subscription_id,
        r.webhook_id,
        r.attempt,
        r.trigger,
        answer,
        r.duration_ms,
        r.outcome,
    )
}

/// Runs one `dispatcher log` command; prints to stdout. Errors name what is wrong.
pub async fn run(command: &LogCommand, settings: &KafkaSettings) -> anyhow::Result<()> {
    match command {
        LogCommand::Message {
            webhook_id,
            subscription,
            topic,
        } => {
            let found = read_all(settings, &topic.attempts_topic, |r| {
                &r.webhook_id == webhook_id
                    && subscription
                        .as_ref()
                        .is_none_or(|s| &r.subscription_id == s)
            })
            .await?;
            if found.is_empty() {
                anyhow::bail!(
                    "no record of message `{webhook_id}` in `{}`",
                    topic.attempts_topic
                );
            }
            for r in &found {
                println!("{}", line(r));
            }
        }
        LogCommand::Failures {
            subscription,
            since,
            topic,
        } => {
            let found = read_all(settings, &topic.attempts_topic, |r| {
                &r.subscription_id == subscription
                    && since.is_none_or(|s| r.started_at >= s)
                    && matches!(
                        r.outcome,
                        Outcome::RetryScheduled | Outcome::Parked | Outcome::DeadLettered
                    )
                    && (r.attempt > 0 || r.outcome == Outcome::DeadLettered)
            })
            .await?;
            for r in &found {
                println!("{}", line(r));
            }
            println!("{} failures of `{subscription}`", found.len());
        }
        LogCommand::Tail {
            partner,
            subscription,
            count,
            topic,
        } => {
            let consumer = reader(settings, &topic.attempts_topic, Offset::End)?;
            let mut stream = consumer.stream();
            let mut shown = 0;
            while count.is_none_or(|c| shown < c) {
                let Some(message) = stream.next().await else {
                    break;
                };
                let message = message?;
                let Some(r) = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<AttemptRecord>(p).ok())
                else {
                    continue;
                };
                if partner.as_ref().is_none_or(|p| &r.partner == p)
                    && subscription
                        .as_ref()
                        .is_none_or(|s| &r.subscription_id == s)
                {
                    println!("{}", line(&r));
                    shown += 1;
                }
            }
        }
    }
    Ok(())
}

/// A reader of every partition of `topic` from `at`.
fn reader(settings: &KafkaSettings, topic: &str, at: Offset) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = settings.reader().create()?;
    let partitions = crate::kafka::partitions_of(&consumer, topic, "the delivery log topic")?;
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        assignment.add_partition_offset(topic, p, at)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

/// The records of `topic` (up to its end when called) that `wanted`, in the order of
/// each partition (one message's records are in one partition).
async fn read_all(
    settings: &KafkaSettings,
    topic: &str,
    wanted: impl Fn(&AttemptRecord) -> bool,
) -> anyhow::Result<Vec<AttemptRecord>> {
    let consumer = reader(settings, topic, Offset::Beginning)?;
    let mut ends = std::collections::HashMap::new();
    let assignment = consumer.assignment()?;
    for e in assignment.elements() {
        let (low, high) =
            consumer.fetch_watermarks(topic, e.partition(), Duration::from_secs(10))?;
        if high > low {
            ends.insert(e.partition(), high);
        }
    }
    let mut found = Vec::new();
    let mut stream = consumer.stream();
    while !ends.is_empty() {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("reading `{topic}`: nothing for 30 s"))?
            .ok_or_else(|| anyhow::anyhow!("reading `{topic}` ended"))??;
        if ends
            .get(&message.partition())
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&message.partition());
        }
        if let Some(r) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<AttemptRecord>(p).ok())
        {
            if wanted(&r) {
                found.push(r);
            }
        }
    }
    Ok(found)
}
