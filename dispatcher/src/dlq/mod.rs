//! SRE tooling for the per-partner dead-letter topics (`dlq.<partner>`): summary, list,
//! show, replay, resolve and the audit trail.
//!
//! Safe by construction:
//! - a replay writes only to `deliveries.<partner>` of the partner named on the command
//!   line, and only records whose `dlq-partner` header and subscription belong to that
//!   partner; the original key, payload and headers go back, so the `webhook-id` is the
//!   original one and the partner's deduplication still works;
//! - every record replayed or resolved gets an entry in the compacted ledger topic
//!   (key `dlq.<partner>/<partition>/<offset>`), written after the replayed record is
//!   acknowledged; a replay skips records the ledger already holds, so running the same
//!   replay twice sends nothing new and an interrupted replay resumes where it stopped;
//! - Ctrl-C stops between records: what was sent is in the ledger before the command
//!   exits. Only a crash (kill -9) between a replayed record's acknowledgement and its
//!   ledger entry can send that record again; it keeps its webhook-id, so the partner
//!   drops the duplicate;
//! - `--dry-run` reads and prints, and writes nothing;
//! - each replay or resolve appends an audit record (who, when, filter, count, first and
//!   last offsets per partition) to the audit topic.
//!
//! Every command reads the topics from their beginning to the end offsets seen when it
//! starts (a snapshot; records dead-lettered meanwhile wait for the next run), with a
//! group-less consumer: nothing is committed, no consumer group is joined.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::kafka::headers;
use crate::kafka::KafkaSettings;
use crate::subscriptions::table::SubscriptionTable;
use crate::subscriptions::{dead_letter_topic, delivery_topic};

/// `println!` that ignores a closed stdout (`dispatcher dlq list | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod filter;
mod ledger;
mod listing;
mod output;
mod replay;
#[cfg(test)]
mod tests;
mod topics;

pub use filter::{DlqRecord, Filter};
use ledger::*;
pub use ledger::{Action, AuditRecord, AuditStatus, Handled, LedgerEntry, Timestamp};
pub use listing::{dead_letter, dead_letters, DeadLetter, DeadLetterShown};
use output::*;
use replay::*;
use topics::*;

/// A command line mistake: printed as is, exit code 2, nothing sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Why a `dlq` command failed; the exit code follows from it.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Refused before anything was sent (bad filter, unknown partner, nothing matches).
    #[error(transparent)]
    Refused(#[from] Invalid),
    /// The broker or a write failed (what was sent before is recorded).
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl DlqError {
    /// 2 refused, 1 failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            DlqError::Refused(_) => 2,
            DlqError::Failed(_) => 1,
        }
    }
}

/// The `dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Per partner: records, pending ones, counts by reason, event type and status, the
    /// oldest and newest.
    Summary {
        /// Only this partner (default: every `dlq.*` topic).
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        topics: TopicArgs,
    },
    /// One line per dead-letter record matching the filter, with its state (pending,
    /// replayed, resolved).
    List {
        #[command(flatten)]
        filter: Filter,
        /// Lines printed at most.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(flatten)]
        topics: TopicArgs,
    },
    /// One record in full: headers, state and the webhook body as JSON.
    Show {
        #[arg(long)]
        partner: String,
        #[arg(long)]
        partition: i32,
        #[arg(long)]
        offset: i64,
        #[command(flatten)]
        topics: TopicArgs,
    },
    /// Send the matching pending records back to the partner's delivery topic, with
    /// their original webhook-id and a `replayed-from` header.
    Replay {
        #[command(flatten)]
        filter: Filter,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        topics: TopicArgs,
    },
    /// Mark the matching pending records as handled without sending them.
    Resolve {
        #[command(flatten)]
        filter: Filter,
        #[command(flatten)]
        run: RunArgs,
        #[command(flatten)]
        topics: TopicArgs,
    },
    /// The audit trail of replays and resolves, oldest first.
    Audit {
        /// Only this partner.
        #[arg(long)]
        partner: Option<String>,
        #[command(flatten)]
        topics: TopicArgs,
    },
}

/// Where the ledger and the audit trail live.
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// Compacted topic of handled dead-letter records (replayed or resolved).
    #[arg(long, env = "DLQ_LEDGER_TOPIC", default_value = "dlq-ledger")]
    pub ledger_topic: String,
    /// Topic of audit records, one per replay or resolve.
    #[arg(long, env = "DLQ_AUDIT_TOPIC", default_value = "dlq-audit")]
    pub audit_topic: String,
    /// The orders topic: where `--router` replays go.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders")]
    pub orders_topic: String,
    /// The router's dead-letter topic: what `--router` reads.
    #[arg(long, env = "ORDERS_DEAD_LETTER_TOPIC", default_value = "orders.dlq")]
    pub orders_dead_letter_topic: String,
}

impl TopicArgs {
    /// A partner's ledger and audit topics as the API finds them (`DLQ_LEDGER_TOPIC`,
    /// `DLQ_AUDIT_TOPIC`, else the defaults): the command's, so both see one ledger.
    pub fn from_env() -> Self {
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
        Self {
            ledger_topic: var("DLQ_LEDGER_TOPIC", "dlq-ledger"),
            audit_topic: var("DLQ_AUDIT_TOPIC", "dlq-audit"),
            orders_topic: String::new(),
            orders_dead_letter_topic: String::new(),
        }
    }
}

/// How a replay or resolve runs.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Print what would be done (count and a sample) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Records per second at most.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// Include records already replayed or resolved (a deliberate second replay).
    #[arg(long)]
    pub again: bool,
    /// Who runs this, for the audit trail.
    #[arg(long, env = "DLQ_OPERATOR")]
    pub operator: Option<String>,
    /// Print nothing (the API's recover answers with [`Counts`] instead), and a filter
    /// that matches nothing is a count of 0, not an error.
    #[arg(skip)]
    pub quiet: bool,
    /// A recover through the API: the records sent are marked `delivery-trigger:
    /// recover` (the delivery log's trigger; a CLI replay is `replay`).
    #[arg(skip)]
    pub recover: bool,
    /// For a recover: which of these webhook-ids the delivery log no longer shows as
    /// dead-lettered (a resend delivered it since): those are not sent again.
    #[arg(skip)]
    pub settled: Option<Settled>,
}

impl RunArgs {
    /// A replay through the API (quiet, 1,000 records a second, audited as `operator`).
    pub fn for_api(dry_run: bool, operator: String) -> Self {
        Self {
            dry_run,
            rate: 1_000.0,
            again: false,
            operator: Some(operator),
            quiet: true,
            recover: false,
            settled: None,
        }
    }
}

/// Of the webhook-ids given, those whose message is no longer dead-lettered.
pub type SettledCheck = dyn Fn(Vec<String>) -> futures::future::BoxFuture<'static, anyhow::Result<HashSet<String>>>
    + Send
    + Sync;

/// [`RunArgs::settled`]: a [`SettledCheck`].
#[derive(Clone)]
pub struct Settled(pub Arc<SettledCheck>);

impl std::fmt::Debug for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settled(..)")
    }
}

/// What a replay matched and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Records the filter matched.
    pub matched: usize,
    /// Of those, the ones replayed or resolved before (skipped).
    pub skipped: usize,
    /// Of those, the ones the delivery log shows delivered (or on their way) since
    /// (skipped by a recover: [`RunArgs::settled`]).
    pub settled: usize,
    /// Of those, the ones to send (a dry run sends none).
    pub todo: usize,
    /// Sent (and in the ledger).
    pub done: usize,
}

/// `dlq replay` of `filter` for the API's recover: quiet, with its counts.
pub async fn replay_counted(
    settings: &KafkaSettings,
    table: SubscriptionTable,
    filter: &Filter,
    run: &RunArgs,
    topics: &TopicArgs,
) -> Result<(Outcome, Counts), DlqError> {
    filter.validate(Utc::now())?;
    let kafka = Topics::connect(settings).await?;
    replay::handle(
        &kafka,
        Action::Replay,
        filter,
        run,
        topics,
        table,
        CancellationToken::new(),
    )
    .await
}

/// Runs one `dlq` subcommand; what it prints goes to stdout, progress to stderr.
pub async fn run(
    command: &DlqCommand,
    settings: &KafkaSettings,
    subscriptions: impl std::future::Future<Output = anyhow::Result<SubscriptionTable>>,
    interrupt: CancellationToken,
) -> Result<Outcome, DlqError> {
    let now = Utc::now();
    if let DlqCommand::List { filter, .. }
    | DlqCommand::Replay { filter, .. }
    | DlqCommand::Resolve { filter, .. } = command
    {
        filter.validate(now)?;
    }
    let kafka = Topics::connect(settings).await?;
    match command {
        DlqCommand::Summary { partner, topics } => {
            let partners = match partner {
                Some(p) => vec![kafka.partner(p)?],
                None => kafka.partners(),
            };
            if partners.is_empty() {
                say!("no dead-letter topics (dlq.*)");
            }
            let ledger = kafka.ledger(&topics.ledger_topic).await?;
            for partner in partners {
                let topic = dead_letter_topic(&partner);
                let records = kafka.read(&topic).await?;
                print_summary(&partner, &topic, &records, &ledger);
            }
            Ok(Outcome::Done)
        }
        DlqCommand::List {
            filter,
            limit,
            topics,
        } => {
            let topic = kafka.source(filter, topics)?.topic;
            let ledger = kafka.ledger(&topics.ledger_topic).await?;
            let records = kafka.read(&topic).await?;
            let matched: Vec<&DlqRecord> = records.iter().filter(|r| filter.matches(r)).collect();
            if matched.is_empty() {
                return Err(nothing_matches(&topic, records.len()));
            }
            say!("PARTITION/OFFSET  DEAD-LETTERED AT          EVENT TYPE            KEY                 STATUS  STATE      REASON");
            for r in matched.iter().take(*limit) {
                let state = ledger
                    .get(&r.ledger_key(&topic))
                    .map_or("pending".to_string(), |e| e.action.to_string());
                say!(
                    "{:<17} {:<25} {:<21} {:<19} {:<7} {:<10} {}",
                    format!("{}/{}", r.partition, r.offset),
                    r.timestamp.map_or("-".into(), |t| t
                        .to_rfc3339_opts(SecondsFormat::Millis, true)),
                    r.header(headers::EVENT_TYPE).unwrap_or("-"),
                    String::from_utf8_lossy(&r.key),
                    r.status().map_or("-".into(), |s| s.to_string()),
                    state,
                    r.header(headers::DLQ_REASON).unwrap_or("-"),
                );
            }
            say!(
                "{} of {} matching records shown",
                matched.len().min(*limit),
                matched.len()
            );
            Ok(Outcome::Done)
        }
        DlqCommand::Show {
            partner,
            partition,
            offset,
            topics,
        } => {
            let topic = dead_letter_topic(&kafka.partner(partner)?);
            let ledger = kafka.ledger(&topics.ledger_topic).await?;
            let records = kafka.read(&topic).await?;
            let r = records
                .iter()
                .find(|r| r.partition == *partition && r.offset == *offset)
                .ok_or_else(|| {
                    Invalid(format!(
                        "{topic} has no record at partition {partition}, offset {offset}"
                    ))
                })?;
            print_record(&topic, r, ledger.get(&r.ledger_key(&topic)));
            Ok(Outcome::Done)
        }
        DlqCommand::Replay {
            filter,
            run,
            topics,
        }
        | DlqCommand::Resolve {
            filter,
            run,
            topics,
        } => {
            let action = if matches!(command, DlqCommand::Replay { .. }) {
                Action::Replay
            } else {
                Action::Resolve
            };
            let table = subscriptions.await?;
            handle(&kafka, action, filter, run, topics, table, interrupt)
                .await
                .map(|(outcome, _)| outcome)
        }
        DlqCommand::Audit { partner, topics } => {
            let audit = kafka.audit(&topics.audit_topic).await?;
            let shown: Vec<&AuditRecord> = audit
                .iter()
                .filter(|a| partner.as_ref().is_none_or(|p| &a.partner == p))
                .collect();
            if shown.is_empty() {
                say!("no audit records");
            }
            for a in shown {
                let offsets: Vec<String> = a
                    .offsets
                    .iter()
                    .map(|(p, (first, last))| format!("{p}:{first}-{last}"))
                    .collect();
                say!(
                    "{} {} {} by {} partner={} count={} matched={} skipped={} status={}{} offsets=[{}] filter={} id={}",
                    a.finished_at,
                    a.action,
                    a.destination_topic.as_deref().map_or(a.source_topic.clone(), |d| format!("{} -> {d}", a.source_topic)),
                    a.operator,
                    a.partner,
                    a.count,
                    a.matched,
                    a.skipped,
                    a.status,
                    a.error.as_ref().map_or(String::new(), |e| format!(" error=\"{e}\"")),
                    offsets.join(" "),
                    serde_json::to_string(&a.filter).unwrap_or_default(),
                    a.id,
                );
            }
            Ok(Outcome::Done)
        }
    }
}

/// How a command ended (errors aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Ctrl-C stopped a replay or resolve; a rerun resumes.
    Interrupted,
}

fn nothing_matches(topic: &str, total: usize) -> DlqError {
    Invalid(format!(
        "no record of {topic} matches the filter ({total} records in the topic); nothing sent"
    ))
    .into()
}
