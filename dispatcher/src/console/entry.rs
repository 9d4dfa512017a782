//! Getting in and out: the admin sign-in, portal links (a confirmation page, then the
//! POST that uses the link up), sign-out; and the checks every change makes.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::grant::{self, Grant, Kind, Refused, Scope};
use super::pages::{notice, render, unavailable, Layout, Notice};
use super::{now, Viewer, SESSION_SECS};
use crate::api::ApiState;

#[derive(Template)]
#[template(path = "login.html")]
struct Login {
    layout: Layout,
    error: Option<String>,
}

pub(super) async fn login_form() -> Response {
    render(
        StatusCode::OK,
        Login {
            layout: Layout::anonymous(),
            error: None,
        },
    )
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    token: String,
}

/// An admin token starts an operator's session (`manage`); anything else is refused
/// with the form again.
pub(super) async fn login(State(api): State<ApiState>, Form(form): Form<LoginForm>) -> Response {
    let mut headers = axum::http::HeaderMap::new();
    if let Ok(v) = format!("Bearer {}", form.token.trim()).parse() {
        headers.insert(header::AUTHORIZATION, v);
    }
    match api.tokens.caller(&headers) {
        Ok(crate::api::Caller::Admin) => {
            let session = Grant::new(Kind::Session, None, Scope::Manage, now(), SESSION_SECS);
            start(&api, &session)
        }
        _ => render(
            StatusCode::UNAUTHORIZED,
            Login {
                layout: Layout::anonymous(),
                error: Some(
                    "That is not an admin token. Partners open the portal link they were sent."
                        .into(),
                ),
            },
        ),
    }
}

/// Sets the session cookie and goes to the overview.
fn start(api: &ApiState, session: &Grant) -> Response {
    (
        [(header::SET_COOKIE, api.console.cookie(session))],
        Redirect::to("/console/"),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    pub(super) csrf: String,
    /// A code of the partner's authenticator, for the operations that ask for one.
    #[serde(default)]
    pub(super) second_factor: String,
}

pub(super) async fn logout(
    State(api): State<ApiState>,
    viewer: Viewer,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Some(refused) = check_csrf(&api, &viewer, &form.csrf) {
        return refused;
    }
    if let Err(error) = api.console.revoke(&viewer.grant).await {
        tracing::error!(%error, "console sign-out");
        return unavailable("The console could not record the sign-out. Try again in a minute.");
    }
    (
        [(header::SET_COOKIE, api.console.cleared())],
        Redirect::to("/console/login"),
    )
        .into_response()
}

/// `None` when `given` is the session's CSRF token; else the refusal.
pub(super) fn check_csrf(api: &ApiState, viewer: &Viewer, given: &str) -> Option<Response> {
    (!grant::csrf_ok(&api.console.secret, &viewer.grant.id, given)).then(|| {
        notice(
            StatusCode::FORBIDDEN,
            Layout::of(viewer),
            "Form expired",
            "This form is not from your current session. Open the page again and retry.",
        )
    })
}

/// A change needs a `manage` session and the session's CSRF token.
pub(super) fn check_change(api: &ApiState, viewer: &Viewer, csrf: &str) -> Option<Response> {
    if !viewer.manages() {
        return Some(notice(
            StatusCode::FORBIDDEN,
            Layout::of(viewer),
            "Not allowed",
            "Your session may look, not change: ask for a portal link with manage access.",
        ));
    }
    check_csrf(api, viewer, csrf)
}

// ---- Portal links ----

#[derive(Template)]
#[template(path = "link.html")]
struct LinkPage {
    layout: Layout,
    whom: String,
    scope: &'static str,
    token: String,
}

/// Why a link cannot be opened, as a page.
fn link_refused(why: &str) -> Response {
    let (status, message) = match why {
        "used" => (
            StatusCode::GONE,
            "This portal link was used already: each link opens the console once. Ask for a new one.",
        ),
        "expired" => (
            StatusCode::GONE,
            "This portal link has expired. Ask for a new one.",
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "This is not a valid portal link. Check that it was copied whole.",
        ),
    };
    render(
        status,
        Notice {
            layout: Layout::anonymous(),
            heading: "This link cannot be used".into(),
            message: message.into(),
            next: None,
        },
    )
}

/// The link `token` carries, or why it cannot be used (`used`, `expired`, `invalid`).
fn checked_link(api: &ApiState, token: &str) -> Result<Grant, &'static str> {
    let link =
        Grant::verify(&api.console.secret, token, Kind::Link, now()).map_err(|r| match r {
            Refused::Expired => "expired",
            Refused::Invalid => "invalid",
        })?;
    if api.console.link_used(&link.id) {
        return Err("used");
    }
    if api.console.ended(&link) {
        // Issued before the partner's sessions were ended.
        return Err("expired");
    }
    Ok(link)
}

/// `GET /console/link/{token}`: what the link opens, and a button to open it. (Only the
/// POST uses it up: a chat's link preview fetching the URL must not.)
pub(super) async fn open_link(State(api): State<ApiState>, Path(token): Path<String>) -> Response {
    let link = match checked_link(&api, &token) {
        Ok(link) => link,
        Err(why) => return link_refused(why),
    };
    render(
        StatusCode::OK,
        LinkPage {
            layout: Layout::anonymous(),
            whom: link
                .partner
                .clone()
                .unwrap_or_else(|| "every partner (operator)".into()),
            scope: link.scope.as_str(),
            token,
        },
    )
}

/// `POST /console/link/{token}`: uses the link up and starts its session (audited).
pub(super) async fn use_link(State(api): State<ApiState>, Path(token): Path<String>) -> Response {
    let link = match checked_link(&api, &token) {
        Ok(link) => link,
        Err(why) => return link_refused(why),
    };
    let now = now();
    match api.console.take_link(&link.id, link.exp).await {
        Ok(true) => {}
        Ok(false) => return link_refused("used"),
        Err(error) => {
            tracing::error!(%error, "console link");
            return unavailable(
                "The console could not record this sign-in. Try again in a minute.",
            );
        }
    }
    let session = Grant::new(
        Kind::Session,
        link.partner.clone(),
        link.scope,
        now,
        SESSION_SECS,
    );
    let audited = api
        .audit
        .record_id(
            "console",
            "portal-link-opened",
            &format!("portal-link/{}", link.id),
            link.partner.as_deref(),
            serde_json::json!({ "scope": link.scope.as_str(), "session": session.id }),
        )
        .await;
    if let Err(error) = audited {
        tracing::error!(%error, "console audit");
        return unavailable("The console could not record this sign-in. Try again in a minute.");
    }
    start(&api, &session)
}
