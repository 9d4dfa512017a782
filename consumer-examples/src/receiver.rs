//! An example partner receiver, as a partner should write one:
//! - verify the Standard Webhooks signature and timestamp with the official
//!   `standardwebhooks` crate; refuse with 401 otherwise;
//! - deduplicate by `webhook-id` (deliveries are at-least-once);
//! - acknowledge fast (2xx), do the work later.
//!
//! It also has a scripted mode for tests and demos (fail the first N, fail a share,
//! answer slowly, 429 with Retry-After, 410, redirect, hang), changeable while running.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde::{Deserialize, Serialize};

/// How the receiver answers, in order of precedence.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Script {
    /// Answer this status to the first `fail_first` requests (default 503).
    pub fail_first: u32,
    pub fail_status: Option<u16>,
    /// Answer `fail_status` to this share of requests (0.0 to 1.0), deterministically.
    pub fail_ratio: f64,
    /// Answer every request with this status (e.g. 410, 400).
    pub always_status: Option<u16>,
    /// Answer `fail_status` to every event of these orders (`data.order_id`): one order
    /// the partner keeps rejecting.
    pub fail_orders: Vec<String>,
    /// With 429/503: the Retry-After to send, in seconds.
    pub retry_after_secs: Option<u64>,
    /// Redirect every request here (302) instead of answering.
    pub redirect_to: Option<String>,
    /// Wait this long before answering.
    pub delay_ms: u64,
    /// Never answer.
    pub hang: bool,
    /// An overloaded server: answer 503 to a request that finds more than this many
    /// requests already being answered (use with `delay_ms`).
    pub capacity: Option<u32>,
    /// The body of a scripted failure (default `scripted failure`), sent as HTML when it
    /// starts with `<`: a partner's server may answer anything, markup included.
    pub fail_body: Option<String>,
    /// How the ownership challenge (`webhook.endpoint_verification`) is answered; it is
    /// answered before the rest of the script applies (that is for events).
    pub challenge: ChallengeAnswer,
}

/// How a receiver answers the ownership challenge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeAnswer {
    /// As a partner should: a verified signature, then 200 with the challenge.
    #[default]
    Right,
    /// 200 with another value.
    Wrong,
    /// The right answer after 10 s (past the dispatcher's few seconds).
    Late,
    /// No answer at all.
    Never,
    /// Like an event: 204, no challenge (a receiver that does not know the challenge).
    Ignore,
}

/// One accepted (verified) delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub webhook_id: String,
    pub event_type: String,
    pub order_id: String,
    pub partner_id: String,
    pub traceparent: Option<String>,
    pub body: serde_json::Value,
    /// True when this webhook-id was seen before (a duplicate the partner ignores).
    pub duplicate: bool,
    /// When the request arrived (wall clock, to compare with Kafka record timestamps).
    pub received_at: std::time::SystemTime,
}

#[derive(Debug, Default)]
struct Inner {
    script: Script,
    requests: u64,
    rejected_signatures: u64,
    seen: HashSet<String>,
    deliveries: Vec<Delivery>,
    /// When each request arrived (since the script was last set).
    arrivals: Vec<std::time::Instant>,
    in_flight: u32,
    max_in_flight: u32,
    overloaded: u64,
    challenges: u64,
    challenge_bodies: Vec<serde_json::Value>,
}

/// Counts a request as being answered until dropped.
struct Answering(Arc<Mutex<Inner>>);

impl Drop for Answering {
    fn drop(&mut self) {
        let mut inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        inner.in_flight = inner.in_flight.saturating_sub(1);
    }
}

/// A running receiver; it stops when dropped.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    /// Served over TLS (its URL is https).
    https: bool,
    state: Arc<Mutex<Inner>>,
    stop: Arc<tokio::sync::Notify>,
}

#[derive(Clone)]
struct AppState {
    inner: Arc<Mutex<Inner>>,
    verifier: Arc<standardwebhooks::Webhook>,
}

impl Receiver {
    /// Starts on `addr` (port 0 for any) verifying with `secret` (`whsec_...`).
    pub async fn start(addr: SocketAddr, secret: &str, script: Script) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Self::serve(listener, false, secret, script)
    }

    /// Serves on `listener` (`https`: a TLS listener) verifying with `secret`.
    pub fn serve<L>(listener: L, https: bool, secret: &str, script: Script) -> anyhow::Result<Self>
    where
        L: axum::serve::Listener<Addr = SocketAddr>,
    {
        let verifier =
            standardwebhooks::Webhook::new(secret).map_err(|e| anyhow::anyhow!("secret: {e}"))?;
        let inner = Arc::new(Mutex::new(Inner {
            script,
            ..Default::default()
        }));
        let app = Router::new()
            .route("/webhook", post(receive))
            .with_state(AppState {
                inner: Arc::clone(&inner),
                verifier: Arc::new(verifier),
            });
        let addr = listener.local_addr()?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let stopped = Arc::clone(&stop);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.notified().await })
                .await;
        });
        Ok(Self {
            addr,
            https,
            state: inner,
            stop,
        })
    }

    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}/webhook", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Changes how the receiver answers from now on (and restarts the request count).
    pub fn set_script(&self, script: Script) {
        self.with(|i| {
            i.script = script;
            i.requests = 0;
            i.arrivals.clear();
            i.max_in_flight = 0;
            i.overloaded = 0;
        });
    }

    /// When each request arrived since the script was last set.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        self.with(|i| i.arrivals.clone())
    }

    /// The most requests answered at once since the script was last set.
    pub fn max_concurrent(&self) -> u32 {
        self.with(|i| i.max_in_flight)
    }

    /// Requests refused with 503 for being over `capacity`.
    pub fn overloaded(&self) -> u64 {
        self.with(|i| i.overloaded)
    }

    /// Accepted deliveries in arrival order, duplicates included (marked).
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.with(|i| i.deliveries.clone())
    }

    /// Distinct webhook ids accepted.
    pub fn unique(&self) -> usize {
        self.with(|i| i.seen.len())
    }

    /// Requests refused for a bad signature or timestamp.
    pub fn rejected_signatures(&self) -> u64 {
        self.with(|i| i.rejected_signatures)
    }

    /// Ownership challenges received (answered or not).
    pub fn challenges(&self) -> u64 {
        self.with(|i| i.challenges)
    }

    /// The bodies of the ownership challenges received, in order.
    pub fn challenge_bodies(&self) -> Vec<serde_json::Value> {
        self.with(|i| i.challenge_bodies.clone())
    }

    /// Requests received since the script was last set (answered or not).
    pub fn requests(&self) -> u64 {
        self.with(|i| i.requests)
    }

    pub fn stop(&self) {
        self.stop.notify_one();
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// The ownership challenge: a signed POST whose `data.challenge` the endpoint sends
/// back, `{"challenge": "..."}`, to show it wants these events (docs/PARTNER_GUIDE.md).
async fn challenge(
    app: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
    json: &serde_json::Value,
) -> Response {
    let answer = {
        let mut inner = app.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.challenges += 1;
        inner.challenge_bodies.push(json.clone());
        inner.script.challenge
    };
    // A real receiver verifies the signature first, as for every event.
    if let Err(e) = app.verifier.verify(body, headers) {
        return (StatusCode::UNAUTHORIZED, format!("signature refused: {e}")).into_response();
    }
    let value = json["data"]["challenge"].as_str().unwrap_or_default();
    match answer {
        ChallengeAnswer::Right => {}
        ChallengeAnswer::Wrong => {
            return axum::Json(serde_json::json!({ "challenge": format!("not-{value}") }))
                .into_response()
        }
        ChallengeAnswer::Late => tokio::time::sleep(Duration::from_secs(10)).await,
        ChallengeAnswer::Never => std::future::pending::<()>().await,
        ChallengeAnswer::Ignore => return StatusCode::NO_CONTENT.into_response(),
    }
    axum::Json(serde_json::json!({ "challenge": value })).into_response()
}

async fn receive(State(app): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let received_at = std::time::SystemTime::now();
    if body.len() < 4096 {
        let json: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        if json["type"] == "webhook.endpoint_verification" {
            return challenge(&app, &headers, &body, &json).await;
        }
    }
    let (script, n, over) = {
        let mut inner = app.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.requests += 1;
        inner.arrivals.push(std::time::Instant::now());
        inner.in_flight += 1;
        inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
        let over = inner.script.capacity.is_some_and(|c| inner.in_flight > c);
        if over {
            inner.overloaded += 1;
        }
        (inner.script.clone(), inner.requests, over)
    };
    let _answering = Answering(Arc::clone(&app.inner));
    if script.hang {
        std::future::pending::<()>().await;
    }
    if script.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(script.delay_ms)).await;
    }
    if over {
        return (StatusCode::SERVICE_UNAVAILABLE, "over capacity").into_response();
    }
    if let Some(to) = &script.redirect_to {
        return (StatusCode::FOUND, [("location", to.clone())]).into_response();
    }
    let fail_status = StatusCode::from_u16(script.fail_status.unwrap_or(503))
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let failing_order = !script.fail_orders.is_empty() && {
        let json: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        let order = json["data"]["order_id"].as_str().unwrap_or_default();
        script.fail_orders.iter().any(|o| o == order)
    };
    let scripted_failure = script
        .always_status
        .and_then(|s| StatusCode::from_u16(s).ok())
        .or(failing_order.then_some(fail_status))
        .or_else(|| {
            let ratio_hit = script.fail_ratio > 0.0
                && ((n as f64 * script.fail_ratio).floor()
                    > ((n - 1) as f64 * script.fail_ratio).floor());
            (n <= u64::from(script.fail_first) || ratio_hit).then_some(fail_status)
        });
    if let Some(status) = scripted_failure {
        let body = script
            .fail_body
            .clone()
            .unwrap_or_else(|| "scripted failure".into());
        let html = body.starts_with('<');
        let mut response = (status, body).into_response();
        if html {
            response.headers_mut().insert(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
        }
        if let Some(secs) = script.retry_after_secs {
            response.headers_mut().insert("retry-after", secs.into());
        }
        return response;
    }
    // A real receiver starts here: verify, deduplicate, store, acknowledge.
    if let Err(e) = app.verifier.verify(&body, &headers) {
        app.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rejected_signatures += 1;
        return (StatusCode::UNAUTHORIZED, format!("signature refused: {e}")).into_response();
    }
    let webhook_id = header(&headers, "webhook-id").unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut inner = app.inner.lock().unwrap_or_else(|p| p.into_inner());
    let duplicate = !inner.seen.insert(webhook_id.clone());
    inner.deliveries.push(Delivery {
        webhook_id,
        event_type: text(&json["type"]),
        order_id: text(&json["data"]["order_id"]),
        partner_id: text(&json["data"]["partner_id"]),
        traceparent: header(&headers, "traceparent"),
        body: json,
        duplicate,
        received_at,
    });
    StatusCode::NO_CONTENT.into_response()
}
