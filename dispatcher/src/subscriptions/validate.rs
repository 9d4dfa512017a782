//! A subscription's checks: every error names the subscription and the field.

use super::*;

/// A subscription that failed validation: which one, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("subscription `{id}`: {field}: {message}")]
pub struct InvalidSubscription {
    pub id: String,
    pub field: &'static str,
    pub message: String,
}

/// Subscription ids are keys, log fields and URL path segments: a small charset.
fn valid_id(id: &str) -> bool {
    id.len() <= 128
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// Partner ids become topic names: lowercase letters, digits, `-` and `_`.
pub fn valid_partner_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Subscription {
    fn invalid(&self, field: &'static str, message: impl Into<String>) -> InvalidSubscription {
        InvalidSubscription {
            id: self.id.clone(),
            field,
            message: message.into(),
        }
    }

    /// Checks every field; URL hosts given as IP literals must pass the SSRF rules
    /// (names are checked again at every request, after resolution).
    pub fn validate(&self, allowlist: &Allowlist) -> Result<(), InvalidSubscription> {
        if self.id.trim().is_empty() {
            return Err(self.invalid("id", "must not be empty"));
        }
        if !valid_partner_id(&self.partner_id) {
            return Err(self.invalid(
                "partner_id",
                format!("`{}` must be 1-100 of a-z, 0-9, - and _", self.partner_id),
            ));
        }
        if self.kind == Kind::Stream {
            return self.validate_stream();
        }
        self.validate_endpoint(allowlist)?;
        self.validate_routing()
    }

    /// A stream has no endpoint: what would describe one must be absent.
    fn validate_stream(&self) -> Result<(), InvalidSubscription> {
        for (field, set) in [
            ("url", !self.url.is_empty()),
            ("secrets", !self.secrets.is_empty()),
            ("tls", self.tls.is_some()),
            ("internal", self.internal),
            ("verification", self.verification.is_some()),
        ] {
            if set {
                return Err(self.invalid(field, "a stream subscription has none (kind: stream)"));
            }
        }
        self.validate_routing()
    }

    fn validate_endpoint(&self, allowlist: &Allowlist) -> Result<(), InvalidSubscription> {
        if self.url.is_empty() {
            return Err(self.invalid("url", "required (or kind: stream for a live stream)"));
        }
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| self.invalid("url", format!("`{}` is not a URL: {e}", self.url)))?;
        let host = url
            .host()
            .ok_or_else(|| self.invalid("url", "has no host"))?;
        let literal = match host {
            url::Host::Ipv4(ip) => Some(std::net::IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(std::net::IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        };
        match url.scheme() {
            "https" => {}
            "http" if allowlist.https_only() => {
                return Err(self.invalid(
                    "url",
                    "scheme `http` not allowed: this deployment is https-only (--https-only)",
                ))
            }
            "http" if allowlist.plain_http() || literal.is_some_and(|ip| allowlist.contains(ip)) => {}
            other => return Err(self.invalid("url", format!("scheme `{other}` not allowed: use https (http only for allowlisted addresses, or with DISPATCHER_ALLOW_HTTP)"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.invalid("url", "must not carry credentials"));
        }
        if let Some(ip) = literal {
            allowlist
                .check(ip)
                .map_err(|why| self.invalid("url", format!("refused by the SSRF guard: {why}")))?;
        }
        if let Some(pem) = self.tls.as_ref().and_then(|t| t.ca_pem.as_deref()) {
            crate::webhook::tls::TrustedCa::parse(pem)
                .map_err(|why| self.invalid("tls.ca_pem", why))?;
        }
        if let Some(previous) = self
            .verification
            .as_ref()
            .and_then(|v| v.previous_url.as_deref())
        {
            reqwest::Url::parse(previous).map_err(|e| {
                self.invalid(
                    "verification.previous_url",
                    format!("`{previous}` is not a URL: {e}"),
                )
            })?;
        }
        if self.secrets.is_empty() {
            return Err(self.invalid("secrets", "at least one signing secret is required"));
        }
        for (i, s) in self.secrets.iter().enumerate() {
            Secret::parse(s)
                .map_err(|why| self.invalid("secrets", format!("secret #{} {why}", i + 1)))?;
        }
        Ok(())
    }

    /// What every kind has: the events it takes, and the limits.
    fn validate_routing(&self) -> Result<(), InvalidSubscription> {
        if self.event_types.is_empty() {
            return Err(self.invalid("event_types", "must name at least one event type"));
        }
        if let Some(bad) = self
            .event_types
            .iter()
            .find(|t| EventType::from_name(t).is_none())
        {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.name()).collect();
            return Err(self.invalid(
                "event_types",
                format!(
                    "unknown event type `{bad}`, expected one of {}",
                    known.join(", ")
                ),
            ));
        }
        if let Some(filter) = &self.filter {
            filter::Filter::compile(filter, &self.event_types)
                .map_err(|why| self.invalid("filter", why.to_string()))?;
        }
        if !(1..=1000).contains(&self.max_in_flight) {
            return Err(self.invalid(
                "max_in_flight",
                format!("{} is not between 1 and 1000", self.max_in_flight),
            ));
        }
        if !(100..=120_000).contains(&self.request_timeout_ms) {
            return Err(self.invalid(
                "request_timeout_ms",
                format!("{} is not between 100 and 120000", self.request_timeout_ms),
            ));
        }
        if let Some(rate) = self.rate_limit_per_sec {
            if !(MIN_RATE_PER_SEC..=MAX_RATE_PER_SEC).contains(&rate) {
                return Err(self.invalid(
                    "rate_limit_per_sec",
                    format!("{rate} is not between {MIN_RATE_PER_SEC} and {MAX_RATE_PER_SEC}"),
                ));
            }
        }
        let r = &self.retry;
        if !(1..=MAX_ATTEMPTS).contains(&r.max_attempts) {
            return Err(self.invalid(
                "retry.max_attempts",
                format!("{} is not between 1 and {MAX_ATTEMPTS}", r.max_attempts),
            ));
        }
        if !(1..=MAX_ELAPSED_SECS).contains(&r.max_elapsed_secs) {
            return Err(self.invalid(
                "retry.max_elapsed_secs",
                format!(
                    "{} is not between 1 and {MAX_ELAPSED_SECS} (7 days)",
                    r.max_elapsed_secs
                ),
            ));
        }
        if !(1..=MAX_BACKOFF_MS).contains(&r.max_backoff_ms) {
            return Err(self.invalid(
                "retry.max_backoff_ms",
                format!(
                    "{} is not between 1 and {MAX_BACKOFF_MS} (1 day)",
                    r.max_backoff_ms
                ),
            ));
        }
        if r.initial_backoff_ms == 0 || r.initial_backoff_ms > r.max_backoff_ms {
            return Err(self.invalid(
                "retry.initial_backoff_ms",
                format!(
                    "{} must be at least 1 and at most retry.max_backoff_ms ({})",
                    r.initial_backoff_ms, r.max_backoff_ms
                ),
            ));
        }
        Ok(())
    }

    /// The id rule for new subscriptions (API and `subscriptions apply`): 1-128 of
    /// `A-Za-z0-9._-`. Not applied to records already in the topic, so an upgrade never
    /// turns an existing subscription invalid for its id alone.
    pub fn validate_new_id(&self) -> Result<(), InvalidSubscription> {
        if valid_id(&self.id) {
            Ok(())
        } else {
            Err(self.invalid(
                "id",
                "must be 1-128 of A-Z, a-z, 0-9, `.`, `_` and `-`, starting with a letter or digit",
            ))
        }
    }
}
