//! Recovery by polling: a partner reads its own delivery stream page by page with an
//! opaque cursor (the next offset per partition), the same page for the same cursor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use crate::kafka::headers;
use crate::kafka::KafkaSettings;
use crate::subscriptions::delivery_topic;

#[derive(Debug, Deserialize)]
pub(super) struct EventsQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// The position in a partner's stream: the next offset to read per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<i32, i64>);

impl Cursor {
    pub fn encode(&self) -> String {
        let text: Vec<String> = self.0.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text.join(","))
    }

    pub fn decode(text: &str) -> Option<Self> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let mut map = BTreeMap::new();
        for part in raw.split(',').filter(|p| !p.is_empty()) {
            let (p, o) = part.split_once(':')?;
            let (p, o) = (p.parse::<i32>().ok()?, o.parse::<i64>().ok()?);
            if p < 0 || o < 0 {
                return None;
            }
            map.insert(p, o);
        }
        Some(Self(map))
    }

    /// When retention removed events after this cursor, where reading can go on: each
    /// partition's position, or its oldest kept offset where that is later. `lows` is
    /// each partition's low watermark. A partition a (non-empty) cursor does not name
    /// is newer than the cursor: every event of it counts, so one that lost any (a low
    /// above 0) is gone too. None when nothing is gone.
    pub fn past_retention(&self, lows: &BTreeMap<i32, i64>) -> Option<Cursor> {
        let gone = !self.0.is_empty()
            && lows
                .iter()
                .any(|(p, &low)| self.0.get(p).copied().unwrap_or(0) < low);
        gone.then(|| {
            let mut on = self.0.clone();
            for (&p, &low) in lows {
                let at = on.entry(p).or_insert(low);
                *at = (*at).max(low);
            }
            Cursor(on)
        })
    }
}

/// One event of the stream, as the webhook carried it.
#[derive(Debug, Serialize)]
struct PolledEvent {
    /// The `webhook-id`: the event id, the partner's deduplication key.
    id: String,
    subscription_id: String,
    /// The webhook body: `{"type", "timestamp", "data"}`.
    event: serde_json::Value,
}

pub(super) async fn events(
    State(api): State<ApiState>,
    caller: Caller,
    Path(partner): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    // A malformed query is answered like any bad field: JSON, naming it.
    let Query(query) = query.map_err(|e| {
        let text = e.body_text();
        let detail = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text);
        let field = detail.split(':').next().unwrap_or("query").trim();
        let field = if field == "limit" || field == "after" {
            field
        } else {
            "query"
        };
        ApiError::parameter(field, detail.to_string())
    })?;
    if !caller.sees(&partner) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no partner `{partner}`"),
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::parameter("limit", "between 1 and 500"));
    }
    let after = match &query.after {
        None => Cursor::default(),
        Some(text) => Cursor::decode(text)
            .ok_or_else(|| ApiError::parameter("after", "not a cursor this API returned"))?,
    };
    let Ok(permit) = Arc::clone(&api.events_permits).try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many event pages are being read; try again shortly",
        )
        .retry_after(1));
    };
    let (kafka, topic) = (api.kafka.clone(), delivery_topic(&partner));
    let page = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        read_page(&kafka, &topic, &after, limit)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(page).into_response())
}

#[derive(Debug, Serialize)]
struct Page {
    data: Vec<PolledEvent>,
    /// Pass as `after` for the next page (also when `data` is empty: new events appear
    /// after it).
    next: String,
    /// Whether the stream had nothing more when this page was read.
    done: bool,
}

/// Reads up to `limit` records after `cursor` from every partition, merges them by
/// timestamp ([`merge`]: each partition's in offset order), keeps the first `limit`, and
/// moves the cursor past exactly those: the same cursor always gives the same page, and
/// it never passes a record it did not return.
fn read_page(
    kafka: &KafkaSettings,
    topic: &str,
    cursor: &Cursor,
    limit: usize,
) -> Result<Page, ApiError> {
    let consumer: BaseConsumer = kafka.reader().create().map_err(ApiError::internal)?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .map_err(ApiError::internal)?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no events stream for this partner",
        ));
    };
    if meta.partitions().is_empty() {
        // Seen transiently on the test broker: never answer "nothing new" from it.
        return Err(ApiError::internal(
            "the events stream's partitions are unknown",
        ));
    }
    let mut bounds = BTreeMap::new();
    for p in meta.partitions().iter().map(|p| p.id()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .map_err(ApiError::internal)?;
        if cursor.0.get(&p).is_some_and(|at| *at > high) {
            return Err(ApiError::internal(
                "the events stream reads behind the cursor; try again",
            ));
        }
        bounds.insert(p, (low, high));
    }
    // Events after the cursor that retention removed: say so, never skip them silently.
    let lows = bounds.iter().map(|(&p, &(low, _))| (p, low)).collect();
    if let Some(on) = cursor.past_retention(&lows) {
        return Err(ApiError::gone(
            "events after this cursor are no longer kept (the delivery topic's retention passed them); go on from `oldest_cursor`",
            on.encode(),
        ));
    }
    let mut next = cursor.0.clone();
    let mut ranges = BTreeMap::new();
    let mut more = false;
    for (&p, &(low, high)) in &bounds {
        let from = cursor.0.get(&p).copied().unwrap_or(low);
        next.entry(p).or_insert(from);
        // Reading up to `limit` of each partition is enough for any merge order.
        let to = high.min(from + limit as i64);
        more |= to < high;
        ranges.insert(p, (from, to));
    }
    let read = crate::kafka::read_ranges(&consumer, topic, &ranges, Duration::from_secs(10))
        .map_err(ApiError::internal)?;
    more |= read.len() > limit;
    let found = merge(read, limit, |r| {
        (
            r.timestamp.map_or(0, |t| t.timestamp_millis()),
            r.partition,
            r.offset,
        )
    });
    for r in &found {
        next.insert(r.partition, r.offset + 1);
    }
    let event = |r: &crate::kafka::TopicRecord| PolledEvent {
        id: r
            .header(headers::WEBHOOK_ID)
            .unwrap_or_default()
            .to_string(),
        subscription_id: r
            .header(headers::SUBSCRIPTION_ID)
            .unwrap_or_default()
            .to_string(),
        event: serde_json::from_slice(&r.payload).unwrap_or(serde_json::Value::Null),
    };
    Ok(Page {
        data: found.iter().map(event).collect(),
        next: Cursor(next).encode(),
        done: !more,
    })
}

/// The first `limit` of `records` (each partition's in offset order, as read), merged
/// across partitions by `key` (timestamp, partition, offset): at each step the head of
/// the partition whose head has the smallest key. Each partition contributes a
/// contiguous run from its first record, so a cursor moved past the last one taken of
/// each partition skips nothing, whatever the timestamps (not monotonic within a
/// partition when writers' clocks differ); and a partition keeps its order (per order,
/// the order events were produced).
fn merge<T>(records: Vec<T>, limit: usize, key: impl Fn(&T) -> (i64, i32, i64)) -> Vec<T> {
    let mut queues: BTreeMap<i32, std::collections::VecDeque<T>> = BTreeMap::new();
    for r in records {
        queues.entry(key(&r).1).or_default().push_back(r);
    }
    let mut page = Vec::new();
    while page.len() < limit {
        let Some(p) = queues
            .iter()
            .filter_map(|(p, q)| Some((key(q.front()?), *p)))
            .min()
            .map(|(_, p)| p)
        else {
            break;
        };
        if let Some(r) = queues.get_mut(&p).and_then(|q| q.pop_front()) {
            page.push(r);
        }
    }
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_takes_each_partition_in_offset_order_whatever_the_timestamps() {
        // (timestamp, partition, offset); partition 0's second record is the oldest.
        let records = vec![(5, 0, 0), (0, 0, 1), (6, 0, 2), (2, 1, 0), (3, 1, 1)];
        let page = merge(records.clone(), 3, |r| *r);
        assert_eq!(page, [(2, 1, 0), (3, 1, 1), (5, 0, 0)]);
        let all = merge(records, 10, |r| *r);
        assert_eq!(
            all,
            [(2, 1, 0), (3, 1, 1), (5, 0, 0), (0, 0, 1), (6, 0, 2)],
            "everything, each partition in offset order"
        );
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor([(0, 5), (2, 17)].into());
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not base64!"), None);
        let negative = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("0:-3");
        assert_eq!(Cursor::decode(&negative), None);
    }

    #[test]
    fn a_cursor_retention_passed_goes_on_where_it_can_without_repeats() {
        let lows: BTreeMap<i32, i64> = [(0, 10), (1, 0), (2, 3)].into();
        // At or past every low: nothing gone (an empty cursor starts at the oldest).
        assert_eq!(
            Cursor([(0, 10), (1, 4), (2, 3)].into()).past_retention(&lows),
            None
        );
        assert_eq!(Cursor::default().past_retention(&lows), None);
        let lows: BTreeMap<i32, i64> = [(0, 10), (1, 0)].into();
        // Partition 0 below its low: there from its oldest, partition 1 where the
        // cursor was, partition 3 (which the topic did not list now) kept as it was.
        assert_eq!(
            Cursor([(0, 9), (1, 4), (3, 7)].into()).past_retention(&lows),
            Some(Cursor([(0, 10), (1, 4), (3, 7)].into()))
        );
        // A partition added after the cursor, which lost events already: gone too.
        let lows: BTreeMap<i32, i64> = [(0, 10), (1, 0), (2, 3)].into();
        assert_eq!(
            Cursor([(0, 10), (1, 4)].into()).past_retention(&lows),
            Some(Cursor([(0, 10), (1, 4), (2, 3)].into()))
        );
    }
}
