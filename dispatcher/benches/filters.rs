//! Payload filters (#26): the router's rate with a filter on every subscription against
//! the same subscriptions without one, in the same run.
//!
//!   cargo bench -p dispatcher --bench filters
//!
//! Per orders record, what the router does between reading it and handing records to
//! the producer: decode the Avro body (as the codec does once the schema is cached),
//! find the matching subscriptions in the table, evaluate their filters, build the
//! webhook body and each delivery record's headers. The producer's own cost (the same
//! with or without filters) is left out, so the ratio is a lower bound.
//!
//! 100 subscriptions, two layouts: one per partner (100 partners; an event meets one
//! filter), and all of one partner (an event meets 100). Three variants each: no
//! filter; the example (`amount >= 10000 && status != "CANCELLED"`, about half
//! pass); and a filter every event passes (the filter's cost alone, nothing saved
//! downstream). BENCH_EVENTS (20,000) per round, BENCH_ROUNDS (7) rounds alternating
//! the variants; the best round of each is printed. The first two filters have the
//! common shape (comparisons of fields with literals) and run on the typed event; a
//! fourth variant passes every event with a filter CEL's interpreter runs (`exists`).

use std::time::Instant;

use dispatcher::router::{filtered, webhook_body};
use dispatcher::subscriptions::table::SubscriptionTable;
use dispatcher::subscriptions::Subscription;
use dispatcher::webhook::signing::Secret;
use order_schemas::{EventType, OrderEvent};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The example, its threshold a little different per subscription (no two
/// filters alike).
fn example(s: usize) -> Option<String> {
    Some(format!(
        "event.order.total.amount_minor >= {} && event.order.status != \"CANCELLED\"",
        10_000 + s
    ))
}

fn passes_all(s: usize) -> Option<String> {
    Some(format!(
        "event.order.total.amount_minor >= -{s} && event.type != \"x\""
    ))
}

/// Passes every event too, but not of the common shape: CEL's interpreter runs it.
fn cel_passing_all(s: usize) -> Option<String> {
    Some(format!(
        "event.order.items.exists(i, i.quantity >= 1) && event.order.total.amount_minor >= -{s}"
    ))
}

fn table(
    partners: usize,
    per_partner: usize,
    filter: fn(usize) -> Option<String>,
) -> SubscriptionTable {
    let table = SubscriptionTable::default();
    for p in 0..partners {
        for s in 0..per_partner {
            let json = serde_json::json!({
                "id": format!("p{p}-s{s}"),
                "partner_id": format!("p{p}"),
                "url": "https://partner.example/hooks",
                "event_types": ["order.created", "order.status_changed", "order.cancelled"],
                "secrets": [Secret::generate()],
                "filter": filter(p * per_partner + s),
            });
            let sub: Subscription = serde_json::from_value(json).expect("subscription");
            table.upsert(sub);
        }
    }
    table
}

/// Avro bodies of `n` events over `partners` partners: the three types, totals from
/// 10 to 200 EUR.
fn events(n: usize, partners: usize) -> Vec<(EventType, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let t = EventType::ALL[i % 3];
            let e = OrderEvent::sample(
                t,
                &format!("o-{}", i % 5000),
                &format!("p{}", i % partners),
                1 + i % 4,
            );
            let mut j = e.to_json();
            j["order"]["total"]["amount_minor"] = (1000 + (i as i64 * 7919) % 19_000).into();
            let e = OrderEvent::from_json(j.to_string().as_bytes()).expect("event");
            (t, e.to_avro_body())
        })
        .collect()
}

fn decode(t: EventType, body: &[u8]) -> OrderEvent {
    let schema = t.schema();
    let value = apache_avro::from_avro_datum(schema, &mut &body[..], None).expect("datum");
    let value = value.resolve(schema).expect("resolve");
    match t {
        EventType::OrderCreated => OrderEvent::Created(apache_avro::from_value(&value).expect("v")),
        EventType::OrderStatusChanged => {
            OrderEvent::StatusChanged(apache_avro::from_value(&value).expect("v"))
        }
        EventType::OrderCancelled => {
            OrderEvent::Cancelled(apache_avro::from_value(&value).expect("v"))
        }
    }
}

type Sink = ThreadedProducer<DefaultProducerContext>;

/// Routes every event once, producing its delivery records when `sink` is given (and
/// waiting for all of them to be acknowledged): (events per second, records made).
fn round(
    table: &SubscriptionTable,
    events: &[(EventType, Vec<u8>)],
    sink: Option<&Sink>,
) -> (f64, usize) {
    let started = Instant::now();
    let mut records = 0;
    for (t, body) in events {
        let event = decode(*t, body);
        let matched = table.matching(event.event_type().name(), event.partner_id());
        let subscriptions = filtered(&event, matched);
        if subscriptions.is_empty() {
            continue;
        }
        let payload = webhook_body(&event);
        let event_id = event.event_id().to_string();
        for m in &subscriptions {
            let s = &m.subscription;
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "webhook-id",
                    value: Some(event_id.as_str()),
                })
                .insert(Header {
                    key: "subscription-id",
                    value: Some(s.id.as_str()),
                });
            records += 1;
            let Some(sink) = sink else {
                std::hint::black_box((&payload, headers));
                continue;
            };
            let topic = format!("deliveries.{}", s.partner_id);
            let mut record = BaseRecord::<[u8], [u8]>::to(&topic)
                .key(event.order_id().as_bytes())
                .payload(&payload)
                .headers(headers);
            while let Err((e, back)) = sink.send(record) {
                assert!(
                    matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ),
                    "{e}"
                );
                record = back;
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        }
    }
    if let Some(sink) = sink {
        sink.flush(std::time::Duration::from_secs(60))
            .expect("flush");
    }
    (
        events.len() as f64 / started.elapsed().as_secs_f64(),
        records,
    )
}

fn main() {
    let n = env_or("BENCH_EVENTS", 20_000);
    let rounds = env_or("BENCH_ROUNDS", 7);
    println!("filters bench: {n} events per round, best of {rounds} rounds");
    let cluster = MockCluster::new(1).expect("mock cluster");
    for p in 0..100 {
        cluster
            .create_topic(&format!("deliveries.p{p}"), 6, 1)
            .expect("topic");
    }
    let sink: Sink = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for (label, partners, per_partner, produce) in [
        (
            "100 partners x 1 subscription, up to the producer",
            100,
            1,
            false,
        ),
        (
            "1 partner x 100 subscriptions, up to the producer",
            1,
            100,
            false,
        ),
        ("100 partners x 1 subscription, produced", 100, 1, true),
        ("1 partner x 100 subscriptions, produced", 1, 100, true),
    ] {
        let evs = events(if produce { n / 4 } else { n }, partners);
        let sink = produce.then_some(&sink);
        let variants = [
            ("no filter", table(partners, per_partner, |_| None)),
            ("example filter", table(partners, per_partner, example)),
            (
                "filter passing all",
                table(partners, per_partner, passes_all),
            ),
            (
                "CEL passing all",
                table(partners, per_partner, cel_passing_all),
            ),
        ];
        let mut best = [(0f64, 0usize); 4];
        for _ in 0..rounds {
            for (i, (_, t)) in variants.iter().enumerate() {
                let (rate, records) = round(t, &evs, sink);
                if rate > best[i].0 {
                    best[i] = (rate, records);
                }
            }
        }
        println!("{label}:");
        for (i, (name, _)) in variants.iter().enumerate() {
            println!(
                "  {name:<20} {:>9.0} events/s  {:>8} delivery records  {:.2}x",
                best[i].0,
                best[i].1,
                best[i].0 / best[0].0
            );
        }
    }
}
