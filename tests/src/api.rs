//! `dispatcher api` processes and their tokens.

use super::*;

/// The admin token of [`api_tokens`].
pub const ADMIN_TOKEN: &str = "admin-token-for-tests-0001";

/// The API token of `partner` in [`api_tokens`].
pub fn partner_token(partner: &str) -> String {
    format!("token-of-{partner}-0123456789")
}

/// A tokens file for `dispatcher api`: the admin and each partner's token.
pub fn api_tokens(partners: &[&str]) -> String {
    let mut yaml = format!("admin: [\"{ADMIN_TOKEN}\"]\npartners:\n");
    for p in partners {
        yaml.push_str(&format!("  {p}: [\"{}\"]\n", partner_token(p)));
    }
    yaml
}

/// A running `dispatcher api`; stopped by pid when dropped.
#[derive(Debug)]
pub struct ApiProcess {
    pub process: Running,
    pub log: PathBuf,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Where it writes its audit trail.
    pub audit_topic: String,
    pub(crate) tokens_file: PathBuf,
    /// The delivery-log view's file it made (removed on drop).
    pub(crate) view: Option<PathBuf>,
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tokens_file);
        if let Some(view) = &self.view {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", view.display()));
            }
        }
    }
}

impl ApiProcess {
    /// `POST /v1/subscriptions` with `body` as `token`: (status, body).
    pub async fn create_subscription(
        &self,
        token: String,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.call(
            reqwest::Method::POST,
            "/v1/subscriptions",
            Some(&token),
            Some(body),
        )
        .await
    }

    /// Waits (at most 30 s) until subscription `id`'s verification is `state`; returns
    /// the subscription.
    pub async fn wait_verification(&self, token: &str, id: &str, state: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, s) = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/subscriptions/{id}"),
                    Some(token),
                    None,
                )
                .await;
            if status == 200 && s["verification"]["state"] == state {
                return s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "subscription `{id}` did not reach `{state}` within 30 s: {status} {s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A JSON call: (status, body; `Null` when the body is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let client = reqwest::Client::new();
        let mut request = client.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.expect("api call");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }
}
