//! A scripted Schema Registry follower, for registry hiccups.

use super::*;

/// A Schema Registry follower in front of the suite's registry (tests of registry
/// hiccups): answers the status set with [`FlakyRegistry::answer`] to every request (a
/// Confluent-style 404 "Schema not found" for 404), or forwards the request when it is
/// 0. One request per connection.
#[derive(Debug, Clone)]
pub struct FlakyRegistry {
    pub url: String,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FlakyRegistry {
    /// Starts one answering `status` (0: forward).
    pub async fn start(status: u16) -> Self {
        use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let this = Self {
            url: format!("http://{}", listener.local_addr().expect("addr")),
            status: Arc::new(AtomicU16::new(status)),
            refused: Arc::new(AtomicUsize::new(0)),
        };
        let (upstream, serving) = (registry_url(), this.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (upstream, serving) = (upstream.clone(), serving.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("/").to_string();
                    let (code, body) = match serving.status.load(Ordering::SeqCst) {
                        0 => {
                            let answer = reqwest::get(format!("{upstream}{path}"))
                                .await
                                .expect("upstream");
                            let code = answer.status().as_u16();
                            (code, answer.text().await.unwrap_or_default())
                        }
                        404 => (
                            404,
                            r#"{"error_code":40403,"message":"Schema not found"}"#.to_string(),
                        ),
                        s => (s, format!(r#"{{"error_code":{s},"message":"no"}}"#)),
                    };
                    if code >= 400 {
                        serving.refused.fetch_add(1, Ordering::SeqCst);
                    }
                    let reply = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: application/vnd.schemaregistry.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        this
    }

    /// From now on answer `status` (0: forward to the real registry).
    pub fn answer(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// Requests answered with an error so far.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}
