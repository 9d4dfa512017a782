//! Cost of encoding one ~1 KB order event to Avro, by step, to see where the publisher's
//! time goes:  cargo bench -p order-schemas --bench encode

use std::time::Instant;

use apache_avro::{to_avro_datum, to_value};
use order_schemas::{EventType, OrderEvent};

fn main() {
    let n = 20_000;
    let events: Vec<OrderEvent> = (0..n)
        .map(|i| OrderEvent::sample(EventType::OrderCreated, &format!("o-{i}"), "p", 16))
        .collect();
    let schema = EventType::OrderCreated.schema();
    let per = |start: Instant| start.elapsed().as_secs_f64() * 1e6 / n as f64;

    let start = Instant::now();
    let values: Vec<_> = events
        .iter()
        .map(|e| match e {
            OrderEvent::Created(c) => to_value(c).expect("to_value"),
            _ => unreachable!(),
        })
        .collect();
    let to_value_us = per(start);
    let start = Instant::now();
    let resolved: Vec<_> = values
        .into_iter()
        .map(|v| v.resolve(schema).expect("resolve"))
        .collect();
    let resolve_us = per(start);
    let start = Instant::now();
    let mut bytes = 0;
    for v in resolved {
        bytes += to_avro_datum(schema, v).expect("write").len();
    }
    let write_us = per(start);
    let start = Instant::now();
    for e in &events {
        e.validate().expect("valid");
    }
    let validate_us = per(start);
    let start = Instant::now();
    let mut direct_bytes = 0;
    for e in &events {
        direct_bytes += e.to_avro_body().len();
    }
    let direct_us = per(start);
    assert_eq!(direct_bytes, bytes, "same output size");
    let generic = to_value_us + resolve_us + write_us;
    println!("encode cost per event ({} bytes): apache-avro generic {generic:.1} µs (to_value {to_value_us:.1}, resolve {resolve_us:.1}, write {write_us:.1}); direct {direct_us:.2} µs ({:.0}x faster); validate {validate_us:.1} µs", bytes / n, generic / direct_us);
}
