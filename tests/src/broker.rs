//! A nisshi broker of one test's own.

use super::*;

/// A nisshi broker of one test's own, on a free port with a fresh data directory; stopped
/// by pid and its directory removed when dropped. For the heavy crash tests: nisshi slows
/// down with the data it holds and the consumers polling it (docs/ARCHITECTURE.md), so
/// they do not share the suite's broker.
#[derive(Debug)]
pub struct PrivateBroker {
    process: Running,
    dir: PathBuf,
    pub brokers: String,
}

/// Where a [`PrivateBroker`] keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStorage {
    /// SQLite in the broker's directory: durable across a broker restart.
    Sqlite,
    /// nisshi's in-process object store (`memory://`): lost when the broker stops, which
    /// only tests that never restart the broker may use.
    Memory,
}

impl PrivateBroker {
    /// A broker with SQLite storage.
    pub fn start() -> Self {
        Self::with_storage(BrokerStorage::Sqlite)
    }

    pub fn with_storage(storage: BrokerStorage) -> Self {
        let nisshi = std::env::var("NISSHI_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("CARGO_HOME").unwrap_or_else(|_| {
                    format!("{}/.cargo", std::env::var("HOME").unwrap_or_default())
                }))
                .join("bin/nisshi")
            });
        assert!(
            nisshi.exists(),
            "{} missing: scripts/install-nisshi.sh",
            nisshi.display()
        );
        let dir = tempfile_dir().join(unique("broker"));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let addr = closed_port();
        let url = format!("tcp://{addr}");
        // nisshi resolves the sqlite path against its working directory: run it there.
        let child = Command::new(nisshi)
            .current_dir(&dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                match storage {
                    BrokerStorage::Sqlite => "sqlite://nisshi.db",
                    BrokerStorage::Memory => "memory://nisshi/",
                },
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("nisshi.log")).expect("log"))
            .spawn()
            .expect("start nisshi");
        let process = Running(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "nisshi did not listen on {addr}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            process,
            dir,
            brokers: addr,
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        if std::thread::panicking() {
            eprintln!(
                "test failed: broker data and log kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
