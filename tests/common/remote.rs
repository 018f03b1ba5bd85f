//! Remote clusters (issue 11): two more instances of the project's control
//! plane (`cp.sh`, each in its own state directory), the shipped remote
//! identity (`deploy/remote-cluster-rbac.yaml`) applied in each, kubeconfigs
//! for it as a registration carries them (everything inline: the controller
//! refuses kubeconfigs that name files or run exec plugins), and the
//! registration Secrets in a test's source namespace.
//!
//! Every test of a binary shares the two remote control planes; each test
//! uses namespaces named after its id there too, and [`RemoteNamespaces`]
//! removes them however the test ends.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};

use super::control_plane::{self, ControlPlane};
use super::{map, run, run_detached};

/// The shipped identity for a remote cluster.
pub const RBAC_MANIFEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/remote-cluster-rbac.yaml"
);
/// Namespace, ServiceAccount, ClusterRole and ClusterRoleBinding of the
/// manifest are all named this.
pub const REMOTE_IDENTITY: &str = "push-to-k8s-remote";
/// A registration Secret carries the cluster's name in this label ...
pub const CLUSTER_LABEL: &str = "push-to-k8s.io/cluster";
/// ... and its kubeconfig under this data key.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// A source chooses clusters with this annotation (names, globs, `*`).
pub const CLUSTERS_ANNOTATION: &str = "push-to-k8s.io/clusters";
/// A copy in a remote cluster names the cluster of its source here.
pub const SOURCE_CLUSTER_ANNOTATION: &str = "push-to-k8s.io/source-cluster";

/// `${TMPDIR:-/tmp}/push-to-k8s-cp-remote-<n>-<uid>`: the state directory of
/// remote control plane `n` (tests/run.sh takes the same ones down).
pub fn remote_dir(n: u8) -> PathBuf {
    let tmp = std::env::var("TMPDIR")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "/tmp".into());
    PathBuf::from(tmp).join(format!(
        "push-to-k8s-cp-remote-{n}-{}",
        control_plane::uid()
    ))
}

static REMOTES: [OnceLock<Remote>; 2] = [OnceLock::new(), OnceLock::new()];

/// One remote control plane, up, with the shipped identity applied.
pub struct Remote {
    pub n: u8,
    pub cp: ControlPlane,
    /// `https://127.0.0.1:PORT` of its kube-apiserver.
    pub server: String,
    /// Its CA certificate (PEM), as the kubeconfig's `certificate-authority`.
    pub ca_pem: Vec<u8>,
}

/// Remote control plane `n` (1 or 2): started (or reused, `cp.sh up` is
/// idempotent) once per test binary, and `deploy/remote-cluster-rbac.yaml`
/// applied there. Panics with `cp.sh`'s or kubectl's output if either
/// fails: the suite never skips.
pub fn remote(n: u8) -> &'static Remote {
    assert!(
        (1..=2).contains(&n),
        "remote control plane {n}: only 1 and 2"
    );
    REMOTES[usize::from(n - 1)].get_or_init(|| {
        let dir = remote_dir(n);
        run(control_plane::command(Some(&dir), &["up"]));
        let cp = ControlPlane::at(Some(dir)).unwrap_or_else(|e| panic!("{e:#}"));
        let admin = kube::config::Kubeconfig::read_from(&cp.kubeconfig)
            .unwrap_or_else(|e| panic!("read {}: {e}", cp.kubeconfig.display()));
        let cluster = admin.clusters[0].cluster.clone().expect("a cluster entry");
        let ca = cluster
            .certificate_authority
            .expect("cp.sh's kubeconfig names its CA file");
        let remote = Remote {
            n,
            server: cluster.server.expect("a server"),
            ca_pem: std::fs::read(&ca).unwrap_or_else(|e| panic!("read {ca}: {e}")),
            cp,
        };
        remote.kubectl(&["apply", "-f", RBAC_MANIFEST]);
        remote
    })
}

/// Standard base64 (as Kubernetes writes `*-data` fields), by way of
/// `ByteString`'s serialisation.
pub fn base64(bytes: &[u8]) -> String {
    let s = serde_json::to_string(&ByteString(bytes.to_vec())).expect("base64");
    s.trim_matches('"').to_string()
}

impl Remote {
    /// A client with its admin kubeconfig.
    pub async fn client(&self) -> kube::Client {
        self.cp
            .client()
            .await
            .unwrap_or_else(|e| panic!("client for remote control plane {}: {e:#}", self.n))
    }

    /// `kubectl ARGS` as its admin; stdout, or a panic with the output.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("kubectl");
        cmd.args(args).env("KUBECONFIG", &self.cp.kubeconfig);
        run(cmd)
    }

    /// A token (TokenRequest, two hours) of ServiceAccount `ns/sa` here.
    pub fn token(&self, ns: &str, sa: &str) -> String {
        self.kubectl(&["create", "token", sa, "-n", ns, "--duration=2h"])
            .trim()
            .to_string()
    }

    /// A token of the shipped remote identity.
    pub fn identity_token(&self) -> String {
        self.token(REMOTE_IDENTITY, REMOTE_IDENTITY)
    }

    /// A kubeconfig for this cluster authenticating with `token`, with
    /// everything inline (`certificate-authority-data`, `token`), as a
    /// registration Secret carries it.
    pub fn kubeconfig_text(&self, token: &str) -> String {
        let name = format!("remote-{}", self.n);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: {REMOTE_IDENTITY}\n  user:\n    token: {token}\ncontexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {REMOTE_IDENTITY}\ncurrent-context: {name}\n",
            self.server,
            base64(&self.ca_pem),
        )
    }

    /// `cp.sh ARGS` against this instance; panics with its output on failure.
    pub fn cp(&self, args: &[&str]) -> String {
        run(self.cp.command(args))
    }

    /// SIGKILL its kube-apiserver (`cp.sh kill kube-apiserver`). Take a
    /// [`RestoreRemote`] first.
    pub fn kill_apiserver(&self) {
        self.cp(&["kill", "kube-apiserver"]);
    }

    /// Start its kube-apiserver again (same port, same data) and wait until
    /// it is ready.
    pub fn start_apiserver(&self) {
        self.cp(&["start", "kube-apiserver"]);
    }

    /// The pid of its kube-apiserver, from `cp.sh`'s pid file in its state
    /// directory, checked as cp.sh does (the process's command line names
    /// that directory).
    pub fn apiserver_pid(&self) -> String {
        let dir = self
            .cp
            .dir
            .clone()
            .expect("a remote has its own state directory");
        let file = dir.join("kube-apiserver.pid");
        let pid = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("read {}: {e}", file.display()))
            .trim()
            .to_string();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()),
            "pid {pid} of {} is not remote {}'s kube-apiserver",
            file.display(),
            self.n
        );
        pid
    }

    /// Hang its kube-apiserver: SIGSTOP. It keeps its port (the kernel still
    /// accepts connections) but answers nothing until the returned guard
    /// is thawed or dropped.
    pub fn freeze_apiserver(&self) -> ThawRemote {
        let pid = self.apiserver_pid();
        let guard = ThawRemote::new(pid.clone());
        signal("STOP", &pid);
        guard
    }
}

fn signal(name: &str, pid: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}: {status}");
}

/// SIGCONT to a frozen kube-apiserver ([`Remote::freeze_apiserver`]) when
/// dropped or [`ThawRemote::thaw`]ed, however the test ends.
pub struct ThawRemote {
    pid: Option<String>,
}

impl ThawRemote {
    pub fn new(pid: String) -> ThawRemote {
        ThawRemote { pid: Some(pid) }
    }

    pub fn thaw(&mut self) {
        if let Some(pid) = self.pid.take() {
            signal("CONT", &pid);
        }
    }
}

impl Drop for ThawRemote {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
        }
    }
}

/// Starts every stopped daemon of a remote control plane (`cp.sh start`)
/// when dropped, however the test ends, so the tests after it find it up.
pub struct RestoreRemote(pub &'static Remote);

impl Drop for RestoreRemote {
    fn drop(&mut self) {
        let out = self.0.cp.command(&["start"]).stdin(Stdio::null()).output();
        let failure = match out {
            Ok(o) if o.status.success() => return,
            Ok(o) => format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr)),
            Err(e) => e.to_string(),
        };
        let msg = format!(
            "could not start remote control plane {} again: {failure}",
            self.0.n
        );
        if std::thread::panicking() {
            eprintln!("{msg}");
        } else {
            panic!("{msg}");
        }
    }
}

// ---------------------------------------------------------------- registration

/// A registration Secret `name` for cluster `cluster` with `kubeconfig`.
pub fn registration(name: &str, cluster: &str, kubeconfig: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(map(&[(CLUSTER_LABEL, cluster)])),
            ..Default::default()
        },
        string_data: Some(map(&[(KUBECONFIG_KEY, kubeconfig)])),
        ..Default::default()
    }
}

/// Create registration Secret `name` in `source_ns` (of the local cluster
/// `client` talks to): cluster `cluster` reached with `kubeconfig`.
pub async fn register(
    client: &kube::Client,
    source_ns: &str,
    name: &str,
    cluster: &str,
    kubeconfig: &str,
) -> Secret {
    Api::<Secret>::namespaced(client.clone(), source_ns)
        .create(
            &PostParams::default(),
            &registration(name, cluster, kubeconfig),
        )
        .await
        .unwrap_or_else(|e| panic!("create registration {source_ns}/{name}: {e}"))
}

/// Replace the kubeconfig of registration Secret `name`.
pub async fn set_registration_kubeconfig(
    client: &kube::Client,
    source_ns: &str,
    name: &str,
    kubeconfig: &str,
) {
    let patch = serde_json::json!({"stringData": {KUBECONFIG_KEY: kubeconfig}});
    Api::<Secret>::namespaced(client.clone(), source_ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("update registration {source_ns}/{name}: {e}"));
}

/// Delete registration Secret `name`.
pub async fn unregister(client: &kube::Client, source_ns: &str, name: &str) {
    let api = Api::<Secret>::namespaced(client.clone(), source_ns);
    api.delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete registration {source_ns}/{name}: {e}"));
}

// ---------------------------------------------------------------- namespaces

/// One test's namespaces in the remote control planes, all named
/// `<test id>-...`; every namespace with that prefix in either remote is
/// deleted when this is dropped (best effort, also when the test fails),
/// and the copies in them with it.
pub struct RemoteNamespaces {
    id: String,
}

impl RemoteNamespaces {
    pub fn new(id: &str) -> RemoteNamespaces {
        RemoteNamespaces { id: id.to_string() }
    }

    /// Create namespace `name` (which must start with the test's id) in
    /// `remote`, with `labels`.
    pub async fn create(&self, remote: &Remote, name: &str, labels: &[(&str, &str)]) {
        assert!(
            name.starts_with(&format!("{}-", self.id)),
            "remote namespace {name} must be named after the test ({})",
            self.id
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(map(labels)),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(remote.client().await)
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name} in remote {}: {e}", remote.n));
    }
}

impl Drop for RemoteNamespaces {
    fn drop(&mut self) {
        let prefix = format!("{}-", self.id);
        run_detached(move || async move {
            // Only those this binary started (or reused).
            for r in REMOTES.iter().filter_map(OnceLock::get) {
                let Ok(client) = r.cp.client().await else {
                    continue;
                };
                let api: Api<Namespace> = Api::all(client);
                let Ok(list) = api.list_metadata(&ListParams::default()).await else {
                    continue;
                };
                for name in list.items.into_iter().filter_map(|m| m.metadata.name) {
                    if name.starts_with(&prefix) {
                        let _ = api.delete(&name, &DeleteParams::default()).await;
                    }
                }
            }
        });
    }
}
