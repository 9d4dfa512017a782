//! The partner-facing HTTP API (`dispatcher api`): subscriptions (create, list, get,
//! update, rotate the secret, pause/resume, delete) and recovery by polling a partner's
//! delivery stream.
//!
//! - State is the compacted subscriptions topic: the API follows it like every dispatcher
//!   and writes changes to it, so running dispatchers pick them up without a restart.
//! - Authentication: `Authorization: Bearer <token>`. An admin token sees and changes
//!   everything; a partner token only its own partner's subscriptions and events (another
//!   partner's subscription answers 404, as if it did not exist).
//! - A URL is checked as `subscriptions apply` checks it, plus: its host name is resolved
//!   and every address must pass the SSRF guard, and `--require-https` refuses http.
//!   URL changes are audited (the audit topic and the log).
//! - Errors are JSON: `{"error": {"code", "message", "field"?}}`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use chrono::{SecondsFormat, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kafka::headers;
use crate::kafka::KafkaSettings;
use crate::subscriptions::audit::AuditTrail;
use crate::subscriptions::table::{self, SubscriptionTable};
use crate::subscriptions::{dead_letter_topic, delivery_topic, RetryPolicy, Subscription};
use crate::webhook::signing::Secret;
use crate::webhook::ssrf::Allowlist;

/// Who may call the API: tokens as SHA-256 digests (a file may hold `sha256:<hex>` or the
/// token itself).
#[derive(Debug, Default, Clone)]
pub struct Tokens {
    admin: Vec<[u8; 32]>,
    partners: Vec<([u8; 32], String)>,
}

/// The tokens file: `admin: [..]`, `partners: {partner-id: [..]}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    #[serde(default)]
    admin: Vec<String>,
    #[serde(default)]
    partners: BTreeMap<String, Vec<String>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn stored(text: &str) -> Result<[u8; 32], String> {
    match text.strip_prefix("sha256:") {
        Some(hex) => {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
                .collect::<Result<_, _>>()
                .map_err(|_| "a sha256: token must be 64 hex digits".to_string())?;
            bytes
                .try_into()
                .map_err(|_| "a sha256: token must be 64 hex digits".to_string())
        }
        None if text.len() < 16 => Err("a token must be at least 16 characters".into()),
        None => Ok(digest(text)),
    }
}

/// Equal in constant time (the comparison does not leak how much of a token matched).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Tokens {
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: TokensFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mut tokens = Tokens::default();
        for t in &file.admin {
            tokens
                .admin
                .push(stored(t).map_err(|e| format!("admin: {e}"))?);
        }
        for (partner, list) in &file.partners {
            for t in list {
                tokens.partners.push((
                    stored(t).map_err(|e| format!("partners.{partner}: {e}"))?,
                    partner.clone(),
                ));
            }
        }
        if tokens.admin.is_empty() && tokens.partners.is_empty() {
            return Err("no tokens: nobody could call the API".into());
        }
        Ok(tokens)
    }

    fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    "send `Authorization: Bearer <token>`",
                )
            })?;
        let d = digest(token.trim());
        if self.admin.iter().any(|a| same(a, &d)) {
            return Ok(Caller::Admin);
        }
        self.partners
            .iter()
            .find(|(t, _)| same(t, &d))
            .map(|(_, p)| Caller::Partner(p.clone()))
            .ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", "unknown token")
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Caller {
    Admin,
    Partner(String),
}

impl Caller {
    fn sees(&self, partner: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Partner(p) => p == partner,
        }
    }

    fn name(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Partner(p) => format!("partner:{p}"),
        }
    }
}

/// A JSON error: status, machine-readable code, message, and the field when one is at
/// fault.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// Seconds for a `Retry-After` header (503, 429).
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_field",
            message: message.into(),
            field: Some(field.to_string()),
            retry_after: None,
        }
    }

    fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no subscription `{id}`"),
        )
    }

    /// A failure of ours (Kafka, a task): the details go to the log, the caller gets
    /// a generic answer (no broker names or internal messages reach a partner).
    fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "api");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "temporarily unavailable, try again later",
        )
        .retry_after(5)
    }

    fn retry_after(mut self, secs: u64) -> Self {
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
        let mut response =
            (self.status, Json(serde_json::json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// What the API needs.
#[derive(Clone)]
pub struct ApiState {
    pub kafka: KafkaSettings,
    pub subscriptions_topic: String,
    /// Where every change is audited, before it is made.
    pub audit: AuditTrail,
    pub partitions: i32,
    pub table: SubscriptionTable,
    pub allowlist: Arc<Allowlist>,
    pub require_https: bool,
    pub tokens: Arc<Tokens>,
    /// Subscriptions one partner may have (a partner's quota). Default 100.
    pub max_subscriptions_per_partner: usize,
    /// `/events` pages read at once (each reads Kafka with a client of its own); past
    /// that the answer is 429 with Retry-After.
    pub events_permits: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("subscriptions_topic", &self.subscriptions_topic)
            .finish_non_exhaustive()
    }
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/subscriptions", get(list).post(create))
        .route(
            "/v1/subscriptions/{id}",
            get(read).patch(update).delete(remove),
        )
        .route("/v1/subscriptions/{id}/rotate-secret", post(rotate))
        .route("/v1/subscriptions/{id}/pause", post(pause))
        .route("/v1/subscriptions/{id}/resume", post(resume))
        .route("/v1/partners/{partner}/events", get(events))
        .route("/v1/partners/{partner}/disconnect", post(disconnect))
        .route("/v1/partners/{partner}/reconnect", post(reconnect))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// A subscription as the API shows it: secrets never, after creation and rotation.
#[derive(Debug, Serialize)]
struct View {
    id: String,
    partner_id: String,
    url: String,
    event_types: BTreeSet<String>,
    internal: bool,
    max_in_flight: usize,
    request_timeout_ms: u64,
    retry: RetryPolicy,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_per_sec: Option<f64>,
    /// `active`, `paused`, `disconnected`, or `disabled` (after a 410 Gone).
    state: &'static str,
    /// When, why and by whom the partner was disconnected.
    #[serde(skip_serializing_if = "Option::is_none")]
    disconnected: Option<crate::subscriptions::Disconnected>,
    /// Secrets signing now (more than one during a rotation's overlap).
    signing_secrets: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secrets_until: Option<String>,
}

impl From<&Subscription> for View {
    fn from(s: &Subscription) -> Self {
        Self {
            id: s.id.clone(),
            partner_id: s.partner_id.clone(),
            url: s.url.clone(),
            event_types: s.event_types.clone(),
            internal: s.internal,
            max_in_flight: s.max_in_flight,
            request_timeout_ms: s.request_timeout_ms,
            retry: s.retry.clone(),
            rate_limit_per_sec: s.rate_limit_per_sec,
            state: if s.disabled {
                "disabled"
            } else if s.disconnected.is_some() {
                "disconnected"
            } else if s.paused {
                "paused"
            } else {
                "active"
            },
            disconnected: s.disconnected.clone(),
            signing_secrets: s.active_keys(Utc::now()),
            previous_secrets_until: s
                .previous_secrets_until
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    id: Option<String>,
    partner_id: Option<String>,
    url: String,
    event_types: BTreeSet<String>,
    #[serde(default)]
    internal: bool,
    max_in_flight: Option<usize>,
    request_timeout_ms: Option<u64>,
    retry: Option<RetryPolicy>,
    rate_limit_per_sec: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    url: Option<String>,
    event_types: Option<BTreeSet<String>>,
    max_in_flight: Option<usize>,
    request_timeout_ms: Option<u64>,
    retry: Option<RetryPolicy>,
    rate_limit_per_sec: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the previous secrets keep signing next to the new one. Default 24 h.
    overlap_secs: Option<u64>,
}

/// Parses a JSON body, naming the field at fault.
fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
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

impl ApiState {
    fn visible(&self, caller: &Caller, id: &str) -> Result<Arc<Subscription>, ApiError> {
        self.table
            .get(id)
            .filter(|s| caller.sees(&s.partner_id))
            .ok_or_else(|| ApiError::not_found(id))
    }

    /// Everything `subscriptions apply` checks, plus the resolved addresses and the
    /// https-only rule.
    async fn check(&self, s: &Subscription) -> Result<(), ApiError> {
        s.validate(&self.allowlist)
            .map_err(|e| ApiError::field(e.field, e.message))?;
        let url = reqwest::Url::parse(&s.url).map_err(|e| ApiError::field("url", e.to_string()))?;
        if self.require_https && url.scheme() != "https" {
            return Err(ApiError::field("url", "must use https"));
        }
        if let Some(url::Host::Domain(host)) = url.host() {
            let port = url.port_or_known_default().unwrap_or(443);
            let addrs = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::lookup_host((host.to_string(), port)),
            )
            .await
            .map_err(|_| ApiError::field("url", format!("resolving `{host}` timed out")))?
            .map_err(|e| {
                tracing::info!(%host, error = %e, "webhook host does not resolve");
                ApiError::field("url", format!("`{host}` does not resolve"))
            })?;
            for addr in addrs {
                // What a name resolves to inside our network is not the caller's
                // business: the address and the reason go to the log only.
                self.allowlist.check(addr.ip()).map_err(|why| {
                    tracing::warn!(%host, address = %addr.ip(), %why, "webhook URL refused by the SSRF guard");
                    ApiError::field(
                        "url",
                        format!("`{host}` resolves to an address webhooks may not reach (private, loopback, link-local or reserved)"),
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Writes the subscription to the topic (and the local table, so the caller reads
    /// its own write at once).
    async fn save(&self, s: Subscription) -> Result<Subscription, ApiError> {
        table::publish(
            &self.kafka,
            &self.subscriptions_topic,
            std::slice::from_ref(&s),
            &[],
        )
        .await
        .map_err(ApiError::internal)?;
        self.table.upsert(s.clone());
        Ok(s)
    }

    /// Audits a change before it is made: no audit record, no change (503).
    async fn audit(
        &self,
        caller: &Caller,
        action: &str,
        s: &Subscription,
        extra: serde_json::Value,
    ) -> Result<(), ApiError> {
        self.audit
            .record(&caller.name(), action, s, extra)
            .await
            .map_err(ApiError::internal)
    }

    /// Audits `action`, then writes `s`; if the write fails, audits that too.
    async fn audited_save(
        &self,
        caller: &Caller,
        action: &str,
        s: Subscription,
        extra: serde_json::Value,
    ) -> Result<Subscription, ApiError> {
        self.audit(caller, action, &s, extra).await?;
        match self.save(s.clone()).await {
            Ok(saved) => Ok(saved),
            Err(e) => {
                let failed = format!("{action}-failed");
                let _ = self.audit(caller, &failed, &s, serde_json::json!({})).await;
                Err(e)
            }
        }
    }
}

async fn list(State(api): State<ApiState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = api.tokens.caller(&headers)?;
    let mut all: Vec<View> = api
        .table
        .all()
        .iter()
        .filter(|s| caller.sees(&s.partner_id))
        .map(|s| View::from(s.as_ref()))
        .collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Json(serde_json::json!({ "subscriptions": all })).into_response())
}

async fn read(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = api.tokens.caller(&headers)?;
    let s = api.visible(&caller, &id)?;
    Ok(Json(View::from(s.as_ref())).into_response())
}

async fn create(
    State(api): State<ApiState>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = api.tokens.caller(&headers)?;
    let request: CreateRequest = body(&bytes)?;
    let partner_id = match (&caller, request.partner_id) {
        (Caller::Partner(p), None) => p.clone(),
        (Caller::Partner(p), Some(asked)) if &asked == p => asked,
        (Caller::Partner(_), Some(_)) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "a partner token creates subscriptions of its own partner only",
            ))
        }
        (Caller::Admin, Some(p)) => p,
        (Caller::Admin, None) => return Err(ApiError::field("partner_id", "required")),
    };
    if request.internal && caller != Caller::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an admin token creates internal subscriptions",
        ));
    }
    // A partner names its subscriptions inside its own namespace (`<partner>.<name>`),
    // so an answer about an id never tells it anything about another partner's.
    let namespace = format!("{partner_id}.");
    let id = match request.id {
        Some(id) if caller != Caller::Admin && !id.starts_with(&namespace) => {
            return Err(ApiError::field(
                "id",
                format!("must start with `{namespace}` (your partner id and a dot)"),
            ))
        }
        Some(id) => id,
        None => format!(
            "{namespace}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ),
    };
    if api.table.get(&id).is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("subscription `{id}` exists"),
        ));
    }
    let owned = api
        .table
        .all()
        .iter()
        .filter(|s| s.partner_id == partner_id)
        .count();
    if owned >= api.max_subscriptions_per_partner {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "quota_exceeded",
            format!(
                "partner `{partner_id}` has {owned} subscriptions, the most allowed ({}); delete one first",
                api.max_subscriptions_per_partner
            ),
        ));
    }
    let secret = Secret::generate();
    let s = Subscription {
        id,
        partner_id,
        url: request.url,
        event_types: request.event_types,
        secrets: vec![secret.clone()],
        internal: request.internal,
        max_in_flight: request.max_in_flight.unwrap_or(16),
        request_timeout_ms: request.request_timeout_ms.unwrap_or(10_000),
        retry: request.retry.unwrap_or_default(),
        rate_limit_per_sec: request.rate_limit_per_sec,
        disabled: false,
        paused: false,
        previous_secrets_until: None,
        disconnected: None,
    };
    s.validate_new_id()
        .map_err(|e| ApiError::field(e.field, e.message))?;
    api.check(&s).await?;
    // The partner's topics exist before anything is routed to them.
    api.kafka
        .ensure_topics(
            &[
                delivery_topic(&s.partner_id),
                dead_letter_topic(&s.partner_id),
            ],
            api.partitions,
            &[],
        )
        .await
        .map_err(ApiError::internal)?;
    let details = serde_json::json!({ "url": s.url, "internal": s.internal });
    let s = api.audited_save(&caller, "create", s, details).await?;
    let mut view = serde_json::to_value(View::from(&s)).map_err(ApiError::internal)?;
    // Shown once: the partner verifies signatures with it.
    view["secret"] = secret.into();
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

async fn update(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = api.tokens.caller(&headers)?;
    let current = api.visible(&caller, &id)?;
    let request: UpdateRequest = body(&bytes)?;
    let mut s = (*current).clone();
    if let Some(url) = request.url {
        s.url = url;
    }
    if let Some(t) = request.event_types {
        s.event_types = t;
    }
    if let Some(n) = request.max_in_flight {
        s.max_in_flight = n;
    }
    if let Some(ms) = request.request_timeout_ms {
        s.request_timeout_ms = ms;
    }
    if let Some(r) = request.retry {
        s.retry = r;
    }
    if let Some(rate) = request.rate_limit_per_sec {
        s.rate_limit_per_sec = Some(rate);
    }
    api.check(&s).await?;
    let action = if s.url != current.url {
        "change-url"
    } else {
        "update"
    };
    let details = if s.url != current.url {
        serde_json::json!({ "from": current.url, "to": s.url })
    } else {
        crate::subscriptions::audit::changes(&current, &s).unwrap_or_default()
    };
    let s = api.audited_save(&caller, action, s, details).await?;
    Ok(Json(View::from(&s)).into_response())
}

async fn rotate(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = api.tokens.caller(&headers)?;
    let current = api.visible(&caller, &id)?;
    let request: RotateRequest = body(&bytes)?;
    let overlap = request.overlap_secs.unwrap_or(86_400);
    if overlap > 30 * 86_400 {
        return Err(ApiError::field("overlap_secs", "at most 30 days (2592000)"));
    }
    let mut s = (*current).clone();
    let now = Utc::now();
    // Secrets past an earlier overlap window are dropped; the new one signs first.
    let keep = s.active_keys(now);
    s.secrets.truncate(keep);
    let secret = Secret::generate();
    s.secrets.insert(0, secret.clone());
    s.secrets.truncate(5);
    let until = now + chrono::Duration::seconds(overlap as i64);
    s.previous_secrets_until = Some(until);
    let details = serde_json::json!({ "previous_secrets_until": until.to_rfc3339_opts(SecondsFormat::Secs, true) });
    api.audited_save(&caller, "rotate-secret", s, details)
        .await?;
    Ok(Json(serde_json::json!({
        "secret": secret,
        "previous_secrets_until": until.to_rfc3339_opts(SecondsFormat::Secs, true),
    }))
    .into_response())
}

async fn set_paused(
    api: ApiState,
    headers: HeaderMap,
    id: String,
    paused: bool,
) -> Result<Response, ApiError> {
    let caller = api.tokens.caller(&headers)?;
    let mut s = (*api.visible(&caller, &id)?).clone();
    s.paused = paused;
    let action = if paused { "pause" } else { "resume" };
    let s = api
        .audited_save(&caller, action, s, serde_json::json!({}))
        .await?;
    Ok(Json(View::from(&s)).into_response())
}

async fn pause(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(api, headers, id, true).await
}

async fn resume(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    set_paused(api, headers, id, false).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    reason: Option<String>,
}

/// Stops delivery to every subscription of the partner; its events wait in Kafka until
/// it is reconnected. Admin only (the dispatcher also does it to a partner failing
/// past `--disconnect-after-ms`).
async fn disconnect(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(partner): Path<String>,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = api.tokens.caller(&headers)?;
    if caller != Caller::Admin {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only an operator (admin token) disconnects a partner",
        ));
    }
    let request: DisconnectRequest = body(&bytes)?;
    let reason = request
        .reason
        .unwrap_or_else(|| "disconnected by an operator".into());
    let mark = crate::subscriptions::Disconnected {
        at: Utc::now(),
        reason,
        by: caller.name(),
    };
    set_connected(api, caller, partner, Some(mark)).await
}

/// Resumes delivery to every subscription of the partner: the events kept while it was
/// disconnected arrive in order. The admin or the partner itself.
async fn reconnect(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(partner): Path<String>,
) -> Result<Response, ApiError> {
    let caller = api.tokens.caller(&headers)?;
    set_connected(api, caller, partner, None).await
}

async fn set_connected(
    api: ApiState,
    caller: Caller,
    partner: String,
    mark: Option<crate::subscriptions::Disconnected>,
) -> Result<Response, ApiError> {
    let mine: Vec<Arc<Subscription>> = api
        .table
        .all()
        .into_iter()
        .filter(|s| s.partner_id == partner && caller.sees(&s.partner_id))
        .collect();
    if mine.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no subscriptions of partner `{partner}`"),
        ));
    }
    let action = if mark.is_some() {
        "disconnect"
    } else {
        "reconnect"
    };
    let mut views = Vec::new();
    for s in mine {
        let before = s.disconnected.clone();
        let mut s = (*s).clone();
        s.disconnected = mark.clone();
        let details = serde_json::json!({ "was": before, "now": mark });
        let s = api.audited_save(&caller, action, s, details).await?;
        views.push(View::from(&s));
    }
    Ok(Json(serde_json::json!({ "subscriptions": views })).into_response())
}

async fn remove(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = api.tokens.caller(&headers)?;
    match api.visible(&caller, &id) {
        Ok(s) => {
            api.audit(&caller, "delete", &s, serde_json::json!({ "url": s.url }))
                .await?
        }
        // A subscription invalid here (not in force) can be deleted too: by an admin,
        // or by its partner when the record names one.
        Err(not_found) => {
            let invalid = api.table.invalid(&id).ok_or(not_found)?;
            let partner = invalid.subscription.as_ref().map(|s| s.partner_id.clone());
            if caller != Caller::Admin && !partner.as_ref().is_some_and(|p| caller.sees(p)) {
                return Err(ApiError::not_found(&id));
            }
            let details = serde_json::json!({ "invalid": invalid.reason });
            api.audit
                .record_id(&caller.name(), "delete", &id, partner.as_deref(), details)
                .await
                .map_err(ApiError::internal)?;
        }
    }
    let deleted = table::publish(
        &api.kafka,
        &api.subscriptions_topic,
        &[],
        std::slice::from_ref(&id),
    )
    .await
    .map_err(ApiError::internal);
    if let Err(e) = deleted {
        let _ = api
            .audit
            .record_id(
                &caller.name(),
                "delete-failed",
                &id,
                None,
                serde_json::json!({}),
            )
            .await;
        return Err(e);
    }
    api.table.remove(&id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<String>,
    limit: Option<usize>,
}

/// The position in a partner's stream: the next offset to read per partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<i32, i64>);

impl Cursor {
    pub fn encode(&self) -> String {
        let text: Vec<String> = self.0.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text.join(","))
    }

    pub fn decode(text: &str) -> Option<Self> {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let mut map = BTreeMap::new();
        for part in raw.split(',').filter(|p| !p.is_empty()) {
            let (p, o) = part.split_once(':')?;
            let (p, o) = (p.parse::<i32>().ok()?, o.parse::<i64>().ok()?);
            if p < 0 || o < 0 {
                return None;
            }
            map.insert(p, o);
        }
        Some(Self(map))
    }
}

/// One event of the stream, as the webhook carried it.
#[derive(Debug, Serialize)]
struct PolledEvent {
    /// The `webhook-id`: the event id, the partner's deduplication key.
    id: String,
    subscription_id: String,
    /// The webhook body: `{"type", "timestamp", "data"}`.
    event: serde_json::Value,
}

async fn events(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Path(partner): Path<String>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = api.tokens.caller(&headers)?;
    // A malformed query is answered like any bad field: JSON, naming it.
    let Query(query) = query.map_err(|e| {
        let text = e.body_text();
        let detail = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text);
        let field = detail.split(':').next().unwrap_or("query").trim();
        let field = if field == "limit" || field == "after" {
            field
        } else {
            "query"
        };
        ApiError::field(field, detail.to_string())
    })?;
    if !caller.sees(&partner) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no partner `{partner}`"),
        ));
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "between 1 and 500"));
    }
    let after = match &query.after {
        None => Cursor::default(),
        Some(text) => Cursor::decode(text)
            .ok_or_else(|| ApiError::field("after", "not a cursor this API returned"))?,
    };
    let Ok(permit) = Arc::clone(&api.events_permits).try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "too many event pages are being read; try again shortly",
        )
        .retry_after(1));
    };
    let (kafka, topic) = (api.kafka.clone(), delivery_topic(&partner));
    let page = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        read_page(&kafka, &topic, &after, limit)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(page).into_response())
}

#[derive(Debug, Serialize)]
struct Page {
    data: Vec<PolledEvent>,
    /// Pass as `after` for the next page (also when `data` is empty: new events appear
    /// after it).
    next: String,
    /// Whether the stream had nothing more when this page was read.
    done: bool,
}

/// Reads up to `limit` records after `cursor` from every partition, orders them by
/// (timestamp, partition, offset), keeps the first `limit`, and moves the cursor past
/// exactly those: the same cursor always gives the same page.
fn read_page(
    kafka: &KafkaSettings,
    topic: &str,
    cursor: &Cursor,
    limit: usize,
) -> Result<Page, ApiError> {
    let consumer: BaseConsumer = kafka.reader().create().map_err(ApiError::internal)?;
    let metadata = consumer
        .fetch_metadata(None, Duration::from_secs(5))
        .map_err(ApiError::internal)?;
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no events stream for this partner",
        ));
    };
    if meta.partitions().is_empty() {
        // Seen transiently on the test broker: never answer "nothing new" from it.
        return Err(ApiError::internal(
            "the events stream's partitions are unknown",
        ));
    }
    let mut next = cursor.0.clone();
    let mut ranges = BTreeMap::new();
    let mut more = false;
    for p in meta.partitions().iter().map(|p| p.id()) {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(5))
            .map_err(ApiError::internal)?;
        if cursor.0.get(&p).is_some_and(|at| *at > high) {
            return Err(ApiError::internal(
                "the events stream reads behind the cursor; try again",
            ));
        }
        let from = cursor.0.get(&p).copied().unwrap_or(low).max(low);
        next.entry(p).or_insert(from);
        // Reading up to `limit` of each partition is enough for any merge order.
        let to = high.min(from + limit as i64);
        more |= to < high;
        ranges.insert(p, (from, to));
    }
    let mut found = crate::kafka::read_ranges(&consumer, topic, &ranges, Duration::from_secs(10))
        .map_err(ApiError::internal)?;
    found.sort_by_key(|r| {
        (
            r.timestamp.map_or(0, |t| t.timestamp_millis()),
            r.partition,
            r.offset,
        )
    });
    more |= found.len() > limit;
    found.truncate(limit);
    for r in &found {
        next.insert(r.partition, r.offset + 1);
    }
    let event = |r: &crate::kafka::TopicRecord| PolledEvent {
        id: r
            .header(headers::WEBHOOK_ID)
            .unwrap_or_default()
            .to_string(),
        subscription_id: r
            .header(headers::SUBSCRIPTION_ID)
            .unwrap_or_default()
            .to_string(),
        event: serde_json::from_slice(&r.payload).unwrap_or(serde_json::Value::Null),
    };
    Ok(Page {
        data: found.iter().map(event).collect(),
        next: Cursor(next).encode(),
        done: !more,
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

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor([(0, 5), (2, 17)].into());
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("not base64!"), None);
        let negative = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("0:-3");
        assert_eq!(Cursor::decode(&negative), None);
    }

    #[test]
    fn tokens_are_kept_as_digests_and_matched_exactly() {
        let file = format!(
            "admin: [\"admin-token-0123456789\"]\npartners:\n  acme: [\"sha256:{}\"]\n",
            Sha256::digest(b"acme-token-0123456789")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        let tokens = Tokens::parse(&file).expect("tokens");
        let call = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(
                "authorization",
                format!("Bearer {t}").parse().expect("header"),
            );
            tokens.caller(&h).map_err(|e| e.code)
        };
        assert_eq!(call("admin-token-0123456789"), Ok(Caller::Admin));
        assert_eq!(
            call("acme-token-0123456789"),
            Ok(Caller::Partner("acme".into()))
        );
        assert_eq!(call("acme-token-012345678"), Err("unauthenticated"));
        assert!(Tokens::parse("admin: [short]").is_err(), "too short");
        assert!(Tokens::parse("{}").is_err(), "no tokens");
    }
}
