//! `GET /v1/event-types`: the event types a subscription may take, each with its schema
//! (Avro, as published to the registry) and an example of the webhook body partners
//! receive (the console's event catalog shows them).

use axum::response::{IntoResponse, Response};
use axum::Json;
use order_schemas::{EventType, OrderEvent};

use super::auth::Caller;

pub(super) async fn list(_caller: Caller) -> Response {
    let types: Vec<serde_json::Value> = EventType::ALL
        .iter()
        .map(|t| {
            let example = OrderEvent::sample(*t, "order-4711", "your-partner-id", 2);
            let body = crate::router::webhook_body(&example);
            serde_json::json!({
                "name": t.name(),
                "schema": serde_json::from_str::<serde_json::Value>(t.schema_text())
                    .unwrap_or(serde_json::Value::Null),
                "example": serde_json::from_slice::<serde_json::Value>(&body)
                    .unwrap_or(serde_json::Value::Null),
            })
        })
        .collect();
    Json(serde_json::json!({ "event_types": types })).into_response()
}
