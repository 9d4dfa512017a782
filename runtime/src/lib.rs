//! Process plumbing shared by the binaries, so each does it the same way: graceful
//! shutdown on SIGINT/SIGTERM, structured logs on stderr, one Prometheus recorder per
//! process, and `key=value` flags. Every binary linking this crate allocates with
//! mimalloc: under many small per-request allocations across threads (HTTP requests,
//! Kafka records) glibc's malloc took about a sixth of the dispatcher's CPU.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps the kernel from backing this process's heap with transparent huge pages.
/// mimalloc asks for them (`madvise(MADV_HUGEPAGE)`) where the kernel allows it; a
/// dispatcher serving 1,000 partners then held 304-316 MB resident against 242-250 MB
/// without (2 MB pages mostly empty; docs/BENCHMARKS.md, "Thousands of partners").
/// Linux only; elsewhere nothing.
pub fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

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

/// Buckets of every histogram whose caller named none (seconds, 1 ms to 30 s): without
/// them a histogram renders as a summary, with no `_bucket` series to aggregate.
const DEFAULT_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0,
];

/// The process-wide Prometheus recorder, installed on first use with `buckets` for the
/// named histograms and [`DEFAULT_BUCKETS`] for the others. A later call's buckets cannot
/// change the installed recorder: its histograms get the defaults, and a warning names
/// them (one process embedding two of our components, e.g. tests). When another
/// recorder is already installed (an embedding program's), an unattached one is
/// returned: it renders nothing rather than failing.
pub fn prometheus(buckets: &[(&str, &[f64])]) -> PrometheusHandle {
    static HANDLE: OnceLock<(PrometheusHandle, Vec<String>)> = OnceLock::new();
    let (handle, configured) = HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&DEFAULT_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let builder = buckets.iter().fold(builder, |b, (name, edges)| {
            b.set_buckets_for_metric(Matcher::Full((*name).to_string()), edges)
                .unwrap_or_else(|_| PrometheusBuilder::new())
        });
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            Err(_) => PrometheusBuilder::new().build_recorder().handle(),
        };
        (handle, buckets.iter().map(|(n, _)| n.to_string()).collect())
    });
    for (name, _) in buckets {
        if !configured.iter().any(|c| c == name) {
            tracing::warn!(metric = %name, "the Prometheus recorder was installed before this metric's buckets were known: it uses the default buckets");
        }
    }
    handle.clone()
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

    #[test]
    fn every_histogram_renders_buckets_whoever_installed_the_recorder() {
        let first = prometheus(&[("first_seconds", &[0.1, 1.0])]);
        // A second component of the same process, with buckets of its own.
        let second = prometheus(&[("second_seconds", &[0.5])]);
        metrics::histogram!("first_seconds").record(0.2);
        metrics::histogram!("second_seconds").record(0.2);
        let text = second.render();
        assert!(text.contains("first_seconds_bucket{le=\"1\"} 1"), "{text}");
        assert!(
            text.contains("second_seconds_bucket{le=\"0.25\"} 1"),
            "{text}"
        );
        assert_eq!(first.render(), text, "one recorder");
    }
}
