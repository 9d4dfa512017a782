//! Who is calling: bearer tokens kept as SHA-256 digests and compared in constant time,
//! turned into a [`Caller`] once per request by an extractor, so each handler states what
//! it needs in its signature (`Caller`: any valid token; [`Admin`]: the operator's).

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::ApiState;

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

    /// Whether `partner` has a token.
    pub(crate) fn has_partner(&self, partner: &str) -> bool {
        self.partners.iter().any(|(_, p)| p == partner)
    }

    pub(crate) fn caller(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
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

/// Who is calling, decided once per request from its bearer token (an extractor: a
/// handler that takes a `Caller` is authenticated; one that takes [`Admin`] is admin-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    Admin,
    Partner(String),
}

impl Caller {
    pub(crate) fn sees(&self, partner: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Partner(p) => p == partner,
        }
    }

    pub(crate) fn name(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Partner(p) => format!("partner:{p}"),
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &ApiState) -> Result<Self, ApiError> {
        if let Some(InProcess(caller)) = parts.extensions.get::<InProcess>() {
            return Ok(caller.clone());
        }
        api.tokens.caller(&parts.headers)
    }
}

/// A request the console makes to the API in-process, as its session's caller (an
/// extension: no request from the network can carry one).
#[derive(Debug, Clone)]
pub(crate) struct InProcess(pub Caller);

/// A caller holding an admin token (the operator); anyone else gets 403.
#[derive(Debug)]
pub(crate) struct Admin(pub Caller);

impl FromRequestParts<ApiState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, api: &ApiState) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, api).await? {
            Caller::Admin => Ok(Admin(Caller::Admin)),
            Caller::Partner(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "only an operator (admin token) may do this",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
