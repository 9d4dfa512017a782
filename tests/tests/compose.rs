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
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).expect("docker-compose.yml");
    serde_yaml::from_str(&text).expect("docker-compose.yml is valid YAML")
}

fn help(args: &[&str]) -> String {
    let out = e2e::run("producer", args, "");
    assert!(out.status.success(), "producer {args:?} --help failed");
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
    v.as_sequence().map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

#[test]
fn services_are_buildable_and_use_only_settings_the_code_reads() {
    let doc = compose();
    let services = doc["services"].as_mapping().expect("services");
    for want in ["kafka", "schema-registry", "topics", "producer-ingest", "prometheus"] {
        assert!(services.contains_key(want), "service {want} missing");
    }
    for (name, service) in services {
        let name = name.as_str().expect("name");
        let has_image = service["image"].as_str().is_some();
        let build = service["build"].as_str();
        assert!(has_image || build.is_some(), "{name}: neither image nor build");
        if let Some(context) = build {
            assert!(root().join(context).join("Dockerfile").exists(), "{name}: no Dockerfile in {context}");
            let command = string_list(&service["command"]);
            assert_eq!(command.first().map(String::as_str), Some("producer"), "{name}: runs a binary the image has");
            let sub = &command[1];
            let known = env_vars(&help(&[sub, "--help"]));
            let env = service["environment"].as_mapping().expect("environment");
            for key in env.keys() {
                let key = key.as_str().expect("key");
                assert!(known.contains(key), "{name}: {key} is not read by `producer {sub}` (reads {known:?})");
            }
            // Subcommand flags in the command line must exist too.
            let sub_help = help(&[sub, "--help"]);
            for flag in command.iter().filter(|a| a.starts_with("--")) {
                assert!(sub_help.contains(flag.as_str()), "{name}: `producer {sub}` has no {flag}");
            }
        }
    }
    // The ingest listens where its port mapping and Prometheus point.
    let ingest = &services["producer-ingest"];
    let listen = ingest["environment"]["INGEST_LISTEN"].as_str().expect("INGEST_LISTEN");
    let port = listen.rsplit(':').next().expect("port");
    assert!(string_list(&ingest["ports"]).iter().any(|p| p.ends_with(&format!(":{port}"))), "ingest port mapping");
    let prometheus: Value = serde_yaml::from_str(&std::fs::read_to_string(root().join("deploy/prometheus.yml")).expect("prometheus.yml")).expect("yaml");
    let targets: Vec<String> = prometheus["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
        .iter()
        .flat_map(|job| job["static_configs"].as_sequence().cloned().unwrap_or_default())
        .flat_map(|sc| string_list(&sc["targets"]))
        .collect();
    assert!(targets.contains(&format!("producer-ingest:{port}")), "{targets:?}");
    for target in targets {
        let host = target.split(':').next().expect("host");
        assert!(services.contains_key(host), "prometheus scrapes {target}, no such service");
    }
}

#[test]
fn the_topics_compose_creates_match_the_local_stack() {
    let doc = compose();
    let command = string_list(&doc["services"]["topics"]["command"]);
    let topics = std::fs::read_to_string(root().join("config/topics.txt")).expect("topics.txt");
    let name = &command[command.iter().position(|a| a == "--name").expect("--name") + 1];
    let partitions = &command[command.iter().position(|a| a == "--partitions").expect("--partitions") + 1];
    assert!(topics.lines().any(|l| l.split_whitespace().take(2).eq([name.as_str(), partitions.as_str()])), "{name} {partitions} not in config/topics.txt");
}
