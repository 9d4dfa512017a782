//! The operator's side of portal links, in the partner API: issue one
//! (`POST /v1/admin/portal-links`) and end a partner's sessions
//! (`POST /v1/admin/partners/{partner}/portal-sessions/expire`). Both audited.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::grant::{Grant, Kind, Scope};
use crate::api::{Admin, ApiError, ApiState};

/// A portal link lasts at most this long.
pub const MAX_TTL_SECS: i64 = 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkRequest {
    /// The partner the link is for. (Operators sign in with their token: a link that
    /// could be forwarded must not carry every partner's data.)
    partner: String,
    scope: String,
    #[serde(default = "default_ttl")]
    ttl_secs: i64,
}

fn default_ttl() -> i64 {
    3600
}

/// `POST /v1/admin/portal-links`: a single-use URL that starts a console session for
/// `partner` with `scope`, valid `ttl_secs` (at most 24 h).
pub(crate) async fn issue(
    State(api): State<ApiState>,
    Admin(caller): Admin,
    headers: HeaderMap,
    bytes: axum::body::Bytes,
) -> Result<Response, ApiError> {
    // (A code that cannot be one is refused for any scope: a malformed request.)
    crate::api::second_factor::code_in(&headers)?;
    let request: LinkRequest = crate::api::body(&bytes)?;
    let scope = Scope::parse(&request.scope)
        .ok_or_else(|| ApiError::field("scope", "one of read, manage"))?;
    if !(1..=MAX_TTL_SECS).contains(&request.ttl_secs) {
        return Err(ApiError::field(
            "ttl_secs",
            format!("between 1 and {MAX_TTL_SECS} (24 h)"),
        ));
    }
    let partner = &request.partner;
    let known =
        api.tokens.has_partner(partner) || api.table.all().iter().any(|s| &s.partner_id == partner);
    if !known {
        return Err(ApiError::field(
            "partner",
            format!("no partner `{partner}` (no token and no subscription)"),
        ));
    }
    // A manage link changes what a partner token changes: the partner's code, when
    // it has enrolled one (the operator asks the partner for it).
    if scope == Scope::Manage {
        api.second_factor(
            &caller,
            partner,
            "issue-manage-portal-link",
            partner,
            &headers,
        )
        .await?;
    }
    let base = match &api.console.public_url {
        Some(url) => url.clone(),
        // Without --console-url, only a link to this machine: the Host header of a
        // request from elsewhere is no proof of where partners reach us.
        None => {
            let host = headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            if !loopback(host) {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "start the API with --console-url (its public https address) to issue portal links",
                ));
            }
            format!("http://{host}")
        }
    };
    let link = Grant::new(
        Kind::Link,
        Some(partner.clone()),
        scope,
        super::now(),
        request.ttl_secs,
    );
    let expires_at = chrono::DateTime::from_timestamp_millis(link.exp).unwrap_or_default();
    api.audit
        .record_id(
            &caller.name(),
            "portal-link-issued",
            &format!("portal-link/{}", link.id),
            Some(partner),
            serde_json::json!({ "scope": scope.as_str(), "expires_at": expires_at }),
        )
        .await
        .map_err(ApiError::internal)?;
    let url = format!("{base}/console/link/{}", link.sign(&api.console.secret));
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "url": url,
            "partner": partner,
            "scope": scope.as_str(),
            "expires_at": expires_at,
        })),
    )
        .into_response())
}

/// `POST /v1/admin/partners/{partner}/portal-sessions/expire`: every console session of
/// `partner` started until now ends (on this instance; docs/ARCHITECTURE.md).
pub(crate) async fn expire(
    State(api): State<ApiState>,
    Admin(caller): Admin,
    Path(partner): Path<String>,
) -> Result<Response, ApiError> {
    let now = super::now();
    api.audit
        .record_id(
            &caller.name(),
            "portal-sessions-expired",
            &format!("portal-sessions/{partner}"),
            Some(&partner),
            serde_json::json!({}),
        )
        .await
        .map_err(ApiError::internal)?;
    api.console
        .end_sessions(&partner, now)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({
        "partner": partner,
        "ended_before": chrono::DateTime::from_timestamp_millis(now).unwrap_or_default(),
    }))
    .into_response())
}

/// Whether `host` (a Host header: a name or an address, maybe with a port) is this
/// machine.
fn loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_this_machine_is_a_loopback_host() {
        for host in [
            "127.0.0.1:8090",
            "localhost",
            "localhost:1",
            "[::1]:8090",
            "127.0.0.2",
        ] {
            assert!(super::loopback(host), "{host}");
        }
        for host in [
            "hooks.example.com",
            "10.0.0.1:8090",
            "",
            "127.0.0.1.evil.example:80",
        ] {
            assert!(!super::loopback(host), "{host}");
        }
    }
}
