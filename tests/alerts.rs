//! The chart's alerts, proven with the real promtool (issue 20).
//!
//! The PrometheusRule is rendered from the chart by `helm template` (one source of
//! truth: no rules file is committed), its groups written as a plain Prometheus
//! rules file, then `promtool check rules` and `promtool test rules` with
//! `tests/prometheus/alerts_test.yaml`, where every alert has a case that fires and
//! one that stays silent. promtool comes from Debian's `prometheus` package
//! (`cp.sh prom-build`); if it cannot be fetched the tests fail, never skip.
//!
//! `a_rule_reading_a_renamed_metric_fails_the_unit_tests` is the check that the
//! unit tests can fail: each alert in turn reads a renamed metric and
//! `promtool test rules` must fail naming it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::prometheus::{alert_names, chart_rule_groups, promtool, rules_file};
use serde_json::Value;

const UNIT_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/prometheus/alerts_test.yaml"
);

/// The alerts the chart ships (issue 20 asks for each to be proven).
const ALERTS: [&str; 7] = [
    "PushToK8sDown",
    "PushToK8sNotReady",
    "PushToK8sWritesFailing",
    "PushToK8sConflicts",
    "PushToK8sOutOfSync",
    "PushToK8sRemoteClusterDown",
    "PushToK8sVaultDown",
];

fn groups() -> Value {
    chart_rule_groups("p2k", "p2k-ns", &[])
}

/// A fresh directory with `groups` as `rules.json` and the unit tests beside it
/// (their `rule_files` names `rules.json`).
fn workdir(groups: &Value) -> PathBuf {
    let dir = std::env::temp_dir().join(common::unique("push-to-k8s-alerts"));
    std::fs::create_dir_all(&dir).unwrap();
    let written = rules_file(groups, &dir);
    std::fs::rename(written, dir.join("rules.json")).unwrap();
    std::fs::copy(UNIT_TESTS, dir.join("alerts_test.yaml")).unwrap();
    dir
}

fn promtool_in(dir: &Path, args: &[&str]) -> Output {
    promtool()
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn chart_rules_pass_promtool_check_and_unit_tests() {
    let groups = groups();
    assert_eq!(alert_names(&groups), ALERTS);
    let dir = workdir(&groups);
    let check = promtool_in(&dir, &["check", "rules", "rules.json"]);
    assert!(
        check.status.success(),
        "promtool check rules:\n{}",
        text(&check)
    );
    assert!(
        text(&check).contains("SUCCESS: 7 rules found"),
        "{}",
        text(&check)
    );
    let test = promtool_in(&dir, &["test", "rules", "alerts_test.yaml"]);
    assert!(
        test.status.success(),
        "promtool test rules:\n{}",
        text(&test)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Each alert of the chart has, in the unit tests, an evaluation where it fires
/// and one where it stays silent on series of the metric it reads.
#[test]
fn every_alert_has_a_firing_and_a_silent_case() {
    let tests: Value = serde_saphyr::from_str(&std::fs::read_to_string(UNIT_TESTS).unwrap())
        .expect("alerts_test.yaml is YAML");
    let mut firing = Vec::new();
    let mut silent = Vec::new();
    for case in tests["tests"].as_array().unwrap() {
        for check in case["alert_rule_test"].as_array().unwrap() {
            let name = check["alertname"].as_str().unwrap().to_string();
            let fires = check["exp_alerts"]
                .as_array()
                .is_some_and(|a| !a.is_empty());
            if fires {
                firing.push(name);
            } else {
                // Silent on the series the rule reads: the case feeds them.
                silent.push((name, case["input_series"].to_string()));
            }
        }
    }
    let groups = groups();
    for rule in groups[0]["rules"].as_array().unwrap() {
        let name = rule["alert"].as_str().unwrap();
        let expr = rule["expr"].as_str().unwrap();
        assert!(
            firing.iter().any(|n| n == name),
            "{name}: no case where it fires"
        );
        let metric = if expr.contains("push_to_k8s_") {
            let at = expr.find("push_to_k8s_").unwrap();
            expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        } else {
            "up{".to_string()
        };
        assert!(
            silent
                .iter()
                .any(|(n, series)| n == name && series.contains(&metric)),
            "{name}: no case where it stays silent on {metric} series"
        );
    }
}

/// The unit tests catch a rule that reads a metric under a wrong name: each
/// alert in turn, its metric renamed, makes `promtool test rules` fail and
/// name that alert.
#[test]
fn a_rule_reading_a_renamed_metric_fails_the_unit_tests() {
    let groups = groups();
    for (i, name) in ALERTS.iter().enumerate() {
        let mut broken = groups.clone();
        let rule = &mut broken[0]["rules"][i];
        assert_eq!(rule["alert"], *name);
        let expr = rule["expr"].as_str().unwrap();
        let renamed = if expr.contains("push_to_k8s_") {
            expr.replace("push_to_k8s_", "push_to_k8s_renamed_")
        } else {
            expr.replace("up{", "upp{")
        };
        assert_ne!(renamed, expr);
        rule["expr"] = Value::String(renamed);
        let dir = workdir(&broken);
        // Still valid PromQL: only the unit tests can tell.
        let check = promtool_in(&dir, &["check", "rules", "rules.json"]);
        assert!(check.status.success(), "{}", text(&check));
        let test = promtool_in(&dir, &["test", "rules", "alerts_test.yaml"]);
        let out = text(&test);
        assert!(
            !test.status.success(),
            "{name} reading a renamed metric passed the unit tests:\n{out}"
        );
        assert!(
            out.contains(&format!("alertname: {name}")),
            "the failure does not name {name}:\n{out}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
