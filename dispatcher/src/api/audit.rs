//! `GET /v1/admin/audit?partner=&actor=&limit=` (operators only): the audit trail of
//! subscription changes (the API's, `subscriptions apply`'s, the dispatcher's own) and
//! of dead-letter replays and resolves, newest first, from the last records of both
//! topics (the console's audit page).

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Admin;
use super::error::ApiError;
use super::ApiState;

/// How many of each topic's newest records are read: the page is a recent trail, not
/// an archive (the topics themselves are).
const TAIL: i64 = 5_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    partner: Option<String>,
    /// Text the actor contains (case-insensitive).
    actor: Option<String>,
    limit: Option<usize>,
}

/// The newest `n` records of each partition of `topic` (none when it does not exist).
fn tail(
    settings: &crate::kafka::KafkaSettings,
    topic: &str,
    n: i64,
) -> anyhow::Result<Vec<crate::kafka::TopicRecord>> {
    use rdkafka::consumer::Consumer;
    // A topic nobody wrote yet is an empty trail; a broker that does not answer is an
    // error, not an empty trail.
    let Some(partitions) = settings.all_partition_counts()?.get(topic).copied() else {
        return Ok(Vec::new());
    };
    let consumer: rdkafka::consumer::BaseConsumer = settings.reader().create()?;
    let mut ranges = std::collections::BTreeMap::new();
    for p in 0..partitions as i32 {
        let (low, high) =
            consumer.fetch_watermarks(topic, p, std::time::Duration::from_secs(10))?;
        ranges.insert(p, ((high - n).max(low), high));
    }
    crate::kafka::read_ranges(
        &consumer,
        topic,
        &ranges,
        std::time::Duration::from_secs(20),
    )
}

/// One entry, whichever trail it came from.
fn entry(
    at: &str,
    actor: &str,
    action: String,
    partner: &str,
    subject: String,
    details: Value,
) -> Value {
    json!({
        "at": at,
        "actor": actor,
        "action": action,
        "partner": partner,
        "subject": subject,
        "details": details,
    })
}

pub(super) async fn list(
    State(api): State<ApiState>,
    Admin(_): Admin,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::parameter("query", e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::parameter("limit", "between 1 and 500"));
    }
    let (settings, changes, dlq) = (
        api.kafka.clone(),
        api.audit.topic.clone(),
        crate::dlq::TopicArgs::from_env().audit_topic,
    );
    let (changes, replays) = tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>((
            tail(&settings, &changes, TAIL)?,
            tail(&settings, &dlq, TAIL)?,
        ))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    let mut items: Vec<Value> = Vec::new();
    for r in &changes {
        let Ok(v) = serde_json::from_slice::<Value>(&r.payload) else {
            continue;
        };
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        items.push(entry(
            &s("at"),
            &s("actor"),
            s("action"),
            &s("partner"),
            s("subscription"),
            v["details"].clone(),
        ));
    }
    // A replay's record is written when it starts and again when it ends: its last.
    let mut seen = std::collections::HashSet::new();
    for r in replays.iter().rev() {
        let Ok(a) = serde_json::from_slice::<crate::dlq::AuditRecord>(&r.payload) else {
            continue;
        };
        if !seen.insert(a.id.clone()) {
            continue;
        }
        let subject = match &a.destination_topic {
            Some(d) => format!("{} -> {d}", a.source_topic),
            None => a.source_topic.clone(),
        };
        items.push(entry(
            &a.finished_at.0.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            &a.operator,
            format!("dlq-{}", serde_json::to_value(a.action).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
            &a.partner,
            subject,
            json!({ "count": a.count, "matched": a.matched, "skipped": a.skipped, "status": a.status, "operation": a.id }),
        ));
    }
    let actor = query
        .actor
        .as_deref()
        .map(str::to_lowercase)
        .filter(|a| !a.is_empty());
    let partner = query.partner.as_deref().filter(|p| !p.is_empty());
    items.retain(|i| {
        partner.is_none_or(|p| i["partner"] == p)
            && actor.as_deref().is_none_or(|a| {
                i["actor"]
                    .as_str()
                    .unwrap_or_default()
                    .to_lowercase()
                    .contains(a)
            })
    });
    // RFC 3339 times in UTC sort as text.
    items.sort_by(|a, b| b["at"].as_str().cmp(&a["at"].as_str()));
    items.truncate(limit);
    Ok(Json(json!({ "items": items })).into_response())
}
