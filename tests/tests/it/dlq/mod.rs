//! `dispatcher dlq` against the real broker, registry, dispatcher and receiver: replay
//! sends exactly the filtered records, once, to the right partner, with their original
//! webhook-id; dry-run sends nothing; a rerun sends nothing new; an interrupted replay
//! resumes without duplicates; resolve; the audit trail; bad input.

use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use consumer_examples::receiver::{Receiver, Script};
use dispatcher::webhook::signing::Secret;
use e2e::{binary, brokers, closed_port, eventually, unique, DispatchWorld};
use order_schemas::{EventType, OrderEvent};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

/// A world plus its own ledger and audit topics.
struct Dlq {
    world: DispatchWorld,
    ledger: String,
    audit: String,
}

impl Dlq {
    fn args(&self, command: &[&str]) -> Vec<String> {
        let mut args = self.world.common_args();
        args.push("dlq".into());
        args.extend(command.iter().map(|s| s.to_string()));
        args.extend([
            "--ledger-topic".into(),
            self.ledger.clone(),
            "--audit-topic".into(),
            self.audit.clone(),
        ]);
        args
    }

    /// Runs `dispatcher dlq <command>` to completion.
    async fn run(&self, command: &[&str]) -> Output {
        let args = self.args(command);
        tokio::task::spawn_blocking(move || {
            Command::new(binary("dispatcher"))
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .expect("run dispatcher dlq")
        })
        .await
        .expect("join")
    }

    /// Runs it and expects exit code `code`; returns stdout.
    async fn expect(&self, code: i32, command: &[&str]) -> String {
        let out = self.run(command).await;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "dlq {command:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
        if code == 0 {
            stdout
        } else {
            stderr
        }
    }
}

/// Sum of the end offsets of `topic` (how many records were ever written to it; 0 while
/// it does not exist: a dead-letter topic is made on the first dead letter).
fn end_offsets(topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("watermarks"))
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .expect("metadata");
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return 0;
    };
    t.partitions()
        .iter()
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks")
                .1
        })
        .sum()
}

async fn end_offsets_async(topic: &str) -> i64 {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || end_offsets(&topic))
        .await
        .expect("join")
}

fn ids(events: &[&OrderEvent]) -> BTreeSet<String> {
    events.iter().map(|e| e.event_id().to_string()).collect()
}

mod refusals;
mod replay;
mod router;
