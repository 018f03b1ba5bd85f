//! Shared helpers for end-to-end tests against the project's real control
//! plane (`tests/control-plane/cp.sh`). No mock stands in for the cluster.
//!
//! - [`control_plane`] brings it up once per test binary (or reuses one that
//!   is up) and panics loudly if it cannot: the suite never skips.
//! - [`serial`] serialises tests across threads *and* test binaries with a
//!   file lock: each test runs its own controller process, and two
//!   controllers in one cluster would write into each other's namespaces.
//! - [`TestEnv`] gives each test its own source and target namespaces.
//! - [`eventually`] and [`until`] poll a condition with a generous timeout;
//!   no fixed sleeps.
//! - [`TestEnv::teardown`] ends a test; [`CleanupOnPanic`] does the same when
//!   it fails half-way.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};

// Shared with the benchmark, which includes these files by `#[path]`.
mod control_plane;
mod copies;
mod daemon;
mod http_get;
mod metrics;

// Issue 11: two more control planes as remote clusters.
pub mod remote;
pub mod rules;

// Issue 20: the real Prometheus and promtool, the alert rules rendered from the chart.
pub mod prometheus;

#[allow(unused_imports)] // each test binary uses some of them
pub use {
    control_plane::ControlPlane,
    copies::{CopyWatch, MANAGED_SELECTOR, SOURCE_ANNOTATION},
    daemon::Daemon,
    metrics::{Counts, sum_metric},
};

pub const SOURCE_SELECTOR_KEY: &str = "push-to-k8s";
/// Namespaces a controller never copies into.
pub const PROTECTED: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

pub fn cp_script() -> PathBuf {
    control_plane::script()
}

/// Run `cp.sh <args>`; panic with its output on failure.
pub fn cp(args: &[&str]) -> String {
    run(control_plane::command(None, args))
}

/// Run a command to completion (no stdin); its stdout, or a panic showing
/// the command and everything it printed when it fails.
pub fn run(mut cmd: Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl` against the test control plane, as `user` when given, with
/// `input` on stdin: whether it succeeded, and its stdout and stderr together
/// (for commands that are meant to be refused).
pub fn kubectl_try(user: Option<&str>, args: &[&str], input: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new("kubectl");
    if let Some(user) = user {
        cmd.arg(format!("--as={user}"));
    }
    let mut child = cmd
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input.as_bytes()).unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The control plane (the instance `PUSH_TO_K8S_CP_DIR` names, or cp.sh's
/// default), started (or reused) once per test binary.
pub fn control_plane() -> &'static ControlPlane {
    static CP: OnceLock<ControlPlane> = OnceLock::new();
    CP.get_or_init(|| {
        cp(&["up"]);
        ControlPlane::at(None).unwrap_or_else(|e| panic!("{e:#}"))
    })
}

pub async fn client() -> kube::Client {
    control_plane()
        .client()
        .await
        .unwrap_or_else(|e| panic!("client for the test control plane: {e:#}"))
}

/// Hold for the whole test: one controller in the cluster at a time, across
/// threads and test binaries.
pub struct Serial(std::fs::File);

pub fn serial() -> Serial {
    control_plane();
    let path = std::env::temp_dir().join(format!("push-to-k8s-e2e-{}.lock", control_plane::uid()));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("open e2e lock file");
    f.lock().expect("lock e2e lock file");
    Serial(f)
}

/// Poll `check` until it returns `Some`, or panic after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Poll `check` until `Ok`; on timeout, panic with `what` and the last reason.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(why) => assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for: {what}; last: {why}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A short unique suffix for names in this test run.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 1_000_000;
    format!(
        "{prefix}-{t}-{}-{}",
        std::process::id() % 1000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One test's namespaces: a source namespace and `targets` target namespaces.
pub struct TestEnv {
    pub client: kube::Client,
    pub source_ns: String,
    pub targets: Vec<String>,
    /// Every namespace this test created (removed by [`TestEnv::cleanup`]).
    pub created: Vec<String>,
    pub id: String,
}

impl TestEnv {
    pub async fn new(name: &str, targets: usize) -> TestEnv {
        let client = client().await;
        let id = unique(name);
        let mut env = TestEnv {
            client,
            source_ns: format!("{id}-src"),
            targets: Vec::new(),
            created: Vec::new(),
            id: id.clone(),
        };
        env.create_namespace(&env.source_ns.clone(), &[]).await;
        for i in 0..targets {
            let ns = format!("{id}-t{i}");
            env.create_namespace(&ns, &[]).await;
            env.targets.push(ns);
        }
        env
    }

    pub async fn create_namespace(&mut self, name: &str, labels: &[(&str, &str)]) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(map(labels)),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        self.created.push(name.to_string());
    }

    pub fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), ns)
    }

    pub fn sources(&self) -> Api<Secret> {
        self.secrets(&self.source_ns)
    }

    /// Create `source` in the source namespace.
    pub async fn add_source(&self, source: &Secret) -> Secret {
        self.sources()
            .create(&PostParams::default(), source)
            .await
            .expect("create source")
    }

    /// Create a Secret in the source namespace labelled as a source.
    pub async fn create_source(&self, name: &str, data: &[(&str, &str)]) -> Secret {
        self.add_source(&source_secret(name, data)).await
    }

    /// Delete the source `name`.
    pub async fn delete_source(&self, name: &str) {
        self.sources()
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete source");
    }

    /// Every namespace that currently exists and is not terminating.
    pub async fn active_namespaces(&self) -> Vec<Namespace> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.list(&ListParams::default())
            .await
            .expect("list namespaces")
            .items
            .into_iter()
            .filter(|n| n.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Every active namespace `keep` accepts, except the source namespace and
    /// the protected ones: where a controller for this test copies to.
    pub async fn targets_where(&self, keep: impl Fn(&Namespace) -> bool) -> Vec<String> {
        self.active_namespaces()
            .await
            .into_iter()
            .filter(|n| keep(n))
            .filter_map(|n| n.metadata.name)
            .filter(|n| *n != self.source_ns && !PROTECTED.contains(&n.as_str()))
            .collect()
    }

    /// Events with `reason` on source `name`, as `(type, text)`, each once:
    /// events.k8s.io/v1 and core/v1 serve the same Events, so both are read
    /// (an Event is found whichever API wrote it) and merged by name.
    pub async fn events_on(&self, name: &str, reason: &str) -> Vec<(String, String)> {
        self.events_in(&self.source_ns, name, reason).await
    }

    /// Events with `reason` on object `name` in namespace `ns` (as [`Self::events_on`]).
    pub async fn events_in(&self, ns: &str, name: &str, reason: &str) -> Vec<(String, String)> {
        use k8s_openapi::api::core::v1::Event as CoreEvent;
        use k8s_openapi::api::events::v1::Event as EventsEvent;
        let mut out = BTreeMap::new();
        let new: Api<EventsEvent> = Api::namespaced(self.client.clone(), ns);
        for e in new
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
        {
            let about = e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name);
            if about && e.reason.as_deref() == Some(reason) {
                let text = (e.type_.unwrap_or_default(), e.note.unwrap_or_default());
                out.insert(e.metadata.name.unwrap_or_default(), text);
            }
        }
        let old: Api<CoreEvent> = Api::namespaced(self.client.clone(), ns);
        for e in old
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
        {
            let about = e.involved_object.name.as_deref() == Some(name);
            if about && e.reason.as_deref() == Some(reason) {
                let text = (e.type_.unwrap_or_default(), e.message.unwrap_or_default());
                out.entry(e.metadata.name.unwrap_or_default())
                    .or_insert(text);
            }
        }
        out.into_values().collect()
    }

    /// The copy of `name` in `ns`, if any.
    pub async fn copy(&self, ns: &str, name: &str) -> Option<Secret> {
        self.secrets(ns).get_opt(name).await.expect("get copy")
    }

    /// Wait until every namespace in `namespaces` holds a copy whose data equals `data`.
    pub async fn await_copies(&self, namespaces: &[String], name: &str, data: &[(&str, &str)]) {
        let want = data_map(data);
        for ns in namespaces {
            eventually(
                &format!("copy {ns}/{name} with the expected data"),
                Duration::from_secs(60),
                || async {
                    self.copy(ns, name)
                        .await
                        .filter(|c| c.data.clone().unwrap_or_default() == want)
                        .map(|_| ())
                },
            )
            .await;
        }
    }

    /// Wait until no namespace in `namespaces` holds a Secret `name`.
    pub async fn await_no_copies(&self, namespaces: &[String], name: &str) {
        for ns in namespaces {
            eventually(
                &format!("{ns}/{name} to be gone"),
                Duration::from_secs(60),
                || async { self.copy(ns, name).await.is_none().then_some(()) },
            )
            .await;
        }
    }

    /// Namespaces holding a Secret marked as a copy of `source_ns/name`,
    /// cluster-wide.
    pub async fn copies_anywhere(&self, name: &str) -> Vec<String> {
        let want = format!("{}/{name}", self.source_ns);
        copies::list(&self.client)
            .await
            .expect("list copies")
            .into_iter()
            .filter(|m| copies::source(m) == Some(want.as_str()))
            .filter_map(|m| m.metadata.namespace)
            .collect()
    }

    /// Wait (up to 60 s) until no Secret anywhere in the cluster is marked as
    /// a copy of `source_ns/name`.
    pub async fn await_no_copies_anywhere(&self, name: &str) {
        until(
            &format!("every copy of {name} to go, cluster-wide"),
            Duration::from_secs(60),
            || async {
                let left = self.copies_anywhere(name).await;
                if left.is_empty() {
                    Ok(())
                } else {
                    Err(format!("still in {left:?}"))
                }
            },
        )
        .await;
    }

    /// Delete the namespaces this test created (best effort).
    pub async fn cleanup(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        for ns in &self.created {
            let _ = api.delete(ns, &DeleteParams::default()).await;
        }
    }

    /// End of a test whose controller is stopped: remove the copies it left in
    /// namespaces it does not own (see [`purge_copies`]), then its namespaces.
    pub async fn teardown(self) {
        purge_copies(&self.client, &self.source_ns).await;
        self.cleanup().await;
    }

    /// A guard that cleans up after this test if it panics; see [`CleanupOnPanic`].
    pub fn cleanup_on_panic(&self) -> CleanupOnPanic {
        CleanupOnPanic {
            id: self.id.clone(),
            source_ns: self.source_ns.clone(),
        }
    }
}

/// Delete every copy of `source_ns`'s sources, wherever it is (e.g.
/// `default`), best effort: with the controller stopped and the source
/// namespace going away, nothing else would ever collect them.
pub async fn purge_copies(client: &kube::Client, source_ns: &str) {
    let prefix = format!("{source_ns}/");
    let Ok(list) = copies::list(client).await else {
        return;
    };
    for m in list {
        let ours = copies::source(&m).is_some_and(|s| s.starts_with(&prefix));
        if let (true, Some((ns, name))) = (ours, copies::key(&m)) {
            let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
    }
}

/// Cleans up after a test that panics, like [`TestEnv::teardown`]: deletes
/// the copies of its sources wherever they are, then every namespace named
/// after the test's id (also those it created after taking the guard), so a
/// failing test does not leave work for every later test's controller.
///
/// Take it with [`TestEnv::cleanup_on_panic`] after the [`serial`] guard (it
/// must run while that is held) and before any [`Daemon`] (which must be
/// killed first).
pub struct CleanupOnPanic {
    id: String,
    source_ns: String,
}

impl Drop for CleanupOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let (id, source_ns) = (self.id.clone(), self.source_ns.clone());
        // The test's runtime is unwinding; use a fresh one on its own thread.
        run_detached(move || async move {
            let client = client().await;
            purge_copies(&client, &source_ns).await;
            let prefix = format!("{id}-");
            let namespaces: Api<Namespace> = Api::all(client.clone());
            if let Ok(list) = namespaces.list_metadata(&ListParams::default()).await {
                for n in list.items.into_iter().filter_map(|n| n.metadata.name) {
                    if n.starts_with(&prefix) {
                        let _ = namespaces.delete(&n, &DeleteParams::default()).await;
                    }
                }
            }
        });
    }
}

pub fn map(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn data_map(kv: &[(&str, &str)]) -> BTreeMap<String, ByteString> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect()
}

pub fn source_secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(map(&[(SOURCE_SELECTOR_KEY, "source")])),
            ..Default::default()
        },
        data: Some(data_map(data)),
        ..Default::default()
    }
}

pub fn free_port() -> u16 {
    daemon::free_port().expect("a free port")
}

/// [`Daemon`] (a running `push-to-k8s` process, killed on drop; see
/// `daemon.rs`) against the test control plane.
impl Daemon {
    /// Start the built binary against the test control plane with `env`
    /// (NAMESPACE, KUBECONFIG and METRICS_PORT are set unless given).
    pub fn start(source_ns: &str, env: &[(&str, &str)]) -> Daemon {
        let mut all = vec![
            ("NAMESPACE", source_ns),
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "1"),
            ("SECRET_SYNC_RATE_LIMIT", "100"),
            ("SECRET_SYNC_RATE_BURST", "10"),
        ];
        all.extend_from_slice(env);
        Daemon::start_exact(&all)
    }

    /// Start the built binary with exactly `env`, plus PATH, HOME, a free
    /// METRICS_PORT and the test control plane's KUBECONFIG unless given.
    pub fn start_exact(env: &[(&str, &str)]) -> Daemon {
        let log = std::env::temp_dir().join(format!("{}.log", unique("push-to-k8s-daemon")));
        let bin = std::path::Path::new(env!("CARGO_BIN_EXE_push-to-k8s"));
        Daemon::spawn(bin, &control_plane().kubeconfig, log, env)
            .unwrap_or_else(|e| panic!("start push-to-k8s: {e:#}"))
    }

    /// Wait until `/readyz` answers 200 (caches synced).
    pub async fn await_ready(&mut self) {
        let every = Duration::from_millis(200);
        if let Err(e) = self.wait_ready(Duration::from_secs(60), every).await {
            panic!("{e:#}; log:\n{}", self.logs());
        }
    }

    /// Wait up to `timeout` for the process to exit on its own (no signal);
    /// `None` if it is still running (it is then killed on drop).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("daemon already stopped");
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait (up to 20 s) for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.terminate(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// Write requests (POST, PUT, PATCH, DELETE) to Secrets, counted by the API
/// server itself: the independent witness for "zero writes".
///
/// The API server files a server-side apply PATCH under `verb="APPLY"`, not
/// `PATCH`, and a collection delete under `DELETECOLLECTION`; both are writes
/// and are counted (the controller writes with server-side apply).
pub async fn apiserver_secret_writes(client: &kube::Client) -> f64 {
    Counts::fetch(client)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
        .writes("secrets")
}

/// Wait (up to 120 s) until no namespace is terminating. Earlier tests'
/// cleanups make the namespace controller delete Secrets, which the API
/// server counts as writes; a "zero writes" measurement must start after.
pub async fn await_no_terminating_namespaces(client: &kube::Client) {
    let api: Api<Namespace> = Api::all(client.clone());
    eventually(
        "no namespace left in Terminating (earlier cleanups finished)",
        Duration::from_secs(120),
        || async {
            let list = api.list_metadata(&ListParams::default()).await.ok()?;
            list.items
                .iter()
                .all(|n| n.metadata.deletion_timestamp.is_none())
                .then_some(())
        },
    )
    .await;
}

// ---------------------------------------------------------------- fault injection

/// The control plane's daemons, in the order `cp.sh start` starts them.
pub const CP_DAEMONS: [&str; 3] = ["etcd", "kube-apiserver", "kube-controller-manager"];

/// `cp.sh kill NAME`: SIGKILL one control-plane daemon and wait until it is gone.
pub fn cp_kill(name: &str) {
    cp(&["kill", name]);
}

/// `cp.sh start NAME`: start it again with the command line (ports, data) it
/// had, and wait until it is ready (etcd `/health`, kube-apiserver `/readyz`).
pub fn cp_start(name: &str) {
    cp(&["start", name]);
}

/// `cp.sh restart NAME`: kill, then start and wait until ready.
pub fn cp_restart(name: &str) {
    cp(&["restart", name]);
}

/// The kube-apiserver's audit log (writes to Secrets, ConfigMaps and Leases,
/// metadata level), in the control plane's state directory.
pub fn audit_log() -> PathBuf {
    control_plane()
        .kubeconfig
        .parent()
        .expect("the kubeconfig lives in the state directory")
        .join("audit.log")
}

/// Starts every control-plane daemon that is not running (`cp.sh start`)
/// when dropped, and waits until the control plane is ready: a test that kills
/// a daemon and then fails half-way leaves a working control plane to the
/// tests after it. Take it before the first kill and declare it after every
/// guard that needs the API server while it drops (it then drops first).
pub struct RestoreControlPlane(());

pub fn restore_control_plane_on_drop() -> RestoreControlPlane {
    control_plane();
    RestoreControlPlane(())
}

impl Drop for RestoreControlPlane {
    fn drop(&mut self) {
        let out = Command::new("bash")
            .arg(cp_script())
            .arg("start")
            .stdin(Stdio::null())
            .output();
        let failure = match out {
            Ok(o) if o.status.success() => return,
            Ok(o) => format!(
                "`cp.sh start` failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("`cp.sh start`: {e}"),
        };
        if std::thread::panicking() {
            eprintln!("could not restore the control plane: {failure}");
        } else {
            panic!("could not restore the control plane: {failure}");
        }
    }
}

impl Daemon {
    /// SIGKILL the controller (a crash: no shutdown, no lease release) and reap it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("daemon already stopped");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// `GET /readyz`: status and body, `None` while nothing answers.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        self.http("/readyz").await
    }

    /// `GET /healthz`: status and body, `None` while nothing answers.
    pub async fn healthz(&self) -> Option<(u16, String)> {
        self.http("/healthz").await
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// A kubeconfig that authenticates as ServiceAccount `ns/sa` with a bound
/// token (one hour), against the test control plane.
pub fn service_account_kubeconfig(ns: &str, sa: &str) -> PathBuf {
    service_account_kubeconfig_via(ns, sa, None)
}

/// [`service_account_kubeconfig`] reaching the API server at `server` (a
/// `https://127.0.0.1:PORT` proxy in front of it) instead of directly.
pub fn service_account_kubeconfig_via(ns: &str, sa: &str, server: Option<&str>) -> PathBuf {
    let admin = kube::config::Kubeconfig::read_from(&control_plane().kubeconfig).unwrap();
    let cluster = admin.clusters[0].cluster.clone().unwrap();
    let mut cmd = Command::new("kubectl");
    cmd.args(["create", "token", sa, "-n", ns, "--duration=1h"])
        .env("KUBECONFIG", &control_plane().kubeconfig);
    let token = run(cmd);
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique("push-to-k8s-sa")));
    let server = server.map_or_else(|| cluster.server.clone().unwrap(), str::to_string);
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {}\ncontexts:\n- name: sa\n  context: {{cluster: local, user: sa}}\ncurrent-context: sa\n",
        server,
        cluster.certificate_authority.unwrap(),
        token.trim()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Run `work` to completion on a fresh runtime on its own thread: for `Drop`
/// guards, which may run while a test's runtime is unwinding.
pub fn run_detached<F>(work: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime")
            .block_on(work());
    })
    .join();
}

/// Deletes a test's ClusterRole and ClusterRoleBinding of this name, also
/// when the test fails.
pub struct DeleteClusterRbac(pub String);

impl Drop for DeleteClusterRbac {
    fn drop(&mut self) {
        use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
        let name = self.0.clone();
        run_detached(move || async move {
            let c = client().await;
            let dp = DeleteParams::default();
            let _ = Api::<ClusterRoleBinding>::all(c.clone())
                .delete(&name, &dp)
                .await;
            let _ = Api::<ClusterRole>::all(c).delete(&name, &dp).await;
        });
    }
}

/// A ResourceQuota `count/secrets: "0"` in `ns` that admission enforces:
/// every new Secret there is refused with "exceeded quota" (checked).
pub async fn quota_without_secrets(client: &kube::Client, ns: &str) {
    use k8s_openapi::api::core::v1::{ResourceQuota, ResourceQuotaSpec};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::{Patch, PatchParams};
    // No quota controller runs in the test control plane; fill in the status
    // as it would, so admission refuses with "exceeded quota".
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), ns);
    let hard = BTreeMap::from([("count/secrets".to_string(), Quantity("0".into()))]);
    quotas
        .create(
            &PostParams::default(),
            &ResourceQuota {
                metadata: ObjectMeta {
                    name: Some("no-secrets".into()),
                    ..Default::default()
                },
                spec: Some(ResourceQuotaSpec {
                    hard: Some(hard.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )
        .await
        .expect("create the quota");
    quotas
        .patch_status(
            "no-secrets",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"status": {"hard": hard, "used": {"count/secrets": "0"}}}),
            ),
        )
        .await
        .expect("quota status");
    // Admission reads quotas from its own cache, which may not hold the status
    // yet: probe until a Secret is refused (deleting any probe let in).
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    until(
        "the quota refuses a Secret",
        Duration::from_secs(60),
        || async {
            let probe = source_secret("probe", &[("k", "v")]);
            match secrets.create(&PostParams::default(), &probe).await {
                Err(kube::Error::Api(s))
                    if s.code == 403 && s.message.contains("exceeded quota") =>
                {
                    Ok(())
                }
                other => {
                    // Let in (or left by an earlier probe): remove it, probe again.
                    let deleted = secrets.delete("probe", &DeleteParams::default()).await;
                    let why = other.map_or_else(|e| e.to_string(), |_| "let in".into());
                    Err(format!("not refused: {why} (deleted: {})", deleted.is_ok()))
                }
            }
        },
    )
    .await;
}

/// Controller instances' identities: a ServiceAccount each in the source
/// namespace, with the chart's rules (Secrets, ConfigMaps, namespaces,
/// Events) and the Lease in the source namespace, and `extra_rules` (YAML
/// items of the ClusterRole's `rules`, indented by two spaces) cluster-wide.
/// The name of the ClusterRole (see [`DeleteRole`]).
pub fn grant_instances(env: &TestEnv, accounts: &[&str], extra_rules: &str) -> String {
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
{extra_rules}---
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
    let (ok, out) = kubectl_try(None, &["apply", "-f", path.to_str().unwrap()], None);
    assert!(ok, "grant: {out}");
    let _ = std::fs::remove_file(path);
    role
}

/// Removes the test's cluster-scoped RBAC objects, also when it fails.
pub struct DeleteRole(pub String);

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
