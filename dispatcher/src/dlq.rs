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

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
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

use crate::headers;
use crate::kafka::KafkaSettings;
use crate::subscription::{dead_letter_topic, delivery_topic};
use crate::table::SubscriptionTable;

/// `println!` that ignores a closed stdout (`dispatcher dlq list | head` must not panic).
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// A command line mistake: printed as is, exit code 2, nothing sent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

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

/// Which dead-letter records a command acts on. Every condition given must hold.
#[derive(Debug, Clone, Args, Serialize, Deserialize, PartialEq, Eq)]
pub struct Filter {
    /// The partner whose dead-letter topic is read (and, for replay, whose delivery
    /// topic is written).
    #[arg(long, default_value = "", hide_default_value = true)]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub partner: String,
    /// Instead of a partner's: the router's dead-letter topic (orders records it could
    /// not decode, e.g. during a registry outage or after a bad producer deploy); replay
    /// writes them back to the orders topic, where the router decodes them again.
    #[arg(long, conflicts_with = "partner")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub router: bool,
    /// Event type, e.g. order.created.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event_type: Option<String>,
    /// Text the dead-letter reason contains (case-insensitive), e.g. "retry policy".
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// HTTP status of the last attempt.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<u16>,
    /// Dead-lettered at or after this time (RFC 3339, e.g. 2026-11-22T10:00:00Z).
    #[arg(long, value_parser = parse_time)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub until: Option<DateTime<Utc>>,
    /// Only this partition of the dead-letter topic.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub partition: Option<i32>,
    /// Offsets from this one (inclusive).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub from_offset: Option<i64>,
    /// Offsets up to this one (inclusive).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub to_offset: Option<i64>,
    /// The record key (the order id).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
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
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time (e.g. 2026-11-22T10:00:00Z): {e}"))
}

impl Filter {
    /// Checks the filter on its own, before anything is read.
    pub fn validate(&self, now: DateTime<Utc>) -> Result<(), Invalid> {
        if self.partner.trim().is_empty() && !self.router {
            return Err(Invalid(
                "--partner: required (or --router for the router's dead-letter topic)".into(),
            ));
        }
        if let Some(t) = &self.event_type {
            if order_schemas::EventType::from_name(t).is_none() {
                let known: Vec<&str> = order_schemas::EventType::ALL
                    .iter()
                    .map(|e| e.name())
                    .collect();
                return Err(Invalid(format!(
                    "--event-type: unknown event type `{t}` (known: {})",
                    known.join(", ")
                )));
            }
        }
        if let Some(since) = self.since {
            if since > now {
                return Err(Invalid(format!(
                    "--since {}: the time range starts in the future (now is {})",
                    since.to_rfc3339_opts(SecondsFormat::Secs, true),
                    now.to_rfc3339_opts(SecondsFormat::Secs, true)
                )));
            }
        }
        if let (Some(since), Some(until)) = (self.since, self.until) {
            if since >= until {
                return Err(Invalid("--since must be before --until".into()));
            }
        }
        if let (Some(from), Some(to)) = (self.from_offset, self.to_offset) {
            if from > to {
                return Err(Invalid(format!(
                    "--from-offset {from} is after --to-offset {to}"
                )));
            }
        }
        Ok(())
    }

    pub fn matches(&self, r: &DlqRecord) -> bool {
        let lower = |s: &str| s.to_lowercase();
        self.event_type
            .as_ref()
            .is_none_or(|t| r.header(headers::EVENT_TYPE) == Some(t.as_str()))
            && self.reason.as_ref().is_none_or(|want| {
                r.header(headers::DLQ_REASON)
                    .is_some_and(|have| lower(have).contains(&lower(want)))
            })
            && self.status.is_none_or(|s| r.status() == Some(s))
            && self
                .since
                .is_none_or(|s| r.timestamp.is_some_and(|t| t >= s))
            && self
                .until
                .is_none_or(|u| r.timestamp.is_some_and(|t| t < u))
            && self.partition.is_none_or(|p| r.partition == p)
            && self.from_offset.is_none_or(|o| r.offset >= o)
            && self.to_offset.is_none_or(|o| r.offset <= o)
            && self
                .key
                .as_ref()
                .is_none_or(|k| r.key.as_slice() == k.as_bytes())
    }
}

/// One dead-letter record as read.
pub use crate::kafka::TopicRecord as DlqRecord;

impl DlqRecord {
    pub fn status(&self) -> Option<u16> {
        self.header(headers::DLQ_LAST_STATUS)
            .and_then(|s| s.parse().ok())
    }

    /// The reason without its details: `status 400 is not retried` stays, `refused: ...`
    /// becomes `refused`, `retry policy spent after 5 attempts` stays whole.
    pub fn reason_class(&self) -> String {
        let reason = self.header(headers::DLQ_REASON).unwrap_or("(none)");
        reason.split(':').next().unwrap_or(reason).to_string()
    }

    fn ledger_key(&self, topic: &str) -> String {
        ledger_key(topic, self.partition, self.offset)
    }
}

fn ledger_key(topic: &str, partition: i32, offset: i64) -> String {
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

/// Runs one `dlq` subcommand; what it prints goes to stdout, progress to stderr.
pub async fn run(
    command: &DlqCommand,
    settings: &KafkaSettings,
    subscriptions: impl std::future::Future<Output = anyhow::Result<SubscriptionTable>>,
    interrupt: CancellationToken,
) -> anyhow::Result<Outcome> {
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
                    .map_or("pending".to_string(), |e| e.action.clone());
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
        } => {
            handle(
                &kafka,
                Action::Replay,
                filter,
                run,
                topics,
                subscriptions.await?,
                interrupt,
            )
            .await
        }
        DlqCommand::Resolve {
            filter,
            run,
            topics,
        } => {
            handle(
                &kafka,
                Action::Resolve,
                filter,
                run,
                topics,
                subscriptions.await?,
                interrupt,
            )
            .await
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

fn nothing_matches(topic: &str, total: usize) -> anyhow::Error {
    Invalid(format!(
        "no record of {topic} matches the filter ({total} records in the topic); nothing sent"
    ))
    .into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Replay,
    Resolve,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Replay => "replay",
            Action::Resolve => "resolve",
        }
    }
    fn done(self) -> &'static str {
        match self {
            Action::Replay => "replayed",
            Action::Resolve => "resolved",
        }
    }
}

async fn handle(
    kafka: &Topics,
    action: Action,
    filter: &Filter,
    run: &RunArgs,
    topics: &TopicArgs,
    table: SubscriptionTable,
    interrupt: CancellationToken,
) -> anyhow::Result<Outcome> {
    if !(run.rate > 0.0 && run.rate.is_finite()) {
        return Err(Invalid(format!("--rate {}: must be above 0", run.rate)).into());
    }
    let Source {
        label: partner,
        topic: source,
        destination,
        partner: for_partner,
    } = kafka.source(filter, topics)?;
    if action == Action::Replay && !kafka.exists(&destination) {
        return Err(Invalid(format!(
            "`{partner}` has no destination topic `{destination}`; nothing sent"
        ))
        .into());
    }
    let ledger = kafka.ledger(&topics.ledger_topic).await?;
    let records = kafka.read(&source).await?;
    let matched: Vec<&DlqRecord> = records.iter().filter(|r| filter.matches(r)).collect();
    if matched.is_empty() {
        return Err(nothing_matches(&source, records.len()));
    }
    let (todo, skipped): (Vec<&DlqRecord>, Vec<&DlqRecord>) = matched
        .iter()
        .partition(|r| run.again || !ledger.contains_key(&r.ledger_key(&source)));
    // Never send a record to a partner it does not belong to, nor one its subscription
    // would refuse or drop. (Router dead letters go back to the orders topic, where the
    // router routes them as it would any record.)
    if action == Action::Replay && for_partner {
        let mut problems = Vec::new();
        for r in &todo {
            let owner = r.header(headers::DLQ_PARTNER);
            if owner.is_some_and(|o| o != partner) {
                problems.push(format!(
                    "{}/{}: dead-lettered for partner `{}`",
                    r.partition,
                    r.offset,
                    owner.unwrap_or_default()
                ));
                continue;
            }
            let id = r.header(headers::SUBSCRIPTION_ID).unwrap_or_default();
            match table.get(id) {
                None => problems.push(format!(
                    "{}/{}: subscription `{id}` no longer exists (resolve the record instead)",
                    r.partition, r.offset
                )),
                Some(s) if s.partner_id != partner => problems.push(format!(
                    "{}/{}: subscription `{id}` belongs to partner `{}`",
                    r.partition, r.offset, s.partner_id
                )),
                Some(s) if s.disabled => problems.push(format!(
                    "{}/{}: subscription `{id}` is disabled (410 Gone); re-enable it with `dispatcher subscriptions apply` first",
                    r.partition, r.offset
                )),
                Some(_) => {}
            }
        }
        if !problems.is_empty() {
            let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
            return Err(Invalid(format!(
                "{} of the {} records cannot be replayed; nothing sent:\n  {}{}",
                problems.len(),
                todo.len(),
                shown.join("\n  "),
                if problems.len() > 5 { "\n  ..." } else { "" }
            ))
            .into());
        }
    }
    let verb = action.name();
    if todo.is_empty() {
        say!(
            "nothing to {verb}: all {} matching records of {source} were already replayed or resolved (`dlq list` shows their state; --again repeats them)",
            matched.len()
        );
        return Ok(Outcome::Done);
    }
    let target = match action {
        Action::Replay => format!(" to {destination}"),
        Action::Resolve => String::new(),
    };
    if run.dry_run {
        say!(
            "dry run: would {verb} {} records of {source}{target} ({} matched, {} already handled and skipped); nothing changed",
            todo.len(),
            matched.len(),
            skipped.len()
        );
        for r in todo.iter().take(10) {
            say!(
                "  {}/{} {} key={} webhook-id={} reason={}",
                r.partition,
                r.offset,
                r.header(headers::EVENT_TYPE).unwrap_or("-"),
                String::from_utf8_lossy(&r.key),
                r.header(headers::WEBHOOK_ID).unwrap_or("-"),
                r.header(headers::DLQ_REASON).unwrap_or("-")
            );
        }
        if todo.len() > 10 {
            say!("  ... and {} more", todo.len() - 10);
        }
        return Ok(Outcome::Done);
    }

    kafka
        .settings
        .ensure_topics(
            std::slice::from_ref(&topics.ledger_topic),
            1,
            &[("cleanup.policy", "compact")],
        )
        .await
        .context("ledger topic")?;
    kafka
        .settings
        .ensure_topics(std::slice::from_ref(&topics.audit_topic), 1, &[])
        .await
        .context("audit topic")?;
    let producer: FutureProducer = kafka.settings.producer().create()?;
    let operator = run
        .operator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let id = uuid::Uuid::new_v4().to_string();
    let started_at = now_text();
    let progress = indicatif::ProgressBar::new(todo.len() as u64);
    progress.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message(format!("{verb} {source}"));
    let interval = Duration::from_secs_f64(1.0 / run.rate);
    let chunk = (run.rate.ceil() as usize).clamp(1, 100);
    let start = Instant::now();
    let mut offsets: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    let mut done = 0usize;
    let mut interrupted = false;
    let mut failed: Option<anyhow::Error> = None;
    let audit = |status: &str,
                 done: usize,
                 offsets: &BTreeMap<i32, (i64, i64)>,
                 error: Option<String>| AuditRecord {
        id: id.clone(),
        action: verb.into(),
        operator: operator.clone(),
        started_at: started_at.clone(),
        finished_at: now_text(),
        partner: partner.clone(),
        source_topic: source.clone(),
        destination_topic: (action == Action::Replay).then(|| destination.clone()),
        filter: filter.clone(),
        again: run.again,
        matched: matched.len(),
        skipped: skipped.len(),
        count: done,
        status: status.into(),
        error,
        offsets: offsets.clone(),
    };
    // Audited before the first record moves: a run that dies leaves at least this.
    write_audit(
        &producer,
        &topics.audit_topic,
        &audit("started", 0, &offsets, None),
    )
    .await?;
    'chunks: for batch in todo.chunks(chunk) {
        // Send the batch (paced), await every acknowledgement, then write its ledger
        // entries: a record is in the ledger only once it is durably where it belongs.
        let mut sent = Vec::with_capacity(batch.len());
        for r in batch {
            if interrupt.is_cancelled() {
                interrupted = true;
            }
            if interrupted {
                break;
            }
            let due = start + interval.mul_f64((done + sent.len()) as f64);
            tokio::select! {
                _ = interrupt.cancelled() => { interrupted = true; break; }
                _ = tokio::time::sleep_until(due.into()) => {}
            }
            if action == Action::Replay {
                let headers = replay_headers(r, &source, &id);
                let record = FutureRecord::to(&destination)
                    .key(&r.key)
                    .payload(&r.payload)
                    .headers(headers);
                let written = producer
                    .send(record, Timeout::After(Duration::from_secs(30)))
                    .await
                    .map_err(|(e, _)| e)
                    .with_context(|| {
                        format!("writing {}/{} to {destination}", r.partition, r.offset)
                    });
                if let Err(e) = written {
                    // What was sent before it is recorded below, then the run stops: a
                    // rerun resumes with this record and sends nothing twice.
                    failed = Some(e);
                    break;
                }
            }
            sent.push(*r);
        }
        let entry = serde_json::to_vec(&LedgerEntry {
            action: action.done().into(),
            operation: id.clone(),
            at: now_text(),
            operator: operator.clone(),
        })?;
        for r in &sent {
            let key = r.ledger_key(&source);
            let recorded = producer
                .send(
                    FutureRecord::to(&topics.ledger_topic)
                        .key(&key)
                        .payload(&entry),
                    Timeout::After(Duration::from_secs(30)),
                )
                .await
                .map_err(|(e, _)| e)
                .with_context(|| format!("writing the ledger entry of {key}"));
            if let Err(e) = recorded {
                // Sent but not recorded: a rerun sends these again (same webhook-id).
                failed.get_or_insert(e);
                break;
            }
            let span = offsets.entry(r.partition).or_insert((r.offset, r.offset));
            span.0 = span.0.min(r.offset);
            span.1 = span.1.max(r.offset);
            done += 1;
        }
        progress.set_position(done as u64);
        if interrupted || failed.is_some() {
            break 'chunks;
        }
    }
    progress.finish_and_clear();
    let status = match (&failed, interrupted) {
        (Some(_), _) => "failed",
        (None, true) => "interrupted",
        (None, false) => "completed",
    };
    let error = failed.as_ref().map(|e| format!("{e:#}"));
    write_audit(
        &producer,
        &topics.audit_topic,
        &audit(status, done, &offsets, error),
    )
    .await?;
    if let Some(e) = failed {
        return Err(e.context(format!(
            "{} {done} of {} records{target} before the failure (recorded: a rerun resumes, operation {id})",
            action.done(),
            todo.len()
        )));
    }
    if interrupted {
        say!(
            "interrupted: {} {done} of {} records{target} (operation {id}); run the same command again to resume",
            action.done(),
            todo.len()
        );
        Ok(Outcome::Interrupted)
    } else {
        say!(
            "{} {done} records of {source}{target} ({} matched, {} already handled and skipped); operation {id}, audited in {}",
            action.done(),
            matched.len(),
            skipped.len(),
            topics.audit_topic
        );
        Ok(Outcome::Done)
    }
}

async fn write_audit(
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

/// What a filter reads and where a replay of it writes.
struct Source {
    /// The partner, or `router:<topic>` (a colon no partner id has).
    label: String,
    topic: String,
    destination: String,
    /// A partner's topic (its subscriptions are checked before a replay).
    partner: bool,
}

/// The original headers without the dead-letter ones, plus where the record comes from.
fn replay_headers(r: &DlqRecord, source: &str, operation: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    for (k, v) in &r.headers {
        if !k.starts_with(headers::DLQ_PREFIX)
            && k != headers::REPLAYED_FROM
            && k != headers::REPLAY_OPERATION
        {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
    }
    let from = ledger_key(source, r.partition, r.offset);
    headers
        .insert(Header {
            key: headers::REPLAYED_FROM,
            value: Some(from.as_str()),
        })
        .insert(Header {
            key: headers::REPLAY_OPERATION,
            value: Some(operation),
        })
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn print_summary(
    partner: &str,
    topic: &str,
    records: &[DlqRecord],
    ledger: &HashMap<String, LedgerEntry>,
) {
    let pending = records
        .iter()
        .filter(|r| !ledger.contains_key(&r.ledger_key(topic)))
        .count();
    say!(
        "partner {partner} ({topic}): {} records, {pending} pending, {} handled",
        records.len(),
        records.len() - pending
    );
    if records.is_empty() {
        return;
    }
    let count = |f: &dyn Fn(&DlqRecord) -> String| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for r in records {
            *m.entry(f(r)).or_default() += 1;
        }
        m.into_iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    say!("  by reason:     {}", count(&|r| r.reason_class()));
    say!(
        "  by event type: {}",
        count(&|r| r
            .header(headers::EVENT_TYPE)
            .unwrap_or("(none)")
            .to_string())
    );
    say!(
        "  by status:     {}",
        count(&|r| r.status().map_or("(none)".into(), |s| s.to_string()))
    );
    let times: Vec<DateTime<Utc>> = records.iter().filter_map(|r| r.timestamp).collect();
    let text = |t: Option<&DateTime<Utc>>| {
        t.map_or("-".into(), |t| {
            t.to_rfc3339_opts(SecondsFormat::Millis, true)
        })
    };
    say!("  oldest:        {}", text(times.iter().min()));
    say!("  newest:        {}", text(times.iter().max()));
}

fn print_record(topic: &str, r: &DlqRecord, state: Option<&LedgerEntry>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "record {topic}/{}/{}", r.partition, r.offset);
    let _ = writeln!(
        out,
        "dead-lettered at: {}",
        r.timestamp.map_or("-".into(), |t| t
            .to_rfc3339_opts(SecondsFormat::Millis, true))
    );
    let _ = writeln!(out, "key: {}", String::from_utf8_lossy(&r.key));
    match state {
        Some(e) => {
            let _ = writeln!(
                out,
                "state: {} at {} by {} (operation {})",
                e.action, e.at, e.operator, e.operation
            );
        }
        None => {
            let _ = writeln!(out, "state: pending");
        }
    }
    let _ = writeln!(out, "headers:");
    for (k, v) in &r.headers {
        let _ = writeln!(out, "  {k}: {}", String::from_utf8_lossy(v));
    }
    match serde_json::from_slice::<serde_json::Value>(&r.payload) {
        Ok(json) => {
            let _ = writeln!(
                out,
                "payload (webhook body):\n{}",
                serde_json::to_string_pretty(&json).unwrap_or_default()
            );
        }
        Err(_) => {
            use base64::Engine;
            let _ = writeln!(
                out,
                "payload ({} bytes, not JSON), base64:\n{}",
                r.payload.len(),
                base64::engine::general_purpose::STANDARD.encode(&r.payload)
            );
        }
    }
}

/// Topic metadata of the cluster, read once, and group-less reads of whole topics.
struct Topics {
    settings: KafkaSettings,
    /// Topic name -> partitions.
    partitions: BTreeMap<String, Vec<i32>>,
}

const READ_TIMEOUT: Duration = Duration::from_secs(60);

impl Topics {
    async fn connect(settings: &KafkaSettings) -> anyhow::Result<Self> {
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

    fn exists(&self, topic: &str) -> bool {
        self.partitions.contains_key(topic)
    }

    /// Partners that have a dead-letter topic.
    fn partners(&self) -> Vec<String> {
        self.partitions
            .keys()
            .filter_map(|t| t.strip_prefix("dlq."))
            .map(str::to_string)
            .collect()
    }

    /// `partner` when it has a dead-letter topic; else an error naming the known ones.
    fn partner(&self, partner: &str) -> Result<String, Invalid> {
        if self.exists(&dead_letter_topic(partner)) {
            return Ok(partner.to_string());
        }
        let known = self.partners();
        Err(Invalid(format!(
            "unknown partner `{partner}`: there is no dead-letter topic `{}` (partners with one: {}); nothing sent",
            dead_letter_topic(partner),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        )))
    }

    /// The topic `filter` reads and where a replay of it goes.
    fn source(&self, filter: &Filter, topics: &TopicArgs) -> Result<Source, Invalid> {
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
    async fn read(&self, topic: &str) -> anyhow::Result<Vec<DlqRecord>> {
        let Some(partitions) = self.partitions.get(topic).cloned() else {
            return Ok(Vec::new());
        };
        let (settings, topic) = (self.settings.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || read_topic(&settings, &topic, &partitions)).await?
    }

    /// The ledger: handled records by key (latest entry wins, as compaction keeps).
    async fn ledger(&self, topic: &str) -> anyhow::Result<HashMap<String, LedgerEntry>> {
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
    async fn audit(&self, topic: &str) -> anyhow::Result<Vec<AuditRecord>> {
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

fn read_topic(
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

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    fn record(headers: &[(&str, &str)], offset: i64, secs: i64) -> DlqRecord {
        DlqRecord {
            partition: 1,
            offset,
            timestamp: DateTime::from_timestamp(secs, 0),
            key: b"order-1".to_vec(),
            payload: b"{}".to_vec(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn filter() -> Filter {
        Filter {
            partner: "acme".into(),
            router: false,
            event_type: None,
            reason: None,
            status: None,
            since: None,
            until: None,
            partition: None,
            from_offset: None,
            to_offset: None,
            key: None,
        }
    }

    #[test]
    fn every_condition_given_must_hold() {
        let r = record(
            &[
                ("event-type", "order.created"),
                ("dlq-reason", "status 400 is not retried"),
                ("dlq-last-status", "400"),
            ],
            7,
            1_000,
        );
        assert!(filter().matches(&r), "no condition matches all");
        let f = |edit: &dyn Fn(&mut Filter)| {
            let mut f = filter();
            edit(&mut f);
            f.matches(&r)
        };
        assert!(f(&|f| f.event_type = Some("order.created".into())));
        assert!(!f(&|f| f.event_type = Some("order.cancelled".into())));
        assert!(f(&|f| f.reason = Some("NOT RETRIED".into())));
        assert!(!f(&|f| f.reason = Some("retry policy".into())));
        assert!(f(&|f| f.status = Some(400)));
        assert!(!f(&|f| f.status = Some(500)));
        assert!(f(&|f| f.since = DateTime::from_timestamp(1_000, 0)));
        assert!(
            !f(&|f| f.until = DateTime::from_timestamp(1_000, 0)),
            "until is exclusive"
        );
        assert!(f(&|f| {
            f.from_offset = Some(7);
            f.to_offset = Some(7)
        }));
        assert!(!f(&|f| f.from_offset = Some(8)));
        assert!(!f(&|f| f.partition = Some(0)));
        assert!(f(&|f| f.key = Some("order-1".into())));
        assert!(!f(&|f| f.key = Some("order-2".into())));
    }

    #[test]
    fn bad_filters_are_refused_before_anything_is_read() {
        let now = Utc::now();
        let mut f = filter();
        f.since = Some(now + chrono::Duration::hours(1));
        let e = f.validate(now).expect_err("future");
        assert!(e.0.contains("--since") && e.0.contains("future"), "{e}");
        let mut f = filter();
        f.event_type = Some("order.shipped".into());
        let e = f.validate(now).expect_err("unknown type");
        assert!(
            e.0.contains("order.shipped") && e.0.contains("order.created"),
            "{e}"
        );
        let mut f = filter();
        f.from_offset = Some(5);
        f.to_offset = Some(4);
        assert!(f.validate(now).is_err());
        let mut f = filter();
        f.since = Some(now - chrono::Duration::hours(1));
        f.until = Some(now - chrono::Duration::hours(2));
        assert!(f.validate(now).is_err());
        assert!(filter().validate(now).is_ok());
    }

    #[test]
    fn replayed_records_keep_their_headers_but_not_the_dead_letter_ones() {
        let r = record(
            &[
                ("webhook-id", "evt-1"),
                ("subscription-id", "acme-s"),
                ("dlq-reason", "status 400 is not retried"),
            ],
            3,
            0,
        );
        let headers = replay_headers(&r, "dlq.acme", "op-1");
        let names: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("webhook-id".to_string(), "evt-1".to_string()),
                ("subscription-id".into(), "acme-s".into()),
                ("replayed-from".into(), "dlq.acme/1/3".into()),
                ("replay-operation".into(), "op-1".into()),
            ]
        );
    }
}
