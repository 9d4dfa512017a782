//! Child processes: binaries of the workspace, killed by pid when dropped; waiting for a condition or for consumer groups to settle.

use super::*;

/// The path of a workspace binary, built next to the test executables.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run scripts/test.sh (it builds the binaries)",
        path.display()
    );
    path
}

/// Runs a workspace binary to completion with `stdin` as input.
pub fn run(name: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(binary(name))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait")
}

/// A long-running child process, killed by pid when dropped.
#[derive(Debug)]
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `dispatcher <args>` with its log in `log` and waits for its
/// `listening on http://ADDR` line; returns the process and `http://ADDR`.
pub(crate) fn spawn_listening(args: &[String], log: &std::path::Path) -> (Running, String) {
    use std::io::{BufRead, BufReader};
    // BENCH_DISPATCHER_BIN: another build (an earlier version, measured the same way).
    let program = std::env::var("BENCH_DISPATCHER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| binary("dispatcher"));
    let mut child = Command::new(program)
        .args(args)
        // E2E_DISPATCHER_LOG (a RUST_LOG filter) to see more of a failing test's dispatcher.
        .env(
            "RUST_LOG",
            std::env::var("E2E_DISPATCHER_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("spawn dispatcher");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("dispatcher did not start: {}", tail(log)))
        .to_string();
    (Running(child), addr)
}

/// The last lines of a log file, for failure messages.
pub fn tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    format!(
        "--- {} (last lines) ---\n{}",
        path.display(),
        lines[lines.len().saturating_sub(30)..].join("\n")
    )
}

/// Waits until the consumer groups of `instances` have settled: every member's last
/// rebalance (from each instance's `/status`) was an assignment and none happened for
/// `quiet`. False if that has not happened within `timeout`.
pub async fn groups_settled(
    instances: &[&DispatcherProcess],
    quiet: Duration,
    timeout: Duration,
) -> bool {
    let state = || async {
        let mut total = (0, true);
        for d in instances {
            let (seen, assigned) = d.rebalances().await.unwrap_or((0, false));
            total = (total.0 + seen, total.1 && assigned);
        }
        total
    };
    let deadline = Instant::now() + timeout;
    let (mut seen, mut since) = (state().await, Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = state().await;
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if seen.1 && since.elapsed() >= quiet {
            return true;
        }
    }
    false
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    check()
}

/// Calls `attempt` every 100 ms until it gives `Some` (returned) or `timeout` passes
/// (`None`): [`eventually`] for a check that is itself a request.
pub async fn poll<T, Fut>(timeout: Duration, mut attempt: impl FnMut() -> Fut) -> Option<T>
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = attempt().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
