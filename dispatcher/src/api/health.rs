//! `GET /v1/admin/partners` (operators only): every partner, with its health as the
//! dispatchers see it (their boards, which each instance writes to the health topic:
//! `health::publish`), merged over the instances that wrote in the last minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::auth::Admin;
use super::ApiState;
use crate::kafka::KafkaSettings;

/// A snapshot older than this (three of an instance's writes) is an instance that
/// stopped or restarted (with a new id): left out, then forgotten.
const FRESH: chrono::TimeDelta = chrono::TimeDelta::seconds(15);

/// The newest board of each dispatcher instance.
#[derive(Debug, Default)]
pub struct HealthView {
    boards: Mutex<HashMap<String, (chrono::DateTime<chrono::Utc>, Value)>>,
}

impl HealthView {
    /// Follows `topic` from its newest 200 records (a minute of every instance's, and
    /// more) until `stop`.
    pub async fn start(
        settings: &KafkaSettings,
        topic: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        settings
            .ensure_topics(&[topic.to_string()], 1, &[("retention.ms", "3600000")])
            .await?;
        let consumer: StreamConsumer = settings.reader().create()?;
        let (low, high) = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))
        })?;
        let mut assignment = TopicPartitionList::new();
        assignment.add_partition_offset(topic, 0, Offset::Offset((high - 200).max(low)))?;
        consumer.assign(&assignment)?;
        let view = Arc::new(Self::default());
        let filled = Arc::clone(&view);
        crate::kafka::follow(consumer, topic.to_string(), stop, move |m| {
            if let Some(v) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<Value>(p).ok())
            {
                filled.apply(v);
            }
        });
        Ok(view)
    }

    fn apply(&self, snapshot: Value) {
        let (Some(instance), Some(at)) = (
            snapshot["instance"].as_str(),
            snapshot["at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()),
        ) else {
            return;
        };
        // An instance's clock ahead of ours must not keep it fresh after it stopped.
        let now = chrono::Utc::now();
        let at = at.with_timezone(&chrono::Utc).min(now);
        let mut boards = self.boards.lock().unwrap_or_else(|p| p.into_inner());
        boards.retain(|_, (seen, _)| now - *seen < FRESH);
        boards.insert(instance.to_string(), (at, snapshot));
    }

    /// Per partner, merged over the instances that wrote since `now - FRESH`: the worst
    /// state, lag summed (each instance owns some partitions), the oldest age, attempts
    /// and failures of the last minute summed, lane restarts summed.
    pub fn merged(&self, now: chrono::DateTime<chrono::Utc>) -> BTreeMap<String, Value> {
        let boards = self.boards.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: BTreeMap<String, Value> = BTreeMap::new();
        for (_, board) in boards.values().filter(|(at, _)| now - *at < FRESH) {
            let Some(partners) = board["partners"].as_object() else {
                continue;
            };
            for (partner, s) in partners {
                let e = out.entry(partner.clone()).or_insert_with(|| {
                    json!({
                        "state": "healthy", "consumer_lag": null, "oldest_undelivered_age_seconds": 0.0,
                        "attempts_last_minute": 0, "failures_last_minute": 0, "lane_restarts": 0, "instances": 0,
                    })
                });
                let worse = |a: &str, b: &str| {
                    let rank = |s: &str| {
                        ["healthy", "degraded", "failing", "disconnected"]
                            .iter()
                            .position(|x| *x == s)
                            .unwrap_or(0)
                    };
                    if rank(b) > rank(a) {
                        b.to_string()
                    } else {
                        a.to_string()
                    }
                };
                e["state"] = worse(
                    e["state"].as_str().unwrap_or("healthy"),
                    s["state"].as_str().unwrap_or("healthy"),
                )
                .into();
                if let Some(lag) = s["consumer_lag"].as_i64() {
                    e["consumer_lag"] = (e["consumer_lag"].as_i64().unwrap_or(0) + lag).into();
                }
                let age = s["oldest_undelivered_age_seconds"].as_f64().unwrap_or(0.0);
                e["oldest_undelivered_age_seconds"] = e["oldest_undelivered_age_seconds"]
                    .as_f64()
                    .unwrap_or(0.0)
                    .max(age)
                    .into();
                for k in [
                    "attempts_last_minute",
                    "failures_last_minute",
                    "lane_restarts",
                    "instances",
                ] {
                    let add = if k == "instances" {
                        1
                    } else {
                        s[k].as_u64().unwrap_or(0)
                    };
                    e[k] = (e[k].as_u64().unwrap_or(0) + add).into();
                }
            }
        }
        out
    }
}

/// `GET /v1/partners/{partner}/health` (a partner token: its own): the partner's row of
/// [`list`].
pub(super) async fn one(
    State(api): State<ApiState>,
    caller: super::auth::Caller,
    axum::extract::Path(partner): axum::extract::Path<String>,
) -> Result<Response, super::error::ApiError> {
    let known = api.table.all().iter().any(|s| s.partner_id == partner);
    if !caller.sees(&partner) || !known {
        return Err(super::error::ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "not_found",
            format!("no partner `{partner}`"),
        ));
    }
    let rows = rows(&api);
    let row = rows
        .into_iter()
        .find(|r| r["partner"] == partner.as_str())
        .unwrap_or(Value::Null);
    Ok(Json(row).into_response())
}

/// Every partner (with a subscription, or on a dispatcher's board): health, lag, oldest
/// undelivered age, error rate, disconnected, lane restarts, subscriptions.
pub(super) async fn list(State(api): State<ApiState>, Admin(_): Admin) -> Response {
    Json(json!({ "partners": rows(&api) })).into_response()
}

fn rows(api: &ApiState) -> Vec<Value> {
    let merged = api
        .health
        .as_ref()
        .map(|h| h.merged(chrono::Utc::now()))
        .unwrap_or_default();
    let mut partners: BTreeMap<String, (usize, bool)> = BTreeMap::new();
    for s in api.table.all() {
        let e = partners.entry(s.partner_id.clone()).or_default();
        e.0 += 1;
        e.1 |= s.disconnected.is_some();
    }
    for p in merged.keys() {
        partners.entry(p.clone()).or_default();
    }
    let items: Vec<Value> = partners
        .into_iter()
        .map(|(partner, (subscriptions, disconnected))| {
            let h = merged.get(&partner);
            let attempts = h.and_then(|h| h["attempts_last_minute"].as_u64()).unwrap_or(0);
            let failures = h.and_then(|h| h["failures_last_minute"].as_u64()).unwrap_or(0);
            json!({
                "partner": partner,
                "state": if disconnected { "disconnected" } else { h.and_then(|h| h["state"].as_str()).unwrap_or("unknown") },
                "consumer_lag": h.map_or(Value::Null, |h| h["consumer_lag"].clone()),
                "oldest_undelivered_age_seconds": h.and_then(|h| h["oldest_undelivered_age_seconds"].as_f64()),
                "attempts_last_minute": attempts,
                "error_rate": (attempts > 0).then(|| failures as f64 / attempts as f64),
                "disconnected": disconnected,
                "lane_restarts": h.and_then(|h| h["lane_restarts"].as_u64()).unwrap_or(0),
                "subscriptions": subscriptions,
                "instances": h.and_then(|h| h["instances"].as_u64()).unwrap_or(0),
            })
        })
        .collect();
    items
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boards_merge_to_the_worst_state_and_summed_counts_and_old_ones_are_left_out() {
        let view = HealthView::default();
        let now = chrono::Utc::now();
        let board =
            |instance: &str, at: chrono::DateTime<chrono::Utc>, state: &str, lag: i64, age: f64| {
                json!({"instance": instance, "at": at.to_rfc3339(), "partners": {"acme": {
                "state": state, "consumer_lag": lag, "oldest_undelivered_age_seconds": age,
                "attempts_last_minute": 10, "failures_last_minute": 2, "lane_restarts": 1}}})
            };
        view.apply(board("a", now, "healthy", 5, 1.0));
        view.apply(board("b", now, "failing", 7, 9.0));
        view.apply(board(
            "c",
            now - chrono::TimeDelta::seconds(120),
            "disconnected",
            100,
            99.0,
        ));
        let m = view.merged(now);
        let acme = &m["acme"];
        assert_eq!(acme["state"], "failing", "the worst of the fresh ones");
        assert_eq!(acme["consumer_lag"], 12);
        assert_eq!(acme["oldest_undelivered_age_seconds"], 9.0);
        assert_eq!(acme["attempts_last_minute"], 20);
        assert_eq!(acme["failures_last_minute"], 4);
        assert_eq!(acme["instances"], 2, "the stale instance is left out");
    }
}
