//! Issue 9: `push-to-k8s status` and `push-to-k8s plan` against the real
//! control plane, run as the built binary with a Deployment's environment.
//!
//! With no controller running, a cluster in every state at once: copies in
//! sync, one edited (stale), one deleted (missing), one blocked by an
//! unmanaged Secret of its name (conflict), a deleted source's copies
//! (orphaned), a refused source, and a ConfigMap source with one copy
//! deleted. `status` exits 1 with exactly those counts; `plan` lists exactly
//! the writes; both, also as a ServiceAccount that may only get and list,
//! write nothing (every resourceVersion is unchanged and the API
//! server's audit log holds no write). Started, the controller performs
//! exactly the writes `plan` listed (audit log); once everything converged,
//! `status` exits 0 and `plan` lists nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const SA: &str = "p2k-status";

/// What a run of the binary printed, and its exit status.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", self.stdout, self.stderr))
    }
}

/// Run `push-to-k8s ARGS` as a Deployment would (only its environment:
/// NAMESPACE and KUBECONFIG, plus PATH and HOME).
fn cli(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_push-to-k8s"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    let out = cmd.output().expect("run push-to-k8s");
    Run {
        code: out.status.code().expect("an exit status, not a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn meta(name: &str, ns: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ns.map(str::to_string),
        ..Default::default()
    }
}

/// ServiceAccount `SA` in `ns` that may only get and list namespaces,
/// Secrets and ConfigMaps, and list PushRules (no watch, no write, no
/// Event); its kubeconfig.
async fn read_only_service_account(env: &TestEnv, role: &str) -> PathBuf {
    let c = &env.client;
    let ns = env.source_ns.as_str();
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(c.clone(), ns)
        .create(
            &pp,
            &ServiceAccount {
                metadata: meta(SA, Some(ns)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let read = PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![
            "namespaces".into(),
            "secrets".into(),
            "configmaps".into(),
        ]),
        verbs: vec!["get".into(), "list".into()],
        ..Default::default()
    };
    // Where the PushRule CRD is installed (other tests install it), `status`
    // lists the rules too.
    let rules = PolicyRule {
        api_groups: Some(vec!["push-to-k8s.io".into()]),
        resources: Some(vec!["pushrules".into()]),
        verbs: vec!["list".into()],
        ..Default::default()
    };
    Api::<ClusterRole>::all(c.clone())
        .create(
            &pp,
            &ClusterRole {
                metadata: meta(role, None),
                rules: Some(vec![read, rules]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<ClusterRoleBinding>::all(c.clone())
        .create(
            &pp,
            &ClusterRoleBinding {
                metadata: meta(role, None),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: role.into(),
                },
                subjects: Some(vec![Subject {
                    kind: "ServiceAccount".into(),
                    name: SA.into(),
                    namespace: Some(ns.into()),
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    service_account_kubeconfig(ns, SA)
}

fn config_map_source(name: &str, annotations: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(map(&[(SOURCE_SELECTOR_KEY, "source")])),
            annotations: Some(map(annotations)),
            ..Default::default()
        },
        data: Some(map(&[("mode", "fast")])),
        ..Default::default()
    }
}

fn secret_source(name: &str, annotations: &[(&str, &str)]) -> Secret {
    let mut s = source_secret(name, &[("k", "v1")]);
    s.metadata.annotations = Some(map(annotations));
    s
}

/// `kind namespace/name` → resourceVersion of every Secret and ConfigMap in
/// `namespaces`.
async fn versions(env: &TestEnv, namespaces: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for ns in namespaces {
        let lp = ListParams::default();
        for s in env.secrets(ns).list_metadata(&lp).await.unwrap() {
            let name = s.metadata.name.unwrap();
            out.insert(
                format!("Secret {ns}/{name}"),
                s.metadata.resource_version.unwrap(),
            );
        }
        let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), ns);
        for c in cms.list_metadata(&lp).await.unwrap() {
            let name = c.metadata.name.unwrap();
            out.insert(
                format!("ConfigMap {ns}/{name}"),
                c.metadata.resource_version.unwrap(),
            );
        }
    }
    out
}

/// The audit log's length now: later entries are what happened since.
fn audit_mark() -> u64 {
    std::fs::metadata(audit_log()).map(|m| m.len()).unwrap_or(0)
}

/// Audited writes since `mark` (the policy audits every write to Secrets,
/// ConfigMaps and Leases), as `(user, verb, resource, namespace/name)`.
fn audited_writes(mark: u64) -> Vec<(String, String, String, String)> {
    let text = std::fs::read(audit_log()).expect("read the audit log");
    let from = usize::try_from(mark).unwrap().min(text.len());
    String::from_utf8_lossy(&text[from..])
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            let o = &e["objectRef"];
            (
                s(&e["user"]["username"]),
                s(&e["verb"]),
                s(&o["resource"]),
                format!("{}/{}", s(&o["namespace"]), s(&o["name"])),
            )
        })
        .collect()
}

/// The writes of a `plan -o json`, as `op kind namespace/name source`, sorted.
fn planned(plan: &Value) -> Vec<String> {
    let mut w: Vec<String> = plan["writes"]
        .as_array()
        .expect("writes")
        .iter()
        .map(|w| {
            format!(
                "{} {} {}/{} {}",
                w["op"].as_str().unwrap(),
                w["kind"].as_str().unwrap(),
                w["namespace"].as_str().unwrap(),
                w["name"].as_str().unwrap(),
                w["source"].as_str().unwrap()
            )
        })
        .collect();
    w.sort();
    w
}

/// The API requests `plan`'s writes are made of, as the audit log names
/// them: `verb resource namespace/name` (an apply is a PATCH, a replace a
/// delete and a create), sorted.
fn as_requests(planned: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for w in planned {
        let parts: Vec<&str> = w.split(' ').collect();
        let resource = match parts[1] {
            "Secret" => "secrets",
            "ConfigMap" => "configmaps",
            other => panic!("kind {other}"),
        };
        let verbs: &[&str] = match parts[0] {
            "create" => &["create"],
            "apply" => &["patch"],
            "replace" => &["delete", "create"],
            "delete" => &["delete"],
            other => panic!("op {other}"),
        };
        out.extend(verbs.iter().map(|v| format!("{v} {resource} {}", parts[2])));
    }
    out.sort();
    out
}

fn counts(v: &Value) -> Value {
    v["counts"].clone()
}

#[tokio::test]
async fn status_and_plan_report_what_the_controller_would_do_and_write_nothing() {
    let _serial = serial();
    let env = TestEnv::new("status", 5).await;
    let _cleanup = env.cleanup_on_panic();
    let role = format!("{}-read", env.id);
    let _rbac = DeleteClusterRbac(role.clone());
    let t = env.targets.clone();
    // Everything this test writes stays within its own namespaces.
    let only_ours = format!("{}-t*", env.id);
    let narrowed = [("push-to-k8s.io/namespaces", only_ours.as_str())];
    let sources = env.sources();
    let config_maps = |ns: &str| Api::<ConfigMap>::namespaced(env.client.clone(), ns);
    let pp = PostParams::default();
    sources
        .create(&pp, &secret_source("db", &narrowed))
        .await
        .unwrap();
    sources
        .create(&pp, &secret_source("gone", &narrowed))
        .await
        .unwrap();
    config_maps(&env.source_ns)
        .create(&pp, &config_map_source("settings", &narrowed))
        .await
        .unwrap();

    // A controller makes every copy, and stops.
    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    env.await_copies(&t, "db", &[("k", "v1")]).await;
    env.await_copies(&t, "gone", &[("k", "v1")]).await;
    for ns in &t {
        eventually(&format!("ConfigMap {ns}/settings"), WAIT, || async {
            config_maps(ns)
                .get_opt("settings")
                .await
                .unwrap()
                .map(|_| ())
        })
        .await;
    }
    assert!(daemon.stop().success(), "{}", daemon.logs());
    let deployment_env = [("NAMESPACE", env.source_ns.as_str())];
    let converged = cli(&["status"], &deployment_env);
    assert_eq!(
        converged.code, 0,
        "{}{}",
        converged.stdout, converged.stderr
    );

    // While it is stopped: t1's copy edited, t2's deleted, t3's replaced by
    // an unmanaged Secret of its name, the source `gone` deleted, t4's
    // ConfigMap copy deleted, and a source added whose selector is invalid.
    let patch = json!({"stringData": {"k": "edited"}});
    env.secrets(&t[1])
        .patch("db", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let dp = DeleteParams::default();
    env.secrets(&t[2]).delete("db", &dp).await.unwrap();
    env.secrets(&t[3]).delete("db", &dp).await.unwrap();
    env.secrets(&t[3])
        .create(&pp, &source_secret("db", &[("mine", "x")]))
        .await
        .unwrap();
    env.delete_source("gone").await;
    config_maps(&t[4]).delete("settings", &dp).await.unwrap();
    let invalid = [("push-to-k8s.io/namespace-selector", "in (")];
    sources
        .create(&pp, &secret_source("bad", &invalid))
        .await
        .unwrap();
    let kubeconfig = read_only_service_account(&env, &role).await;
    let read_only = [
        ("NAMESPACE", env.source_ns.as_str()),
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
    ];

    let mut watched = t.clone();
    watched.push(env.source_ns.clone());
    let before = versions(&env, &watched).await;
    let mark = audit_mark();

    // status: exit 1 and exactly these counts.
    let status = cli(&["status", "-o", "json"], &deployment_env);
    assert_eq!(status.code, 1, "{}{}", status.stdout, status.stderr);
    let s = status.json();
    assert_eq!(s["in_sync"], false);
    assert_eq!(
        s["totals"],
        json!({"sources": 4, "refused": 1, "wanted": 10, "in_sync": 6, "missing": 2,
               "stale": 1, "conflict": 1, "orphaned": 5}),
        "{}",
        status.stdout
    );
    let by_name = |kind: &str, name: &str| {
        s["sources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["kind"] == kind && x["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} in {}", status.stdout))
            .clone()
    };
    let db = by_name("Secret", "db");
    assert_eq!(
        counts(&db),
        json!({"wanted": 5, "in_sync": 2, "missing": 1, "stale": 1, "conflict": 1, "orphaned": 0})
    );
    let gone = by_name("Secret", "gone");
    assert_eq!(gone["state"], "gone");
    assert_eq!(counts(&gone)["orphaned"], 5);
    let settings = by_name("ConfigMap", "settings");
    assert_eq!(
        counts(&settings),
        json!({"wanted": 5, "in_sync": 4, "missing": 1, "stale": 0, "conflict": 0, "orphaned": 0})
    );
    let bad = by_name("Secret", "bad");
    assert_eq!(bad["state"], "refused");
    assert_eq!(bad["refusal"]["reason"], "InvalidAnnotation");
    assert!(db.get("namespaces").is_none(), "names only with --verbose");

    // --verbose names them, in text and in JSON.
    let verbose = cli(&["status", "--verbose"], &deployment_env);
    assert_eq!(verbose.code, 1);
    for line in [
        format!("  in-sync   {}\n", t[0]),
        format!("  stale     {}\n", t[1]),
        format!("  missing   {}\n", t[2]),
        format!("  conflict  {}\n", t[3]),
        format!("  orphaned  {}/gone\n", t[4]),
        format!("  missing   {}\n", t[4]),
    ] {
        assert!(
            verbose.stdout.contains(&line),
            "{line:?} in\n{}",
            verbose.stdout
        );
    }
    let named = cli(&["status", "-v", "-o", "json"], &deployment_env).json();
    let db_names = named["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["kind"] == "Secret" && x["name"] == "db")
        .unwrap()["namespaces"]
        .clone();
    assert_eq!(
        db_names,
        json!({"in_sync": [t[0], t[4]], "missing": [t[2]], "stale": [t[1]],
               "conflict": [t[3]], "orphaned": []})
    );

    // plan: exactly these writes.
    let plan = cli(&["plan", "-o", "json"], &deployment_env);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let p = plan.json();
    let mut want = vec![
        format!("create Secret {}/db db", t[2]),
        format!("apply Secret {}/db db", t[1]),
        format!("create ConfigMap {}/settings settings", t[4]),
    ];
    want.extend(t.iter().map(|ns| format!("delete Secret {ns}/gone gone")));
    want.sort();
    assert_eq!(planned(&p), want, "{}", plan.stdout);
    assert_eq!(
        p["summary"],
        json!({"total": 8, "create": 2, "apply": 1, "replace": 0, "delete": 5})
    );
    assert_eq!(
        p["conflicts"],
        json!([{"kind": "Secret", "namespace": t[3], "name": "db", "source": "db"}])
    );
    assert_eq!(p["refused"][0]["source"], "bad");
    let text = cli(&["plan"], &deployment_env);
    assert_eq!(text.code, 0);
    let apply = [
        "apply".to_string(),
        "Secret".to_string(),
        format!("{}/db", t[1]),
        "from".to_string(),
        format!("{}/db", env.source_ns),
    ];
    assert!(
        text.stdout
            .lines()
            .any(|l| l.split_whitespace().eq(apply.iter().map(String::as_str))),
        "one line per write: {apply:?} in\n{}",
        text.stdout
    );
    assert_eq!(text.stdout.lines().count(), 8 + 2, "{}", text.stdout);
    assert!(
        text.stdout
            .contains("8 writes (2 create, 1 apply, 5 delete); nothing was written\n"),
        "{}",
        text.stdout
    );

    // The same answers as a ServiceAccount that may only read: no write or
    // Event was needed, and none was refused.
    for args in [&["status", "-o", "json"][..], &["plan", "-o", "json"][..]] {
        let admin = cli(args, &deployment_env);
        let ro = cli(args, &read_only);
        assert_eq!(ro.code, admin.code, "{args:?}: {}", ro.stderr);
        assert_eq!(ro.stdout, admin.stdout, "{args:?}");
        assert!(
            !ro.stderr.contains("Forbidden") && !ro.stderr.contains("403"),
            "{args:?}: {}",
            ro.stderr
        );
    }

    // Nothing was written: every resourceVersion is as it was, and the
    // audit log holds no write in these namespaces, and none by the
    // ServiceAccount anywhere (not even a refused one).
    assert_eq!(versions(&env, &watched).await, before);
    let sa_user = format!("system:serviceaccount:{}:{SA}", env.source_ns);
    let writes: Vec<_> = audited_writes(mark)
        .into_iter()
        .filter(|(user, _, _, at)| {
            *user == sa_user || watched.iter().any(|ns| at.starts_with(&format!("{ns}/")))
        })
        .collect();
    assert_eq!(writes, vec![], "status and plan wrote");

    // The controller then makes exactly the writes plan listed. (The
    // refused source goes first; it plans no write either way.)
    env.delete_source("bad").await;
    let plan = cli(&["plan", "-o", "json"], &deployment_env).json();
    assert_eq!(planned(&plan), want);
    let mark = audit_mark();
    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    env.await_copies(&t[..3], "db", &[("k", "v1")]).await;
    env.await_no_copies(&t, "gone").await;
    eventually("the ConfigMap copy back", WAIT, || async {
        config_maps(&t[4])
            .get_opt("settings")
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
    assert!(daemon.stop().success(), "{}", daemon.logs());
    let mut done: Vec<String> = audited_writes(mark)
        .into_iter()
        .filter(|(_, _, _, at)| t.iter().any(|ns| at.starts_with(&format!("{ns}/"))))
        .map(|(_, verb, resource, at)| format!("{verb} {resource} {at}"))
        .collect();
    done.sort();
    assert_eq!(done, as_requests(&want), "the controller's writes");

    // Converged but for the conflict, which only its owner can resolve.
    let status = cli(&["status", "-o", "json"], &deployment_env);
    assert_eq!(status.code, 1);
    assert_eq!(
        status.json()["totals"],
        json!({"sources": 2, "refused": 0, "wanted": 10, "in_sync": 9, "missing": 0,
               "stale": 0, "conflict": 1, "orphaned": 0})
    );
    assert_eq!(
        planned(&cli(&["plan", "-o", "json"], &deployment_env).json()),
        Vec::<String>::new()
    );

    // Its owner deletes it: the copy is missing, then made.
    env.secrets(&t[3]).delete("db", &dp).await.unwrap();
    let plan = cli(&["plan", "-o", "json"], &deployment_env).json();
    assert_eq!(
        planned(&plan),
        vec![format!("create Secret {}/db db", t[3])]
    );
    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    env.await_copies(&t, "db", &[("k", "v1")]).await;

    // In sync: exit 0, and no write planned (asked while the controller runs).
    for e in [&deployment_env[..], &read_only[..]] {
        let status = cli(&["status"], e);
        assert_eq!(status.code, 0, "{}{}", status.stdout, status.stderr);
        assert!(
            status.stdout.ends_with("in sync: 10 of 10 copies\n"),
            "{}",
            status.stdout
        );
        let plan = cli(&["plan"], e);
        assert_eq!(plan.code, 0, "{}", plan.stderr);
        assert_eq!(
            plan.stdout,
            "no writes: the controller would change nothing; nothing was written\n"
        );
    }
    assert!(daemon.stop().success(), "{}", daemon.logs());

    let _ = std::fs::remove_file(kubeconfig);
    env.teardown().await;
}

/// Bad usage and bad settings exit 2 with one line and print nothing on
/// stdout; an API server that cannot be reached exits 3 (not 1: nothing is
/// known about the copies).
#[tokio::test]
async fn status_and_plan_exit_2_for_bad_usage_and_3_when_the_cluster_cannot_be_read() {
    let cp = control_plane();
    let one_line_2 = |run: Run, want: &str| {
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert_eq!(run.stdout, "");
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert!(run.stderr.contains(want), "{want:?} in {}", run.stderr);
    };
    let ns = [("NAMESPACE", "default")];
    one_line_2(
        cli(&["status", "--bogus"], &ns),
        "unknown option \"--bogus\" for status",
    );
    one_line_2(cli(&["plan", "-o", "yaml"], &ns), "invalid output format");
    one_line_2(cli(&["statsu"], &ns), "unknown command \"statsu\"");
    one_line_2(
        cli(
            &["status"],
            &[("NAMESPACE", "default"), ("SYNC_INTERVAL", "0")],
        ),
        "invalid SYNC_INTERVAL=\"0\"",
    );
    one_line_2(
        cli(&["plan"], &[("NAMESPACE", "no-such-namespace-p2k")]),
        "invalid NAMESPACE=\"no-such-namespace-p2k\"",
    );
    let help = cli(&["--help"], &[("SYNC_INTERVAL", "0")]);
    assert_eq!(help.code, 0, "help needs no valid setting");
    assert!(
        help.stdout.contains("push-to-k8s status"),
        "{}",
        help.stdout
    );

    // An API server nobody listens on.
    let admin = kube::config::Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let cluster = admin.clusters[0].cluster.clone().unwrap();
    let port = free_port();
    let dead = std::env::temp_dir().join(format!("{}.kubeconfig", unique("p2k-dead")));
    std::fs::write(
        &dead,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: x\ncontexts:\n- name: c\n  context: {{cluster: dead, user: u}}\ncurrent-context: c\n",
            cluster.certificate_authority.unwrap()
        ),
    )
    .unwrap();
    for args in [&["status"][..], &["plan", "-o", "json"][..]] {
        let run = cli(
            args,
            &[("NAMESPACE", "default"), ("KUBECONFIG", path(&dead))],
        );
        assert_eq!(run.code, 3, "{args:?}: {}", run.stderr);
        assert_eq!(run.stdout, "");
        assert!(
            run.stderr.contains("cannot reach the Kubernetes API"),
            "{}",
            run.stderr
        );
    }
    let _ = std::fs::remove_file(dead);
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
