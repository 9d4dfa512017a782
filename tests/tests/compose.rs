//! docker-compose.yml cannot run here (no Docker engine); this keeps it consistent with
//! the code: every service has an image or a build with a Dockerfile, our services only
//! set environment variables our binaries read, their ports match what they listen on,
//! their commands are real subcommands, and Prometheus scrapes real targets.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_yaml::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn compose() -> Value {
    let text =
        std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml");
    serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML")
}

fn help(binary: &str, args: &[&str]) -> String {
    let out = e2e::run(binary, args, "");
    assert!(out.status.success(), "{binary} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Environment variables named in `--help` output (`[env: NAME=...]`).
fn env_vars(help: &str) -> BTreeSet<String> {
    help.split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .map(str::to_string)
        .collect()
}

fn string_list(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn services_are_buildable_and_use_only_settings_the_code_reads() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    for want in [
        "kafka",
        "schema-registry",
        "topics",
        "producer-ingest",
        "subscriptions",
        "dispatcher",
        "partner",
        "prometheus",
    ] {
        assert!(services.contains_key(want), "service {want} missing");
    }
    for (name, service) in services {
        let name = name.as_str().expect("name");
        let has_image = service["image"].as_str().is_some();
        let build = service["build"].as_str();
        assert!(
            has_image || build.is_some(),
            "{name}: neither image nor build"
        );
        if let Some(context) = build {
            assert!(
                root().join(context).join("Dockerfile").exists(),
                "{name}: no Dockerfile in {context}"
            );
            let command = string_list(&service["command"]);
            let binary = command.first().map(String::as_str).unwrap_or_default();
            assert!(
                [
                    "producer",
                    "dispatcher",
                    "partner-receiver",
                    "schema-registry"
                ]
                .contains(&binary),
                "{name}: runs `{binary}`, which the image does not have"
            );
            // The subcommand path: the words before the first flag or file path.
            let mut args: Vec<&str> = command[1..]
                .iter()
                .map(String::as_str)
                .take_while(|a| !a.starts_with('-') && !a.contains('/'))
                .collect();
            args.push("--help");
            let sub_help = help(binary, &args);
            let known = env_vars(&sub_help);
            let env = service["environment"].as_mapping().expect("environment");
            for key in env.keys() {
                let key = key.as_str().expect("key");
                assert!(
                    known.contains(key),
                    "{name}: {key} is not read by `{binary} {args:?}` (reads {known:?})"
                );
            }
            for flag in command.iter().filter(|a| a.starts_with("--")) {
                assert!(
                    sub_help.contains(flag.as_str()),
                    "{name}: `{binary} {args:?}` has no {flag}"
                );
            }
        }
    }
    // The ingest listens where its port mapping and Prometheus point.
    let ingest = &services["producer-ingest"];
    let listen = ingest["environment"]["INGEST_LISTEN"]
        .as_str()
        .expect("INGEST_LISTEN");
    let port = listen.rsplit(':').next().expect("port");
    assert!(
        string_list(&ingest["ports"])
            .iter()
            .any(|p| p.ends_with(&format!(":{port}"))),
        "ingest port mapping"
    );
    let prometheus: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/prometheus.yml")).expect("prometheus.yml"),
    )
    .expect("yaml");
    let targets: Vec<String> = prometheus["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| {
            job["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|sc| string_list(&sc["targets"]))
        .collect();
    assert!(
        targets.contains(&format!("producer-ingest:{port}")),
        "{targets:?}"
    );
    for target in targets {
        let host = target.split(':').next().expect("host");
        assert!(
            services.contains_key(host),
            "prometheus scrapes {target}, no such service"
        );
    }
}

#[test]
fn the_topics_compose_creates_match_the_local_stack() {
    let doc = compose();
    let command = string_list(&doc["services"]["topics"]["command"]);
    let topics = std::fs::read_to_string(root().join("config/topics.txt")).expect("topics.txt");
    let name = &command[command.iter().position(|a| a == "--name").expect("--name") + 1];
    let partitions = &command[command
        .iter()
        .position(|a| a == "--partitions")
        .expect("--partitions")
        + 1];
    assert!(
        topics.lines().any(|l| l
            .split_whitespace()
            .take(2)
            .eq([name.as_str(), partitions.as_str()])),
        "{name} {partitions} not in config/topics.txt"
    );
}

#[test]
fn the_example_subscriptions_are_valid_under_the_compose_settings() {
    let doc = compose();
    let env = &doc["services"]["subscriptions"]["environment"];
    let allow: Vec<String> = env["DISPATCHER_SSRF_ALLOWLIST"]
        .as_str()
        .expect("allowlist")
        .split(',')
        .map(str::to_string)
        .collect();
    let plain_http = env["DISPATCHER_ALLOW_HTTP"].as_str() == Some("true");
    let allowlist = dispatcher::ssrf::Allowlist::parse(&allow)
        .expect("allowlist parses")
        .with_plain_http(plain_http);
    let text = std::fs::read_to_string(root().join("config/subscriptions.example.yaml"))
        .expect("example file");
    let subscriptions =
        dispatcher::subscription::SubscriptionFile::parse(&text, &allowlist).expect("valid");
    // The example partner's secret is the one the partner service verifies with.
    let secret = doc["services"]["partner"]["environment"]["RECEIVER_SECRET"]
        .as_str()
        .expect("secret");
    assert!(subscriptions
        .iter()
        .all(|s| s.secrets.iter().any(|x| x == secret)));
    let command = string_list(&doc["services"]["subscriptions"]["command"]);
    assert_eq!(
        command.last().map(String::as_str),
        Some("/etc/orderhooks/subscriptions.example.yaml"),
        "the Dockerfile copies config/ there"
    );
}
