//! What the local-broker benchmarks share (`tests/benches/backlog.rs`, `latency.rs`): a
//! world of fresh topics on a broker, partners with receivers that answer at once, and
//! `dispatcher run` processes with default settings (plus BENCH_KAFKA_OPTIONS).

use super::*;

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU seconds (user + system) process `pid` has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// BENCH_KAFKA_OPTIONS (comma-separated librdkafka `key=value`) as pairs.
pub fn bench_kafka_options() -> Vec<(String, String)> {
    std::env::var("BENCH_KAFKA_OPTIONS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.trim().split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Fresh topic names on `brokers`, with an orders topic of 6 partitions (as the stack's).
#[derive(Debug, Clone)]
pub struct BenchWorld {
    pub brokers: String,
    pub orders_topic: String,
    pub subscriptions_topic: String,
    pub audit_topic: String,
}

impl BenchWorld {
    pub async fn on(brokers: &str) -> Self {
        let orders_topic = unique("orders");
        create_topic_on(brokers, &orders_topic, 6).await;
        Self {
            brokers: brokers.to_string(),
            orders_topic,
            subscriptions_topic: unique("subscriptions"),
            audit_topic: unique("audit"),
        }
    }

    /// The flags every `dispatcher` command of this world takes, then `extra`.
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        for (k, v) in bench_kafka_options() {
            args.extend(["--kafka-option".into(), format!("{k}={v}")]);
        }
        args.extend(
            [
                "--brokers",
                self.brokers.as_str(),
                "--subscriptions-topic",
                self.subscriptions_topic.as_str(),
                "--subscription-audit-topic",
                self.audit_topic.as_str(),
                "--allow",
                "127.0.0.1",
            ]
            .map(String::from),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// `n` partners named `<prefix><i>-...`, each with a receiver answering at once and
    /// one subscription (order.created, order.status_changed), applied in one go.
    pub async fn partners(
        &self,
        prefix: &str,
        n: usize,
    ) -> Vec<(String, consumer_examples::receiver::Receiver)> {
        self.partners_with(
            prefix,
            n,
            &consumer_examples::receiver::Script::default(),
            "",
        )
        .await
    }

    /// As [`Self::partners`], with receivers answering as `script` says and `extra`
    /// (YAML lines indented by four spaces, e.g. a retry policy) in each subscription.
    pub async fn partners_with(
        &self,
        prefix: &str,
        n: usize,
        script: &consumer_examples::receiver::Script,
        extra: &str,
    ) -> Vec<(String, consumer_examples::receiver::Receiver)> {
        let mut partners = Vec::new();
        let mut yaml = String::from("subscriptions:\n");
        for i in 0..n {
            let partner = unique(&format!("{prefix}{i}"));
            let secret = dispatcher::webhook::signing::Secret::generate();
            let receiver = consumer_examples::receiver::Receiver::start(
                "127.0.0.1:0".parse().expect("addr"),
                &secret,
                script.clone(),
            )
            .await
            .expect("receiver");
            yaml.push_str(&format!(
                "  - id: {partner}.s\n    partner_id: {partner}\n    url: {}\n    event_types: [order.created, order.status_changed]\n    secrets: [\"{secret}\"]\n{extra}",
                receiver.url()
            ));
            partners.push((partner, receiver));
        }
        let file = tempfile_dir().join(format!("{}.yaml", unique("bench-subs")));
        std::fs::write(&file, yaml).expect("subscriptions file");
        let path = file.display().to_string();
        let args = self.args(&["subscriptions", "apply", path.as_str()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let applied = run("dispatcher", &refs, "");
        assert!(applied.status.success(), "{applied:?}");
        let _ = std::fs::remove_file(&file);
        partners
    }

    /// Starts `dispatcher run` with default settings (logging warnings to a file);
    /// returns it and its `http://ADDR`.
    pub fn start_dispatcher(&self) -> (Running, String) {
        self.start_dispatcher_with(&[])
    }

    /// As [`Self::start_dispatcher`], with `extra` flags for `dispatcher run`.
    pub fn start_dispatcher_with(&self, extra: &[&str]) -> (Running, String) {
        let registry = registry_url();
        let dlq = format!("{}.dlq", self.orders_topic);
        let router_group = format!("{}-router", self.orders_topic);
        let lane_prefix = format!("{}-delivery", self.orders_topic);
        let mut run = vec![
            "run",
            "--registry",
            registry.as_str(),
            "--orders-topic",
            self.orders_topic.as_str(),
            "--orders-dead-letter-topic",
            dlq.as_str(),
            "--listen",
            "127.0.0.1:0",
            "--router-group",
            router_group.as_str(),
            "--lane-group-prefix",
            lane_prefix.as_str(),
        ];
        run.extend_from_slice(extra);
        let args = self.args(&run);
        let log = tempfile_dir().join(format!("{}.log", unique("bench-dispatcher")));
        eprintln!("  dispatcher log: {}", log.display());
        spawn_listening(&args, &log)
    }

    /// A publisher of this world's orders topic.
    pub async fn publisher(&self) -> producer::Publisher {
        publisher_on(&self.brokers, &self.orders_topic).await
    }
}
