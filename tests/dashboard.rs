//! The Grafana dashboard (issue 20), without a server: the JSON has what Grafana
//! needs for the `schemaVersion` it declares, every variable a query uses is
//! defined, every `push_to_k8s_*` metric a query reads is one the controller
//! exports, and the chart's ConfigMap carries exactly the file. That every query
//! parses and returns data on a real Prometheus scraping a working controller is
//! `tests/e2e_prometheus.rs`.

mod common;

use std::collections::BTreeSet;

use common::prometheus::{CHART, dashboard, dashboard_queries, panels};
use serde_json::Value;

/// Grafana's dashboard schema 39 (Grafana 10.4/11): datasource references are
/// objects (`{type, uid}`, since 33), panels carry `gridPos` on a 24-column grid.
const SCHEMA_VERSION: u64 = 39;
const PANEL_TYPES: [&str; 2] = ["timeseries", "stat"];
const BUILTINS: [&str; 3] = ["__rate_interval", "__interval", "__range"];

fn int(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what}: not an integer: {v}"))
}

#[test]
fn dashboard_json_has_what_grafana_needs_for_its_schema_version() {
    let d = dashboard();
    assert_eq!(int(&d["schemaVersion"], "schemaVersion"), SCHEMA_VERSION);
    for key in ["uid", "title"] {
        assert!(
            d[key].as_str().is_some_and(|s| !s.is_empty()),
            "{key} missing"
        );
    }
    assert!(d["uid"].as_str().unwrap().len() <= 40, "uid longer than 40");
    int(&d["version"], "version");
    assert!(d["time"]["from"].is_string() && d["time"]["to"].is_string());
    assert!(d["editable"].is_boolean() && d["tags"].is_array());
    assert!(d["annotations"]["list"].is_array());

    // Variables: a datasource variable for Prometheus, query variables on it.
    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let names: BTreeSet<&str> = vars.iter().map(|v| v["name"].as_str().unwrap()).collect();
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(ds["query"], "prometheus");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"]["uid"], ds_ref.as_str(), "{v}");
        assert!(v["query"]["query"].is_string() && v["definition"].is_string());
    }

    // Panels: unique ids, known types, on the grid without overlapping, each
    // query on the datasource variable with a unique refId.
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for p in panels(&d) {
        let title = p["title"].as_str().expect("a panel title");
        assert!(
            ids.insert(int(&p["id"], "id")),
            "panel id repeated: {title}"
        );
        let ty = p["type"].as_str().unwrap();
        assert!(PANEL_TYPES.contains(&ty), "{title}: type {ty}");
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            int(&g["x"], "x"),
            int(&g["y"], "y"),
            int(&g["w"], "w"),
            int(&g["h"], "h"),
        );
        assert!(w >= 1 && h >= 1 && x + w <= 24, "{title}: gridPos {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "{title} overlaps another panel");
            }
        }
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut refs = BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().unwrap()),
                "{title}: refId repeated"
            );
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "{title}");
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }

    // Every $variable a query uses is defined (or one of Grafana's own).
    for (at, expr) in dashboard_queries(&d) {
        let mut rest = expr.as_str();
        while let Some(i) = rest.find('$') {
            let name: String = rest[i + 1..]
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                names.contains(name.as_str()) || BUILTINS.contains(&name.as_str()),
                "{at}: ${name} is not a variable of the dashboard"
            );
            rest = &rest[i + 1..];
        }
        // No `or vector(...)`: it would hide a metric that no longer exists.
        assert!(!expr.contains("vector("), "{at}: {expr}");
    }
}

/// Each panel the issue asks for is there.
#[test]
fn dashboard_has_the_panels_operators_need() {
    let d = dashboard();
    let all: Vec<String> = dashboard_queries(&d).into_iter().map(|(_, e)| e).collect();
    let reads = |metric: &str| all.iter().any(|e| e.contains(metric));
    for metric in [
        "push_to_k8s_propagation_seconds_bucket",
        "push_to_k8s_debounce_seconds",
        "push_to_k8s_write_rate_limit",
        "push_to_k8s_writes_total",
        "push_to_k8s_queue_depth",
        "push_to_k8s_retry_queue_copies",
        "push_to_k8s_oldest_out_of_sync_seconds",
        "push_to_k8s_conflicted_copies",
        "push_to_k8s_invalid_annotations_total",
        "push_to_k8s_refused_types_total",
        "push_to_k8s_registrations_refused_total",
        "push_to_k8s_managed_replicas",
        "push_to_k8s_leader",
        "push_to_k8s_ready",
        "push_to_k8s_cluster_up",
        "push_to_k8s_vault_up",
        "push_to_k8s_resident_memory_bytes",
    ] {
        assert!(reads(metric), "no panel reads {metric}");
    }
    let latency: Vec<&String> = all
        .iter()
        .filter(|e| e.contains("propagation_seconds_bucket"))
        .collect();
    assert!(
        latency
            .iter()
            .any(|e| e.contains("histogram_quantile(0.5,"))
    );
    assert!(
        latency
            .iter()
            .any(|e| e.contains("histogram_quantile(0.99,"))
    );
    assert!(latency.iter().all(|e| e.contains("target")), "{latency:?}");
}

/// Every `push_to_k8s_*` metric a query reads is one the controller exports.
#[test]
fn dashboard_reads_only_metrics_the_controller_exports() {
    let metrics = push_to_k8s::operate::metrics::Metrics::new();
    // A family shows only once it has a series.
    metrics.write(push_to_k8s::model::kinds::Kind::Secret, "apply", "ok");
    metrics.observe_propagation(0.1);
    let remote = push_to_k8s::operate::metrics::Metrics::for_cluster("east", &metrics);
    remote.write(push_to_k8s::model::kinds::Kind::Secret, "apply", "ok");
    let east = push_to_k8s::operate::metrics::ClusterLabels {
        cluster: "east".into(),
    };
    metrics.cluster_up.get_or_create(&east).set(1);
    metrics
        .invalid_annotations
        .get_or_create(&push_to_k8s::operate::metrics::AnnotationLabels {
            annotation: "namespace_selector",
        })
        .inc();
    metrics
        .registrations_refused
        .get_or_create(&push_to_k8s::operate::metrics::RegistrationLabels {
            reason: "kubeconfig",
        })
        .inc();
    metrics
        .vault_requests
        .get_or_create(&push_to_k8s::operate::metrics::VaultLabels {
            op: "read",
            result: "ok",
        })
        .inc();
    let mut exported = BTreeSet::new();
    for line in metrics.encode().lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match kind {
                "counter" => {
                    exported.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        exported.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    exported.insert(name.to_string());
                }
            }
        }
    }
    for (at, expr) in dashboard_queries(&dashboard()) {
        let mut rest = expr.as_str();
        while let Some(i) = rest.find("push_to_k8s_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                exported.contains(&name),
                "{at} reads {name}, which the controller does not export"
            );
            rest = &rest[i + name.len()..];
        }
    }
}

/// The chart's ConfigMap (off by default) carries exactly the JSON file, with
/// the label kube-prometheus-stack's sidecar selects.
#[test]
fn chart_configmap_carries_the_dashboard() {
    let out = common::cp(&[
        "helm",
        "template",
        "p2k",
        CHART,
        "--namespace",
        "p2k-ns",
        "--set",
        "grafanaDashboard.enabled=true",
        "--show-only",
        "templates/dashboard.yaml",
    ]);
    let cm: Value = serde_saphyr::from_str(&out).expect("the ConfigMap is YAML");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(cm["metadata"]["namespace"], "p2k-ns");
    let carried: Value =
        serde_json::from_str(cm["data"]["push-to-k8s.json"].as_str().unwrap()).unwrap();
    assert_eq!(carried, dashboard());
}
