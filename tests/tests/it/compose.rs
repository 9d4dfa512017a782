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
        "grafana",
        "api",
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
    let allowlist = dispatcher::webhook::ssrf::Allowlist::parse(&allow)
        .expect("allowlist parses")
        .with_plain_http(plain_http);
    let text = std::fs::read_to_string(root().join("config/subscriptions.example.yaml"))
        .expect("example file");
    let subscriptions =
        dispatcher::subscriptions::SubscriptionFile::parse(&text, &allowlist).expect("valid");
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

/// Every `dispatcher_*` metric named in `text` (histogram suffixes removed).
fn dispatcher_metrics_named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("dispatcher_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        names.insert(name);
    }
    names
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The PromQL expressions of the Grafana dashboard, with its `$partner` variable set.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboards/orderhooks.json")).expect("json");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().expect("expr").replace("$partner", ".*"))
        .collect()
}

#[test]
fn alerts_and_the_dashboard_use_only_metrics_the_dispatcher_exports() {
    let exported = read("dispatcher/src/metrics.rs");
    let used = dispatcher_metrics_named(&format!(
        "{}\n{}",
        read("deploy/alerts.yml"),
        dashboard_queries().join("\n")
    ));
    assert!(used.len() >= 10, "{used:?}");
    for name in used {
        assert!(
            exported.contains(&format!("\"{name}\"")),
            "{name} is not a metric the dispatcher exports"
        );
    }
    // Files the image ships (config/ is copied to /etc/orderhooks) that services name.
    for (name, service) in doc_services(&compose()) {
        let env: Vec<String> = service["environment"]
            .as_mapping()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        for value in env.iter().chain(string_list(&service["command"]).iter()) {
            if let Some(file) = value.strip_prefix("/etc/orderhooks/") {
                assert!(
                    root().join("config").join(file).exists(),
                    "{name}: {value} is not in config/"
                );
            }
        }
    }
    // Every file compose mounts exists.
    let doc = compose();
    for (name, service) in doc["services"].as_mapping().expect("services") {
        for volume in string_list(&service["volumes"]) {
            let host = volume.split(':').next().expect("host path");
            if host.starts_with("./") {
                assert!(
                    root().join(host).exists(),
                    "{name:?} mounts {host}, which does not exist"
                );
            }
        }
    }
}

fn doc_services(doc: &Value) -> Vec<(String, Value)> {
    doc["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .map(|(k, v)| (k.as_str().expect("name").to_string(), v.clone()))
        .collect()
}

/// `promtool` (Debian's `prometheus` package; scripts/install-deps.sh installs it).
fn promtool(args: &[&str]) -> std::process::Output {
    std::process::Command::new("promtool")
        .args(args)
        .current_dir(root().join("deploy"))
        .output()
        .expect("promtool (apt-get install prometheus; scripts/install-deps.sh does)")
}

#[test]
fn the_alert_rules_fire_at_their_tiers_and_every_query_parses() {
    let config = promtool(&["check", "config", "prometheus.yml"]);
    assert!(config.status.success(), "{config:?}");
    let tests = promtool(&["test", "rules", "alerts.test.yml"]);
    assert!(
        tests.status.success(),
        "{}{}",
        String::from_utf8_lossy(&tests.stdout),
        String::from_utf8_lossy(&tests.stderr)
    );
    // The dashboard's queries, checked by promtool as recording rules.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in dashboard_queries().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(q).expect("quoted")
        ));
    }
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), rules).expect("write");
    let check = promtool(&["check", "rules", &file.path().display().to_string()]);
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Kafka (PLAINTEXT) and the registry are not published on the host; whatever is
/// published binds the host's loopback; the dispatcher's allowlist admits the example
/// partner's address alone (not the broker, the registry or the partner API).
#[test]
fn only_what_a_user_needs_is_published_and_the_allowlist_names_the_partner_alone() {
    let doc = compose();
    let services = doc_services(&doc);
    for (name, service) in &services {
        let ports = string_list(&service["ports"]);
        if name == "kafka" || name == "schema-registry" {
            assert!(ports.is_empty(), "{name} must not be published: {ports:?}");
        }
        for p in ports {
            assert!(
                p.starts_with("127.0.0.1:"),
                "{name} publishes {p} beyond loopback"
            );
        }
    }
    let partner_ip = doc["services"]["partner"]["networks"]["default"]["ipv4_address"]
        .as_str()
        .expect("the example partner has a fixed address")
        .to_string();
    for (name, service) in &services {
        let Some(allow) = service["environment"]["DISPATCHER_SSRF_ALLOWLIST"].as_str() else {
            continue;
        };
        let list =
            dispatcher::webhook::ssrf::Allowlist::parse(&[allow.to_string()]).expect("parses");
        assert!(
            list.contains(partner_ip.parse().expect("ip")),
            "{name}: {allow}"
        );
        let subnet = doc["networks"]["default"]["ipam"]["config"][0]["subnet"]
            .as_str()
            .expect("subnet");
        let base: std::net::Ipv4Addr = subnet
            .strip_suffix("/24")
            .expect("a /24")
            .parse()
            .expect("subnet parses");
        let [a, b, c, _] = base.octets();
        let others = (1..=254u8)
            .map(|d| std::net::Ipv4Addr::new(a, b, c, d))
            .filter(|ip| ip.to_string() != partner_ip)
            .filter(|ip| list.contains(std::net::IpAddr::V4(*ip)))
            .count();
        assert_eq!(others, 0, "{name}: {allow} admits other hosts of {subnet}");
    }
}
