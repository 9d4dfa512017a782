//! The JSON form internal services send (CLI lines, HTTP ingest bodies) and its
//! validation. Every error names the field: `order.items[0].quantity: ...`.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{EventType, OrderCancelled, OrderCreated, OrderEvent, OrderStatusChanged};

/// Why an event was refused, naming the field (`""` when the whole input is wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct InvalidEvent {
    /// Path of the bad field, e.g. `order.items[0].quantity`; empty for the whole input.
    pub field: String,
    pub message: String,
}

impl InvalidEvent {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, InvalidEvent> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        InvalidEvent::new(field, e.into_inner().to_string())
    })
}

impl OrderEvent {
    /// Parses and validates one event in its JSON form.
    pub fn from_json(bytes: &[u8]) -> Result<Self, InvalidEvent> {
        // Fast path: straight into the typed enum. Only when that fails is the input
        // parsed again, slowly, to name the field that is wrong.
        match serde_json::from_slice::<OrderEvent>(bytes) {
            Ok(event) => {
                event.validate()?;
                Ok(event)
            }
            Err(_) => Self::from_json_explained(bytes),
        }
    }

    /// Parses in two steps (`type`, then that struct through serde_path_to_error), so
    /// that an error names the field; serde's internally tagged enums lose the path.
    fn from_json_explained(bytes: &[u8]) -> Result<Self, InvalidEvent> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| InvalidEvent::new("", format!("malformed JSON: {e}")))?;
        let Value::Object(mut fields) = value else {
            return Err(InvalidEvent::new("", "expected a JSON object"));
        };
        let kind = match fields.remove("type") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(InvalidEvent::new(
                    "type",
                    format!("expected a string, got {other}"),
                ))
            }
            None => return Err(InvalidEvent::new("type", "missing field `type`")),
        };
        let rest = Value::Object(fields);
        let event = match EventType::from_name(&kind) {
            Some(EventType::OrderCreated) => OrderEvent::Created(typed::<OrderCreated>(rest)?),
            Some(EventType::OrderStatusChanged) => {
                OrderEvent::StatusChanged(typed::<OrderStatusChanged>(rest)?)
            }
            Some(EventType::OrderCancelled) => {
                OrderEvent::Cancelled(typed::<OrderCancelled>(rest)?)
            }
            None => {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
                return Err(InvalidEvent::new(
                    "type",
                    format!(
                        "unknown event type `{kind}`, expected one of {}",
                        known.join(", ")
                    ),
                ));
            }
        };
        event.validate()?;
        Ok(event)
    }

    /// The JSON form, as accepted by [`OrderEvent::from_json`].
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Checks what the types alone cannot: non-empty ids, ISO 4217 currency codes,
    /// positive quantities, one currency per order.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        if self.event_id().is_nil() {
            return Err(InvalidEvent::new("event_id", "must not be the nil UUID"));
        }
        for (field, value) in [
            ("order_id", self.order_id()),
            ("partner_id", self.partner_id()),
        ] {
            if value.trim().is_empty() {
                return Err(InvalidEvent::new(field, "must not be empty"));
            }
            if value.len() > 255 {
                return Err(InvalidEvent::new(
                    field,
                    format!("is {} bytes, at most 255 allowed", value.len()),
                ));
            }
        }
        let order = self.order();
        if order.customer_ref.trim().is_empty() {
            return Err(InvalidEvent::new("order.customer_ref", "must not be empty"));
        }
        if self.event_type() == EventType::OrderCreated && order.items.is_empty() {
            return Err(InvalidEvent::new(
                "order.items",
                "an order.created event needs at least one item",
            ));
        }
        check_currency("order.total.currency", &order.total.currency)?;
        for (i, item) in order.items.iter().enumerate() {
            if item.sku.trim().is_empty() {
                return Err(InvalidEvent::new(
                    format!("order.items[{i}].sku"),
                    "must not be empty",
                ));
            }
            if item.quantity < 1 {
                return Err(InvalidEvent::new(
                    format!("order.items[{i}].quantity"),
                    format!("must be at least 1, got {}", item.quantity),
                ));
            }
            let field = format!("order.items[{i}].unit_price.currency");
            check_currency(&field, &item.unit_price.currency)?;
            if item.unit_price.currency != order.total.currency {
                return Err(InvalidEvent::new(
                    field,
                    format!(
                        "`{}` differs from the order total's `{}`",
                        item.unit_price.currency, order.total.currency
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn check_currency(field: &str, code: &str) -> Result<(), InvalidEvent> {
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(InvalidEvent::new(
            field,
            format!("`{code}` is not an ISO 4217 code (three capital letters)"),
        ))
    }
}
