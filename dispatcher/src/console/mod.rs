//! The web console (#24), served by `dispatcher api` under `/console/`: server-rendered
//! pages (askama templates in `templates/`, escaped by default), no JavaScript, usable
//! on a phone's width.
//!
//! - **Who gets in.** A partner through a portal link (`POST /v1/admin/portal-links`,
//!   [`links`]): single-use, at most 24 h, limited to one partner and a scope (`read`
//!   or `manage`); an operator by signing in with an admin token. Either starts a
//!   session: a signed cookie ([`grant`]), HttpOnly, SameSite=Strict, Secure when the
//!   console's public URL is https.
//! - **One way to data.** Every page asks the partner API, in-process, as the session's
//!   caller ([`ApiCall`]): a partner's session sees and does exactly what its token
//!   would, no more; nothing here reads Kafka or the delivery log itself.
//! - **Defences.** Every change is a POST carrying the session's CSRF token; every page
//!   has a Content-Security-Policy without scripts, and frames are refused; what a
//!   partner's server sent us is only ever shown through the templates' escaping.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::header::{self, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::Value;
use tower::ServiceExt;

use crate::api::{ApiState, Caller};

mod catalog;
mod entry;
mod filter_test;
pub mod grant;
pub mod ledger;
pub mod links;
mod manage;
mod message;
mod overview;
mod pages;
mod sre;

use grant::{Grant, Kind, Scope};

/// The session cookie's name over http ([`Console::cookie_name`]).
const COOKIE: &str = "console_session";
/// How long a session lasts.
const SESSION_SECS: i64 = 8 * 3600;

/// The console's settings and what it remembers.
pub struct Console {
    /// Signs links and sessions; instances that share it accept each other's.
    secret: Vec<u8>,
    /// Where partners reach the console (`https://...`, without `/console`): the base
    /// of portal links, and whether cookies are Secure. `None`: the request's Host, http.
    public_url: Option<String>,
    /// The links used, the sessions ended: shared by every instance.
    ledger: ledger::Ledger,
    /// The API's router, built once, which the pages call in-process.
    router: std::sync::OnceLock<Router>,
    /// The overview's figures per (caller's partner, subscription, window), for 30 s:
    /// a page reloaded again and again asks the delivery log once.
    figures: std::sync::Mutex<std::collections::HashMap<FigureKey, (std::time::Instant, Value)>>,
}

/// The caller's partner (`None`: an operator), a subscription, a window.
type FigureKey = (Option<String>, String, &'static str);

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Console {
    /// `secret`: at least 32 bytes (`--console-secret-file`; [`Self::random_secret`]
    /// without one).
    pub fn new(
        secret: Vec<u8>,
        public_url: Option<String>,
        ledger: ledger::Ledger,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= 32,
            "the console's secret must be at least 32 bytes (it has {})",
            secret.len()
        );
        if let Some(url) = &public_url {
            anyhow::ensure!(
                url.starts_with("https://") || url.starts_with("http://"),
                "--console-url `{url}`: must start with https:// (or http:// for a local test)"
            );
        }
        Ok(Self {
            secret,
            public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
            ledger,
            router: std::sync::OnceLock::new(),
            figures: std::sync::Mutex::default(),
        })
    }

    /// A secret of this process's own: its sessions and links hold on this instance
    /// only, until it restarts.
    pub fn random_secret() -> Vec<u8> {
        let secret: [u8; 32] = rand::random();
        secret.to_vec()
    }

    fn secure(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }

    /// Takes portal link `id` (expiring at `exp`) for its one use, whichever instance
    /// asks: false if another use came first.
    async fn take_link(&self, id: &str, exp: i64) -> anyhow::Result<bool> {
        self.ledger.claim_link(id, exp).await
    }

    /// Whether portal link `id` was used.
    fn link_used(&self, id: &str) -> bool {
        self.ledger.read(|s| s.link_used(id))
    }

    /// Ends every session of `partner` issued until `now`, on every instance.
    pub async fn end_sessions(&self, partner: &str, now: i64) -> anyhow::Result<()> {
        self.ledger
            .note(&ledger::Entry::PartnerEnded {
                partner: partner.to_string(),
                at: now,
            })
            .await
    }

    /// Whether `grant` (a link or a session) is over: its partner's sessions were ended
    /// after it was issued, or (a session) it was signed out.
    fn ended(&self, grant: &Grant) -> bool {
        self.ledger
            .read(|s| s.ended(grant.partner.as_deref(), grant.iat, &grant.id))
    }

    /// Signs session `grant` out: its cookie is refused from now on, wherever it is.
    async fn revoke(&self, grant: &Grant) -> anyhow::Result<()> {
        self.ledger
            .note(&ledger::Entry::SessionRevoked {
                id: grant.id.clone(),
                exp: grant.exp,
            })
            .await
    }

    /// The session cookie's name: `__Host-` prefixed when Secure (the browser then
    /// refuses one set by another host or for a narrower path: no fixation from a
    /// sibling subdomain).
    fn cookie_name(&self) -> &'static str {
        if self.secure() {
            "__Host-console_session"
        } else {
            COOKIE
        }
    }

    /// The cookie's scope: `/` for a `__Host-` cookie (as that prefix requires).
    fn cookie_path(&self) -> &'static str {
        if self.secure() {
            "/"
        } else {
            "/console"
        }
    }

    /// The `Set-Cookie` value that starts session `grant`.
    fn cookie(&self, grant: &Grant) -> String {
        format!(
            "{}={}; Path={}; Max-Age={}; HttpOnly; SameSite=Strict{}",
            self.cookie_name(),
            grant.sign(&self.secret),
            self.cookie_path(),
            ((grant.exp - grant.iat) / 1000).max(0),
            if self.secure() { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that ends the session.
    fn cleared(&self) -> String {
        format!(
            "{}=; Path={}; Max-Age=0; HttpOnly; SameSite=Strict{}",
            self.cookie_name(),
            self.cookie_path(),
            if self.secure() { "; Secure" } else { "" }
        )
    }
}

/// `text` as one segment of a path (or a query's value): every byte but the
/// unreserved ones percent-encoded, so an id can never add a segment or a query to the
/// API request it is put in (`a%2Frotate-secret%3F` stays one id).
pub(crate) fn seg(text: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(text, KEEP).to_string()
}

/// Now, in Unix milliseconds (what grants count in).
pub(crate) fn now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The console's routes (merged into the API's router).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route("/console/", get(overview::overview))
        .route("/console/events", get(catalog::catalog))
        .route("/console/login", get(entry::login_form).post(entry::login))
        .route("/console/logout", post(entry::logout))
        .route(
            "/console/link/{token}",
            get(entry::open_link).post(entry::use_link),
        )
        .route("/console/subscriptions/{id}", get(pages::subscription))
        .route("/console/subscriptions/{id}/pause", post(pages::pause))
        .route("/console/subscriptions/{id}/resume", post(pages::resume))
        .route("/console/subscriptions/{id}/edit", post(manage::edit))
        .route("/console/subscriptions/{id}/rotate", post(manage::rotate))
        .route("/console/subscriptions/{id}/verify", post(pages::verify))
        .route("/console/subscriptions/{id}/recover", post(manage::recover))
        .route(
            "/console/subscriptions/{id}/filter-test",
            post(filter_test::filter_test),
        )
        .route("/console/messages/{webhook_id}", get(message::message))
        .route(
            "/console/messages/{webhook_id}/resend",
            get(message::resend_confirm).post(message::resend),
        )
        .route(
            "/console/partners/{partner}/dead-letters",
            get(sre::dead_letters),
        )
        .route(
            "/console/partners/{partner}/dead-letters/replay",
            post(sre::replay),
        )
        .route(
            "/console/partners/{partner}/dead-letters/{partition}/{offset}",
            get(sre::dead_letter),
        )
        .route("/console/audit", get(sre::audit))
        .route(
            "/console/partners/{partner}/reconnect",
            post(overview::reconnect),
        )
        .route("/console/static/console.css", get(stylesheet))
        .layer(axum::middleware::from_fn(same_site_posts))
        .layer(axum::middleware::map_response(defences))
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        include_str!("console.css"),
    )
        .into_response()
}

/// Refuses a POST another site's page made (`Sec-Fetch-Site` other than
/// `same-origin`, which every current browser sends): beside the CSRF tokens of the
/// session's forms, this covers the two forms that have no session yet, sign-in and a
/// portal link's, which another site could otherwise use to sign a visitor in as a
/// partner of its choosing. (A client that sends no such header, curl, is let through:
/// it carries no one's cookies.)
async fn same_site_posts(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let cross_site = request.method() == Method::POST
        && request
            .headers()
            .get("sec-fetch-site")
            .is_some_and(|v| v.as_bytes() != b"same-origin");
    if cross_site {
        return (
            StatusCode::FORBIDDEN,
            "a form of another site may not change anything here",
        )
            .into_response();
    }
    next.run(request).await
}

/// Headers every console answer carries: no scripts, no inline styles, no framing, no
/// referrer (a portal link's token must not leak), no caching of pages with data.
async fn defences(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// The signed-in session of a request, with the caller it acts as.
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub(crate) grant: Grant,
    pub(crate) caller: Caller,
    /// The session's CSRF token, for the page's forms.
    pub(crate) csrf: String,
}

impl Viewer {
    /// Who the header shows.
    pub(crate) fn who(&self) -> String {
        match &self.grant.partner {
            Some(p) => format!("{p} ({})", self.grant.scope.as_str()),
            None => format!("operator ({})", self.grant.scope.as_str()),
        }
    }

    pub(crate) fn manages(&self) -> bool {
        self.grant.scope == Scope::Manage
    }
}

impl FromRequestParts<ApiState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, api: &ApiState) -> Result<Self, Response> {
        let console = &api.console;
        let token = parts
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                c.trim()
                    .strip_prefix(console.cookie_name())
                    .and_then(|c| c.strip_prefix('='))
                    .map(str::to_string)
            });
        let grant = token
            .and_then(|t| Grant::verify(&console.secret, &t, Kind::Session, now()).ok())
            .filter(|g| !console.ended(g));
        let Some(grant) = grant else {
            return Err(Redirect::to("/console/login").into_response());
        };
        let caller = match &grant.partner {
            Some(p) => Caller::Partner(p.clone()),
            None => Caller::Admin,
        };
        let csrf = grant::csrf_token(&console.secret, &grant.id);
        Ok(Viewer {
            grant,
            caller,
            csrf,
        })
    }
}

/// A call to the partner API, in-process, as a session's caller: the API's own
/// handlers, checks and audit, its JSON back.
#[derive(Debug)]
pub(crate) struct ApiCall<'a> {
    pub(crate) api: &'a ApiState,
    pub(crate) viewer: &'a Viewer,
}

impl ApiCall<'_> {
    pub(crate) async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.send(Method::GET, uri, None, "").await
    }

    pub(crate) async fn post(&self, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(Method::POST, uri, body, "").await
    }

    /// A POST of a hazardous operation, with the code the form carried (`X-Second-Factor`;
    /// empty: none).
    pub(crate) async fn post_with_code(
        &self,
        uri: &str,
        body: Option<Value>,
        code: &str,
    ) -> (StatusCode, Value) {
        self.send(Method::POST, uri, body, code).await
    }

    /// A subscription's stats over `window` (`1h`, `24h`), answered from the last 30 s
    /// when asked then.
    pub(crate) async fn stats(&self, path: &str, window: &'static str) -> Option<Value> {
        const FRESH: std::time::Duration = std::time::Duration::from_secs(30);
        let key = (self.viewer.grant.partner.clone(), path.to_string(), window);
        let figures = &self.api.console.figures;
        if let Some((at, v)) = figures.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            if at.elapsed() < FRESH {
                return Some(v.clone());
            }
        }
        let (status, v) = self
            .get(&format!("/v1/subscriptions/{path}/stats?window={window}"))
            .await;
        if !status.is_success() {
            return None;
        }
        let mut figures = figures.lock().unwrap_or_else(|p| p.into_inner());
        figures.retain(|_, (at, _)| at.elapsed() < FRESH);
        figures.insert(key, (std::time::Instant::now(), v.clone()));
        Some(v)
    }

    /// A PATCH, with the code the form carried (empty: none).
    pub(crate) async fn patch(&self, uri: &str, body: Value, code: &str) -> (StatusCode, Value) {
        self.send(Method::PATCH, uri, Some(body), code).await
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
        code: &str,
    ) -> (StatusCode, Value) {
        let body = match body {
            Some(v) => Body::from(v.to_string()),
            None => Body::empty(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json");
        if !code.trim().is_empty() {
            request = request.header(crate::api::second_factor::HEADER, code.trim());
        }
        let request = request
            .extension(crate::api::InProcess(self.viewer.caller.clone()))
            .body(body);
        let Ok(request) = request else {
            return (StatusCode::BAD_REQUEST, Value::Null);
        };
        let router = self
            .api
            .console
            .router
            .get_or_init(|| crate::api::router(self.api.clone()))
            .clone();
        let Ok(response) = router.oneshot(request).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
            .await
            .unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}
