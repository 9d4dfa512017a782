//! The partner side: a receiver in a child process of its own, answering 204 and counting.

use super::*;

/// The receiver runs in a child process (this binary, re-executed with BENCH_ROLE=receiver),
/// as a partner's server would: wrk, the bare loop and the lane all reach it over loopback
/// and none of them shares its runtime. It answers 204 and counts; `GET /count` reads the
/// count.
pub(crate) fn receiver_main() {
    // One thread, like wrk's one: on two cores more threads only add context switches.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let count = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&count);
        let app = axum::Router::new()
            .route(
                "/webhook",
                post(move || {
                    let c = Arc::clone(&c);
                    async move {
                        c.fetch_add(1, Ordering::Relaxed);
                        StatusCode::NO_CONTENT
                    }
                }),
            )
            .route(
                "/count",
                axum::routing::get(move || {
                    let count = Arc::clone(&count);
                    async move { count.load(Ordering::Relaxed).to_string() }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("http://{}", listener.local_addr().expect("addr"));
        let _ = axum::serve(listener, app).await;
    });
}

pub(crate) struct Receiver {
    child: std::process::Child,
    base: String,
    client: reqwest::Client,
}

impl Receiver {
    pub(crate) fn start() -> Self {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().expect("exe"))
            .env("BENCH_ROLE", "receiver")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the receiver process");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("receiver address");
        Self {
            child,
            base: line.trim().to_string(),
            client: reqwest::Client::new(),
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("{}/webhook", self.base)
    }

    pub(crate) async fn count(&self) -> u64 {
        let text = self
            .client
            .get(format!("{}/count", self.base))
            .send()
            .await
            .expect("count")
            .text()
            .await
            .expect("count body");
        text.parse().expect("count is a number")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
