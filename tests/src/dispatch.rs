//! A dispatcher world (its own topics and groups) and its processes; what partners received, per order.

use super::*;

/// A dispatcher process with topics, groups and partner ids of its own.
#[derive(Debug)]
pub struct DispatcherProcess {
    pub process: Running,
    pub log: PathBuf,
    pub metrics_url: String,
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
    /// The delivery log `dispatcher run` writes.
    pub attempts_topic: String,
    /// Where `dispatcher run` writes its partners' health and the API reads it.
    pub health_topic: String,
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
            attempts_topic: unique("attempts"),
            health_topic: unique("partner-health"),
            orders_topic,
        }
    }

    /// A publisher of this world's orders topic (the test registry).
    pub async fn publisher(&self) -> producer::Publisher {
        publisher_on(&self.brokers, &self.orders_topic).await
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
            "--partner-partitions".into(),
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
            "--attempts-topic".into(),
            self.attempts_topic.clone(),
            "--health-topic".into(),
            self.health_topic.clone(),
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
        // The world's delivery log, into a view file of this process's own (removed
        // when it ends), unless the test names them.
        let mut view = None;
        if !extra.contains(&"--attempts-topic") {
            args.extend(["--attempts-topic".into(), self.attempts_topic.clone()]);
        }
        if !extra.contains(&"--health-topic") {
            args.extend(["--health-topic".into(), self.health_topic.clone()]);
        }
        if !extra.contains(&"--log-view-path") {
            let path = dir.join(format!("{}.db", unique("log-view")));
            args.extend(["--log-view-path".into(), path.display().to_string()]);
            view = Some(path);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let (process, url) = spawn_listening(&args, &log);
        ApiProcess {
            process,
            log,
            url,
            audit_topic,
            tokens_file,
            view,
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

/// An event of `t` for `order` of `partner` with one line item and total `amount`
/// (minor units); a cancellation says why.
pub fn order_event(
    t: order_schemas::EventType,
    partner: &str,
    order: &str,
    amount: i64,
) -> order_schemas::OrderEvent {
    let mut j = order_schemas::OrderEvent::sample(t, order, partner, 1).to_json();
    j["order"]["total"]["amount_minor"] = amount.into();
    j["order"]["items"][0]["quantity"] = 1.into();
    j["order"]["items"][0]["unit_price"]["amount_minor"] = amount.into();
    if t == order_schemas::EventType::OrderCancelled {
        j["reason"] = "out of stock".into();
    }
    #[allow(clippy::expect_used)]
    order_schemas::OrderEvent::from_json(j.to_string().as_bytes()).expect("a valid event")
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

/// The value of the first line of Prometheus text `metrics` starting with `line_prefix`
/// (name and labels, then a space).
pub fn metric_value(metrics: &str, line_prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

impl DispatcherProcess {
    /// Its consumer group members as `/status` shows them: rebalances seen so far, and
    /// whether every member's last one was an assignment (none is between a revoke and
    /// its next assignment, or still waiting for its first). `None` when it does not
    /// answer.
    pub async fn rebalances(&self) -> Option<(u64, bool)> {
        let url = self.metrics_url.replace("/metrics", "/status");
        let status: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        let groups = status["groups"].as_object()?;
        let seen = groups
            .values()
            .map(|g| g["rebalances"].as_u64().unwrap_or(0))
            .sum();
        let assigned = groups.values().all(|g| g["last_rebalance"] == "assigned");
        Some((seen, assigned))
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
        metric_value(&self.metrics_text().await, line_prefix)
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
