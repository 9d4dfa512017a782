//! HTTP routes of the Confluent REST API subset, and the server entry point.
//!
//! Request bodies are parsed here (not by an extractor) so that a malformed body gets
//! a Confluent-shaped error instead of a framework default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{CompatibilityLevel, RegistryError, Store};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Shared = State<Arc<Store>>;
type Params = Query<HashMap<String, String>>;
type ApiResult = Result<Response, RegistryError>;

fn ok(value: Value) -> ApiResult {
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], value.to_string()).into_response())
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.codes();
        let body = json!({ "error_code": code, "message": self.to_string() });
        (
            status,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The body of a schema registration, lookup or compatibility check.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaBody {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

fn schema_body(body: &[u8]) -> Result<String, RegistryError> {
    let parsed: SchemaBody = serde_json::from_slice(body).map_err(|e| {
        RegistryError::InvalidRequest(format!("expected {{\"schema\": \"...\"}}: {e}"))
    })?;
    match parsed.schema_type.as_deref() {
        None | Some("AVRO") => {}
        Some(other) => {
            return Err(RegistryError::InvalidSchema(format!(
                "schemaType {other} is not supported by this registry (AVRO only)"
            )))
        }
    }
    if !parsed.references.is_empty() {
        return Err(RegistryError::InvalidSchema(
            "schema references are not supported by this registry".to_string(),
        ));
    }
    Ok(parsed.schema)
}

async fn register(State(store): Shared, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    let schema = schema_body(&body)?;
    let registered = store.register(&subject, &schema)?;
    tracing::info!(
        subject,
        id = registered.id,
        version = registered.version,
        "schema registered"
    );
    ok(json!({ "id": registered.id }))
}

async fn lookup(State(store): Shared, Path(subject): Path<String>, body: Bytes) -> ApiResult {
    let found = store.lookup(&subject, &schema_body(&body)?)?;
    ok(
        json!({ "subject": found.subject, "id": found.id, "version": found.version, "schema": found.schema }),
    )
}

async fn delete_subject(
    State(store): Shared,
    Path(subject): Path<String>,
    Query(q): Params,
) -> ApiResult {
    ok(json!(store.delete_subject(&subject, flag(&q, "permanent"))?))
}

async fn subjects(State(store): Shared, Query(q): Params) -> ApiResult {
    ok(json!(store.subjects(flag(&q, "deleted"))))
}

async fn versions(
    State(store): Shared,
    Path(subject): Path<String>,
    Query(q): Params,
) -> ApiResult {
    ok(json!(store.versions(&subject, flag(&q, "deleted"))?))
}

async fn version(State(store): Shared, Path((subject, v)): Path<(String, String)>) -> ApiResult {
    let found = store.version(&subject, &v)?;
    ok(
        json!({ "subject": found.subject, "id": found.id, "version": found.version, "schema": found.schema }),
    )
}

async fn version_schema(
    State(store): Shared,
    Path((subject, v)): Path<(String, String)>,
) -> ApiResult {
    let found = store.version(&subject, &v)?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], found.schema).into_response())
}

async fn delete_version(
    State(store): Shared,
    Path((subject, v)): Path<(String, String)>,
) -> ApiResult {
    ok(json!(store.delete_version(&subject, &v)?))
}

fn parse_id(text: &str) -> Result<u32, RegistryError> {
    text.parse()
        .map_err(|_| RegistryError::SchemaNotFound(text.to_string()))
}

async fn schema_by_id(State(store): Shared, Path(id): Path<String>) -> ApiResult {
    ok(json!({ "schema": store.schema_by_id(parse_id(&id)?)? }))
}

async fn raw_schema_by_id(State(store): Shared, Path(id): Path<String>) -> ApiResult {
    let schema = store.schema_by_id(parse_id(&id)?)?;
    Ok(([(header::CONTENT_TYPE, CONTENT_TYPE)], schema).into_response())
}

async fn id_subjects(State(store): Shared, Path(id): Path<String>) -> ApiResult {
    let mut subjects: Vec<String> = store
        .usages_of_id(parse_id(&id)?)?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    subjects.dedup();
    ok(json!(subjects))
}

async fn id_versions(State(store): Shared, Path(id): Path<String>) -> ApiResult {
    let usages = store.usages_of_id(parse_id(&id)?)?;
    ok(Value::Array(
        usages
            .into_iter()
            .map(|(s, v)| json!({ "subject": s, "version": v }))
            .collect(),
    ))
}

fn compatibility_answer(violations: Vec<String>, verbose: bool) -> ApiResult {
    if verbose {
        ok(json!({ "is_compatible": violations.is_empty(), "messages": violations }))
    } else {
        ok(json!({ "is_compatible": violations.is_empty() }))
    }
}

async fn check_version(
    State(store): Shared,
    Path((subject, v)): Path<(String, String)>,
    Query(q): Params,
    body: Bytes,
) -> ApiResult {
    let violations = store.check(&subject, Some(&v), &schema_body(&body)?)?;
    compatibility_answer(violations, flag(&q, "verbose"))
}

async fn check_all(
    State(store): Shared,
    Path(subject): Path<String>,
    Query(q): Params,
    body: Bytes,
) -> ApiResult {
    let violations = store.check(&subject, None, &schema_body(&body)?)?;
    compatibility_answer(violations, flag(&q, "verbose"))
}

/// `PUT /config` bodies: `{"compatibility": "FULL"}`.
fn level_body(body: &[u8]) -> Result<CompatibilityLevel, RegistryError> {
    #[derive(Deserialize)]
    struct ConfigBody {
        compatibility: String,
    }
    let parsed: ConfigBody = serde_json::from_slice(body).map_err(|e| {
        RegistryError::InvalidRequest(format!("expected {{\"compatibility\": \"...\"}}: {e}"))
    })?;
    CompatibilityLevel::parse(&parsed.compatibility)
}

async fn get_global_config(State(store): Shared) -> ApiResult {
    ok(json!({ "compatibilityLevel": store.compatibility(None, true)?.as_str() }))
}

async fn put_global_config(State(store): Shared, body: Bytes) -> ApiResult {
    let level = level_body(&body)?;
    store.set_compatibility(None, Some(level))?;
    ok(json!({ "compatibility": level.as_str() }))
}

async fn get_subject_config(
    State(store): Shared,
    Path(subject): Path<String>,
    Query(q): Params,
) -> ApiResult {
    let level = store.compatibility(Some(&subject), flag(&q, "defaultToGlobal"))?;
    ok(json!({ "compatibilityLevel": level.as_str() }))
}

async fn put_subject_config(
    State(store): Shared,
    Path(subject): Path<String>,
    body: Bytes,
) -> ApiResult {
    let level = level_body(&body)?;
    store.set_compatibility(Some(&subject), Some(level))?;
    ok(json!({ "compatibility": level.as_str() }))
}

async fn delete_subject_config(State(store): Shared, Path(subject): Path<String>) -> ApiResult {
    let level = store.compatibility(Some(&subject), false)?;
    store.set_compatibility(Some(&subject), None)?;
    ok(json!({ "compatibilityLevel": level.as_str() }))
}

async fn not_found() -> RegistryError {
    RegistryError::RouteNotFound
}

/// All routes, over `store`.
pub fn router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/", get(|| async { ok(json!({})) }))
        .route("/schemas/types", get(|| async { ok(json!(["AVRO"])) }))
        .route(
            "/mode",
            get(|| async { ok(json!({ "mode": "READWRITE" })) }),
        )
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/subjects", get(id_subjects))
        .route("/schemas/ids/{id}/versions", get(id_versions))
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(check_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(check_version),
        )
        .route("/config", get(get_global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(get_subject_config)
                .put(put_subject_config)
                .delete(delete_subject_config),
        )
        .fallback(not_found)
        .with_state(store)
}

/// Serves the registry on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(store))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds `addr` and returns the listener with its real address (for port 0).
pub async fn bind(addr: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
