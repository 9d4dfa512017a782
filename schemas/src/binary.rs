//! Direct Avro binary encoding of the order events, field by field in schema order.
//!
//! apache-avro's generic path (serde → `Value` → resolve → validate → write) costs about
//! 90 µs for a 1 KB event, more than sending it to Kafka; this writes the same bytes in
//! about 1 µs. `tests/binary.rs` checks it byte for byte against the generic path for
//! every event type, so a schema change that this file does not follow fails the tests.

use crate::{LineItem, Money, Order, OrderEvent, OrderStatus};

fn long(buf: &mut Vec<u8>, value: i64) {
    let mut z = ((value << 1) ^ (value >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

fn string(buf: &mut Vec<u8>, value: &str) {
    long(buf, value.len() as i64);
    buf.extend_from_slice(value.as_bytes());
}

/// Enum symbols are written as their index in the schema's `symbols`, which lists them
/// in the same order as [`OrderStatus`]'s variants (checked by `tests/binary.rs`).
fn status(buf: &mut Vec<u8>, value: OrderStatus) {
    long(buf, value as i64);
}

fn money(buf: &mut Vec<u8>, value: &Money) {
    long(buf, value.amount_minor);
    string(buf, &value.currency);
}

fn item(buf: &mut Vec<u8>, value: &LineItem) {
    string(buf, &value.sku);
    string(buf, &value.name);
    long(buf, i64::from(value.quantity));
    money(buf, &value.unit_price);
}

fn order(buf: &mut Vec<u8>, value: &Order) {
    string(buf, &value.customer_ref);
    status(buf, value.status);
    if !value.items.is_empty() {
        long(buf, value.items.len() as i64);
        value.items.iter().for_each(|i| item(buf, i));
    }
    long(buf, 0);
    money(buf, &value.total);
}

/// Appends the Avro body of `event` (without Confluent framing) to `buf`.
pub(crate) fn encode(event: &OrderEvent, buf: &mut Vec<u8>) {
    string(buf, &event.event_id().hyphenated().to_string());
    long(buf, event.occurred_at().0);
    string(buf, event.order_id());
    string(buf, event.partner_id());
    order(buf, event.order());
    match event {
        OrderEvent::Created(_) => {}
        OrderEvent::StatusChanged(e) => status(buf, e.previous_status),
        OrderEvent::Cancelled(e) => string(buf, &e.reason),
    }
}

impl OrderEvent {
    /// The Avro binary body of this event in its current schema (no framing).
    pub fn to_avro_body(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(1024);
        encode(self, &mut buf);
        buf
    }
}
