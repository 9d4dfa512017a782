//! The subscription resource: list, get, create, update, rotate the secret, pause and
//! resume, delete. Every change is checked like `subscriptions apply` checks it, audited
//! before it is written, and written to the subscriptions topic.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::auth::Caller;
use super::error::{body, ApiError};
use super::ApiState;
use crate::subscriptions::{
    EndpointTls, Kind, RetryPolicy, Subscription, Verification, VerificationState,
};
use crate::webhook::signing::Secret;

mod operations;
mod view;

pub(super) use operations::{pause, resume, rotate};
pub(super) use view::View;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRequest {
    id: Option<String>,
    partner_id: Option<String>,
    /// Required for a webhook; none for a stream.
    #[serde(default)]
    url: String,
    #[serde(default)]
    kind: Kind,
    event_types: BTreeSet<String>,
    #[serde(default)]
    internal: bool,
    max_in_flight: Option<usize>,
    request_timeout_ms: Option<u64>,
    retry: Option<RetryPolicy>,
    rate_limit_per_sec: Option<f64>,
    tls: Option<EndpointTls>,
    filter: Option<String>,
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
    /// `{"ca_pem": "..."}` sets the CA; `{}` removes it.
    tls: Option<EndpointTls>,
    /// A CEL expression; `""` removes it.
    filter: Option<String>,
}

impl UpdateRequest {
    /// The record's fields the request sets (`table::merge`).
    fn named(&self) -> Vec<&'static str> {
        [
            ("url", self.url.is_some()),
            ("event_types", self.event_types.is_some()),
            ("max_in_flight", self.max_in_flight.is_some()),
            ("request_timeout_ms", self.request_timeout_ms.is_some()),
            ("retry", self.retry.is_some()),
            ("rate_limit_per_sec", self.rate_limit_per_sec.is_some()),
            ("tls", self.tls.is_some()),
            ("filter", self.filter.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

pub(super) async fn list(
    State(api): State<ApiState>,
    caller: Caller,
) -> Result<Response, ApiError> {
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

pub(super) async fn read(
    State(api): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let s = api.visible(&caller, &id)?;
    Ok(Json(View::from(s.as_ref())).into_response())
}

pub(super) async fn create(
    State(api): State<ApiState>,
    caller: Caller,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    api.allow_write(&caller)?;
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
        return Err(super::exists(&id));
    }
    if request.kind == Kind::Stream {
        // (Two would write every event twice to the one stream topic.)
        if let Some(other) = api
            .table
            .all()
            .iter()
            .find(|s| s.partner_id == partner_id && s.is_stream())
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "partner `{partner_id}` has a stream subscription already (`{}`): change that one",
                    other.id
                ),
            ));
        }
    }
    let owned = || {
        api.table
            .all()
            .iter()
            .filter(|s| s.partner_id == partner_id)
            .count()
    };
    // Held until the create ends: other creates of the partner count this one.
    let _place = api
        .creating
        .reserve(&partner_id, owned, api.max_subscriptions_per_partner)
        .map_err(|owned| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "quota_exceeded",
                format!(
                    "partner `{partner_id}` has {owned} subscriptions (with those being created), the most allowed ({}); delete one first",
                    api.max_subscriptions_per_partner
                ),
            )
        })?;
    let stream = request.kind == Kind::Stream;
    // (A stream is read with the partner's token: nothing to sign.)
    let secret = (!stream).then(Secret::generate);
    let mut s = Subscription {
        id,
        partner_id,
        url: request.url,
        event_types: request.event_types,
        secrets: secret.iter().cloned().collect(),
        internal: request.internal,
        max_in_flight: request.max_in_flight.unwrap_or(16),
        request_timeout_ms: request.request_timeout_ms.unwrap_or(10_000),
        retry: request.retry.unwrap_or_default(),
        rate_limit_per_sec: request.rate_limit_per_sec,
        disabled: false,
        paused: false,
        previous_secrets_until: None,
        disconnected: None,
        tls: request.tls.filter(|t| t.ca_pem.is_some()),
        verification: None,
        filter: request.filter,
        kind: request.kind,
    };
    if !stream {
        s.verification = api.verifier.as_ref().and_then(|v| v.start(&s.url, None));
    }
    s.validate_new_id()
        .map_err(|e| ApiError::field(e.field, e.message))?;
    api.check(&s).await?;
    api.second_factor(
        &caller,
        &s.partner_id,
        "create-subscription",
        &s.id,
        &headers,
    )
    .await?;
    // The partner's topics exist before anything is routed to them.
    api.kafka
        .ensure_topics(
            // (The lanes make its retry topic; its dead-letter topic is made on its first
            // dead letter.)
            &[s.topic()],
            api.partitions,
            &[],
        )
        .await
        .map_err(ApiError::internal)?;
    let details = serde_json::json!({ "url": s.url, "internal": s.internal });
    let s = api
        .audited_save(&caller, "create", None, s, details)
        .await?;
    if let Some(v) = &api.verifier {
        v.wake();
    }
    let mut view = serde_json::to_value(View::from(&s)).map_err(ApiError::internal)?;
    // Shown once: the partner verifies signatures with it.
    if let Some(secret) = secret {
        view["secret"] = secret.into();
    }
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub(super) async fn update(
    State(api): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let current = api.changeable(&caller, &id)?;
    api.allow_write(&caller)?;
    super::second_factor::code_in(&headers)?;
    let request: UpdateRequest = body(&bytes)?;
    let mut named = request.named();
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
    if let Some(tls) = request.tls {
        s.tls = tls.ca_pem.is_some().then_some(tls);
    }
    if let Some(filter) = request.filter {
        s.filter = (!filter.is_empty()).then_some(filter);
    }
    // (A merge onto a newer version that pairs a URL with another URL's check starts
    // a check of it: `ApiState::save`.)
    if s.url != current.url {
        named.push("verification");
        s.verification = if current.delivery_url() == Some(s.url.as_str()) {
            // Back to the URL verified and in force: nothing to check, and it keeps
            // the CA it was reached with (unless the request sets one).
            if !named.contains(&"tls") {
                s.tls = current
                    .verification
                    .as_ref()
                    .and_then(|v| v.previous_tls.clone());
                named.push("tls");
            }
            current.verification.clone().map(|v| Verification {
                state: VerificationState::Verified,
                url: Some(s.url.clone()),
                previous_url: None,
                previous_tls: None,
                last_error: None,
                ..v
            })
        } else {
            match &api.verifier {
                Some(v) if v.require => v.start(&s.url, Some(&current)),
                _ => None,
            }
        };
    }
    api.check(&s).await?;
    // Where the partner's orders go, and whom they trust there: hazardous.
    if s.url != current.url || s.tls != current.tls {
        api.second_factor(&caller, &s.partner_id, "change-url", &s.id, &headers)
            .await?;
    }
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
    let s = api
        .audited_save(&caller, action, Some((&current, &named)), s, details)
        .await?;
    if let Some(v) = &api.verifier {
        v.wake();
    }
    Ok(Json(View::from(&s)).into_response())
}

pub(super) async fn remove(
    State(api): State<ApiState>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    api.allow_write(&caller)?;
    super::second_factor::code_in(&headers)?;
    // (An internal subscription a partner token sees is not invalid here either: its
    // refusal is passed on below.)
    match api.changeable(&caller, &id) {
        Ok(s) => {
            api.second_factor(&caller, &s.partner_id, "delete-subscription", &id, &headers)
                .await?;
            api.audit(&caller, "delete", &s, serde_json::json!({ "url": s.url }))
                .await?
        }
        // A subscription invalid here (not in force) can be deleted too: by an admin,
        // or by its partner when the record names one.
        Err(refused) => {
            let invalid = api.table.invalid(&id).ok_or(refused)?;
            let partner = invalid.subscription.as_ref().map(|s| s.partner_id.clone());
            if caller != Caller::Admin && !partner.as_ref().is_some_and(|p| caller.sees(p)) {
                return Err(ApiError::not_found(&id));
            }
            if let Some(p) = &partner {
                api.second_factor(&caller, p, "delete-subscription", &id, &headers)
                    .await?;
            }
            let details = serde_json::json!({ "invalid": invalid.reason });
            api.audit
                .record_id(&caller.name(), "delete", &id, partner.as_deref(), details)
                .await
                .map_err(ApiError::internal)?;
        }
    }
    let deleted = api.delete(&id).await;
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
    Ok(StatusCode::NO_CONTENT.into_response())
}
