//! `dispatcher run` refuses settings that cannot work before it connects to anything,
//! naming the flag (nothing is clamped silently).

use e2e::{closed_port, run};

fn refused(args: &[&str], names: &[&str]) {
    let brokers = closed_port();
    let mut all = vec!["--brokers", brokers.as_str(), "run"];
    all.extend_from_slice(args);
    let out = run("dispatcher", &all, "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted\n{stderr}");
    for name in names {
        assert!(
            stderr.contains(name),
            "{args:?}: the error names {name}\n{stderr}"
        );
    }
}

#[test]
fn settings_that_cannot_work_are_refused_with_the_flag_named() {
    refused(&["--breaker-failures", "0"], &["--breaker-failures"]);
    refused(&["--health-interval-ms", "5"], &["--health-interval-ms"]);
    refused(&["--max-buffered", "0"], &["--max-buffered"]);
    refused(&["--partitions", "0"], &["--partitions"]);
    refused(
        &["--degraded-age-secs", "600", "--failing-age-secs", "60"],
        &["--failing-age-secs", "--degraded-age-secs"],
    );
    // A stage's option names a stage that exists (a typo would otherwise be ignored).
    refused(
        &["--kafka-option", "lane:fetch.wait.max.ms=100"],
        &["lane:fetch.wait.max.ms", "no stage `lane`", "lanes:"],
    );
    refused(
        &["--kafka-option", "lanes:enable.auto.offset.store=true"],
        &["lanes:enable.auto.offset.store", "the dispatcher's to set"],
    );
    refused(
        &[
            "--kafka-option",
            "lanes:partition.assignment.strategy=range",
        ],
        &[
            "lanes:partition.assignment.strategy",
            "the dispatcher's to set",
        ],
    );
}
