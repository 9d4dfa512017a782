//! The wiring of `dispatcher run`: one [`App`] starts the router, the lanes' supervisor,
//! the health monitor, the dispatcher's own subscription writer and the `/metrics`,
//! `/status` server, and stops them in order. The binary parses flags into a
//! [`RunConfig`] and calls it; tests can start it in-process the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Json;
use order_schemas::OrderCodec;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::delivery::GoneHook;
use crate::health::{HealthConfig, StatusBoard, Writer};
use crate::kafka::group::GroupBoard;
use crate::kafka::KafkaSettings;
use crate::lane::LaneConfig;
use crate::router::RouterConfig;
use crate::subscriptions::audit::AuditTrail;
use crate::subscriptions::table::SubscriptionTable;
use crate::subscriptions::updater::Updater;
use crate::webhook::client::WebhookClient;
use crate::webhook::ssrf::Allowlist;

/// What every command shares: the cluster, the subscriptions topic and its audit trail,
/// the SSRF rules, and how the dispatcher's topics are made.
#[derive(Debug, Clone)]
pub struct Shared {
    pub kafka: KafkaSettings,
    pub subscriptions_topic: String,
    pub audit_topic: String,
    pub allowlist: Arc<Allowlist>,
    /// Partitions of the topics the dispatcher creates (the router's dead-letter topic).
    pub partitions: i32,
    /// Partitions of each partner's topics (deliveries, retries, dead letters).
    pub partner_partitions: i32,
    /// The client certificate webhooks present (`None`: none).
    pub client_cert: Option<crate::webhook::tls::ClientCertFiles>,
}

impl Shared {
    /// The compacted subscriptions topic, created when missing.
    pub async fn ensure_subscriptions_topic(&self) -> anyhow::Result<()> {
        self.kafka
            .ensure_topics(
                std::slice::from_ref(&self.subscriptions_topic),
                1,
                &[("cleanup.policy", "compact")],
            )
            .await
            .with_context(|| {
                format!(
                    "subscriptions topic `{}` on {}",
                    self.subscriptions_topic, self.kafka.brokers
                )
            })
    }

    /// The audit trail, its topic created when missing.
    pub async fn audit_trail(&self) -> anyhow::Result<AuditTrail> {
        self.kafka
            .ensure_topics(std::slice::from_ref(&self.audit_topic), 1, &[])
            .await
            .with_context(|| format!("audit topic `{}`", self.audit_topic))?;
        Ok(AuditTrail {
            producer: self.kafka.producer().create()?,
            topic: self.audit_topic.clone(),
        })
    }

    /// The subscription table, caught up with the topic.
    pub async fn table(&self) -> anyhow::Result<SubscriptionTable> {
        SubscriptionTable::follow(
            &self.kafka,
            &self.subscriptions_topic,
            Arc::clone(&self.allowlist),
        )
        .await
    }
}

/// Everything `dispatcher run` needs, typed (the flags' meanings are in the binary's
/// `--help`).
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub shared: Shared,
    pub registry: String,
    pub orders_topic: String,
    pub orders_dead_letter_topic: String,
    /// Address of `/metrics`, `/status` and `/healthz` (port 0: any free port).
    pub listen: SocketAddr,
    pub router_group: String,
    pub lane_group_prefix: String,
    pub unknown_schema_wait: Duration,
    pub max_buffered: usize,
    /// Records taken in and unfinished by all lanes together (the global cap).
    pub max_buffered_total: usize,
    /// How long a partner without subscriptions keeps its lane.
    pub departed_lane: Duration,
    pub shutdown_deadline: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// Failed attempts after which a record is parked; `None` never parks.
    pub park_after: Option<u32>,
    /// `None` never disconnects a failing partner.
    pub disconnect_after: Option<Duration>,
    pub degraded_age: Duration,
    pub failing_age: Duration,
    pub egress_proxy: Option<String>,
    pub health_interval: Duration,
    /// The delivery log's topic (`None`: no log).
    pub attempts_topic: Option<String>,
    /// Bytes of each answer the delivery log keeps (0: none).
    pub attempts_body_bytes: usize,
    /// How often the router writes the filters' tallies to the delivery log.
    pub filter_tally_interval: Duration,
    /// Where this instance's partner health goes for the API (`None`: nowhere).
    pub health_topic: Option<String>,
}

/// A running dispatcher.
#[derive(Debug)]
pub struct App {
    /// Where `/metrics`, `/status` and `/healthz` are served.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    router: JoinHandle<anyhow::Result<()>>,
    /// Writes the filters' tallies; ends after the router.
    tallies: Option<JoinHandle<()>>,
    lanes: JoinHandle<anyhow::Result<()>>,
    monitor: JoinHandle<()>,
    server: JoinHandle<std::io::Result<()>>,
    /// An `App` dropped without [`App::stop`] (an error path, a test) stops its tasks
    /// rather than leaving them running; nothing is drained then.
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl RunConfig {
    /// Refuses settings that cannot work, naming the field (nothing is clamped).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.breaker_failures >= 1, "breaker_failures: at least 1");
        anyhow::ensure!(self.max_buffered >= 1, "max_buffered: at least 1");
        anyhow::ensure!(
            self.failing_age >= self.degraded_age,
            "failing_age ({:?}) must be at least degraded_age ({:?})",
            self.failing_age,
            self.degraded_age
        );
        anyhow::ensure!(
            self.health_interval >= Duration::from_millis(100),
            "health_interval: at least 100 ms"
        );
        anyhow::ensure!(
            self.park_after != Some(0),
            "park_after: at least 1 (or None)"
        );
        Ok(())
    }
}

impl App {
    /// Creates what is missing (subscriptions, audit and router dead-letter topics),
    /// waits for the subscription table to catch up, then starts every stage.
    pub async fn start(config: RunConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let shared = &config.shared;
        let kafka = shared.kafka.clone();
        shared.ensure_subscriptions_topic().await?;
        kafka
            .ensure_topics(
                std::slice::from_ref(&config.orders_dead_letter_topic),
                shared.partitions,
                &[],
            )
            .await
            .context("router dead-letter topic")?;
        if let Some(topic) = &config.attempts_topic {
            // Kept by time like the deliveries it describes (a week; the API's view
            // has its own retention).
            kafka
                .ensure_topics(
                    std::slice::from_ref(topic),
                    shared.partitions,
                    &[("retention.ms", "604800000")],
                )
                .await
                .with_context(|| format!("delivery log topic `{topic}`"))?;
        }
        let table = shared.table().await?;
        let codec = OrderCodec::new(
            &config.registry,
            &config.orders_topic,
            Duration::from_secs(10),
        )?;
        let client = WebhookClient::build(
            Arc::clone(&shared.allowlist),
            Duration::from_secs(5),
            config.egress_proxy.as_deref(),
            shared.client_cert.clone(),
        )?
        .excerpt_bytes(config.attempts_body_bytes);
        if let Some(proxy) = &config.egress_proxy {
            tracing::warn!(%proxy, "webhooks go through the egress proxy: it must enforce the SSRF rules for host names");
        }
        // Bound before any task starts, so a refused address leaves nothing running.
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("--listen {}", config.listen))?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();

        // One producer for the router's records, the lanes' parked and dead-letter
        // records and the audit trail: each librdkafka producer costs threads, and
        // rdkafka's polling thread spins through the last millisecond of each 100 ms
        // poll (about 1 % of a core idle, per producer).
        let producer: rdkafka::producer::FutureProducer = kafka.producer().create()?;
        let audit = AuditTrail {
            producer: producer.clone(),
            ..shared.audit_trail().await?
        };
        // Both writers change the subscription as it is when they write, never the copy
        // their decision was made on (`subscriptions::updater`).
        let updater = Updater::start(
            producer.clone(),
            shared.subscriptions_topic.clone(),
            table.clone(),
            audit,
        );
        let on_gone = gone_hook(updater.clone());
        let board = StatusBoard::default();
        let groups = GroupBoard::default();
        let watched = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let health = HealthConfig {
            degraded_age: config.degraded_age,
            failing_age: config.failing_age,
            disconnect_after: config.disconnect_after,
            ..Default::default()
        };
        let monitor = tokio::spawn(crate::health::monitor(
            Arc::clone(&watched),
            table.clone(),
            health,
            Arc::clone(&board),
            disconnect_writer(updater),
            config.health_interval,
            shutdown.clone(),
        ));

        if let Some(topic) = &config.health_topic {
            kafka
                .ensure_topics(
                    std::slice::from_ref(topic),
                    1,
                    &[("retention.ms", "3600000")],
                )
                .await
                .with_context(|| format!("partner health topic `{topic}`"))?;
            tokio::spawn(crate::health::publish::publish(
                producer.clone(),
                topic.clone(),
                Arc::clone(&board),
                shutdown.clone(),
            ));
        }
        tokio::spawn(client.clone().watch_client_cert(shutdown.clone()));
        let server_stop = shutdown.clone();
        let routes = observability(board, groups.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, routes)
                .with_graceful_shutdown(async move { server_stop.cancelled().await })
                .await
        });

        let router_config = RouterConfig {
            orders_topic: config.orders_topic.clone(),
            group: config.router_group.clone(),
            dead_letter_topic: config.orders_dead_letter_topic.clone(),
            max_in_flight: 1000,
            shutdown_deadline: config.shutdown_deadline,
            unknown_schema_wait: config.unknown_schema_wait,
            groups: groups.clone(),
        };
        let lane_config = LaneConfig {
            group_prefix: config.lane_group_prefix.clone(),
            max_buffered: config.max_buffered,
            shutdown_deadline: config.shutdown_deadline,
            global: crate::lane::GlobalCap::new(config.max_buffered_total),
            partitions: shared.partner_partitions,
            flow: crate::webhook::flow::FlowConfig {
                failures_to_open: config.breaker_failures,
                cooldown: config.breaker_cooldown,
                ..Default::default()
            },
            park_after: config.park_after,
            departed_after: config.departed_lane,
            groups,
            log: match config.attempts_topic.as_deref() {
                Some(topic) => Some(crate::attempts::AttemptLog::new(
                    kafka.log_producer().create()?,
                    topic,
                    config.attempts_body_bytes,
                )),
                None => None,
            },
        };
        // The filters' last tally is written once the router has finished (its drain
        // at shutdown counts too).
        let routed = CancellationToken::new();
        let tallies = lane_config.log.clone().map(|log| {
            tokio::spawn(crate::router::write_tallies(
                table.clone(),
                log,
                config.filter_tally_interval,
                routed.clone(),
            ))
        });
        let router = tokio::spawn({
            let run = crate::router::run(
                kafka.clone(),
                router_config,
                table.clone(),
                codec,
                producer.clone(),
                shutdown.clone(),
            );
            async move {
                // (Also when the router panics: the tallies must not wait for ever.)
                let _routed = routed.drop_guard();
                run.await
            }
        });
        let shared = crate::lane::LaneShared {
            client,
            producer,
            on_gone,
            watched,
        };
        let lanes = tokio::spawn(crate::lane::supervise(
            kafka,
            lane_config,
            table,
            shared,
            shutdown.clone(),
        ));
        tracing::info!("dispatcher running");
        Ok(Self {
            addr,
            _stop_on_drop: shutdown.clone().drop_guard(),
            shutdown,
            router,
            tallies,
            lanes,
            monitor,
            server,
        })
    }

    /// Stops reading, finishes the requests in flight (up to the shutdown deadline),
    /// commits what finished, then stops the monitor and the server.
    pub async fn stop(self) -> anyhow::Result<()> {
        tracing::info!("shutting down: finishing requests in flight, then committing");
        self.shutdown.cancel();
        let router = self.router.await;
        if let Some(tallies) = self.tallies {
            let _ = tallies.await;
        }
        let lanes = self.lanes.await;
        let _ = self.monitor.await;
        let _ = self.server.await;
        router??;
        lanes??;
        tracing::info!("dispatcher stopped");
        Ok(())
    }
}

/// What a 410 Gone does: disables the subscription it came from, unless its URL has
/// changed since (a 410 from a URL no longer in use says nothing about the new one).
fn gone_hook(updater: Updater) -> GoneHook {
    GoneHook(Arc::new(move |answered| {
        updater.update(answered.id.clone(), "disable after 410 Gone", move |s| {
            let applies = s.url == answered.url && !s.disabled;
            s.disabled = true;
            applies
        });
    }))
}

/// What the health monitor's automatic disconnect writes.
fn disconnect_writer(updater: Updater) -> Writer {
    Arc::new(move |changed| {
        for judged in changed {
            let mark = judged.disconnected.clone();
            updater.update(judged.id.clone(), "automatic disconnect", move |s| {
                let applies = s.disconnected.is_none();
                s.disconnected = mark;
                applies
            });
        }
    })
}

/// `/metrics`, `/status` (partners, and the consumer group members of this process),
/// `/status/{partner}` (404 for a partner not served here) and `/healthz`.
fn observability(board: StatusBoard, groups: GroupBoard) -> axum::Router {
    let metrics = crate::metrics::handle();
    let (all_board, one_board) = (Arc::clone(&board), board);
    axum::Router::new()
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
                let groups = groups.clone();
                async move {
                    let mut json = crate::health::status_json(&board, None);
                    json["groups"] = groups.status_json();
                    Json(json)
                }
            }),
        )
        .route(
            "/status/{partner}",
            get(move |Path(partner): Path<String>| {
                let board = Arc::clone(&one_board);
                async move {
                    let json = crate::health::status_json(&board, Some(&partner));
                    let code = if json["partners"].as_object().is_some_and(|m| m.is_empty()) {
                        StatusCode::NOT_FOUND
                    } else {
                        StatusCode::OK
                    };
                    (code, Json(json))
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
}
