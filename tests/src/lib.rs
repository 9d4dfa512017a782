//! Harness for the end-to-end tests: the broker and registry started by
//! `scripts/test.sh` (found through `KAFKA_BOOTSTRAP_SERVERS` and `SCHEMA_REGISTRY_URL`),
//! a fresh topic per test, consumers tuned for the test broker, and child processes
//! that are killed by pid when dropped.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::Message;

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts the broker and the registry")
    })
}

/// Bootstrap servers of the test broker.
pub fn brokers() -> String {
    required_env("KAFKA_BOOTSTRAP_SERVERS")
}

/// Base URL of the test registry.
pub fn registry_url() -> String {
    required_env("SCHEMA_REGISTRY_URL")
}

/// `prefix` plus a random suffix, for topics and groups no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// An address on 127.0.0.1 where nothing listens.
pub fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr.to_string()
}

/// Creates `name` with `partitions` partitions on `brokers` and waits until it is usable.
pub async fn create_topic_on(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(name), Duration::from_secs(5))
            .expect("metadata");
        let ready = metadata.topics().iter().any(|t| {
            t.name() == name && t.error().is_none() && t.partitions().len() == partitions as usize
        });
        if ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topic {name} not ready after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a fresh topic on the test broker and returns its name.
pub async fn fresh_topic(prefix: &str, partitions: i32) -> String {
    let name = unique(prefix);
    create_topic_on(&brokers(), &name, partitions).await;
    name
}

/// A consumer of `topic` from the beginning, in a group of its own.
pub fn consumer(topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("e2e"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // The test broker's first join waits about half of this (DESIGN.md §5).
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// Reads `count` records of a dead-letter topic as (headers, body), within 60 s.
pub async fn dead_letters(
    topic: &str,
    count: usize,
) -> Vec<(std::collections::HashMap<String, String>, Vec<u8>)> {
    use rdkafka::message::Headers;
    read_exactly(topic, count, Duration::from_secs(60))
        .await
        .iter()
        .map(|m| {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            (headers, m.payload().unwrap_or_default().to_vec())
        })
        .collect()
}

/// Reads `count` records of `topic`, failing after `timeout` with what it got so far;
/// then waits a little longer to catch records that should not be there.
pub async fn read_exactly(topic: &str, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer = consumer(topic);
    let mut out = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = consumer.stream();
    while out.len() < count {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => out.push(m.detach()),
            Ok(Some(Err(e))) => panic!("consuming {topic}: {e}"),
            Ok(None) => break,
            Err(_) => panic!(
                "read {} of {count} records of {topic} in {timeout:?}",
                out.len()
            ),
        }
    }
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
        let extra = extra.expect("consume");
        panic!(
            "more than {count} records in {topic}: extra at offset {}",
            extra.offset()
        );
    }
    out
}

/// The path of a workspace binary, built next to the test executables.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run scripts/test.sh (it builds the binaries)",
        path.display()
    );
    path
}

/// Runs a workspace binary to completion with `stdin` as input.
pub fn run(name: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(binary(name))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait")
}

/// A long-running child process, killed by pid when dropped.
#[derive(Debug)]
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A dispatcher process with topics, groups and partner ids of its own.
#[derive(Debug)]
pub struct DispatcherProcess {
    pub process: Running,
    pub log: PathBuf,
    pub metrics_url: String,
}

/// A nisshi broker of one test's own, on a free port with a fresh data directory; stopped
/// by pid and its directory removed when dropped. For the heavy crash tests: nisshi slows
/// down with the data it holds and the consumers polling it (docs/ARCHITECTURE.md), so
/// they do not share the suite's broker.
#[derive(Debug)]
pub struct PrivateBroker {
    process: Running,
    dir: PathBuf,
    pub brokers: String,
}

/// Where a [`PrivateBroker`] keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStorage {
    /// SQLite in the broker's directory: durable across a broker restart.
    Sqlite,
    /// nisshi's in-process object store (`memory://`): lost when the broker stops, which
    /// only tests that never restart the broker may use.
    Memory,
}

impl PrivateBroker {
    /// A broker with SQLite storage.
    pub fn start() -> Self {
        Self::with_storage(BrokerStorage::Sqlite)
    }

    pub fn with_storage(storage: BrokerStorage) -> Self {
        let nisshi = std::env::var("NISSHI_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("CARGO_HOME").unwrap_or_else(|_| {
                    format!("{}/.cargo", std::env::var("HOME").unwrap_or_default())
                }))
                .join("bin/nisshi")
            });
        assert!(
            nisshi.exists(),
            "{} missing: scripts/install-nisshi.sh",
            nisshi.display()
        );
        let dir = tempfile_dir().join(unique("broker"));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let addr = closed_port();
        let url = format!("tcp://{addr}");
        // nisshi resolves the sqlite path against its working directory: run it there.
        let child = Command::new(nisshi)
            .current_dir(&dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                match storage {
                    BrokerStorage::Sqlite => "sqlite://nisshi.db",
                    BrokerStorage::Memory => "memory://nisshi/",
                },
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nisshi.log")).expect("log"))
            .spawn()
            .expect("start nisshi");
        let process = Running(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "nisshi did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            process,
            dir,
            brokers: addr,
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        if std::thread::panicking() {
            eprintln!(
                "test failed: broker data and log kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Names one test's dispatcher uses, so tests never share state.
#[derive(Debug, Clone)]
pub struct DispatchWorld {
    /// Bootstrap servers (the suite's broker unless [`DispatchWorld::on`]).
    pub brokers: String,
    pub orders_topic: String,
    pub subscriptions_topic: String,
    pub orders_dead_letter_topic: String,
    pub router_group: String,
    pub lane_group_prefix: String,
    /// Addresses webhooks may reach (the tests allowlist 127.0.0.1, nothing else).
    pub allow: String,
    /// Extra arguments of `dispatcher run`.
    pub run_args: Vec<String>,
    /// The audit trail every `dispatcher` command of this world writes.
    pub audit_topic: String,
    /// The registry `dispatcher run` decodes with (the suite's unless a test puts
    /// another in front of it).
    pub registry: String,
}

impl DispatchWorld {
    pub async fn new(allow: &str) -> Self {
        Self::on(&brokers(), allow).await
    }

    /// A world on another broker (a [`PrivateBroker`]).
    pub async fn on(brokers: &str, allow: &str) -> Self {
        let orders_topic = unique("orders");
        create_topic_on(brokers, &orders_topic, 3).await;
        Self {
            brokers: brokers.to_string(),
            subscriptions_topic: unique("subscriptions"),
            orders_dead_letter_topic: format!("{orders_topic}.dlq"),
            router_group: unique("router"),
            lane_group_prefix: unique("delivery"),
            allow: allow.to_string(),
            run_args: Vec::new(),
            registry: registry_url(),
            audit_topic: unique("subscription-audit"),
            orders_topic,
        }
    }

    /// A publisher of this world's orders topic (the test registry).
    pub async fn publisher(&self) -> producer::Publisher {
        producer::Publisher::connect(&producer::PublisherConfig::new(
            &self.brokers,
            &self.orders_topic,
            &registry_url(),
        ))
        .await
        .expect("publisher")
    }

    /// The flags every `dispatcher` command of this world takes (brokers, topics, allowlist).
    pub fn common_args(&self) -> Vec<String> {
        let mut args = vec![
            "--brokers".into(),
            self.brokers.clone(),
            "--subscriptions-topic".into(),
            self.subscriptions_topic.clone(),
            "--session-timeout-ms".into(),
            "6000".into(),
            "--partitions".into(),
            "3".into(),
            "--subscription-audit-topic".into(),
            self.audit_topic.clone(),
            // nisshi answers a fetch of a large backlog very slowly (a restarted router
            // waited minutes for its first 1 MB-per-partition fetch): smaller fetches
            // (docs/ARCHITECTURE.md, nisshi differences).
            "--kafka-option".into(),
            "max.partition.fetch.bytes=65536".into(),
        ];
        if !self.allow.is_empty() {
            args.extend(["--allow".into(), self.allow.clone()]);
        }
        args
    }

    /// `dispatcher subscriptions apply` of `yaml`; returns the process output.
    pub fn apply(&self, yaml: &str) -> Output {
        let dir = tempfile_dir();
        let file = dir.join(format!("{}.yaml", unique("subs")));
        std::fs::write(&file, yaml).expect("write subscriptions");
        let mut args = self.common_args();
        args.extend([
            "subscriptions".into(),
            "apply".into(),
            file.display().to_string(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run("dispatcher", &refs, "");
        let _ = std::fs::remove_file(&file);
        out
    }

    /// Starts `dispatcher run` and waits until it serves /metrics.
    pub fn start(&self) -> DispatcherProcess {
        let log = tempfile_dir().join(format!("{}.log", unique("dispatcher")));
        let mut args = self.common_args();
        args.extend([
            "run".into(),
            "--registry".into(),
            self.registry.clone(),
            "--orders-topic".into(),
            self.orders_topic.clone(),
            "--orders-dead-letter-topic".into(),
            self.orders_dead_letter_topic.clone(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--router-group".into(),
            self.router_group.clone(),
            "--lane-group-prefix".into(),
            self.lane_group_prefix.clone(),
            "--shutdown-deadline-ms".into(),
            "5000".into(),
        ]);
        args.extend(self.run_args.iter().cloned());
        let (process, addr) = spawn_listening(&args, &log);
        DispatcherProcess {
            process,
            log,
            metrics_url: format!("{addr}/metrics"),
        }
    }

    /// Starts `dispatcher api` with `tokens` (the YAML of its tokens file) and `extra`
    /// flags; returns once it listens.
    /// A new partner with a receiver running `script` and one subscription to it (for
    /// order.created and order.status_changed); `extra` is appended to the
    /// subscription's YAML (indented 4 spaces, e.g. `    retry: {...}\n`).
    pub async fn partner_with_receiver(
        &self,
        prefix: &str,
        script: consumer_examples::receiver::Script,
        extra: &str,
    ) -> (String, consumer_examples::receiver::Receiver) {
        let partner = unique(prefix);
        let secret = dispatcher::webhook::signing::Secret::generate();
        let receiver = consumer_examples::receiver::Receiver::start(
            "127.0.0.1:0".parse().expect("addr"),
            &secret,
            script,
        )
        .await
        .expect("receiver");
        let yaml = format!(
            "subscriptions:\n  - id: {partner}-s\n    partner_id: {partner}\n    url: {}\n    event_types: [order.created, order.status_changed]\n    secrets: [\"{secret}\"]\n{extra}",
            receiver.url()
        );
        let applied = self.apply(&yaml);
        assert!(applied.status.success(), "{applied:?}");
        (partner, receiver)
    }

    pub fn start_api(&self, tokens: &str, extra: &[&str]) -> ApiProcess {
        let dir = tempfile_dir();
        let tokens_file = dir.join(format!("{}.yaml", unique("tokens")));
        std::fs::write(&tokens_file, tokens).expect("tokens file");
        let log = dir.join(format!("{}.log", unique("api")));
        let audit_topic = self.audit_topic.clone();
        let mut args = self.common_args();
        args.extend([
            "api".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--tokens-file".into(),
            tokens_file.display().to_string(),
        ]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let (process, url) = spawn_listening(&args, &log);
        ApiProcess {
            process,
            log,
            url,
            audit_topic,
            tokens_file,
        }
    }
}

/// The events a receiver accepted, per order: each event once, in first-arrival order.
pub fn arrivals_per_order(
    receiver: &consumer_examples::receiver::Receiver,
) -> std::collections::HashMap<String, Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    let mut per_order: std::collections::HashMap<String, Vec<String>> = Default::default();
    for d in receiver.deliveries() {
        if seen.insert(d.webhook_id.clone()) {
            per_order.entry(d.order_id).or_default().push(d.webhook_id);
        }
    }
    per_order
}

/// The event ids of `order` among `sent`, in publish order.
pub fn sent_ids_of(sent: &[order_schemas::OrderEvent], order: &str) -> Vec<String> {
    sent.iter()
        .filter(|e| e.order_id() == order)
        .map(|e| e.event_id().to_string())
        .collect()
}

/// Asserts that the receiver got every order's events among `sent` in publish order.
pub fn assert_per_order(
    receiver: &consumer_examples::receiver::Receiver,
    sent: &[order_schemas::OrderEvent],
) {
    let got = arrivals_per_order(receiver);
    let mut orders: Vec<&str> = sent.iter().map(|e| e.order_id()).collect();
    orders.sort();
    orders.dedup();
    for order in orders {
        assert_eq!(
            got.get(order).cloned().unwrap_or_default(),
            sent_ids_of(sent, order),
            "{order}: events missing or out of order"
        );
    }
}

/// The admin token of [`api_tokens`].
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0001";

/// The API token of `partner` in [`api_tokens`].
pub fn partner_token(partner: &str) -> String {
    format!("token-of-{partner}-0123456789")
}

/// A tokens file for `dispatcher api`: the admin and each partner's token.
pub fn api_tokens(partners: &[&str]) -> String {
    let mut yaml = format!("admin: [\"{ADMIN_TOKEN}\"]\npartners:\n");
    for p in partners {
        yaml.push_str(&format!("  {p}: [\"{}\"]\n", partner_token(p)));
    }
    yaml
}

/// A running `dispatcher api`; stopped by pid when dropped.
#[derive(Debug)]
pub struct ApiProcess {
    pub process: Running,
    pub log: PathBuf,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Where it writes its audit trail.
    pub audit_topic: String,
    tokens_file: PathBuf,
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tokens_file);
    }
}

/// Starts `dispatcher <args>` with its log in `log` and waits for its
/// `listening on http://ADDR` line; returns the process and `http://ADDR`.
fn spawn_listening(args: &[String], log: &std::path::Path) -> (Running, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(binary("dispatcher"))
        .args(args)
        // E2E_DISPATCHER_LOG (a RUST_LOG filter) to see more of a failing test's dispatcher.
        .env(
            "RUST_LOG",
            std::env::var("E2E_DISPATCHER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn dispatcher");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("dispatcher did not start: {}", tail(log)))
        .to_string();
    (Running(child), addr)
}

impl DispatcherProcess {
    /// What its log says of its consumer groups so far: the rebalance lines logged, and
    /// whether every consumer's last one was an assignment (none is between a revoke and
    /// its next assignment).
    pub fn rebalances(&self) -> (usize, bool) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut last: std::collections::HashMap<String, bool> = Default::default();
        let mut lines = 0;
        for line in text.lines().map(without_colours) {
            let assigned = line.contains("partitions assigned");
            if !assigned && !line.contains("partitions revoked") {
                continue;
            }
            lines += 1;
            let consumer = line
                .split_once("consumer=")
                .and_then(|(_, rest)| rest.split_once(" partitions="))
                .map_or("", |(name, _)| name);
            last.insert(consumer.to_string(), assigned);
        }
        (lines, last.values().all(|a| *a))
    }

    /// The text of its `/metrics` (empty when it does not answer).
    pub async fn metrics_text(&self) -> String {
        match reqwest::get(&self.metrics_url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The value of the first metric line starting with `line_prefix` (name and labels,
    /// then a space).
    pub async fn metric(&self, line_prefix: &str) -> Option<f64> {
        self.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        let pid = self.process.0.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.process.0.wait().expect("wait");
        status.code()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl ApiProcess {
    /// `POST /v1/subscriptions` with `body` as `token`: (status, body).
    pub async fn create_subscription(
        &self,
        token: String,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.call(
            reqwest::Method::POST,
            "/v1/subscriptions",
            Some(&token),
            Some(body),
        )
        .await
    }

    /// A JSON call: (status, body; `Null` when the body is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let client = reqwest::Client::new();
        let mut request = client.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.expect("api call");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("orderhooks-e2e");
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The last lines of a log file, for failure messages.
pub fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last lines) ---\n{}",
        path.display(),
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// `line` without its ANSI colour codes.
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until the consumer groups of `instances` have settled: every consumer's last
/// rebalance was an assignment and none was logged for `quiet`. False if that has not
/// happened within `timeout`.
pub async fn groups_settled(
    instances: &[&DispatcherProcess],
    quiet: Duration,
    timeout: Duration,
) -> bool {
    let state = || {
        instances.iter().fold((0, true), |(n, all), d| {
            let (lines, assigned) = d.rebalances();
            (n + lines, all && assigned)
        })
    };
    let deadline = Instant::now() + timeout;
    let (mut seen, mut since) = (state(), Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = state();
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if seen.1 && since.elapsed() >= quiet {
            return true;
        }
    }
    false
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

/// A Schema Registry follower in front of the suite's registry (tests of registry
/// hiccups): answers the status set with [`FlakyRegistry::answer`] to every request (a
/// Confluent-style 404 "Schema not found" for 404), or forwards the request when it is
/// 0. One request per connection.
#[derive(Debug, Clone)]
pub struct FlakyRegistry {
    pub url: String,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FlakyRegistry {
    /// Starts one answering `status` (0: forward).
    pub async fn start(status: u16) -> Self {
        use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let this = Self {
            url: format!("http://{}", listener.local_addr().expect("addr")),
            status: Arc::new(AtomicU16::new(status)),
            refused: Arc::new(AtomicUsize::new(0)),
        };
        let (upstream, serving) = (registry_url(), this.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (upstream, serving) = (upstream.clone(), serving.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (code, body) = match serving.status.load(Ordering::SeqCst) {
                        0 => {
                            let answer = reqwest::get(format!("{upstream}{path}"))
                                .await
                                .expect("upstream");
                            let code = answer.status().as_u16();
                            (code, answer.text().await.unwrap_or_default())
                        }
                        404 => (
                            404,
                            r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                        ),
                        s => (s, format!(r#"{{"error_code":{s},"message":"no"}}"#)),
                    };
                    if code >= 400 {
                        serving.refused.fetch_add(1, Ordering::SeqCst);
                    }
                    let reply = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        this
    }

    /// From now on answer `status` (0: forward to the real registry).
    pub fn answer(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests answered with an error so far.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Writes one record with `headers` to `topic` (to `partition`, or by key) on
/// `brokers` and waits for the acknowledgement.
pub async fn produce_with_headers(
    brokers: &str,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record = FutureRecord::to(topic).key(key).payload(payload).headers(h);
    if let Some(p) = partition {
        record = record.partition(p);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .expect("produce");
}
