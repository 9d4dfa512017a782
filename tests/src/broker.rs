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
    storage: BrokerStorage,
    pub brokers: String,
}

/// Where a [`PrivateBroker`] keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerStorage {
    /// SQLite in the broker's directory, with the indexes `scripts/nisshi-indexes.py`
    /// adds (as `scripts/stack.sh` runs it): durable across a broker restart.
    Sqlite,
    /// SQLite as nisshi makes it, without our indexes (the stack before; benchmarks).
    SqliteWithoutIndexes,
    /// nisshi's in-process object store (`memory://`): lost when the broker stops, which
    /// only tests that never restart the broker may use.
    Memory,
}

impl PrivateBroker {
    /// A broker with SQLite storage, as `scripts/stack.sh` starts it.
    pub fn start() -> Self {
        Self::with_storage(BrokerStorage::Sqlite)
    }

    pub fn with_storage(storage: BrokerStorage) -> Self {
        let dir = tempfile_dir().join(unique("broker"));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let addr = closed_port();
        let process = spawn_nisshi(&dir, &addr, storage);
        Self {
            process,
            dir,
            storage,
            brokers: addr,
        }
    }

    /// The broker's process id (its CPU time in `/proc`).
    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// SIGKILL, then a new broker process on the same port and data: what was
    /// acknowledged before must still be there.
    pub fn kill9_and_restart(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        self.process = spawn_nisshi(&self.dir, &self.brokers, self.storage);
    }
}

/// Starts nisshi in `dir` on `addr` and waits until it listens (and, for
/// [`BrokerStorage::Sqlite`], until our indexes are in place).
fn spawn_nisshi(dir: &std::path::Path, addr: &str, storage: BrokerStorage) -> Running {
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
    let url = format!("tcp://{addr}");
    // NISSHI_SQLITE_OPTIONS: options of the SQLite storage URL (`mode=direct`, ...), to
    // measure them.
    let sqlite = match std::env::var("NISSHI_SQLITE_OPTIONS") {
        Ok(options) if !options.is_empty() => format!("sqlite://nisshi.db?{options}"),
        _ => "sqlite://nisshi.db".to_string(),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("nisshi.log"))
        .expect("log");
    // nisshi resolves the sqlite path against its working directory: run it there.
    let child = Command::new(nisshi)
        .current_dir(dir)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            match storage {
                BrokerStorage::Sqlite | BrokerStorage::SqliteWithoutIndexes => &sqlite,
                BrokerStorage::Memory => "memory://nisshi/",
            },
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start nisshi");
    let process = Running(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nisshi did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    if storage == BrokerStorage::Sqlite {
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nisshi-indexes.py");
        let indexed = Command::new("python3")
            .arg(script)
            .arg(dir.join("nisshi.db"))
            .status()
            .expect("python3");
        assert!(indexed.success(), "scripts/nisshi-indexes.py failed");
    }
    process
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
