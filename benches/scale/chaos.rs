//! Scenario `chaos` (issue 16, "What it must show"): two controller instances
//! with leader election, one remote cluster and Vault, on the real control
//! planes, while sources change continuously and faults are injected at
//! random (seeded) for `--chaos-minutes` (default 20). Run only when named:
//! `cargo bench --bench scale -- --only chaos`.
//!
//! Setup
//! - The bench's control plane ("home"), a second one started for the
//!   scenario as the remote cluster (`/tmp/push-to-k8s-bench-cp-$UID-chaos-remote`,
//!   taken down at the end) and Vault (`cp.sh vault-up` in the bench's state
//!   directory) with its file audit device enabled.
//! - The instances `chaos-a` and `chaos-b` run as ServiceAccounts of those
//!   names (the chart's rules, granted by a ClusterRoleBinding and two
//!   RoleBindings in the source namespace), so that RBAC revocation is real
//!   and the audit log tells them apart; `POD_NAME` is the same name, so the
//!   Lease's holder names the instance. Each logs in to Vault with Kubernetes
//!   auth as its ServiceAccount (one Vault role each, `cp.sh vault-k8s-auth`,
//!   applied again by `cp.sh vault-start`).
//! - The remote cluster is registered with a kubeconfig holding a token of a
//!   ServiceAccount of the remote cluster (`chaos-remote`); both instances read
//!   the same registration, so the remote audit log cannot tell them apart.
//! - Sources: S Secrets and S/4 ConfigMaps in `bench-src`; every second one
//!   also goes to every registered cluster (`clusters: "*"`), every third
//!   Secret also to Vault. Targets: `bench-t0000..` (N in each cluster) and
//!   the tenant namespace `chaos-tenant` in both. In two namespaces an
//!   unmanaged object has a source's name (a conflict: it must stay), and
//!   unrelated Secrets sit beside the copies.
//!
//! During the run
//! - One task changes a random source every 0.3-1.5 s.
//! - The fault loop injects one fault at a time, kinds drawn as shuffled
//!   rounds of all kinds (so a short run still sees each kind), each held for
//!   a random time and then restored, with a random pause between faults:
//!   kube-apiserver and etcd killed and started again (`cp.sh kill` /
//!   `start`); the remote API server killed and started, or hung (SIGSTOP,
//!   SIGCONT); Vault killed and started (dev mode: every entry and token is
//!   gone; the bench enables its audit device again); the Lease's holder
//!   frozen and thawed (SIGSTOP/SIGCONT); RBAC revoked and restored (the
//!   ClusterRoleBinding, or the Lease's RoleBinding); a tenant forging copies
//!   (Secrets in `chaos-tenant`, home and remote, with the managed-by label
//!   and a source annotation naming `bench-src/...`, under names no source
//!   asks for).
//! - RSS of both instances every 10 s, the Lease holder every second.
//!
//! At the end (every fault restored): poll until every copy and entry equals
//! its source (the time it took is reported), then check:
//! - every copy in every namespace of both clusters and every Vault entry
//!   equals its source (data, type, content hash; ConfigMaps with
//!   binaryData); no copy of ours where none is wanted;
//! - the home kube-apiserver's audit log (`audit.log`, metadata level):
//!   each instance's writes to Secrets and ConfigMaps (every request that
//!   reached the server, whatever its answer) happened while it held the
//!   Lease by the Lease's own audit entries. Precisely: instance X holds the
//!   Lease from the completion (`stageTimestamp`) of each successful (2xx)
//!   create/update of the Lease by X until the completion of the next
//!   successful Lease write by the other instance, and at most
//!   `LEASE_DURATION_SECONDS` after X's last one. A write by X received
//!   (`requestReceivedTimestamp`) outside that is a violation. This is
//!   conservative: a release (on SIGTERM, at the end only) still counts as
//!   holding, and the margin between the renew deadline and the duration is
//!   granted. The same check applies to Vault's audit log (each instance's
//!   requests that write: create, update, delete on the KV mount), against
//!   the home Lease timeline;
//! - no write by the controller, in either cluster, to an object that is not
//!   ours: the forged objects, the unmanaged conflicts, the unrelated
//!   Secrets, anything in the source namespace; no Vault write outside the
//!   sources' paths; and each of those objects still exists with the
//!   resourceVersion it was created with;
//! - no controller exited (one that did is counted and started again);
//! - RSS: first, last and highest sample of each instance; flat if the last
//!   is within 25 % (at least 16 MiB) of the first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use push_to_k8s::model::kinds::Kind;
use push_to_k8s::model::replica::Replica;
use push_to_k8s::model::vocabulary::CLUSTERS_ANNOTATION;
use push_to_k8s::model::vocabulary::PATH_ANNOTATION;
use push_to_k8s::model::vocabulary::{CLUSTER_LABEL, KUBECONFIG_KEY};
use serde::Serialize;
use serde_json::json;

use crate::cluster::{Cluster, source_secret};
use crate::controller::{self, Settings, status_kib};
use crate::copies::CopyWatch;
use crate::daemon::Daemon;
use crate::report::Target;
use crate::setup::BenchControlPlane;
use crate::vault::VaultServer;
use crate::{Bench, PARKED_LABEL, PROTECTED, SOURCE_NS, control_plane};

const SC: &str = "chaos";
/// The instances: ServiceAccount, `POD_NAME` (Lease holder) and Vault role.
const INSTANCES: [&str; 2] = ["chaos-a", "chaos-b"];
const LEASE: &str = "chaos-leader";
const LEASE_DURATION_S: u64 = 10;
const RENEW_DEADLINE_S: u64 = 6;
const RETRY_PERIOD_S: u64 = 2;
/// The registered name of the remote cluster, and its ServiceAccount there.
const REMOTE: &str = "chaos-remote";
const REMOTE_SA: &str = "chaos-remote";
const CLUSTER_NAME: &str = "bench-chaos";
/// The tenant's namespace (in both clusters), a target like any other.
const TENANT_NS: &str = "chaos-tenant";
/// Vault entries are `secret/bench-chaos/<source>` (the roles' policy prefix).
const VAULT_PREFIX: &str = "bench-chaos";
const MOUNT: &str = "secret";
/// Forged objects per forge fault: home, remote.
const FORGE_HOME: usize = 20;
const FORGE_REMOTE: usize = 10;
/// How long the settle after the faults may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Every request the bench makes during the faults is bounded by this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Objects of the bench that are not the controller's carry this (reset removes them).
const UNRELATED: (&str, &str) = ("app", "unrelated");

// ---------------------------------------------------------------- randomness

/// xorshift64*: the project has no `rand` dependency and needs none.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A duration uniformly in `[lo, hi]` seconds, in milliseconds.
    fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(lo + (hi - lo) * u)
    }
}

// ---------------------------------------------------------------- faults

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
enum Fault {
    ApiServer,
    Etcd,
    RemoteKill,
    RemoteHang,
    Vault,
    LeaderFreeze,
    Rbac,
    Forge,
}

const FAULTS: [Fault; 8] = [
    Fault::ApiServer,
    Fault::Etcd,
    Fault::RemoteKill,
    Fault::RemoteHang,
    Fault::Vault,
    Fault::LeaderFreeze,
    Fault::Rbac,
    Fault::Forge,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::ApiServer => "kube-apiserver killed",
            Fault::Etcd => "etcd killed",
            Fault::RemoteKill => "remote API server killed",
            Fault::RemoteHang => "remote API server hung (SIGSTOP)",
            Fault::Vault => "Vault killed",
            Fault::LeaderFreeze => "leader frozen (SIGSTOP)",
            Fault::Rbac => "RBAC revoked",
            Fault::Forge => "tenant forged copies",
        }
    }

    /// How long it is held before it is restored (seconds).
    fn hold(self) -> (f64, f64) {
        match self {
            Fault::ApiServer | Fault::Etcd => (3.0, 15.0),
            Fault::RemoteKill => (5.0, 30.0),
            Fault::RemoteHang => (10.0, 60.0),
            Fault::Vault => (3.0, 20.0),
            // Below and above the Lease duration (10 s).
            Fault::LeaderFreeze => (3.0, 25.0),
            Fault::Rbac => (5.0, 30.0),
            Fault::Forge => (0.0, 0.0),
        }
    }
}

#[derive(Debug, Serialize)]
struct FaultRecord {
    kind: Fault,
    /// Seconds after the start of the faults.
    at_s: f64,
    held_s: f64,
    /// How long restoring took (a start waits until the daemon is ready).
    restore_s: f64,
    note: String,
}

/// SIGCONT on drop: a process the bench stopped never stays stopped.
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Result<Stopped> {
        signal(pid, "STOP")?;
        Ok(Stopped(pid))
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = signal(self.0, "CONT");
    }
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .context("run kill")?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed ({status})");
    }
    Ok(())
}

/// `cp.sh ARGS` against the instance in `dir`; its output on failure.
async fn cp(dir: &Path, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::from(control_plane::command(Some(dir), args))
        .output()
        .await
        .with_context(|| format!("run cp.sh {args:?}"))?;
    if !out.status.success() {
        bail!(
            "cp.sh {} ({}) failed ({}): {}",
            args.join(" "),
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

async fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("run kubectl (the chaos scenario needs kubectl)")?;
    let mut input = child.stdin.take().context("kubectl's stdin")?;
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .await?;
    drop(input);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Seconds since the Unix epoch (the audit logs' clock: this machine's).
fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn parse_time(v: &serde_json::Value) -> Option<f64> {
    let t = v.as_str()?.parse::<k8s_openapi::jiff::Timestamp>().ok()?;
    Some(t.as_nanosecond() as f64 / 1e9)
}

fn sa_user(sa: &str) -> String {
    format!("system:serviceaccount:{SOURCE_NS}:{sa}")
}

// ---------------------------------------------------------------- identities

/// The instances' ServiceAccounts and their rights at home (the chart's
/// rules). Revocation deletes one binding; restoring applies this again.
fn home_rbac() -> String {
    let subjects: String = INSTANCES
        .iter()
        .map(|sa| format!("  - {{kind: ServiceAccount, name: {sa}, namespace: {SOURCE_NS}}}\n"))
        .collect();
    let accounts: String = INSTANCES
        .iter()
        .map(|sa| {
            format!("---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {SOURCE_NS}}}\n")
        })
        .collect();
    format!(
        "{accounts}---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: bench-chaos}}
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
metadata: {{name: bench-chaos}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: bench-chaos}}
subjects:
{subjects}---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: bench-chaos-events, namespace: {SOURCE_NS}}}
rules:
  - apiGroups: [\"events.k8s.io\"]
    resources: [\"events\"]
    verbs: [\"create\", \"patch\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: bench-chaos-events, namespace: {SOURCE_NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: bench-chaos-events}}
subjects:
{subjects}---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: bench-chaos-leader, namespace: {SOURCE_NS}}}
rules:
  - apiGroups: [\"coordination.k8s.io\"]
    resources: [\"leases\"]
    verbs: [\"get\", \"create\", \"update\"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: bench-chaos-leader, namespace: {SOURCE_NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: bench-chaos-leader}}
subjects:
{subjects}"
    )
}

/// The remote cluster's identity for the registration.
fn remote_rbac() -> String {
    format!(
        "apiVersion: v1
kind: ServiceAccount
metadata: {{name: {REMOTE_SA}, namespace: {SOURCE_NS}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: bench-chaos-remote}}
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
metadata: {{name: bench-chaos-remote}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: bench-chaos-remote}}
subjects:
  - {{kind: ServiceAccount, name: {REMOTE_SA}, namespace: {SOURCE_NS}}}
"
    )
}

/// A token of ServiceAccount `sa` in the source namespace, valid for `valid`.
async fn token(kubeconfig: &Path, sa: &str, valid: Duration) -> Result<String> {
    let duration = format!("--duration={}s", valid.as_secs());
    Ok(kubectl(
        kubeconfig,
        &["create", "token", sa, "-n", SOURCE_NS, &duration],
        None,
    )
    .await?
    .trim()
    .to_string())
}

/// A private file (0600) in `dir`.
fn private_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(path)
}

/// A kubeconfig (JSON, which is YAML) for `server` with the CA inline and a
/// bearer token.
fn token_kubeconfig(server: &str, ca_pem: &[u8], token: &str) -> Result<String> {
    let ca = serde_json::to_value(ByteString(ca_pem.to_vec()))?;
    Ok(json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    })
    .to_string())
}

fn server_of(state_dir: &Path) -> Result<String> {
    let port = std::fs::read_to_string(state_dir.join("apiserver.port"))
        .with_context(|| format!("read {}/apiserver.port", state_dir.display()))?;
    Ok(format!("https://127.0.0.1:{}", port.trim()))
}

// ---------------------------------------------------------------- sources

struct SourceSpec {
    name: String,
    kind: Kind,
    remote: bool,
    vault: bool,
}

fn labels() -> Option<BTreeMap<String, String>> {
    Some(BTreeMap::from([(
        push_to_k8s::model::vocabulary::SOURCE_LABEL_KEY.to_string(),
        push_to_k8s::model::vocabulary::SOURCE_LABEL_VALUE.to_string(),
    )]))
}

fn annotations(s: &SourceSpec) -> Option<BTreeMap<String, String>> {
    let mut a = BTreeMap::new();
    if s.remote {
        a.insert(CLUSTERS_ANNOTATION.to_string(), "*".to_string());
    }
    if s.vault {
        a.insert(
            PATH_ANNOTATION.to_string(),
            format!("{VAULT_PREFIX}/{}", s.name),
        );
    }
    (!a.is_empty()).then_some(a)
}

fn config_map_source(s: &SourceSpec, rev: u64) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            labels: labels(),
            annotations: annotations(s),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            ("rev".to_string(), rev.to_string()),
            (
                "settings.yaml".to_string(),
                format!("service: {}\nlog_level: info\n", s.name),
            ),
        ])),
        binary_data: Some(BTreeMap::from([(
            "keystore.bin".to_string(),
            ByteString(crate::cluster::filler(&s.name, 64)),
        )])),
        ..Default::default()
    }
}

/// An unrelated (or conflicting, or forged) object: what it is keyed by and
/// the resourceVersion it was created with.
#[derive(Clone, Debug, Serialize)]
struct Foreign {
    ns: String,
    name: String,
    rv: String,
    what: &'static str,
}

fn key(ns: &str, name: &str) -> (String, String) {
    (ns.to_string(), name.to_string())
}

// ---------------------------------------------------------------- the check

/// What the final state differs from the sources in.
#[derive(Debug, Default, Serialize)]
struct Check {
    /// (cluster, what): missing copies, copies with other content, copies of
    /// ours where none is wanted, Vault entries missing or different.
    missing: usize,
    stale: usize,
    strays: usize,
    vault_missing: usize,
    vault_stale: usize,
    /// Foreign objects deleted or changed.
    foreign_changed: usize,
    /// What was compared: copies (home, remote), Vault entries, foreign objects.
    copies_checked: [usize; 2],
    entries_checked: usize,
    foreign_checked: usize,
    examples: Vec<String>,
}

impl Check {
    fn total(&self) -> usize {
        self.missing
            + self.stale
            + self.strays
            + self.vault_missing
            + self.vault_stale
            + self.foreign_changed
    }

    fn note(&mut self, s: String) {
        if self.examples.len() < 12 {
            self.examples.push(s);
        }
    }

    fn describe(&self) -> String {
        format!(
            "missing {}, stale {}, strays {}, Vault missing {}, Vault stale {}, foreign changed {}",
            self.missing,
            self.stale,
            self.strays,
            self.vault_missing,
            self.vault_stale,
            self.foreign_changed
        )
    }
}

/// Namespaces that should hold copies: not protected, not the source
/// namespace, not parked, not terminating.
async fn eligible_namespaces(client: &kube::Client) -> Result<Vec<String>> {
    let protected: HashSet<&str> = PROTECTED.split(',').collect();
    let api: Api<Namespace> = Api::all(client.clone());
    Ok(api
        .list_metadata(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter(|n| {
            !n.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(PARKED_LABEL))
        })
        .filter_map(|n| n.metadata.name)
        .filter(|n| n != SOURCE_NS && !protected.contains(n.as_str()))
        .collect())
}

fn annotation<'a>(m: &'a ObjectMeta, k: &str) -> Option<&'a str> {
    m.annotations.as_ref()?.get(k).map(String::as_str)
}

/// Compare one cluster's copies with the sources; `foreign`: the objects
/// that are not ours there (an unmanaged one in a copy's place is a conflict).
async fn check_cluster(
    c: &mut Check,
    label: &str,
    client: &kube::Client,
    (secrets, config_maps): (&[Secret], &[ConfigMap]),
    foreign: &[Foreign],
    remote: bool,
) -> Result<()> {
    let conflicts: &HashSet<(String, String)> = &foreign
        .iter()
        .filter(|f| f.what == "unmanaged conflict")
        .map(|f| key(&f.ns, &f.name))
        .collect();
    let foreign: &HashSet<(String, String)> =
        &foreign.iter().map(|f| key(&f.ns, &f.name)).collect();
    let namespaces = eligible_namespaces(client).await?;
    let mut checked = 0;
    let selector = ListParams::default().labels(push_to_k8s::model::vocabulary::MANAGED_SELECTOR);
    let copies: HashMap<(String, String), Secret> = Api::<Secret>::all(client.clone())
        .list(&selector)
        .await?
        .items
        .into_iter()
        .filter_map(|s| {
            Some((
                key(
                    s.metadata.namespace.as_deref()?,
                    s.metadata.name.as_deref()?,
                ),
                s,
            ))
        })
        .collect();
    let cm_copies: HashMap<(String, String), ConfigMap> = Api::<ConfigMap>::all(client.clone())
        .list(&selector)
        .await?
        .items
        .into_iter()
        .filter_map(|s| {
            Some((
                key(
                    s.metadata.namespace.as_deref()?,
                    s.metadata.name.as_deref()?,
                ),
                s,
            ))
        })
        .collect();
    let wanted_here = |m: &ObjectMeta| !remote || annotation(m, CLUSTERS_ANNOTATION).is_some();
    let mut expected: HashSet<(String, String)> = HashSet::new();
    let stamp_ok = |m: &ObjectMeta| {
        !remote
            || annotation(m, push_to_k8s::model::vocabulary::SOURCE_CLUSTER_ANNOTATION)
                == Some(CLUSTER_NAME)
    };
    for s in secrets.iter().filter(|s| wanted_here(&s.metadata)) {
        let name = s.metadata.name.clone().unwrap_or_default();
        let hash = Replica::render(s, SOURCE_NS).hash;
        for ns in &namespaces {
            let k = key(ns, &name);
            if conflicts.contains(&k) {
                continue;
            }
            expected.insert(k.clone());
            checked += 1;
            match copies.get(&k) {
                None => {
                    c.missing += 1;
                    c.note(format!("{label}: Secret {ns}/{name} missing"));
                }
                Some(copy) => {
                    let same = copy.data == s.data
                        && copy.type_ == s.type_
                        && annotation(
                            &copy.metadata,
                            push_to_k8s::model::vocabulary::HASH_ANNOTATION,
                        ) == Some(&hash)
                        && stamp_ok(&copy.metadata);
                    if !same {
                        c.stale += 1;
                        c.note(format!(
                            "{label}: Secret {ns}/{name} differs from its source"
                        ));
                    }
                }
            }
        }
    }
    let mut cm_expected: HashSet<(String, String)> = HashSet::new();
    for s in config_maps.iter().filter(|s| wanted_here(&s.metadata)) {
        let name = s.metadata.name.clone().unwrap_or_default();
        let hash = Replica::render_config_map(s, SOURCE_NS).hash;
        for ns in &namespaces {
            let k = key(ns, &name);
            cm_expected.insert(k.clone());
            checked += 1;
            match cm_copies.get(&k) {
                None => {
                    c.missing += 1;
                    c.note(format!("{label}: ConfigMap {ns}/{name} missing"));
                }
                Some(copy) => {
                    let same = copy.data == s.data
                        && copy.binary_data == s.binary_data
                        && annotation(
                            &copy.metadata,
                            push_to_k8s::model::vocabulary::HASH_ANNOTATION,
                        ) == Some(&hash)
                        && stamp_ok(&copy.metadata);
                    if !same {
                        c.stale += 1;
                        c.note(format!(
                            "{label}: ConfigMap {ns}/{name} differs from its source"
                        ));
                    }
                }
            }
        }
    }
    c.copies_checked[usize::from(remote)] += checked;
    // Ours (our marks, naming our source namespace, our stamp there) but not wanted.
    let ours = |m: &ObjectMeta| {
        annotation(m, push_to_k8s::model::vocabulary::SOURCE_ANNOTATION)
            .is_some_and(|s| s.starts_with(&format!("{SOURCE_NS}/")))
            && stamp_ok(m)
    };
    for (k, s) in &copies {
        if !expected.contains(k) && !foreign.contains(k) && ours(&s.metadata) {
            c.strays += 1;
            c.note(format!("{label}: stray Secret copy {}/{}", k.0, k.1));
        }
    }
    for (k, s) in &cm_copies {
        if !cm_expected.contains(k) && ours(&s.metadata) {
            c.strays += 1;
            c.note(format!("{label}: stray ConfigMap copy {}/{}", k.0, k.1));
        }
    }
    Ok(())
}

/// Whether each foreign object is still there with its resourceVersion.
async fn check_foreign(c: &mut Check, label: &str, client: &kube::Client, foreign: &[Foreign]) {
    c.foreign_checked += foreign.len();
    for f in foreign {
        let api: Api<Secret> = Api::namespaced(client.clone(), &f.ns);
        let now = api.get_metadata_opt(&f.name).await;
        let rv = match &now {
            Ok(Some(m)) => m.metadata.resource_version.clone().unwrap_or_default(),
            Ok(None) => "(deleted)".to_string(),
            Err(e) => format!("(unreadable: {e})"),
        };
        if rv != f.rv {
            c.foreign_changed += 1;
            c.note(format!(
                "{label}: {} {}/{} changed: resourceVersion {} -> {rv}",
                f.what, f.ns, f.name, f.rv
            ));
        }
    }
}

// ---------------------------------------------------------------- audit logs

#[derive(Debug, Clone)]
struct Audited {
    received: f64,
    done: f64,
    user: String,
    verb: String,
    resource: String,
    ns: String,
    name: String,
    code: i64,
}

/// Every ResponseComplete entry of the kube-apiserver audit log(s) in
/// `dir` (`audit.log` and any rotated `audit-*.log`) received in `[from, to]`.
fn read_audit(dir: &Path, from: f64, to: f64) -> Result<Vec<Audited>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit") && n.ends_with(".log"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no audit log in {}", dir.display());
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read(&f).with_context(|| format!("read {}", f.display()))?;
        for line in String::from_utf8_lossy(&text).lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if e["stage"] != "ResponseComplete" {
                continue;
            }
            let (Some(received), Some(done)) = (
                parse_time(&e["requestReceivedTimestamp"]),
                parse_time(&e["stageTimestamp"]),
            ) else {
                continue;
            };
            if received < from || received > to {
                continue;
            }
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            out.push(Audited {
                received,
                done,
                user: s(&e["user"]["username"]),
                verb: s(&e["verb"]),
                resource: s(&e["objectRef"]["resource"]),
                ns: s(&e["objectRef"]["namespace"]),
                name: s(&e["objectRef"]["name"]),
                code: e["responseStatus"]["code"].as_i64().unwrap_or(0),
            });
        }
    }
    Ok(out)
}

fn is_write(verb: &str) -> bool {
    matches!(
        verb,
        "create" | "update" | "patch" | "delete" | "deletecollection"
    )
}

/// Successful Lease writes: (completion time, instance index), in order.
fn lease_timeline(entries: &[Audited]) -> Vec<(f64, usize)> {
    let mut t: Vec<(f64, usize)> = entries
        .iter()
        .filter(|e| e.resource == "leases" && e.ns == SOURCE_NS && e.name == LEASE)
        .filter(|e| is_write(&e.verb) && (200..300).contains(&e.code))
        .filter_map(|e| {
            let i = INSTANCES.iter().position(|sa| sa_user(sa) == e.user)?;
            Some((e.done, i))
        })
        .collect();
    t.sort_by(|a, b| a.0.total_cmp(&b.0));
    t
}

/// Why instance `i` did not hold the Lease at `t`, per `timeline`; `None`
/// if it did (see the module's documentation).
fn not_holding(timeline: &[(f64, usize)], i: usize, t: f64) -> Option<String> {
    let last = timeline
        .iter()
        .rev()
        .find(|(at, who)| *who == i && *at <= t)
        .map(|(at, _)| *at);
    let Some(r) = last else {
        return Some("it had never taken the Lease".into());
    };
    if let Some((at, who)) = timeline
        .iter()
        .find(|(at, who)| *who != i && *at > r && *at <= t)
    {
        return Some(format!(
            "{:.3} s after {} took the Lease",
            t - at,
            INSTANCES[*who]
        ));
    }
    if t - r > LEASE_DURATION_S as f64 {
        return Some(format!(
            "{:.3} s after its last Lease write (duration {LEASE_DURATION_S} s)",
            t - r
        ));
    }
    None
}

/// What the audit logs say.
#[derive(Debug, Default, Serialize)]
struct AuditFindings {
    home_writes: [usize; 2],
    home_writes_refused: usize,
    remote_writes: usize,
    vault_writes: [usize; 2],
    lease_takeovers: usize,
    non_leader_writes: usize,
    vault_non_leader_writes: usize,
    not_ours_home: usize,
    not_ours_remote: usize,
    vault_not_ours: usize,
    examples: Vec<String>,
}

impl AuditFindings {
    fn note(&mut self, s: String) {
        if self.examples.len() < 20 {
            self.examples.push(s);
        }
    }
}

/// Vault audit entries (type `request`) of the instances that write.
fn vault_writes(log: &Path, from: f64, to: f64) -> Result<Vec<(f64, usize, String, String)>> {
    let text = std::fs::read(log).with_context(|| format!("read {}", log.display()))?;
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&text).lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if e["type"] != "request" {
            continue;
        }
        let Some(t) = parse_time(&e["time"]) else {
            continue;
        };
        if t < from || t > to {
            continue;
        }
        // Kubernetes auth names the token `kubernetes-<namespace>-<account>`.
        let who = e["auth"]["display_name"].as_str().unwrap_or_default();
        let Some(i) = INSTANCES
            .iter()
            .position(|sa| who.ends_with(&format!("{SOURCE_NS}-{sa}")))
        else {
            continue;
        };
        let op = e["request"]["operation"].as_str().unwrap_or_default();
        let path = e["request"]["path"].as_str().unwrap_or_default();
        if matches!(op, "create" | "update" | "delete" | "patch") && path.starts_with("secret/") {
            out.push((t, i, op.to_string(), path.to_string()));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- the scenario

struct Instance {
    name: &'static str,
    kubeconfig: PathBuf,
    jwt: PathBuf,
    daemon: Daemon,
    restarts: usize,
}

struct Remote {
    cluster: Cluster,
    watch: CopyWatch,
    /// Last: `cp.sh down` after the watch has stopped.
    plane: BenchControlPlane,
}

/// What the background tasks saw.
#[derive(Debug, Default, Serialize)]
struct Samples {
    /// (seconds after the start of the faults, RSS MiB of each instance).
    rss: Vec<(f64, [f64; 2])>,
    /// Lease holder changes as polled: (seconds, holder).
    holders: Vec<(f64, String)>,
}

#[derive(Debug, Default)]
struct Updates {
    ok: usize,
    failed: usize,
}

#[derive(Serialize)]
struct ChaosLog<'a> {
    seed: u64,
    minutes: f64,
    faults: &'a [FaultRecord],
    samples: &'a Samples,
    check: &'a Check,
    audit: &'a AuditFindings,
    vault_audit_gaps_s: f64,
}

struct World<'a> {
    home_dir: PathBuf,
    home_kubeconfig: PathBuf,
    home: &'a Cluster,
    remote: &'a Remote,
    vault: &'a VaultServer,
    specs: &'a [SourceSpec],
    /// Foreign objects (unmanaged, unrelated, forged) per cluster.
    foreign_home: Vec<Foreign>,
    foreign_remote: Vec<Foreign>,
    forged: usize,
    vault_gaps_s: f64,
}

impl World<'_> {
    async fn sources(&self) -> Result<(Vec<Secret>, Vec<ConfigMap>)> {
        let lp = ListParams::default().labels(push_to_k8s::model::vocabulary::SOURCE_SELECTOR);
        let secrets = self.home.secrets(SOURCE_NS).list(&lp).await?.items;
        let cms = self.home.config_maps(SOURCE_NS).list(&lp).await?.items;
        Ok((secrets, cms))
    }

    /// Every copy and entry against its source, and the foreign objects.
    async fn check(&self) -> Result<Check> {
        let mut c = Check::default();
        let (secrets, cms) = self.sources().await?;
        check_cluster(
            &mut c,
            "home",
            &self.home.client,
            (&secrets, &cms),
            &self.foreign_home,
            false,
        )
        .await?;
        check_cluster(
            &mut c,
            REMOTE,
            &self.remote.cluster.client,
            (&secrets, &cms),
            &self.foreign_remote,
            true,
        )
        .await?;
        for s in &secrets {
            let Some(path) = annotation(&s.metadata, PATH_ANNOTATION) else {
                continue;
            };
            let want: BTreeMap<String, String> = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            c.entries_checked += 1;
            match self.vault.data(path).await? {
                None => {
                    c.vault_missing += 1;
                    c.note(format!("Vault entry {path} missing"));
                }
                Some(d) if d != want => {
                    c.vault_stale += 1;
                    c.note(format!("Vault entry {path} differs from its source"));
                }
                Some(_) => {}
            }
        }
        check_foreign(&mut c, "home", &self.home.client, &self.foreign_home).await;
        check_foreign(
            &mut c,
            REMOTE,
            &self.remote.cluster.client,
            &self.foreign_remote,
        )
        .await;
        Ok(c)
    }

    /// Poll [`Self::check`] until it finds nothing; how long that took.
    async fn settle(&self, timeout: Duration) -> Result<(Duration, Check)> {
        let start = Instant::now();
        loop {
            let c = match tokio::time::timeout(Duration::from_secs(60), self.check()).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    println!("bench: chaos: check failed ({e:#}); again");
                    Check {
                        missing: 1,
                        ..Default::default()
                    }
                }
                Err(_) => Check {
                    missing: 1,
                    ..Default::default()
                },
            };
            // Foreign objects changed never come back: not worth waiting for.
            if c.total() == c.foreign_changed || start.elapsed() > timeout {
                return Ok((start.elapsed(), c));
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    async fn apply_home_rbac(&self) -> Result<()> {
        kubectl(
            &self.home_kubeconfig,
            &["apply", "-f", "-"],
            Some(&home_rbac()),
        )
        .await
        .map(|_| ())
    }

    /// Forge copies in the tenant's namespace, home and remote.
    async fn forge(&mut self, specs_names: &[String], rng: &mut Rng) -> Result<String> {
        let mut made = (0, 0);
        for (remote, count) in [(false, FORGE_HOME), (true, FORGE_REMOTE)] {
            let client = if remote {
                &self.remote.cluster.client
            } else {
                &self.home.client
            };
            let api: Api<Secret> = Api::namespaced(client.clone(), TENANT_NS);
            for _ in 0..count {
                let k = self.forged;
                self.forged += 1;
                // Half name a source that does not exist, half a real one
                // that never asks for this name.
                let source = if k.is_multiple_of(2) {
                    format!("{SOURCE_NS}/gone-{k}")
                } else {
                    format!("{SOURCE_NS}/{}", specs_names[rng.below(specs_names.len())])
                };
                let name = format!("forged-{k}");
                let mut annotations = BTreeMap::from([
                    (
                        push_to_k8s::model::vocabulary::SOURCE_ANNOTATION.to_string(),
                        source,
                    ),
                    (
                        push_to_k8s::model::vocabulary::HASH_ANNOTATION.to_string(),
                        format!("forged-{k}"),
                    ),
                ]);
                if remote {
                    annotations.insert(
                        push_to_k8s::model::vocabulary::SOURCE_CLUSTER_ANNOTATION.to_string(),
                        CLUSTER_NAME.to_string(),
                    );
                }
                let s = Secret {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        labels: Some(BTreeMap::from([(
                            push_to_k8s::model::vocabulary::MANAGED_LABEL_KEY.to_string(),
                            push_to_k8s::model::vocabulary::MANAGED_LABEL_VALUE.to_string(),
                        )])),
                        annotations: Some(annotations),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(
                        "token".to_string(),
                        ByteString(format!("tenant-{k}").into_bytes()),
                    )])),
                    ..Default::default()
                };
                let created =
                    tokio::time::timeout(CALL_TIMEOUT, api.create(&PostParams::default(), &s))
                        .await;
                if let Ok(Ok(s)) = created {
                    let f = Foreign {
                        ns: TENANT_NS.into(),
                        name,
                        rv: s.metadata.resource_version.unwrap_or_default(),
                        what: "forged copy",
                    };
                    if remote {
                        made.1 += 1;
                        self.foreign_remote.push(f);
                    } else {
                        made.0 += 1;
                        self.foreign_home.push(f);
                    }
                }
            }
        }
        Ok(format!("{} forged at home, {} in {REMOTE}", made.0, made.1))
    }

    /// Inject `f`, hold it for `hold`, restore it; a note on what was done.
    async fn inject(
        &mut self,
        f: Fault,
        hold: Duration,
        instances: &[Instance],
        rng: &mut Rng,
    ) -> Result<(String, Duration)> {
        let remote_dir = self.remote.plane.state_dir().to_path_buf();
        let home_dir = self.home_dir.clone();
        let timed = |t: Instant| t.elapsed();
        match f {
            Fault::ApiServer | Fault::Etcd | Fault::RemoteKill => {
                let (dir, daemon) = match f {
                    Fault::ApiServer => (&home_dir, "kube-apiserver"),
                    Fault::Etcd => (&home_dir, "etcd"),
                    _ => (&remote_dir, "kube-apiserver"),
                };
                cp(dir, &["kill", daemon]).await?;
                tokio::time::sleep(hold).await;
                let t = Instant::now();
                // Every stopped daemon (kube-apiserver may give up on a
                // missing etcd), in dependency order, until ready.
                cp(dir, &["start"]).await?;
                Ok((format!("{daemon} started again"), timed(t)))
            }
            Fault::RemoteHang => {
                let pid: u32 = std::fs::read_to_string(remote_dir.join("kube-apiserver.pid"))?
                    .trim()
                    .parse()?;
                let stopped = Stopped::new(pid)?;
                tokio::time::sleep(hold).await;
                let t = Instant::now();
                drop(stopped);
                Ok((format!("pid {pid} stopped and continued"), timed(t)))
            }
            Fault::Vault => {
                cp(&home_dir, &["vault-kill"]).await?;
                tokio::time::sleep(hold).await;
                let t = Instant::now();
                cp(&home_dir, &["vault-start"]).await?;
                self.vault.enable_audit().await?;
                let gap = t.elapsed();
                self.vault_gaps_s += gap.as_secs_f64();
                Ok((
                    "started again (empty: dev mode); Kubernetes auth and audit device applied again"
                        .into(),
                    gap,
                ))
            }
            Fault::LeaderFreeze => {
                let leases: Api<Lease> = Api::namespaced(self.home.client.clone(), SOURCE_NS);
                let lease = tokio::time::timeout(CALL_TIMEOUT, leases.get_opt(LEASE)).await;
                let holder = match lease {
                    Ok(Ok(Some(l))) => l.spec.and_then(|s| s.holder_identity),
                    _ => None,
                };
                let Some(i) = holder
                    .as_deref()
                    .and_then(|h| instances.iter().position(|x| x.name == h))
                else {
                    return Ok((format!("no holder to freeze ({holder:?})"), Duration::ZERO));
                };
                let stopped = Stopped::new(instances[i].daemon.pid)?;
                tokio::time::sleep(hold).await;
                let t = Instant::now();
                drop(stopped);
                Ok((format!("{} frozen and thawed", instances[i].name), timed(t)))
            }
            Fault::Rbac => {
                let (kind, name) = if rng.below(2) == 0 {
                    ("clusterrolebinding", "bench-chaos".to_string())
                } else {
                    ("rolebinding", "bench-chaos-leader".to_string())
                };
                kubectl(
                    &self.home_kubeconfig,
                    &["-n", SOURCE_NS, "delete", kind, &name],
                    None,
                )
                .await?;
                tokio::time::sleep(hold).await;
                let t = Instant::now();
                self.apply_home_rbac().await?;
                Ok((format!("{kind} {name} deleted and applied again"), timed(t)))
            }
            Fault::Forge => {
                let names: Vec<String> = self.specs.iter().map(|s| s.name.clone()).collect();
                let note = self.forge(&names, rng).await?;
                Ok((note, Duration::ZERO))
            }
        }
    }

    /// Whatever a failed fault may have left: every daemon of both planes
    /// running, Vault up with its audit device, RBAC in place.
    async fn restore_all(&mut self) -> Result<()> {
        cp(&self.home_dir, &["start"]).await?;
        cp(self.remote.plane.state_dir(), &["start"]).await?;
        cp(&self.home_dir, &["vault-start"]).await?;
        self.vault.enable_audit().await?;
        self.apply_home_rbac().await
    }
}

/// Change a random source every 0.3-1.5 s until `stop`.
async fn update_sources(
    client: kube::Client,
    specs: Vec<(String, Kind)>,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Updates {
    let cluster = Cluster { client };
    let mut rng = Rng::new(seed);
    let mut version: HashMap<String, u64> = HashMap::new();
    let mut u = Updates::default();
    while !stop.load(Ordering::SeqCst) {
        let (name, kind) = &specs[rng.below(specs.len())];
        let v = version.entry(name.clone()).or_insert(0);
        *v += 1;
        let v = *v;
        let done = match kind {
            Kind::Secret => tokio::time::timeout(CALL_TIMEOUT, cluster.update_source(name, v))
                .await
                .map(|r| r.is_ok()),
            Kind::ConfigMap => {
                let p = json!({"data": {"rev": v.to_string()}});
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    cluster.config_maps(SOURCE_NS).patch(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&p),
                    ),
                )
                .await
                .map(|r| r.is_ok())
            }
        };
        if done == Ok(true) {
            u.ok += 1;
        } else {
            u.failed += 1;
        }
        tokio::time::sleep(rng.secs(0.3, 1.5)).await;
    }
    u
}

/// Every second the Lease's holder, every 10 s both instances' RSS.
async fn sample(
    client: kube::Client,
    pids: Arc<Mutex<[u32; 2]>>,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> Samples {
    let leases: Api<Lease> = Api::namespaced(client, SOURCE_NS);
    let mut s = Samples::default();
    let mut tick = 0u64;
    while !stop.load(Ordering::SeqCst) {
        if tick.is_multiple_of(10) {
            let p = *pids.lock().expect("pids");
            let rss = p.map(|pid| status_kib(pid, "VmRSS:") / 1024.0);
            s.rss.push((t0.elapsed().as_secs_f64(), rss));
        }
        if let Ok(Ok(Some(l))) =
            tokio::time::timeout(Duration::from_secs(2), leases.get_opt(LEASE)).await
        {
            let h = l
                .spec
                .and_then(|s| s.holder_identity)
                .unwrap_or_else(|| "(none)".into());
            if s.holders.last().map(|(_, x)| x) != Some(&h) {
                s.holders.push((t0.elapsed().as_secs_f64(), h));
            }
        }
        tick += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    s
}

impl Bench<'_> {
    pub async fn chaos(&mut self) -> Result<()> {
        let (n, s) = (self.p.chaos_ns, self.p.chaos_sources);
        let minutes = self.p.chaos_minutes;
        println!(
            "\n== chaos: {minutes} min of faults, seed {}, 2 instances (Lease {LEASE_DURATION_S}/{RENEW_DEADLINE_S}/{RETRY_PERIOD_S} s), {n} namespaces + {TENANT_NS} in each of 2 clusters, {s} Secret and {} ConfigMap sources, Vault",
            self.p.chaos_seed,
            (s / 4).max(1)
        );
        let remote_dir = BenchControlPlane::dir("-chaos-remote");
        let keep = self.p.keep_cp;
        let plane = tokio::task::spawn_blocking(move || BenchControlPlane::up_at(remote_dir, keep))
            .await
            .context("cp.sh up")??;
        let client = plane.cp.client().await?;
        let cluster = Cluster {
            client: client.clone(),
        };
        cluster.ensure_source_namespace().await?;
        let watch = CopyWatch::start(client).await?;
        cluster.reset(&watch).await?;
        let remote = Remote {
            cluster,
            watch,
            plane,
        };
        let result = self.chaos_run(&remote, n, s).await;
        // Cleanup whatever happened: the registration, both clusters' objects.
        let _ = self
            .cluster
            .secrets(SOURCE_NS)
            .delete(&format!("bench-cluster-{REMOTE}"), &DeleteParams::default())
            .await;
        let reset = self.cluster.reset(&self.watch).await;
        // Left in place only with --keep-cp.
        let _ = remote.cluster.reset(&remote.watch).await;
        for c in [&self.cluster.client, &remote.cluster.client] {
            let _ = Api::<Namespace>::all(c.clone())
                .delete(TENANT_NS, &DeleteParams::default())
                .await;
        }
        let _ = kubectl(
            &self.kubeconfig,
            &[
                "delete",
                "clusterrolebinding,clusterrole",
                "bench-chaos",
                "--ignore-not-found",
            ],
            None,
        )
        .await;
        drop(remote);
        result?;
        reset
    }

    async fn chaos_run(&mut self, remote: &Remote, n: usize, s: usize) -> Result<()> {
        let home_dir = self.cp_dir.clone();
        let minutes = self.p.chaos_minutes;
        let chaos_for = Duration::from_secs_f64(minutes * 60.0);
        // Tokens outlive the run with a margin for the settle.
        let valid = chaos_for + Duration::from_secs(3 * 3600);

        // Namespaces: N targets and the tenant's, in both clusters.
        for c in [&self.cluster, &remote.cluster] {
            c.set_targets(n).await?;
            let api: Api<Namespace> = Api::all(c.client.clone());
            if api.get_metadata_opt(TENANT_NS).await?.is_none() {
                let ns = Namespace {
                    metadata: ObjectMeta {
                        name: Some(TENANT_NS.into()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                api.create(&PostParams::default(), &ns).await?;
            }
        }

        // Identities.
        kubectl(&self.kubeconfig, &["apply", "-f", "-"], Some(&home_rbac())).await?;
        let remote_kc = remote.plane.cp.kubeconfig.clone();
        kubectl(&remote_kc, &["apply", "-f", "-"], Some(&remote_rbac())).await?;
        let vault = VaultServer::start(&home_dir).await?;
        vault.enable_audit().await?;
        for sa in INSTANCES {
            cp(
                &home_dir,
                &[
                    "vault-k8s-auth",
                    "--role",
                    sa,
                    "--prefix",
                    VAULT_PREFIX,
                    sa,
                    SOURCE_NS,
                ],
            )
            .await?;
        }
        let remote_token = token(&remote_kc, REMOTE_SA, valid).await?;
        let remote_ca = std::fs::read(remote.plane.state_dir().join("pki/ca.crt"))?;
        let registration_kc = token_kubeconfig(
            &server_of(remote.plane.state_dir())?,
            &remote_ca,
            &remote_token,
        )?;
        let parsed = kube::config::Kubeconfig::from_yaml(&registration_kc)?;
        push_to_k8s::targets::remote::kubeconfig::check(&parsed)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let home_ca = std::fs::read(home_dir.join("pki/ca.crt"))?;
        let mut identities = Vec::new();
        for sa in INSTANCES {
            let t = token(&self.kubeconfig, sa, valid).await?;
            let kc = private_file(
                &home_dir,
                &format!("chaos-{sa}.kubeconfig"),
                &token_kubeconfig(&server_of(&home_dir)?, &home_ca, &t)?,
            )?;
            let jwt = private_file(&home_dir, &format!("chaos-{sa}.jwt"), &t)?;
            identities.push((sa, kc, jwt));
        }

        // Sources, conflicts, unrelated objects, the registration.
        let cms = (s / 4).max(1);
        let specs: Vec<SourceSpec> = (0..s)
            .map(|i| SourceSpec {
                name: format!("chaos-s{i:02}"),
                kind: Kind::Secret,
                remote: i % 2 == 0,
                vault: i % 3 == 0,
            })
            .chain((0..cms).map(|i| SourceSpec {
                name: format!("chaos-c{i:02}"),
                kind: Kind::ConfigMap,
                remote: i % 2 == 0,
                vault: false,
            }))
            .collect();
        for spec in &specs {
            match spec.kind {
                Kind::Secret => {
                    let mut sec = source_secret(&spec.name, 0);
                    sec.metadata.annotations = annotations(spec);
                    self.cluster
                        .secrets(SOURCE_NS)
                        .create(&PostParams::default(), &sec)
                        .await?;
                }
                Kind::ConfigMap => {
                    self.cluster
                        .config_maps(SOURCE_NS)
                        .create(&PostParams::default(), &config_map_source(spec, 0))
                        .await?;
                }
            }
        }
        let unmanaged = |name: &str| Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(BTreeMap::from([(
                    UNRELATED.0.to_string(),
                    UNRELATED.1.to_string(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                "mine".to_string(),
                ByteString(b"not the controller's".to_vec()),
            )])),
            ..Default::default()
        };
        let mut foreign = [Vec::new(), Vec::new()];
        // A conflict (an unmanaged Secret with a source's name: a remote one
        // too) and unrelated Secrets, in each cluster.
        let conflict = specs[0].name.clone();
        for (i, c) in [&self.cluster, &remote.cluster].into_iter().enumerate() {
            let jobs = [
                (
                    "bench-t0000".to_string(),
                    conflict.clone(),
                    "unmanaged conflict",
                ),
                (
                    TENANT_NS.to_string(),
                    conflict.clone(),
                    "unmanaged conflict",
                ),
                (
                    "bench-t0000".to_string(),
                    "unrelated-chaos-0".into(),
                    "unrelated",
                ),
                (
                    TENANT_NS.to_string(),
                    "unrelated-chaos-1".into(),
                    "unrelated",
                ),
            ];
            for (ns, name, what) in jobs {
                let made = c
                    .secrets(&ns)
                    .create(&PostParams::default(), &unmanaged(&name))
                    .await?;
                foreign[i].push(Foreign {
                    ns,
                    name,
                    rv: made.metadata.resource_version.unwrap_or_default(),
                    what,
                });
            }
        }
        let registration = Secret {
            metadata: ObjectMeta {
                name: Some(format!("bench-cluster-{REMOTE}")),
                labels: Some(BTreeMap::from([(
                    CLUSTER_LABEL.to_string(),
                    REMOTE.to_string(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                KUBECONFIG_KEY.to_string(),
                ByteString(registration_kc.into_bytes()),
            )])),
            ..Default::default()
        };
        self.cluster
            .secrets(SOURCE_NS)
            .create(&PostParams::default(), &registration)
            .await?;

        // The instances.
        let settings = Settings {
            burst: 10,
            sync_interval_min: 2,
        };
        let start_instance = |sa: &str, kc: &Path, jwt: &Path, generation: usize| {
            let jwt = jwt.display().to_string();
            let extra = [
                ("POD_NAME", sa),
                ("LEADER_ELECTION", "true"),
                ("LEASE_NAME", LEASE),
                ("LEASE_NAMESPACE", SOURCE_NS),
                ("LEASE_DURATION_SECONDS", &LEASE_DURATION_S.to_string()),
                (
                    "LEASE_RENEW_DEADLINE_SECONDS",
                    &RENEW_DEADLINE_S.to_string(),
                ),
                ("LEASE_RETRY_PERIOD_SECONDS", &RETRY_PERIOD_S.to_string()),
                ("CLUSTER_NAME", CLUSTER_NAME),
                ("VAULT_ADDR", &vault.addr),
                ("VAULT_ROLE", sa),
                ("VAULT_SA_TOKEN_PATH", &jwt),
                ("VAULT_RATE_LIMIT", "50"),
                ("VAULT_CHECK_INTERVAL_SECONDS", "30"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()));
            let extra: Vec<(&str, &str)> = extra
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let name = if generation == 0 {
                sa.to_string()
            } else {
                format!("{sa}-{generation}")
            };
            println!("bench: starting controller {name}");
            controller::start(&self.bin, kc, &self.logs, &name, &settings, &extra)
        };
        let started_s = now_s();
        let mut instances = Vec::new();
        for (sa, kc, jwt) in &identities {
            let mut daemon = start_instance(sa, kc, jwt, 0)?;
            daemon
                .wait_ready(Duration::from_secs(120), Duration::from_millis(100))
                .await?;
            instances.push(Instance {
                name: sa,
                kubeconfig: kc.clone(),
                jwt: jwt.clone(),
                daemon,
                restarts: 0,
            });
        }
        let mut world = World {
            home_dir: home_dir.clone(),
            home_kubeconfig: self.kubeconfig.clone(),
            home: &self.cluster,
            remote,
            vault: &vault,
            specs: &specs,
            foreign_home: std::mem::take(&mut foreign[0]),
            foreign_remote: std::mem::take(&mut foreign[1]),
            forged: 0,
            vault_gaps_s: 0.0,
        };
        let (took, first) = world.settle(Duration::from_secs(300)).await?;
        self.report.add_note(
            SC,
            "initial convergence (both clusters and Vault)",
            took.as_secs_f64(),
            "s",
            Target::Info,
            &format!("left: {}", first.describe()),
        );
        // Foreign objects changed are reported with the rest at the end.
        if first.total() > first.foreign_changed {
            bail!(
                "not in sync before the faults: {}; {:?}",
                first.describe(),
                first.examples
            );
        }

        // The faults, with updates and sampling beside them.
        let t0 = Instant::now();
        let t0_s = now_s();
        let stop = Arc::new(AtomicBool::new(false));
        let pids = Arc::new(Mutex::new([
            instances[0].daemon.pid,
            instances[1].daemon.pid,
        ]));
        let updater = tokio::spawn(update_sources(
            self.cluster.client.clone(),
            specs.iter().map(|s| (s.name.clone(), s.kind)).collect(),
            self.p.chaos_seed ^ 0x5eed,
            stop.clone(),
        ));
        let sampler = tokio::spawn(sample(
            self.cluster.client.clone(),
            pids.clone(),
            t0,
            stop.clone(),
        ));
        let mut rng = Rng::new(self.p.chaos_seed);
        let mut bag: Vec<Fault> = Vec::new();
        let mut faults: Vec<FaultRecord> = Vec::new();
        let mut exits: Vec<String> = Vec::new();
        let mut fault_error = None;
        while t0.elapsed() < chaos_for {
            tokio::time::sleep(rng.secs(5.0, 15.0)).await;
            if t0.elapsed() >= chaos_for {
                break;
            }
            if bag.is_empty() {
                bag = FAULTS.to_vec();
                // Fisher-Yates.
                for i in (1..bag.len()).rev() {
                    bag.swap(i, rng.below(i + 1));
                }
            }
            let f = bag.pop().expect("a fault");
            let (lo, hi) = f.hold();
            let hold = rng.secs(lo, hi);
            let at_s = t0.elapsed().as_secs_f64();
            println!(
                "bench: chaos {at_s:6.1} s: {} for {:.1} s",
                f.name(),
                hold.as_secs_f64()
            );
            match world.inject(f, hold, &instances, &mut rng).await {
                Ok((note, restore)) => faults.push(FaultRecord {
                    kind: f,
                    at_s,
                    held_s: hold.as_secs_f64(),
                    restore_s: restore.as_secs_f64(),
                    note,
                }),
                Err(e) => {
                    println!("bench: chaos: {} failed: {e:#}", f.name());
                    fault_error = Some(e.context(f.name()));
                    break;
                }
            }
            for (i, inst) in instances.iter_mut().enumerate() {
                if let Some(status) = inst.daemon.exited() {
                    exits.push(format!("{} exited ({status}) at {at_s:.0} s", inst.name));
                    inst.restarts += 1;
                    inst.daemon =
                        start_instance(inst.name, &inst.kubeconfig, &inst.jwt, inst.restarts)?;
                    pids.lock().expect("pids")[i] = inst.daemon.pid;
                }
            }
        }
        let chaos_s = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::SeqCst);
        let updates = updater.await.context("the update task")?;
        world
            .restore_all()
            .await
            .context("restore after the faults")?;
        if let Some(e) = fault_error {
            return Err(e);
        }
        println!(
            "bench: chaos: faults stopped after {chaos_s:.0} s ({} injected); settling",
            faults.len()
        );
        let (settled, _) = world.settle(SETTLE_TIMEOUT).await?;
        // One periodic resync of the leader over the settled state (forged
        // objects, conflicts and all), then the final check.
        let leases: Api<Lease> = Api::namespaced(self.cluster.client.clone(), SOURCE_NS);
        let holder = leases
            .get_opt(LEASE)
            .await?
            .and_then(|l| l.spec?.holder_identity);
        match instances.iter().find(|i| Some(i.name) == holder.as_deref()) {
            Some(leader) => {
                leader
                    .daemon
                    .wait_resync("a resync after the settle")
                    .await?
            }
            None => println!("bench: chaos: no holder after the settle ({holder:?})"),
        }
        let check = world.check().await?;
        let samples = sampler.await.context("the sampler")?;
        for (i, inst) in instances.iter_mut().enumerate() {
            if let Some(status) = inst.daemon.exited() {
                exits.push(format!("{} exited ({status}) after the faults", inst.name));
            }
            let _ = i;
        }

        // Stop the instances, then read the audit logs up to that moment.
        let ended_s = now_s();
        let mut metrics_writes = [0.0; 2];
        for (i, inst) in instances.iter().enumerate() {
            metrics_writes[i] = tokio::time::timeout(
                CALL_TIMEOUT,
                inst.daemon.metric_sum("push_to_k8s_writes_total", &[]),
            )
            .await
            .unwrap_or(f64::NAN);
        }
        for inst in instances {
            let mut d = inst.daemon;
            let _ = d.terminate(controller::STOP_TIMEOUT);
        }
        let audit = analyse(
            &home_dir,
            remote.plane.state_dir(),
            &vault.audit_log,
            started_s,
            ended_s,
            &world,
            &When {
                t0_s,
                faults: &faults,
            },
        )?;
        // The witnesses stay with the results (the planes' state directories go).
        for (from, to) in [
            (home_dir.join("audit.log"), "chaos-home-audit.log"),
            (
                remote.plane.state_dir().join("audit.log"),
                "chaos-remote-audit.log",
            ),
            (vault.audit_log.clone(), "chaos-vault-audit.log"),
        ] {
            if let Err(e) = std::fs::copy(&from, self.logs.join(to)) {
                println!("bench: chaos: could not keep {}: {e}", from.display());
            }
        }

        // The report.
        let r = &mut self.report;
        r.add_note(
            SC,
            "faults injected",
            faults.len() as f64,
            "",
            Target::Info,
            &format!("{chaos_s:.0} s of faults, seed {}", self.p.chaos_seed),
        );
        for kind in FAULTS {
            let of: Vec<&FaultRecord> = faults.iter().filter(|f| f.kind == kind).collect();
            let held: f64 = of.iter().map(|f| f.held_s).sum();
            r.add_note(
                SC,
                &format!("faults: {}", kind.name()),
                of.len() as f64,
                "",
                Target::Info,
                &format!("held {held:.0} s in all"),
            );
        }
        r.add_note(
            SC,
            "source updates (accepted by the API server)",
            updates.ok as f64,
            "",
            Target::Info,
            &format!("{} more refused or timed out during faults", updates.failed),
        );
        r.add_note(
            SC,
            "writes: home, by the instances (audit log)",
            (audit.home_writes[0] + audit.home_writes[1]) as f64,
            "",
            Target::Info,
            &format!(
                "{} {}, {} {}; refused {}; push_to_k8s_writes_total {} and {}",
                INSTANCES[0],
                audit.home_writes[0],
                INSTANCES[1],
                audit.home_writes[1],
                audit.home_writes_refused,
                metrics_writes[0],
                metrics_writes[1]
            ),
        );
        r.add_note(
            SC,
            "writes: remote cluster (its audit log)",
            audit.remote_writes as f64,
            "",
            Target::Info,
            "both instances use the same registration: not attributable to one",
        );
        r.add_note(
            SC,
            "writes: Vault, by the instances (Vault audit log)",
            (audit.vault_writes[0] + audit.vault_writes[1]) as f64,
            "",
            Target::Info,
            &format!(
                "{} {}, {} {}; audit device off {:.1} s in all after Vault restarts",
                INSTANCES[0],
                audit.vault_writes[0],
                INSTANCES[1],
                audit.vault_writes[1],
                world.vault_gaps_s
            ),
        );
        r.add(
            SC,
            "Lease changes of holder (audit log)",
            audit.lease_takeovers as f64,
            "",
            Target::Info,
        );
        r.add_note(
            SC,
            "time to converge after the last fault",
            settled.as_secs_f64(),
            "s",
            Target::AtMost(SETTLE_TIMEOUT.as_secs_f64()),
            "every fault restored first",
        );
        let violations: [(&str, usize, String); 9] = [
            (
                "copies missing or different after the settle",
                check.missing + check.stale,
                format!(
                    "of {} copies at home and {} in {REMOTE}, after a resync: missing {}, different {}",
                    check.copies_checked[0], check.copies_checked[1], check.missing, check.stale
                ),
            ),
            (
                "copies of ours where none is wanted",
                check.strays,
                String::new(),
            ),
            (
                "Vault entries missing or different",
                check.vault_missing + check.vault_stale,
                format!(
                    "of {} entries: missing {}, different {}",
                    check.entries_checked, check.vault_missing, check.vault_stale
                ),
            ),
            (
                "writes by a non-leader (home audit log)",
                audit.non_leader_writes,
                String::new(),
            ),
            (
                "Vault writes by a non-leader (Vault audit log)",
                audit.vault_non_leader_writes,
                String::new(),
            ),
            (
                "writes to objects not ours (home audit log)",
                audit.not_ours_home,
                String::new(),
            ),
            (
                "writes to objects not ours (remote audit log)",
                audit.not_ours_remote,
                String::new(),
            ),
            (
                "foreign objects changed or deleted, or Vault writes outside the sources' paths",
                check.foreign_changed + audit.vault_not_ours,
                format!(
                    "objects {} of {} ({} forged), Vault {}",
                    check.foreign_changed,
                    check.foreign_checked,
                    world.forged,
                    audit.vault_not_ours
                ),
            ),
            ("controller exits", exits.len(), exits.join("; ")),
        ];
        let mut total = 0;
        for (what, count, note) in &violations {
            total += count;
            r.add_note(
                SC,
                &format!("violations: {what}"),
                *count as f64,
                "",
                Target::Exactly(0.0),
                note,
            );
        }
        r.add(
            SC,
            "violations in all",
            total as f64,
            "",
            Target::Exactly(0.0),
        );
        for (i, name) in INSTANCES.iter().enumerate() {
            let series: Vec<f64> = samples
                .rss
                .iter()
                .map(|(_, v)| v[i])
                .filter(|v| v.is_finite())
                .collect();
            let first = series.first().copied().unwrap_or(f64::NAN);
            let last = series.last().copied().unwrap_or(f64::NAN);
            let max = series.iter().copied().fold(f64::NAN, f64::max);
            let bound = first + (first * 0.25).max(16.0);
            r.add_note(
                SC,
                &format!("RSS of {name}: last sample"),
                last,
                "MiB",
                Target::AtMost(bound),
                &format!(
                    "first {first:.1}, highest {max:.1} MiB, {} samples every 10 s; flat: last <= first + max(25 %, 16 MiB)",
                    series.len()
                ),
            );
        }
        for e in check.examples.iter().chain(&audit.examples) {
            println!("bench: chaos: {e}");
        }
        let log = ChaosLog {
            seed: self.p.chaos_seed,
            minutes,
            faults: &faults,
            samples: &samples,
            check: &check,
            audit: &audit,
            vault_audit_gaps_s: world.vault_gaps_s,
        };
        let out = self.logs.parent().unwrap_or(&self.logs).join("chaos.json");
        std::fs::write(&out, serde_json::to_string_pretty(&log)?)?;
        println!("bench: chaos: timeline in {}", out.display());
        Ok(())
    }
}

/// Tells where a moment falls in the run: seconds after the start of the
/// faults, and the last fault injected before it.
struct When<'a> {
    t0_s: f64,
    faults: &'a [FaultRecord],
}

impl When<'_> {
    fn at(&self, t: f64) -> String {
        let rel = t - self.t0_s;
        match self.faults.iter().rev().find(|f| f.at_s <= rel) {
            Some(f) => format!(
                "at {rel:.1} s ({:.1} s after \"{}\" began, held {:.1} s)",
                rel - f.at_s,
                f.kind.name(),
                f.held_s
            ),
            None => format!("at {rel:.1} s"),
        }
    }
}

/// The audit logs against the Lease and the foreign objects.
fn analyse(
    home_dir: &Path,
    remote_dir: &Path,
    vault_log: &Path,
    from: f64,
    to: f64,
    w: &World,
    when: &When,
) -> Result<AuditFindings> {
    let mut a = AuditFindings::default();
    let home = read_audit(home_dir, from, to)?;
    let timeline = lease_timeline(&home);
    a.lease_takeovers = timeline.windows(2).filter(|p| p[0].1 != p[1].1).count();
    let foreign_home: HashSet<(String, String)> =
        w.foreign_home.iter().map(|f| key(&f.ns, &f.name)).collect();
    let foreign_remote: HashSet<(String, String)> = w
        .foreign_remote
        .iter()
        .map(|f| key(&f.ns, &f.name))
        .collect();
    let copies =
        |e: &Audited| (e.resource == "secrets" || e.resource == "configmaps") && is_write(&e.verb);
    for e in home.iter().filter(|e| copies(e)) {
        let Some(i) = INSTANCES.iter().position(|sa| sa_user(sa) == e.user) else {
            continue;
        };
        a.home_writes[i] += 1;
        if !(200..300).contains(&e.code) {
            a.home_writes_refused += 1;
        }
        if let Some(why) = not_holding(&timeline, i, e.received) {
            a.non_leader_writes += 1;
            a.note(format!(
                "home: {} {} {} {}/{} ({}) {} while not holding the Lease: {why}",
                INSTANCES[i],
                e.verb,
                e.resource,
                e.ns,
                e.name,
                e.code,
                when.at(e.received)
            ));
        }
        if e.ns == SOURCE_NS || foreign_home.contains(&key(&e.ns, &e.name)) {
            a.not_ours_home += 1;
            a.note(format!(
                "home: {} {} {} {}/{} ({}): not ours",
                INSTANCES[i], e.verb, e.resource, e.ns, e.name, e.code
            ));
        }
    }
    let remote = read_audit(remote_dir, from, to)?;
    for e in remote
        .iter()
        .filter(|e| copies(e) && e.user == sa_user(REMOTE_SA))
    {
        a.remote_writes += 1;
        if e.ns == SOURCE_NS || foreign_remote.contains(&key(&e.ns, &e.name)) {
            a.not_ours_remote += 1;
            a.note(format!(
                "{REMOTE}: {} {} {}/{} ({}): not ours",
                e.verb, e.resource, e.ns, e.name, e.code
            ));
        }
    }
    let paths: HashSet<String> = w
        .specs
        .iter()
        .filter(|s| s.vault)
        .map(|s| format!("{VAULT_PREFIX}/{}", s.name))
        .collect();
    for (t, i, op, path) in vault_writes(vault_log, from, to)? {
        a.vault_writes[i] += 1;
        if let Some(why) = not_holding(&timeline, i, t) {
            a.vault_non_leader_writes += 1;
            a.note(format!(
                "Vault: {} {op} {path} {} while not holding the Lease: {why}",
                INSTANCES[i],
                when.at(t)
            ));
        }
        // secret/data/<p>, secret/metadata/<p>, secret/delete/<p>, ...
        let entry = path
            .strip_prefix(&format!("{MOUNT}/"))
            .and_then(|p| p.split_once('/'))
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        if !paths.contains(&entry) {
            a.vault_not_ours += 1;
            a.note(format!(
                "Vault: {} {op} {path}: not a source's path",
                INSTANCES[i]
            ));
        }
    }
    Ok(a)
}
