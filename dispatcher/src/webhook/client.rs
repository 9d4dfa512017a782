//! One webhook attempt: a signed POST over a pooled keep-alive client that never follows
//! redirects, connects only to addresses the SSRF guard allows, and reads at most a
//! small excerpt of the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use crate::webhook::outcome::Attempt;
use crate::webhook::signing::{signature_header, Secret};
use crate::webhook::ssrf::{Allowlist, GuardedResolver};
use crate::webhook::tls::{ClientCertFiles, ClientPair, Stamp, TrustedCa};

const WEBHOOK_ID: HeaderName = HeaderName::from_static(crate::kafka::headers::WEBHOOK_ID);
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
const TRACEPARENT: HeaderName = HeaderName::from_static(crate::kafka::headers::TRACEPARENT);
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Clients kept for subscriptions' own CAs, at most.
const MAX_CA_CLIENTS: usize = 256;

/// Bytes of a partner's answer kept for the dead-letter record.
pub const EXCERPT_BYTES: usize = 1024;

/// What one webhook call needs.
#[derive(Debug)]
pub struct Webhook<'a> {
    /// The parsed URL, or why it did not parse.
    pub url: &'a Result<reqwest::Url, String>,
    /// The event id: `webhook-id`, stable across retries and replays.
    pub id: &'a str,
    pub body: &'a Bytes,
    pub secrets: &'a [Secret],
    pub traceparent: Option<&'a str>,
    pub timeout: Duration,
    /// The subscription's own CA for its partner's server (`tls.ca_pem`): only it is
    /// trusted for this call.
    pub ca: Option<&'a TrustedCa>,
}

/// The result of one attempt, with what the dead-letter record keeps of it.
#[derive(Debug, Clone)]
pub struct Report {
    pub attempt: Attempt,
    /// The start of the answer's body (lossy UTF-8, at most the client's
    /// [`WebhookClient::excerpt_bytes`]), when there was an answer.
    pub excerpt: Option<String>,
    /// The answer's `content-type` and `retry-after` as sent (lossy UTF-8, at most
    /// 256 bytes each).
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    pub elapsed: Duration,
}

/// The shared HTTP client of the delivery lanes. Cloning it shares its connections and
/// its client certificate: a rotation ([`WebhookClient::reload_client_cert`]) reaches
/// every clone.
#[derive(Debug, Clone)]
pub struct WebhookClient {
    shared: Arc<Shared>,
    excerpt_bytes: usize,
}

#[derive(Debug)]
struct Shared {
    allowlist: Arc<Allowlist>,
    connect_timeout: Duration,
    egress_proxy: Option<String>,
    /// Where the client certificate is read from (`None`: calls present none).
    cert_files: Option<ClientCertFiles>,
    /// The clients in use; replaced whole when the certificate pair changes, so calls
    /// in flight finish on the clients they started with and new connections present
    /// the new pair.
    current: RwLock<Arc<Generation>>,
    /// The certificate files' stamps when last read.
    seen: Mutex<Stamp>,
}

/// The clients of one client certificate pair: the default one, and one per
/// subscription CA in use (each trusts that CA only).
#[derive(Debug)]
struct Generation {
    pair: Option<ClientPair>,
    default: reqwest::Client,
    by_ca: Mutex<HashMap<[u8; 32], reqwest::Client>>,
}

impl WebhookClient {
    /// A client that connects straight to partners, whatever proxy variables
    /// (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`) the environment has: a proxy would
    /// resolve the partner's host itself, out of the SSRF guard's sight.
    pub fn new(allowlist: Arc<Allowlist>, connect_timeout: Duration) -> anyhow::Result<Self> {
        Self::with_egress_proxy(allowlist, connect_timeout, None)
    }

    /// Like [`WebhookClient::new`], but every webhook goes through `egress_proxy` (an
    /// `http://` or `https://` proxy URL) when one is given. The guard then sees only IP
    /// literals: the proxy resolves partner host names, so it is the place that must
    /// refuse private, loopback and link-local addresses (docs/ARCHITECTURE.md).
    pub fn with_egress_proxy(
        allowlist: Arc<Allowlist>,
        connect_timeout: Duration,
        egress_proxy: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::build(allowlist, connect_timeout, egress_proxy, None)
    }

    /// Like [`WebhookClient::with_egress_proxy`], and every HTTPS call presents the client
    /// certificate in `cert_files` (mutual TLS). A pair that does not load is an error
    /// here; later, a rotation that does not load keeps the pair in use.
    pub fn build(
        allowlist: Arc<Allowlist>,
        connect_timeout: Duration,
        egress_proxy: Option<&str>,
        cert_files: Option<ClientCertFiles>,
    ) -> anyhow::Result<Self> {
        let seen = cert_files
            .as_ref()
            .map(ClientCertFiles::stamp)
            .unwrap_or_default();
        let pair = cert_files.as_ref().map(ClientCertFiles::load).transpose()?;
        let mut shared = Shared {
            allowlist,
            connect_timeout,
            egress_proxy: egress_proxy.map(str::to_string),
            cert_files,
            current: RwLock::new(Arc::new(Generation {
                pair: None,
                default: reqwest::Client::new(),
                by_ca: Mutex::default(),
            })),
            seen: Mutex::new(seen),
        };
        let default = shared.client(pair.as_ref(), None)?;
        if let Some(pair) = &pair {
            tracing::info!(fingerprint = %pair.fingerprint, subject = %pair.subject, not_after = %pair.not_after, "webhooks present this client certificate");
        }
        shared.current = RwLock::new(Arc::new(Generation {
            pair,
            default,
            by_ca: Mutex::default(),
        }));
        Ok(Self {
            shared: Arc::new(shared),
            excerpt_bytes: EXCERPT_BYTES,
        })
    }

    /// Reads at most `bytes` of each answer (the delivery log keeps up to that; the
    /// dead-letter record keeps [`EXCERPT_BYTES`] of it). At least [`EXCERPT_BYTES`].
    pub fn excerpt_bytes(mut self, bytes: usize) -> Self {
        self.excerpt_bytes = bytes.max(EXCERPT_BYTES);
        self
    }

    /// The client certificate presented now (`None`: none).
    pub fn client_cert(&self) -> Option<ClientPair> {
        self.generation().pair.clone()
    }

    fn generation(&self) -> Arc<Generation> {
        Arc::clone(
            &self
                .shared
                .current
                .read()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Loads the client certificate pair again when `force`, or when its files changed
    /// since they were last read. A pair that loads replaces the one in use for new
    /// connections (calls in flight finish on theirs); one that does not is refused with
    /// a log line naming why, and the pair in use stays. `Ok(true)`: a new pair is in
    /// use.
    pub fn reload_client_cert(&self, force: bool) -> anyhow::Result<bool> {
        let Some(files) = &self.shared.cert_files else {
            return Ok(false);
        };
        let stamp = files.stamp();
        {
            let mut seen = self.shared.seen.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *seen == stamp {
                return Ok(false);
            }
            // (A pair that does not load is not tried again until the files change.)
            *seen = stamp;
        }
        let current = self.generation();
        let loaded = files.load().and_then(|pair| {
            let default = self.shared.client(Some(&pair), None)?;
            Ok((pair, default))
        });
        match loaded {
            Ok((pair, _))
                if !force
                    && current
                        .pair
                        .as_ref()
                        .is_some_and(|p| p.fingerprint == pair.fingerprint) =>
            {
                // Touched, not changed: the connections stay.
                Ok(false)
            }
            Ok((pair, default)) => {
                tracing::info!(fingerprint = %pair.fingerprint, subject = %pair.subject, not_after = %pair.not_after, "client certificate reloaded: new connections present it");
                crate::metrics::client_cert_reload(true);
                *self
                    .shared
                    .current
                    .write()
                    .unwrap_or_else(|p| p.into_inner()) = Arc::new(Generation {
                    pair: Some(pair),
                    default,
                    by_ca: Mutex::default(),
                });
                Ok(true)
            }
            Err(error) => {
                let in_use = current.pair.as_ref().map(|p| p.fingerprint.clone());
                tracing::error!(error = %format!("{error:#}"), in_use = in_use.as_deref().unwrap_or("none"), "client certificate not reloaded: the new pair does not load; the pair in use stays");
                crate::metrics::client_cert_reload(false);
                Err(error)
            }
        }
    }

    /// Reloads the client certificate when its files change (looked at every second)
    /// and on SIGHUP, until `stop`. Nothing to do without `--client-cert`.
    pub async fn watch_client_cert(self, stop: tokio_util::sync::CancellationToken) {
        if self.shared.cert_files.is_none() {
            return;
        }
        #[cfg(unix)]
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hangups.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<()>();
            let force = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => false,
                _ = hangup => {
                    tracing::info!("SIGHUP: reloading the client certificate");
                    true
                }
            };
            let _ = self.reload_client_cert(force);
        }
    }

    /// The client for a call: the default one, or the one trusting `ca` only.
    fn client_for(&self, ca: Option<&TrustedCa>) -> Result<reqwest::Client, String> {
        let generation = self.generation();
        let Some(ca) = ca else {
            return Ok(generation.default.clone());
        };
        let mut by_ca = generation.by_ca.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = by_ca.get(&ca.digest) {
            return Ok(c.clone());
        }
        let client = self
            .shared
            .client(generation.pair.as_ref(), Some(ca))
            .map_err(|e| format!("tls: the subscription's CA: {e:#}"))?;
        // At most MAX_CA_CLIENTS kept (CAs change as partners change them): past that
        // the cache starts afresh, and clients are made again as calls need them.
        if by_ca.len() >= MAX_CA_CLIENTS {
            by_ca.clear();
        }
        by_ca.insert(ca.digest, client.clone());
        Ok(client)
    }

    /// Sends one attempt. Never panics, never returns an error: every failure is a
    /// [`Report`] for the outcome table.
    pub async fn send(&self, hook: &Webhook<'_>) -> Report {
        let started = Instant::now();
        let refused = |why: String| Report {
            attempt: Attempt::Refused(why),
            excerpt: None,
            content_type: None,
            retry_after: None,
            elapsed: started.elapsed(),
        };
        let url = match hook.url {
            Ok(u) => u.clone(),
            Err(e) => return refused(e.clone()),
        };
        let client = match self.client_for(hook.ca) {
            Ok(c) => c,
            Err(e) => return refused(e),
        };
        // An IP literal does not go through the resolver: check it here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            if let Err(why) = self.shared.allowlist.check(ip) {
                return refused(format!("refused by the SSRF guard: {why}"));
            }
        }
        let timestamp = chrono::Utc::now().timestamp();
        let mut request = client
            .post(url)
            .timeout(hook.timeout)
            .header(CONTENT_TYPE, JSON)
            .header(WEBHOOK_ID, hook.id)
            .header(WEBHOOK_TIMESTAMP, timestamp)
            .header(
                WEBHOOK_SIGNATURE,
                signature_header(hook.secrets, hook.id, timestamp, hook.body),
            )
            .body(hook.body.clone());
        if let Some(tp) = hook.traceparent {
            request = request.header(TRACEPARENT, tp);
        }
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                // (Without the URL: it may hold credentials or a token, and the text
                // goes to the dead-letter record and the delivery log.)
                let text = error_chain(&e.without_url());
                let attempt = if text.contains("refused by the SSRF guard") {
                    Attempt::Refused(text)
                } else {
                    Attempt::Transport(text)
                };
                return Report {
                    attempt,
                    excerpt: None,
                    content_type: None,
                    retry_after: None,
                    elapsed: started.elapsed(),
                };
            }
        };
        let status = response.status().as_u16();
        let raw = |name| {
            response.headers().get(name).map(|v: &HeaderValue| {
                let mut text = String::from_utf8_lossy(v.as_bytes()).into_owned();
                crate::attempts::truncate(&mut text, 256);
                text
            })
        };
        let (content_type, retry_after_raw) = (raw(CONTENT_TYPE), raw(RETRY_AFTER));
        let retry_after = retry_after_raw.as_deref().and_then(parse_retry_after);
        let mut excerpt = Vec::new();
        // Read at most `excerpt_bytes` (the request's timeout covers the body too); the
        // rest of a large answer is dropped with the connection rather than read.
        let max = self.excerpt_bytes;
        while excerpt.len() < max {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(max - excerpt.len())])
                }
                _ => break,
            }
        }
        Report {
            attempt: Attempt::Status {
                status,
                retry_after,
            },
            excerpt: Some(String::from_utf8_lossy(&excerpt).into_owned()),
            content_type,
            retry_after: retry_after_raw,
            elapsed: started.elapsed(),
        }
    }
}

impl Shared {
    /// A client presenting `pair` (if any) and trusting `ca` only (if given; else the
    /// system's roots).
    fn client(
        &self,
        pair: Option<&ClientPair>,
        ca: Option<&TrustedCa>,
    ) -> anyhow::Result<reqwest::Client> {
        let mut headers = HeaderMap::new();
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static("orderhooks-dispatcher/0.1"),
        );
        let mut builder = match &self.egress_proxy {
            // Straight to partners: every host name goes through the guarded resolver.
            None => reqwest::Client::builder()
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver::new(Arc::clone(&self.allowlist)))),
            // Through the proxy: the only name we resolve is the proxy's own (often a
            // private address, which the guard would refuse); the proxy resolves the
            // partners' names and enforces the address rules for them.
            Some(url) => reqwest::Client::builder().proxy(
                reqwest::Proxy::all(url)
                    .map_err(|e| anyhow::anyhow!("--egress-proxy `{url}`: {e}"))?,
            ),
        };
        if let Some(pair) = pair {
            builder = builder.identity(pair.identity.clone());
        }
        if let Some(ca) = ca {
            builder = builder.tls_certs_only(ca.certs.iter().cloned());
        }
        Ok(builder
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .tcp_nodelay(true)
            .default_headers(headers)
            .build()?)
    }
}

/// `Retry-After` as seconds or as an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value.trim()).ok()?;
    let secs = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
    Some(Duration::from_secs(secs.max(0) as u64))
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let parsed = parse_retry_after(&later).expect("date");
        assert!(
            parsed >= Duration::from_secs(28) && parsed <= Duration::from_secs(30),
            "{parsed:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
