//! Partner endpoints the seed's way (#25): webhooks present our client certificate
//! (mutual TLS) and trust a subscription's own CA; a new URL proves its owner wants our
//! events before it gets any; hazardous changes ask for a second factor.

use std::time::Duration;

use consumer_examples::receiver::{Receiver, Script};
use dispatcher::webhook::signing::Secret;
use e2e::{eventually, unique, DispatchWorld};
use order_schemas::{EventType, OrderEvent};
use producer::Publisher;
use serde_json::{json, Value};

mod mtls;
mod second_factor;
mod verification;

async fn publish(p: &Publisher, partner: &str, orders: &[String]) -> Vec<OrderEvent> {
    let mut out = Vec::new();
    for order in orders {
        let e = OrderEvent::sample(EventType::OrderCreated, order, partner, 1);
        p.publish(&e).await.expect("publish");
        out.push(e);
    }
    out
}

/// Writes `text` to `path` as a rotation tool does: a new file renamed over the old.
fn replace_file(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

/// The delivery log's records of subscription `id` (all of the world's log, read to
/// its end).
async fn log_records(world: &DispatchWorld, id: &str) -> Vec<Value> {
    e2e::read_to_end_on(
        &world.brokers,
        &world.attempts_topic,
        Duration::from_secs(10),
    )
    .await
    .iter()
    .filter_map(|m| serde_json::from_slice::<Value>(rdkafka::Message::payload(m)?).ok())
    .filter(|r| r["subscription_id"] == id)
    .collect()
}
