//! Fault injection with librdkafka's mock cluster: while the dead-letter topic (or the
//! delivery log, #23) refuses writes, the record is not finished and its offset is never
//! committed; once writes succeed, the dead letter (the log record) is written and only
//! then the offset moves.

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

/// A mock cluster with the partner's delivery, dead-letter and log topics, a receiver
/// running `script`, the subscription, and one delivery record (`order-1`) written.
struct Fixture {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    brokers: String,
    receiver: Receiver,
    settings: KafkaSettings,
    shutdown: CancellationToken,
}

const PARTNER: &str = "p";
const TOPIC: &str = "deliveries.p";
const DLQ: &str = "dlq.p";
const LOG: &str = "attempts";

async fn fixture(script: Script) -> (Fixture, SubscriptionTable) {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic(TOPIC, 1, 1).expect("topic");
    cluster.create_topic(DLQ, 1, 1).expect("dlq topic");
    cluster.create_topic(LOG, 1, 1).expect("log topic");
    let brokers = cluster.bootstrap_servers();
    let secret = Secret::generate();
    let receiver = Receiver::start("127.0.0.1:0".parse().expect("addr"), &secret, script)
        .await
        .expect("receiver");
    let table = SubscriptionTable::default();
    table.upsert(Subscription {
        id: "s".into(),
        partner_id: PARTNER.into(),
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
        tls: None,
        verification: None,
        filter: None,
        kind: Default::default(),
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
            FutureRecord::to(TOPIC)
                .key("order-1")
                .payload("{\"type\":\"order.created\"}")
                .headers(headers),
            Duration::from_secs(5),
        )
        .await
        .expect("delivery record written");
    let settings = KafkaSettings {
        brokers: brokers.clone(),
        session_timeout: Duration::from_secs(6),
        max_poll_interval: Duration::from_secs(15),
        options: vec![("message.timeout.ms".into(), "2000".into())],
        replication: None,
    };
    let fixture = Fixture {
        cluster,
        brokers,
        receiver,
        settings,
        shutdown: CancellationToken::new(),
    };
    (fixture, table)
}

impl Fixture {
    /// The partner's lane, running (with the delivery log when `log`).
    fn lane(
        &self,
        table: SubscriptionTable,
        log: bool,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        let producer: FutureProducer = self.settings.producer().create().expect("producer");
        let log = log.then(|| dispatcher::attempts::AttemptLog::new(producer.clone(), LOG, 4096));
        let ctx = JobContext {
            partner: PARTNER.into(),
            client: WebhookClient::new(
                Arc::new(Allowlist::parse(&["127.0.0.1".into()]).expect("allowlist")),
                Duration::from_secs(2),
            )
            .expect("client"),
            table,
            producer,
            health: Default::default(),
            park_after: None,
            flow: dispatcher::webhook::flow::PartnerFlow::new(
                PARTNER,
                4,
                None,
                dispatcher::webhook::flow::FlowConfig::default(),
            ),
            on_gone: GoneHook(Arc::new(|_| {})),
            metrics: dispatcher::delivery::LaneMetrics::new(PARTNER),
            dead_letter_topic: Arc::new(dispatcher::kafka::TopicOnDemand::existing(DLQ.into())),
            retry_topic: Arc::new(dispatcher::kafka::TopicOnDemand::existing(
                "retries.p".into(),
            )),
            log: log.clone(),
            shutdown: self.shutdown.clone(),
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
            log,
        };
        tokio::spawn(lane::run(
            PARTNER.into(),
            self.settings.clone(),
            config,
            ctx,
        ))
    }

    /// Waits until the counter `metric` (whose labels are `labels`) reaches `at_least`.
    /// The value of counter `metric` now (0 before its first count).
    fn count(&self, metric: &str) -> u64 {
        dispatcher::metrics::handle()
            .render()
            .lines()
            .find_map(|l| {
                l.strip_prefix(metric)
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    }

    async fn counted(&self, metric: &str, at_least: u64, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let count = self.count(metric);
            if count >= at_least {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what} was not retried ({count} failures)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the lane's committed offset is past the record (30 s at most).
    async fn committed_past_the_record(&self) -> Offset {
        self.committed_past(1).await
    }

    /// Waits until the lane's committed offset is `next` (30 s at most).
    async fn committed_past(&self, next: i64) -> Offset {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut offset = Offset::Invalid;
        while tokio::time::Instant::now() < deadline {
            offset = committed(&self.brokers, "fault.p", TOPIC);
            if offset == Offset::Offset(next) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        offset
    }

    /// Records in partition 0 of `topic`.
    fn records(&self, topic: &str) -> i64 {
        let reader: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
            .create()
            .expect("consumer");
        let (low, high) = reader
            .fetch_watermarks(topic, 0, Duration::from_secs(5))
            .expect("watermarks");
        high - low
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dead_letter_write_never_commits_the_offset() {
    // The partner refuses the webhook with 400: it must be dead-lettered.
    let (f, table) = fixture(Script {
        always_status: Some(400),
        ..Default::default()
    })
    .await;
    // From now on every produce request fails: the dead-letter write cannot succeed.
    f.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 500],
    );
    let lane = f.lane(table, false);
    // The partner refuses, and the dead-letter write fails at least three times (each
    // retry is 500 ms apart, so more than one auto-commit interval passes meanwhile).
    let failures = format!(
        "{}{{partner=\"{PARTNER}\"}}",
        dispatcher::metrics::DEAD_LETTER_WRITE_FAILURES
    );
    f.counted(&failures, 3, "the dead-letter write").await;
    assert!(f.receiver.requests() >= 1, "the webhook was attempted");
    assert_eq!(
        committed(&f.brokers, "fault.p", TOPIC),
        Offset::Invalid,
        "nothing committed while the dead letter is not durable"
    );
    // Writes succeed again: the dead letter lands and the offset moves past the record.
    f.cluster.clear_request_errors(RDKafkaApiKey::Produce);
    assert_eq!(
        f.committed_past_the_record().await,
        Offset::Offset(1),
        "committed once the dead letter was written"
    );
    assert_eq!(f.records(DLQ), 1, "exactly one dead letter");
    f.shutdown.cancel();
    lane.await.expect("join").expect("lane");
}

/// #23: the partner took the webhook, but the delivery log refuses writes: the record
/// is not finished (its `delivered` record would be lost with a crash) until the log
/// has it. (Before the job waited for the log: the offset was committed at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_log_write_never_commits_the_offset() {
    let (f, table) = fixture(Script::default()).await;
    f.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 500],
    );
    let lane = f.lane(table, true);
    f.counted(
        dispatcher::metrics::ATTEMPT_LOG_ERRORS,
        3,
        "the delivery log write",
    )
    .await;
    assert_eq!(f.receiver.unique(), 1, "the webhook was delivered");
    assert_eq!(
        committed(&f.brokers, "fault.p", TOPIC),
        Offset::Invalid,
        "nothing committed while the log record is not durable"
    );
    f.cluster.clear_request_errors(RDKafkaApiKey::Produce);
    assert_eq!(
        f.committed_past_the_record().await,
        Offset::Offset(1),
        "committed once the log record was written"
    );
    assert!(f.records(LOG) >= 1, "the delivered record is in the log");
    f.shutdown.cancel();
    lane.await.expect("join").expect("lane");
}

/// A finished job waiting only for its log record counts for a quarter of a record
/// held (the log's acknowledgement time must not cap the lane's rate), but a log that
/// cannot be written still stops the lane: it takes no more than about four times
/// `max_buffered` (16) records, and delivers every one once the log is back. (With
/// those jobs not counted at all, the lane delivered all 200 meanwhile.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_cannot_be_written_stops_the_lane_taking_records() {
    const N: i64 = 200;
    let (f, table) = fixture(Script::default()).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &f.brokers)
        .create()
        .expect("producer");
    for i in 2..=N {
        let id = format!("evt-{i}");
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "webhook-id",
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: "subscription-id",
                value: Some("s"),
            });
        producer
            .send(
                FutureRecord::to(TOPIC)
                    .key(&format!("order-{i}"))
                    .payload("{\"type\":\"order.created\"}")
                    .headers(headers),
                Duration::from_secs(5),
            )
            .await
            .expect("delivery record written");
    }
    f.cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 20_000],
    );
    let before = f.count(dispatcher::metrics::ATTEMPT_LOG_ERRORS);
    let lane = f.lane(table, true);
    // Every waiting record is written again every 500 ms: 300 failures is a few rounds
    // of the most the lane may have taken.
    f.counted(
        dispatcher::metrics::ATTEMPT_LOG_ERRORS,
        before + 300,
        "the delivery log write",
    )
    .await;
    let stalled = f.receiver.unique();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = f.receiver.unique();
    assert_eq!(stalled, later, "the lane stopped taking records");
    assert!(
        (16..=4 * 16 + 4).contains(&later),
        "the lane delivered {later} of {N} with the log down: more than max_buffered, at \
         most four times it and the partner's concurrency"
    );
    f.cluster.clear_request_errors(RDKafkaApiKey::Produce);
    assert_eq!(
        f.committed_past(N).await,
        Offset::Offset(N),
        "every record finished once the log is back"
    );
    assert_eq!(f.receiver.unique(), N as usize, "every record delivered");
    f.shutdown.cancel();
    lane.await.expect("join").expect("lane");
}
