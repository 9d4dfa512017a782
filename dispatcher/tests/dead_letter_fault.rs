//! Fault injection with librdkafka's mock cluster: while the dead-letter topic refuses
//! writes, the record is not finished and its offset is never committed; once writes
//! succeed, the dead letter is written and only then the offset moves.

use std::sync::Arc;
use std::time::Duration;

use consumer_examples::receiver::{Receiver, Script};
use dispatcher::delivery::{GoneHook, JobContext};
use dispatcher::kafka::KafkaSettings;
use dispatcher::lane::{self, LaneConfig};
use dispatcher::subscriptions::table::SubscriptionTable;
use dispatcher::subscriptions::{RetryPolicy, Subscription};
use dispatcher::webhook::client::WebhookClient;
use dispatcher::webhook::signing::Secret;
use dispatcher::webhook::ssrf::Allowlist;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

fn committed(brokers: &str, group: &str, topic: &str) -> Offset {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, 0);
    let found = consumer
        .committed_offsets(list, Duration::from_secs(5))
        .expect("committed offsets");
    found
        .find_partition(topic, 0)
        .map(|p| p.offset())
        .unwrap_or(Offset::Invalid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dead_letter_write_never_commits_the_offset() {
    let metrics = dispatcher::metrics::handle();
    let cluster = MockCluster::new(1).expect("mock cluster");
    let (partner, topic, dlq) = ("p", "deliveries.p", "dlq.p");
    cluster.create_topic(topic, 1, 1).expect("topic");
    cluster.create_topic(dlq, 1, 1).expect("dlq topic");
    let brokers = cluster.bootstrap_servers();

    // The partner refuses the webhook with 400: it must be dead-lettered.
    let secret = Secret::generate();
    let receiver = Receiver::start(
        "127.0.0.1:0".parse().expect("addr"),
        &secret,
        Script {
            always_status: Some(400),
            ..Default::default()
        },
    )
    .await
    .expect("receiver");
    let table = SubscriptionTable::default();
    table.upsert(Subscription {
        id: "s".into(),
        partner_id: partner.into(),
        url: receiver.url(),
        event_types: ["order.created".to_string()].into(),
        secrets: vec![secret],
        internal: false,
        max_in_flight: 4,
        request_timeout_ms: 2000,
        retry: RetryPolicy::default(),
        rate_limit_per_sec: None,
        disabled: false,
        paused: false,
        previous_secrets_until: None,
        disconnected: None,
    });

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "webhook-id",
            value: Some("evt-1"),
        })
        .insert(Header {
            key: "subscription-id",
            value: Some("s"),
        });
    producer
        .send(
            FutureRecord::to(topic)
                .key("order-1")
                .payload("{\"type\":\"order.created\"}")
                .headers(headers),
            Duration::from_secs(5),
        )
        .await
        .expect("delivery record written");

    // From now on every produce request fails: the dead-letter write cannot succeed.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 500],
    );

    let settings = KafkaSettings {
        brokers: brokers.clone(),
        session_timeout: Duration::from_secs(6),
        max_poll_interval: Duration::from_secs(15),
        options: vec![("message.timeout.ms".into(), "2000".into())],
        replication: None,
    };
    let shutdown = CancellationToken::new();
    let ctx = JobContext {
        partner: partner.into(),
        client: WebhookClient::new(
            Arc::new(Allowlist::parse(&["127.0.0.1".into()]).expect("allowlist")),
            Duration::from_secs(2),
        )
        .expect("client"),
        table,
        producer: settings.producer().create().expect("dlq producer"),
        health: Default::default(),
        park_after: None,
        flow: dispatcher::webhook::flow::PartnerFlow::new(
            "p",
            4,
            None,
            dispatcher::webhook::flow::FlowConfig::default(),
        ),
        on_gone: GoneHook(Arc::new(|_| {})),
        metrics: dispatcher::delivery::LaneMetrics::new(partner),
        dead_letter_topic: Arc::new(dispatcher::kafka::TopicOnDemand::existing(dlq.into())),
        retry_topic: Arc::new(dispatcher::kafka::TopicOnDemand::existing(
            "retries.p".into(),
        )),
        shutdown: shutdown.clone(),
    };
    let config = LaneConfig {
        group_prefix: "fault".into(),
        max_buffered: 16,
        shutdown_deadline: Duration::from_secs(2),
        partitions: 1,
        global: Default::default(),
        flow: dispatcher::webhook::flow::FlowConfig::default(),
        park_after: None,
        groups: Default::default(),
        departed_after: Duration::from_secs(60),
    };
    let lane = tokio::spawn(lane::run(partner.into(), settings, config, ctx));

    // The partner refuses, and the dead-letter write fails at least three times (each
    // retry is 500 ms apart, so more than one auto-commit interval passes meanwhile).
    let failures = format!(
        "{}{{partner=\"{partner}\"}}",
        dispatcher::metrics::DEAD_LETTER_WRITE_FAILURES
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let count = metrics
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix(failures.as_str())
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        if count >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead-letter write was not retried ({count} failures)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(receiver.requests() >= 1, "the webhook was attempted");
    let group = "fault.p";
    assert_eq!(
        committed(&brokers, group, topic),
        Offset::Invalid,
        "nothing committed while the dead letter is not durable"
    );

    // Writes succeed again: the dead letter lands and the offset moves past the record.
    cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut offset = Offset::Invalid;
    while tokio::time::Instant::now() < deadline {
        offset = committed(&brokers, group, topic);
        if offset == Offset::Offset(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        offset,
        Offset::Offset(1),
        "committed once the dead letter was written"
    );
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("consumer");
    let (low, high) = reader
        .fetch_watermarks(dlq, 0, Duration::from_secs(5))
        .expect("watermarks");
    assert_eq!(high - low, 1, "exactly one dead letter");
    shutdown.cancel();
    lane.await.expect("join").expect("lane");
}
