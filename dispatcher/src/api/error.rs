//! The API's errors as JSON (`{"error": {"code", "message", "field"?}}`), and request
//! bodies parsed so that an error names the field at fault.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A JSON error: status, machine-readable code, message, and the field when one is at
/// fault.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    pub(super) code: &'static str,
    message: String,
    field: Option<String>,
    /// Seconds for a `Retry-After` header (503, 429).
    retry_after: Option<u64>,
    /// A 410 of a stream: the oldest cursor it can start from.
    oldest_cursor: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            oldest_cursor: None,
        }
    }

    pub(crate) fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_field",
            message: message.into(),
            field: Some(field.to_string()),
            retry_after: None,
            oldest_cursor: None,
        }
    }

    /// A malformed parameter of the request's path or query (a message id, a filter, a
    /// cursor): 400, naming it. A body's field that fails validation is [`Self::field`].
    pub(super) fn parameter(name: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_parameter",
            message: message.into(),
            field: Some(name.to_string()),
            retry_after: None,
            oldest_cursor: None,
        }
    }

    /// 404 saying what is not there.
    pub(super) fn not_found_what(message: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 410: a cursor older than what is kept; `oldest` is where one can start.
    pub(super) fn gone(message: &str, oldest: String) -> Self {
        let mut e = Self::new(StatusCode::GONE, "gone", message);
        e.oldest_cursor = Some(oldest);
        e
    }

    pub(super) fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no subscription `{id}`"),
        )
    }

    /// A failure of ours (Kafka, a task): the details go to the log, the caller gets
    /// a generic answer (no broker names or internal messages reach a partner).
    pub(crate) fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "api");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "temporarily unavailable, try again later",
        )
        .retry_after(5)
    }

    pub(super) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(f) = self.field {
            error["field"] = f.into();
        }
        let mut body = serde_json::json!({ "error": error });
        if let Some(oldest) = self.oldest_cursor {
            body["oldest_cursor"] = oldest.into();
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// Parses a JSON body, naming the field at fault.
pub(crate) fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return serde_json::from_slice(b"{}")
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()));
    }
    // `null` is not a value of any field: a field is given or left out (for its
    // default, or to keep it), as the document says.
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(bytes) {
        if let Some((name, _)) = fields.iter().find(|(_, v)| v.is_null()) {
            return Err(ApiError::field(
                name,
                "must not be null: leave the field out instead",
            ));
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = e.into_inner().to_string();
        if path == "." {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message)
        } else {
            ApiError::field(&path, message)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_errors_tell_the_caller_nothing_of_ours() {
        let response = ApiError::internal("Local: Broker transport failure: kafka-2.internal:9092")
            .into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response
                .headers()
                .get(axum::http::header::RETRY_AFTER)
                .map(|v| v.as_bytes()),
            Some(&b"5"[..])
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&body);
        assert!(
            !text.contains("kafka-2") && !text.contains("Broker"),
            "{text}"
        );
        assert!(text.contains("\"unavailable\""), "{text}");
    }
}
