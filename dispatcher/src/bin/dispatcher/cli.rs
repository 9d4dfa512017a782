//! The command line: flags (each with its environment variable) and their conversion to
//! the library's typed settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dispatcher::app::{RunConfig, Shared};
use dispatcher::kafka::KafkaSettings;
use dispatcher::webhook::ssrf::Allowlist;
use orderhooks_runtime::parse_key_value as parse_option;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Order events to signed, at-least-once partner webhooks"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Common {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        global = true,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,
    /// The compacted topic of subscriptions.
    #[arg(
        long,
        global = true,
        env = "SUBSCRIPTIONS_TOPIC",
        default_value = "subscriptions"
    )]
    pub subscriptions_topic: String,
    /// Non-public addresses webhooks may reach (IPs or CIDRs, comma-separated); empty
    /// means public addresses only.
    #[arg(
        long,
        global = true,
        env = "DISPATCHER_SSRF_ALLOWLIST",
        value_delimiter = ','
    )]
    pub allow: Vec<String>,
    /// Accept plain http:// webhook URLs to host names (development networks only).
    #[arg(long, global = true, env = "DISPATCHER_ALLOW_HTTP")]
    pub allow_http: bool,
    /// Refuse every plain http:// webhook URL, to allowlisted addresses too: webhooks
    /// always run over TLS (and present `--client-cert`). Checked wherever a
    /// subscription is validated (API, `subscriptions apply`, a dispatcher reading it).
    #[arg(long, global = true, env = "DISPATCHER_HTTPS_ONLY")]
    pub https_only: bool,
    /// The client certificate (PEM, the chain after it) every HTTPS webhook presents
    /// (mutual TLS); with `--client-key`. Reloaded when the files change or on SIGHUP:
    /// new connections present the new pair, a pair that does not load is refused with
    /// a log line and the one in use stays.
    #[arg(
        long,
        global = true,
        env = "DISPATCHER_CLIENT_CERT",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// The client certificate's private key (unencrypted PKCS#8 PEM).
    #[arg(
        long,
        global = true,
        env = "DISPATCHER_CLIENT_KEY",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// Consumer group session timeout in milliseconds.
    #[arg(
        long,
        global = true,
        env = "DISPATCHER_SESSION_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1_000..=3_600_000)
    )]
    pub session_timeout_ms: u64,
    /// librdkafka max.poll.interval.ms, which is also how long a rebalance waits for a
    /// member that does not rejoin, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "DISPATCHER_MAX_POLL_INTERVAL_MS",
        default_value_t = 300_000,
        value_parser = clap::value_parser!(u64).range(1_000..=86_400_000)
    )]
    pub max_poll_interval_ms: u64,
    /// Extra librdkafka setting, `key=value` for every client, or `router:key=value` /
    /// `lanes:key=value` for the router's or the lanes' consumer only (over its defaults,
    /// e.g. `lanes:fetch.wait.max.ms=100`); repeatable.
    #[arg(long = "kafka-option", global = true, value_parser = parse_kafka_option)]
    pub kafka_options: Vec<(String, String)>,
    /// Partitions of topics the dispatcher creates (per-partner delivery and dead-letter
    /// topics, the router's dead-letter topic).
    #[arg(
        long,
        global = true,
        env = "DISPATCHER_TOPIC_PARTITIONS",
        default_value_t = 6,
        value_parser = clap::value_parser!(i32).range(1..=10_000)
    )]
    pub partitions: i32,
    /// Partitions of each partner's topics (`deliveries.<partner>`, `retries.<partner>`,
    /// `dlq.<partner>`). Records of different keys in one partition are already
    /// delivered in parallel; partitions are what spread one partner over instances, and
    /// each costs the cluster (docs/ARCHITECTURE.md, "Thousands of partners").
    #[arg(
        long,
        global = true,
        env = "DISPATCHER_PARTNER_TOPIC_PARTITIONS",
        default_value_t = 2,
        value_parser = clap::value_parser!(i32).range(1..=1_000)
    )]
    pub partner_partitions: i32,
    /// Replication factor of the topics the dispatcher creates; unset uses the broker's
    /// `default.replication.factor` (production: 3, with `min.insync.replicas=2`).
    #[arg(long, global = true, env = "DISPATCHER_REPLICATION_FACTOR", value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: Option<i32>,
    /// Topic of the audit trail of subscription changes (the API, `subscriptions
    /// apply` and the dispatcher's own 410 disable and automatic disconnect write it).
    #[arg(long, global = true, env = "SUBSCRIPTION_AUDIT_TOPIC", default_value = dispatcher::subscriptions::audit::DEFAULT_TOPIC)]
    pub subscription_audit_topic: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Route orders and deliver webhooks until SIGTERM/SIGINT.
    Run(RunArgs),
    /// Manage the subscriptions topic.
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
    /// Serve the partner-facing API: subscriptions and recovery by polling.
    Api(ApiArgs),
    /// Inspect, replay and resolve the partners' dead-letter topics (`dlq.<partner>`).
    #[command(subcommand)]
    Dlq(dispatcher::dlq::DlqCommand),
    /// Read the delivery log: one message's attempts, a subscription's failures, a tail.
    #[command(subcommand)]
    Log(dispatcher::attempts::cli::LogCommand),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Schema Registry base URL.
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub registry: String,
    /// The orders topic.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders")]
    pub orders_topic: String,
    /// Where undecodable orders records go.
    #[arg(long, env = "ORDERS_DEAD_LETTER_TOPIC", default_value = "orders.dlq")]
    pub orders_dead_letter_topic: String,
    /// Address of /metrics and /healthz; the bound address is printed.
    #[arg(long, env = "DISPATCHER_LISTEN", default_value = "127.0.0.1:9100")]
    pub listen: SocketAddr,
    /// How long routing waits for a schema id the registry does not know (asking again)
    /// before its records go to the orders dead-letter topic, in milliseconds: a
    /// registry follower may lag a registration by a moment.
    #[arg(
        long,
        env = "DISPATCHER_UNKNOWN_SCHEMA_WAIT_MS",
        default_value_t = 20_000,
        value_parser = clap::value_parser!(u64).range(0..=3_600_000)
    )]
    pub unknown_schema_wait_ms: u64,
    /// Consumer group of the router.
    #[arg(
        long,
        env = "DISPATCHER_ROUTER_GROUP",
        default_value = "orderhooks-router"
    )]
    pub router_group: String,
    /// Group id prefix of the delivery lanes (`<prefix>.<partner>`).
    #[arg(
        long,
        env = "DISPATCHER_LANE_GROUP_PREFIX",
        default_value = "orderhooks-delivery"
    )]
    pub lane_group_prefix: String,
    /// Records taken from Kafka and unfinished per partner, at most.
    #[arg(long, env = "DISPATCHER_MAX_BUFFERED", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_buffered: u32,
    /// Records taken from Kafka and unfinished by all partners together, about at most:
    /// once reached, every partner holding some pauses (memory stays bounded with a
    /// thousand partners whose buffers are full).
    #[arg(long, env = "DISPATCHER_MAX_BUFFERED_TOTAL", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    pub max_buffered_total: u32,
    /// How long a partner without any subscription keeps its lane, in milliseconds;
    /// then its lane stops and what the instance holds of it is freed (a subscription
    /// for it starts a lane again, from its committed offsets).
    #[arg(long, env = "DISPATCHER_DEPARTED_LANE_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(0..=86_400_000))]
    pub departed_lane_ms: u64,
    /// How long shutdown waits for requests in flight, in milliseconds.
    #[arg(
        long,
        env = "DISPATCHER_SHUTDOWN_DEADLINE_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(0..=3_600_000)
    )]
    pub shutdown_deadline_ms: u64,
    /// Failures in a row (5xx, timeout, connection error) that open a partner's circuit.
    #[arg(long, env = "DISPATCHER_BREAKER_FAILURES", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub breaker_failures: u32,
    /// How long an open circuit waits before one probe, in milliseconds (doubles on each
    /// failed probe, up to 2 minutes).
    #[arg(long, env = "DISPATCHER_BREAKER_COOLDOWN_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub breaker_cooldown_ms: u64,
    /// Failed attempts after which a record leaves the lane for the partner's retry
    /// topic (`retries.<partner>`) and its key is parked there, so one failing order
    /// holds neither the partner's offset nor its other orders; 0 keeps every retry in
    /// the lane.
    #[arg(long, env = "DISPATCHER_PARK_AFTER_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub park_after_attempts: u32,
    /// The delivery log's topic: one record per webhook attempt and per end of a
    /// message (delivered, parked, dead-lettered, dropped), read by the API's view.
    /// Empty turns the log off.
    #[arg(long, env = "DISPATCHER_ATTEMPTS_TOPIC", default_value = dispatcher::attempts::DEFAULT_TOPIC)]
    pub attempts_topic: String,
    /// Bytes of each partner answer the delivery log keeps (lossy UTF-8); 0 keeps none.
    #[arg(long, env = "DISPATCHER_ATTEMPTS_BODY_BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub attempts_body_bytes: u64,
    /// How often the router writes to the delivery log how many events each
    /// subscription's payload filter kept from it (one record per subscription that
    /// has counts), in milliseconds.
    #[arg(long, env = "DISPATCHER_FILTER_TALLY_INTERVAL_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub filter_tally_interval_ms: u64,
    /// Where this instance writes its partners' health every 5 s, for the API's
    /// operators (`/v1/admin/partners`, the console). Empty writes none.
    #[arg(long, env = "DISPATCHER_HEALTH_TOPIC", default_value = dispatcher::health::publish::DEFAULT_TOPIC)]
    pub health_topic: String,
    /// A partner failing this long is disconnected: delivery stops and its events wait
    /// in Kafka until it is reconnected (API `POST /v1/partners/{p}/reconnect`), in
    /// milliseconds; 0 never disconnects. Default 24 hours.
    #[arg(
        long,
        env = "DISPATCHER_DISCONNECT_AFTER_MS",
        default_value_t = 86_400_000,
        value_parser = clap::value_parser!(u64).range(0..=31_536_000_000)
    )]
    pub disconnect_after_ms: u64,
    /// A partner whose oldest undelivered record is older than this is degraded, in
    /// seconds (failing past `--failing-age-secs`).
    #[arg(long, env = "DISPATCHER_DEGRADED_AGE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub degraded_age_secs: u64,
    /// A partner whose oldest undelivered record is older than this is failing, in seconds.
    #[arg(long, env = "DISPATCHER_FAILING_AGE_SECS", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub failing_age_secs: u64,
    /// Send every webhook through this HTTP(S) proxy (`http://proxy.internal:3128`).
    /// Without it webhooks go straight to partners and the environment's proxy
    /// variables are ignored for them (the registry and broker clients keep theirs). A
    /// proxy resolves partner host names itself, so it must then refuse private,
    /// loopback and link-local addresses: the SSRF guard can only check IP literals.
    #[arg(long, env = "DISPATCHER_EGRESS_PROXY")]
    pub egress_proxy: Option<String>,
    /// How often partners' health is judged, in milliseconds.
    #[arg(long, env = "DISPATCHER_HEALTH_INTERVAL_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub health_interval_ms: u64,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address to listen on; the bound address is printed.
    #[arg(long, env = "API_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// YAML file of tokens: `admin: [..]` and `partners: {partner-id: [..]}`; a token is
    /// given as itself (16 characters at least) or as `sha256:<hex of its digest>`.
    #[arg(long, env = "API_TOKENS_FILE")]
    pub tokens_file: PathBuf,
    /// Refuse webhook URLs that are not https (as the global `--https-only`, for the
    /// API's checks only).
    #[arg(long, env = "API_REQUIRE_HTTPS")]
    pub require_https: bool,
    /// A new subscription, or a URL change, is `pending_verification` until its
    /// endpoint answers the ownership challenge (docs/PARTNER_GUIDE.md); meanwhile a
    /// new subscription's events wait and a changed one's go to its previous URL.
    /// Subscriptions made before, or by `subscriptions apply`, stay verified. `false`
    /// for deployments whose partners cannot answer it yet.
    #[arg(long, env = "API_REQUIRE_ENDPOINT_VERIFICATION", default_value_t = true, action = clap::ArgAction::Set)]
    pub require_endpoint_verification: bool,
    /// How long a pending check is retried (1 s doubling to 1 min between challenges)
    /// before the URL is `verification_failed`, in seconds.
    #[arg(long, env = "API_ENDPOINT_VERIFICATION_WINDOW_SECS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub endpoint_verification_window_secs: u64,
    /// The compacted topic of the partners' second factors (TOTP enrolments, the last
    /// code used, wrong codes), made if missing. Access to it is access to the
    /// authenticator secrets: restrict it as the subscriptions topic.
    #[arg(long, env = "API_SECOND_FACTOR_TOPIC", default_value = dispatcher::api::second_factor::DEFAULT_TOPIC)]
    pub second_factor_topic: String,
    /// A partner must enrol a second factor (`POST /v1/partners/{p}/totp`) before it
    /// may create a subscription, change a URL, rotate a secret, delete a subscription
    /// or reconnect; without it, only enrolled partners are asked for a code.
    #[arg(long, env = "API_REQUIRE_SECOND_FACTOR")]
    pub require_second_factor: bool,
    /// Send the ownership challenges through this HTTP(S) proxy, as `dispatcher run
    /// --egress-proxy` sends webhooks (the same variable): partners that accept only our
    /// egress addresses must see the challenge come from there too.
    #[arg(long, env = "DISPATCHER_EGRESS_PROXY")]
    pub egress_proxy: Option<String>,
    /// How long an endpoint has to answer one challenge, in milliseconds.
    #[arg(long, env = "API_ENDPOINT_VERIFICATION_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub endpoint_verification_timeout_ms: u64,
    /// Subscriptions one partner may have; creating more answers 403 `quota_exceeded`.
    #[arg(long, env = "API_MAX_SUBSCRIPTIONS_PER_PARTNER", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_subscriptions_per_partner: u32,
    /// `GET /v1/partners/{p}/events` pages read at once; past that 429 with Retry-After.
    #[arg(long, env = "API_EVENTS_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub events_concurrency: u32,
    /// Live streams (`GET /v1/partners/{p}/stream`) one partner may have open on this
    /// instance; past that 429 with Retry-After.
    #[arg(long, env = "API_MAX_STREAMS_PER_PARTNER", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_streams_per_partner: u32,
    /// Live streams this instance serves at most, all partners together (each is a
    /// Kafka client of its own holding up to 2 MB ahead); past that 429 with Retry-After.
    #[arg(long, env = "API_MAX_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_streams: u32,
    /// A heartbeat (an SSE comment line) on every idle stream this often, in ms.
    #[arg(long, env = "API_STREAM_HEARTBEAT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(100..=300_000))]
    pub stream_heartbeat_ms: u64,
    /// Events a stream reads ahead of its client, at most.
    #[arg(long, env = "API_STREAM_BUFFER_EVENTS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub stream_buffer_events: u32,
    /// A stream whose client takes no event for this long while its buffer is full is
    /// closed (the client resumes by cursor), in ms.
    #[arg(long, env = "API_STREAM_SLOW_AFTER_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub stream_slow_after_ms: u64,
    /// Changes a partner token may make per second (create, change, pause, rotate,
    /// delete, reconnect), in bursts of `--partner-write-burst`; past that 429 with
    /// Retry-After. Each change wakes every dispatcher instance's held jobs. Admin
    /// tokens are not limited.
    #[arg(long, env = "API_PARTNER_WRITES_PER_SEC", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub partner_writes_per_sec: u32,
    /// The burst of `--partner-writes-per-sec`.
    #[arg(long, env = "API_PARTNER_WRITE_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub partner_write_burst: u32,
    /// The delivery log's topic (as `dispatcher run --attempts-topic`), read into this
    /// instance's view for `/v1/messages`; empty turns those endpoints off.
    #[arg(long, env = "API_ATTEMPTS_TOPIC", default_value = dispatcher::attempts::DEFAULT_TOPIC)]
    pub attempts_topic: String,
    /// The view's SQLite file (made when missing; each API instance has its own).
    #[arg(
        long,
        env = "API_LOG_VIEW_PATH",
        default_value = "delivery-log-view.db"
    )]
    pub log_view_path: PathBuf,
    /// How long the view keeps a record, in hours.
    #[arg(long, env = "API_LOG_RETENTION_HOURS", default_value_t = 168, value_parser = clap::value_parser!(u64).range(1..=8_760))]
    pub log_retention_hours: u64,
    /// How large the view may grow, in MiB; past that its oldest records go first.
    #[arg(long, env = "API_LOG_MAX_MIB", default_value_t = 10_240, value_parser = clap::value_parser!(u64).range(1..=10_485_760))]
    pub log_max_mib: u64,
    /// A file holding the web console's secret (32 bytes at least): it signs portal
    /// links and sessions, so every API instance given the same file accepts the
    /// others'. Without it, a random secret of this process's own.
    #[arg(long, env = "API_CONSOLE_SECRET_FILE")]
    pub console_secret_file: Option<std::path::PathBuf>,
    /// Where partners reach the console, without `/console` (`https://hooks.example.com`):
    /// the base of portal links, and https makes its cookies Secure. Default: the
    /// Host the link was asked on, over http.
    #[arg(long, env = "API_CONSOLE_URL")]
    pub console_url: Option<String>,
    /// The topic every API instance follows for the console's portal links used and
    /// sessions ended (made if missing: one partition, records kept 2 days).
    #[arg(long, env = "API_CONSOLE_TOPIC", default_value = "console-ledger")]
    pub console_topic: String,
    /// The topic the dispatchers write their partners' health to (`dispatcher run
    /// --health-topic`); empty: the operators' partners table has no health.
    #[arg(long, env = "API_HEALTH_TOPIC", default_value = dispatcher::health::publish::DEFAULT_TOPIC)]
    pub health_topic: String,
}

#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// Validate a YAML/JSON file of subscriptions and write it to the topic, creating
    /// each partner's delivery and dead-letter topics.
    Apply {
        file: PathBuf,
        /// Also delete subscriptions that are in the topic but not in the file.
        #[arg(long)]
        prune: bool,
    },
    /// Print the subscriptions in the topic (secrets redacted).
    List,
}

/// `key=value`, or `STAGE:key=value` ([`KafkaSettings::check_option`]).
fn parse_kafka_option(text: &str) -> Result<(String, String), String> {
    let (key, value) = parse_option(text)?;
    KafkaSettings::check_option(&key)?;
    Ok((key, value))
}

impl Common {
    pub fn kafka(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.brokers.clone(),
            session_timeout: Duration::from_millis(self.session_timeout_ms),
            max_poll_interval: Duration::from_millis(self.max_poll_interval_ms),
            options: self.kafka_options.clone(),
            replication: self.replication_factor,
        }
    }

    pub fn allowlist(&self) -> anyhow::Result<Allowlist> {
        Allowlist::parse(&self.allow)
            .map(|a| {
                a.with_plain_http(self.allow_http)
                    .with_https_only(self.https_only)
            })
            .map_err(|e| anyhow::anyhow!("--allow / DISPATCHER_SSRF_ALLOWLIST: {e}"))
    }

    pub fn shared(&self) -> anyhow::Result<Shared> {
        Ok(Shared {
            kafka: self.kafka(),
            subscriptions_topic: self.subscriptions_topic.clone(),
            audit_topic: self.subscription_audit_topic.clone(),
            allowlist: Arc::new(self.allowlist()?),
            partitions: self.partitions,
            partner_partitions: self.partner_partitions,
            client_cert: match (&self.client_cert, &self.client_key) {
                (Some(cert), Some(key)) => Some(dispatcher::webhook::tls::ClientCertFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
        })
    }
}

impl RunArgs {
    /// The typed settings; flags that must agree are checked here (ranges by clap).
    pub fn config(&self, shared: Shared) -> anyhow::Result<RunConfig> {
        anyhow::ensure!(
            self.failing_age_secs >= self.degraded_age_secs,
            "--failing-age-secs ({}) must be at least --degraded-age-secs ({})",
            self.failing_age_secs,
            self.degraded_age_secs
        );
        Ok(RunConfig {
            shared,
            registry: self.registry.clone(),
            orders_topic: self.orders_topic.clone(),
            orders_dead_letter_topic: self.orders_dead_letter_topic.clone(),
            listen: self.listen,
            router_group: self.router_group.clone(),
            lane_group_prefix: self.lane_group_prefix.clone(),
            unknown_schema_wait: Duration::from_millis(self.unknown_schema_wait_ms),
            max_buffered: self.max_buffered as usize,
            max_buffered_total: self.max_buffered_total as usize,
            departed_lane: Duration::from_millis(self.departed_lane_ms),
            shutdown_deadline: Duration::from_millis(self.shutdown_deadline_ms),
            breaker_failures: self.breaker_failures,
            breaker_cooldown: Duration::from_millis(self.breaker_cooldown_ms),
            park_after: (self.park_after_attempts > 0).then_some(self.park_after_attempts),
            disconnect_after: (self.disconnect_after_ms > 0)
                .then(|| Duration::from_millis(self.disconnect_after_ms)),
            degraded_age: Duration::from_secs(self.degraded_age_secs),
            failing_age: Duration::from_secs(self.failing_age_secs),
            egress_proxy: self.egress_proxy.clone(),
            health_interval: Duration::from_millis(self.health_interval_ms),
            attempts_topic: (!self.attempts_topic.is_empty()).then(|| self.attempts_topic.clone()),
            attempts_body_bytes: self.attempts_body_bytes as usize,
            filter_tally_interval: Duration::from_millis(self.filter_tally_interval_ms),
            health_topic: (!self.health_topic.is_empty()).then(|| self.health_topic.clone()),
        })
    }
}
