//! Issue 19, PushRules against the real control plane (the CRD from
//! `helm/push-to-k8s/files/pushrule-crd.yaml`, the controller binary):
//!
//! - a TLS Secret in another namespace copied by a rule to `team-*`
//!   namespaces (one excluded), updates and a new namespace followed, the
//!   status and `kubectl get pushrules` columns, a tenant's annotation on the
//!   source widening nothing, deleting the rule deleting its copies;
//! - problems are conditions: a bad glob (`Ready=False`, a Warning Event, the
//!   other rule unaffected), an identity-granting type, a copy name a labelled
//!   source holds (a conflict, the existing copy untouched);
//! - deletion: a rule deleted while the controller is stopped has its copies
//!   removed when it starts; the CRD deleted while it runs deletes nothing,
//!   `/readyz` says why, and the CRD and rule created again resume without a
//!   write to the copies in sync.
//!
//! Every rule here targets only this test's namespaces (by a glob with the
//! test's id), so even a broken build writes nowhere else.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::rules::*;
use common::*;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const RULE: &str = "push-to-k8s.io/rule";
const SOURCE: &str = "push-to-k8s.io/source";
const MANAGED: &str = "push-to-k8s.io/managed-by=push-to-k8s";

/// Where copies named `name` are (managed Secrets, every namespace).
async fn copies_named(env: &TestEnv, name: &str) -> BTreeSet<String> {
    let all: Api<Secret> = Api::all(env.client.clone());
    all.list(&ListParams::default().labels(MANAGED))
        .await
        .expect("list copies")
        .items
        .into_iter()
        .filter(|s| s.metadata.name.as_deref() == Some(name))
        .filter_map(|s| s.metadata.namespace)
        .collect()
}

fn secret_in(name: &str, type_: Option<&str>, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        type_: type_.map(str::to_string),
        data: Some(data_map(data)),
        ..Default::default()
    }
}

/// The test's namespaces besides the controller's: `<id>-<suffix>` each.
async fn namespaces(env: &mut TestEnv, suffixes: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for s in suffixes {
        let ns = format!("{}-{s}", env.id);
        env.create_namespace(&ns, &[]).await;
        out.push(ns);
    }
    out
}

#[tokio::test]
async fn a_rule_copies_a_tls_secret_from_another_namespace_and_follows_it() {
    let _serial = serial();
    install_crd();
    let mut env = TestEnv::new("rule", 0).await;
    let _on_panic = env.cleanup_on_panic();
    let ns = namespaces(
        &mut env,
        &["ingress", "team-a", "team-b", "team-old", "other"],
    )
    .await;
    let (ingress, team_a, team_b, team_old) = (&ns[0], &ns[1], &ns[2], &ns[3]);
    // The source: a TLS Secret cert-manager would write, which a tenant of
    // `ingress` annotated to be copied everywhere (that means nothing here).
    let mut tls = secret_in(
        "wildcard",
        Some("kubernetes.io/tls"),
        &[("tls.crt", "cert-1"), ("tls.key", "key-1")],
    );
    tls.metadata.annotations = Some(map(&[("push-to-k8s.io/namespaces", "*")]));
    env.secrets(ingress)
        .create(&PostParams::default(), &tls)
        .await
        .unwrap();
    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    let rule = format!("{}-tls", env.id);
    let _rules = Rules(vec![rule.clone()]);
    apply_rule(
        &rule,
        json!({
            "source": {"kind": "Secret", "namespace": ingress, "name": "wildcard"},
            "namespaces": [format!("{}-team-*", env.id)],
            "excludeNamespaces": [team_old],
        }),
    );
    let wanted = vec![team_a.clone(), team_b.clone()];
    env.await_copies(
        &wanted,
        "wildcard",
        &[("tls.crt", "cert-1"), ("tls.key", "key-1")],
    )
    .await;
    let copy = env.copy(team_a, "wildcard").await.unwrap();
    let annotations = copy.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations.get(RULE).map(String::as_str),
        Some(rule.as_str())
    );
    assert_eq!(
        annotations.get(SOURCE).cloned(),
        Some(format!("{ingress}/wildcard"))
    );
    assert_eq!(copy.type_.as_deref(), Some("kubernetes.io/tls"));

    // Status: Ready, the counts, and the columns of `kubectl get`.
    let status = await_ready(&rule, "True", "Ready").await;
    assert_eq!(status["status"]["wanted"], 2, "{}", status["status"]);
    assert_eq!(status["status"]["inSync"], 2, "{}", status["status"]);
    assert!(
        status["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "push-to-k8s.io/copies")),
        "{}",
        status["metadata"]
    );
    let table = kubectl(&["get", "pushrule", &rule], None);
    let row = table.lines().nth(1).unwrap_or_default().to_string();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert!(
        cells.contains(&"True") && cells.iter().filter(|c| **c == "2").count() >= 2,
        "{table}"
    );
    // Nothing beyond the rule's namespaces, whatever the source's annotation says.
    assert_eq!(
        copies_named(&env, "wildcard").await,
        wanted.iter().cloned().collect::<BTreeSet<_>>()
    );

    // An update flows; a new team namespace gets its copy.
    env.secrets(ingress)
        .patch(
            "wildcard",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"tls.crt": "cert-2"}})),
        )
        .await
        .unwrap();
    env.await_copies(
        &wanted,
        "wildcard",
        &[("tls.crt", "cert-2"), ("tls.key", "key-1")],
    )
    .await;
    let team_x = namespaces(&mut env, &["team-x"]).await.remove(0);
    env.await_copies(
        std::slice::from_ref(&team_x),
        "wildcard",
        &[("tls.crt", "cert-2"), ("tls.key", "key-1")],
    )
    .await;
    until("status counts the new namespace", WAIT, || async {
        let r = get_rule(&rule).ok_or("no rule")?;
        (r["status"]["inSync"] == 3)
            .then_some(())
            .ok_or(format!("{}", r["status"]))
    })
    .await;

    // The rule deleted: its copies go, then the rule.
    kubectl(&["delete", "pushrule", &rule, "--wait=false"], None);
    let all = vec![team_a.clone(), team_b.clone(), team_x.clone()];
    env.await_no_copies(&all, "wildcard").await;
    eventually("the rule is gone", WAIT, || async {
        get_rule(&rule).is_none().then_some(())
    })
    .await;
    // The source is not touched.
    assert!(env.copy(ingress, "wildcard").await.is_some());
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    env.teardown().await;
}

#[tokio::test]
async fn rule_problems_are_conditions_and_touch_nothing_else() {
    let _serial = serial();
    install_crd();
    let mut env = TestEnv::new("rulebad", 0).await;
    let _on_panic = env.cleanup_on_panic();
    let ns = namespaces(&mut env, &["apps", "team-a", "team-b"]).await;
    let (apps, team_a, team_b) = (&ns[0], &ns[1], &ns[2]);
    let secrets = env.secrets(apps);
    for name in ["good", "badly-targeted"] {
        secrets
            .create(
                &PostParams::default(),
                &secret_in(name, None, &[("k", "v")]),
            )
            .await
            .unwrap();
    }
    secrets
        .create(
            &PostParams::default(),
            &secret_in("shared", None, &[("k", "rule")]),
        )
        .await
        .unwrap();
    // A token Secret needs its ServiceAccount, or kube-controller-manager deletes it.
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), apps);
    eventually("the default ServiceAccount", WAIT, || async {
        accounts.get_opt("default").await.ok().flatten()
    })
    .await;
    let mut token = secret_in(
        "token",
        Some("kubernetes.io/service-account-token"),
        &[("k", "v")],
    );
    token.metadata.annotations = Some(map(&[("kubernetes.io/service-account.name", "default")]));
    secrets
        .create(&PostParams::default(), &token)
        .await
        .unwrap();
    // A labelled source of the controller's own namespace holds `shared` in team-a.
    let mut labelled = source_secret("shared", &[("k", "labelled")]);
    labelled.metadata.annotations = Some(map(&[("push-to-k8s.io/namespaces", team_a)]));
    env.add_source(&labelled).await;

    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    env.await_copies(std::slice::from_ref(team_a), "shared", &[("k", "labelled")])
        .await;
    let held = env.copy(team_a, "shared").await.unwrap();

    let teams = format!("{}-team-*", env.id);
    let (bad, good, typed, conflicted) = (
        format!("{}-bad", env.id),
        format!("{}-good", env.id),
        format!("{}-token", env.id),
        format!("{}-shared", env.id),
    );
    let _rules = Rules(vec![
        bad.clone(),
        good.clone(),
        typed.clone(),
        conflicted.clone(),
    ]);
    let named = |name: &str| json!({"kind": "Secret", "namespace": apps, "name": name});
    apply_rule(
        &bad,
        json!({"source": named("badly-targeted"), "namespaces": [format!("{}-team-[", env.id)]}),
    );
    apply_rule(
        &typed,
        json!({"source": named("token"), "namespaces": [teams]}),
    );

    // A bad glob: Ready=False naming the field, a Warning Event; nothing copied.
    let r = await_ready(&bad, "False", "InvalidAnnotation").await;
    // The namespace's pipeline runs now: the conflicting rule's copies are
    // attempted (and refused) by its writer, which tells both sides. (One
    // the pipeline's start-up finds is reported on the rule only:
    // docs/pushrule.md.)
    apply_rule(
        &conflicted,
        json!({"source": named("shared"), "namespaces": [teams]}),
    );
    let (_, _, message) = condition(&r, "Ready").unwrap();
    assert!(message.contains("spec.namespaces"), "{message}");
    eventually("a Warning Event on the bad rule", WAIT, || async {
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(env.client.clone(), "default");
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| {
                e.involved_object.name.as_deref() == Some(bad.as_str())
                    && e.type_.as_deref() == Some("Warning")
            })
    })
    .await;
    // An identity-granting type: copied nowhere, and said so.
    let r = await_ready(&typed, "False", "TypeNotCopied").await;
    assert!(
        condition(&r, "Synced").is_some_and(|(s, ..)| s == "False"),
        "{}",
        r["status"]
    );
    assert!(copies_named(&env, "token").await.is_empty());
    assert!(copies_named(&env, "badly-targeted").await.is_empty());
    // A copy name a labelled source holds: a conflict, the copy untouched,
    // the rule's copy made where the name is free.
    env.await_copies(std::slice::from_ref(team_b), "shared", &[("k", "rule")])
        .await;
    let r = await_ready(&conflicted, "False", "Conflict").await;
    assert_eq!(r["status"]["conflicts"], 1, "{}", r["status"]);
    assert_eq!(r["status"]["conflictNamespaces"], json!([team_a]));
    let now = env.copy(team_a, "shared").await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        held.metadata.resource_version
    );
    // Reported on both: the labelled source hears of the rule too.
    eventually(
        "a Conflict Event on the labelled source naming the rule",
        WAIT,
        || async {
            env.events_on("shared", "Conflict")
                .await
                .into_iter()
                .find(|(_, note)| note.contains(&conflicted) && note.contains(team_a))
        },
    )
    .await;

    // The other rule of that namespace is not affected by the bad one.
    apply_rule(
        &good,
        json!({"source": named("good"), "namespaces": [teams]}),
    );
    env.await_copies(&[team_a.clone(), team_b.clone()], "good", &[("k", "v")])
        .await;
    await_ready(&good, "True", "Ready").await;
    let r = get_rule(&bad).unwrap();
    assert_eq!(condition(&r, "Ready").unwrap().1, "InvalidAnnotation");

    let status = daemon.stop();
    assert!(status.success(), "{status}");
    env.teardown().await;
}

#[tokio::test]
async fn deletion_follows_the_finalizer_and_a_removed_crd_deletes_nothing() {
    let _serial = serial();
    install_crd();
    let mut env = TestEnv::new("ruledel", 0).await;
    let _on_panic = env.cleanup_on_panic();
    let ns = namespaces(&mut env, &["certs", "team-a", "team-b"]).await;
    let (certs, team_a, team_b) = (&ns[0], &ns[1], &ns[2]);
    let wanted = vec![team_a.clone(), team_b.clone()];
    for name in ["one", "two", "three"] {
        env.secrets(certs)
            .create(
                &PostParams::default(),
                &secret_in(name, None, &[("k", name)]),
            )
            .await
            .unwrap();
    }
    let teams = format!("{}-team-*", env.id);
    let (first, second, third) = (
        format!("{}-one", env.id),
        format!("{}-two", env.id),
        format!("{}-three", env.id),
    );
    let _rules = Rules(vec![first.clone(), second.clone(), third.clone()]);
    let spec = |name: &str| {
        json!({
            "source": {"kind": "Secret", "namespace": certs, "name": name},
            "namespaces": [teams],
        })
    };
    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    apply_rule(&first, spec("one"));
    apply_rule(&second, spec("two"));
    env.await_copies(&wanted, "one", &[("k", "one")]).await;
    env.await_copies(&wanted, "two", &[("k", "two")]).await;
    await_ready(&first, "True", "Ready").await;

    // Deleted while the controller is stopped: the finalizer keeps it, and
    // the copies go when the controller is back.
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    kubectl(&["delete", "pushrule", &first, "--wait=false"], None);
    assert!(
        get_rule(&first).is_some_and(|r| r["metadata"]["deletionTimestamp"].is_string()),
        "the rule waits for the controller"
    );
    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    env.await_no_copies(&wanted, "one").await;
    eventually("the deleted rule is gone", WAIT, || async {
        get_rule(&first).is_none().then_some(())
    })
    .await;

    // deletionPolicy Orphan: the copies stay, released (no longer ours:
    // without our label and annotations, so their namespaces may edit them).
    let mut orphaning = spec("three");
    orphaning["deletionPolicy"] = json!("Orphan");
    apply_rule(&third, orphaning);
    env.await_copies(&wanted, "three", &[("k", "three")]).await;
    await_ready(&third, "True", "Ready").await;
    kubectl(&["delete", "pushrule", &third, "--wait=false"], None);
    eventually("the orphaning rule is gone", WAIT, || async {
        get_rule(&third).is_none().then_some(())
    })
    .await;
    for ns in &wanted {
        let copy = env.copy(ns, "three").await.expect("the copy stays");
        let labels = copy.metadata.labels.unwrap_or_default();
        let annotations = copy.metadata.annotations.unwrap_or_default();
        assert!(
            !labels.contains_key("push-to-k8s.io/managed-by") && !annotations.contains_key(RULE),
            "released: {labels:?} {annotations:?}"
        );
        assert_eq!(
            copy.data.unwrap_or_default()["k"].0,
            b"three".to_vec(),
            "its data kept"
        );
    }

    let before: Vec<Option<String>> = {
        let mut v = Vec::new();
        for ns in &wanted {
            v.push(env.copy(ns, "two").await.unwrap().metadata.resource_version);
        }
        v
    };

    // The CRD deleted while running: its deletion deletes the rules, which
    // must not delete their copies; /readyz says why.
    kubectl(
        &["delete", "crd", "pushrules.push-to-k8s.io", "--wait=false"],
        None,
    );
    until("the CRD is gone", WAIT, || async {
        let (ok, out) = kubectl_try(
            None,
            &[
                "get",
                "crd",
                "pushrules.push-to-k8s.io",
                "--ignore-not-found",
            ],
            None,
        );
        (ok && out.trim().is_empty()).then_some(()).ok_or(out)
    })
    .await;
    until("/readyz names the removed CRD", WAIT, || async {
        match daemon.http("/readyz").await {
            Some((503, body)) if body.contains("PushRule CRD") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    env.await_copies(&wanted, "two", &[("k", "two")]).await;

    // Installed again with the same rule: in sync, not one write to the copies.
    install_crd();
    apply_rule(&second, spec("two"));
    await_ready(&second, "True", "Ready").await;
    until("/readyz ready again", WAIT, || async {
        match daemon.http("/readyz").await {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut after = Vec::new();
    for ns in &wanted {
        after.push(env.copy(ns, "two").await.unwrap().metadata.resource_version);
    }
    assert_eq!(before, after, "the copies in sync were not written");
    // At rest: no status write either.
    let rv = get_rule(&second).unwrap()["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        get_rule(&second).unwrap()["metadata"]["resourceVersion"],
        rv,
        "a rule at rest is not written"
    );
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    env.teardown().await;
}

/// What a controller instance needs for rules beyond the chart's base grants
/// (the chart's own list: helm/push-to-k8s/templates/rbac.yaml).
const RULE_GRANTS: &str = r#"  - apiGroups: ["push-to-k8s.io"]
    resources: ["pushrules"]
    verbs: ["get", "list", "watch", "patch"]
  - apiGroups: ["push-to-k8s.io"]
    resources: ["pushrules/status"]
    verbs: ["patch"]
  - apiGroups: ["apiextensions.k8s.io"]
    resources: ["customresourcedefinitions"]
    resourceNames: ["pushrules.push-to-k8s.io"]
    verbs: ["get"]
  - apiGroups: ["events.k8s.io"]
    resources: ["events"]
    verbs: ["create", "patch"]
  - apiGroups: ["apps"]
    resources: ["deployments"]
    verbs: ["list", "watch"]
"#;

/// Writes to PushRules (status included) recorded in the audit log after
/// byte `from`, as `(user, verb, name/subresource)`.
fn audited_rule_writes(from: u64) -> Vec<(String, String, String)> {
    let text = std::fs::read(audit_log()).expect("the audit log");
    let from = usize::try_from(from).unwrap().min(text.len());
    String::from_utf8_lossy(&text[from..])
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete" && e["objectRef"]["resource"] == "pushrules")
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&e["user"]["username"]),
                s(&e["verb"]),
                format!(
                    "{}/{}",
                    s(&e["objectRef"]["name"]),
                    s(&e["objectRef"]["subresource"])
                ),
            )
        })
        .collect()
}

fn audit_offset() -> u64 {
    std::fs::metadata(audit_log()).map(|m| m.len()).unwrap_or(0)
}

/// Item 5: with two instances, only the leader writes a rule (its finalizer
/// and status, by the audit log), and a rule at rest is not written at all
/// for five minutes (nor are its copies).
#[tokio::test]
async fn only_the_leader_writes_rules_and_nothing_is_written_at_rest() {
    let _serial = serial();
    assert!(
        audit_log().exists(),
        "the control plane has no audit log: cp.sh down && cp.sh up"
    );
    install_crd();
    let mut env = TestEnv::new("rulelead", 0).await;
    let _on_panic = env.cleanup_on_panic();
    let ns = namespaces(&mut env, &["certs", "team-a", "team-b"]).await;
    let (certs, wanted) = (&ns[0], ns[1..].to_vec());
    env.secrets(certs)
        .create(
            &PostParams::default(),
            &secret_in("ca", None, &[("ca.crt", "c1")]),
        )
        .await
        .unwrap();
    let _role = DeleteRole(grant_instances(&env, &["rules-a", "rules-b"], RULE_GRANTS));
    let instance = |sa: &str| {
        let kubeconfig = service_account_kubeconfig_via(&env.source_ns, sa, None);
        Daemon::start(
            &env.source_ns,
            &[
                ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                ("POD_NAME", sa),
                ("LEADER_ELECTION", "true"),
                ("LEASE_NAMESPACE", &env.source_ns),
            ],
        )
    };
    let mut a = instance("rules-a");
    a.await_ready().await;
    eventually("rules-a leads", WAIT, || async {
        a.readyz()
            .await
            .filter(|(code, body)| *code == 200 && body.contains("leader"))
    })
    .await;
    let mut b = instance("rules-b");
    b.await_ready().await;

    let rule = format!("{}-ca", env.id);
    let _rules = Rules(vec![rule.clone()]);
    let from = audit_offset();
    apply_rule(
        &rule,
        json!({
            "source": {"kind": "Secret", "namespace": certs, "name": "ca"},
            "namespaces": [format!("{}-team-*", env.id)],
        }),
    );
    env.await_copies(&wanted, "ca", &[("ca.crt", "c1")]).await;
    await_ready(&rule, "True", "Ready").await;
    let leader = format!("system:serviceaccount:{}:rules-a", env.source_ns);
    let writes: Vec<_> = audited_rule_writes(from)
        .into_iter()
        .filter(|(user, ..)| user.starts_with("system:serviceaccount:"))
        .collect();
    assert!(
        writes.iter().any(|(_, _, what)| what.ends_with("/status")),
        "the status was written: {writes:?}"
    );
    assert!(
        writes.iter().all(|(user, ..)| *user == leader),
        "only the leader writes rules: {writes:?}"
    );

    // At rest: five minutes without a write to the rule or its copies.
    let rest = audit_offset();
    let rv = get_rule(&rule).unwrap()["metadata"]["resourceVersion"].clone();
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(audited_rule_writes(rest), vec![], "no rule write at rest");
    assert_eq!(
        get_rule(&rule).unwrap()["metadata"]["resourceVersion"],
        rv,
        "the rule is unchanged"
    );
    let copies_written = std::fs::read(audit_log()).expect("the audit log")
        [usize::try_from(rest).unwrap()..]
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter(|e| {
            e["stage"] == "ResponseComplete"
                && e["objectRef"]["resource"] == "secrets"
                && wanted
                    .iter()
                    .any(|ns| e["objectRef"]["namespace"] == ns.as_str())
        })
        .count();
    assert_eq!(copies_written, 0, "no copy write at rest");
    a.stop();
    b.stop();
    env.teardown().await;
}
