//! Fault injection against the real control plane (issue 7): daemons killed
//! with SIGKILL and started again with the same arguments (`cp.sh kill` /
//! `cp.sh start`), the controller itself killed half-way through a batch, a
//! namespace over its quota next to a terminating one, and the controller's
//! ClusterRole losing `watch` while it runs.
//!
//! Every test holds [`serial`] and, before it kills anything, takes a
//! [`RestoreControlPlane`] guard: whatever happens, the control plane is
//! running and ready again when the test ends, so a failure here does not
//! poison the tests after it.
//!
//! Every controller started here copies into *every* namespace of the
//! cluster, so assertions look at this test's source only (its secret names
//! carry the test's unique id).

mod common;

use std::collections::BTreeMap;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

/// The controller's watches, as `/readyz` names them.
const WATCHES: [&str; 3] = ["sources", "namespaces", "replicas"];
/// How long convergence may take after a fault (failed writes are retried
/// with exponential backoff, so a copy can wait a while for its next try).
const AFTER_FAULT: Duration = Duration::from_secs(120);
/// How long a change may take to reach every copy when nothing is wrong.
const NORMAL: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- helpers

/// Start a controller for `env` and wait until `/readyz` says its caches synced.
async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Daemon {
    let mut daemon = Daemon::start(&env.source_ns, extra);
    eprintln!("controller log: {}", daemon.log.display());
    daemon.await_ready().await;
    daemon
}

/// Paced: `SECRET_SYNC_RATE_LIMIT=5`, no burst, so a batch takes seconds.
const PACED: [(&str, &str); 2] = [
    ("SECRET_SYNC_RATE_LIMIT", "5"),
    ("SECRET_SYNC_RATE_BURST", "1"),
];

/// SIGTERM: the controller must still exit 0 after the faults it went through.
fn stop(daemon: &mut Daemon) {
    let status = daemon.stop();
    assert!(
        status.success(),
        "controller exited with {status} after SIGTERM; log:\n{}",
        tail(&daemon.logs())
    );
}

/// The last lines of a log, for assertion messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn kubectl(args: &[&str]) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig);
    run(cmd)
}

/// Every copy of `source_ns/name` in the cluster, by namespace.
async fn copies(env: &TestEnv, name: &str) -> BTreeMap<String, Secret> {
    let want = format!("{}/{name}", env.source_ns);
    Api::<Secret>::all(env.client.clone())
        .list(
            &ListParams::default()
                .labels(MANAGED_SELECTOR)
                .fields(&format!("metadata.name={name}")),
        )
        .await
        .expect("list copies")
        .items
        .into_iter()
        .filter(|s| {
            s.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SOURCE_ANNOTATION))
                == Some(&want)
        })
        .filter_map(|s| Some((s.metadata.namespace.clone()?, s)))
        .collect()
}

/// `(uid, resourceVersion)` of every copy of `name`, by namespace.
async fn identities(env: &TestEnv, name: &str) -> BTreeMap<String, (String, String)> {
    copies(env, name)
        .await
        .into_iter()
        .map(|(ns, s)| {
            let m = s.metadata;
            (
                ns,
                (
                    m.uid.unwrap_or_default(),
                    m.resource_version.unwrap_or_default(),
                ),
            )
        })
        .collect()
}

/// Wait (up to `timeout`) until every namespace in `namespaces` holds a copy
/// of `name` with exactly `data`; on timeout say which do not, with the log.
async fn await_everywhere(
    env: &TestEnv,
    daemon: &Daemon,
    namespaces: &[String],
    name: &str,
    data: &[(&str, &str)],
    timeout: Duration,
) {
    let want = data_map(data);
    let start = Instant::now();
    loop {
        let have = copies(env, name).await;
        let wrong: Vec<&String> = namespaces
            .iter()
            .filter(|ns| {
                have.get(*ns)
                    .is_none_or(|c| c.data.clone().unwrap_or_default() != want)
            })
            .collect();
        if wrong.is_empty() {
            eprintln!(
                "{} copies of {name} as expected after {:?}",
                namespaces.len(),
                start.elapsed()
            );
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "after {timeout:?}, {} of {} namespaces lack the expected copy of {name} \
             (first: {:?}); controller log:\n{}",
            wrong.len(),
            namespaces.len(),
            &wrong[..wrong.len().min(5)],
            tail(&daemon.logs())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Give source `name` exactly `data`.
async fn set_data(env: &TestEnv, name: &str, data: &[(&str, &str)]) {
    let mut s = env.sources().get(name).await.expect("get source");
    s.data = Some(data_map(data));
    env.sources()
        .replace(name, &PostParams::default(), &s)
        .await
        .expect("update source");
}

/// Wait until `/readyz` answers 200 again; how long after `since` it did.
async fn await_ready_again(daemon: &Daemon, since: Instant, timeout: Duration) -> Duration {
    until("/readyz to answer 200 again", timeout, || async {
        match daemon.readyz().await {
            Some((200, _)) => Ok(since.elapsed()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Whether an unready `/readyz` body names a failing watch among `names`.
fn names_a_failing_watch(body: &str, names: &[&str]) -> bool {
    body.to_lowercase().contains("watch") && names.iter().any(|w| body.contains(w))
}

/// Delete one copy of `name` and wait until the controller puts it back
/// (proves the replica watch is alive: no resync is due for minutes).
async fn deleted_copy_heals(env: &TestEnv, daemon: &Daemon, ns: &str, name: &str) {
    let uid = env
        .copy(ns, name)
        .await
        .and_then(|c| c.metadata.uid)
        .expect("a copy to delete");
    env.secrets(ns)
        .delete(name, &DeleteParams::default())
        .await
        .expect("delete a copy");
    let start = Instant::now();
    until(
        &format!("the deleted copy {ns}/{name} to come back"),
        NORMAL,
        || async {
            match env.copy(ns, name).await {
                Some(c) if c.metadata.uid.as_deref() != Some(uid.as_str()) => Ok(()),
                Some(_) => Err("the old copy is still there".into()),
                None => Err(format!("no copy; log:\n{}", tail(&daemon.logs()))),
            }
        },
    )
    .await;
    eprintln!("deleted copy {ns}/{name} healed in {:?}", start.elapsed());
}

/// Lines of the controller's log at WARN level that name `needle`.
fn warnings_naming(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains(needle))
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------- a: kube-apiserver

/// kube-apiserver killed with SIGKILL in the middle of a paced propagation
/// (30 namespaces at 5 writes/s) and kept down ~20 s: every copy converges
/// once it is back, a later change and a deleted copy still propagate (the
/// watches are alive, not just re-listed once), `/healthz` stayed up (the
/// loop lives), and `/readyz` went unready naming a failing watch while the
/// API server was away, then ready again.
#[tokio::test]
async fn apiserver_killed_mid_propagation_converges_and_watches_survive() {
    let _serial = serial();
    let env = TestEnv::new("f-api", 30).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    let mut daemon = start(&env, &PACED).await;
    let everywhere = env.targets_where(|_| true).await;

    env.create_source(&name, &[("k", "v1")]).await;
    let at_kill = until(
        "about 10 copies (the propagation is under way)",
        NORMAL,
        || async {
            let n = copies(&env, &name).await.len();
            if n >= 10 {
                Ok(n)
            } else {
                Err(format!("{n} copies"))
            }
        },
    )
    .await;
    assert!(
        at_kill < everywhere.len(),
        "the kill would not land mid-propagation: all {at_kill} copies are already written"
    );

    let _restore = restore_control_plane_on_drop();
    let killed = Instant::now();
    cp_kill("kube-apiserver");
    // Keep it down at least 20 s, longer (up to 45 s) until /readyz reports it.
    let mut unready: Option<(Duration, String)> = None;
    let mut healthz_failures = Vec::new();
    loop {
        if unready.is_none()
            && let Some((503, body)) = daemon.readyz().await
        {
            unready = Some((killed.elapsed(), body));
        }
        match daemon.healthz().await {
            Some((200, _)) => {}
            other => healthz_failures.push((killed.elapsed(), other)),
        }
        let down = killed.elapsed();
        if down >= Duration::from_secs(45) || (down >= Duration::from_secs(20) && unready.is_some())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        daemon.running(),
        "the controller exited while the API server was down"
    );
    cp_start("kube-apiserver");
    let back = Instant::now();
    let down = killed.elapsed();
    eprintln!(
        "kube-apiserver killed with about {at_kill} of {} copies written, back after {down:?}; \
         /readyz while down: {unready:?}",
        everywhere.len()
    );

    await_everywhere(
        &env,
        &daemon,
        &everywhere,
        &name,
        &[("k", "v1")],
        AFTER_FAULT,
    )
    .await;
    let ready_after = await_ready_again(&daemon, back, AFTER_FAULT).await;
    eprintln!("/readyz 200 again {ready_after:?} after the API server was back");

    // The watches are alive: a change and a deleted copy propagate at once.
    set_data(&env, &name, &[("k", "v2")]).await;
    await_everywhere(&env, &daemon, &everywhere, &name, &[("k", "v2")], NORMAL).await;
    deleted_copy_heals(&env, &daemon, &env.targets[0], &name).await;

    assert!(
        healthz_failures.is_empty(),
        "/healthz failed while only the API server was down (the loop is alive): {healthz_failures:?}"
    );
    let (after, body) = unready.unwrap_or_else(|| {
        panic!("/readyz stayed 200 for {down:?} with the API server down (every watch failing)")
    });
    assert!(
        names_a_failing_watch(&body, &WATCHES),
        "/readyz went unready after {after:?} but its body does not name a failing watch: {body:?}"
    );
    stop(&mut daemon);
    env.teardown().await;
}

// ---------------------------------------------------------------- b: etcd

/// etcd killed and started again while the controller is idle: the next
/// change to the source reaches every copy, and a deleted copy heals.
#[tokio::test]
async fn etcd_restarted_while_idle_then_the_next_change_flows() {
    let _serial = serial();
    let env = TestEnv::new("f-etcd", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let mut daemon = start(&env, &[]).await;
    let everywhere = env.targets_where(|_| true).await;
    await_everywhere(&env, &daemon, &everywhere, &name, &[("k", "v1")], NORMAL).await;

    let _restore = restore_control_plane_on_drop();
    let t = Instant::now();
    cp_restart("etcd");
    eprintln!(
        "etcd restarted; the API server ready again after {:?}",
        t.elapsed()
    );

    set_data(&env, &name, &[("k", "v2")]).await;
    await_everywhere(&env, &daemon, &everywhere, &name, &[("k", "v2")], NORMAL).await;
    deleted_copy_heals(&env, &daemon, &env.targets[1], &name).await;
    await_ready_again(&daemon, Instant::now(), NORMAL).await;
    stop(&mut daemon);
    env.teardown().await;
}

// ---------------------------------------------------------------- c: the controller

/// The controller killed with SIGKILL half-way through its first batch (40
/// namespaces at 5 writes/s): a new process converges, and writes only what
/// is missing. The copies that existed before it started keep their
/// resourceVersion (not rewritten), its own write counter says "create" for
/// exactly the missing ones, and so does the API server's request counter.
#[tokio::test]
async fn controller_killed_mid_batch_restart_writes_only_what_is_missing() {
    let _serial = serial();
    let client = client().await;
    // Namespaces an earlier test deleted make the namespace controller delete
    // Secrets, which the API server counts as writes: let that finish.
    await_no_terminating_namespaces(&client).await;
    let env = TestEnv::new("f-ctl", 40).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let everywhere = env.targets_where(|_| true).await;

    let mut first = start(&env, &PACED).await;
    until(
        "about 10 copies (the batch is under way)",
        NORMAL,
        || async {
            let n = copies(&env, &name).await.len();
            if n >= 10 {
                Ok(())
            } else {
                Err(format!("{n} copies"))
            }
        },
    )
    .await;
    first.kill();

    // A write in flight at the kill may still land; wait until nothing moves.
    let mut before = identities(&env, &name).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = identities(&env, &name).await;
        if now == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "copies keep changing with the controller dead"
        );
        before = now;
    }
    let missing = everywhere.len() - before.len();
    eprintln!(
        "killed with {} of {} copies written; {missing} missing",
        before.len(),
        everywhere.len()
    );
    assert!(
        missing > 0 && before.len() >= 10,
        "the kill did not land half-way through the batch ({} of {} written)",
        before.len(),
        everywhere.len()
    );

    let server_before = apiserver_secret_writes(&client).await;
    let mut second = start(&env, &PACED).await;
    await_everywhere(
        &env,
        &second,
        &everywhere,
        &name,
        &[("k", "v1")],
        AFTER_FAULT,
    )
    .await;
    // Its batch has ended when its write counter has stopped moving (at
    // 5 writes/s, a write still queued would show within 2 s).
    let mut written = second.metric_sum("push_to_k8s_writes_total", &[]).await;
    let deadline = Instant::now() + NORMAL;
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = second.metric_sum("push_to_k8s_writes_total", &[]).await;
        if now == written && now >= missing as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted controller's writes did not settle: {now}"
        );
        written = now;
    }
    let creates = second
        .metric_sum(
            "push_to_k8s_writes_total",
            &["op=\"create\"", "result=\"ok\""],
        )
        .await;
    let server_writes = apiserver_secret_writes(&client).await - server_before;
    let after = identities(&env, &name).await;
    let rewritten: Vec<&String> = before
        .iter()
        .filter(|(ns, id)| after.get(*ns) != Some(id))
        .map(|(ns, _)| ns)
        .collect();
    assert!(
        rewritten.is_empty(),
        "the restarted controller rewrote {} copies that were already there: {:?}; log:\n{}",
        rewritten.len(),
        &rewritten[..rewritten.len().min(5)],
        tail(&second.logs())
    );
    assert_eq!(
        (written, creates),
        (missing as f64, missing as f64),
        "the restarted controller's writes (all, creates) are not exactly the {missing} missing copies:\n{}",
        second.metrics().await
    );
    assert_eq!(
        server_writes, missing as f64,
        "the API server counted {server_writes} Secret writes for {missing} missing copies"
    );
    stop(&mut second);
    env.teardown().await;
}

// ---------------------------------------------------------------- d: quota, terminating

/// Removes a namespace's finalizer when dropped, so a namespace held in
/// Terminating by the test always goes away (a namespace stuck in
/// Terminating would hold up every later test that waits for none).
struct ReleaseFinalizer(String);

impl Drop for ReleaseFinalizer {
    fn drop(&mut self) {
        let _ = Command::new("kubectl")
            .args(["patch", "namespace", &self.0, "--type=merge"])
            .args(["-p", r#"{"metadata":{"finalizers":null}}"#])
            .env("KUBECONFIG", &control_plane().kubeconfig)
            .output();
    }
}

const HOLD: &str = "push-to-k8s.test/hold";

/// A namespace over its ResourceQuota (`count/secrets: "0"`) and a namespace
/// held in Terminating: the others get the source and its change, the log
/// stays quiet about both (failures retried with backoff, no storm), and the
/// blocked copy arrives once the quota is lifted.
#[tokio::test]
async fn quota_and_terminating_namespace_block_only_themselves_quietly() {
    let _serial = serial();
    let mut env = TestEnv::new("f-quota", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    let quota_ns = format!("{}-quota", env.id);
    let term_ns = format!("{}-term", env.id);
    env.create_namespace(&quota_ns, &[]).await;
    env.create_namespace(&term_ns, &[]).await;
    let _release = ReleaseFinalizer(term_ns.clone());
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    namespaces
        .patch(
            &term_ns,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": [HOLD]}})),
        )
        .await
        .expect("hold the namespace with a finalizer");

    quota_without_secrets(&env.client, &quota_ns).await;

    env.create_source(&name, &[("k", "v1")]).await;
    let mut daemon = start(&env, &[]).await;
    let everywhere = env.targets_where(|_| true).await;
    let others: Vec<String> = everywhere
        .iter()
        .filter(|ns| **ns != quota_ns)
        .cloned()
        .collect();
    await_everywhere(&env, &daemon, &others, &name, &[("k", "v1")], NORMAL).await;
    // The refusal is reported (a WARN in the log or a Warning Event on the
    // source naming the namespace); from then on it is retried with backoff.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.source_ns);
    eventually(
        "the refusal reported (a WARN or a Warning Event naming the namespace over quota)",
        NORMAL,
        || async {
            if !warnings_naming(&daemon.logs(), &quota_ns).is_empty() {
                return Some(());
            }
            let list = events.list(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .any(|e| {
                    e.type_.as_deref() == Some("Warning")
                        && e.note.as_deref().unwrap_or_default().contains(&quota_ns)
                })
                .then_some(())
        },
    )
    .await;

    // The window: the namespace is deleted (held in Terminating), the source
    // changes, and for 30 s the log is watched.
    let window = Instant::now();
    let mark = daemon.logs().len();
    namespaces
        .delete(&term_ns, &DeleteParams::default())
        .await
        .expect("delete the held namespace");
    set_data(&env, &name, &[("k", "v2")]).await;
    let live: Vec<String> = others
        .iter()
        .filter(|ns| **ns != term_ns)
        .cloned()
        .collect();
    await_everywhere(&env, &daemon, &live, &name, &[("k", "v2")], NORMAL).await;
    tokio::time::sleep_until((window + Duration::from_secs(30)).into()).await;
    let logs = daemon.logs();
    let in_window = String::from_utf8_lossy(&logs.as_bytes()[mark..]);
    let ns = namespaces.get(&term_ns).await.expect("the held namespace");
    assert!(
        ns.metadata.deletion_timestamp.is_some(),
        "{term_ns} is not terminating"
    );
    assert!(
        env.copy(&quota_ns, &name).await.is_none(),
        "a copy got past the quota"
    );
    // Exponential backoff from 1-2 s allows about 5 attempts in 30 s, plus
    // one for the source's change; a retry at every 1-s debounce would be 30.
    for ns in [&quota_ns, &term_ns] {
        let warns = warnings_naming(&in_window, ns);
        eprintln!("{} WARN lines naming {ns} in 30 s", warns.len());
        assert!(
            warns.len() <= 8,
            "{} WARN lines naming {ns} in 30 s (a retry storm, not a backoff):\n{}",
            warns.len(),
            warns.join("\n")
        );
    }

    // Lift the quota: the copy arrives (at the next retry, under backoff).
    let lifted = Instant::now();
    Api::<ResourceQuota>::namespaced(env.client.clone(), &quota_ns)
        .delete("no-secrets", &DeleteParams::default())
        .await
        .expect("delete the quota");
    await_everywhere(
        &env,
        &daemon,
        std::slice::from_ref(&quota_ns),
        &name,
        &[("k", "v2")],
        Duration::from_secs(330),
    )
    .await;
    eprintln!(
        "copy arrived {:?} after the quota was lifted",
        lifted.elapsed()
    );
    stop(&mut daemon);
    env.teardown().await;
}

// ---------------------------------------------------------------- e: RBAC

/// Deletes the chart's cluster-scoped RBAC of release `.0` when dropped.
struct DeleteClusterRbac(String);

impl Drop for DeleteClusterRbac {
    fn drop(&mut self) {
        for kind in ["clusterrolebinding", "clusterrole"] {
            let _ = Command::new("kubectl")
                .args(["delete", kind, &self.0, "--ignore-not-found"])
                .env("KUBECONFIG", &control_plane().kubeconfig)
                .output();
        }
    }
}

/// Set whether the ClusterRole `name` grants `watch` on Secrets.
async fn secrets_watch(client: &kube::Client, name: &str, allowed: bool) {
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let mut role = roles.get(name).await.expect("the chart's ClusterRole");
    let rule = role
        .rules
        .iter_mut()
        .flatten()
        .find(|r| r.resources.iter().flatten().any(|x| x == "secrets"))
        .expect("a rule for Secrets");
    rule.verbs.retain(|v| v != "watch");
    if allowed {
        rule.verbs.push("watch".into());
    }
    roles
        .replace(name, &PostParams::default(), &role)
        .await
        .expect("update the ClusterRole");
}

/// The controller, run as the chart's ServiceAccount with the chart's RBAC,
/// loses `watch` on Secrets while it runs: `/readyz` turns unready and names
/// the failing watch; with the permission back it is ready again, a change
/// made meanwhile converges, and later changes propagate (the watches live).
///
/// An established watch keeps the permissions it was opened with until it
/// ends (the controller's end after 240 s); the test restarts the API server
/// so every watch is opened again under the new rules at once.
#[tokio::test]
async fn lost_watch_permission_makes_readyz_unready_with_the_reason() {
    let _serial = serial();
    let env = TestEnv::new("f-rbac", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    let release = env.id.clone();
    let _rbac = DeleteClusterRbac(release.clone());
    let chart = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/push-to-k8s");
    let rbac = cp(&[
        "helm",
        "template",
        &release,
        chart,
        "--namespace",
        &env.source_ns,
        "--show-only",
        "templates/rbac.yaml",
    ]);
    let manifest = std::env::temp_dir().join(format!("{release}-rbac.yaml"));
    std::fs::write(&manifest, rbac).unwrap();
    kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    let _ = std::fs::remove_file(&manifest);
    let kubeconfig = service_account_kubeconfig(&env.source_ns, &release);

    env.create_source(&name, &[("k", "v1")]).await;
    let mut daemon = start(&env, &[("KUBECONFIG", kubeconfig.to_str().unwrap())]).await;
    let everywhere = env.targets_where(|_| true).await;
    await_everywhere(&env, &daemon, &everywhere, &name, &[("k", "v1")], NORMAL).await;

    secrets_watch(&env.client, &release, false).await;
    let sa = format!("system:serviceaccount:{}:{release}", env.source_ns);
    let can = Command::new("kubectl")
        .args([
            "auth",
            "can-i",
            "watch",
            "secrets",
            "--all-namespaces",
            "--as",
            &sa,
        ])
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .output()
        .expect("kubectl auth can-i");
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "no");
    {
        let _restore = restore_control_plane_on_drop();
        cp_restart("kube-apiserver");
    }
    let lost = Instant::now();
    set_data(&env, &name, &[("k", "v2")]).await;
    let unready = until(
        "/readyz to answer 503 naming the failing Secret watch",
        Duration::from_secs(90),
        || async {
            match daemon.readyz().await {
                Some((503, body)) if names_a_failing_watch(&body, &["sources", "replicas"]) => {
                    Ok(body)
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    eprintln!(
        "/readyz unready {:?} after the watches were reopened without the permission: {unready:?}",
        lost.elapsed()
    );
    assert!(
        daemon.logs().to_lowercase().contains("forbidden"),
        "the log does not say the watch was forbidden:\n{}",
        tail(&daemon.logs())
    );

    secrets_watch(&env.client, &release, true).await;
    let back = await_ready_again(&daemon, Instant::now(), AFTER_FAULT).await;
    eprintln!("/readyz 200 again {back:?} after the permission came back");
    await_everywhere(
        &env,
        &daemon,
        &everywhere,
        &name,
        &[("k", "v2")],
        AFTER_FAULT,
    )
    .await;
    // And the Secret watches work again: a new change and a deleted copy
    // propagate (no resync is due for minutes).
    set_data(&env, &name, &[("k", "v3")]).await;
    await_everywhere(&env, &daemon, &everywhere, &name, &[("k", "v3")], NORMAL).await;
    deleted_copy_heals(&env, &daemon, &env.targets[0], &name).await;
    stop(&mut daemon);
    let _ = std::fs::remove_file(kubeconfig);
    env.teardown().await;
}
