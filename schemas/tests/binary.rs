//! The direct encoder writes exactly what apache-avro's generic path writes.

use apache_avro::schema::Schema;
use apache_avro::{from_avro_datum, to_avro_datum, to_value};
use order_schemas::{EventType, OrderEvent, OrderStatus};

fn generic(event: &OrderEvent) -> Vec<u8> {
    let schema = event.event_type().schema();
    let value = match event {
        OrderEvent::Created(e) => to_value(e),
        OrderEvent::StatusChanged(e) => to_value(e),
        OrderEvent::Cancelled(e) => to_value(e),
    }
    .expect("to_value");
    to_avro_datum(schema, value.resolve(schema).expect("resolve")).expect("write")
}

fn variants(t: EventType, items: usize) -> Vec<OrderEvent> {
    let mut out = vec![OrderEvent::sample(t, "o-1", "partner-a", items)];
    let mut odd = OrderEvent::sample(t, "ordre-ünïcode-€", "p", items);
    match &mut odd {
        OrderEvent::Created(e) => e.order.total.amount_minor = i64::MIN,
        OrderEvent::StatusChanged(e) => {
            e.order.total.amount_minor = -1;
            e.previous_status = OrderStatus::Refunded;
            e.order.status = OrderStatus::Confirmed;
        }
        OrderEvent::Cancelled(e) => {
            e.order.total.amount_minor = i64::MAX;
            e.reason = String::new();
        }
    }
    if let OrderEvent::StatusChanged(e) = &mut odd {
        e.order.items.clear();
    }
    out.push(odd);
    out
}

#[test]
fn direct_encoding_is_byte_identical_to_the_generic_path() {
    for t in EventType::ALL {
        for items in [1, 2, 16, 300] {
            for event in variants(t, items) {
                let fast = event.to_avro_body();
                assert_eq!(fast, generic(&event), "{t} with {items} items");
                // And it reads back into the same event.
                let value = from_avro_datum(t.schema(), &mut &fast[..], None).expect("read");
                let json = serde_json::to_value(
                    apache_avro::from_value::<serde_json::Value>(&value).expect("json"),
                )
                .expect("json");
                assert_eq!(json["order_id"], serde_json::json!(event.order_id()));
            }
        }
    }
}

#[test]
fn order_status_variants_are_in_schema_symbol_order() {
    let Schema::Record(record) = EventType::OrderCreated.schema() else {
        panic!("record")
    };
    let order = record
        .fields
        .iter()
        .find(|f| f.name == "order")
        .expect("order field");
    let Schema::Record(order) = &order.schema else {
        panic!("order record")
    };
    let status = order
        .fields
        .iter()
        .find(|f| f.name == "status")
        .expect("status field");
    let Schema::Enum(e) = &status.schema else {
        panic!("enum")
    };
    let all = [
        OrderStatus::Pending,
        OrderStatus::Confirmed,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
        OrderStatus::Refunded,
    ];
    let names: Vec<String> = all
        .iter()
        .map(|s| {
            serde_json::to_value(s)
                .expect("name")
                .as_str()
                .expect("str")
                .to_string()
        })
        .collect();
    assert_eq!(names, e.symbols);
    for (i, s) in all.iter().enumerate() {
        assert_eq!(*s as usize, i);
    }
}
