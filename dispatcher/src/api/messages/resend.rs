//! Sending one message again (`POST /v1/messages/{webhook_id}/resend`): its record, as
//! Kafka still keeps it, written again to its partner's delivery topic.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::super::auth::Caller;
use super::super::error::ApiError;
use super::super::ApiState;
use super::{read_owned, MessageQuery};

/// `POST /v1/messages/{webhook_id}/resend`: the message's record, as it was read from
/// Kafka, written again to its partner's delivery topic with the same webhook-id and
/// `delivery-trigger: resend`; audited. It goes behind the order's events that are
/// waiting now (outside the order's sequence: an older state may arrive after a newer
/// one). 202 with where to watch it; 409 when Kafka no longer has the record.
pub(in crate::api) async fn resend(
    State(api): State<ApiState>,
    caller: Caller,
    Path(webhook_id): Path<String>,
    query: Result<Query<MessageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let (message, attempts) = read_owned(&api, &caller, &webhook_id, query).await?;
    let subscription_id = message.subscription_id;
    // A subscription the caller may change (an internal one: admins only).
    let subscription = api.changeable(&caller, &subscription_id)?;
    api.allow_write(&caller)?;
    let Some(source) = attempts.iter().rev().find_map(|a| a.source.clone()) else {
        return Err(gone(&webhook_id));
    };
    let (kafka, from) = (api.kafka.clone(), source.clone());
    let original = tokio::task::spawn_blocking(move || read_one(&kafka, &from))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
        .ok_or_else(|| gone(&webhook_id))?;
    let details = serde_json::json!({
        "webhook_id": webhook_id,
        "from": format!("{}/{}/{}", source.topic, source.partition, source.offset),
    });
    api.audit(&caller, "resend", &subscription, details).await?;
    let topic = crate::subscriptions::delivery_topic(&subscription.partner_id);
    send_again(&api.writer, &topic, &original)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({
            "webhook_id": webhook_id,
            "subscription_id": subscription_id,
            "watch": format!("/v1/messages/{webhook_id}?subscription_id={subscription_id}"),
        })),
    )
        .into_response())
}

fn gone(webhook_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("the record of message `{webhook_id}` is no longer kept in Kafka; it cannot be sent again"),
    )
}

/// The record at `source`, or `None` when the topic no longer has it.
fn read_one(
    kafka: &crate::kafka::KafkaSettings,
    source: &crate::attempts::Source,
) -> anyhow::Result<Option<rdkafka::message::OwnedMessage>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message as _;
    let consumer: BaseConsumer = kafka.reader().create()?;
    let (low, high) = consumer.fetch_watermarks(
        &source.topic,
        source.partition,
        std::time::Duration::from_secs(10),
    )?;
    if source.offset < low || source.offset >= high {
        return Ok(None);
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(
        &source.topic,
        source.partition,
        rdkafka::Offset::Offset(source.offset),
    )?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        match consumer.poll(std::time::Duration::from_millis(500)) {
            Some(Ok(m)) if m.offset() == source.offset => return Ok(Some(m.detach())),
            // (Compacted or deleted in between: not there any more.)
            Some(Ok(m)) if m.offset() > source.offset => return Ok(None),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    anyhow::bail!(
        "reading {}/{}/{}: timed out",
        source.topic,
        source.partition,
        source.offset
    )
}

/// `original` written to `topic` with its key, body and delivery headers (not the
/// retry, dead-letter or replay ones), marked `delivery-trigger: resend`.
async fn send_again(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    original: &rdkafka::message::OwnedMessage,
) -> anyhow::Result<()> {
    use crate::kafka::headers;
    use rdkafka::message::{Header, Headers, OwnedHeaders};
    use rdkafka::Message as _;
    let mut kept = OwnedHeaders::new();
    if let Some(h) = original.headers() {
        for h in h.iter().filter(|h| {
            !h.key.starts_with(headers::RETRY_PREFIX)
                && !h.key.starts_with(headers::DLQ_PREFIX)
                && h.key != headers::REPLAYED_FROM
                && h.key != headers::REPLAY_OPERATION
                && h.key != headers::DELIVERY_TRIGGER
        }) {
            kept = kept.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    kept = kept.insert(Header {
        key: headers::DELIVERY_TRIGGER,
        value: Some("resend"),
    });
    let mut record = rdkafka::producer::FutureRecord::<[u8], [u8]>::to(topic)
        .payload(original.payload().unwrap_or_default())
        .headers(kept);
    if let Some(key) = original.key() {
        record = record.key(key);
    }
    producer
        .send(record, std::time::Duration::from_secs(30))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("writing to `{topic}`: {e}"))?;
    Ok(())
}
