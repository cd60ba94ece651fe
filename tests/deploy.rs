//! The deployment files: docker-compose.yml, the Dockerfile and the scripts users run are checked for
//! what matters to someone running them, without a Docker engine.

use std::collections::BTreeMap;
use std::path::Path;

use rust_eda::config::Config;
use serde_yaml_ng::Value;

fn compose() -> Value {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .expect("docker-compose.yml");
    let mut value: Value =
        serde_yaml_ng::from_str(&text).expect("docker-compose.yml is valid YAML");
    value.apply_merge().expect("merge keys resolve");
    value
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("a services map")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

fn env(service: &Value) -> Vec<(String, String)> {
    service["environment"]
        .as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => panic!("{k:?}: unexpected value {other:?}"),
                    };
                    (k.as_str().unwrap().to_owned(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_runs_kafka_in_kraft_mode_with_ui_topics_and_the_three_services() {
    let compose = compose();
    let services = services(&compose);
    for name in [
        "kafka",
        "kafka-ui",
        "create-topics",
        "order-service",
        "inventory-service",
        "notification-service",
    ] {
        assert!(services.contains_key(name), "service {name} missing");
    }

    let kafka = env(&services["kafka"]);
    let kafka: BTreeMap<_, _> = kafka.into_iter().collect();
    assert!(
        kafka["KAFKA_PROCESS_ROLES"].contains("controller"),
        "KRaft mode"
    );
    assert!(
        services["kafka"]["image"]
            .as_str()
            .unwrap()
            .starts_with("apache/kafka")
    );
    assert_eq!(services["kafka-ui"]["ports"][0].as_str(), Some("8090:8080"));
    assert_eq!(
        services["order-service"]["ports"][0].as_str(),
        Some("8080:8080")
    );

    for (name, service) in &services {
        assert!(
            service.get("image").is_some() || service.get("build").is_some(),
            "{name} has neither image nor build"
        );
        if let Some(deps) = service["depends_on"].as_mapping() {
            for (dep, how) in deps {
                let dep = dep.as_str().unwrap();
                assert!(
                    services.contains_key(dep),
                    "{name} depends on unknown {dep}"
                );
                let condition = how["condition"].as_str().unwrap_or("service_started");
                assert!(
                    [
                        "service_started",
                        "service_healthy",
                        "service_completed_successfully"
                    ]
                    .contains(&condition),
                    "{name}: unknown condition {condition}"
                );
                if condition == "service_healthy" {
                    assert!(
                        services[dep].get("healthcheck").is_some(),
                        "{dep} has no healthcheck"
                    );
                }
            }
        }
        for port in service["ports"].as_sequence().into_iter().flatten() {
            let (host, container) = port
                .as_str()
                .unwrap()
                .split_once(':')
                .expect("host:container");
            host.parse::<u16>().expect("host port");
            container.parse::<u16>().expect("container port");
        }
    }
}

#[test]
fn every_service_environment_is_a_valid_configuration() {
    let compose = compose();
    let services = services(&compose);
    let broker_for_ui = env(&services["kafka-ui"])
        .into_iter()
        .find(|(k, _)| k == "KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS")
        .map(|(_, v)| v)
        .unwrap();
    let documented = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md"),
    )
    .unwrap();
    for name in [
        "create-topics",
        "order-service",
        "inventory-service",
        "notification-service",
    ] {
        let vars = env(&services[name]);
        for (k, _) in &vars {
            assert!(
                documented.contains(&format!("`{k}`")),
                "{name}: {k} is not documented in docs/configuration.md"
            );
        }
        let config = Config::from_sources(None, Path::new("/nonexistent"), vars.clone())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            config.unknown.is_empty(),
            "{name} sets variables no service reads: {:?}",
            config.unknown
        );
        assert_eq!(
            config.kafka.brokers.to_string(),
            broker_for_ui,
            "{name} talks to another broker than Kafka UI"
        );
        let entrypoint: Vec<&str> = services[name]["entrypoint"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let binary = entrypoint[0].trim_start_matches('/');
        assert!(
            ["order-service", "inventory-service", "notification-service"].contains(&binary),
            "{name} runs {binary}, which the image does not have"
        );
    }
}

#[test]
fn the_image_is_from_scratch_with_the_three_static_binaries() {
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.last(), Some(&"FROM scratch"), "{stages:?}");
    assert!(
        dockerfile.contains("CC=/bin/false"),
        "the image is built without a C compiler"
    );
    for s in ["order-service", "inventory-service", "notification-service"] {
        assert!(dockerfile.contains(&format!("--bin {s}")), "{s} not built");
    }
    let ignore =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(".dockerignore"))
            .unwrap_or_default();
    assert!(
        ignore.lines().any(|l| l.trim() == "target"),
        "the build context must not carry target/"
    );
}

/// The monitoring profile: Prometheus scrapes each service where it serves
/// `/metrics`, and every metric the Grafana dashboard queries is one the
/// services export.
#[test]
fn the_dashboard_queries_metrics_the_services_export() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = compose();
    let services = services(&compose);
    for name in ["prometheus", "grafana"] {
        let profiles = services[name]["profiles"].as_sequence().unwrap();
        assert_eq!(profiles[0].as_str(), Some("monitoring"), "{name}");
    }
    let prometheus: Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root.join("configs/prometheus.yml")).unwrap(),
    )
    .unwrap();
    let targets: Vec<String> = prometheus["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|job| {
            job["static_configs"][0]["targets"][0]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        targets,
        [
            format!("order-service:{}", rust_eda::services::order::METRICS_PORT),
            format!(
                "inventory-service:{}",
                rust_eda::services::inventory::METRICS_PORT
            ),
            format!(
                "notification-service:{}",
                rust_eda::services::notification::METRICS_PORT
            ),
        ]
    );

    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("configs/grafana/rust-eda-dashboard.json")).unwrap(),
    )
    .unwrap();
    // Every source file: a metric may be defined anywhere in the library.
    let mut source = String::new();
    let mut dirs = vec![root.join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                source.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let metric = word
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_count")
                    .trim_end_matches("_sum");
                if metric.starts_with("eda_") || metric.starts_with("process_") {
                    assert!(
                        source.contains(&format!("\"{metric}"))
                            || source.contains(&format!("{metric} ")),
                        "panel {:?} queries {metric}, which no service exports",
                        panel["title"]
                    );
                }
            }
        }
    }
}

/// After `scripts/build-static.sh all`, dist/ holds binaries for both
/// architectures; the scripts that run a service binary's own command
/// (create-topics.sh, replay-dlq.sh) must pick the one this machine runs, not the
/// first in glob order (aarch64 sorts before x86_64).
#[test]
fn the_scripts_run_the_dist_binary_of_this_machines_architecture() {
    let root = std::env::temp_dir().join(format!(
        "rust-eda-service-bin-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    for arch in ["aarch64", "x86_64"] {
        let dir = root.join(format!("dist/{arch}-unknown-linux-musl"));
        std::fs::create_dir_all(&dir).unwrap();
        let bin = dir.join("order-service");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/service-bin.sh");
    let out = std::process::Command::new("bash")
        .args(["-c", r#"root="$1"; source "$2"; echo "$bin""#, "_"])
        .arg(&root)
        .arg(&script)
        .env("PATH", "/usr/bin:/bin")
        .env_remove("EDA_BIN")
        .output()
        .expect("bash runs");
    std::fs::remove_dir_all(&root).ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let chosen = String::from_utf8(out.stdout).unwrap();
    let host = std::env::consts::ARCH;
    assert!(
        chosen
            .trim()
            .ends_with(&format!("dist/{host}-unknown-linux-musl/order-service")),
        "picked {chosen:?} on {host}"
    );
}
