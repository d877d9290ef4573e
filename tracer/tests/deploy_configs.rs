//! The configs shipped under `deploy/` are what operators copy: each must load as the binary
//! loads it (validation included), and each monitor config must watch hand-overs between rules
//! that exist in the config its spans come from.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use tracer::config::Config;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn toml_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            toml_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

fn load(relative: &str) -> Config {
    let path = deploy_dir().join(relative);
    Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Each rule's name, with the service it belongs to.
fn rules(config: &Config) -> BTreeSet<(String, String)> {
    config
        .services
        .iter()
        .flat_map(|s| s.rules.iter().map(|r| (r.name.clone(), s.name.clone())))
        .collect()
}

/// The monitor's transits name rules of `rules_from`, and the services it blames are ones
/// `rules_from` describes.
fn monitor_matches_rules(monitor_file: &str, rules_file: &str) {
    let monitor = load(monitor_file);
    let agent = load(rules_file);
    let rules = rules(&agent);
    let services: BTreeSet<&str> = agent.services.iter().map(|s| s.name.as_str()).collect();
    let rule_service = |name: &str| {
        rules
            .iter()
            .find(|(rule, _)| rule == name)
            .map(|(_, service)| service.clone())
    };
    assert!(
        !monitor.lifecycle.transits.is_empty(),
        "{monitor_file} watches no transit"
    );
    for transit in &monitor.lifecycle.transits {
        if let Some(from_rule) = &transit.from_rule {
            assert!(
                rule_service(from_rule).is_some(),
                "{monitor_file}: transit from_rule {from_rule} is no rule of {rules_file}"
            );
        }
        // The detection blames the receiver: the service whose rule receives the hand-over.
        assert_eq!(
            rule_service(&transit.to_rule).as_deref(),
            Some(transit.service.as_str()),
            "{monitor_file}: transit to_rule {} is no rule of service {} in {rules_file}",
            transit.to_rule,
            transit.service
        );
    }
    for status in &monitor.lifecycle.statuses {
        assert!(
            services.contains(status.service.as_str()),
            "{monitor_file}: status {} blames {}, a service {rules_file} does not describe",
            status.name,
            status.service
        );
    }
}

#[test]
fn every_deploy_config_loads_and_validates() {
    let mut files = Vec::new();
    toml_files(&deploy_dir(), &mut files);
    assert!(files.len() >= 4, "too few configs: {files:?}");
    for file in &files {
        let config = Config::load(file).unwrap_or_else(|e| panic!("{e}"));
        // `tracer run` and `tracer monitor` refuse to start on this, after load.
        assert!(
            config.lifecycle.order_expiry_secs <= config.store.retention_days * 86_400.0,
            "{}: [lifecycle] order_expiry_secs outlives [store] retention_days",
            file.display()
        );
    }
}

#[test]
fn kubernetes_monitor_watches_the_agents_rules() {
    monitor_matches_rules("k8s/monitor.toml", "k8s/agent.toml");
}

#[test]
fn all_in_one_configs_watch_their_own_rules() {
    for file in ["systemd/host.toml", "config/testbed.toml"] {
        monitor_matches_rules(file, file);
    }
}

#[test]
fn production_monitors_authenticate_and_keep_state_on_their_volume() {
    for file in ["k8s/monitor.toml", "systemd/host.toml"] {
        let config = load(file);
        assert!(config.api.auth.is_configured(), "{file}: no [api.auth]");
        assert!(config.api.tls_cert.is_some(), "{file}: API without TLS");
        assert!(
            config.store.path.starts_with("/var/lib/order-tracer"),
            "{file}: store outside the state directory"
        );
    }
}
