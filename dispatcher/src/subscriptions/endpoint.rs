//! A subscription's endpoint beyond its URL (#25): its own CA (`tls`), and whether its
//! URL proved it wants our events (`verification`), with the URL and CA events go to
//! meanwhile.

use serde::{Deserialize, Serialize};

use super::Subscription;

/// TLS settings of one partner endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointTls {
    /// PEM certificate(s) of a private CA: the partner's server certificate must chain
    /// to one of them (the public roots are then not trusted for this subscription).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

/// Where a subscription's ownership challenge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerificationState {
    Verified,
    PendingVerification,
    VerificationFailed,
}

impl VerificationState {
    pub fn name(self) -> &'static str {
        match self {
            Self::Verified => "verified",
            Self::PendingVerification => "pending_verification",
            Self::VerificationFailed => "verification_failed",
        }
    }
}

/// The ownership challenge of a subscription's `url` (docs/PARTNER_GUIDE.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    pub state: VerificationState,
    /// The URL this check is about: a state about another URL (a record merged from
    /// two changes) does not make `url` verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// After a URL change: the verified URL that keeps receiving until `url` is
    /// verified. None for a new subscription: its events wait in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_url: Option<String>,
    /// The previous URL's TLS settings (its own CA), used as long as it receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_tls: Option<EndpointTls>,
    /// When this check of `url` started (the change, or a retry asked for).
    pub since: chrono::DateTime<chrono::Utc>,
    /// When `url` answered the challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why the last challenge failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl Subscription {
    /// The URL events go to now: `url` once verified (or never checked), the previous
    /// verified URL while a new one is checked, none for a new subscription not
    /// verified yet (its events are held, like a paused subscription's).
    pub fn delivery_url(&self) -> Option<&str> {
        match &self.verification {
            None => Some(&self.url),
            Some(v) if v.state == VerificationState::Verified => v
                .url
                .as_deref()
                .is_none_or(|checked| checked == self.url)
                .then_some(self.url.as_str()),
            Some(v) => v.previous_url.as_deref(),
        }
    }

    /// Whether events go to the previous URL because the new `url` is not verified
    /// (pending, or failed: the change stays asked for until it is verified, undone or
    /// deleted).
    pub fn checking_new_url(&self) -> bool {
        self.verification
            .as_ref()
            .is_some_and(|v| v.state != VerificationState::Verified && v.previous_url.is_some())
    }

    /// The subscription's own CA for its partner's server, if it has one.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().and_then(|t| t.ca_pem.as_deref())
    }

    /// The CA for the URL events go to now: the previous URL's own while it receives.
    pub fn delivery_ca_pem(&self) -> Option<&str> {
        if self.checking_new_url() {
            self.verification
                .as_ref()
                .and_then(|v| v.previous_tls.as_ref())
                .and_then(|t| t.ca_pem.as_deref())
        } else {
            self.ca_pem()
        }
    }
}
