//! A subscription as the API shows it.

use std::collections::BTreeSet;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

use crate::subscriptions::{EndpointTls, Kind, RetryPolicy, Subscription};

/// A subscription as the API shows it: secrets never, after creation and rotation.
#[derive(Debug, Serialize)]
pub(in crate::api) struct View {
    pub(in crate::api) id: String,
    partner_id: String,
    /// `webhook` or `stream`.
    kind: Kind,
    /// None for a stream.
    #[serde(skip_serializing_if = "String::is_empty")]
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
    /// The ownership challenge of `url`: `verified`, `pending_verification` or
    /// `verification_failed`, with where events go meanwhile.
    verification: crate::api::verify::VerificationView,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<EndpointTls>,
    /// The payload filter (a CEL expression), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<String>,
}

impl From<&Subscription> for View {
    fn from(s: &Subscription) -> Self {
        Self {
            id: s.id.clone(),
            partner_id: s.partner_id.clone(),
            kind: s.kind,
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
            verification: crate::api::verify::VerificationView::from(s),
            tls: s.tls.clone(),
            filter: s.filter.clone(),
        }
    }
}
