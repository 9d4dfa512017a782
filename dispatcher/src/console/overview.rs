//! The overview: the caller's subscriptions with their figures of the last hour and
//! day (an hourly chart of the success rate, the failures still open), the partner's
//! health as the dispatchers see it; for operators, every partner, sortable.

use askama::Template;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::Value;

use super::pages::{api_failure, render, text, Layout};
use super::{ApiCall, Viewer};
use crate::api::ApiState;

struct SubscriptionRow {
    partner: String,
    id: String,
    state: String,
    delivered: String,
    failed: String,
    success_rate: String,
    p99: String,
    /// Failing and dead-lettered messages now.
    open: String,
    chart: Option<Chart>,
    latency: Option<Chart>,
}

/// The last 24 hours' success rate, one bar an hour (drawn as SVG attributes: the CSP
/// allows no inline style).
struct Chart {
    label: String,
    bars: Vec<Bar>,
}

struct Bar {
    x: u32,
    y: u32,
    height: u32,
    fill: &'static str,
}

const HEIGHT: f64 = 22.0;

/// The hours of `hours` (the stats' `hours` of a 24 h window) within the day ending at
/// `now`, each with its x on the chart.
fn slots(hours: &[Value], now: chrono::DateTime<chrono::Utc>) -> Vec<(u32, &Value)> {
    let this_hour = now.timestamp() / 3600;
    hours
        .iter()
        .filter_map(|h| {
            let from = h["from"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())?;
            let ago = this_hour - from.timestamp() / 3600;
            (0..24).contains(&ago).then(|| ((23 - ago as u32) * 4, h))
        })
        .collect()
}

fn bar(x: u32, share: f64, fill: &'static str) -> Bar {
    let height = ((share * HEIGHT).round() as u32).max(1);
    Bar {
        x,
        y: 24 - height,
        height,
        fill,
    }
}

/// The success rate per hour of the day ending at `now`.
fn chart(hours: &[Value], now: chrono::DateTime<chrono::Utc>) -> Option<Chart> {
    let mut bars = Vec::new();
    let mut lowest: Option<f64> = None;
    for (x, h) in slots(hours, now) {
        let (Some(attempts), Some(delivered)) = (
            h["attempts"].as_u64().filter(|a| *a > 0),
            h["delivered"].as_u64(),
        ) else {
            continue;
        };
        let rate = delivered as f64 / attempts as f64;
        lowest = Some(lowest.map_or(rate, |l: f64| l.min(rate)));
        let fill = if rate >= 0.99 {
            "#047857"
        } else if rate >= 0.9 {
            "#b45309"
        } else {
            "#b91c1c"
        };
        bars.push(bar(x, rate, fill));
    }
    let lowest = lowest?;
    Some(Chart {
        label: format!(
            "Success rate per hour over the last 24 hours: {} hours with attempts, the lowest {:.1} %",
            bars.len(),
            lowest * 100.0
        ),
        bars,
    })
}

/// The mean time to webhook per hour of the day ending at `now`, against the day's
/// slowest hour.
fn latency_chart(hours: &[Value], now: chrono::DateTime<chrono::Utc>) -> Option<Chart> {
    let means: Vec<(u32, f64)> = slots(hours, now)
        .into_iter()
        .filter_map(|(x, h)| Some((x, h["mean_time_to_webhook_ms"].as_f64()?)))
        .collect();
    let slowest = means.iter().map(|(_, m)| *m).fold(0.0, f64::max);
    if means.is_empty() {
        return None;
    }
    Some(Chart {
        label: format!(
            "Mean time to webhook per hour over the last 24 hours: {} hours with deliveries, the slowest {slowest:.0} ms",
            means.len()
        ),
        bars: means
            .iter()
            .map(|(x, m)| bar(*x, if slowest > 0.0 { m / slowest } else { 0.0 }, "#1d4ed8"))
            .collect(),
    })
}

/// The partner's health as the dispatchers see it.
struct Health {
    partner: String,
    state: String,
    oldest: String,
    lag: String,
}

/// An operator's row per partner.
struct PartnerRow {
    partner: String,
    state: String,
    lag: String,
    oldest: String,
    error_rate: String,
    disconnected: &'static str,
    restarts: String,
    subscriptions: String,
}

/// The operators' partners table's columns, by their `?sort=` names: the rows' order
/// (a number ascending by partner name, the worst first otherwise).
const SORTS: [(&str, &str); 6] = [
    ("partner", "Partner"),
    ("state", "Health"),
    ("lag", "Lag"),
    ("oldest", "Oldest undelivered"),
    ("errors", "Error rate (1 min)"),
    ("restarts", "Lane restarts"),
];

#[derive(Debug, Default, Deserialize)]
pub(super) struct Sort {
    #[serde(default)]
    sort: String,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct Overview {
    layout: Layout,
    admin: bool,
    manage: bool,
    /// A partner's own health (not for operators: they have the partners table).
    health: Option<Health>,
    partners: Vec<PartnerRow>,
    /// The sortable columns: (`?sort=` name, label, sorted by it now).
    sorts: Vec<(&'static str, &'static str, bool)>,
    subscriptions: Vec<SubscriptionRow>,
}

/// Counts of `stats` by outcome: delivered, and failed (dead-lettered or dropped).
fn outcomes(stats: &Value) -> (u64, u64) {
    let by = &stats["by_outcome"];
    let n = |k: &str| by[k].as_u64().unwrap_or(0);
    (n("delivered"), n("dead_lettered") + n("dropped"))
}

/// At most this many subscriptions get their figures on the overview (each is two
/// questions to the delivery log, kept 30 s).
const OVERVIEW_FIGURES: usize = 50;

pub(super) async fn overview(
    State(api): State<ApiState>,
    viewer: Viewer,
    Query(sort): Query<Sort>,
) -> Response {
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, list) = call.get("/v1/subscriptions").await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &list);
    }
    let mut subscriptions = Vec::new();
    for (i, s) in list["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let id = text(&s["id"]);
        let path = super::seg(&id);
        let mut row = SubscriptionRow {
            partner: text(&s["partner_id"]),
            id: id.clone(),
            state: text(&s["state"]),
            delivered: "—".into(),
            failed: "—".into(),
            success_rate: "—".into(),
            p99: "—".into(),
            open: "—".into(),
            chart: None,
            latency: None,
        };
        if i < OVERVIEW_FIGURES {
            let hour = call.stats(&path, "1h").await;
            let day = call.stats(&path, "24h").await;
            if let (Some(hour), Some(day)) = (hour, day) {
                let ((d1, f1), (d24, f24)) = (outcomes(&hour), outcomes(&day));
                row.delivered = format!("{d1} / {d24}");
                row.failed = format!("{f1} / {f24}");
                row.success_rate = day["success_rate"]
                    .as_f64()
                    .map_or("—".into(), |r| format!("{:.1} %", r * 100.0));
                row.p99 = day["time_to_webhook_ms"]["p99"]
                    .as_u64()
                    .map_or("—".into(), |ms| format!("{ms} ms"));
                let open = |k: &str| day["open_failures"][k].as_u64().unwrap_or(0);
                row.open = format!(
                    "{} failing, {} dead-lettered",
                    open("failing"),
                    open("dead_lettered")
                );
                let hours = day["hours"].as_array().cloned().unwrap_or_default();
                row.chart = chart(&hours, chrono::Utc::now());
                row.latency = latency_chart(&hours, chrono::Utc::now());
            }
        }
        subscriptions.push(row);
    }
    let admin = viewer.grant.partner.is_none();
    let health = match &viewer.grant.partner {
        Some(partner) => {
            let (status, h) = call
                .get(&format!("/v1/partners/{}/health", super::seg(partner)))
                .await;
            status.is_success().then(|| Health {
                partner: partner.clone(),
                state: h["state"].as_str().unwrap_or("unknown").to_string(),
                oldest: h["oldest_undelivered_age_seconds"]
                    .as_f64()
                    .map_or("—".into(), |s| format!("{s:.0} s")),
                lag: text(&h["consumer_lag"]),
            })
        }
        None => None,
    };
    let sort = SORTS
        .iter()
        .find(|(k, _)| *k == sort.sort)
        .map_or("state", |(k, _)| *k);
    let partners = if admin {
        partner_rows(&call, sort).await
    } else {
        Vec::new()
    };
    let sorts = SORTS.iter().map(|(k, l)| (*k, *l, *k == sort)).collect();
    render(
        StatusCode::OK,
        Overview {
            layout: Layout::of(&viewer),
            admin,
            manage: viewer.manages(),
            health,
            partners,
            sorts,
            subscriptions,
        },
    )
}

/// Every partner from `GET /v1/admin/partners`, sorted by `sort` (worst first).
async fn partner_rows(call: &ApiCall<'_>, sort: &str) -> Vec<PartnerRow> {
    let (status, v) = call.get("/v1/admin/partners").await;
    let mut items = if status.is_success() {
        v["partners"].as_array().cloned().unwrap_or_default()
    } else {
        Vec::new()
    };
    let rank = |s: &Value| {
        ["unknown", "healthy", "degraded", "failing", "disconnected"]
            .iter()
            .position(|x| Some(*x) == s.as_str())
            .unwrap_or(0)
    };
    let number = |v: &Value| v.as_f64().unwrap_or(-1.0);
    items.sort_by(|a, b| {
        let by = |k: &str| number(&b[k]).total_cmp(&number(&a[k]));
        match sort {
            "partner" => a["partner"].as_str().cmp(&b["partner"].as_str()),
            "lag" => by("consumer_lag"),
            "oldest" => by("oldest_undelivered_age_seconds"),
            "errors" => by("error_rate"),
            "restarts" => by("lane_restarts"),
            _ => rank(&b["state"]).cmp(&rank(&a["state"])),
        }
        .then(a["partner"].as_str().cmp(&b["partner"].as_str()))
    });
    items
        .iter()
        .map(|p| PartnerRow {
            partner: text(&p["partner"]),
            state: text(&p["state"]),
            lag: text(&p["consumer_lag"]),
            oldest: p["oldest_undelivered_age_seconds"]
                .as_f64()
                .map_or("—".into(), |s| format!("{s:.0} s")),
            error_rate: p["error_rate"]
                .as_f64()
                .map_or("—".into(), |r| format!("{:.1} %", r * 100.0)),
            disconnected: if p["disconnected"] == true {
                "yes"
            } else {
                "no"
            },
            restarts: text(&p["lane_restarts"]),
            subscriptions: text(&p["subscriptions"]),
        })
        .collect()
}

/// `POST /console/partners/{partner}/reconnect`: delivery again to every subscription
/// of a disconnected partner (the API's reconnect; a partner may do it itself).
pub(super) async fn reconnect(
    State(api): State<ApiState>,
    viewer: Viewer,
    axum::extract::Path(partner): axum::extract::Path<String>,
    axum::Form(form): axum::Form<super::entry::CsrfForm>,
) -> Response {
    if let Some(refused) = super::entry::check_change(&api, &viewer, &form.csrf) {
        return refused;
    }
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, body) = call
        .post_with_code(
            &format!("/v1/partners/{}/reconnect", super::seg(&partner)),
            None,
            &form.second_factor,
        )
        .await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &body);
    }
    axum::response::IntoResponse::into_response(axum::response::Redirect::to("/console/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_a_bar_per_hour_with_attempts_in_the_last_day() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-05T10:30:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let hour = |from: &str, attempts: u64, delivered: u64| serde_json::json!({"from": from, "attempts": attempts, "delivered": delivered});
        let c = chart(
            &[
                hour("2026-12-04T09:00:00Z", 5, 5), // 25 h ago: out
                hour("2026-12-05T08:00:00Z", 10, 5),
                hour("2026-12-05T10:00:00Z", 100, 100),
            ],
            now,
        )
        .expect("a chart");
        let drawn: Vec<(u32, u32, &str)> = c.bars.iter().map(|b| (b.x, b.height, b.fill)).collect();
        assert_eq!(drawn, vec![(84, 11, "#b91c1c"), (92, 22, "#047857")]);
        assert!(
            c.label.contains("2 hours") && c.label.contains("50.0 %"),
            "{}",
            c.label
        );
        assert!(chart(&[], now).is_none(), "no attempts, no chart");
        let slow = |from: &str, ms: u64| serde_json::json!({"from": from, "attempts": 1, "delivered": 1, "mean_time_to_webhook_ms": ms});
        let l = latency_chart(
            &[
                slow("2026-12-05T09:00:00Z", 100),
                slow("2026-12-05T10:00:00Z", 400),
            ],
            now,
        )
        .expect("a latency chart");
        let drawn: Vec<(u32, u32)> = l.bars.iter().map(|b| (b.x, b.height)).collect();
        assert_eq!(drawn, vec![(88, 6), (92, 22)], "against the slowest hour");
        assert!(l.label.contains("the slowest 400 ms"), "{}", l.label);
    }
}
