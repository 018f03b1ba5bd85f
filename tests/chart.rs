//! The Helm chart, ready for production (issue 9):
//! - `values.schema.json` cannot drift from `src/operate/config.rs`: its `env` part
//!   and `metricsPort` are generated from [`ENV_VARS`] (regenerate with
//!   `UPDATE_VALUES_SCHEMA=1 cargo test --test chart values_schema_env`), the
//!   file is compared with what the table gives, and helm itself must reject
//!   every out-of-range value and accept every boundary, whose rendering the
//!   controller's own parser then accepts;
//! - the optional ServiceMonitor, PrometheusRule and NetworkPolicy render only
//!   when enabled, and the alerts use metrics the controller exports;
//! - PushRules (issue 19): the CRD (kept by `helm uninstall`) and its read
//!   role, the controller's grants for rules and the admission policy's match
//!   on rule copies all follow `pushRules.enabled`, which also sets
//!   ENABLE_PUSH_RULES;
//! - the pod template is admitted by the real API server in a namespace that
//!   enforces the restricted Pod Security profile, and the Lease RBAC allows
//!   exactly the release's Lease.
//!
//! helm is the one cp.sh builds; only the last test needs the control plane.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, PostParams};
use push_to_k8s::operate::config::{Config, ENV_VARS, EnvDefault, EnvVar, ValueKind};
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/push-to-k8s");
const SCHEMA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/helm/push-to-k8s/values.schema.json"
);
const REGENERATE: &str = "UPDATE_VALUES_SCHEMA=1 cargo test --test chart values_schema_env";

/// Variables the chart sets itself: `env.NAME` is refused, and why.
const SET_BY_CHART: &[(&str, &str)] = &[
    (
        "POD_NAMESPACE",
        "Set by the chart to the pod's namespace; set NAMESPACE instead.",
    ),
    ("METRICS_PORT", "Set by the chart; set metricsPort instead."),
];

/// Variables the chart passes on that `config.rs` does not read.
const CHART_ONLY: &[(&str, &str)] = &[(
    "RUST_LOG",
    "Log filter (tracing EnvFilter syntax, e.g. push_to_k8s=debug); overrides DEBUG.",
)];

/// Variables the chart's Deployment sets that `config.rs` does not read.
const READ_ELSEWHERE: &[(&str, &str)] = &[("POD_NAME", "src/controller.rs: the instance's name")];

// ---------------------------------------------------------------------------
// The schema, generated from config::ENV_VARS.

/// `^0*(...)$` matching exactly the decimal numbers `min..=max`, for integers
/// written as strings (`"10"` in a values file, `--set-string`).
fn range_pattern(min: u64, max: u64) -> String {
    let alternatives: Vec<String> = digit_ranges(min, max)
        .iter()
        .map(|seq| {
            seq.iter()
                .map(|&(lo, hi)| match (lo, hi) {
                    _ if lo == hi => lo.to_string(),
                    (0, 9) => "[0-9]".to_string(),
                    _ => format!("[{lo}-{hi}]"),
                })
                .collect()
        })
        .collect();
    format!("^0*({})$", alternatives.join("|"))
}

/// `min..=max` as alternatives, each a sequence of per-digit ranges.
fn digit_ranges(min: u64, max: u64) -> Vec<Vec<(u8, u8)>> {
    let digits = |n: u64| n.to_string().bytes().map(|b| b - b'0').collect::<Vec<u8>>();
    let mut out = Vec::new();
    for len in digits(min).len()..=digits(max).len() {
        let shortest = if len == 1 {
            0
        } else {
            10u64.pow(len as u32 - 1)
        };
        let lo = min.max(shortest);
        let hi = max.min(10u64.pow(len as u32) - 1);
        if lo <= hi {
            out.extend(same_length(&digits(lo), &digits(hi)));
        }
    }
    out
}

fn same_length(lo: &[u8], hi: &[u8]) -> Vec<Vec<(u8, u8)>> {
    let Some((&a, lo_rest)) = lo.split_first() else {
        return vec![Vec::new()];
    };
    let (&b, hi_rest) = hi.split_first().unwrap();
    let prefixed = |d: u8, rests: Vec<Vec<(u8, u8)>>| {
        rests.into_iter().map(move |rest| {
            let mut seq = vec![(d, d)];
            seq.extend(rest);
            seq
        })
    };
    if a == b {
        return prefixed(a, same_length(lo_rest, hi_rest)).collect();
    }
    let n = lo_rest.len();
    let from_zero = lo_rest.iter().all(|&d| d == 0);
    let to_nine = hi_rest.iter().all(|&d| d == 9);
    let mut out = Vec::new();
    let first = if from_zero {
        a
    } else {
        out.extend(prefixed(a, same_length(lo_rest, &vec![9; n])));
        a + 1
    };
    let last = if to_nine { b } else { b - 1 };
    if first <= last {
        let mut seq = vec![(first, last)];
        seq.extend(std::iter::repeat_n((0, 9), n));
        out.push(seq);
    }
    if !to_nine {
        out.extend(prefixed(b, same_length(&vec![0; n], hi_rest)));
    }
    out
}

/// `word` in any case, as a regular expression.
fn any_case(word: &str) -> String {
    word.chars()
        .map(|c| {
            if c.is_ascii_alphabetic() {
                format!("[{}{}]", c.to_ascii_uppercase(), c.to_ascii_lowercase())
            } else {
                c.to_string()
            }
        })
        .collect()
}

const DNS_LABEL: &str = "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?";
const DNS_SUBDOMAIN: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";

/// The JSON schema of one variable's value.
fn value_schema(var: &EnvVar) -> Value {
    let mut schema = match var.kind {
        ValueKind::Bool => json!({"anyOf": [
            {"type": "boolean"},
            {"type": "string", "pattern": format!("^({}|{})$", any_case("true"), any_case("false"))},
        ]}),
        ValueKind::Integer { min, max, .. } => json!({"anyOf": [
            {"type": "integer", "minimum": min, "maximum": max},
            {"type": "string", "pattern": range_pattern(min, max)},
        ]}),
        ValueKind::Namespace { empty_is_unset } => {
            let pattern = if empty_is_unset {
                format!("^({DNS_LABEL})?$")
            } else {
                format!("^{DNS_LABEL}$")
            };
            json!({"type": "string", "pattern": pattern})
        }
        ValueKind::ObjectName => {
            json!({"type": "string", "maxLength": 253, "pattern": format!("^{DNS_SUBDOMAIN}$")})
        }
        ValueKind::NamespaceList => json!({
            "type": "string",
            "pattern": format!("^(\\s*{DNS_LABEL}\\s*(,\\s*{DNS_LABEL}\\s*)*)?$"),
        }),
        ValueKind::LabelKey => json!({
            "type": "string",
            "maxLength": 317,
            "pattern": format!("^(({DNS_SUBDOMAIN})/)?[A-Za-z0-9]([-A-Za-z0-9_.]{{0,61}}[A-Za-z0-9])?$|^$"),
        }),
        ValueKind::OneOf(words) => {
            let words: Vec<String> = words.iter().map(|w| any_case(w)).collect();
            json!({"type": "string", "pattern": format!("^({})$", words.join("|"))})
        }
        ValueKind::File => json!({"type": "string"}),
        ValueKind::Url => json!({"type": "string", "pattern": "^(https?://[^/?#]+/?)?$"}),
        ValueKind::VaultName { slashes } => {
            let segment = "[A-Za-z0-9._-]+";
            let pattern = if slashes {
                format!("^{segment}(/{segment})*$")
            } else {
                format!("^{segment}$")
            };
            json!({"type": "string", "pattern": pattern})
        }
    };
    let mut description = var.description.to_string();
    match var.default {
        EnvDefault::Value(value) => {
            let typed = match var.kind {
                ValueKind::Bool => json!(value == "true"),
                ValueKind::Integer { .. } => json!(value.parse::<u64>().unwrap()),
                _ => json!(value),
            };
            schema["default"] = typed;
        }
        EnvDefault::Derived(how) => description.push_str(&format!(" Default: {how}.")),
    }
    schema["description"] = json!(description);
    schema
}

/// `properties.env` of values.schema.json.
fn env_schema() -> Value {
    let mut properties = serde_json::Map::new();
    for var in ENV_VARS {
        let schema = match SET_BY_CHART.iter().find(|(name, _)| *name == var.name) {
            // `not {}` refuses any value, and the description says why.
            Some((_, why)) => json!({"not": {}, "description": why}),
            None => value_schema(var),
        };
        properties.insert(var.name.to_string(), schema);
    }
    for (name, description) in CHART_ONLY {
        properties.insert(
            name.to_string(),
            json!({"type": "string", "description": description}),
        );
    }
    json!({
        "type": "object",
        "description": "Environment of the controller (README, Configuration); generated from src/operate/config.rs. Unset variables take the controller's defaults.",
        "additionalProperties": false,
        "properties": properties,
    })
}

/// `properties.metricsPort`: METRICS_PORT's range and default, as a number
/// (it is also the container port).
fn metrics_port_schema() -> Value {
    let var = ENV_VARS.iter().find(|v| v.name == "METRICS_PORT").unwrap();
    let ValueKind::Integer { min, max, .. } = var.kind else {
        panic!("METRICS_PORT is not an integer in config::ENV_VARS");
    };
    let EnvDefault::Value(default) = var.default else {
        panic!("METRICS_PORT has no fixed default in config::ENV_VARS");
    };
    json!({
        "type": "integer",
        "minimum": min,
        "maximum": max,
        "default": default.parse::<u64>().unwrap(),
        "description": format!("METRICS_PORT: {}", var.description),
    })
}

/// Differences between `got` and `want` properties, one line each.
fn compare_properties(got: &Value, want: &Value, problems: &mut Vec<String>) {
    let empty = serde_json::Map::new();
    let got = got["properties"].as_object().unwrap_or(&empty);
    let want = want["properties"].as_object().unwrap();
    for (name, want) in want {
        match got.get(name) {
            None => problems.push(format!(
                "env.{name}: read by src/operate/config.rs but missing from values.schema.json"
            )),
            Some(got) if got != want => problems.push(format!(
                "env.{name}: values.schema.json has {got}, src/operate/config.rs gives {want}"
            )),
            Some(_) => {}
        }
    }
    for name in got.keys().filter(|n| !want.contains_key(*n)) {
        problems.push(format!(
            "env.{name}: in values.schema.json but src/operate/config.rs does not read it"
        ));
    }
}

#[test]
fn values_schema_env_is_generated_from_config_rs() {
    let text = std::fs::read_to_string(SCHEMA).expect("helm/push-to-k8s/values.schema.json");
    let mut schema: Value = serde_json::from_str(&text).expect("values.schema.json is JSON");
    if std::env::var_os("UPDATE_VALUES_SCHEMA").is_some() {
        schema["properties"]["env"] = env_schema();
        schema["properties"]["metricsPort"] = metrics_port_schema();
        let mut out = serde_json::to_string_pretty(&schema).unwrap();
        out.push('\n');
        std::fs::write(SCHEMA, out).unwrap();
    }

    let mut problems = Vec::new();
    let (got, want) = (&schema["properties"]["env"], env_schema());
    compare_properties(got, &want, &mut problems);
    let rest = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("properties");
        }
        v
    };
    if rest(got) != rest(&want) {
        problems.push(format!(
            "env: values.schema.json has {}, want {}",
            rest(got),
            rest(&want)
        ));
    }
    let (got, want) = (&schema["properties"]["metricsPort"], metrics_port_schema());
    if *got != want {
        problems.push(format!(
            "metricsPort: values.schema.json has {got}, src/operate/config.rs gives {want}"
        ));
    }
    assert!(
        problems.is_empty(),
        "values.schema.json disagrees with src/operate/config.rs (config::ENV_VARS):\n  {}\nregenerate it: {REGENERATE}",
        problems.join("\n  ")
    );
}

/// The patterns for integers-as-strings match exactly their range: checked
/// for every number up to past the maximum, with and without a leading zero.
#[test]
fn values_schema_range_patterns_match_exactly_their_range() {
    let matches = |alternatives: &[Vec<(u8, u8)>], s: &str| {
        let s = s.trim_start_matches('0');
        let s = if s.is_empty() { "0" } else { s };
        alternatives.iter().any(|seq| {
            seq.len() == s.len()
                && seq.iter().zip(s.bytes()).all(|(&(lo, hi), c)| {
                    let d = c - b'0';
                    lo <= d && d <= hi
                })
        })
    };
    let mut ranges: Vec<(u64, u64)> = vec![(0, 9), (1, 100), (2, 300), (10, 99), (7, 7), (5, 1234)];
    for var in ENV_VARS {
        if let ValueKind::Integer { min, max, .. } = var.kind {
            ranges.push((min, max));
        }
    }
    for (min, max) in ranges {
        let alternatives = digit_ranges(min, max);
        for n in 0..=max + 1000 {
            let want = (min..=max).contains(&n);
            for s in [n.to_string(), format!("0{n}")] {
                assert_eq!(
                    matches(&alternatives, &s),
                    want,
                    "{} on {s:?}",
                    range_pattern(min, max)
                );
            }
        }
    }
    assert_eq!(range_pattern(1, 100), "^0*([1-9]|[1-9][0-9]|100)$");
}

// ---------------------------------------------------------------------------
// helm against the schema and the templates.

/// `cp.sh helm ARGS...`, whatever its exit status.
fn helm(args: &[&str]) -> Output {
    Command::new("bash")
        .arg(cp_script())
        .arg("helm")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run cp.sh helm")
}

/// `helm template` of the chart with `args`: its manifests, or its error.
fn template(args: &[&str]) -> Result<String, String> {
    let mut all = vec!["template", "p2k", CHART, "--namespace", "p2k-ns"];
    all.extend_from_slice(args);
    let out = helm(&all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(stderr)
    }
}

/// `helm template` with `values` as a values file (JSON is YAML): any value,
/// typed as given, without `--set`'s escaping.
/// The error of a `helm template` that must fail (and a short panic if it
/// rendered instead).
fn refused(result: Result<String, String>, what: &str) -> String {
    match result {
        Ok(_) => panic!("{what} must be refused, but helm rendered it"),
        Err(e) => e,
    }
}

fn template_values(values: &Value) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!("{}.json", unique("p2k-values")));
    std::fs::write(&path, values.to_string()).unwrap();
    let result = template(&["--values", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    result
}

/// `{"a": {"b": value}}` from `"a.b"` and `value`.
fn nested(key: &str, value: Value) -> Value {
    key.rsplit('.')
        .fold(value, |inner, part| json!({ part: inner }))
}

const SCHEMA_ERROR: &str = "don't meet the specifications of the schema";

/// Variables a user may set under `env` (config.rs minus what the chart sets).
fn user_vars() -> impl Iterator<Item = &'static EnvVar> {
    ENV_VARS
        .iter()
        .filter(|v| !SET_BY_CHART.iter().any(|(name, _)| *name == v.name))
}

/// Out-of-range values for each integer variable (as numbers and as
/// strings), invalid values of every other checkable kind, unknown names:
/// helm refuses each by the schema, naming it.
#[test]
fn values_schema_rejects_bad_values_naming_them() {
    let single = refused(
        template(&["--set", "env.SECRET_SYNC_RATE_LIMIT=1000"]),
        "SECRET_SYNC_RATE_LIMIT=1000",
    );
    assert!(
        single.contains(SCHEMA_ERROR) && single.contains("/env/SECRET_SYNC_RATE_LIMIT"),
        "{single}"
    );

    let mut bad: Vec<(String, Value)> = Vec::new();
    for var in user_vars() {
        let key = format!("env.{}", var.name);
        let values: Vec<Value> = match var.kind {
            ValueKind::Integer { min, max, .. } => {
                let mut out_of_range = vec![max + 1];
                out_of_range.extend(min.checked_sub(1));
                let mut v: Vec<Value> = out_of_range
                    .iter()
                    .flat_map(|n| [json!(n), json!(n.to_string())])
                    .collect();
                v.extend(["", "5s", "+5", "-1", "1.5", " 5"].map(Value::from));
                v.push(json!(-1));
                v
            }
            ValueKind::Bool => vec![json!("yes"), json!("1"), json!(""), json!(1)],
            ValueKind::Namespace { .. } => ["Bad", "a.b", "-a", &"a".repeat(64)]
                .map(Value::from)
                .to_vec(),
            ValueKind::ObjectName => ["Bad", "", "a..b", &"a".repeat(254)]
                .map(Value::from)
                .to_vec(),
            ValueKind::NamespaceList => ["a,,b", "a,", "A", " "].map(Value::from).to_vec(),
            ValueKind::LabelKey => ["-x", "x/", "a b", "a/b/c"].map(Value::from).to_vec(),
            ValueKind::OneOf(_) => ["", "other"].map(Value::from).to_vec(),
            ValueKind::File => vec![json!(1)],
            ValueKind::Url => ["vault:8200", "ftp://x", "http://x/v1"]
                .map(Value::from)
                .to_vec(),
            ValueKind::VaultName { .. } => ["", "a b", "/x", "x/"].map(Value::from).to_vec(),
        };
        bad.extend(values.into_iter().map(|v| (key.clone(), v)));
    }
    // Names the schema does not know, what the chart sets, top-level typos.
    bad.push(("env.SECRET_SYNC_RATE_LIMT".into(), json!(5)));
    for (name, _) in SET_BY_CHART {
        bad.push((format!("env.{name}"), json!("1")));
    }
    bad.push(("replicacount".into(), json!(2)));
    bad.push(("replicaCount".into(), json!(-1)));
    bad.push(("metricsPort".into(), json!(0)));
    bad.push(("metricsPort".into(), json!(65536)));
    bad.push(("metricsPort".into(), json!("9090")));
    for (key, value) in bad {
        let err = refused(
            template_values(&nested(&key, value.clone())),
            &format!("{key}={value}"),
        );
        let name = key.rsplit('.').next().unwrap();
        assert!(
            err.contains(SCHEMA_ERROR) && err.contains(name),
            "{key}={value}: {err}"
        );
    }
}

/// A valid value for a variable of this kind (its minimum or maximum when
/// it has a range).
fn valid_value(var: &EnvVar, at_max: bool) -> Option<Value> {
    Some(match var.kind {
        ValueKind::Bool => json!(at_max),
        ValueKind::Integer { min, max, .. } => json!(if at_max { max } else { min }),
        ValueKind::Namespace { .. } => json!(if at_max { "a".repeat(63) } else { "a".into() }),
        ValueKind::ObjectName => json!("lease.example-1"),
        ValueKind::NamespaceList => json!(if at_max { "a, b ,c" } else { "" }),
        ValueKind::LabelKey => json!(if at_max { "example.com/No_Sync.v1" } else { "" }),
        ValueKind::OneOf(words) => json!(words[words.len() - 1].to_uppercase()),
        ValueKind::VaultName { .. } => json!(if at_max { "kv_2.x-y" } else { "kv" }),
        // A Vault address needs its token file at start, which the chart's
        // pod has and this test does not.
        ValueKind::File | ValueKind::Url => return None,
    })
}

/// `name: value` of the container's env in a rendered Deployment (values
/// only: downward-API entries have none).
fn rendered_env(manifests: &str) -> BTreeMap<String, String> {
    let deployment = manifests
        .split("\n---")
        .find(|doc| doc.contains("\nkind: Deployment"))
        .expect("a Deployment");
    let mut env = BTreeMap::new();
    let mut name: Option<String> = None;
    for line in deployment.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("- name: ") {
            name = Some(n.to_string());
        } else if let (Some(n), Some(v)) = (name.take(), line.strip_prefix("value: ")) {
            let v: String = serde_json::from_str(v).unwrap_or_else(|_| v.to_string());
            env.insert(n, v);
        }
    }
    env
}

/// Every variable at its minimum, then at its maximum (typed, and all as
/// strings as in a values file that quotes them): helm renders them, and the
/// controller's own parser accepts the environment the Deployment then has.
#[test]
fn values_schema_accepts_boundaries_the_controller_accepts() {
    for at_max in [false, true] {
        for as_strings in [false, true] {
            let mut env = serde_json::Map::new();
            for var in user_vars() {
                if let Some(value) = valid_value(var, at_max) {
                    let value = match value {
                        Value::String(s) => Value::String(s),
                        other if as_strings => Value::String(other.to_string()),
                        other => other,
                    };
                    env.insert(var.name.to_string(), value);
                }
            }
            env.insert("RUST_LOG".into(), json!("info"));
            // One replica: LEADER_ELECTION is false at its minimum.
            let manifests = template_values(&json!({ "env": env, "replicaCount": 1 }))
                .unwrap_or_else(|e| panic!("valid values refused ({env:?}):\n{e}"));
            let rendered = rendered_env(&manifests);
            for name in env.keys() {
                assert!(
                    rendered.contains_key(name),
                    "{name} not rendered: {rendered:?}"
                );
            }
            if let Err(e) = Config::from_vars(rendered.clone()) {
                panic!("the controller refuses what the chart renders: {e}\n{rendered:?}");
            }
        }
    }
    // Also with leading zeros, which the controller reads as decimal.
    let manifests = template_values(&json!({"env": {"SECRET_SYNC_RATE_LIMIT": "010"}})).unwrap();
    assert_eq!(rendered_env(&manifests)["SECRET_SYNC_RATE_LIMIT"], "010");
    assert_eq!(
        Config::from_vars([("SECRET_SYNC_RATE_LIMIT".to_string(), "010".to_string())])
            .unwrap()
            .rate_limit
            .get(),
        10
    );
    // Unset: the chart's own defaults.
    template(&[]).expect("the default values");
}

/// Whatever the Deployment puts in the environment is something the
/// controller reads: a variable renamed in config.rs cannot be left behind in
/// the template, silently ignored.
#[test]
fn env_the_chart_sets_is_read_by_the_controller() {
    let manifests = template(&[]).unwrap();
    let deployment = manifests
        .split("\n---")
        .find(|doc| doc.contains("\nkind: Deployment"))
        .unwrap();
    let names: Vec<&str> = deployment
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("- name: "))
        .filter(|n| *n != "push-to-k8s" && *n != "metrics")
        .collect();
    assert!(names.contains(&"POD_NAMESPACE"), "{names:?}");
    for name in names {
        assert!(
            ENV_VARS.iter().any(|v| v.name == name)
                || READ_ELSEWHERE.iter().any(|(n, _)| *n == name),
            "the chart sets {name}, which the controller does not read"
        );
    }
}

fn kinds_of(manifests: &str) -> Vec<String> {
    manifests
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn optional_objects_render_only_when_enabled() {
    let optional = [
        ("serviceMonitor.enabled", "ServiceMonitor"),
        ("prometheusRule.enabled", "PrometheusRule"),
        ("networkPolicy.enabled", "NetworkPolicy"),
        ("grafanaDashboard.enabled", "ConfigMap"),
    ];
    let default = kinds_of(&template(&[]).unwrap());
    for kind in [
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(
            default.iter().any(|k| k == kind),
            "{kind} by default: {default:?}"
        );
    }
    for (value, kind) in optional {
        assert!(
            !default.iter().any(|k| k == kind),
            "{kind} rendered by default: {default:?}"
        );
        let on = kinds_of(&template(&["--set", &format!("{value}=true")]).unwrap());
        assert_eq!(
            on.iter().filter(|k| *k == kind).count(),
            1,
            "{kind} with {value}=true: {on:?}"
        );
        for (other_value, other) in optional.iter().filter(|(_, k)| *k != kind) {
            assert!(
                !on.iter().any(|k| k == other),
                "{other} rendered with only {value}=true (not {other_value})"
            );
        }
    }
    let off = kinds_of(&template(&["--set", "podDisruptionBudget.enabled=false"]).unwrap());
    assert!(!off.iter().any(|k| k == "PodDisruptionBudget"), "{off:?}");
    // The admission policy (issue 19): on by default where the API exists
    // (`helm install` asks the cluster; here `--api-versions` says so), not
    // rendered where it does not (helm template's own list lacks it, as a
    // cluster before 1.30 does), off when switched off.
    let vap = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy";
    assert!(
        !default
            .iter()
            .any(|k| k.starts_with("ValidatingAdmissionPolicy")),
        "without the API: {default:?}"
    );
    let with_api = kinds_of(&template(&["--api-versions", vap]).unwrap());
    for kind in [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        assert_eq!(
            with_api.iter().filter(|k| *k == kind).count(),
            1,
            "{kind} by default where the API exists: {with_api:?}"
        );
    }
    let off = kinds_of(
        &template(&[
            "--api-versions",
            vap,
            "--set",
            "admissionPolicy.enabled=false",
        ])
        .unwrap(),
    );
    assert!(
        !off.iter()
            .any(|k| k.starts_with("ValidatingAdmissionPolicy")),
        "{off:?}"
    );
    let err = template(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "service.enabled=false",
    ])
    .expect_err("a ServiceMonitor without its Service");
    assert!(err.contains("service.enabled"), "{err}");
    // Two replicas only with a Lease.
    let err = template(&[
        "--set",
        "replicaCount=2",
        "--set",
        "env.LEADER_ELECTION=false",
    ])
    .expect_err("two replicas without leader election");
    assert!(err.contains("LEADER_ELECTION"), "{err}");
    let two = template(&[
        "--set",
        "replicaCount=2",
        "--set",
        "strategy.type=RollingUpdate",
    ])
    .unwrap();
    assert!(two.contains("replicas: 2") && two.contains("type: RollingUpdate"));
    // Lint with everything on, too.
    let lint = helm(&[
        "lint",
        "--strict",
        CHART,
        "--set",
        "serviceMonitor.enabled=true,prometheusRule.enabled=true,networkPolicy.enabled=true,grafanaDashboard.enabled=true",
    ]);
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
}

/// The rendered objects, parsed (comment-only documents left out).
fn objects(manifests: &str) -> Vec<Value> {
    manifests
        .split("\n---")
        .filter(|doc| doc.lines().any(|l| l.starts_with("kind: ")))
        .map(|doc| {
            serde_saphyr::from_str(doc).unwrap_or_else(|e| panic!("rendered YAML: {e}\n{doc}"))
        })
        .collect()
}

fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// Every rule of every Role and ClusterRole, as (role, apiGroups, resources,
/// resourceNames, verbs).
type Grant = (String, Vec<String>, Vec<String>, Vec<String>, Vec<String>);

fn grants(objects: &[Value]) -> Vec<Grant> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .flat_map(|o| {
            let role = format!("{} {}", o["kind"].as_str().unwrap(), o["metadata"]["name"]);
            o["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |r| {
                    (
                        role.clone(),
                        strings(&r["apiGroups"]),
                        strings(&r["resources"]),
                        strings(&r["resourceNames"]),
                        strings(&r["verbs"]),
                    )
                })
        })
        .collect()
}

/// The rules the release's ClusterRole `p2k` has that concern PushRules:
/// the push-to-k8s.io and apiextensions.k8s.io groups, and Events.
fn rule_grants(objects: &[Value]) -> Vec<Grant> {
    grants(objects)
        .into_iter()
        .filter(|(role, groups, ..)| {
            role == "ClusterRole \"p2k\""
                && groups.iter().any(|g| {
                    g == "push-to-k8s.io"
                        || g == "apiextensions.k8s.io"
                        || g == "events.k8s.io"
                        || g == "apps"
                })
        })
        .collect()
}

/// Issue 19: PushRules in the chart. By default the CRD (with
/// helm.sh/resource-policy: keep, exactly files/pushrule-crd.yaml) and its
/// read role aggregated into view/edit/admin are rendered, the controller
/// gets what serving rules needs and nobody gets create on pushrules, and the
/// admission policy also matches rule copies. With pushRules.enabled=false:
/// none of that, and the controller runs with ENABLE_PUSH_RULES=false.
#[test]
fn push_rules_are_served_by_default_and_switch_off_as_a_whole() {
    let vap = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy";
    let on_text = template(&["--api-versions", vap]).unwrap();
    let on = objects(&on_text);

    // The CRD and the read role, as the file has them.
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/push-to-k8s/files/pushrule-crd.yaml"
    ))
    .unwrap();
    for doc in file.split("\n---\n") {
        assert!(
            on_text.contains(doc.trim_end()),
            "files/pushrule-crd.yaml rendered as it is"
        );
    }
    let crd = object(&on, "CustomResourceDefinition", "pushrules.push-to-k8s.io")
        .expect("the PushRule CRD by default");
    assert_eq!(
        crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "helm uninstall must never delete the CRD (and with it every rule)"
    );
    assert_eq!(crd["spec"]["scope"], "Cluster");
    let view = object(&on, "ClusterRole", "push-to-k8s-pushrules-view").expect("the read role");
    for to in ["view", "edit", "admin"] {
        assert_eq!(
            view["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{to}")],
            "true",
            "{view}"
        );
    }
    assert_eq!(
        view["rules"],
        json!([{"apiGroups": ["push-to-k8s.io"], "resources": ["pushrules", "pushrules/status"],
                "verbs": ["get", "list", "watch"]}])
    );

    // The controller's grants for rules, exactly.
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let role = "ClusterRole \"p2k\"".to_string();
    assert_eq!(
        rule_grants(&on),
        vec![
            (
                role.clone(),
                s(&["push-to-k8s.io"]),
                s(&["pushrules"]),
                vec![],
                s(&["get", "list", "watch", "patch"])
            ),
            (
                role.clone(),
                s(&["push-to-k8s.io"]),
                s(&["pushrules/status"]),
                vec![],
                s(&["patch"])
            ),
            (
                role.clone(),
                s(&["apiextensions.k8s.io"]),
                s(&["customresourcedefinitions"]),
                s(&["pushrules.push-to-k8s.io"]),
                s(&["get"])
            ),
            (
                role.clone(),
                s(&["events.k8s.io"]),
                s(&["events"]),
                vec![],
                s(&["create", "patch"])
            ),
            (
                role.clone(),
                s(&["apps"]),
                s(&["deployments"]),
                vec![],
                s(&["list", "watch"])
            ),
        ]
    );
    // Nobody creates, updates or deletes rules through a role of the chart.
    for (role, groups, resources, _, verbs) in grants(&on) {
        let rules = groups.iter().any(|g| g == "push-to-k8s.io" || g == "*")
            && resources
                .iter()
                .any(|r| r.starts_with("pushrules") || r == "*");
        let writes = verbs
            .iter()
            .any(|v| ["create", "update", "delete", "deletecollection", "*"].contains(&v.as_str()));
        assert!(!(rules && writes), "{role} may write rules: {verbs:?}");
    }
    // The controller's own default serves rules (ENABLE_PUSH_RULES unset).
    assert!(
        !rendered_env(&on_text).contains_key("ENABLE_PUSH_RULES"),
        "{:?}",
        rendered_env(&on_text)
    );

    // The admission policy also matches rule copies, and names the rule.
    let policy = on
        .iter()
        .find(|o| o["kind"] == "ValidatingAdmissionPolicy")
        .expect("the policy");
    let matched = policy["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(
        matched.contains("'push-to-k8s.io/rule' in oldObject.metadata.annotations")
            && matched.contains(".startsWith(\"p2k-ns/\")")
            && matched.contains("!('push-to-k8s.io/source-cluster' in"),
        "{matched}"
    );
    let message = policy["spec"]["validations"][0]["messageExpression"]
        .as_str()
        .unwrap();
    assert!(
        message.contains("for PushRule ") && message.contains("edit the rule or its source "),
        "{message}"
    );

    // Switched off: no CRD, no read role, no grant for rules, no rule copy
    // matched, and the controller told not to serve rules.
    let off_text = template(&["--api-versions", vap, "--set", "pushRules.enabled=false"]).unwrap();
    let off = objects(&off_text);
    assert!(
        !off.iter().any(|o| o["kind"] == "CustomResourceDefinition"
            || o["metadata"]["name"] == "push-to-k8s-pushrules-view"),
        "{off_text}"
    );
    assert_eq!(rule_grants(&off), vec![], "no grant for rules when off");
    assert_eq!(rendered_env(&off_text)["ENABLE_PUSH_RULES"], "false");
    let policy = off
        .iter()
        .find(|o| o["kind"] == "ValidatingAdmissionPolicy")
        .expect("the policy stays for labelled sources' copies");
    let matched = policy["spec"]["matchConditions"][0]["expression"]
        .as_str()
        .unwrap();
    assert!(
        !matched.contains("push-to-k8s.io/rule") && matched.contains(".startsWith(\"p2k-ns/\")"),
        "{matched}"
    );
    assert!(
        !policy["spec"]["validations"][0]["messageExpression"]
            .as_str()
            .unwrap()
            .contains("PushRule")
    );

    // env.ENABLE_PUSH_RULES: false with pushRules off is rendered once; true
    // with pushRules off is refused (it would run without the grants); false
    // with pushRules on pauses serving rules, CRD and grants kept.
    let both_off = template(&[
        "--set",
        "pushRules.enabled=false",
        "--set",
        "env.ENABLE_PUSH_RULES=false",
    ])
    .unwrap();
    assert_eq!(
        both_off.matches("name: ENABLE_PUSH_RULES").count(),
        1,
        "{both_off}"
    );
    assert_eq!(rendered_env(&both_off)["ENABLE_PUSH_RULES"], "false");
    let err = template(&[
        "--set",
        "pushRules.enabled=false",
        "--set",
        "env.ENABLE_PUSH_RULES=true",
    ])
    .expect_err("ENABLE_PUSH_RULES=true without the rule grants");
    assert!(err.contains("pushRules.enabled"), "{err}");
    let paused_text = template(&["--set", "env.ENABLE_PUSH_RULES=false"]).unwrap();
    assert_eq!(rendered_env(&paused_text)["ENABLE_PUSH_RULES"], "false");
    assert_eq!(rule_grants(&objects(&paused_text)).len(), 5);
    // The value is checked by the schema.
    let err = refused(
        template(&["--set", "pushRules.enabled=maybe"]),
        "pushRules.enabled=maybe",
    );
    assert!(
        err.contains(SCHEMA_ERROR) && err.contains("pushRules"),
        "{err}"
    );
}

/// The NetworkPolicy the chart renders with `args` (networkPolicy.enabled on).
fn network_policy(args: &[&str]) -> Result<NetworkPolicy, String> {
    let mut all = vec![
        "--set",
        "networkPolicy.enabled=true",
        "--show-only",
        "templates/networkpolicy.yaml",
    ];
    all.extend_from_slice(args);
    let yaml = template(&all)?;
    Ok(serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("NetworkPolicy YAML: {e}")))
}

/// The egress rules as (ports as `port/protocol`, peers' CIDRs, whether the rule
/// names peers other than CIDRs), one per rule.
fn egress(policy: &NetworkPolicy) -> Vec<(Vec<String>, Vec<String>, bool)> {
    let spec = policy.spec.as_ref().expect("spec");
    spec.egress
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|rule| {
            let ports = rule
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    let port = match p.port {
                        Some(IntOrString::Int(i)) => i.to_string(),
                        Some(IntOrString::String(s)) => s,
                        None => "any".into(),
                    };
                    format!("{port}/{}", p.protocol.unwrap_or_default())
                })
                .collect();
            let to = rule.to.unwrap_or_default();
            let selectors = to.iter().any(|peer| peer.ip_block.is_none());
            let cidrs = to
                .into_iter()
                .filter_map(|peer| peer.ip_block.map(|b| b.cidr))
                .collect();
            (ports, cidrs, selectors)
        })
        .collect()
}

/// Issue 16 item 13: with the NetworkPolicy on, Vault, remote API servers and
/// their DNS were cut off silently (egress went only to the API server). The
/// egress is derived from the configured targets, or the chart refuses the
/// combination naming what to set.
#[test]
fn network_policy_egress_follows_the_configured_targets() {
    let rule_with = |rules: &[(Vec<String>, Vec<String>, bool)], port: &str| {
        rules
            .iter()
            .find(|(ports, _, _)| ports.iter().any(|p| p == port))
            .cloned()
    };
    // Vault by IP address: its port, to that address only; no DNS needed for it.
    let p = network_policy(&[
        "--set",
        "env.VAULT_ADDR=http://192.0.2.7:8200",
        "--set",
        "networkPolicy.remoteClusters.egress=none",
    ])
    .unwrap();
    let rules = egress(&p);
    let vault = rule_with(&rules, "8200/TCP").expect("an egress rule to Vault's port 8200");
    assert_eq!(vault.1, vec!["192.0.2.7/32".to_string()], "{rules:?}");
    assert!(
        rule_with(&rules, "53/UDP").is_none(),
        "no DNS for an IP address: {rules:?}"
    );
    assert!(
        rule_with(&rules, "6443/TCP").is_some(),
        "the API server rule stays: {rules:?}"
    );
    // Vault by host name: its port to any address (or the CIDRs given), and DNS.
    let p = network_policy(&[
        "--set",
        "env.VAULT_ADDR=https://vault.vault.svc:8200",
        "--set",
        "networkPolicy.remoteClusters.egress=none",
    ])
    .unwrap();
    let rules = egress(&p);
    let vault = rule_with(&rules, "8200/TCP").expect("Vault's port");
    assert!(vault.1.is_empty() && !vault.2, "any address: {rules:?}");
    let dns = rule_with(&rules, "53/UDP").expect("DNS for Vault's host name");
    assert!(
        dns.0.contains(&"53/TCP".to_string()) && dns.2,
        "DNS to kube-dns: {rules:?}"
    );
    let p = network_policy(&[
        "--set",
        "env.VAULT_ADDR=https://vault.example",
        "--set",
        "networkPolicy.vault.cidrs={198.51.100.0/24}",
        "--set",
        "networkPolicy.remoteClusters.egress=none",
    ])
    .unwrap();
    let vault = egress(&p)
        .into_iter()
        .find(|r| r.0 == vec!["443/TCP".to_string()] && r.1 == vec!["198.51.100.0/24".to_string()]);
    assert!(
        vault.is_some(),
        "https without a port is 443, to the CIDRs given: {p:?}"
    );
    // Remote clusters by default: their ports and DNS (egress was not restricted
    // by address anyway).
    let rules = egress(&network_policy(&[]).unwrap());
    assert!(
        rule_with(&rules, "53/UDP").is_some(),
        "DNS for remote API servers: {rules:?}"
    );
    assert_eq!(
        rules
            .iter()
            .filter(|(ports, _, _)| ports.contains(&"6443/TCP".to_string()))
            .count(),
        2,
        "the API server's rule and the remote clusters' one: {rules:?}"
    );
    // Restricting the API server's addresses without a word about remote
    // clusters is refused, naming the value to set.
    let err = network_policy(&["--set", "networkPolicy.apiServer.cidrs={10.0.0.1/32}"])
        .expect_err("apiServer.cidrs without remoteClusters.egress");
    assert!(err.contains("networkPolicy.remoteClusters.egress"), "{err}");
    let rules = egress(
        &network_policy(&[
            "--set",
            "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
            "--set",
            "networkPolicy.remoteClusters.egress=allow",
            "--set",
            "networkPolicy.remoteClusters.cidrs={203.0.113.0/24}",
        ])
        .unwrap(),
    );
    assert!(
        rules
            .iter()
            .any(|r| r.1 == vec!["203.0.113.0/24".to_string()]
                && r.0.contains(&"443/TCP".to_string())),
        "the remote clusters' CIDRs: {rules:?}"
    );
    let rules = egress(
        &network_policy(&[
            "--set",
            "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
            "--set",
            "networkPolicy.remoteClusters.egress=none",
        ])
        .unwrap(),
    );
    assert_eq!(rules.len(), 1, "only the API server: {rules:?}");
    assert_eq!(rules[0].1, vec!["10.0.0.1/32".to_string()]);
}

/// Every `push_to_k8s_*` series an alert reads is one the controller exports
/// (so a renamed metric cannot leave an alert that never fires), and the
/// alerts the issue asks for are there.
#[test]
fn alerts_use_metrics_the_controller_exports() {
    let rules = template(&[
        "--set",
        "prometheusRule.enabled=true",
        "--show-only",
        "templates/prometheusrule.yaml",
    ])
    .unwrap();
    let metrics = push_to_k8s::operate::metrics::Metrics::new();
    // A family shows only once it has a series.
    metrics.write(push_to_k8s::model::kinds::Kind::Secret, "apply", "error");
    let east = push_to_k8s::operate::metrics::ClusterLabels {
        cluster: "east".into(),
    };
    metrics.cluster_up.get_or_create(&east).set(0);
    let mut exported = Vec::new();
    for line in metrics.encode().lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match kind {
                "counter" => exported.push(format!("{name}_total")),
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        exported.push(format!("{name}{suffix}"));
                    }
                }
                _ => exported.push(name.to_string()),
            }
        }
    }
    let mut used = Vec::new();
    for expr in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
    {
        let mut rest = expr;
        while let Some(at) = rest.find("push_to_k8s_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            used.push(name);
        }
    }
    for name in &used {
        assert!(
            exported.contains(name),
            "an alert reads {name}, which the controller does not export: {exported:?}"
        );
    }
    for alert in [
        "PushToK8sDown",
        "PushToK8sNotReady",
        "PushToK8sWritesFailing",
        "PushToK8sConflicts",
        "PushToK8sOutOfSync",
        "PushToK8sRemoteClusterDown",
        "PushToK8sVaultDown",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "{alert} missing:\n{rules}"
        );
    }
    assert!(used.iter().any(|n| n == "push_to_k8s_writes_total"));
    assert!(rules.contains(r#"result="error""#), "{rules}");
}

// ---------------------------------------------------------------------------
// The real API server.

fn kubectl(args: &[&str]) -> Output {
    Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl")
}

/// Uninstalls the release and deletes its namespace when the test ends,
/// passed or not.
struct Release {
    name: String,
    kubeconfig: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let out = helm(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.name,
            "--kubeconfig",
            &self.kubeconfig,
        ]);
        if !out.status.success() && !std::thread::panicking() {
            panic!("helm uninstall {}: {out:?}", self.name);
        }
        kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

/// `kubectl auth can-i VERB RESOURCE` as the release's ServiceAccount.
fn can_i(sa: &str, verb: &str, resource: &str, ns: &str) -> bool {
    let out = kubectl(&[
        "auth",
        "can-i",
        verb,
        resource,
        "--namespace",
        ns,
        &format!("--as=system:serviceaccount:{sa}"),
    ]);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

/// The chart installed (every optional object the cluster has a kind for)
/// into a namespace that enforces the restricted Pod Security profile: the
/// API server accepts every object, raises no Pod Security warning, and
/// admits the pod template (a server-side dry-run create of it as a Pod: the
/// test control plane runs no Deployment controller, and a dry run is the
/// same admission without a kubelet). The same template made to
/// break the profile is refused, so the namespace does enforce it. The
/// Lease Role allows the release's Lease and nothing more.
#[tokio::test]
async fn pod_template_is_admitted_under_restricted_pod_security() {
    // The release's admission policy matches every PushRule copy in the
    // cluster while it is installed: not while another test serves rules.
    let _serial = serial();
    let client = client().await;
    let ns = unique("p2k-restricted");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels: BTreeMap<String, String> = ["enforce", "warn", "audit"]
        .iter()
        .map(|mode| {
            (
                format!("pod-security.kubernetes.io/{mode}"),
                "restricted".to_string(),
            )
        })
        .collect();
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns, "labels": labels}})).unwrap(),
        )
        .await
        .unwrap();
    let release = ns.clone();
    let kubeconfig = control_plane().kubeconfig.to_str().unwrap().to_string();
    let _cleanup = Release {
        name: release.clone(),
        kubeconfig: kubeconfig.clone(),
    };
    let install = helm(&[
        "install",
        &release,
        CHART,
        "--namespace",
        &ns,
        "--kubeconfig",
        &kubeconfig,
        // No --take-ownership: the PushRule CRD other tests apply, or an
        // earlier release left behind (helm.sh/resource-policy: keep), is not
        // rendered again where it is installed, so a new install never fails
        // on Helm's ownership check (found by the Pod tests' second install).
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.apiServer.cidrs={10.0.0.1/32}",
        "--set",
        "networkPolicy.remoteClusters.egress=none",
        "--set",
        "networkPolicy.metricsFrom[0].namespaceSelector.matchLabels.name=monitoring",
    ]);
    let stderr = String::from_utf8_lossy(&install.stderr);
    assert!(install.status.success(), "helm install failed:\n{stderr}");
    assert!(
        !stderr.contains("PodSecurity") && !stderr.contains("violate"),
        "Pod Security warnings:\n{stderr}"
    );
    for kind in [
        "deployment",
        "service",
        "poddisruptionbudget",
        "networkpolicy",
        "role",
        "rolebinding",
    ] {
        let out = kubectl(&["get", kind, "-n", &ns, "-o", "name"]);
        assert!(
            out.status.success() && !out.stdout.is_empty(),
            "no {kind} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // The PushRule CRD is installed (by this release or one before it).
    let out = kubectl(&["get", "crd", "pushrules.push-to-k8s.io", "-o", "name"]);
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "the CRD: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The pod template, as a Pod, server-side dry run.
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get(&release)
        .await
        .unwrap();
    let template = deployment.spec.unwrap().template;
    let pod = |spec| Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{release}-dry-run")),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            ..Default::default()
        },
        spec: Some(spec),
        ..Default::default()
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let spec = template.spec.clone().unwrap();
    if let Err(e) = pods.create(&dry_run, &pod(spec.clone())).await {
        panic!("the restricted profile refuses the chart's pod template: {e}");
    }

    // Each setting the profile requires, dropped in turn, is refused: the
    // namespace does enforce the profile, and each setting is needed.
    type Breaker = fn(&mut PodSpec);
    let breakers: [(&str, Breaker); 4] = [
        ("allowPrivilegeEscalation", |s| {
            s.containers[0]
                .security_context
                .as_mut()
                .unwrap()
                .allow_privilege_escalation = None
        }),
        ("capabilities", |s| {
            s.containers[0]
                .security_context
                .as_mut()
                .unwrap()
                .capabilities = None
        }),
        ("runAsNonRoot", |s| {
            s.security_context.as_mut().unwrap().run_as_non_root = None
        }),
        ("seccompProfile", |s| {
            s.security_context.as_mut().unwrap().seccomp_profile = None
        }),
    ];
    for (setting, breaker) in breakers {
        let mut broken = spec.clone();
        breaker(&mut broken);
        match pods.create(&dry_run, &pod(broken)).await {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 403, "{e:?}");
                assert!(
                    e.message.contains("PodSecurity") && e.message.contains(setting),
                    "{e:?}"
                );
            }
            other => panic!("the template without {setting} was not refused: {other:?}"),
        }
    }
    // Beyond the profile: nothing can be written to the image's filesystem.
    let container = spec.containers[0].security_context.as_ref().unwrap();
    assert_eq!(container.read_only_root_filesystem, Some(true));

    // Lease RBAC: the release's Lease, in the release namespace, only.
    let sa = format!("{ns}:{release}");
    let lease = format!("leases.coordination.k8s.io/{release}");
    assert!(can_i(&sa, "create", "leases.coordination.k8s.io", &ns));
    assert!(can_i(&sa, "get", &lease, &ns));
    assert!(can_i(&sa, "update", &lease, &ns));
    assert!(!can_i(
        &sa,
        "get",
        "leases.coordination.k8s.io/someone-else",
        &ns
    ));
    assert!(!can_i(&sa, "delete", &lease, &ns));
    assert!(!can_i(
        &sa,
        "create",
        "leases.coordination.k8s.io",
        "default"
    ));
}
