//! Process plumbing shared by the binaries, so each does it the same way: graceful
//! shutdown on SIGINT/SIGTERM, structured logs on stderr, one Prometheus recorder per
//! process, and `key=value` flags. Every binary linking this crate allocates with
//! mimalloc: under many small per-request allocations across threads (HTTP requests,
//! Kafka records) glibc's malloc took about a sixth of the dispatcher's CPU.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Parses a `key=value` flag (librdkafka settings, topic settings).
pub fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("`{text}` is not key=value"))
}

/// The process-wide Prometheus recorder, installed on first use with `buckets` for the
/// named histograms. When another recorder is already installed (an embedding program's),
/// an unattached one is returned: it renders nothing rather than failing.
pub fn prometheus(buckets: &[(&str, &[f64])]) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = buckets
                .iter()
                .fold(PrometheusBuilder::new(), |b, (name, edges)| {
                    b.set_buckets_for_metric(Matcher::Full((*name).to_string()), edges)
                        .unwrap_or_else(|_| PrometheusBuilder::new())
                });
            match builder.install_recorder() {
                Ok(handle) => handle,
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_flags_are_parsed_or_named() {
        assert_eq!(
            parse_key_value(" linger.ms = 20 "),
            Ok(("linger.ms".into(), "20".into()))
        );
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(
            parse_key_value("nonsense"),
            Err("`nonsense` is not key=value".into())
        );
        assert!(parse_key_value("=x").is_err());
    }
}
