//! `POST /v1/subscriptions/{id}/filter-test`: which events a payload filter would let
//! through, before it is set. The filter (the subscription's own when the request names
//! none) is compiled as a change would compile it, then evaluated against a sample event
//! (a webhook body) or the partner's latest events of the subscription's types (read
//! from its delivery topic: what was routed to any of its subscriptions).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Deserialize;

use super::auth::Caller;
use super::error::{body, ApiError};
use super::ApiState;
use crate::kafka::headers;
use crate::subscriptions::filter::{event_of_body, Bound, Filter, Paths};

/// Events read back at most (`last`).
const MAX_LAST: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestRequest {
    /// The filter to try; the subscription's own when absent.
    filter: Option<String>,
    /// A sample event, as the webhook body carries it (`{"type", "data"}`).
    event: Option<serde_json::Value>,
    /// Or the partner's latest `last` events of the subscription's types (default 20).
    last: Option<usize>,
}

pub(super) async fn filter_test(
    State(api): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let s = api.visible(&caller, &id)?;
    let request: TestRequest = body(&bytes)?;
    let source = request
        .filter
        .or_else(|| s.filter.clone())
        .ok_or_else(|| ApiError::field("filter", "the subscription has no filter: name one"))?;
    let filter = Filter::compile(&source, &s.event_types)
        .map_err(|why| ApiError::field("filter", why.to_string()))?;
    let events = match (request.event, request.last) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field("last", "give `event` or `last`, not both"))
        }
        (Some(sample), None) => vec![sample_event(&sample, &s.event_types)?],
        (None, last) => {
            let last = last.unwrap_or(20);
            if !(1..=MAX_LAST).contains(&last) {
                return Err(ApiError::field("last", format!("between 1 and {MAX_LAST}")));
            }
            let (kafka, topic, types) = (
                api.kafka.clone(),
                // (A stream subscription's: its stream.)
                s.topic(),
                s.event_types.clone(),
            );
            // (A Kafka client per request, as an `/events` page: the same permits.)
            let permit = std::sync::Arc::clone(&api.events_permits)
                .try_acquire_owned()
                .map_err(|_| {
                    ApiError::new(
                        axum::http::StatusCode::TOO_MANY_REQUESTS,
                        "too_many_requests",
                        "too many event reads at once; try again shortly",
                    )
                    .retry_after(1)
                })?;
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                latest(&kafka, &topic, &types, last)
            })
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?
        }
    };
    let results: Vec<serde_json::Value> = events
        .iter()
        .map(|body| {
            let mut result = serde_json::json!({
                "id": body.get("data").and_then(|d| d.get("event_id")).cloned().unwrap_or_default(),
                "type": body.get("type").cloned().unwrap_or_default(),
                "order_id": body.get("data").and_then(|d| d.get("order_id")).cloned().unwrap_or_default(),
                "timestamp": body.get("timestamp").cloned().unwrap_or_default(),
            });
            match filter.matches(&Bound::of_body(body, &Paths::all())) {
                Ok(matched) => result["matched"] = matched.into(),
                Err(why) => {
                    result["matched"] = false.into();
                    result["error"] = why.into();
                }
            }
            result
        })
        .collect();
    let matched = results.iter().filter(|r| r["matched"] == true).count();
    Ok(Json(serde_json::json!({
        "filter": source,
        "tested": results.len(),
        "matched": matched,
        "results": results,
    }))
    .into_response())
}

/// A sample webhook body, checked as an event would be (the error names the field).
fn sample_event(
    sample: &serde_json::Value,
    types: &BTreeSet<String>,
) -> Result<serde_json::Value, ApiError> {
    let event = event_of_body(sample, &Paths::all());
    let bytes = serde_json::to_vec(&event).map_err(ApiError::internal)?;
    let parsed = order_schemas::OrderEvent::from_json(&bytes).map_err(|why| {
        ApiError::field(
            "event",
            format!("not an order event as a webhook carries it ({{\"type\", \"data\"}}): {why}"),
        )
    })?;
    if !types.contains(parsed.event_type().name()) {
        return Err(ApiError::field(
            "event",
            format!(
                "`{}` is not among the subscription's event types",
                parsed.event_type()
            ),
        ));
    }
    // The body the router would make of it (defaults filled in, times as numbers), so
    // the filter sees what it would see there.
    serde_json::from_slice(&crate::router::webhook_body(&parsed)).map_err(ApiError::internal)
}

/// The latest `last` distinct events of `types` in `topic` (newest first), as webhook
/// bodies.
fn latest(
    kafka: &crate::kafka::KafkaSettings,
    topic: &str,
    types: &BTreeSet<String>,
    last: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let consumer: BaseConsumer = kafka.reader().create()?;
    // (No delivery topic yet: nothing was ever routed to the partner.)
    let partitions = crate::kafka::existing_partitions(&consumer, topic)?;
    let mut ranges = BTreeMap::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5))?;
        // Each subscription of the partner has its record of an event: read enough.
        let from = low.max(high - 4 * last as i64);
        if from < high {
            ranges.insert(p, (from, high));
        }
    }
    let mut records =
        crate::kafka::read_ranges(&consumer, topic, &ranges, Duration::from_secs(10))?;
    records.sort_by_key(|r| std::cmp::Reverse((r.timestamp, r.partition, r.offset)));
    let mut seen = BTreeSet::new();
    Ok(records
        .into_iter()
        .filter(|r| {
            r.header(headers::EVENT_TYPE)
                .is_some_and(|t| types.contains(t))
                && seen.insert(
                    r.header(headers::WEBHOOK_ID)
                        .unwrap_or_default()
                        .to_string(),
                )
        })
        .filter_map(|r| serde_json::from_slice(&r.payload).ok())
        .take(last)
        .collect())
}
