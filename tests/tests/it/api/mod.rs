//! The partner-facing API (`dispatcher api`) against the real broker, a running
//! dispatcher and receivers: changes take effect without a restart, tokens see only their
//! own partner, URLs are checked, and the events endpoint lets a partner recover.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use consumer_examples::receiver::{Receiver, Script};
use e2e::{
    api_tokens as tokens, closed_port, eventually, partner_token, unique, DispatchWorld,
    ADMIN_TOKEN as ADMIN,
};
use order_schemas::{EventType, OrderEvent};
use producer::Publisher;
use serde_json::{json, Value};

async fn metric(dispatcher_metrics: &str, line_prefix: &str) -> f64 {
    let text = reqwest::get(dispatcher_metrics)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    e2e::metric_value(&text, line_prefix).unwrap_or(0.0)
}

/// Waits until the running dispatcher has read `n` more subscription changes than
/// `before` (so an API call has taken effect there).
async fn dispatcher_sees(metrics_url: &str, before: f64, n: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metric(metrics_url, "dispatcher_subscription_changes_total ").await < before + n {
        assert!(
            std::time::Instant::now() < deadline,
            "the dispatcher did not pick the change up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn publish(p: &Publisher, partner: &str, orders: &[&str]) -> Vec<OrderEvent> {
    let mut out = Vec::new();
    for order in orders {
        let e = OrderEvent::sample(EventType::OrderCreated, order, partner, 1);
        p.publish(&e).await.expect("publish");
        out.push(e);
    }
    out
}

fn ids(events: &[OrderEvent]) -> BTreeSet<String> {
    events.iter().map(|e| e.event_id().to_string()).collect()
}

fn received(r: &Receiver) -> BTreeSet<String> {
    r.deliveries()
        .iter()
        .map(|d| d.webhook_id.clone())
        .collect()
}

mod events;
mod lifecycle;
mod messages;
mod recover;
mod tenancy;
mod validation;
