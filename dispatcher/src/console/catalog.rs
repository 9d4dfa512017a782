//! The event catalog: each event type's fields, an example body, and how to verify the
//! signature, from `GET /v1/event-types`.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;

use super::pages::{api_failure, render, text, Layout};
use super::{ApiCall, Viewer};
use crate::api::ApiState;

struct CatalogType {
    name: String,
    doc: String,
    /// (field, type, meaning)
    fields: Vec<(String, String, String)>,
    example: String,
}

#[derive(Template)]
#[template(path = "catalog.html")]
struct Catalog {
    layout: Layout,
    types: Vec<CatalogType>,
}

/// An Avro type as a reader says it: `string`, `uuid`, `timestamp-millis`, `null | string`,
/// `array of LineItem`, or a record's name.
fn type_name(t: &Value) -> String {
    match t {
        Value::String(s) => s.clone(),
        Value::Array(union) => union.iter().map(type_name).collect::<Vec<_>>().join(" | "),
        Value::Object(o) => {
            if let Some(logical) = o.get("logicalType").and_then(Value::as_str) {
                return logical.to_string();
            }
            match o.get("type").and_then(Value::as_str) {
                Some("array") => format!(
                    "array of {}",
                    o.get("items").map_or(String::new(), type_name)
                ),
                Some("record" | "enum") => o.get("name").map_or("record".into(), text),
                Some(other) => other.to_string(),
                None => "?".into(),
            }
        }
        _ => "?".into(),
    }
}

pub(super) async fn catalog(State(api): State<ApiState>, viewer: Viewer) -> Response {
    let call = ApiCall {
        api: &api,
        viewer: &viewer,
    };
    let (status, v) = call.get("/v1/event-types").await;
    if !status.is_success() {
        return api_failure(Layout::of(&viewer), status, &v);
    }
    let types = v["event_types"]
        .as_array()
        .map(|types| {
            types
                .iter()
                .map(|t| CatalogType {
                    name: text(&t["name"]),
                    doc: t["schema"]["doc"].as_str().unwrap_or_default().to_string(),
                    fields: t["schema"]["fields"]
                        .as_array()
                        .map(|f| {
                            f.iter()
                                .map(|f| {
                                    (
                                        text(&f["name"]),
                                        type_name(&f["type"]),
                                        f["doc"].as_str().unwrap_or_default().to_string(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    example: serde_json::to_string_pretty(&t["example"]).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    render(
        StatusCode::OK,
        Catalog {
            layout: Layout::of(&viewer),
            types,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn avro_types_read_as_a_partner_would() {
        let t = |j: &str| type_name(&serde_json::from_str(j).expect("json"));
        assert_eq!(t(r#""string""#), "string");
        assert_eq!(t(r#"{"type":"string","logicalType":"uuid"}"#), "uuid");
        assert_eq!(t(r#"["null","string"]"#), "null | string");
        assert_eq!(
            t(r#"{"type":"array","items":{"type":"record","name":"LineItem","fields":[]}}"#),
            "array of LineItem"
        );
    }
}
