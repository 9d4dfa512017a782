//! Topics and records: fresh topics, consumers tuned for the test broker, reading exactly N records, dead letters, producing with headers.

use super::*;

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

/// Deletes `topic`'s records below `before` (partition, offset) on `brokers`, as
/// retention would (DeleteRecords), and returns each partition's new low watermark.
pub async fn delete_records_on(
    brokers: &str,
    topic: &str,
    before: &[(i32, i64)],
) -> Vec<(i32, i64)> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let mut list = TopicPartitionList::new();
    for &(p, o) in before {
        // (-1: up to the high watermark.)
        let to = if o < 0 {
            Offset::End
        } else {
            Offset::Offset(o)
        };
        list.add_partition_offset(topic, p, to)
            .expect("partition offset");
    }
    let done = admin
        .delete_records(&list, &AdminOptions::new())
        .await
        .expect("delete_records");
    done.elements()
        .iter()
        .map(|e| {
            if let Err(error) = e.error() {
                panic!("delete records of {topic}/{}: {error}", e.partition());
            }
            match e.offset() {
                Offset::Offset(low) => (e.partition(), low),
                other => panic!("delete records of {topic}/{}: {other:?}", e.partition()),
            }
        })
        .collect()
}

/// Deletes every record of `topic` (DeleteRecords up to each partition's high
/// watermark, -1 in the protocol), as retention would; returns the new low watermarks.
pub async fn delete_all_records_on(brokers: &str, topic: &str) -> Vec<(i32, i64)> {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("metadata client");
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .expect("metadata");
    let all: Vec<(i32, i64)> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| (p.id(), -1)))
        .collect();
    assert!(!all.is_empty(), "no partitions of {topic}");
    delete_records_on(brokers, topic, &all).await
}

/// Creates a fresh topic on the test broker and returns its name.
pub async fn fresh_topic(prefix: &str, partitions: i32) -> String {
    let name = unique(prefix);
    create_topic_on(&brokers(), &name, partitions).await;
    name
}

/// Waits until `topic` exists, failing at `deadline`.
pub async fn wait_for_topic(topic: &str, deadline: tokio::time::Instant) {
    wait_for_topic_on(&brokers(), topic, deadline).await
}

/// Waits until `topic` exists on `brokers`, failing at `deadline`.
pub async fn wait_for_topic_on(brokers: &str, topic: &str, deadline: tokio::time::Instant) {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("metadata client");
    loop {
        let exists = client
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .is_ok_and(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
            });
        if exists {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "topic {topic} was never made"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
///
/// A topic that does not exist yet is waited for (a partner's dead-letter topic is made
/// on its first dead letter).
pub async fn read_exactly(topic: &str, count: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let deadline = tokio::time::Instant::now() + timeout;
    if count > 0 {
        wait_for_topic(topic, deadline).await;
    }
    let consumer = consumer(topic);
    let mut out = Vec::with_capacity(count);
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
    produce_at(brokers, topic, partition, key, payload, headers, None).await
}

/// As [`produce_with_headers`], with the record's timestamp (milliseconds since the
/// epoch) set, as a writer with its own clock would.
pub async fn produce_at(
    brokers: &str,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    payload: &[u8],
    headers: &[(&str, &str)],
    timestamp_ms: Option<i64>,
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
    if let Some(t) = timestamp_ms {
        record = record.timestamp(t);
    }
    producer
        .send(record, Duration::from_secs(30))
        .await
        .expect("produce");
}

/// A publisher of `topic` on `brokers`, encoding through the suite's registry.
pub async fn publisher_on(brokers: &str, topic: &str) -> producer::Publisher {
    producer::Publisher::connect(&producer::PublisherConfig::new(
        brokers,
        topic,
        &registry_url(),
    ))
    .await
    .expect("publisher")
}

/// Writes `records` parked records of `partner` (for its subscription `subscription`)
/// over `orders` orders to `retries.<partner>`, which it creates with `partitions`
/// partitions (as many as the delivery topic's, as the lanes require): bodies of
/// `payload_len` bytes, 5 attempts made, due `due_in` from now, an order's records in
/// the partition its number picks. Returns once all are acknowledged.
#[allow(clippy::too_many_arguments)]
pub async fn write_parked(
    brokers: &str,
    partner: &str,
    subscription: &str,
    partitions: i32,
    records: usize,
    orders: usize,
    payload_len: usize,
    due_in: chrono::Duration,
) {
    use dispatcher::kafka::headers;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
    let topic = format!("retries.{partner}");
    create_topic_on(brokers, &topic, partitions).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .expect("producer");
    let due = (chrono::Utc::now() + due_in).to_rfc3339();
    let first = chrono::Utc::now().to_rfc3339();
    let body = vec![b'x'; payload_len];
    let mut pending = std::collections::VecDeque::new();
    for i in 0..records {
        let order = i % orders;
        let (id, key) = (format!("msg_parked_{i}"), format!("parked-{order}"));
        let text = [
            (headers::WEBHOOK_ID, id.as_str()),
            (headers::EVENT_TYPE, "order.status_changed"),
            (headers::SUBSCRIPTION_ID, subscription),
            (headers::RETRY_ATTEMPTS, "5"),
            (headers::RETRY_FIRST_ATTEMPT_AT, first.as_str()),
            (headers::RETRY_NOT_BEFORE, due.as_str()),
        ];
        let headers = text.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(*value),
            })
        });
        let mut record = FutureRecord::to(&topic)
            .key(&key)
            .payload(&body)
            .partition((order % partitions as usize) as i32)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((_, r)) => {
                    // The local queue is full: wait for the oldest acknowledgement.
                    record = r;
                    let d = pending.pop_front().expect("a record in flight");
                    d.await.expect("delivery").expect("produced");
                }
            }
        }
    }
    for d in pending {
        d.await.expect("delivery").expect("produced");
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// Every record `topic` on `brokers` holds now (up to each partition's end when
/// called), within `timeout`: assigned, not in a group.
pub async fn read_to_end_on(brokers: &str, topic: &str, timeout: Duration) -> Vec<OwnedMessage> {
    let deadline = tokio::time::Instant::now() + timeout;
    wait_for_topic_on(brokers, topic, deadline).await;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("e2e-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut ends = std::collections::HashMap::new();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .expect("watermarks");
        if high > low {
            ends.insert(p.id(), high);
            assignment
                .add_partition_offset(topic, p.id(), rdkafka::Offset::Beginning)
                .expect("assignment");
        }
    }
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    let mut stream = consumer.stream();
    while !ends.is_empty() {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => {
                if ends
                    .get(&m.partition())
                    .is_some_and(|end| m.offset() + 1 >= *end)
                {
                    ends.remove(&m.partition());
                }
                out.push(m.detach());
            }
            Ok(Some(Err(e))) => panic!("consuming {topic}: {e}"),
            Ok(None) => break,
            Err(_) => panic!(
                "read {} records of {topic} in {timeout:?}; partitions left {ends:?}",
                out.len()
            ),
        }
    }
    out
}
