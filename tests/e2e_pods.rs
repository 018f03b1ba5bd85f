//! Issue 18: the chart's Pods on a real node. The image is packed by image/build-image.py
//! from the binary this test run built, imported into the node's containerd as
//! `push-to-k8s:0.1.0` (the chart's default), and the chart is installed with `helm`.
//!
//! The node (`cp.sh node-up`: kubelet, containerd, kube-scheduler, the Pod controllers)
//! joins a control plane of its own, in `${TMPDIR:-/tmp}/push-to-k8s-cp-node-<uid>`, so
//! its Deployment controllers never act on other tests' objects. Root is required; a node
//! that cannot start fails the test (never a skip). tests/run.sh takes it down again
//! (`cp.sh node-down`, then `down`) and checks the host's network settings afterwards.
//!
//! Not a default test target (Cargo.toml: `test = false`): `cargo test --test e2e_pods`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/push-to-k8s");
const IMAGE: &str = "push-to-k8s:0.1.0";
const NEXT_IMAGE: &str = "push-to-k8s:0.1.1-next";
/// The chart's defaults (src/operate/config.rs): Lease duration and debounce.
const LEASE_DURATION: u64 = 15;
const DEBOUNCE: u64 = 5;
const WAIT: Duration = Duration::from_secs(120);

pub fn node_dir() -> PathBuf {
    let tmp = std::env::var("TMPDIR")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "/tmp".into());
    PathBuf::from(tmp).join(format!(
        "push-to-k8s-cp-node-{}",
        String::from_utf8_lossy(&Command::new("id").arg("-u").output().unwrap().stdout).trim()
    ))
}

struct Node {
    cp: ControlPlane,
}

fn node() -> &'static Node {
    static NODE: OnceLock<Node> = OnceLock::new();
    NODE.get_or_init(|| {
        let dir = node_dir();
        let cp = ControlPlane::at(Some(dir.clone())).unwrap_or_else(|e| panic!("{e:#}"));
        run(cp.command(&["up"]));
        run(cp.command(&["node-up"]));
        // The image of the binary under test, reproducibly packed, loaded into containerd.
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("pod-image");
        let mut build = Command::new("python3");
        build
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/image/build-image.py"))
            .args([
                "--binary",
                env!("CARGO_BIN_EXE_push-to-k8s"),
                "--name",
                IMAGE,
                "--out",
            ])
            .arg(&out);
        run(build);
        import(&dir, &out.join("push-to-k8s.oci.tar"));
        // The same image under the tag `helm upgrade` moves to (test 4).
        let mut tag = ctr(&dir);
        tag.args([
            "images",
            "tag",
            "--force",
            &format!("docker.io/library/{IMAGE}"),
            &format!("docker.io/library/{NEXT_IMAGE}"),
        ]);
        run(tag);
        Node { cp }
    })
}

fn ctr(dir: &std::path::Path) -> Command {
    let mut c = Command::new("ctr");
    c.arg("--address")
        .arg(dir.join("node/containerd.sock"))
        .args(["-n", "k8s.io"]);
    c
}

fn import(dir: &std::path::Path, archive: &std::path::Path) {
    let mut c = ctr(dir);
    c.args(["images", "import"]).arg(archive);
    run(c);
}

fn kubectl(args: &[&str]) -> String {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig").arg(&node().cp.kubeconfig).args(args);
    run(c)
}

fn helm(args: &[&str]) -> String {
    let mut c = node().cp.command(&["helm"]);
    c.arg("--kubeconfig").arg(&node().cp.kubeconfig).args(args);
    run(c)
}

async fn client() -> kube::Client {
    node()
        .cp
        .client()
        .await
        .expect("client for the node's control plane")
}

/// A namespace enforcing the restricted Pod Security profile, for a release.
async fn release_namespace(c: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest"}}
    }))
    .unwrap();
    Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create release namespace");
}

async fn plain_namespace(c: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
}

async fn delete_namespace(c: &kube::Client, name: &str) {
    let _ = Api::<Namespace>::all(c.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// The release's Pods that are Ready (and not being deleted).
async fn ready_pods(c: &kube::Client, ns: &str, release: &str) -> Vec<Pod> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={release}"));
    let pods = Api::<Pod>::namespaced(c.clone(), ns)
        .list(&lp)
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    pods.into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

async fn await_ready_pods(c: &kube::Client, ns: &str, release: &str, n: usize) -> Vec<Pod> {
    until(&format!("{n} Ready Pods of {release}"), WAIT, || async {
        let pods = ready_pods(c, ns, release).await;
        if pods.len() == n {
            Ok(pods)
        } else {
            Err(format!("{} Ready", pods.len()))
        }
    })
    .await
}

fn pod_name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap()
}

fn pod_ip(p: &Pod) -> String {
    p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap()
}

/// `GET path` on the Pod's metrics port (the node's bridge reaches Pod addresses).
async fn pod_get(p: &Pod, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect((pod_ip(p).as_str(), 9090)),
    )
    .await
    .ok()?
    .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut buf))
        .await
        .ok()?
        .ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf.split_once("\r\n\r\n")?.1.to_string()))
}

async fn holder(c: &kube::Client, ns: &str, lease: &str) -> Option<String> {
    Api::<Lease>::namespaced(c.clone(), ns)
        .get_opt(lease)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// The value of `push_to_k8s_leader` the Pod reports.
async fn leader_gauge(p: &Pod) -> Option<f64> {
    let (_, body) = pod_get(p, "/metrics").await?;
    Some(sum_metric(&body, "push_to_k8s_leader", &[]))
}

/// The containerd container id of the Pod's (only) container.
fn container_id(p: &Pod) -> String {
    let id = p
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .and_then(|c| c.container_id.clone())
        .expect("container id");
    id.trim_start_matches("containerd://").to_string()
}

/// The host pid of the Pod's container process.
fn container_pid(p: &Pod) -> u32 {
    let mut c = ctr(&node_dir());
    c.args(["tasks", "ls"]);
    let out = run(c);
    let id = container_id(p);
    out.lines()
        .find(|l| l.starts_with(&id))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no task for container {id} in:\n{out}"))
}

fn labelled_secret(name: &str, value: &str) -> Secret {
    source_secret(name, &[("value", value)])
}

fn labelled_config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {SOURCE_SELECTOR_KEY: "source"}},
        "data": {"value": value}
    }))
    .unwrap()
}

async fn secret_value(c: &kube::Client, ns: &str, name: &str) -> Option<String> {
    let s = Api::<Secret>::namespaced(c.clone(), ns)
        .get_opt(name)
        .await
        .ok()??;
    let v = s.data?.get("value")?.0.clone();
    String::from_utf8(v).ok()
}

async fn set_source(c: &kube::Client, ns: &str, name: &str, value: &str) {
    Api::<Secret>::namespaced(c.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"value": value}})),
        )
        .await
        .expect("change source");
}

/// Audit events (kube-apiserver's audit log of the node's control plane) of successful
/// writes to Secrets, ConfigMaps or Leases whose user agent names `pod`, received at or
/// after `since` (RFC 3339 micro time, compared as text).
fn writes_by(pod: &str, since: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(node_dir().join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            e["userAgent"]
                .as_str()
                .is_some_and(|ua| ua.contains(&format!("({pod})")))
        })
        .filter(|e| {
            e["responseStatus"]["code"]
                .as_i64()
                .is_some_and(|c| c < 300)
        })
        .filter(|e| {
            e["requestReceivedTimestamp"]
                .as_str()
                .is_some_and(|t| t >= since)
        })
        .collect()
}

fn now_micro() -> String {
    // The audit log's format: 2026-12-07T04:18:55.123456Z.
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A release of the chart with default values in a fresh restricted namespace, its two
/// Pods Ready; removed (helm uninstall, namespaces deleted) by `finish`.
struct Release {
    c: kube::Client,
    ns: String,
    name: String,
    targets: Vec<String>,
    /// Removed by `finish` (else `Drop` removes it: a failed test leaves no controller
    /// running that would copy into the next tests' namespaces).
    done: bool,
}

impl Drop for Release {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut h = node().cp.command(&["helm"]);
        h.arg("--kubeconfig").arg(&node().cp.kubeconfig).args([
            "uninstall",
            &self.name,
            "-n",
            &self.ns,
            "--wait",
        ]);
        let _ = h.output();
        let mut k = Command::new("kubectl");
        k.arg("--kubeconfig").arg(&node().cp.kubeconfig).args([
            "delete",
            "namespace",
            "--wait=false",
            &self.ns,
        ]);
        k.args(&self.targets);
        let _ = k.output();
    }
}

impl Release {
    async fn install(prefix: &str, targets: usize, extra: &[&str]) -> Release {
        let c = client().await;
        let id = unique(prefix);
        let ns = format!("{id}-rel");
        release_namespace(&c, &ns).await;
        let mut t = Vec::new();
        for i in 0..targets {
            let name = format!("{id}-t{i}");
            plain_namespace(&c, &name).await;
            t.push(name);
        }
        // Its own release name: the chart's ClusterRole is named after the release.
        let name = format!("{id}-p2k");
        let mut args = vec!["install", &name, CHART, "-n", &ns];
        args.extend_from_slice(extra);
        helm(&args);
        await_ready_pods(&c, &ns, &name, 2).await;
        Release {
            c,
            ns,
            name,
            targets: t,
            done: false,
        }
    }

    async fn leader(&self) -> (Pod, Pod) {
        until(
            "a Lease held by one of the two Ready Pods",
            WAIT,
            || async {
                let pods = ready_pods(&self.c, &self.ns, &self.name).await;
                let h = holder(&self.c, &self.ns, &self.name).await;
                match (pods.len(), h) {
                    (2, Some(h)) => {
                        let (l, s): (Vec<Pod>, Vec<Pod>) =
                            pods.into_iter().partition(|p| pod_name(p) == h);
                        if l.len() == 1 {
                            Ok((l[0].clone(), s[0].clone()))
                        } else {
                            Err(format!("holder {h} is not a Ready Pod"))
                        }
                    }
                    (n, h) => Err(format!("{n} Ready Pods, holder {h:?}")),
                }
            },
        )
        .await
    }

    async fn finish(mut self) {
        helm(&["uninstall", &self.name, "-n", &self.ns, "--wait"]);
        delete_namespace(&self.c, &self.ns).await;
        for t in &self.targets {
            delete_namespace(&self.c, t).await;
        }
        self.done = true;
    }
}

/// One test at a time on the one node (a file lock: across threads and processes).
fn one_at_a_time() -> std::fs::File {
    let mut path = node_dir().into_os_string();
    path.push(".tests.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open the node tests' lock file");
    f.lock().expect("lock the node tests' lock file");
    f
}

/// 1. `helm install` with default values: two Ready replicas, exactly one leader (its
///    `/readyz`, its `push_to_k8s_leader`, the Lease), copies made, restricted Pod Security
///    admits the Pods, the process runs as 65532 on a read-only root filesystem.
#[tokio::test]
async fn helm_install_runs_two_pods_one_leader_that_copies() {
    let _one = one_at_a_time();
    let r = Release::install("install", 1, &[]).await;
    let (leader, standby) = r.leader().await;
    until(
        "/readyz and push_to_k8s_leader agree with the Lease",
        WAIT,
        || async {
            let lr = pod_get(&leader, "/readyz").await;
            let sr = pod_get(&standby, "/readyz").await;
            let (lg, sg) = (leader_gauge(&leader).await, leader_gauge(&standby).await);
            match (&lr, &sr, lg, sg) {
                (Some((200, lb)), Some((200, sb)), Some(1.0), Some(0.0))
                    if lb.contains("leader") && sb.contains("standby") =>
                {
                    Ok(())
                }
                _ => Err(format!("leader {lr:?} {lg:?}, standby {sr:?} {sg:?}")),
            }
        },
    )
    .await;

    let secret = unique("s");
    let cm = unique("c");
    Api::<Secret>::namespaced(r.c.clone(), &r.ns)
        .create(&PostParams::default(), &labelled_secret(&secret, "one"))
        .await
        .unwrap();
    Api::<ConfigMap>::namespaced(r.c.clone(), &r.ns)
        .create(&PostParams::default(), &labelled_config_map(&cm, "two"))
        .await
        .unwrap();
    let t = r.targets[0].clone();
    eventually("the Secret and the ConfigMap copied", WAIT, || async {
        let s = secret_value(&r.c, &t, &secret).await?;
        let m = Api::<ConfigMap>::namespaced(r.c.clone(), &t)
            .get_opt(&cm)
            .await
            .ok()??;
        (s == "one" && m.data?.get("value")? == "two").then_some(())
    })
    .await;
    // Only the leader wrote them (audit log, user agent carries the Pod name).
    let all = writes_by(&pod_name(&leader), "");
    assert!(
        all.iter()
            .any(|e| e["objectRef"]["name"] == secret.as_str()),
        "no audited write of the copy by the leader {}",
        pod_name(&leader)
    );
    let by_standby: Vec<_> = writes_by(&pod_name(&standby), "")
        .into_iter()
        .filter(|e| e["objectRef"]["resource"] != "leases")
        .collect();
    assert!(by_standby.is_empty(), "the standby wrote: {by_standby:?}");

    // Non-root, read-only root filesystem: the running process, not only the spec.
    for p in [&leader, &standby] {
        let pid = container_pid(p);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(
            uid.split_whitespace().skip(1).all(|u| u == "65532"),
            "{}: {uid}",
            pod_name(p)
        );
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let root = mounts
            .lines()
            .find(|l| l.split_whitespace().nth(4) == Some("/"))
            .unwrap();
        let opts = root.split_whitespace().nth(5).unwrap();
        assert!(
            opts.split(',').any(|o| o == "ro"),
            "root mount of {}: {root}",
            pod_name(p)
        );
        // Nothing leaves the machine: no name server, no default route in the Pod (its
        // network namespace's table), and the host does not forward.
        let resolv = std::fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf"))
            .unwrap_or_default();
        // (The kubelet with no cluster DNS writes `nameserver 127.0.0.1`: the Pod's own
        // loopback, where nothing answers; a query never reaches the host's resolver.)
        let servers: Vec<&str> = resolv
            .lines()
            .filter_map(|l| l.strip_prefix("nameserver"))
            .map(str::trim)
            .filter(|a| !a.starts_with("127."))
            .collect();
        assert!(
            servers.is_empty(),
            "{}: name servers {servers:?}",
            pod_name(p)
        );
        let routes = std::fs::read_to_string(format!("/proc/{pid}/net/route")).unwrap();
        let default: Vec<_> = routes
            .lines()
            .skip(1)
            .filter(|l| l.split_whitespace().nth(1) == Some("00000000"))
            .collect();
        assert!(
            default.is_empty(),
            "{}: a default route {default:?}",
            pod_name(p)
        );
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "0"
    );
    r.finish().await;
}

/// 3. The leader's Pod deleted: another Pod holds the Lease within debounce + 5 s and
///    converges a change.
#[tokio::test]
async fn leader_pod_deleted_another_pod_takes_over() {
    let _one = one_at_a_time();
    let r = Release::install("delete", 1, &[]).await;
    let name = unique("s");
    Api::<Secret>::namespaced(r.c.clone(), &r.ns)
        .create(&PostParams::default(), &labelled_secret(&name, "v1"))
        .await
        .unwrap();
    let t = r.targets[0].clone();
    eventually("first copy", WAIT, || async {
        (secret_value(&r.c, &t, &name).await? == "v1").then_some(())
    })
    .await;
    let (leader, standby) = r.leader().await;
    let start = Instant::now();
    Api::<Pod>::namespaced(r.c.clone(), &r.ns)
        .delete(&pod_name(&leader), &DeleteParams::default())
        .await
        .unwrap();
    set_source(&r.c, &r.ns, &name, "v2").await;
    // The deleted leader releases the Lease on SIGTERM; the standby or the Pod that replaces
    // the deleted one (it may start in time to win the race) takes it.
    let gone = pod_name(&leader);
    let (took, new) = until("another Pod holds the Lease", WAIT, || async {
        match holder(&r.c, &r.ns, &r.name).await {
            Some(h) if h != gone => Ok((start.elapsed(), h)),
            h => Err(format!("holder {h:?}")),
        }
    })
    .await;
    eprintln!("new holder {new} (the standby was {})", pod_name(&standby));
    eprintln!("takeover after the leader's Pod was deleted: {took:?}");
    assert!(
        took <= Duration::from_secs(DEBOUNCE + 5),
        "takeover took {took:?}, more than debounce + 5 s"
    );
    eventually("the change made meanwhile converged", WAIT, || async {
        (secret_value(&r.c, &t, &name).await? == "v2").then_some(())
    })
    .await;
    r.finish().await;
}

/// 2. The leader frozen (cgroup freezer through `ctr tasks pause`): the standby takes the
///    Lease and converges a change made meanwhile within lease duration + debounce + 5 s;
///    thawed, the old leader stands by and writes nothing (audit log).
#[tokio::test]
async fn frozen_leader_is_replaced_and_writes_nothing_once_thawed() {
    let _one = one_at_a_time();
    let r = Release::install("freeze", 1, &[]).await;
    let name = unique("s");
    Api::<Secret>::namespaced(r.c.clone(), &r.ns)
        .create(&PostParams::default(), &labelled_secret(&name, "v1"))
        .await
        .unwrap();
    let t = r.targets[0].clone();
    eventually("first copy", WAIT, || async {
        (secret_value(&r.c, &t, &name).await? == "v1").then_some(())
    })
    .await;
    let (leader, standby) = r.leader().await;
    let id = container_id(&leader);
    let mut pause = ctr(&node_dir());
    pause.args(["tasks", "pause", &id]);
    run(pause);
    let start = Instant::now();
    set_source(&r.c, &r.ns, &name, "v2").await;
    let took = until("the standby converged the change", WAIT, || async {
        let h = holder(&r.c, &r.ns, &r.name).await;
        let v = secret_value(&r.c, &t, &name).await;
        if h.as_deref() == Some(&pod_name(&standby)) && v.as_deref() == Some("v2") {
            Ok(start.elapsed())
        } else {
            Err(format!("holder {h:?}, copy {v:?}"))
        }
    })
    .await;
    eprintln!("frozen leader: the standby converged after {took:?}");
    assert!(
        took <= Duration::from_secs(LEASE_DURATION + DEBOUNCE + 5),
        "took {took:?}, more than lease duration + debounce + 5 s"
    );
    let thawed = now_micro();
    let mut resume = ctr(&node_dir());
    resume.args(["tasks", "resume", &id]);
    run(resume);
    until("the thawed Pod says standby", WAIT, || async {
        match (
            pod_get(&leader, "/readyz").await,
            leader_gauge(&leader).await,
        ) {
            (Some((_, b)), Some(0.0)) if b.contains("standby") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A change after the thaw: the new leader writes it, the old one nothing.
    set_source(&r.c, &r.ns, &name, "v3").await;
    eventually("the change after the thaw converged", WAIT, || async {
        (secret_value(&r.c, &t, &name).await? == "v3").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(DEBOUNCE + 2)).await;
    let stale = writes_by(&pod_name(&leader), &thawed);
    assert!(
        stale.is_empty(),
        "the thawed old leader wrote: {:?}",
        stale
            .iter()
            .map(|e| (e["verb"].clone(), e["objectRef"].clone()))
            .collect::<Vec<_>>()
    );
    assert!(
        !writes_by(&pod_name(&standby), &thawed).is_empty(),
        "no audited write by the new leader: the witness sees nothing"
    );
    r.finish().await;
}

/// 5. `kubectl apply -f deploy.yaml` (as shipped: namespace `push-to-k8s`, two replicas)
///    runs and copies a source.
#[tokio::test]
async fn deploy_yaml_runs_and_copies() {
    let _one = one_at_a_time();
    let c = client().await;
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy.yaml");
    kubectl(&["apply", "-f", manifest]);
    let ns = "push-to-k8s";
    let pods = await_ready_pods(&c, ns, "push-to-k8s", 2).await;
    let target = unique("deploy-t");
    plain_namespace(&c, &target).await;
    let name = unique("s");
    Api::<Secret>::namespaced(c.clone(), ns)
        .create(&PostParams::default(), &labelled_secret(&name, "shipped"))
        .await
        .unwrap();
    eventually(
        "deploy.yaml's controller copied the source",
        WAIT,
        || async { (secret_value(&c, &target, &name).await? == "shipped").then_some(()) },
    )
    .await;
    let h = holder(&c, ns, "push-to-k8s").await.expect("a Lease holder");
    assert!(
        pods.iter().any(|p| pod_name(p) == h),
        "holder {h} is not one of the Pods"
    );
    kubectl(&["delete", "-f", manifest, "--wait=true"]);
    delete_namespace(&c, &target).await;
}

/// 7. `helm uninstall`: the copies stay (README "Uninstalling"); of the release nothing is
///    left but the Lease and the Events the docs name.
#[tokio::test]
async fn helm_uninstall_leaves_the_copies_and_only_what_the_docs_say() {
    let _one = one_at_a_time();
    let r = Release::install("uninstall", 1, &[]).await;
    let name = unique("s");
    Api::<Secret>::namespaced(r.c.clone(), &r.ns)
        .create(&PostParams::default(), &labelled_secret(&name, "kept"))
        .await
        .unwrap();
    let t = r.targets[0].clone();
    eventually("the copy", WAIT, || async {
        (secret_value(&r.c, &t, &name).await? == "kept").then_some(())
    })
    .await;
    helm(&["uninstall", &r.name, "-n", &r.ns, "--wait"]);
    let mut r = r;
    r.done = true;
    until("the release's Pods gone", WAIT, || async {
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={}", r.name));
        let n = Api::<Pod>::namespaced(r.c.clone(), &r.ns)
            .list(&lp)
            .await
            .map(|l| l.items.len());
        if matches!(n, Ok(0)) {
            Ok(())
        } else {
            Err(format!("{n:?} Pods"))
        }
    })
    .await;
    assert_eq!(
        secret_value(&r.c, &t, &name).await.as_deref(),
        Some("kept"),
        "the copy went with the release"
    );
    // What is left in the release namespace, by kind (the source is the user's).
    let left = kubectl(&[
        "get",
        "deployments,replicasets,pods,services,serviceaccounts,roles,rolebindings,poddisruptionbudgets,leases,configmaps,secrets",
        // Not copies other releases made here.
        "-l",
        "!push-to-k8s.io/managed-by",
        "-n",
        &r.ns,
        "-o",
        "name",
    ]);
    let unexpected: Vec<&str> = left
        .lines()
        .filter(|l| {
            !matches!(
                *l,
                "serviceaccount/default" | "configmap/kube-root-ca.crt"
            ) && *l != format!("lease.coordination.k8s.io/{}", r.name)
                // The user's source.
                && *l != format!("secret/{name}")
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "left behind in {}: {unexpected:?}",
        r.ns
    );
    let cluster = kubectl(&["get", "clusterroles,clusterrolebindings", "-o", "name"]);
    let ours: Vec<&str> = cluster
        .lines()
        .filter(|l| l.contains(&r.ns) || l.ends_with(&format!("/{}", r.name)))
        .collect();
    assert!(ours.is_empty(), "cluster-wide objects left: {ours:?}");
    delete_namespace(&r.c, &r.ns).await;
    delete_namespace(&r.c, &t).await;
}

/// Successful writes (audit log) of the release's Pods: (received at, pod, resource, name).
fn release_writes(release: &str) -> Vec<(String, String, String, String)> {
    let text = std::fs::read_to_string(node_dir().join("audit.log")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            e["responseStatus"]["code"]
                .as_i64()
                .is_some_and(|c| c < 300)
        })
        .filter_map(|e| {
            let ua = e["userAgent"].as_str()?;
            let pod = ua.split_once(" (")?.1.strip_suffix(')')?;
            pod.starts_with(release).then(|| {
                (
                    e["requestReceivedTimestamp"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    pod.to_string(),
                    e["objectRef"]["resource"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                    e["objectRef"]["name"].as_str().unwrap_or("").to_string(),
                )
            })
        })
        .collect()
}

/// 4. `helm upgrade` to a new image tag while a source changes every second: every copy
///    ends with the last value, no copy was missing at any poll, and no Pod wrote while
///    another held the Lease (audit log: a Pod's write must follow its own Lease write,
///    with no other Pod's Lease write in between).
#[tokio::test]
async fn helm_upgrade_rolls_out_with_no_missed_update_and_one_writer() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let _one = one_at_a_time();
    let r = Release::install("upgrade", 3, &[]).await;
    let name = unique("s");
    Api::<Secret>::namespaced(r.c.clone(), &r.ns)
        .create(&PostParams::default(), &labelled_secret(&name, "0"))
        .await
        .unwrap();
    for t in &r.targets {
        eventually("first copies", WAIT, || async {
            (secret_value(&r.c, t, &name).await? == "0").then_some(())
        })
        .await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let last = Arc::new(AtomicU64::new(0));
    let writer = {
        let (c, ns, name, stop, last) = (
            r.c.clone(),
            r.ns.clone(),
            name.clone(),
            stop.clone(),
            last.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.load(Ordering::SeqCst) {
                tick.tick().await;
                i += 1;
                set_source(&c, &ns, &name, &i.to_string()).await;
                last.store(i, Ordering::SeqCst);
            }
        })
    };
    let poller = {
        let (c, targets, name, stop) = (r.c.clone(), r.targets.clone(), name.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut polls, mut missing) = (0u64, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                for t in &targets {
                    match Api::<Secret>::namespaced(c.clone(), t).get_opt(&name).await {
                        Ok(Some(_)) => {}
                        Ok(None) => missing.push(t.clone()),
                        Err(_) => {}
                    }
                }
                polls += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            (polls, missing)
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    helm(&[
        "upgrade",
        &r.name,
        CHART,
        "-n",
        &r.ns,
        "--set",
        "image.tag=0.1.1-next",
    ]);
    kubectl(&[
        "rollout",
        "status",
        &format!("deployment/{}", r.name),
        "-n",
        &r.ns,
        "--timeout=300s",
    ]);
    until("two Ready Pods of the new image", WAIT, || async {
        let pods = ready_pods(&r.c, &r.ns, &r.name).await;
        let new = pods
            .iter()
            .filter(|p| {
                p.spec
                    .as_ref()
                    .is_some_and(|s| s.containers[0].image.as_deref() == Some(NEXT_IMAGE))
            })
            .count();
        if new == 2 && pods.len() == 2 {
            Ok(())
        } else {
            Err(format!("{new} new of {} Ready", pods.len()))
        }
    })
    .await;
    let rollout = started.elapsed();
    r.leader().await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    let (polls, missing) = poller.await.unwrap();
    let want = last.load(Ordering::SeqCst).to_string();
    for t in &r.targets {
        eventually(
            &format!("{t} holds the last value {want}"),
            WAIT,
            || async { (secret_value(&r.c, t, &name).await? == want).then_some(()) },
        )
        .await;
    }
    eprintln!(
        "rollout took {rollout:?}; {polls} polls of {} copies; last value {want}",
        r.targets.len()
    );
    assert!(missing.is_empty(), "copies missing at a poll: {missing:?}");
    assert!(polls > 10, "too few polls ({polls}) to say anything");

    // One writer at a time, from the audit log.
    let writes = release_writes(&r.name);
    let mut holder: Option<String> = None;
    let mut bad = Vec::new();
    let mut pods = std::collections::BTreeSet::new();
    for (at, pod, resource, object) in &writes {
        pods.insert(pod.clone());
        if resource == "leases" {
            holder = Some(pod.clone());
        } else if holder.as_deref() != Some(pod) {
            bad.push(format!(
                "{at} {pod} wrote {resource}/{object} while the last Lease write was {holder:?}'s"
            ));
        }
    }
    assert!(
        pods.len() >= 2,
        "the audit log saw writes of only {pods:?}: the Lease never moved"
    );
    assert!(bad.is_empty(), "writes outside the Lease: {bad:#?}");
    r.finish().await;
}

/// 6. Under its memory limit with 5,000 copies (50 sources x 100 namespaces): no restart,
///    the RSS reported.
#[tokio::test]
async fn five_thousand_copies_within_the_memory_limit() {
    let _one = one_at_a_time();
    let r = Release::install("memory", 100, &["--set", "env.SECRET_SYNC_RATE_LIMIT=100"]).await;
    let api = Api::<Secret>::namespaced(r.c.clone(), &r.ns);
    let value = "x".repeat(512);
    for i in 0..50 {
        api.create(
            &PostParams::default(),
            &labelled_secret(&format!("mem-{i}"), &value),
        )
        .await
        .unwrap();
    }
    let copies = until("5,000 copies", Duration::from_secs(600), || async {
        let lp = ListParams::default().labels(MANAGED_SELECTOR);
        let n = Api::<Secret>::all(r.c.clone())
            .list_metadata(&lp)
            .await
            .map(|l| {
                l.items
                    .iter()
                    .filter(|s| {
                        s.metadata
                            .namespace
                            .as_deref()
                            .is_some_and(|ns| r.targets.iter().any(|t| t == ns))
                    })
                    .count()
            })
            .unwrap_or(0);
        if n >= 5000 {
            Ok(n)
        } else {
            Err(format!("{n} copies"))
        }
    })
    .await;
    let pods = ready_pods(&r.c, &r.ns, &r.name).await;
    assert_eq!(pods.len(), 2);
    for p in &pods {
        let restarts: i32 = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .map(|cs| cs.iter().map(|c| c.restart_count).sum())
            .unwrap_or(0);
        assert_eq!(restarts, 0, "{} restarted", pod_name(p));
        let pid = container_pid(p);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let rss = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap_or("VmRSS: ?");
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .unwrap_or("VmHWM: ?");
        eprintln!(
            "{} with {copies} copies: {rss}, peak {hwm} (limit 256Mi)",
            pod_name(p)
        );
        let kb: u64 = hwm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        assert!(
            kb < 256 * 1024,
            "{}: peak RSS {kb} kB over the limit",
            pod_name(p)
        );
    }
    r.finish().await;
}

/// Benchmark (docs/benchmarks.md, "Failover in the Pod"): 1,000 target namespaces, one
/// source, `SECRET_SYNC_RATE_LIMIT=100`; the leader frozen, the source changed at once: the
/// time to the new leader's first write of the change and to all 1,000 copies converged.
/// `cargo test --release --test e2e_pods bench_ -- --ignored --nocapture` (as root, node up).
#[tokio::test]
#[ignore = "benchmark: run by hand, numbers in docs/benchmarks.md"]
async fn bench_failover_frozen_leader_1000_namespaces() {
    let _one = one_at_a_time();
    let r = Release::install("bench", 0, &["--set", "env.SECRET_SYNC_RATE_LIMIT=100"]).await;
    let c = r.c.clone();
    let id = unique("bt");
    let mut targets = Vec::new();
    for i in 0..1000 {
        let t = format!("{id}-{i}");
        plain_namespace(&c, &t).await;
        targets.push(t);
    }
    let name = unique("s");
    Api::<Secret>::namespaced(c.clone(), &r.ns)
        .create(&PostParams::default(), &labelled_secret(&name, "before"))
        .await
        .unwrap();
    let count = |want: &'static str| {
        let (c, name, targets) = (c.clone(), name.clone(), targets.clone());
        async move {
            let lp = ListParams::default().fields(&format!("metadata.name={name}"));
            let list = Api::<Secret>::all(c)
                .list(&lp)
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            list.iter()
                .filter(|s| {
                    s.metadata
                        .namespace
                        .as_deref()
                        .is_some_and(|ns| targets.iter().any(|t| t == ns))
                })
                .filter(|s| {
                    s.data
                        .as_ref()
                        .and_then(|d| d.get("value"))
                        .map(|v| v.0.as_slice())
                        == Some(want.as_bytes())
                })
                .count()
        }
    };
    until("1,000 copies", Duration::from_secs(600), || async {
        let n = count("before").await;
        if n == 1000 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    let (leader, _standby) = r.leader().await;
    let id = container_id(&leader);
    let mut pause = ctr(&node_dir());
    pause.args(["tasks", "pause", &id]);
    run(pause);
    let start = Instant::now();
    set_source(&c, &r.ns, &name, "after").await;
    let first = until(
        "the new leader's first write",
        Duration::from_secs(300),
        || async {
            if count("after").await > 0 {
                Ok(start.elapsed())
            } else {
                Err("none".into())
            }
        },
    )
    .await;
    let all = until("1,000 converged", Duration::from_secs(600), || async {
        let n = count("after").await;
        if n == 1000 {
            Ok(start.elapsed())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    eprintln!(
        "BENCH failover (frozen leader, 1,000 namespaces): first write {first:?}, all converged {all:?}"
    );
    let mut resume = ctr(&node_dir());
    resume.args(["tasks", "resume", &id]);
    run(resume);
    for t in &targets {
        delete_namespace(&c, t).await;
    }
    r.finish().await;
}

/// The samples of an instant query, by the series' `pod` label.
async fn samples(
    prom: &common::prometheus::Prometheus,
    promql: &str,
) -> Result<std::collections::BTreeMap<String, f64>, String> {
    let data = prom.query(promql).await?;
    data["result"]
        .as_array()
        .ok_or_else(|| format!("no result in {data}"))?
        .iter()
        .map(|s| {
            let pod = s["metric"]["pod"].as_str().unwrap_or("").to_string();
            let v = s["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("not a value: {s}"))?;
            Ok((pod, v))
        })
        .collect()
}

/// 8. (Issue 20) The real Prometheus on the host scrapes both Pods of a release over the
///    node's bridge (file service discovery: `job` = the release, `namespace`, `pod`), with
///    the chart's rules rendered for that release (`for:` 5 s, windows 1 m): both targets
///    up, `sum(push_to_k8s_leader)` 1 and the leader the Lease holder, both Pods ready, no
///    alert pending or firing; the leader's Pod deleted: its target goes down, and the
///    series of the Pod now holding the Lease (the standby, or the replacement Pod, which
///    is added to the targets once Ready) becomes 1 while the sum stays 1.
#[tokio::test]
async fn prometheus_scrapes_both_pods() {
    use common::prometheus::{
        Prometheus, chart_rule_groups, file_sd_job, rules_file, shortened, write_file_sd,
    };
    let _one = one_at_a_time();
    let r = Release::install("prom", 1, &[]).await;
    let (leader, standby) = r.leader().await;

    let dir = std::env::temp_dir().join(unique("push-to-k8s-pods-prom"));
    std::fs::create_dir_all(&dir).unwrap();
    let groups = shortened(&chart_rule_groups(&r.name, &r.ns, &[]), "5s", "1m");
    let rules = rules_file(&groups, &dir);
    let sd = dir.join("pods.json");
    let target = |p: &Pod| {
        (
            format!("{}:9090", pod_ip(p)),
            vec![("namespace", r.ns.clone()), ("pod", pod_name(p))],
        )
    };
    let mut targets = vec![target(&leader), target(&standby)];
    write_file_sd(&sd, &targets);
    let prom =
        Prometheus::start_with(vec![file_sd_job(&r.name, &sd, "1s")], Some(&rules), "1s").await;
    let loaded = prom.api("rules").await.unwrap();
    assert_eq!(
        loaded["groups"][0]["rules"].as_array().map(Vec::len),
        Some(7),
        "{loaded}"
    );
    let sel = format!(r#"job="{}",namespace="{}""#, r.name, r.ns);
    let (l, s) = (pod_name(&leader), pod_name(&standby));

    let started = Instant::now();
    until("both Pods scraped: up 1", WAIT, || async {
        let up = samples(&prom, &format!("up{{{sel}}}")).await?;
        if up.get(&l) == Some(&1.0) && up.get(&s) == Some(&1.0) && up.len() == 2 {
            Ok(())
        } else {
            Err(format!("up {up:?}"))
        }
    })
    .await;
    until(
        "one leader (the Lease holder), both ready, on Prometheus",
        WAIT,
        || async {
            let lead = samples(&prom, &format!("push_to_k8s_leader{{{sel}}}")).await?;
            let sum = samples(&prom, &format!("sum(push_to_k8s_leader{{{sel}}})")).await?;
            let ready = samples(&prom, &format!("push_to_k8s_ready{{{sel}}}")).await?;
            if lead.get(&l) == Some(&1.0)
                && lead.get(&s) == Some(&0.0)
                && sum.values().eq([&1.0])
                && ready.get(&l) == Some(&1.0)
                && ready.get(&s) == Some(&1.0)
            {
                Ok(())
            } else {
                Err(format!("leader {lead:?}, sum {sum:?}, ready {ready:?}"))
            }
        },
    )
    .await;
    eprintln!("Prometheus sees both Pods after {:?}", started.elapsed());
    // No alert of the chart's rules pending or firing while both run. PushToK8sDown is
    // rightly active from Prometheus' start until its first scrapes of the Pods are
    // evaluated: wait for the last evaluation before those to be gone, then 20 s (four
    // times the shortened `for:`, twenty evaluations) with none.
    until(
        "no alert active once both Pods are scraped",
        WAIT,
        || async {
            let alerts = prom.alerts().await?;
            if alerts.is_empty() {
                Ok(())
            } else {
                Err(format!("{alerts:?}"))
            }
        },
    )
    .await;
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(20) {
        let alerts = prom.alerts().await.unwrap();
        assert!(alerts.is_empty(), "alerts while both Pods run: {alerts:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The leader's Pod deleted (as in test 3).
    let start = Instant::now();
    Api::<Pod>::namespaced(r.c.clone(), &r.ns)
        .delete(&l, &DeleteParams::default())
        .await
        .unwrap();
    // Its replacement, once Ready, joins the targets (it may win the Lease).
    let pods = await_ready_pods(&r.c, &r.ns, &r.name, 2).await;
    let replacement = pods
        .iter()
        .find(|p| pod_name(p) != s && pod_name(p) != l)
        .expect("a replacement Pod");
    targets.push(target(replacement));
    write_file_sd(&sd, &targets);
    let new = until(
        "Prometheus sees the Lease holder's leader series 1, the sum 1, the deleted Pod down",
        WAIT,
        || async {
            let h = holder(&r.c, &r.ns, &r.name)
                .await
                .filter(|h| *h != l)
                .ok_or("the Lease not yet moved")?;
            let lead = samples(&prom, &format!("push_to_k8s_leader{{{sel}}}")).await?;
            let sum = samples(&prom, &format!("sum(push_to_k8s_leader{{{sel}}})")).await?;
            let up = samples(&prom, &format!("up{{{sel}}}")).await?;
            if lead.get(&h) == Some(&1.0)
                && sum.values().eq([&1.0])
                && !lead.contains_key(&l)
                && up.get(&l) == Some(&0.0)
            {
                Ok(h)
            } else {
                Err(format!(
                    "holder {h}, leader {lead:?}, sum {sum:?}, up {up:?}"
                ))
            }
        },
    )
    .await;
    eprintln!(
        "Prometheus saw the leadership move to {new} ({}) {:?} after the leader's Pod was deleted",
        if new == s {
            "the standby"
        } else {
            "the replacement"
        },
        start.elapsed()
    );
    drop(prom);
    let _ = std::fs::remove_dir_all(&dir);
    r.finish().await;
}
