//! `GET /v1/partners/{partner}/stream` (#26): a live stream of the partner's events as
//! Server-Sent Events, for partners that cannot take webhooks (no inbound port).
//!
//! - The events are those of the partner's stream subscription (`kind: stream`: its
//!   event types and filter), which the router writes to `stream.<partner>`; a
//!   connection may narrow them (`types=`, `filter=`).
//! - Each SSE event: `event:` the type, `data:` the webhook body, `id:` a cursor (the
//!   next offset of every partition, as `/events` pages have). The first event,
//!   `ready`, carries the cursor the stream starts at. A client that reconnects with
//!   `Last-Event-ID` (or `after=`) gets every later event once, each partition (so each
//!   order) in order: the cursor is all the state, so any API instance resumes it.
//! - No cursor starts at the end (`from=earliest`: at the oldest event kept). A cursor
//!   older than the topic's retention is 410 with the oldest cursor.
//! - A comment line every `heartbeat` (15 s) keeps proxies from closing it; a partner
//!   has at most `max_per_partner` streams (more: 429 with Retry-After); a client that
//!   takes no event for `slow_after` while `buffer` events wait is disconnected (it
//!   resumes by cursor); shutdown ends every stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use order_schemas::EventType;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::auth::Caller;
use super::error::ApiError;
use super::events::Cursor;
use super::ApiState;
use crate::metrics as m;
use crate::subscriptions::filter::{Bound, Filter};
use crate::subscriptions::stream_topic;

/// The streams of an instance: their limits and how many each partner has open.
#[derive(Debug)]
pub struct Streams {
    open: Mutex<HashMap<String, usize>>,
    pub max_per_partner: usize,
    /// Streams this instance serves at most (each is a Kafka client of its own).
    pub max_total: usize,
    pub heartbeat: Duration,
    /// Events read ahead of a client, at most.
    pub buffer: usize,
    /// How long a client may take no event while `buffer` wait, before it is dropped.
    pub slow_after: Duration,
    /// Cancelled at shutdown: every stream ends.
    pub stop: CancellationToken,
}

impl Streams {
    pub fn new(
        (max_per_partner, max_total): (usize, usize),
        heartbeat: Duration,
        buffer: usize,
        slow_after: Duration,
        stop: CancellationToken,
    ) -> Self {
        Self {
            open: Mutex::default(),
            max_per_partner,
            max_total,
            heartbeat,
            buffer,
            slow_after,
            stop,
        }
    }

    /// A place for one more stream of `partner`, or why there is none.
    fn acquire(self: &Arc<Self>, partner: &str) -> Result<Open, String> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = open.values().sum();
        if total >= self.max_total {
            return Err(format!(
                "this instance serves {total} streams, the most it takes; try again shortly"
            ));
        }
        let n = open.entry(partner.to_string()).or_default();
        if *n >= self.max_per_partner {
            return Err(format!(
                "partner `{partner}` has {n} streams open on this instance, the most allowed"
            ));
        }
        *n += 1;
        metrics::gauge!(m::STREAMS_OPEN).increment(1.0);
        Ok(Open {
            streams: Arc::clone(self),
            partner: partner.to_string(),
        })
    }
}

/// One open stream's place, given back when the response ends.
struct Open {
    streams: Arc<Streams>,
    partner: String,
}

impl Drop for Open {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.partner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.partner);
            }
        }
        metrics::gauge!(m::STREAMS_OPEN).decrement(1.0);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamQuery {
    /// Event types, comma-separated (default: the stream subscription's).
    types: Option<String>,
    /// A CEL filter over the event, as a subscription's.
    filter: Option<String>,
    /// A cursor to resume after (what `Last-Event-ID` carries).
    after: Option<String>,
    /// Without a cursor: `latest` (default, new events only) or `earliest`.
    from: Option<String>,
}

pub(super) async fn stream(
    State(api): State<ApiState>,
    caller: Caller,
    Path(partner): Path<String>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query
        .map_err(|e| super::messages::query_error(e, &["types", "filter", "after", "from"]))?;
    if !caller.sees(&partner) {
        return Err(ApiError::not_found_what(&format!("no partner `{partner}`")));
    }
    let Some(sink) = api
        .table
        .all()
        .into_iter()
        .filter(|s| s.partner_id == partner && s.is_stream())
        // (As the router: the first by id, were there two.)
        .min_by(|a, b| a.id.cmp(&b.id))
    else {
        return Err(ApiError::not_found_what(&format!(
            "partner `{partner}` has no stream subscription: create one (POST /v1/subscriptions with \"kind\": \"stream\")"
        )));
    };
    let types: BTreeSet<String> = match &query.types {
        None => sink.event_types.clone(),
        Some(list) => {
            let mut types = BTreeSet::new();
            for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                if EventType::from_name(t).is_none() {
                    return Err(ApiError::parameter(
                        "types",
                        format!("unknown event type `{t}`"),
                    ));
                }
                if !sink.event_types.contains(t) {
                    return Err(ApiError::parameter(
                        "types",
                        format!("`{t}` is not among the stream subscription's event types"),
                    ));
                }
                types.insert(t.to_string());
            }
            if types.is_empty() {
                return Err(ApiError::parameter("types", "names no event type"));
            }
            types
        }
    };
    let filter = match &query.filter {
        Some(f) => Some(
            Filter::compile(f, &types)
                .map_err(|why| ApiError::parameter("filter", why.to_string()))?,
        ),
        None => None,
    };
    let given = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(|v| ("Last-Event-ID", v.to_string()))
        .or_else(|| query.after.clone().map(|v| ("after", v)));
    let cursor = match &given {
        Some((name, text)) => Some(
            Cursor::decode(text)
                .ok_or_else(|| ApiError::parameter(name, "not a cursor of this stream"))?,
        ),
        None => None,
    };
    let earliest = match query.from.as_deref() {
        None | Some("latest") => false,
        Some("earliest") => true,
        Some(_) => return Err(ApiError::parameter("from", "`latest` or `earliest`")),
    };
    let streams = Arc::clone(&api.streams);
    let open = streams.acquire(&partner).map_err(|why| {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", why).retry_after(5)
    })?;
    let (kafka, topic) = (api.kafka.clone(), stream_topic(&partner));
    let started = tokio::task::spawn_blocking(move || start(&kafka, &topic, cursor, earliest))
        .await
        .map_err(ApiError::internal)??;
    let (start_at, consumer) = started;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(streams.buffer.max(1));
    let ready = Event::default()
        .event("ready")
        .id(start_at.encode())
        .retry(Duration::from_secs(2))
        .data("{}");
    // (The channel was just made: room for it.)
    let _ = tx.try_send(ready);
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let wanted = Wanted {
        types,
        filter,
        partner: partner.clone(),
    };
    tokio::spawn(read(
        consumer,
        start_at,
        wanted,
        tx,
        Arc::clone(&streams),
        Arc::clone(&slow),
    ));
    // The place is given back when the response ends (the connection closes), so a
    // client that stops reading keeps holding one; once it is found slow, the next
    // time the connection can take anything it is aborted, not given what waited.
    let events = futures::stream::unfold((rx, open, slow), |(mut rx, open, slow)| async move {
        let event = rx.recv().await?;
        if slow.load(std::sync::atomic::Ordering::SeqCst) {
            let aborted = std::io::Error::other("the client read too slowly");
            return Some((Err(aborted), (rx, open, slow)));
        }
        Some((Ok(event), (rx, open, slow)))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(api.streams.heartbeat))
        .into_response();
    let h = response.headers_mut();
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    // (nginx and its kind would otherwise buffer the stream.)
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// Where the stream starts, checked against what the topic keeps, and a consumer
/// assigned there.
fn start(
    kafka: &crate::kafka::KafkaSettings,
    topic: &str,
    cursor: Option<Cursor>,
    earliest: bool,
) -> Result<(Cursor, StreamConsumer), ApiError> {
    // What one stream may hold ahead of its channel: a few MB, not librdkafka's default
    // 64 MiB of prefetch per client.
    let consumer: StreamConsumer = kafka
        .reader()
        .set("queued.max.messages.kbytes", "2048")
        .set("fetch.max.bytes", "1048576")
        .create()
        .map_err(ApiError::internal)?;
    let partitions =
        crate::kafka::existing_partitions(&consumer, topic).map_err(ApiError::internal)?;
    if partitions.is_empty() {
        // Made with the stream subscription: not yet visible here.
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the stream's topic is not ready yet; try again shortly",
        )
        .retry_after(1));
    }
    let mut bounds = Vec::new();
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .map_err(ApiError::internal)?;
        bounds.push((p, low, high));
    }
    let at = positions(&bounds, cursor.as_ref(), earliest)?;
    let mut assignment = TopicPartitionList::new();
    for (p, o) in &at.0 {
        assignment
            .add_partition_offset(topic, *p, Offset::Offset(*o))
            .map_err(ApiError::internal)?;
    }
    consumer.assign(&assignment).map_err(ApiError::internal)?;
    Ok((at, consumer))
}

/// Where a stream starts in each partition, given its (partition, low, high)
/// watermarks: after `cursor`, else at the oldest (`earliest`) or newest event. A cursor
/// retention passed is 410 with where to go on (`Cursor::past_retention`); past the
/// end, 400.
fn positions(
    bounds: &[(i32, i64, i64)],
    cursor: Option<&Cursor>,
    earliest: bool,
) -> Result<Cursor, ApiError> {
    let mut at = BTreeMap::new();
    for &(p, low, high) in bounds {
        let from = match cursor.map(|c| c.0.get(&p).copied()) {
            // (A partition the cursor does not name is newer than it: from its start.)
            Some(given) => given.unwrap_or(low),
            None if earliest => low,
            None => high,
        };
        if from > high {
            return Err(ApiError::parameter(
                "Last-Event-ID",
                "a cursor past the end of this stream (not one of its cursors)",
            ));
        }
        at.insert(p, from);
    }
    let lows = bounds.iter().map(|&(p, low, _)| (p, low)).collect();
    if let Some(on) = cursor.and_then(|c| c.past_retention(&lows)) {
        return Err(ApiError::gone(
            "events after this cursor are no longer kept (the stream's retention passed them); go on from `oldest_cursor`",
            on.encode(),
        ));
    }
    Ok(Cursor(at))
}

/// What one connection reads: its types and filter, of its partner's stream.
struct Wanted {
    types: BTreeSet<String>,
    filter: Option<Filter>,
    partner: String,
}

/// Why a stream ended (`dispatcher_streams_closed_total{reason}`).
fn closed(reason: &'static str) {
    metrics::counter!(m::STREAMS_CLOSED, "reason" => reason).increment(1);
}

/// Reads the stream topic from `cursor` into `tx` until the client goes, is too slow,
/// or the instance stops.
async fn read(
    consumer: StreamConsumer,
    mut cursor: Cursor,
    wanted: Wanted,
    tx: tokio::sync::mpsc::Sender<Event>,
    streams: Arc<Streams>,
    slow: Arc<std::sync::atomic::AtomicBool>,
) {
    let Wanted {
        types,
        filter,
        partner,
    } = wanted;
    let paths = filter
        .as_ref()
        .map(|f| f.paths().clone())
        .unwrap_or_default();
    let mut messages = consumer.stream();
    loop {
        let message = tokio::select! {
            _ = streams.stop.cancelled() => return closed("shutdown"),
            _ = tx.closed() => return closed("client_gone"),
            m = messages.next() => m,
        };
        let message = match message {
            Some(Ok(m)) => m,
            Some(Err(error)) => {
                // A position that went away under the stream (retention): the client
                // resumes and is told.
                tracing::warn!(%partner, %error, "reading a stream");
                return closed("error");
            }
            None => return closed("error"),
        };
        cursor.0.insert(message.partition(), message.offset() + 1);
        let Some(body) = message
            .payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        else {
            continue;
        };
        let kind = body["type"].as_str().unwrap_or_default().to_string();
        if !types.contains(&kind) {
            continue;
        }
        if let Some(f) = &filter {
            if f.matches(&Bound::of_body(&body, &paths)) != Ok(true) {
                continue;
            }
        }
        let event = Event::default()
            .event(kind)
            .id(cursor.encode())
            .data(String::from_utf8_lossy(
                message.payload().unwrap_or_default(),
            ));
        match tx.send_timeout(event, streams.slow_after).await {
            Ok(()) => metrics::counter!(m::STREAM_EVENTS).increment(1),
            Err(tokio::sync::mpsc::error::SendTimeoutError::Timeout(_)) => {
                tracing::info!(%partner, "stream client too slow: disconnected (it resumes by cursor)");
                slow.store(true, std::sync::atomic::Ordering::SeqCst);
                return closed("slow_client");
            }
            Err(tokio::sync::mpsc::error::SendTimeoutError::Closed(_)) => {
                return closed("client_gone")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(pairs: &[(i32, i64)]) -> Cursor {
        Cursor(pairs.iter().copied().collect())
    }

    async fn body(e: ApiError) -> (u16, serde_json::Value) {
        let r = e.into_response();
        let status = r.status().as_u16();
        let bytes = axum::body::to_bytes(r.into_body(), 10_000)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[tokio::test]
    async fn a_stream_starts_after_its_cursor_and_refuses_one_retention_passed() {
        let bounds = [(0, 10, 20), (1, 0, 5)];
        // No cursor: the end, or the oldest.
        assert_eq!(
            positions(&bounds, None, false).ok(),
            Some(cursor(&[(0, 20), (1, 5)]))
        );
        assert_eq!(
            positions(&bounds, None, true).ok(),
            Some(cursor(&[(0, 10), (1, 0)]))
        );
        // After a cursor; a partition it does not name from its start.
        let resumed = positions(&bounds, Some(&cursor(&[(0, 12)])), false).ok();
        assert_eq!(resumed, Some(cursor(&[(0, 12), (1, 0)])));
        // Below what partition 0 keeps: 410 with where it can go on (partition 0's
        // oldest, partition 1 where the cursor was: nothing there repeated).
        let gone = positions(&bounds, Some(&cursor(&[(0, 9), (1, 5)])), false).expect_err("gone");
        let (status, json) = body(gone).await;
        assert_eq!(status, 410);
        assert_eq!(json["error"]["code"], "gone");
        let oldest =
            Cursor::decode(json["oldest_cursor"].as_str().expect("oldest")).expect("cursor");
        assert_eq!(oldest, cursor(&[(0, 10), (1, 5)]));
        // Past the end: not a cursor of this stream.
        let ahead = positions(&bounds, Some(&cursor(&[(1, 6)])), false).expect_err("ahead");
        assert_eq!(body(ahead).await.0, 400);
    }
}
