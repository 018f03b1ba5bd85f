//! Issue 9: two instances with leader election on a Lease, against the real
//! control plane. The witness that only the leader writes is the API
//! server's audit log (each instance runs under its own ServiceAccount), not
//! the controller's word.
//!
//! Settings: lease duration 6 s, renew deadline 4 s, retry period 1 s,
//! debounce 1 s.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const DURATION: u64 = 6;
const RENEW_DEADLINE: u64 = 4;
const DEBOUNCE: u64 = 1;
const WAIT: Duration = Duration::from_secs(60);

/// Both instances' identity: a ServiceAccount each, with the chart's rules
/// (Secrets, ConfigMaps, namespaces, Events) and the Lease in the source
/// namespace.
fn grant(env: &TestEnv, accounts: &[&str]) -> String {
    let ns = &env.source_ns;
    let role = format!("{}-leader", env.id);
    let subjects: String = accounts
        .iter()
        .map(|sa| format!("  - kind: ServiceAccount\n    name: {sa}\n    namespace: {ns}\n"))
        .collect();
    let accounts_yaml: String = accounts
        .iter()
        .map(|sa| format!("---\napiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: {sa}\n  namespace: {ns}\n"))
        .collect();
    let manifest = format!(
        "{accounts_yaml}---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {role}
rules:
  - apiGroups: [\"\"]
    resources: [\"secrets\", \"configmaps\"]
    verbs: [\"get\", \"list\", \"watch\", \"create\", \"update\", \"patch\", \"delete\"]
  - apiGroups: [\"\"]
    resources: [\"namespaces\"]
    verbs: [\"get\", \"list\", \"watch\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {role}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: {role}
subjects:
{subjects}---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: leader
  namespace: {ns}
rules:
  - apiGroups: [\"coordination.k8s.io\"]
    resources: [\"leases\"]
    verbs: [\"get\", \"create\", \"update\"]
  - apiGroups: [\"events.k8s.io\"]
    resources: [\"events\"]
    verbs: [\"create\", \"patch\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: leader
  namespace: {ns}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: leader
subjects:
{subjects}"
    );
    let path = std::env::temp_dir().join(format!("{}.yaml", unique("leader-rbac")));
    std::fs::write(&path, manifest).unwrap();
    kubectl(&["apply", "-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(path);
    role
}

fn kubectl(args: &[&str]) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig);
    run(cmd)
}

/// Removes the test's cluster-scoped RBAC objects, also when it fails.
struct DeleteRole(String);

impl Drop for DeleteRole {
    fn drop(&mut self) {
        let mut cmd = Command::new("kubectl");
        cmd.args([
            "delete",
            "clusterrole,clusterrolebinding",
            &self.0,
            "--ignore-not-found",
        ])
        .env("KUBECONFIG", &control_plane().kubeconfig);
        let _ = cmd.output();
    }
}

/// An instance as ServiceAccount `sa`, electing on this test's Lease.
fn instance(env: &TestEnv, sa: &str, server: Option<&str>) -> Daemon {
    let kubeconfig = service_account_kubeconfig_via(&env.source_ns, sa, server);
    Daemon::start(
        &env.source_ns,
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("POD_NAME", sa),
            ("LEADER_ELECTION", "true"),
            ("LEASE_NAMESPACE", &env.source_ns),
            ("LEASE_DURATION_SECONDS", "6"),
            ("LEASE_RENEW_DEADLINE_SECONDS", "4"),
            ("LEASE_RETRY_PERIOD_SECONDS", "1"),
        ],
    )
}

/// Wait until `/readyz` is 200 and says `role`.
async fn await_role(daemon: &Daemon, role: &str, timeout: Duration) {
    eventually(&format!("/readyz says {role}"), timeout, || async {
        match daemon.readyz().await {
            Some((200, body)) if body.contains(role) => Some(()),
            _ => None,
        }
    })
    .await;
}

/// Writes (create/update/patch/delete) to Secrets in `namespaces` recorded in
/// the audit log after byte `from`, as `(user, verb, namespace)`.
fn audited_writes(from: u64, namespaces: &[String]) -> Vec<(String, String, String)> {
    let text = std::fs::read(audit_log()).expect("the audit log");
    let text = String::from_utf8_lossy(&text[from as usize..]).to_string();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter(|e| e["objectRef"]["resource"] == "secrets")
        .filter_map(|e| {
            let ns = e["objectRef"]["namespace"].as_str()?.to_string();
            namespaces.contains(&ns).then(|| {
                (
                    e["user"]["username"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    e["verb"].as_str().unwrap_or_default().to_string(),
                    ns,
                )
            })
        })
        .collect()
}

fn audit_offset() -> u64 {
    std::fs::metadata(audit_log()).map(|m| m.len()).unwrap_or(0)
}

fn user(env: &TestEnv, sa: &str) -> String {
    format!("system:serviceaccount:{}:{sa}", env.source_ns)
}

async fn change(env: &TestEnv, name: &str, value: &str) {
    env.sources()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"k": value}})),
        )
        .await
        .expect("patch the source");
}

/// 1. Only the leader writes (the audit log says so), and the standby's
/// `/readyz` and metrics say standby.
#[tokio::test]
async fn only_the_leader_writes_and_the_standby_says_so() {
    let _serial = serial();
    assert!(
        audit_log().exists(),
        "the control plane has no audit log: cp.sh down && cp.sh up"
    );
    let env = TestEnv::new("lead-one", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let _role = DeleteRole(grant(&env, &["leader-a", "leader-b"]));
    let name = format!("{}-db", env.id);
    env.create_source(&name, &[("k", "v1")]).await;

    let mut a = instance(&env, "leader-a", None);
    a.await_ready().await;
    await_role(&a, "leader", WAIT).await;
    let mut b = instance(&env, "leader-b", None);
    b.await_ready().await;
    await_role(&b, "standby", WAIT).await;
    assert_eq!(b.metric_sum("push_to_k8s_leader", &[]).await, 0.0);
    assert_eq!(a.metric_sum("push_to_k8s_leader", &[]).await, 1.0);

    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;
    let from = audit_offset();
    change(&env, &name, "v2").await;
    env.await_copies(&env.targets, &name, &[("k", "v2")]).await;
    // Give a late write from the standby every chance to show up.
    tokio::time::sleep(Duration::from_secs(DEBOUNCE + 2)).await;
    let writes = audited_writes(from, &env.targets);
    assert!(
        writes.len() >= env.targets.len(),
        "the audit log shows the update: {writes:?}"
    );
    assert!(
        writes.iter().all(|(u, _, _)| *u == user(&env, "leader-a")),
        "only the leader writes: {writes:?}"
    );
    assert_eq!(
        b.metric_sum("push_to_k8s_writes_total", &[]).await,
        0.0,
        "and the standby counts none"
    );
    a.stop();
    b.stop();
    env.teardown().await;
}

/// 2. The leader killed with SIGKILL: the standby converges a change made
/// meanwhile within lease duration + debounce + 5 s. The leader stopped with
/// SIGTERM: takeover within debounce + 5 s. No conflicts left behind.
#[tokio::test]
async fn the_standby_takes_over_when_the_leader_dies_or_stops() {
    let _serial = serial();
    let env = TestEnv::new("lead-two", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let _role = DeleteRole(grant(&env, &["leader-a", "leader-b"]));
    let name = format!("{}-db", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let mut a = instance(&env, "leader-a", None);
    a.await_ready().await;
    await_role(&a, "leader", WAIT).await;
    let mut b = instance(&env, "leader-b", None);
    b.await_ready().await;
    await_role(&b, "standby", WAIT).await;
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;

    // SIGKILL: the Lease is not released; the standby waits it out.
    a.kill();
    let t0 = Instant::now();
    change(&env, &name, "v2").await;
    env.await_copies(&env.targets, &name, &[("k", "v2")]).await;
    let took = t0.elapsed();
    let bound = Duration::from_secs(DURATION + DEBOUNCE + 5);
    assert!(
        took <= bound,
        "after SIGKILL: converged in {took:?}, bound {bound:?}"
    );
    await_role(&b, "leader", WAIT).await;

    // SIGTERM: the leader releases the Lease; the standby takes it at once.
    let mut a = instance(&env, "leader-a", None);
    a.await_ready().await;
    await_role(&a, "standby", WAIT).await;
    let status = b.stop();
    assert!(status.success(), "{status}");
    let t1 = Instant::now();
    change(&env, &name, "v3").await;
    env.await_copies(&env.targets, &name, &[("k", "v3")]).await;
    let took = t1.elapsed();
    let bound = Duration::from_secs(DEBOUNCE + 5);
    assert!(
        took <= bound,
        "after SIGTERM: converged in {took:?}, bound {bound:?}"
    );
    await_role(&a, "leader", WAIT).await;
    assert_eq!(a.metric_sum("push_to_k8s_conflicts_total", &[]).await, 0.0);
    assert_eq!(
        a.metric_sum("push_to_k8s_writes_total", &["result=\"error\""])
            .await,
        0.0,
        "no write conflicts left behind"
    );
    a.stop();
    env.teardown().await;
}

/// A TCP proxy in front of the API server for one instance: `cut` drops
/// every connection and refuses new ones until `restore`.
struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                c.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                }));
            }
        });
        Proxy {
            port,
            open,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// 3. A leader that loses the API server long enough to miss its renewal
/// stops writing: it stands down before its Lease can expire elsewhere, and
/// when it is back it writes nothing (the audit log).
#[tokio::test]
async fn a_leader_that_cannot_renew_stops_writing() {
    let _serial = serial();
    let env = TestEnv::new("lead-cut", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let _role = DeleteRole(grant(&env, &["leader-a", "leader-b"]));
    let name = format!("{}-db", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let apiserver: u16 = std::fs::read_to_string(
        control_plane()
            .kubeconfig
            .parent()
            .unwrap()
            .join("apiserver.port"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let proxy = Proxy::start(apiserver).await;
    let via = format!("https://127.0.0.1:{}", proxy.port);
    let mut a = instance(&env, "leader-a", Some(&via));
    a.await_ready().await;
    await_role(&a, "leader", WAIT).await;
    let mut b = instance(&env, "leader-b", None);
    b.await_ready().await;
    await_role(&b, "standby", WAIT).await;
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;

    // Cut the leader off. It must stand down within its renew deadline (its
    // own endpoints still answer), before the standby may take over.
    proxy.cut();
    let cut = Instant::now();
    eventually("the cut-off leader stands down", WAIT, || async {
        (a.metric_sum("push_to_k8s_leader", &[]).await == 0.0).then_some(())
    })
    .await;
    let stood_down = cut.elapsed();
    assert!(
        stood_down <= Duration::from_secs(RENEW_DEADLINE + 2),
        "stood down {stood_down:?} after the cut (renew deadline {RENEW_DEADLINE} s)"
    );
    await_role(&b, "leader", WAIT).await;
    let took_over = cut.elapsed();
    assert!(
        stood_down < took_over,
        "the old leader stopped ({stood_down:?}) before the new one started ({took_over:?})"
    );

    // From here on, any write by the old leader would be a split brain.
    let from = audit_offset();
    change(&env, &name, "v2").await;
    env.await_copies(&env.targets, &name, &[("k", "v2")]).await;
    proxy.restore();
    await_role(&a, "standby", WAIT).await;
    change(&env, &name, "v3").await;
    env.await_copies(&env.targets, &name, &[("k", "v3")]).await;
    tokio::time::sleep(Duration::from_secs(DEBOUNCE + 2)).await;
    let writes = audited_writes(from, &env.targets);
    assert!(
        !writes.is_empty(),
        "the new leader's writes are in the audit log"
    );
    let stale: Vec<_> = writes
        .iter()
        .filter(|(u, _, _)| *u == user(&env, "leader-a"))
        .collect();
    assert!(
        stale.is_empty(),
        "the old leader wrote after its deadline: {stale:?}"
    );
    a.stop();
    b.stop();
    drop(proxy);
    env.teardown().await;
}
