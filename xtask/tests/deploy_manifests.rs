//! Every manifest under `deploy/` parses, has what its kind requires, and refers only to
//! things that exist in the same deployment (config maps, secrets, service accounts,
//! services, pod labels, named ports, collector components); the dashboard queries only
//! metrics the tracer exposes and the alert rules carry what Alertmanager routes on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn documents(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            serde_yaml::with::singleton_map_recursive::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn seq<'a>(value: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    at(value, path)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn labels(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Everything the kustomization deploys, plus what its generators create.
struct K8s {
    objects: Vec<Value>,
    config_maps: BTreeSet<String>,
    secrets: BTreeSet<String>,
}

fn load_k8s() -> K8s {
    let dir = deploy_dir().join("k8s");
    let kustomization = &documents(&dir.join("kustomization.yaml"))[0];
    let mut objects = Vec::new();
    for resource in seq(kustomization, &["resources"]) {
        let file = dir.join(resource.as_str().expect("resource is a path"));
        assert!(
            file.exists(),
            "kustomization lists missing {}",
            file.display()
        );
        objects.extend(documents(&file));
    }
    let mut config_maps = BTreeSet::new();
    for generator in seq(kustomization, &["configMapGenerator"]) {
        config_maps.insert(str_at(generator, &["name"]).unwrap().to_string());
        for file in seq(generator, &["files"]) {
            let source = file.as_str().unwrap().rsplit('=').next().unwrap();
            assert!(
                dir.join(source).exists(),
                "configMapGenerator file {source} is missing"
            );
        }
    }
    let mut secrets = BTreeSet::new();
    for object in &objects {
        match str_at(object, &["kind"]) {
            Some("ConfigMap") => {
                config_maps.insert(str_at(object, &["metadata", "name"]).unwrap().into());
            }
            Some("Secret") => {
                secrets.insert(str_at(object, &["metadata", "name"]).unwrap().into());
            }
            Some("Certificate") => {
                secrets.insert(str_at(object, &["spec", "secretName"]).unwrap().into());
            }
            _ => {}
        }
    }
    K8s {
        objects,
        config_maps,
        secrets,
    }
}

fn names_of_kind(k8s: &K8s, kind: &str) -> BTreeSet<String> {
    k8s.objects
        .iter()
        .filter(|o| str_at(o, &["kind"]) == Some(kind))
        .filter_map(|o| str_at(o, &["metadata", "name"]).map(String::from))
        .collect()
}

fn workloads(k8s: &K8s) -> Vec<&Value> {
    k8s.objects
        .iter()
        .filter(|o| {
            matches!(
                str_at(o, &["kind"]),
                Some("Deployment" | "DaemonSet" | "StatefulSet")
            )
        })
        .collect()
}

#[test]
fn every_k8s_object_has_api_version_kind_and_name() {
    let k8s = load_k8s();
    assert!(
        k8s.objects.len() >= 10,
        "too few objects: {}",
        k8s.objects.len()
    );
    for object in &k8s.objects {
        assert!(str_at(object, &["apiVersion"]).is_some(), "{object:?}");
        assert!(str_at(object, &["kind"]).is_some(), "{object:?}");
        assert!(
            str_at(object, &["metadata", "name"]).is_some(),
            "{object:?}"
        );
    }
}

#[test]
fn workload_references_resolve() {
    let k8s = load_k8s();
    let service_accounts = names_of_kind(&k8s, "ServiceAccount");
    let services = names_of_kind(&k8s, "Service");
    for workload in workloads(&k8s) {
        let name = str_at(workload, &["metadata", "name"]).unwrap();
        let selector = labels(at(workload, &["spec", "selector", "matchLabels"]));
        let pod_labels = labels(at(workload, &["spec", "template", "metadata", "labels"]));
        assert!(
            !selector.is_empty() && selects(&selector, &pod_labels),
            "{name}: selector does not match its pod template"
        );
        let pod = at(workload, &["spec", "template", "spec"]).unwrap();
        if let Some(account) = str_at(pod, &["serviceAccountName"]) {
            assert!(
                service_accounts.contains(account),
                "{name}: no ServiceAccount {account}"
            );
        }
        if let Some(service) = str_at(workload, &["spec", "serviceName"]) {
            assert!(services.contains(service), "{name}: no Service {service}");
        }
        let mut volumes = BTreeSet::new();
        for volume in seq(pod, &["volumes"]) {
            volumes.insert(str_at(volume, &["name"]).unwrap().to_string());
            if let Some(cm) = str_at(volume, &["configMap", "name"]) {
                assert!(k8s.config_maps.contains(cm), "{name}: no ConfigMap {cm}");
            }
            if let Some(secret) = str_at(volume, &["secret", "secretName"]) {
                assert!(k8s.secrets.contains(secret), "{name}: no Secret {secret}");
            }
        }
        for claim in seq(workload, &["spec", "volumeClaimTemplates"]) {
            volumes.insert(str_at(claim, &["metadata", "name"]).unwrap().to_string());
        }
        for container in seq(pod, &["containers"]) {
            assert!(
                str_at(container, &["image"]).is_some(),
                "{name}: container without image"
            );
            for mount in seq(container, &["volumeMounts"]) {
                let volume = str_at(mount, &["name"]).unwrap();
                assert!(
                    volumes.contains(volume),
                    "{name}: mounts unknown volume {volume}"
                );
            }
        }
    }
}

/// A pod template's labels, named ports and port numbers.
type PodShape = (BTreeMap<String, String>, BTreeSet<String>, BTreeSet<i64>);

#[test]
fn services_and_network_policies_select_real_pods() {
    let k8s = load_k8s();
    let pods: Vec<PodShape> = workloads(&k8s)
        .into_iter()
        .map(|w| {
            let containers = seq(w, &["spec", "template", "spec", "containers"]);
            let ports: Vec<&Value> = containers.iter().flat_map(|c| seq(c, &["ports"])).collect();
            (
                labels(at(w, &["spec", "template", "metadata", "labels"])),
                ports
                    .iter()
                    .filter_map(|p| str_at(p, &["name"]).map(String::from))
                    .collect(),
                ports
                    .iter()
                    .filter_map(|p| at(p, &["containerPort"]).and_then(Value::as_i64))
                    .collect(),
            )
        })
        .collect();
    for object in &k8s.objects {
        let name = str_at(object, &["metadata", "name"]).unwrap();
        match str_at(object, &["kind"]) {
            Some("Service") => {
                let selector = labels(at(object, &["spec", "selector"]));
                let pod = pods
                    .iter()
                    .find(|(l, _, _)| selects(&selector, l))
                    .unwrap_or_else(|| panic!("Service {name} selects no pod"));
                for port in seq(object, &["spec", "ports"]) {
                    if let Some(target) = str_at(port, &["targetPort"]) {
                        assert!(
                            pod.1.contains(target),
                            "Service {name}: no port named {target}"
                        );
                    }
                }
            }
            Some("NetworkPolicy") => {
                let selector = labels(at(object, &["spec", "podSelector", "matchLabels"]));
                let chosen: Vec<_> = pods
                    .iter()
                    .filter(|(l, _, _)| selects(&selector, l))
                    .collect();
                assert!(!chosen.is_empty(), "NetworkPolicy {name} selects no pod");
                for rule in seq(object, &["spec", "ingress"]) {
                    for port in seq(rule, &["ports"]) {
                        let port = at(port, &["port"]).and_then(Value::as_i64).unwrap();
                        assert!(
                            chosen.iter().any(|(_, _, ports)| ports.contains(&port)),
                            "NetworkPolicy {name} admits port {port} that no selected pod opens"
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn agent_runs_with_named_capabilities_not_privileged() {
    let k8s = load_k8s();
    let agent = workloads(&k8s)
        .into_iter()
        .find(|w| str_at(w, &["kind"]) == Some("DaemonSet"))
        .expect("the agent DaemonSet");
    let pod = at(agent, &["spec", "template", "spec"]).unwrap();
    assert_eq!(at(pod, &["hostPID"]).and_then(Value::as_bool), Some(true));
    let container = seq(pod, &["containers"])[0];
    let security = at(container, &["securityContext"]).unwrap();
    assert_eq!(
        at(security, &["privileged"]).and_then(Value::as_bool),
        Some(false)
    );
    let added: BTreeSet<&str> = seq(security, &["capabilities", "add"])
        .into_iter()
        .filter_map(Value::as_str)
        .collect();
    for needed in ["BPF", "PERFMON"] {
        assert!(added.contains(needed), "agent lacks CAP_{needed}");
    }
    assert!(
        !added.contains("SYS_ADMIN"),
        "agent should not need CAP_SYS_ADMIN"
    );
}

#[test]
fn collector_pipelines_use_defined_components_and_route_by_trace_id() {
    let config = &documents(&deploy_dir().join("collector/otelcol.yaml"))[0];
    for pipeline in at(config, &["service", "pipelines"])
        .and_then(Value::as_mapping)
        .expect("pipelines")
        .values()
    {
        for section in ["receivers", "processors", "exporters"] {
            for component in seq(pipeline, &[section]) {
                let component = component.as_str().unwrap();
                assert!(
                    at(config, &[section, component]).is_some(),
                    "pipeline uses undefined {section} {component}"
                );
            }
        }
    }
    assert_eq!(
        str_at(config, &["exporters", "loadbalancing", "routing_key"]),
        Some("traceID")
    );
    let resolved = str_at(
        config,
        &["exporters", "loadbalancing", "resolver", "k8s", "service"],
    )
    .expect("k8s resolver");
    let k8s = load_k8s();
    let headless = resolved.split('.').next().unwrap();
    assert!(
        names_of_kind(&k8s, "Service").contains(headless),
        "collector resolves {headless}, which is not deployed"
    );
}

#[test]
fn systemd_unit_is_hardened() {
    let unit = read(&deploy_dir().join("systemd/order-tracer.service"));
    let mut sections = BTreeMap::<String, BTreeMap<String, String>>::new();
    let mut current = String::new();
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = section.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        sections
            .entry(current.clone())
            .or_default()
            .insert(key.to_string(), value.to_string());
    }
    for section in ["Unit", "Service", "Install"] {
        assert!(sections.contains_key(section), "unit lacks [{section}]");
    }
    let service = &sections["Service"];
    assert!(service["ExecStart"].contains("tracer run --config"));
    for key in [
        "NoNewPrivileges",
        "ProtectSystem",
        "CapabilityBoundingSet",
        "MemoryMax",
    ] {
        assert!(service.contains_key(key), "unit lacks {key}");
    }
    assert!(service["CapabilityBoundingSet"].contains("CAP_BPF"));
}

/// The series names `/metrics` exposes, read from the registrations in `tracer/src/metrics.rs`
/// (the monitor's) and `tracer/src/pipeline_metrics.rs` (the agent's, which join it): the
/// registry's prefix, each registered name, and the suffixes the exposition adds for the
/// registered field's type (counters `_total`, histograms `_bucket`/`_sum`/`_count`).
fn exposed_series() -> BTreeSet<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tracer/src");
    let source = read(&src.join("metrics.rs")) + &read(&src.join("pipeline_metrics.rs"));
    let quoted = |text: &str| -> Option<String> {
        let start = text.find('"')? + 1;
        Some(text[start..start + text[start..].find('"')?].to_string())
    };
    let prefix = quoted(&source[source.find("with_prefix(").expect("a prefixed registry")..])
        .expect("the registry's prefix");
    // A field of a metric type (plain totals of the same name are u64s, skipped).
    let field_type = |field: &str| -> String {
        source
            .lines()
            .map(|l| l.trim().trim_start_matches("pub "))
            .filter_map(|l| l.strip_prefix(field)?.strip_prefix(": "))
            .find(|t| {
                ["Counter", "Gauge", "Histogram"]
                    .iter()
                    .any(|k| t.contains(k))
            })
            .unwrap_or_else(|| panic!("metrics.rs: no metric field {field}"))
            .to_string()
    };
    let mut series = BTreeSet::new();
    // `….register(registry)` hands a registry on; the registrations name their metric first.
    let registrations = source.split(".register(").skip(1);
    for call in registrations.filter(|call| call.trim_start().starts_with('"')) {
        let name = quoted(call).expect("register(name, …)");
        let metric = &call[..call.find(".clone()").expect("register(…, metric.clone())")];
        let field = metric.rsplit('.').next().unwrap();
        let kind = field_type(field);
        let suffixes: &[&str] = if kind.contains("Histogram") {
            &["_bucket", "_sum", "_count"]
        } else if kind.contains("Counter") {
            &["_total"]
        } else {
            &[""]
        };
        for suffix in suffixes {
            series.insert(format!("{prefix}_{name}{suffix}"));
        }
    }
    assert!(series.len() >= 13, "too few metrics found: {series:?}");
    series
}

/// Every `order_tracer_…` name a PromQL expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    expr.match_indices("order_tracer_")
        .map(|(at, _)| {
            expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

fn dashboard() -> serde_json::Value {
    let path = deploy_dir().join("grafana/order-tracer.json");
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()))
}

#[test]
fn dashboard_panels_query_the_prometheus_variable() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("variables");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus datasource variable"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{panel}"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        for target in targets {
            assert!(target["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
        queried += 1;
    }
    assert!(queried >= 10, "only {queried} panels query anything");
}

#[test]
fn dashboard_uses_only_metrics_the_tracer_exposes() {
    let exposed = exposed_series();
    let dashboard = dashboard();
    let mut expressions: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    expressions.extend(
        dashboard["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["definition"].as_str()),
    );
    let mut used = BTreeSet::new();
    for expr in expressions {
        for name in metric_names(expr) {
            assert!(
                exposed.contains(&name),
                "the dashboard queries {name}, which /metrics does not expose ({exposed:?})"
            );
            used.insert(name);
        }
    }
    // Every family is on the dashboard (a histogram through its buckets).
    let families = |names: &BTreeSet<String>| -> BTreeSet<String> {
        names
            .iter()
            .map(|n| {
                ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| n.strip_suffix(s))
                    .unwrap_or(n)
                    .to_string()
            })
            .collect()
    };
    assert_eq!(
        families(&used),
        families(&exposed),
        "metrics on /metrics but not on the dashboard"
    );
}

#[test]
fn alert_rules_have_what_alertmanager_routes_on() {
    let rules = &documents(&deploy_dir().join("alerts/order-tracer.rules.yml"))[0];
    let groups = seq(rules, &["groups"]);
    assert!(!groups.is_empty(), "no rule groups");
    let mut names = BTreeSet::new();
    for group in groups {
        let group_name = str_at(group, &["name"]).expect("group name");
        let rules = seq(group, &["rules"]);
        assert!(!rules.is_empty(), "group {group_name} has no rules");
        for rule in rules {
            let alert = str_at(rule, &["alert"]).expect("every rule is an alert");
            assert!(names.insert(alert), "alert {alert} defined twice");
            assert!(
                str_at(rule, &["expr"]).is_some_and(|e| !e.trim().is_empty()),
                "{alert}: no expr"
            );
            if let Some(wait) = at(rule, &["for"]) {
                let wait = wait.as_str().expect("`for` is a duration string");
                let unit = wait.trim_start_matches(|c: char| c.is_ascii_digit());
                assert!(
                    unit.len() < wait.len() && ["s", "m", "h", "d"].contains(&unit),
                    "{alert}: for: {wait} is not a Prometheus duration"
                );
            }
            let severity = str_at(rule, &["labels", "severity"]).expect("labels.severity");
            assert!(
                ["info", "warning", "critical"].contains(&severity),
                "{alert}: severity {severity}"
            );
            assert!(
                str_at(rule, &["annotations", "summary"]).is_some(),
                "{alert}: no annotations.summary"
            );
        }
    }
}
