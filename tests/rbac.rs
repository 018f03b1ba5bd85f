//! The manifests are what the code needs, and both ways of installing agree:
//! - deploy.yaml is the Helm chart rendered by helm/render-deploy.sh, byte for
//!   byte, and the chart lints;
//! - the controller, run as the ServiceAccount of deploy.yaml, and as the
//!   ServiceAccount of a `helm install ... --set env.X=...` with the installed
//!   Deployment's own environment, creates, updates and deletes copies and
//!   publishes Events without a single Forbidden;
//! - the same for PushRules (issue 19): a release's controller serves a rule
//!   with the chart's grants alone, and the chart's admission policy keeps the
//!   rule's copies, naming the rule.
//!
//! There is no kubelet in the test control plane, so the Deployment's pod never
//! runs; the test runs the built binary with that pod's identity (a token of
//! its ServiceAccount) and that pod's environment instead.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/push-to-k8s");

fn kubectl(args: &[&str]) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig);
    run(cmd)
}

/// helm, built and cached by cp.sh like the control plane.
fn helm(args: &[&str]) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(cp_script())
        .arg("helm")
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig);
    run(cmd)
}

/// `helm upgrade --install` of the chart as `release` in its own namespace,
/// with `--set` of each of `sets`.
fn install_release(release: &str, sets: &[&str]) {
    let mut args = vec![
        "upgrade",
        "--install",
        release,
        CHART,
        "--namespace",
        release,
        "--create-namespace",
        // The PushRule CRD (pushRules.enabled, the default) is a cluster object
        // other tests apply with kubectl and earlier releases leave behind
        // (helm.sh/resource-policy: keep): adopt it as a later release would.
        "--take-ownership",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    helm(&args);
}

/// The ServiceAccount and environment of Deployment `ns/name`'s pod, as the
/// kubelet would give them (downward-API fields resolved). The metrics port is
/// left out: tests share the machine's ports, so the test picks one.
async fn pod_identity(ns: &str, name: &str) -> (String, Vec<(String, String)>) {
    let deployment = Api::<Deployment>::namespaced(client().await, ns)
        .get(name)
        .await
        .expect("the Deployment");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let mut env = Vec::new();
    for var in pod.containers[0].env.clone().unwrap_or_default() {
        let value = match (var.value, var.value_from) {
            (Some(v), None) => v,
            (None, Some(from)) => match from.field_ref.map(|f| f.field_path).as_deref() {
                Some("metadata.namespace") => ns.to_string(),
                Some("metadata.name") => format!("{name}-pod"),
                other => panic!("{}: unexpected valueFrom {other:?}", var.name),
            },
            other => panic!("{}: unexpected env entry {other:?}", var.name),
        };
        if var.name != "METRICS_PORT" {
            env.push((var.name, value));
        }
    }
    let sa = pod.service_account_name.expect("a ServiceAccount");
    (sa, env)
}

/// Run the controller as ServiceAccount `sa_ns/sa` with `env` (a pod's,
/// from [`pod_identity`]) and drive it through create, update, a conflict
/// Event and delete.
async fn replicates_as(source_ns: &str, (sa_ns, sa): (&str, &str), env: &[(String, String)]) {
    let test = TestEnv::new("rbac", 3).await;
    let name = format!("{}-s", test.id);
    // An unmanaged Secret of the same name: the conflict Event needs the events Role.
    let taken = test.targets[2].clone();
    let (sources, mut daemon, kubeconfig) =
        source_and_controller(&test, source_ns, &name, &taken, (sa_ns, sa), env).await;
    let wanted = test.targets[..2].to_vec();
    test.await_copies(&wanted, &name, &[("k", "v1")]).await;

    // update (apply) ...
    update_source(&test, &sources, &name, &wanted, "v2").await;

    // ... the conflict Event on the source ...
    let events: Api<Event> = Api::namespaced(test.client.clone(), source_ns);
    eventually(
        "a Conflict Event on the source",
        Duration::from_secs(60),
        || async {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("Conflict")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some(name.as_str())
                        && e.note.as_deref().unwrap_or_default().contains(&taken)
                })
        },
    )
    .await;

    // ... and delete.
    sources
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    test.await_no_copies(&wanted, &name).await;
    assert!(
        test.copy(&taken, &name).await.is_some(),
        "unmanaged Secret must stay"
    );

    stop_unrefused(&mut daemon);
    let _ = std::fs::remove_file(kubeconfig);
    test.cleanup().await;
}

/// Test `test`'s source `source_ns/name` (data `k: v1`), made after an
/// unmanaged Secret of the same name in `taken`, and the controller running
/// as `sa_ns/sa` with the pod's `env`, Ready: the sources' Api, the daemon and
/// its kubeconfig file.
async fn source_and_controller(
    test: &TestEnv,
    source_ns: &str,
    name: &str,
    taken: &str,
    (sa_ns, sa): (&str, &str),
    env: &[(String, String)],
) -> (Api<Secret>, Daemon, std::path::PathBuf) {
    test.secrets(taken)
        .create(
            &PostParams::default(),
            &source_secret(name, &[("mine", "x")]),
        )
        .await
        .unwrap();
    let sources: Api<Secret> = Api::namespaced(test.client.clone(), source_ns);
    sources
        .create(&PostParams::default(), &source_secret(name, &[("k", "v1")]))
        .await
        .unwrap();
    let kubeconfig = service_account_kubeconfig(sa_ns, sa);
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("KUBECONFIG", kubeconfig.to_str().unwrap()));
    let mut daemon = Daemon::start_exact(&env);
    daemon.await_ready().await;
    (sources, daemon, kubeconfig)
}

/// Set the source's `k` to `value` and wait for it in the copies of `wanted`.
async fn update_source(
    test: &TestEnv,
    sources: &Api<Secret>,
    name: &str,
    wanted: &[String],
    value: &str,
) {
    let patch = serde_json::json!({"stringData": {"k": value}});
    sources
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    test.await_copies(wanted, name, &[("k", value)]).await;
}

/// Stop the controller: it exits cleanly, and nothing it asked was refused
/// (by RBAC or by an admission policy).
fn stop_unrefused(daemon: &mut Daemon) {
    let status = daemon.stop();
    let logs = daemon.logs();
    assert!(status.success(), "exit status {status}; log:\n{logs}");
    assert!(
        !logs.contains("Forbidden") && !logs.contains(" 403 ") && !logs.contains("denied"),
        "the controller was refused something:\n{logs}"
    );
}

#[test]
fn deploy_yaml_is_the_rendered_chart() {
    helm(&["lint", "--strict", CHART]);
    let mut render = Command::new("bash");
    render.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/helm/render-deploy.sh"
    ));
    let rendered = run(render);
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy.yaml")).unwrap();
    assert!(
        rendered == committed,
        "deploy.yaml differs from the chart; regenerate it: bash helm/render-deploy.sh > deploy.yaml"
    );
}

/// Deletes a ValidatingAdmissionPolicy and its binding (same name) when dropped.
struct DeletePolicy(&'static str);

impl Drop for DeletePolicy {
    fn drop(&mut self) {
        for kind in [
            "validatingadmissionpolicybinding",
            "validatingadmissionpolicy",
        ] {
            let _ = kubectl_try(None, &["delete", kind, self.0, "--ignore-not-found"], None);
        }
    }
}

#[tokio::test]
async fn runs_as_the_deploy_yaml_service_account() {
    let _serial = serial();
    // deploy.yaml's admission policy matches every PushRule copy in the
    // cluster: it must not outlive this test (other tests' controllers serve
    // rules as the cluster admin). The rest of deploy.yaml stays.
    let _policy = DeletePolicy("push-to-k8s-push-to-k8s-copies");
    kubectl(&[
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy.yaml"),
    ]);
    let (sa, env) = pod_identity("push-to-k8s", "push-to-k8s").await;
    replicates_as("push-to-k8s", ("push-to-k8s", &sa), &env).await;
}

#[tokio::test]
async fn runs_as_a_helm_release_with_its_own_env() {
    let _serial = serial();
    let release = "p2k-chart";
    install_release(
        release,
        &[
            "env.SECRET_SYNC_DEBOUNCE_SECONDS=2",
            "env.SECRET_SYNC_RATE_LIMIT=20",
        ],
    );
    let (sa, env) = pod_identity(release, release).await;
    assert_eq!(sa, release);
    let get = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    assert_eq!(
        get("SECRET_SYNC_DEBOUNCE_SECONDS"),
        Some("2"),
        "--set reaches the pod"
    );
    assert_eq!(get("SECRET_SYNC_RATE_LIMIT"), Some("20"));
    assert_eq!(get("POD_NAMESPACE"), Some(release));

    replicates_as(release, (release, &sa), &env).await;

    helm(&["uninstall", release, "--namespace", release, "--wait"]);
    Api::<Namespace>::all(client().await)
        .delete(release, &DeleteParams::default())
        .await
        .unwrap();
}

// Issue 7, defect 9: with `env.NAMESPACE` set to another namespace than the
// release's, the controller publishes its Events on the sources there: the
// events Role must be where the sources are.
#[tokio::test]
async fn events_role_is_where_the_sources_are_when_namespace_differs_from_the_release() {
    let _serial = serial();
    let release = "p2k-elsewhere";
    let sources_ns = unique("p2k-sources");
    Api::<Namespace>::all(client().await)
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": sources_ns}})).unwrap(),
        )
        .await
        .unwrap();
    install_release(
        release,
        &[
            &format!("env.NAMESPACE={sources_ns}"),
            "env.SECRET_SYNC_DEBOUNCE_SECONDS=2",
        ],
    );
    let (sa, env) = pod_identity(release, release).await;
    replicates_as(&sources_ns, (release, &sa), &env).await;
    helm(&["uninstall", release, "--namespace", release, "--wait"]);
    for ns in [release, sources_ns.as_str()] {
        Api::<Namespace>::all(client().await)
            .delete(ns, &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// `kubectl` as `user`: whether it succeeded, and what it printed.
fn kubectl_as(user: &str, args: &[&str]) -> (bool, String) {
    kubectl_try(Some(user), args, None)
}

/// Issue 19, item 6: the chart's ValidatingAdmissionPolicy. With the
/// controller running as the release's ServiceAccount: a namespace admin (and
/// a cluster admin) cannot edit or delete a copy, and the refusal names the
/// source; the controller still updates and deletes copies; deleting a
/// namespace that holds a copy completes; an unmanaged object of the same name
/// stays editable; `helm uninstall` completes and leaves the copies editable.
#[tokio::test]
async fn the_admission_policy_refuses_edits_of_copies_and_never_blocks_what_it_must_not() {
    let _serial = serial();
    let release = "p2k-vap";
    install_release(release, &["env.SECRET_SYNC_DEBOUNCE_SECONDS=1"]);
    let policy = format!("{release}-{release}-copies");
    kubectl(&["get", "validatingadmissionpolicy", &policy]);
    kubectl(&["get", "validatingadmissionpolicybinding", &policy]);
    let (sa, env) = pod_identity(release, release).await;

    let test = TestEnv::new("vap", 3).await;
    let _on_panic = test.cleanup_on_panic();
    let tenant = format!("{}-tenant", test.id);
    let name = format!("{}-s", test.id);
    let (copy_ns, doomed_ns, taken_ns) = (
        test.targets[0].clone(),
        test.targets[1].clone(),
        test.targets[2].clone(),
    );
    for ns in [&copy_ns, &taken_ns] {
        kubectl(&[
            "create",
            "rolebinding",
            "tenant-admin",
            "--clusterrole=admin",
            &format!("--user={tenant}"),
            "-n",
            ns,
        ]);
    }
    // Not ours: a Secret of the same name in taken_ns, made before the source.
    let (sources, mut daemon, kubeconfig) =
        source_and_controller(&test, release, &name, &taken_ns, (release, &sa), &env).await;
    let wanted = vec![copy_ns.clone(), doomed_ns.clone()];
    test.await_copies(&wanted, &name, &[("k", "v1")]).await;

    // Edits and deletes of a copy are refused, for the tenant and for a
    // cluster admin alike, and the message names the source.
    let source_ref = format!("{release}/{name}");
    let refusals = [
        vec![
            "label",
            "secret",
            name.as_str(),
            "edited=yes",
            "-n",
            copy_ns.as_str(),
        ],
        vec![
            "annotate",
            "secret",
            name.as_str(),
            "push-to-k8s.io/source-",
            "-n",
            copy_ns.as_str(),
        ],
        vec![
            "label",
            "secret",
            name.as_str(),
            "push-to-k8s.io/managed-by-",
            "-n",
            copy_ns.as_str(),
        ],
        vec!["delete", "secret", name.as_str(), "-n", copy_ns.as_str()],
    ];
    for args in &refusals {
        for user in [tenant.as_str(), "admin-not-the-controller"] {
            let user_args: Vec<&str> = if user == tenant {
                args.clone()
            } else {
                // A cluster admin: system:masters.
                [&["--as-group=system:masters"][..], args].concat()
            };
            let (ok, stderr) = kubectl_as(user, &user_args);
            assert!(!ok, "{user}: kubectl {args:?} must be refused");
            assert!(
                stderr.contains(&source_ref) && stderr.contains("copy kept by push-to-k8s"),
                "{user}: the refusal names the source {source_ref}: {stderr}"
            );
        }
    }
    let copy = test
        .copy(&copy_ns, &name)
        .await
        .expect("the copy is still there");
    assert!(
        !copy
            .metadata
            .labels
            .unwrap_or_default()
            .contains_key("edited"),
        "the refused edit changed nothing"
    );

    // An object that is not ours stays editable by its namespace's admin.
    let (ok, stderr) = kubectl_as(
        &tenant,
        &["label", "secret", &name, "edited=yes", "-n", &taken_ns],
    );
    assert!(ok, "the unmanaged Secret is the tenant's to edit: {stderr}");

    // The controller still updates and deletes copies.
    update_source(&test, &sources, &name, &wanted, "v2").await;

    // Deleting a namespace that holds a copy completes.
    Api::<Namespace>::all(test.client.clone())
        .delete(&doomed_ns, &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        &format!("namespace {doomed_ns} (holding a copy) to be deleted"),
        Duration::from_secs(120),
        || async {
            Api::<Namespace>::all(test.client.clone())
                .get_opt(&doomed_ns)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;

    sources
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    test.await_no_copies(std::slice::from_ref(&copy_ns), &name)
        .await;

    // Again a copy, then `helm uninstall` with the controller stopped: it
    // completes, the copy stays (README "Uninstalling") and is editable now.
    sources
        .create(
            &PostParams::default(),
            &source_secret(&name, &[("k", "v3")]),
        )
        .await
        .unwrap();
    test.await_copies(std::slice::from_ref(&copy_ns), &name, &[("k", "v3")])
        .await;
    stop_unrefused(&mut daemon);
    helm(&["uninstall", release, "--namespace", release, "--wait"]);
    // The API server drops the deleted policy from its cache within moments.
    eventually(
        "the copy to be editable again once the policy is uninstalled",
        Duration::from_secs(60),
        || async {
            kubectl_as(
                &tenant,
                &["label", "secret", &name, "edited=yes", "-n", &copy_ns],
            )
            .0
            .then_some(())
        },
    )
    .await;

    let _ = std::fs::remove_file(kubeconfig);
    let _ = sources.delete(&name, &DeleteParams::default()).await;
    test.cleanup().await;
    Api::<Namespace>::all(client().await)
        .delete(release, &DeleteParams::default())
        .await
        .unwrap();
}

/// `helm uninstall` of `release` and deletion of its namespace when dropped,
/// best effort (a test that failed must not leave its admission policy, which
/// matches every PushRule copy, in the shared control plane).
struct Uninstall(String);

impl Drop for Uninstall {
    fn drop(&mut self) {
        let kubeconfig = control_plane().kubeconfig.clone();
        let _ = Command::new("bash")
            .arg(cp_script())
            .args([
                "helm",
                "uninstall",
                &self.0,
                "--namespace",
                &self.0,
                "--wait",
            ])
            .arg("--ignore-not-found")
            .env("KUBECONFIG", &kubeconfig)
            .output();
        let _ = kubectl_try(
            None,
            &[
                "delete",
                "namespace",
                &self.0,
                "--ignore-not-found",
                "--wait=false",
            ],
            None,
        );
    }
}

/// Issue 19: PushRules served by a release's controller. The chart installs
/// the CRD, and the controller running as the release's ServiceAccount (its
/// pod's environment, rules on by default) serves a rule whose source is in
/// another namespace: copies made, the finalizer added, the status written
/// (Ready=True), Events on the source (its namespace) and on a bad rule
/// (`default`), the rule's deletion deleting its copies, and not one request
/// refused: the chart's grants are enough. A namespace admin (and a cluster
/// admin) cannot edit or delete a rule's copy, and the refusal names the
/// rule and its source; the controller still updates it.
#[tokio::test]
async fn a_release_serves_push_rules_with_its_grants_and_keeps_their_copies() {
    let _serial = serial();
    // Its own name each run: a namespace of an earlier run may still be terminating.
    let release = unique("p2k-rules");
    let _uninstall = Uninstall(release.clone());
    install_release(&release, &["env.SECRET_SYNC_DEBOUNCE_SECONDS=1"]);
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/pushrules.push-to-k8s.io",
    ]);
    let (sa, env) = pod_identity(&release, &release).await;
    assert!(
        !env.iter().any(|(k, _)| k == "ENABLE_PUSH_RULES"),
        "rules are served by default: {env:?}"
    );

    let mut test = TestEnv::new("rulerbac", 0).await;
    let _on_panic = test.cleanup_on_panic();
    let [certs, team_a, team_b] = ["certs", "team-a", "team-b"].map(|s| format!("{}-{s}", test.id));
    for ns in [&certs, &team_a, &team_b] {
        test.create_namespace(ns, &[]).await;
    }
    let tenant = format!("{}-tenant", test.id);
    kubectl(&[
        "create",
        "rolebinding",
        "tenant-admin",
        "--clusterrole=admin",
        &format!("--user={tenant}"),
        "-n",
        &team_a,
    ]);
    // The source: a plain Secret (no label) in a namespace of its own.
    let sources: Api<Secret> = Api::namespaced(test.client.clone(), &certs);
    for name in ["cert", "other"] {
        let mut source = source_secret(name, &[("k", "v1")]);
        source.metadata.labels = None;
        sources
            .create(&PostParams::default(), &source)
            .await
            .unwrap();
    }

    let kubeconfig = service_account_kubeconfig(&release, &sa);
    let mut daemon_env: Vec<(&str, &str)> =
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    daemon_env.push(("KUBECONFIG", kubeconfig.to_str().unwrap()));
    let mut daemon = Daemon::start_exact(&daemon_env);
    daemon.await_ready().await;

    let (rule, bad) = (format!("{}-cert", test.id), format!("{}-bad", test.id));
    let _rules = rules::Rules(vec![rule.clone(), bad.clone()]);
    let apply = |name: &str, source: &str, namespaces: &str| {
        let manifest = serde_json::json!({
            "apiVersion": "push-to-k8s.io/v1alpha1",
            "kind": "PushRule",
            "metadata": {"name": name},
            "spec": {
                "source": {"kind": "Secret", "namespace": certs, "name": source},
                "namespaces": [namespaces],
            },
        });
        let (ok, out) = kubectl_try(None, &["apply", "-f", "-"], Some(&manifest.to_string()));
        assert!(ok, "kubectl apply {name}: {out}");
    };
    apply(&rule, "cert", &format!("{}-team-*", test.id));
    // (Its own source: a bad rule refuses the source it names.)
    apply(&bad, "other", &format!("{}-team-[", test.id));
    let wanted = vec![team_a.clone(), team_b.clone()];
    test.await_copies(&wanted, "cert", &[("k", "v1")]).await;

    // Status (pushrules/status patch) and finalizer (pushrules patch).
    let served = rules::await_ready(&rule, "True", "Ready").await;
    assert!(
        served["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "push-to-k8s.io/copies")),
        "{}",
        served["metadata"]
    );
    rules::await_ready(&bad, "False", "InvalidAnnotation").await;
    // Events: on the source in its own namespace, on the bad rule in `default`.
    eventually(
        "a Pushed Event on the rule's source",
        Duration::from_secs(60),
        || async {
            Api::<Event>::namespaced(test.client.clone(), &certs)
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("Pushed")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("cert")
                })
        },
    )
    .await;
    eventually(
        "a Warning Event on the bad rule",
        Duration::from_secs(60),
        || async {
            Api::<Event>::namespaced(test.client.clone(), "default")
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some(bad.as_str())
                })
        },
    )
    .await;

    // The policy keeps the rule's copies: refused for the namespace admin
    // and for a cluster admin, naming the rule and its source.
    let source_ref = format!("{certs}/cert");
    let refusals = [
        vec![
            "label",
            "secret",
            "cert",
            "edited=yes",
            "-n",
            team_a.as_str(),
        ],
        vec![
            "annotate",
            "secret",
            "cert",
            "push-to-k8s.io/rule-",
            "-n",
            team_a.as_str(),
        ],
        vec!["delete", "secret", "cert", "-n", team_a.as_str()],
    ];
    for args in &refusals {
        for admin in [None, Some("system:masters")] {
            let user_args: Vec<&str> = match admin {
                None => args.clone(),
                Some(group) => [&["--as-group", group][..], args].concat(),
            };
            let user = if admin.is_none() {
                tenant.as_str()
            } else {
                "admin-not-the-controller"
            };
            let (ok, stderr) = kubectl_as(user, &user_args);
            assert!(!ok, "{user}: kubectl {args:?} must be refused");
            assert!(
                stderr.contains(&format!("copy kept by push-to-k8s for PushRule {rule}"))
                    && stderr.contains(&format!("edit the rule or its source {source_ref}")),
                "{user}: the refusal names the rule {rule} and its source {source_ref}: {stderr}"
            );
        }
    }
    // The controller still updates them.
    update_source(&test, &sources, "cert", &wanted, "v2").await;

    // The rule deleted: the finalizer path deletes its copies (the CRD is
    // looked at), then lets the rule go.
    kubectl(&["delete", "pushrule", &rule, "--wait=false"]);
    test.await_no_copies(&wanted, "cert").await;
    eventually("the rule is gone", Duration::from_secs(90), || async {
        rules::get_rule(&rule).is_none().then_some(())
    })
    .await;
    kubectl(&["delete", "pushrule", &bad, "--wait=false"]);
    eventually("the bad rule is gone", Duration::from_secs(90), || async {
        rules::get_rule(&bad).is_none().then_some(())
    })
    .await;

    stop_unrefused(&mut daemon);
    let _ = std::fs::remove_file(kubeconfig);
    test.cleanup().await;
}
