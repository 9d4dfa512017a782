//! The dispatcher against the real broker, registry and receivers over loopback:
//! delivery to every matching subscription, per-key order, tenant isolation, signatures.

use std::collections::HashMap;
use std::time::Duration;

use consumer_examples::receiver::{Receiver, Script};
use dispatcher::webhook::signing::Secret;
use e2e::{brokers, eventually, unique, DispatchWorld};
use order_schemas::{EventType, OrderEvent};

async fn receiver(secret: &str, script: Script) -> Receiver {
    Receiver::start("127.0.0.1:0".parse().expect("addr"), secret, script)
        .await
        .expect("receiver")
}

fn subscription(
    id: &str,
    partner: &str,
    url: &str,
    secret: &str,
    types: &[&str],
    extra: &str,
) -> String {
    format!(
        "  - id: {id}\n    partner_id: {partner}\n    url: {url}\n    event_types: [{}]\n    secrets: [\"{secret}\"]\n{extra}",
        types.join(", ")
    )
}

mod backpressure;
mod departed;
mod guards;
mod log;
mod outcomes;
mod routing;
