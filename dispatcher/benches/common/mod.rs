//! What the benchmarks share: one partner's delivery lane, set up as `dispatcher run`
//! sets it up, over a given broker and partner URL.

use std::sync::Arc;
use std::time::Duration;

use dispatcher::delivery::{GoneHook, JobContext, LaneMetrics};
use dispatcher::kafka::KafkaSettings;
use dispatcher::subscriptions::table::SubscriptionTable;
use dispatcher::subscriptions::{RetryPolicy, Subscription};
use dispatcher::webhook::client::WebhookClient;
use dispatcher::webhook::flow::{FlowConfig, PartnerFlow};
use dispatcher::webhook::signing::Secret;
use dispatcher::webhook::ssrf::Allowlist;
use tokio_util::sync::CancellationToken;

/// A setting from the environment (`BENCH_*`), or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A lane's settings and context; `shutdown` stops it.
pub struct Lane {
    pub settings: KafkaSettings,
    pub ctx: JobContext,
    pub shutdown: CancellationToken,
}

/// `partner` with one subscription (`<partner>-s`) to `url`, 127.0.0.1 allowlisted.
pub fn lane(
    partner: &str,
    brokers: String,
    url: String,
    max_in_flight: usize,
    retry: RetryPolicy,
) -> Lane {
    let table = SubscriptionTable::default();
    table.upsert(Subscription {
        id: format!("{partner}-s"),
        partner_id: partner.into(),
        url,
        event_types: ["order.created".to_string()].into(),
        secrets: vec![Secret::generate()],
        internal: false,
        max_in_flight,
        request_timeout_ms: 2_000,
        retry,
        rate_limit_per_sec: None,
        disabled: false,
        paused: false,
        previous_secrets_until: None,
        disconnected: None,
        tls: None,
        verification: None,
        filter: None,
        kind: Default::default(),
    });
    let settings = KafkaSettings {
        brokers,
        session_timeout: Duration::from_secs(6),
        max_poll_interval: Duration::from_secs(30),
        // The mock cluster answers a fetch only when fetch.wait.max.ms (500 ms) passes,
        // where Apache Kafka answers as soon as data arrives: without this, latency
        // figures would be the fetch wait.
        options: Vec::new(),
        replication: None,
    };
    let shutdown = CancellationToken::new();
    let ctx = JobContext {
        partner: partner.into(),
        client: WebhookClient::new(
            Arc::new(Allowlist::parse(&["127.0.0.1".into()]).expect("allowlist")),
            Duration::from_secs(1),
        )
        .expect("client"),
        table,
        producer: settings.producer().create().expect("producer"),
        flow: PartnerFlow::new(partner, max_in_flight, None, FlowConfig::default()),
        on_gone: GoneHook(Arc::new(|_| {})),
        metrics: LaneMetrics::new(partner),
        health: Default::default(),
        park_after: None,
        dead_letter_topic: Arc::new(dispatcher::kafka::TopicOnDemand::existing(format!(
            "dlq.{partner}"
        ))),
        retry_topic: Arc::new(dispatcher::kafka::TopicOnDemand::existing(format!(
            "retries.{partner}"
        ))),
        log: None,
        shutdown: shutdown.clone(),
    };
    Lane {
        settings,
        ctx,
        shutdown,
    }
}

/// The headers the router gives a delivery record: its webhook id and subscription.
pub fn delivery_headers(webhook_id: &str, subscription_id: &str) -> rdkafka::message::OwnedHeaders {
    use rdkafka::message::Header;
    rdkafka::message::OwnedHeaders::new()
        .insert(Header {
            key: dispatcher::kafka::headers::WEBHOOK_ID,
            value: Some(webhook_id),
        })
        .insert(Header {
            key: dispatcher::kafka::headers::SUBSCRIPTION_ID,
            value: Some(subscription_id),
        })
}

/// A lane's settings as `dispatcher run` has them (no parking), in group `prefix`.
pub fn lane_config(
    prefix: &str,
    max_buffered: usize,
    shutdown_deadline: Duration,
    partitions: i32,
) -> dispatcher::lane::LaneConfig {
    dispatcher::lane::LaneConfig {
        group_prefix: prefix.into(),
        max_buffered,
        shutdown_deadline,
        partitions,
        global: Default::default(),
        flow: FlowConfig::default(),
        park_after: None,
        groups: Default::default(),
        departed_after: Duration::from_secs(60),
        log: None,
    }
}
