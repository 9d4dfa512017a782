//! The JSON form of events: what is accepted, and that every refusal names the field.

use order_schemas::{EventType, InvalidEvent, OrderEvent};
use serde_json::{json, Value};

fn valid() -> Value {
    json!({
        "type": "order.created",
        "order_id": "o-42",
        "partner_id": "partner-a",
        "occurred_at": "2026-11-22T10:00:00Z",
        "order": {
            "customer_ref": "C-9",
            "status": "PENDING",
            "items": [{"sku": "SKU-1", "name": "Beans", "quantity": 2, "unit_price": {"amount_minor": 1250, "currency": "EUR"}}],
            "total": {"amount_minor": 2500, "currency": "EUR"}
        }
    })
}

fn refusal(mutate: impl FnOnce(&mut Value)) -> InvalidEvent {
    let mut v = valid();
    mutate(&mut v);
    OrderEvent::from_json(v.to_string().as_bytes()).expect_err("must be refused")
}

#[test]
fn a_valid_event_parses_with_generated_id_and_given_time() {
    let event = OrderEvent::from_json(valid().to_string().as_bytes()).expect("valid");
    assert_eq!(event.event_type(), EventType::OrderCreated);
    assert_eq!(event.order_id(), "o-42");
    assert_eq!(event.occurred_at().to_rfc3339(), "2026-11-22T10:00:00.000Z");
    assert!(!event.event_id().is_nil());
    // The JSON form round-trips.
    let again = OrderEvent::from_json(event.to_json().to_string().as_bytes()).expect("round trip");
    assert_eq!(again, event);
}

#[test]
fn each_bad_input_names_the_field() {
    let cases: Vec<(InvalidEvent, &str, &str)> = vec![
        (
            refusal(|v| v["type"] = json!("order.exploded")),
            "type",
            "order.exploded",
        ),
        (
            refusal(|v| {
                v.as_object_mut().expect("obj").remove("type");
            }),
            "type",
            "missing",
        ),
        (
            refusal(|v| {
                v.as_object_mut().expect("obj").remove("order_id");
            }),
            "",
            "order_id",
        ),
        (
            refusal(|v| v["order"]["items"][0]["quantity"] = json!("two")),
            "order.items[0].quantity",
            "invalid type",
        ),
        (
            refusal(|v| v["order"]["items"][0]["quantity"] = json!(0)),
            "order.items[0].quantity",
            "at least 1",
        ),
        (
            refusal(|v| v["order"]["status"] = json!("LOST")),
            "order.status",
            "LOST",
        ),
        (
            refusal(|v| v["order"]["total"]["currency"] = json!("euro")),
            "order.total.currency",
            "ISO 4217",
        ),
        (
            refusal(|v| v["order"]["items"][0]["unit_price"]["currency"] = json!("USD")),
            "order.items[0].unit_price.currency",
            "differs",
        ),
        (
            refusal(|v| v["partner_id"] = json!("  ")),
            "partner_id",
            "empty",
        ),
        (
            refusal(|v| v["event_id"] = json!("not-a-uuid")),
            "event_id",
            "",
        ),
        (
            refusal(|v| v["occurred_at"] = json!("yesterday")),
            "occurred_at",
            "RFC 3339",
        ),
        (
            refusal(|v| v["order_idd"] = json!("typo")),
            "order_idd",
            "unknown field",
        ),
        (
            refusal(|v| v["order"]["items"] = json!([])),
            "order.items",
            "at least one item",
        ),
    ];
    for (err, field, mentions) in cases {
        assert_eq!(err.field, field, "{err}");
        assert!(
            err.to_string().contains(mentions),
            "`{err}` should mention `{mentions}`"
        );
    }
}

#[test]
fn malformed_json_and_non_objects_are_refused_clearly() {
    let err = OrderEvent::from_json(b"{\"type\": ").expect_err("malformed");
    assert!(err.message.starts_with("malformed JSON"), "{err}");
    let err = OrderEvent::from_json(b"[1,2]").expect_err("array");
    assert_eq!(err.message, "expected a JSON object");
}
