//! `dispatcher`: run the router and the delivery lanes, or manage subscriptions.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use clap::{Args, Parser, Subcommand};
use dispatcher::delivery::GoneHook;
use dispatcher::kafka::KafkaSettings;
use dispatcher::lane::{self, LaneConfig};
use dispatcher::router::{self, RouterConfig};
use dispatcher::subscriptions::table::{self, SubscriptionTable};
use dispatcher::subscriptions::{dead_letter_topic, delivery_topic, SubscriptionFile};
use dispatcher::webhook::client::WebhookClient;
use dispatcher::webhook::ssrf::Allowlist;
use order_schemas::OrderCodec;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Order events to signed, at-least-once partner webhooks"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct Common {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        global = true,
        env = "KAFKA_BOOTSTRAP_SERVERS",
        default_value = "127.0.0.1:9092"
    )]
    brokers: String,
    /// The compacted topic of subscriptions.
    #[arg(
        long,
        global = true,
        env = "SUBSCRIPTIONS_TOPIC",
        default_value = "subscriptions"
    )]
    subscriptions_topic: String,
    /// Non-public addresses webhooks may reach (IPs or CIDRs, comma-separated); empty
    /// means public addresses only.
    #[arg(
        long,
        global = true,
        env = "DISPATCHER_SSRF_ALLOWLIST",
        value_delimiter = ','
    )]
    allow: Vec<String>,
    /// Accept plain http:// webhook URLs to host names (development networks only).
    #[arg(long, global = true, env = "DISPATCHER_ALLOW_HTTP")]
    allow_http: bool,
    /// Consumer group session timeout in milliseconds.
    #[arg(
        long,
        global = true,
        env = "DISPATCHER_SESSION_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    session_timeout_ms: u64,
    /// librdkafka max.poll.interval.ms, which is also how long a rebalance waits for a
    /// member that does not rejoin, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "DISPATCHER_MAX_POLL_INTERVAL_MS",
        default_value_t = 300_000
    )]
    max_poll_interval_ms: u64,
    /// Extra librdkafka setting for every client, `key=value`; repeatable.
    #[arg(long = "kafka-option", global = true, value_parser = parse_option)]
    kafka_options: Vec<(String, String)>,
    /// Partitions of topics the dispatcher creates (per-partner delivery and dead-letter
    /// topics, the router's dead-letter topic).
    #[arg(
        long,
        global = true,
        env = "DISPATCHER_TOPIC_PARTITIONS",
        default_value_t = 6
    )]
    partitions: i32,
    /// Replication factor of the topics the dispatcher creates; unset uses the broker's
    /// `default.replication.factor` (production: 3, with `min.insync.replicas=2`).
    #[arg(long, global = true, env = "DISPATCHER_REPLICATION_FACTOR", value_parser = clap::value_parser!(i32).range(1..))]
    replication_factor: Option<i32>,
    /// Topic of the audit trail of subscription changes (the API, `subscriptions
    /// apply` and the dispatcher's own 410 disable and automatic disconnect write it).
    #[arg(long, global = true, env = "SUBSCRIPTION_AUDIT_TOPIC", default_value = dispatcher::subscriptions::audit::DEFAULT_TOPIC)]
    subscription_audit_topic: String,
}

#[derive(Debug, Subcommand)]
enum Command {
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
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Schema Registry base URL.
    #[arg(
        long,
        env = "SCHEMA_REGISTRY_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    registry: String,
    /// The orders topic.
    #[arg(long, env = "ORDERS_TOPIC", default_value = "orders")]
    orders_topic: String,
    /// Where undecodable orders records go.
    #[arg(long, env = "ORDERS_DEAD_LETTER_TOPIC", default_value = "orders.dlq")]
    orders_dead_letter_topic: String,
    /// Address of /metrics and /healthz; the bound address is printed.
    #[arg(long, env = "DISPATCHER_LISTEN", default_value = "127.0.0.1:9100")]
    listen: SocketAddr,
    /// How long routing waits for a schema id the registry does not know (asking again)
    /// before its records go to the orders dead-letter topic, in milliseconds: a
    /// registry follower may lag a registration by a moment.
    #[arg(
        long,
        env = "DISPATCHER_UNKNOWN_SCHEMA_WAIT_MS",
        default_value_t = 20_000
    )]
    unknown_schema_wait_ms: u64,
    /// Consumer group of the router.
    #[arg(
        long,
        env = "DISPATCHER_ROUTER_GROUP",
        default_value = "orderhooks-router"
    )]
    router_group: String,
    /// Group id prefix of the delivery lanes (`<prefix>.<partner>`).
    #[arg(
        long,
        env = "DISPATCHER_LANE_GROUP_PREFIX",
        default_value = "orderhooks-delivery"
    )]
    lane_group_prefix: String,
    /// Records taken from Kafka and unfinished per partner, at most.
    #[arg(long, env = "DISPATCHER_MAX_BUFFERED", default_value_t = 1024)]
    max_buffered: usize,
    /// How long shutdown waits for requests in flight, in milliseconds.
    #[arg(
        long,
        env = "DISPATCHER_SHUTDOWN_DEADLINE_MS",
        default_value_t = 10_000
    )]
    shutdown_deadline_ms: u64,
    /// Failures in a row (5xx, timeout, connection error) that open a partner's circuit.
    #[arg(long, env = "DISPATCHER_BREAKER_FAILURES", default_value_t = 10)]
    breaker_failures: u32,
    /// How long an open circuit waits before one probe, in milliseconds (doubles on each
    /// failed probe, up to 2 minutes).
    #[arg(long, env = "DISPATCHER_BREAKER_COOLDOWN_MS", default_value_t = 5_000)]
    breaker_cooldown_ms: u64,
    /// Failed attempts after which a record leaves the lane for the partner's retry
    /// topic (`retries.<partner>`) and its key is parked there, so one failing order
    /// holds neither the partner's offset nor its other orders; 0 keeps every retry in
    /// the lane.
    #[arg(long, env = "DISPATCHER_PARK_AFTER_ATTEMPTS", default_value_t = 3)]
    park_after_attempts: u32,
    /// A partner failing this long is disconnected: delivery stops and its events wait
    /// in Kafka until it is reconnected (API `POST /v1/partners/{p}/reconnect`), in
    /// milliseconds; 0 never disconnects. Default 24 hours.
    #[arg(
        long,
        env = "DISPATCHER_DISCONNECT_AFTER_MS",
        default_value_t = 86_400_000
    )]
    disconnect_after_ms: u64,
    /// A partner whose oldest undelivered record is older than this is degraded, in
    /// seconds (failing past `--failing-age-secs`).
    #[arg(long, env = "DISPATCHER_DEGRADED_AGE_SECS", default_value_t = 60)]
    degraded_age_secs: u64,
    /// A partner whose oldest undelivered record is older than this is failing, in seconds.
    #[arg(long, env = "DISPATCHER_FAILING_AGE_SECS", default_value_t = 900)]
    failing_age_secs: u64,
    /// Send every webhook through this HTTP(S) proxy (`http://proxy.internal:3128`).
    /// Without it webhooks go straight to partners and the environment's proxy
    /// variables are ignored for them (the registry and broker clients keep theirs). A
    /// proxy resolves partner host names itself, so it must then refuse private,
    /// loopback and link-local addresses: the SSRF guard can only check IP literals.
    #[arg(long, env = "DISPATCHER_EGRESS_PROXY")]
    egress_proxy: Option<String>,
    /// How often partners' health is judged, in milliseconds.
    #[arg(long, env = "DISPATCHER_HEALTH_INTERVAL_MS", default_value_t = 5_000)]
    health_interval_ms: u64,
}

#[derive(Debug, Args)]
struct ApiArgs {
    /// Address to listen on; the bound address is printed.
    #[arg(long, env = "API_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// YAML file of tokens: `admin: [..]` and `partners: {partner-id: [..]}`; a token is
    /// given as itself (16 characters at least) or as `sha256:<hex of its digest>`.
    #[arg(long, env = "API_TOKENS_FILE")]
    tokens_file: PathBuf,
    /// Refuse webhook URLs that are not https.
    #[arg(long, env = "API_REQUIRE_HTTPS")]
    require_https: bool,
    /// Subscriptions one partner may have; creating more answers 403 `quota_exceeded`.
    #[arg(long, env = "API_MAX_SUBSCRIPTIONS_PER_PARTNER", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    max_subscriptions_per_partner: u32,
    /// `GET /v1/partners/{p}/events` pages read at once; past that 429 with Retry-After.
    #[arg(long, env = "API_EVENTS_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    events_concurrency: u32,
}

#[derive(Debug, Subcommand)]
enum SubscriptionsCommand {
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

use orderhooks_runtime::parse_key_value as parse_option;

impl Common {
    fn kafka(&self) -> KafkaSettings {
        KafkaSettings {
            brokers: self.brokers.clone(),
            session_timeout: Duration::from_millis(self.session_timeout_ms),
            max_poll_interval: Duration::from_millis(self.max_poll_interval_ms),
            options: self.kafka_options.clone(),
            replication: self.replication_factor,
        }
    }

    fn allowlist(&self) -> anyhow::Result<Allowlist> {
        Allowlist::parse(&self.allow)
            .map(|a| a.with_plain_http(self.allow_http))
            .map_err(|e| anyhow::anyhow!("--allow / DISPATCHER_SSRF_ALLOWLIST: {e}"))
    }

    /// The audit trail, its topic created when missing.
    async fn audit_trail(&self) -> anyhow::Result<dispatcher::subscriptions::audit::AuditTrail> {
        let kafka = self.kafka();
        kafka
            .ensure_topics(std::slice::from_ref(&self.subscription_audit_topic), 1, &[])
            .await
            .with_context(|| format!("audit topic `{}`", self.subscription_audit_topic))?;
        Ok(dispatcher::subscriptions::audit::AuditTrail {
            producer: kafka.producer().create()?,
            topic: self.subscription_audit_topic.clone(),
        })
    }

    async fn ensure_subscriptions_topic(&self) -> anyhow::Result<()> {
        self.kafka()
            .ensure_topics(
                std::slice::from_ref(&self.subscriptions_topic),
                1,
                &[("cleanup.policy", "compact")],
            )
            .await
            .with_context(|| {
                format!(
                    "subscriptions topic `{}` on {}",
                    self.subscriptions_topic, self.brokers
                )
            })
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    orderhooks_runtime::init_tracing();
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Run(args) => run(&cli.common, args).await,
        Command::Subscriptions(SubscriptionsCommand::Apply { file, prune }) => {
            apply(&cli.common, file, *prune).await
        }
        Command::Subscriptions(SubscriptionsCommand::List) => list(&cli.common).await,
        Command::Dlq(command) => return dlq(&cli.common, command).await,
        Command::Api(args) => api(&cli.common, args).await,
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Exit codes: 0 done, 1 failed (broker unreachable, write failed), 2 refused (bad
/// filter, unknown partner, nothing matches), 130 interrupted by Ctrl-C (rerun resumes).
async fn dlq(common: &Common, command: &dispatcher::dlq::DlqCommand) -> std::process::ExitCode {
    use dispatcher::dlq::{Invalid, Outcome};
    let interrupt = CancellationToken::new();
    let on_signal = interrupt.clone();
    tokio::spawn(async move {
        orderhooks_runtime::shutdown_signal().await;
        on_signal.cancel();
    });
    let subscriptions = async {
        SubscriptionTable::follow(
            &common.kafka(),
            &common.subscriptions_topic,
            Arc::new(common.allowlist()?),
        )
        .await
    };
    match dispatcher::dlq::run(command, &common.kafka(), subscriptions, interrupt).await {
        Ok(Outcome::Done) => std::process::ExitCode::SUCCESS,
        Ok(Outcome::Interrupted) => std::process::ExitCode::from(130),
        Err(e) if e.downcast_ref::<Invalid>().is_some() => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn api(common: &Common, args: &ApiArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.tokens_file)
        .with_context(|| format!("--tokens-file {}", args.tokens_file.display()))?;
    let tokens = dispatcher::api::Tokens::parse(&text)
        .map_err(|e| anyhow::anyhow!("--tokens-file {}: {e}", args.tokens_file.display()))?;
    let kafka = common.kafka();
    let allowlist = Arc::new(common.allowlist()?);
    common.ensure_subscriptions_topic().await?;
    let audit = common.audit_trail().await?;
    let table =
        SubscriptionTable::follow(&kafka, &common.subscriptions_topic, Arc::clone(&allowlist))
            .await?;
    let state = dispatcher::api::ApiState {
        kafka,
        subscriptions_topic: common.subscriptions_topic.clone(),
        audit,
        max_subscriptions_per_partner: args.max_subscriptions_per_partner as usize,
        events_permits: Arc::new(tokio::sync::Semaphore::new(
            args.events_concurrency as usize,
        )),
        partitions: common.partitions,
        table,
        allowlist,
        require_https: args.require_https,
        tokens: Arc::new(tokens),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, dispatcher::api::router(state))
        .with_graceful_shutdown(orderhooks_runtime::shutdown_signal())
        .await?;
    Ok(())
}

async fn apply(common: &Common, file: &PathBuf, prune: bool) -> anyhow::Result<()> {
    let allowlist = common.allowlist()?;
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let subscriptions = SubscriptionFile::parse(&text, &allowlist)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let kafka = common.kafka();
    common.ensure_subscriptions_topic().await?;
    let mut partners: Vec<String> = subscriptions.iter().map(|s| s.partner_id.clone()).collect();
    partners.sort();
    partners.dedup();
    let topics: Vec<String> = partners
        .iter()
        .flat_map(|p| [delivery_topic(p), dead_letter_topic(p)])
        .collect();
    kafka.ensure_topics(&topics, common.partitions, &[]).await?;
    let current =
        SubscriptionTable::follow(&kafka, &common.subscriptions_topic, Arc::new(allowlist)).await?;
    let remove: Vec<Arc<dispatcher::subscriptions::Subscription>> = if prune {
        current
            .all()
            .into_iter()
            .filter(|c| !subscriptions.iter().any(|s| s.id == c.id))
            .collect()
    } else {
        Vec::new()
    };
    // Every change is audited before it is written (docs/ARCHITECTURE.md, audit).
    let audit = common.audit_trail().await?;
    let actor = format!(
        "operator {} (subscriptions apply {})",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
        file.display()
    );
    for s in &subscriptions {
        let (action, details) = match current.get(&s.id) {
            None => (
                "apply-create",
                Some(serde_json::json!({ "url": s.url, "internal": s.internal })),
            ),
            Some(before) => (
                "apply-update",
                dispatcher::subscriptions::audit::changes(&before, s),
            ),
        };
        if let Some(details) = details {
            audit.record(&actor, action, s, details).await?;
        }
    }
    for s in &remove {
        audit
            .record(
                &actor,
                "apply-delete",
                s,
                serde_json::json!({ "url": s.url }),
            )
            .await?;
    }
    let mut remove: Vec<String> = remove.iter().map(|s| s.id.clone()).collect();
    if prune {
        // Subscriptions invalid here (not in force) go too, unless the file has them.
        for (id, invalid) in current.all_invalid() {
            if subscriptions.iter().any(|s| s.id == id) {
                continue;
            }
            let partner = invalid.subscription.as_ref().map(|s| s.partner_id.as_str());
            let details = serde_json::json!({ "invalid": invalid.reason });
            audit
                .record_id(&actor, "apply-delete", &id, partner, details)
                .await?;
            remove.push(id);
        }
    }
    table::publish(&kafka, &common.subscriptions_topic, &subscriptions, &remove).await?;
    println!(
        "applied {} subscriptions for {} partners, deleted {}",
        subscriptions.len(),
        partners.len(),
        remove.len()
    );
    Ok(())
}

async fn list(common: &Common) -> anyhow::Result<()> {
    let table = SubscriptionTable::follow(
        &common.kafka(),
        &common.subscriptions_topic,
        Arc::new(common.allowlist()?),
    )
    .await?;
    let mut all = table.all();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    for s in all {
        let types: Vec<&str> = s.event_types.iter().map(String::as_str).collect();
        let state = if s.disabled { "DISABLED" } else { "active" };
        println!(
            "{} partner={} {} url={} types={} secrets={} internal={}",
            s.id,
            s.partner_id,
            state,
            s.url,
            types.join(","),
            s.secrets.len(),
            s.internal
        );
    }
    let mut invalid = table.all_invalid();
    invalid.sort_by(|a, b| a.0.cmp(&b.0));
    for (id, i) in invalid {
        // Not in force here: its records are dead-lettered with this reason.
        let partner = i
            .subscription
            .as_ref()
            .map_or("?", |s| s.partner_id.as_str());
        println!("{id} partner={partner} INVALID reason={}", i.reason);
    }
    Ok(())
}

async fn run(common: &Common, args: &RunArgs) -> anyhow::Result<()> {
    let kafka = common.kafka();
    let allowlist = Arc::new(common.allowlist()?);
    common.ensure_subscriptions_topic().await?;
    kafka
        .ensure_topics(
            std::slice::from_ref(&args.orders_dead_letter_topic),
            common.partitions,
            &[],
        )
        .await
        .context("router dead-letter topic")?;
    let table =
        SubscriptionTable::follow(&kafka, &common.subscriptions_topic, Arc::clone(&allowlist))
            .await?;
    let codec = OrderCodec::new(&args.registry, &args.orders_topic, Duration::from_secs(10))?;
    let client = WebhookClient::with_egress_proxy(
        Arc::clone(&allowlist),
        Duration::from_secs(5),
        args.egress_proxy.as_deref(),
    )?;
    if let Some(proxy) = &args.egress_proxy {
        tracing::warn!(%proxy, "webhooks go through the egress proxy: it must enforce the SSRF rules for host names");
    }
    let shutdown = CancellationToken::new();

    // Both writers change the subscription as it is when they write, never the copy
    // their decision was made on (`dispatcher::subscriptions::updater`).
    let updater = dispatcher::subscriptions::updater::Updater::start(
        kafka.clone(),
        common.subscriptions_topic.clone(),
        table.clone(),
        common.audit_trail().await?,
    );
    let gone = updater.clone();
    let on_gone = GoneHook(Arc::new(move |answered| {
        gone.update(answered.id.clone(), "disable after 410 Gone", move |s| {
            // A 410 from a URL no longer in use says nothing about the new one.
            let applies = s.url == answered.url && !s.disabled;
            s.disabled = true;
            applies
        });
    }));

    let board = dispatcher::health::StatusBoard::default();
    let watched = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let write: dispatcher::health::Writer = Arc::new(move |changed| {
        for judged in changed {
            let mark = judged.disconnected.clone();
            updater.update(judged.id.clone(), "automatic disconnect", move |s| {
                let applies = s.disconnected.is_none();
                s.disconnected = mark;
                applies
            });
        }
    });
    let health_config = dispatcher::health::HealthConfig {
        degraded_age: Duration::from_secs(args.degraded_age_secs),
        failing_age: Duration::from_secs(args.failing_age_secs.max(args.degraded_age_secs)),
        disconnect_after: (args.disconnect_after_ms > 0)
            .then(|| Duration::from_millis(args.disconnect_after_ms)),
        ..Default::default()
    };
    let monitor = tokio::spawn(dispatcher::health::monitor(
        Arc::clone(&watched),
        table.clone(),
        health_config,
        Arc::clone(&board),
        write,
        Duration::from_millis(args.health_interval_ms.max(100)),
        shutdown.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}", args.listen))?;
    println!("listening on http://{}", listener.local_addr()?);
    let metrics = dispatcher::metrics::handle();
    let (all_board, one_board) = (Arc::clone(&board), Arc::clone(&board));
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    metrics.run_upkeep();
                    metrics.render()
                }
            }),
        )
        .route(
            "/status",
            get(move || {
                let board = Arc::clone(&all_board);
                async move { axum::Json(dispatcher::health::status_json(&board, None)) }
            }),
        )
        .route(
            "/status/{partner}",
            get(
                move |axum::extract::Path(partner): axum::extract::Path<String>| {
                    let board = Arc::clone(&one_board);
                    async move {
                        let json = dispatcher::health::status_json(&board, Some(&partner));
                        let code = if json["partners"].as_object().is_some_and(|m| m.is_empty()) {
                            axum::http::StatusCode::NOT_FOUND
                        } else {
                            axum::http::StatusCode::OK
                        };
                        (code, axum::Json(json))
                    }
                },
            ),
        )
        .route("/healthz", get(|| async { "ok" }));
    let server_stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { server_stop.cancelled().await })
            .await
    });

    let deadline = Duration::from_millis(args.shutdown_deadline_ms);
    let router_config = RouterConfig {
        orders_topic: args.orders_topic.clone(),
        group: args.router_group.clone(),
        dead_letter_topic: args.orders_dead_letter_topic.clone(),
        max_in_flight: 1000,
        shutdown_deadline: deadline,
        unknown_schema_wait: Duration::from_millis(args.unknown_schema_wait_ms),
    };
    let lane_config = LaneConfig {
        group_prefix: args.lane_group_prefix.clone(),
        max_buffered: args.max_buffered,
        shutdown_deadline: deadline,
        partitions: common.partitions,
        flow: dispatcher::webhook::flow::FlowConfig {
            failures_to_open: args.breaker_failures.max(1),
            cooldown: Duration::from_millis(args.breaker_cooldown_ms),
            ..Default::default()
        },
        park_after: (args.park_after_attempts > 0).then_some(args.park_after_attempts),
    };
    let router = tokio::spawn(router::run(
        kafka.clone(),
        router_config,
        table.clone(),
        codec,
        shutdown.clone(),
    ));
    let lanes = tokio::spawn(lane::supervise(
        kafka,
        lane_config,
        table,
        client,
        on_gone,
        watched,
        shutdown.clone(),
    ));
    tracing::info!("dispatcher running");

    orderhooks_runtime::shutdown_signal().await;
    tracing::info!("shutting down: finishing requests in flight, then committing");
    shutdown.cancel();
    router.await??;
    lanes.await??;
    let _ = monitor.await;
    let _ = server.await;
    tracing::info!("dispatcher stopped");
    Ok(())
}
