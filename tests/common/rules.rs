//! PushRules in the end-to-end tests (issue 19): the CRD as the chart ships
//! it, rules applied and read with kubectl, and a guard that removes a
//! test's rules even when the controller is stopped.

use std::time::Duration;

use serde_json::{Value, json};

use super::{kubectl_try, until};

pub const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/helm/push-to-k8s/files/pushrule-crd.yaml"
);
/// How long a rule may take to say what is awaited.
const RULE_WAIT: Duration = Duration::from_secs(90);

pub fn kubectl(args: &[&str], input: Option<&str>) -> String {
    let (ok, out) = kubectl_try(None, args, input);
    assert!(ok, "kubectl {args:?}: {out}");
    out
}

pub fn install_crd() {
    kubectl(&["apply", "-f", CRD], None);
    kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/pushrules.push-to-k8s.io",
        ],
        None,
    );
}

pub fn apply_rule(name: &str, spec: Value) {
    let rule = json!({
        "apiVersion": "push-to-k8s.io/v1alpha1",
        "kind": "PushRule",
        "metadata": {"name": name},
        "spec": spec,
    });
    kubectl(&["apply", "-f", "-"], Some(&rule.to_string()));
}

pub fn get_rule(name: &str) -> Option<Value> {
    let out = kubectl(
        &["get", "pushrule", name, "-o", "json", "--ignore-not-found"],
        None,
    );
    (!out.trim().is_empty()).then(|| serde_json::from_str(&out).expect("rule json"))
}

/// A condition of a rule: `(status, reason, message)`.
pub fn condition(rule: &Value, type_: &str) -> Option<(String, String, String)> {
    rule["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
            (s("status"), s("reason"), s("message"))
        })
}

/// Wait until rule `name`'s `Ready` condition has `status` and `reason`; the rule.
pub async fn await_ready(name: &str, status: &str, reason: &str) -> Value {
    until(
        &format!("rule {name} Ready={status} ({reason})"),
        RULE_WAIT,
        || async {
            let rule = get_rule(name).ok_or("no such rule")?;
            match condition(&rule, "Ready") {
                Some((s, r, _)) if s == status && r == reason => Ok(rule),
                other => Err(format!("{other:?}; status {}", rule["status"])),
            }
        },
    )
    .await
}

/// Removes every rule a test made (their finalizers first: the controller
/// may be stopped), also when it fails.
pub struct Rules(pub Vec<String>);

impl Drop for Rules {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = kubectl_try(
                None,
                &[
                    "delete",
                    "pushrule",
                    name,
                    "--ignore-not-found",
                    "--wait=false",
                ],
                None,
            );
            let _ = kubectl_try(
                None,
                &[
                    "patch",
                    "pushrule",
                    name,
                    "--type=merge",
                    "-p",
                    r#"{"metadata":{"finalizers":null}}"#,
                ],
                None,
            );
        }
    }
}
