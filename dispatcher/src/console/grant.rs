//! Signed grants: the portal link's token and the session cookie. A grant is its JSON,
//! base64url, a dot, and the HMAC-SHA256 of that text under the console's secret: any
//! instance holding the secret checks it without a store. The `kind` keeps a link from
//! being used as a cookie and a cookie as a link.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// What a grant may do: look, or also change (pause, resume, resend, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Manage,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "read" => Some(Self::Read),
            "manage" => Some(Self::Manage),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Manage => "manage",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Link,
    Session,
}

/// One grant: a portal link or a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub kind: Kind,
    /// Random; a link's is what makes it single-use, a session's keys its CSRF token.
    pub id: String,
    /// The partner it is limited to; `None`: an operator's (every partner).
    pub partner: Option<String>,
    pub scope: Scope,
    /// Issued and expires at, in Unix milliseconds.
    pub iat: i64,
    pub exp: i64,
}

impl Grant {
    /// Issued at `now` (Unix milliseconds), for `ttl_secs`.
    pub fn new(kind: Kind, partner: Option<String>, scope: Scope, now: i64, ttl_secs: i64) -> Self {
        Self {
            kind,
            id: uuid::Uuid::new_v4().simple().to_string(),
            partner,
            scope,
            iat: now,
            exp: now + ttl_secs * 1000,
        }
    }

    pub fn sign(&self, secret: &[u8]) -> String {
        let body = B64.encode(serde_json::to_vec(self).unwrap_or_default());
        let tag = B64.encode(mac(secret, body.as_bytes()));
        format!("{body}.{tag}")
    }

    /// The grant `token` carries, if its tag is right (checked in constant time), it is
    /// of `kind`, and it has not expired at `now`.
    pub fn verify(secret: &[u8], token: &str, kind: Kind, now: i64) -> Result<Self, Refused> {
        let (body, tag) = token.split_once('.').ok_or(Refused::Invalid)?;
        let tag = B64.decode(tag).map_err(|_| Refused::Invalid)?;
        let mut check = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| Refused::Invalid)?;
        check.update(body.as_bytes());
        check.verify_slice(&tag).map_err(|_| Refused::Invalid)?;
        let grant: Grant = B64
            .decode(body)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(Refused::Invalid)?;
        if grant.kind != kind {
            return Err(Refused::Invalid);
        }
        if now >= grant.exp {
            return Err(Refused::Expired);
        }
        Ok(grant)
    }
}

/// Why a token was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not one of ours (altered, truncated, of the other kind, another secret).
    Invalid,
    Expired,
}

/// HMAC-SHA256 of `data` under `secret`.
pub fn mac(secret: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The CSRF token of session `id`: derived, so nothing is stored; a form carries it and
/// a change is refused without it.
pub fn csrf_token(secret: &[u8], session_id: &str) -> String {
    B64.encode(mac(secret, format!("csrf:{session_id}").as_bytes()))
}

/// Whether `given` is session `id`'s CSRF token (constant time).
pub fn csrf_ok(secret: &[u8], session_id: &str, given: &str) -> bool {
    let want = csrf_token(secret, session_id);
    want.len() == given.len()
        && want
            .bytes()
            .zip(given.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_grant_is_taken_only_unaltered_of_its_kind_and_in_time() {
        let g = Grant::new(Kind::Link, Some("acme".into()), Scope::Read, 1_000, 60);
        let token = g.sign(SECRET);
        assert_eq!(
            Grant::verify(SECRET, &token, Kind::Link, 60_999),
            Ok(g.clone())
        );
        assert_eq!(
            Grant::verify(SECRET, &token, Kind::Link, 61_000),
            Err(Refused::Expired)
        );
        assert_eq!(
            Grant::verify(SECRET, &token, Kind::Session, 1_000),
            Err(Refused::Invalid),
            "a link is not a session"
        );
        assert_eq!(
            Grant::verify(
                b"another secret of 32 bytes......",
                &token,
                Kind::Link,
                1_000
            ),
            Err(Refused::Invalid)
        );
        // Another partner put in the body, the tag kept: refused.
        let (_, tag) = token.split_once('.').expect("dot");
        let mut other = g.clone();
        other.partner = Some("evil".into());
        let forged = format!(
            "{}.{tag}",
            other.sign(SECRET).split_once('.').expect("dot").0
        );
        assert_eq!(
            Grant::verify(SECRET, &forged, Kind::Link, 1_000),
            Err(Refused::Invalid)
        );
        assert_eq!(
            Grant::verify(SECRET, "garbage", Kind::Link, 1_000),
            Err(Refused::Invalid)
        );
    }

    #[test]
    fn a_csrf_token_belongs_to_its_session() {
        let t = csrf_token(SECRET, "s1");
        assert!(csrf_ok(SECRET, "s1", &t));
        assert!(!csrf_ok(SECRET, "s2", &t));
        assert!(!csrf_ok(SECRET, "s1", ""));
    }
}
