//! Binds the paths of an event that filters read, and nothing else. A field this file
//! does not name (one a schema gained later) makes its record bound whole: slower, never
//! wrong. `tests::every_field_binds_as_the_whole_event_has_it` compares each leaf with
//! the whole event's.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;
use order_schemas::{Money, Order, OrderEvent};

use super::Paths;

fn whole<T: serde::Serialize>(value: &T) -> Value {
    // (Order events serialize to strings, numbers, lists and records only.)
    cel::to_value(value).unwrap_or(Value::Null)
}

fn string(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

/// A record of the fields of `paths`, each from `field` (`None`: the record has no such
/// field now, an optional one; `Err`: a field this file does not know).
fn record(
    paths: &Paths,
    mut field: impl FnMut(&str, &Paths) -> Result<Option<Value>, ()>,
) -> Result<Value, ()> {
    let mut map = HashMap::with_capacity(paths.fields.len());
    for (name, sub) in &paths.fields {
        if let Some(v) = field(name, sub)? {
            map.insert(Key::String(Arc::new(name.clone())), v);
        }
    }
    Ok(Value::Map(Map { map: Arc::new(map) }))
}

/// A JSON value as the router binds the same data (`event`): integers as CEL `int`
/// (serde's JSON numbers would become `uint` when not negative, and `uint + int` is
/// an error in CEL, so the filter test and a stream would disagree with the router).
pub(super) fn json(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::UInt(u),
            _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => string(s),
        serde_json::Value::Array(items) => Value::List(Arc::new(items.iter().map(json).collect())),
        serde_json::Value::Object(fields) => Value::Map(Map {
            map: Arc::new(
                fields
                    .iter()
                    .map(|(k, v)| (Key::String(Arc::new(k.clone())), json(v)))
                    .collect(),
            ),
        }),
    }
}

pub(super) fn event(e: &OrderEvent, paths: &Paths) -> Value {
    if paths.whole {
        return whole(e);
    }
    record(paths, |name, sub| {
        Ok(Some(match name {
            "type" => string(e.event_type().name()),
            "event_id" => string(&e.event_id().hyphenated().to_string()),
            "occurred_at" => Value::Int(e.occurred_at().0),
            "order_id" => string(e.order_id()),
            "partner_id" => string(e.partner_id()),
            "order" => order(e.order(), sub)?,
            "previous_status" => match e {
                OrderEvent::StatusChanged(c) => whole(&c.previous_status),
                _ => return Ok(None),
            },
            "reason" => match e {
                OrderEvent::Cancelled(c) => string(&c.reason),
                _ => return Ok(None),
            },
            _ => return Err(()),
        }))
    })
    .unwrap_or_else(|()| whole(e))
}

fn order(o: &Order, paths: &Paths) -> Result<Value, ()> {
    if paths.whole {
        return Ok(whole(o));
    }
    record(paths, |name, sub| {
        Ok(Some(match name {
            "customer_ref" => string(&o.customer_ref),
            "status" => whole(&o.status),
            "items" => whole(&o.items),
            "total" => money(&o.total, sub)?,
            _ => return Err(()),
        }))
    })
}

fn money(m: &Money, paths: &Paths) -> Result<Value, ()> {
    if paths.whole {
        return Ok(whole(m));
    }
    record(paths, |name, _| {
        Ok(Some(match name {
            "amount_minor" => Value::Int(m.amount_minor),
            "currency" => string(&m.currency),
            _ => return Err(()),
        }))
    })
}
