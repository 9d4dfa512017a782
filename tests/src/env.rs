//! The suite's environment: the broker and registry `scripts/test.sh` started, unique names, free ports, the temp directory.

use super::*;

pub(crate) fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests with scripts/test.sh, which starts the broker and the registry")
    })
}

/// Bootstrap servers of the test broker.
pub fn brokers() -> String {
    required_env("KAFKA_BOOTSTRAP_SERVERS")
}

/// Base URL of the test registry.
pub fn registry_url() -> String {
    required_env("SCHEMA_REGISTRY_URL")
}

/// `prefix` plus a random suffix, for topics and groups no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// An address on 127.0.0.1 where nothing listens.
pub fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr.to_string()
}

pub(crate) fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("orderhooks-e2e");
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
