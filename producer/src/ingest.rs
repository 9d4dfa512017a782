//! HTTP ingest for internal services: `POST /v1/events` with one event in its JSON form.
//!
//! | answer | when |
//! |---|---|
//! | 202 `{"event_id","partition","offset"}` | Kafka acknowledged the event (acks=all) |
//! | 400 `{"error","field"}` | malformed JSON, missing or wrong field, unknown type |
//! | 413 | body larger than `max_body_bytes` |
//! | 415 | a Content-Type that is not JSON |
//! | 503 + `Retry-After` | too many requests in flight, registry or Kafka unavailable |
//! | 500 | the registry refused our schema (a deployment problem, not the caller's) |
//!
//! Only a 202 promises anything, and it is sent after the acknowledgement, so nothing
//! that got a 202 is lost. Shutdown stops accepting and lets in-flight requests finish.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use order_schemas::OrderEvent;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::metrics as m;
use crate::{PublishError, Publisher};

/// Limits of the ingest endpoint.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Largest accepted body; larger ones get 413. Default 64 KiB (an order event with
    /// a few hundred items).
    pub max_body_bytes: usize,
    /// Requests being published at once; more get 503 at once instead of queueing
    /// without bound. Default 2,048.
    pub max_in_flight: usize,
    /// The `Retry-After` (seconds) sent with 503. Default 1.
    pub retry_after: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            max_in_flight: 2048,
            retry_after: Duration::from_secs(1),
        }
    }
}

#[derive(Clone)]
struct Ingest {
    publisher: Arc<Publisher>,
    permits: Arc<Semaphore>,
    config: IngestConfig,
    metrics: PrometheusHandle,
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    metrics::counter!(m::INGEST_RESPONSES, "status" => status.as_str().to_string()).increment(1);
    (status, Json(body)).into_response()
}

fn unavailable(config: &IngestConfig, message: String) -> Response {
    let mut response = answer(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": message }));
    response.headers_mut().insert(
        header::RETRY_AFTER,
        config.retry_after.as_secs().max(1).into(),
    );
    response
}

fn is_json(headers: &HeaderMap) -> bool {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(ct) => {
            let essence = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        }
    }
}

async fn post_event(
    State(ingest): State<Ingest>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = ingest.config.max_body_bytes;
            return answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": format!("body is larger than the {limit} bytes allowed") }),
            );
        }
        Err(rejection) => {
            return answer(
                rejection.status(),
                json!({ "error": rejection.body_text() }),
            )
        }
    };
    if !is_json(&headers) {
        return answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({ "error": "Content-Type must be application/json" }),
        );
    }
    let Ok(_permit) = ingest.permits.try_acquire() else {
        return unavailable(
            &ingest.config,
            "too many events in flight, retry later".to_string(),
        );
    };
    let event = match OrderEvent::from_json(&body) {
        Ok(e) => e,
        Err(e) => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({ "error": e.to_string(), "field": e.field }),
            )
        }
    };
    let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
    let outcome = match ingest.publisher.enqueue(&event, traceparent).await {
        Ok(pending) => pending.wait().await,
        Err(e) => Err(e),
    };
    match outcome {
        Ok(p) => answer(StatusCode::ACCEPTED, json!(p)),
        Err(e @ PublishError::Invalid(_)) => {
            answer(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() }))
        }
        Err(e) if e.is_retryable() => {
            tracing::warn!(event_id = %event.event_id(), error = %e, "event not published, answering 503");
            unavailable(&ingest.config, e.to_string())
        }
        Err(e) => {
            tracing::error!(event_id = %event.event_id(), error = %e, "event refused by the registry");
            answer(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": e.to_string() }),
            )
        }
    }
}

/// `GET /v1/status`: requests being published now, and the cap.
async fn status(State(ingest): State<Ingest>) -> Response {
    let max = ingest.config.max_in_flight.max(1);
    let in_flight = max - ingest.permits.available_permits();
    Json(json!({ "in_flight": in_flight, "max_in_flight": max })).into_response()
}

async fn render_metrics(State(ingest): State<Ingest>) -> Response {
    ingest.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        ingest.metrics.render(),
    )
        .into_response()
}

/// The ingest routes: `POST /v1/events`, `GET /v1/status`, `GET /metrics`, `GET /healthz`.
pub fn router(publisher: Arc<Publisher>, config: IngestConfig) -> Router {
    let ingest = Ingest {
        publisher,
        permits: Arc::new(Semaphore::new(config.max_in_flight.max(1))),
        metrics: m::handle(),
        config: config.clone(),
    };
    Router::new()
        .route("/v1/events", post(post_event))
        .route("/v1/status", get(status))
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(ingest)
}

/// Serves `router` on `listener` until `shutdown`, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
