//! The PushRule API (issue 19), against the real API server: what the CRD's
//! schema accepts and refuses (`helm/push-to-k8s/files/pushrule-crd.yaml`,
//! which the chart installs), the columns `kubectl get pushrules` shows, and
//! who may create or read rules (nobody but a cluster admin creates one;
//! `view`, `edit` and `admin` users read them through the aggregated
//! ClusterRole).
//!
//! The API only: the controller serving rules is tests/e2e_pushrule.rs, with
//! the chart's grants tests/rbac.rs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/helm/push-to-k8s/files/pushrule-crd.yaml"
);

/// `kubectl` (as `user`, when given) with `manifest` on stdin: whether it
/// succeeded, and what it printed.
fn kubectl_in(user: Option<&str>, args: &[&str], manifest: Option<&Value>) -> (bool, String) {
    kubectl_try(user, args, manifest.map(Value::to_string).as_deref())
}

fn kubectl(args: &[&str]) -> String {
    let (ok, out) = kubectl_in(None, args, None);
    assert!(ok, "kubectl {args:?}: {out}");
    out
}

fn rule(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "push-to-k8s.io/v1alpha1",
        "kind": "PushRule",
        "metadata": {"name": name},
        "spec": spec,
    })
}

/// Deletes the rules a test made (by label), also when it fails.
struct Rules(String);

impl Drop for Rules {
    fn drop(&mut self) {
        let _ = kubectl_in(
            None,
            &[
                "delete",
                "pushrules",
                "-l",
                &format!("test={}", self.0),
                "--ignore-not-found",
            ],
            None,
        );
    }
}

#[tokio::test]
async fn the_schema_refuses_what_it_can_and_only_cluster_admins_create_rules() {
    let _serial = serial();
    kubectl(&["apply", "-f", CRD]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/pushrules.push-to-k8s.io",
    ]);
    let id = unique("rule");
    let _rules = Rules(id.clone());
    let labelled = |name: &str, spec: Value| {
        let mut r = rule(name, spec);
        r["metadata"]["labels"] = json!({"test": id});
        r
    };

    // Accepted: a named source with the annotation-equivalent targeting, and a
    // selector source; deletionPolicy defaults to Delete.
    let by_name = labelled(
        &format!("{id}-tls"),
        json!({
            "source": {"kind": "Secret", "namespace": "ingress", "name": "wildcard-tls"},
            "namespaces": ["team-*"],
            "excludeNamespaces": ["team-legacy"],
            "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]},
            "includeKeys": ["tls.*"],
            "copyName": "wildcard",
            "clusters": ["*"],
            "vault": {"path": "shared/wildcard"},
            "workloadVault": {"namespaces": ["team-*"], "pathPrefix": "tenants/"},
        }),
    );
    let by_selector = labelled(
        &format!("{id}-registry"),
        json!({
            "source": {"kind": "ConfigMap", "namespace": "operators",
                       "selector": {"matchLabels": {"share": "registry"}}},
            "deletionPolicy": "Orphan",
        }),
    );
    for r in [&by_name, &by_selector] {
        let (ok, out) = kubectl_in(None, &["create", "-f", "-"], Some(r));
        assert!(ok, "a valid rule is accepted: {out}\n{r}");
    }
    let stored: Value = serde_json::from_str(&kubectl(&[
        "get",
        "pushrule",
        &format!("{id}-tls"),
        "-o",
        "json",
    ]))
    .unwrap();
    assert_eq!(stored["spec"]["deletionPolicy"], "Delete", "the default");

    // Refused by the schema, each with a message naming the field.
    let bad = [
        (
            json!({"source": {"kind": "Pod", "namespace": "a", "name": "b"}}),
            "spec.source.kind",
        ),
        (
            json!({"source": {"kind": "Secret", "name": "b"}}),
            "spec.source.namespace",
        ),
        (
            json!({"source": {"kind": "Secret", "namespace": "Not_A_Namespace", "name": "b"}}),
            "spec.source.namespace",
        ),
        (
            json!({"source": {"kind": "Secret", "namespace": "a"}}),
            "set exactly one of source.name and source.selector",
        ),
        (
            json!({"source": {"kind": "Secret", "namespace": "a", "name": "b",
                              "selector": {"matchLabels": {"x": "y"}}}}),
            "set exactly one of source.name and source.selector",
        ),
        (
            json!({"source": {"kind": "Secret", "namespace": "a", "name": "b"},
                   "deletionPolicy": "Keep"}),
            "spec.deletionPolicy",
        ),
        (
            json!({"source": {"kind": "Secret", "namespace": "a",
                              "selector": {"matchLabels": {"x": "y"}}},
                   "copyName": "c"}),
            "copyName needs source.name",
        ),
        (
            json!({"source": {"kind": "Secret", "namespace": "a", "name": "b"},
                   "namespaces": "team-*"}),
            "spec.namespaces",
        ),
        (
            json!({"source": {"kind": "Secret", "namespace": "a", "name": "b"},
                   "namespaceSelector": {"matchExpressions": [{"key": "k", "operator": "Near"}]}}),
            "spec.namespaceSelector.matchExpressions[0].operator",
        ),
        (
            json!({"source": {"kind": "Secret", "namespace": "a", "name": "b"},
                   "workloadVault": {"namespaces": ["t"]}}),
            "spec.workloadVault.pathPrefix",
        ),
        (
            json!({"source": {"kind": "Secret", "namespace": "a", "name": "b"},
                   "workloadVault": {"namespaces": ["t"], "pathPrefix": "tenants/*"}}),
            "spec.workloadVault.pathPrefix",
        ),
        (json!({}), "spec.source"),
    ];
    for (i, (spec, field)) in bad.iter().enumerate() {
        let r = labelled(&format!("{id}-bad-{i}"), spec.clone());
        let (ok, out) = kubectl_in(None, &["create", "-f", "-"], Some(&r));
        assert!(!ok, "refused: {spec}");
        assert!(
            out.contains("is invalid") && out.contains(field),
            "the refusal of {spec} names {field}: {out}"
        );
    }

    // `kubectl get pushrules`: source, counts and Ready as columns.
    let table = kubectl(&["get", "pushrules", "-l", &format!("test={id}")]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "KIND",
            "NAMESPACE",
            "SOURCE",
            "WANTED",
            "IN-SYNC",
            "READY",
            "AGE"
        ],
        "{table}"
    );
    assert!(
        table.contains(&format!("{id}-tls")) && table.contains("wildcard-tls"),
        "{table}"
    );

    // Who may do what: a namespace admin and an `edit` user cannot create a
    // rule (Forbidden); they and `view` users can read rules.
    let ns = format!("{id}-tenant");
    kubectl(&["create", "namespace", &ns]);
    let admin = format!("{id}-ns-admin");
    let editor = format!("{id}-editor");
    let viewer = format!("{id}-viewer");
    kubectl(&[
        "create",
        "rolebinding",
        "ns-admin",
        "--clusterrole=admin",
        &format!("--user={admin}"),
        "-n",
        &ns,
    ]);
    kubectl(&[
        "create",
        "clusterrolebinding",
        &editor,
        "--clusterrole=edit",
        &format!("--user={editor}"),
    ]);
    kubectl(&[
        "create",
        "clusterrolebinding",
        &viewer,
        "--clusterrole=view",
        &format!("--user={viewer}"),
    ]);
    let attempt = labelled(
        &format!("{id}-tenant"),
        json!({"source": {"kind": "Secret", "namespace": ns, "name": "x"},
               "namespaces": ["*"]}),
    );
    for user in [&admin, &editor, &viewer] {
        let (ok, out) = kubectl_in(Some(user), &["create", "-f", "-"], Some(&attempt));
        assert!(
            !ok && out.contains("forbidden"),
            "{user} must not create a rule (Forbidden): {out}"
        );
        let (ok, out) = kubectl_in(
            Some(user),
            &["delete", "pushrule", &format!("{id}-tls")],
            None,
        );
        assert!(!ok, "{user} must not delete a rule: {out}");
    }
    // Reading is aggregated into view/edit by kube-controller-manager's
    // clusterrole aggregation controller: poll until it has.
    for user in [&viewer, &editor] {
        eventually(
            &format!("{user} to read rules and their status"),
            Duration::from_secs(60),
            || async {
                let (ok, out) = kubectl_in(
                    Some(user),
                    &["get", "pushrules", "-l", &format!("test={id}")],
                    None,
                );
                (ok && out.contains(&format!("{id}-tls"))).then_some(())
            },
        )
        .await;
    }
    // A namespace admin's role is bound in one namespace: a cluster-scoped
    // rule is not theirs to read either (cluster-wide readers are view/edit).
    let (ok, _) = kubectl_in(Some(&admin), &["get", "pushrules"], None);
    assert!(
        !ok,
        "a namespace-bound admin role reads no cluster-scoped object"
    );

    for crb in [&editor, &viewer] {
        kubectl(&["delete", "clusterrolebinding", crb]);
    }
    kubectl(&["delete", "namespace", &ns, "--wait=false"]);
}
