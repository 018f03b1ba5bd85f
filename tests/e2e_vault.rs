//! Issue 10: the Vault KV v2 target (docs/vault.md), end to end against the
//! real control plane and a real Vault (`cp.sh vault-up`: `vault server -dev`
//! on loopback). No mock stands in for either.
//!
//! Every test runs the controller as the chart's ServiceAccount
//! (`push-to-k8s`, in the test's source namespace, with the chart's RBAC as
//! `helm template` renders it) and logs in to Vault with that
//! ServiceAccount's JWT (TokenRequest API) through Kubernetes auth; the
//! role (`cp.sh vault-k8s-auth`, bound to that ServiceAccount) has a policy
//! on `secret/push-to-k8s/*`. Entries are read back with
//! the vault CLI and the root token (`cp.sh vault kv ...`) and compared
//! exactly: data, and the custom metadata that makes an entry ours.
//!
//! Every source targets only the test's namespaces
//! (`push-to-k8s.io/namespaces: <id>-t*`), and every Vault path holds the
//! test's id (`push-to-k8s/<id>/...`), so nothing of one test is seen by
//! another.
//!
//! Tests that stop Vault (`cp.sh vault-kill`) take a guard that starts it
//! again (`cp.sh vault-up`) however they end. Dev mode keeps everything in
//! memory: after a restart every entry is gone and every token invalid, so
//! the controller must log in and write again.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(60);
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/helm/push-to-k8s");
/// The chart's ServiceAccount (and release) name.
const CHART_SA: &str = "push-to-k8s";
/// The KV v2 mount (VAULT_KV_MOUNT's default).
const MOUNT: &str = "secret";
/// What the roles' policy allows (`cp.sh vault-k8s-auth`'s default prefix).
const PREFIX: &str = "push-to-k8s";
/// The Vault role of every test, configured again by each (tests run one
/// at a time): one name, because `cp.sh` records every role it configures
/// and applies them all again at each Vault start.
const ROLE: &str = "e2e-vault";

const VAULT_PATH: &str = "push-to-k8s.io/vault-path";
const KEY_PREFIX: &str = "push-to-k8s.io/vault-key-prefix";
const PRESERVE: &str = "push-to-k8s.io/vault-preserve-on-delete";
const INCLUDE: &str = "push-to-k8s.io/include-keys";
const EXCLUDE: &str = "push-to-k8s.io/exclude-keys";
const ADOPT: &str = "push-to-k8s.io/adopt";

// ---------------------------------------------------------------- Vault

/// The control plane's state directory (Vault's files live there too).
fn state_dir() -> PathBuf {
    control_plane()
        .kubeconfig
        .parent()
        .expect("the kubeconfig lives in the state directory")
        .to_path_buf()
}

/// Start (or reuse) the test Vault. Panics (with cp.sh's output) if it
/// cannot start: the suite never skips.
fn vault_up() {
    cp(&["vault-up"]);
}

fn vault_addr() -> String {
    let path = state_dir().join("vault.addr");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn root_token() -> String {
    std::fs::read_to_string(state_dir().join("vault.token"))
        .expect("vault.token")
        .trim()
        .to_string()
}

/// `cp.sh vault ARGS`: the vault CLI with the root token, whatever it answers.
fn vault_cli(args: &[&str]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(cp_script())
        .arg("vault")
        .args(args)
        .stdin(Stdio::null());
    cmd.output()
        .unwrap_or_else(|e| panic!("run cp.sh vault {args:?}: {e}"))
}

/// `cp.sh vault ARGS` that must succeed; its stdout.
fn vault_ok(args: &[&str]) -> String {
    let out = vault_cli(args);
    assert!(
        out.status.success(),
        "cp.sh vault {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `data` of a `-format=json` answer; `None` when Vault has no value
/// there (the CLI's exit 2 with "No value found").
fn vault_json(args: &[&str]) -> Option<Value> {
    let out = vault_cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(2) && stderr.contains("No value found") {
        return None;
    }
    assert!(
        out.status.success(),
        "cp.sh vault {args:?} failed ({}): {stderr}",
        out.status
    );
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("cp.sh vault {args:?}: not JSON ({e})"));
    Some(v["data"].clone())
}

fn full(path: &str) -> String {
    format!("{MOUNT}/{path}")
}

/// `kv get`: the current version's data and metadata.
fn kv_get(path: &str) -> Option<Value> {
    vault_json(&["kv", "get", "-format=json", &full(path)])
}

/// `kv metadata get`: every version, the custom metadata.
fn kv_metadata(path: &str) -> Option<Value> {
    vault_json(&["kv", "metadata", "get", "-format=json", &full(path)])
}

/// `kv put` by root: a new version with exactly `data`.
fn kv_put(path: &str, data: &[(&str, &str)]) {
    let mut args = vec!["kv".to_string(), "put".into(), full(path)];
    args.extend(data.iter().map(|(k, v)| format!("{k}={v}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    vault_ok(&args);
}

/// An entry as `kv get` shows it.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    /// `None`: the current version is deleted.
    data: Option<BTreeMap<String, String>>,
    version: u64,
    custom: BTreeMap<String, String>,
}

fn strings(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .unwrap_or_else(|| panic!("{k}: not a string: {v}"));
                    (k.clone(), v.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn entry(path: &str) -> Option<Entry> {
    let v = kv_get(path)?;
    Some(Entry {
        data: v["data"].is_object().then(|| strings(&v["data"])),
        version: v["metadata"]["version"].as_u64().expect("a version"),
        custom: strings(&v["metadata"]["custom_metadata"]),
    })
}

/// docs/vault.md's `content-hash`, computed here independently: SHA-256
/// over each key and value, each prefixed by its length (u64, big-endian), hex.
fn content_hash(data: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The `CLUSTER_NAME` [`start`] gives the controller of `source_ns`: the
/// stamp its entries carry (`source-cluster`).
fn cluster_of(source_ns: &str) -> String {
    format!("{source_ns}-cluster")
}

/// Wait until the entry at `path` holds exactly `want`, with custom
/// metadata saying it is ours for source `kind` `source_ns/name`, written
/// by the cluster [`cluster_of`] `source_ns`, at the version it is (and
/// nothing else); the entry.
async fn await_ours(
    path: &str,
    (kind, source_ns, name): (&str, &str, &str),
    want: &[(&str, &str)],
    timeout: Duration,
) -> Entry {
    let source = format!("{source_ns}/{name}");
    await_owned(path, (kind, &source, &cluster_of(source_ns)), want, timeout).await
}

/// Wait until the entry at `path` holds exactly `want`, with custom
/// metadata naming `kind` `source` of `cluster` as its owner at the version
/// it is (and nothing else); the entry.
async fn await_owned(
    path: &str,
    (kind, source, cluster): (&str, &str, &str),
    want: &[(&str, &str)],
    timeout: Duration,
) -> Entry {
    let want = map(want);
    until(
        &format!(
            "Vault entry {MOUNT}/{path} = {:?}, of {kind} {source}",
            want.keys()
        ),
        timeout,
        || async {
            let e = entry(path).ok_or("no entry")?;
            let data = e.data.clone().ok_or("its current version is deleted")?;
            if data != want {
                return Err(format!("data has keys {:?} (other values)", data.keys()));
            }
            let custom = map(&[
                ("managed-by", "push-to-k8s"),
                ("source", source),
                ("source-kind", kind),
                ("source-cluster", cluster),
                ("content-hash", &content_hash(&want)),
                ("version", &e.version.to_string()),
            ]);
            if e.custom != custom {
                return Err(format!(
                    "custom metadata {:?} at version {}",
                    e.custom, e.version
                ));
            }
            Ok(e)
        },
    )
    .await
}

/// Wait until there is no entry (no metadata either) at `path`.
async fn await_no_entry(path: &str) {
    eventually(
        &format!("no Vault entry at {MOUNT}/{path}"),
        WAIT,
        || async { kv_metadata(path).is_none().then_some(()) },
    )
    .await;
}

/// Starts Vault again (`cp.sh vault-up`: same address, same root token, the
/// recorded Kubernetes auth applied again) when dropped, however the test ends.
struct RestoreVault;

impl Drop for RestoreVault {
    fn drop(&mut self) {
        let out = Command::new("bash")
            .arg(cp_script())
            .arg("vault-up")
            .stdin(Stdio::null())
            .output();
        let failure = match out {
            Ok(o) if o.status.success() => return,
            Ok(o) => format!("{}: {}", o.status, String::from_utf8_lossy(&o.stderr)),
            Err(e) => e.to_string(),
        };
        if std::thread::panicking() {
            eprintln!("could not start Vault again: {failure}");
        } else {
            panic!("could not start Vault again: {failure}");
        }
    }
}

// ---------------------------------------------------------------- identity

fn kubectl(args: &[&str]) -> String {
    let mut cmd = Command::new("kubectl");
    cmd.args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig);
    run(cmd)
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::temp_dir().join(unique(name));
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The chart's ServiceAccount `push-to-k8s` in the test's source namespace,
/// with the chart's RBAC (`helm template push-to-k8s --show-only
/// templates/rbac.yaml`, the ClusterRole and its binding renamed after the
/// test so they do not replace deploy.yaml's), a Vault Kubernetes-auth role
/// for it (`cp.sh vault-k8s-auth`), its JWT and a kubeconfig with a token
/// of it.
struct ChartIdentity {
    role: String,
    jwt: String,
    jwt_path: PathBuf,
    kubeconfig: PathBuf,
    _rbac: DeleteClusterRbac,
}

impl ChartIdentity {
    /// The Vault role is [`ROLE`], bound to this test's namespace; `auth`:
    /// more `vault-k8s-auth` options (`--ttl`, ...).
    async fn new(env: &TestEnv, auth: &[&str]) -> ChartIdentity {
        let role = ROLE;
        let rbac = DeleteClusterRbac(env.id.clone());
        let rendered = cp(&[
            "helm",
            "template",
            CHART_SA,
            CHART,
            "--namespace",
            &env.source_ns,
            "--show-only",
            "templates/rbac.yaml",
        ]);
        let yaml = temp_file("push-to-k8s-rbac.yaml", &rendered);
        let docs = kubectl(&[
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            yaml.to_str().unwrap(),
        ]);
        let _ = std::fs::remove_file(&yaml);
        let mut items = Vec::new();
        for doc in serde_json::Deserializer::from_str(&docs).into_iter::<Value>() {
            let mut doc = doc.expect("kubectl's JSON");
            match doc["kind"].as_str() {
                Some("ClusterRole") => doc["metadata"]["name"] = json!(env.id),
                Some("ClusterRoleBinding") => {
                    doc["metadata"]["name"] = json!(env.id);
                    doc["roleRef"]["name"] = json!(env.id);
                }
                _ => {}
            }
            items.push(doc);
        }
        assert!(
            items.iter().any(|d| d["kind"] == "ServiceAccount"
                && d["metadata"]["name"] == CHART_SA
                && d["metadata"]["namespace"] == env.source_ns.as_str()),
            "the chart renders the ServiceAccount {CHART_SA}"
        );
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        let manifest = temp_file("push-to-k8s-rbac.json", &list.to_string());
        kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
        let _ = std::fs::remove_file(&manifest);

        let mut args = vec!["vault-k8s-auth", "--role", role];
        args.extend_from_slice(auth);
        args.extend_from_slice(&[CHART_SA, &env.source_ns]);
        cp(&args);

        // A JWT of the ServiceAccount from the TokenRequest API, as the
        // kubelet would project it into the pod.
        let jwt = kubectl(&[
            "create",
            "token",
            CHART_SA,
            "-n",
            &env.source_ns,
            "--duration=1h",
        ])
        .trim()
        .to_string();
        let jwt_path = temp_file("push-to-k8s-sa-jwt", &jwt);
        let kubeconfig = service_account_kubeconfig(&env.source_ns, CHART_SA);
        ChartIdentity {
            role: role.to_string(),
            jwt,
            jwt_path,
            kubeconfig,
            _rbac: rbac,
        }
    }

    /// The controller's environment: the kubeconfig of the ServiceAccount
    /// and Vault with Kubernetes auth (method, mount and KV mount left at
    /// their defaults), then `extra`.
    fn vars(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars = vec![
            (
                "KUBECONFIG".to_string(),
                self.kubeconfig.display().to_string(),
            ),
            ("VAULT_ADDR".into(), vault_addr()),
            ("VAULT_ROLE".into(), self.role.clone()),
            (
                "VAULT_SA_TOKEN_PATH".into(),
                self.jwt_path.display().to_string(),
            ),
            ("VAULT_RATE_LIMIT".into(), "50".into()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        vars
    }
}

impl Drop for ChartIdentity {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.jwt_path);
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

/// Start the controller for `env` as `who`, with `CLUSTER_NAME`
/// [`cluster_of`] its source namespace and `extra`; wait until ready.
async fn start(env: &TestEnv, who: &ChartIdentity, extra: &[(&str, &str)]) -> Daemon {
    let cluster = cluster_of(&env.source_ns);
    let mut all = vec![("CLUSTER_NAME", cluster.as_str())];
    all.extend_from_slice(extra);
    let vars = who.vars(&all);
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut daemon = Daemon::start(&env.source_ns, &vars);
    // For a look at what a passing run logged.
    daemon.keep_log = std::env::var_os("E2E_VAULT_KEEP_LOGS").is_some();
    if daemon.keep_log {
        eprintln!("controller log: {}", daemon.log.display());
    }
    daemon.await_ready().await;
    daemon
}

/// SIGTERM; the exit status must be 0, and the chart's RBAC was enough.
fn stop(daemon: &mut Daemon) {
    let status = daemon.stop();
    let log = daemon.logs();
    assert!(
        !log.contains("Forbidden"),
        "RBAC denied something:\n{}",
        tail(&log)
    );
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        tail(&daemon.logs())
    );
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(80)..].join("\n")
}

// ---------------------------------------------------------------- sources

/// This test's target namespaces only, plus `extra`.
fn annotations(env: &TestEnv, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut a = map(&[("push-to-k8s.io/namespaces", &format!("{}-t*", env.id))]);
    a.extend(map(extra));
    a
}

fn secret(env: &TestEnv, name: &str, data: &[(&str, &str)], extra: &[(&str, &str)]) -> Secret {
    let mut s = source_secret(name, data);
    s.metadata.annotations = Some(annotations(env, extra));
    s
}

/// A Vault path of this test, inside the roles' policy.
fn path_of(env: &TestEnv, leaf: &str) -> String {
    format!("{PREFIX}/{}/{leaf}", env.id)
}

/// Merge `stringData` into source `name`.
async fn set_values(env: &TestEnv, name: &str, data: &[(&str, &str)]) {
    env.sources()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": map(data)})),
        )
        .await
        .expect("update the source");
}

/// Set (`Some`) or remove (`None`) annotation `key` of source `name`.
async fn annotate(env: &TestEnv, name: &str, key: &str, value: Option<&str>) {
    env.sources()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {key: value}}})),
        )
        .await
        .expect("annotate the source");
}

/// Wait for an Event `reason` of `type_` on source `name` whose note
/// contains `text`; its note.
async fn await_event(env: &TestEnv, name: &str, reason: &str, type_: &str, text: &str) -> String {
    eventually(
        &format!("a {type_} {reason} Event on {name} mentioning {text:?}"),
        WAIT,
        || async {
            env.events_on(name, reason)
                .await
                .into_iter()
                .find(|(t, note)| t == type_ && note.contains(text))
                .map(|(_, note)| note)
        },
    )
    .await
}

/// `push_to_k8s_vault_requests_total` of `op` with a result other than `ok`.
async fn failed_requests(daemon: &Daemon, op: &str) -> f64 {
    let op = format!("op=\"{op}\"");
    let all = daemon
        .metric_sum("push_to_k8s_vault_requests_total", &[&op])
        .await;
    let ok = daemon
        .metric_sum("push_to_k8s_vault_requests_total", &[&op, "result=\"ok\""])
        .await;
    all - ok
}

async fn assert_no_failed_requests(daemon: &Daemon) {
    for op in ["read", "write", "metadata", "delete"] {
        let failed = failed_requests(daemon, op).await;
        assert_eq!(
            failed,
            0.0,
            "failed Vault {op} requests:\n{}",
            vault_metrics(daemon).await
        );
    }
}

/// The controller's `push_to_k8s_vault_*` samples, for a failure message.
async fn vault_metrics(daemon: &Daemon) -> String {
    daemon
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("push_to_k8s_vault"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Wait until metric `name` (with `filters`) is `want`.
async fn await_metric(daemon: &Daemon, name: &str, filters: &[&str], want: f64) {
    until(&format!("{name}{filters:?} = {want}"), WAIT, || async {
        let now = daemon.metric_sum(name, filters).await;
        if now == want {
            Ok(())
        } else {
            Err(format!("{now}"))
        }
    })
    .await;
}

/// A random token for values nobody else could have written.
fn random() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}{:x}", nanos, std::process::id())
}

// ---------------------------------------------------------------- tests

/// Item 1: create, update and delete of annotated sources (a Secret with
/// include/exclude key filters and a key prefix, a ConfigMap without)
/// appear in Vault with exactly the filtered, prefixed values and our
/// custom metadata, while the namespace copies are made as usual (filtered,
/// never prefixed). Changing the filter rewrites the entry; a bad Vault
/// annotation leaves it as it is (an `InvalidAnnotation` Warning; the copies
/// still follow); a changed path moves it; removing the path annotation
/// deletes it (the copies stay); removing the source label or deleting the
/// source deletes both. Every Vault request answered `ok`.
#[tokio::test]
async fn create_update_and_delete_reach_vault_with_key_filters_and_prefix() {
    let _serial = serial();
    vault_up();
    let env = TestEnv::new("vault-crud", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let who = ChartIdentity::new(&env, &[]).await;
    let (db, cfg) = (format!("{}-db", env.id), format!("{}-cfg", env.id));
    let (db_path, cfg_path) = (path_of(&env, "db"), path_of(&env, "cfg"));
    let password = format!("s3cret-{}", random());
    env.add_source(&secret(
        &env,
        &db,
        &[
            ("user", "app"),
            ("password", &password),
            ("debug-token", "x"),
            ("tls.crt", "CERT"),
            ("tls.key", "KEY"),
        ],
        &[
            (VAULT_PATH, &db_path),
            (KEY_PREFIX, "db_"),
            (INCLUDE, "user,password,tls.*"),
            (EXCLUDE, "tls.key"),
        ],
    ))
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.source_ns);
    config_maps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some(cfg.clone()),
                    labels: Some(map(&[(SOURCE_SELECTOR_KEY, "source")])),
                    annotations: Some(annotations(&env, &[(VAULT_PATH, &cfg_path)])),
                    ..Default::default()
                },
                data: Some(map(&[("url", "https://db.example:5432"), ("mode", "ro")])),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let label = format!("{}-label", env.id);
    let label_path = path_of(&env, "label");
    env.add_source(&secret(
        &env,
        &label,
        &[("k", "v")],
        &[(VAULT_PATH, &label_path)],
    ))
    .await;

    let mut daemon = start(&env, &who, &[]).await;
    let secret_id = ("Secret", env.source_ns.as_str(), db.as_str());
    await_ours(
        &label_path,
        ("Secret", env.source_ns.as_str(), label.as_str()),
        &[("k", "v")],
        WAIT,
    )
    .await;
    let config_map_id = ("ConfigMap", env.source_ns.as_str(), cfg.as_str());
    env.await_copies(
        &env.targets,
        &db,
        &[
            ("user", "app"),
            ("password", &password),
            ("tls.crt", "CERT"),
        ],
    )
    .await;
    let e = await_ours(
        &db_path,
        secret_id,
        &[
            ("db_user", "app"),
            ("db_password", &password),
            ("db_tls.crt", "CERT"),
        ],
        WAIT,
    )
    .await;
    assert_eq!(e.version, 1);
    let e = await_ours(
        &cfg_path,
        config_map_id,
        &[("url", "https://db.example:5432"), ("mode", "ro")],
        WAIT,
    )
    .await;
    assert_eq!(e.version, 1);
    for ns in &env.targets {
        let copy: Api<ConfigMap> = Api::namespaced(env.client.clone(), ns);
        eventually(&format!("ConfigMap copy {ns}/{cfg}"), WAIT, || async {
            copy.get_opt(&cfg)
                .await
                .unwrap()
                .filter(|c| {
                    c.data.clone().unwrap_or_default()
                        == map(&[("url", "https://db.example:5432"), ("mode", "ro")])
                })
                .map(|_| ())
        })
        .await;
    }
    let note = await_event(&env, &db, "VaultWritten", "Normal", &full(&db_path)).await;
    assert!(note.contains("version 1"), "{note}");
    await_event(&env, &cfg, "VaultWritten", "Normal", &full(&cfg_path)).await;

    // Update: a new value (and a key the filter keeps out), for exactly a
    // metadata read (whose is the entry now?), a data write and a metadata
    // write.
    let requests = |op: &'static str| {
        let op = format!("op=\"{op}\"");
        let daemon = &daemon;
        async move {
            daemon
                .metric_sum("push_to_k8s_vault_requests_total", &[&op])
                .await
        }
    };
    // Quiet first: the start's look at every source is done.
    until("no Vault work pending", WAIT, || async {
        let n = daemon.metric_sum("push_to_k8s_vault_pending", &[]).await;
        if n == 0.0 {
            Ok(())
        } else {
            Err(format!("{n} pending"))
        }
    })
    .await;
    let before = [
        requests("read").await,
        requests("write").await,
        requests("metadata").await,
    ];
    let rotated = format!("r0tated-{}", random());
    set_values(&env, &db, &[("password", &rotated), ("extra", "no")]).await;
    env.await_copies(
        &env.targets,
        &db,
        &[("user", "app"), ("password", &rotated), ("tls.crt", "CERT")],
    )
    .await;
    let e = await_ours(
        &db_path,
        secret_id,
        &[
            ("db_user", "app"),
            ("db_password", &rotated),
            ("db_tls.crt", "CERT"),
        ],
        WAIT,
    )
    .await;
    assert_eq!(e.version, 2, "one write per change");
    until(
        "exactly a read, a data write and a metadata write for the change",
        WAIT,
        || async {
            let after = [
                requests("read").await,
                requests("write").await,
                requests("metadata").await,
            ];
            let delta = [
                after[0] - before[0],
                after[1] - before[1],
                after[2] - before[2],
            ];
            if delta == [1.0, 1.0, 1.0] {
                Ok(())
            } else {
                Err(format!("read, write, metadata: {delta:?}"))
            }
        },
    )
    .await;

    // A changed filter changes the entry.
    annotate(&env, &db, EXCLUDE, Some("tls.*")).await;
    let e = await_ours(
        &db_path,
        secret_id,
        &[("db_user", "app"), ("db_password", &rotated)],
        WAIT,
    )
    .await;
    assert_eq!(e.version, 3);

    // A bad Vault annotation: the entry stays as it is (one Warning), the
    // copies follow a change made meanwhile.
    let p3 = format!("p3-{}", random());
    annotate(&env, &db, KEY_PREFIX, Some("bad prefix!")).await;
    set_values(&env, &db, &[("password", &p3)]).await;
    env.await_copies(&env.targets, &db, &[("user", "app"), ("password", &p3)])
        .await;
    let note = await_event(&env, &db, "InvalidAnnotation", "Warning", KEY_PREFIX).await;
    eprintln!("InvalidAnnotation: {note}");
    await_metric(
        &daemon,
        "push_to_k8s_invalid_annotations_total",
        &["annotation=\"vault-key-prefix\""],
        1.0,
    )
    .await;
    assert_eq!(entry(&db_path), Some(e), "left as it is");
    annotate(&env, &db, KEY_PREFIX, Some("db_")).await;
    let e = await_ours(
        &db_path,
        secret_id,
        &[("db_user", "app"), ("db_password", &p3)],
        WAIT,
    )
    .await;
    assert_eq!(e.version, 4);

    // A moved path: the new entry written, the old one deleted.
    let moved_path = path_of(&env, "db-moved");
    annotate(&env, &db, VAULT_PATH, Some(&moved_path)).await;
    let e = await_ours(
        &moved_path,
        secret_id,
        &[("db_user", "app"), ("db_password", &p3)],
        WAIT,
    )
    .await;
    assert_eq!(e.version, 1);
    await_no_entry(&db_path).await;
    await_event(&env, &db, "VaultDeleted", "Normal", &full(&db_path)).await;

    // The ConfigMap's path annotation removed: its entry goes, its copies stay.
    config_maps
        .patch(
            &cfg,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {VAULT_PATH: null}}})),
        )
        .await
        .unwrap();
    await_no_entry(&cfg_path).await;
    await_event(&env, &cfg, "VaultDeleted", "Normal", &full(&cfg_path)).await;
    for ns in &env.targets {
        let copy: Api<ConfigMap> = Api::namespaced(env.client.clone(), ns);
        assert!(copy.get_opt(&cfg).await.unwrap().is_some(), "copy in {ns}");
    }

    // The source label removed: no longer a source, entry and copies go.
    env.sources()
        .patch(
            &label,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"labels": {SOURCE_SELECTOR_KEY: null}}})),
        )
        .await
        .unwrap();
    env.await_no_copies(&env.targets, &label).await;
    await_no_entry(&label_path).await;

    // The Secret source deleted: its entry and its copies go.
    env.delete_source(&db).await;
    env.await_no_copies(&env.targets, &db).await;
    await_no_entry(&moved_path).await;
    await_metric(
        &daemon,
        "push_to_k8s_vault_requests_total",
        &["op=\"delete\"", "result=\"ok\""],
        4.0,
    )
    .await;
    await_metric(&daemon, "push_to_k8s_vault_entries", &[], 0.0).await;
    assert_no_failed_requests(&daemon).await;
    assert!(
        daemon
            .metric_sum("push_to_k8s_vault_logins_total", &[])
            .await
            >= 1.0,
        "logged in through Kubernetes auth"
    );
    stop(&mut daemon);
    config_maps
        .delete(&cfg, &DeleteParams::default())
        .await
        .unwrap();
    env.teardown().await;
}

/// Item 2: `vault-preserve-on-delete: "true"` keeps the entry when the
/// source goes, and when its path annotation goes (a `VaultPreserved`
/// Event then says so): same version, same data, no delete request.
#[tokio::test]
async fn preserve_on_delete_keeps_the_entry_when_the_source_goes() {
    let _serial = serial();
    vault_up();
    let env = TestEnv::new("vault-keep", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let who = ChartIdentity::new(&env, &[]).await;
    let (gone, unpathed) = (format!("{}-gone", env.id), format!("{}-unpathed", env.id));
    let (gone_path, unpathed_path) = (path_of(&env, "gone"), path_of(&env, "unpathed"));
    for (name, path) in [(&gone, &gone_path), (&unpathed, &unpathed_path)] {
        env.add_source(&secret(
            &env,
            name,
            &[("k", name)],
            &[(VAULT_PATH, path), (PRESERVE, "true")],
        ))
        .await;
    }
    let mut daemon = start(&env, &who, &[]).await;
    let src = env.source_ns.as_str();
    let kept_gone = await_ours(&gone_path, ("Secret", src, &gone), &[("k", &gone)], WAIT).await;
    let kept_unpathed = await_ours(
        &unpathed_path,
        ("Secret", src, &unpathed),
        &[("k", &unpathed)],
        WAIT,
    )
    .await;
    await_metric(&daemon, "push_to_k8s_vault_entries", &[], 2.0).await;

    env.delete_source(&gone).await;
    env.await_no_copies(&env.targets, &gone).await;
    annotate(&env, &unpathed, VAULT_PATH, None).await;
    let note = await_event(
        &env,
        &unpathed,
        "VaultPreserved",
        "Normal",
        &full(&unpathed_path),
    )
    .await;
    eprintln!("VaultPreserved: {note}");
    // Both are forgotten (no longer managed) ...
    await_metric(&daemon, "push_to_k8s_vault_entries", &[], 0.0).await;
    // ... and left exactly as they were.
    assert_eq!(entry(&gone_path), Some(kept_gone));
    assert_eq!(entry(&unpathed_path), Some(kept_unpathed));
    assert_eq!(
        daemon
            .metric_sum("push_to_k8s_vault_requests_total", &["op=\"delete\""])
            .await,
        0.0
    );
    assert_no_failed_requests(&daemon).await;
    stop(&mut daemon);
    vault_ok(&["kv", "metadata", "delete", &full(&gone_path)]);
    vault_ok(&["kv", "metadata", "delete", &full(&unpathed_path)]);
    env.teardown().await;
}

/// Item 3: entries push-to-k8s did not write — one with someone's custom
/// metadata, one with none — stay
/// byte-identical (`kv get` and `kv metadata get`, versions and times)
/// through start-up, a change of the source and several checks, and the
/// sources get a `VaultConflict` Warning naming `secret/<path>`. With
/// `ALLOW_ADOPTION=true` and `push-to-k8s.io/adopt: "true"` the first is
/// taken over in place (a new version by check-and-set; the old versions
/// kept); an entry push-to-k8s wrote for another source is never adopted.
/// Deleting a source leaves an entry that is not its own.
#[tokio::test]
async fn an_entry_we_did_not_write_stays_byte_identical_and_is_reported() {
    let _serial = serial();
    vault_up();
    let env = TestEnv::new("vault-conflict", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let who = ChartIdentity::new(&env, &[]).await;
    let (tagged, bare, other) = (
        format!("{}-tagged", env.id),
        format!("{}-bare", env.id),
        format!("{}-other", env.id),
    );
    let (tagged_path, bare_path) = (path_of(&env, "tagged"), path_of(&env, "bare"));
    kv_put(&tagged_path, &[("k", "theirs")]);
    vault_ok(&[
        "kv",
        "metadata",
        "put",
        "-custom-metadata=owner=team-a",
        &full(&tagged_path),
    ]);
    kv_put(&bare_path, &[("k", "theirs-too")]);
    let snapshot = |path: &str| (kv_get(path), kv_metadata(path));
    let (tagged_before, bare_before) = (snapshot(&tagged_path), snapshot(&bare_path));
    assert!(tagged_before.0.is_some() && bare_before.0.is_some());

    env.add_source(&secret(
        &env,
        &tagged,
        &[("k", "ours")],
        &[(VAULT_PATH, &tagged_path)],
    ))
    .await;
    env.add_source(&secret(
        &env,
        &bare,
        &[("k", "ours")],
        &[(VAULT_PATH, &bare_path)],
    ))
    .await;
    let mut daemon = start(
        &env,
        &who,
        &[
            ("ALLOW_ADOPTION", "true"),
            ("VAULT_CHECK_INTERVAL_SECONDS", "5"),
        ],
    )
    .await;
    env.await_copies(&env.targets, &tagged, &[("k", "ours")])
        .await;
    env.await_copies(&env.targets, &bare, &[("k", "ours")])
        .await;
    for (name, path) in [(&tagged, &tagged_path), (&bare, &bare_path)] {
        let note = await_event(&env, name, "VaultConflict", "Warning", &full(path)).await;
        assert!(note.contains("not written by push-to-k8s"), "{note}");
    }
    await_metric(&daemon, "push_to_k8s_vault_conflicts", &[], 2.0).await;

    // A change of the source plans it again; then at least two checks.
    set_values(&env, &tagged, &[("k", "ours-2")]).await;
    env.await_copies(&env.targets, &tagged, &[("k", "ours-2")])
        .await;
    let reads = || {
        daemon.metric_sum(
            "push_to_k8s_vault_requests_total",
            &["op=\"read\"", "result=\"ok\""],
        )
    };
    let before = reads().await;
    // Per check: each entry's metadata (never the data).
    until("two more checks of both entries", WAIT, || async {
        let now = reads().await;
        if now >= before + 4.0 {
            Ok(())
        } else {
            Err(format!("{} reads since", now - before))
        }
    })
    .await;
    assert_eq!(
        snapshot(&tagged_path),
        tagged_before,
        "the tagged entry changed"
    );
    assert_eq!(snapshot(&bare_path), bare_before, "the bare entry changed");
    for op in ["write", "metadata", "delete"] {
        assert_eq!(
            daemon
                .metric_sum(
                    "push_to_k8s_vault_requests_total",
                    &[&format!("op=\"{op}\"")]
                )
                .await,
            0.0,
            "{op} requests"
        );
    }
    assert_eq!(
        env.events_on(&tagged, "VaultConflict").await.len(),
        1,
        "one Event per change, not one per check"
    );

    // Adoption asked (and allowed): taken over in place.
    annotate(&env, &tagged, ADOPT, Some("true")).await;
    let src = env.source_ns.as_str();
    let adopted = await_ours(
        &tagged_path,
        ("Secret", src, &tagged),
        &[("k", "ours-2")],
        WAIT,
    )
    .await;
    assert_eq!(adopted.version, 2, "a new version on top of theirs");
    let first = vault_json(&[
        "kv",
        "get",
        "-format=json",
        "-version=1",
        &full(&tagged_path),
    ])
    .expect("version 1");
    assert_eq!(
        strings(&first["data"]),
        map(&[("k", "theirs")]),
        "history kept"
    );
    await_event(&env, &tagged, "VaultAdopted", "Normal", &full(&tagged_path)).await;
    await_metric(&daemon, "push_to_k8s_vault_conflicts", &[], 1.0).await;

    // Another source asking for the same path, adoption or not: never.
    env.add_source(&secret(
        &env,
        &other,
        &[("k", "other")],
        &[(VAULT_PATH, &tagged_path), (ADOPT, "true")],
    ))
    .await;
    let note = await_event(
        &env,
        &other,
        "VaultConflict",
        "Warning",
        &full(&tagged_path),
    )
    .await;
    assert!(
        note.contains(&format!("written by push-to-k8s for Secret {src}/{tagged}")),
        "{note}"
    );
    await_metric(&daemon, "push_to_k8s_vault_conflicts", &[], 2.0).await;
    assert_eq!(entry(&tagged_path), Some(adopted.clone()));

    // Sources deleted: what is not theirs stays.
    env.delete_source(&other).await;
    env.delete_source(&bare).await;
    await_metric(&daemon, "push_to_k8s_vault_conflicts", &[], 0.0).await;
    assert_eq!(entry(&tagged_path), Some(adopted));
    assert_eq!(snapshot(&bare_path), bare_before, "the bare entry changed");
    assert_eq!(
        daemon
            .metric_sum("push_to_k8s_vault_requests_total", &["op=\"delete\""])
            .await,
        0.0
    );
    // The adopted one is ours now: it goes with its source.
    env.delete_source(&tagged).await;
    await_no_entry(&tagged_path).await;
    assert_no_failed_requests(&daemon).await;
    stop(&mut daemon);
    vault_ok(&["kv", "metadata", "delete", &full(&bare_path)]);
    env.teardown().await;
}

/// Item 4: an entry edited in Vault (`kv put` by root), soft-deleted
/// (`kv delete`: its current version) or deleted (`kv metadata delete`) is
/// restored by the next check (`VAULT_CHECK_INTERVAL_SECONDS=5`), each
/// within 30 s, with exactly the source's values and our metadata. One
/// whose custom metadata someone replaced is theirs from then on: a
/// `VaultConflict`, and it stays byte-identical through a change of the
/// source, checks, and the source's deletion.
#[tokio::test]
async fn entries_edited_or_deleted_in_vault_are_restored() {
    let _serial = serial();
    vault_up();
    let env = TestEnv::new("vault-restore", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let who = ChartIdentity::new(&env, &[]).await;
    let name = format!("{}-db", env.id);
    let path = path_of(&env, "db");
    let value = format!("v-{}", random());
    let want = [("password", value.as_str()), ("user", "app")];
    env.add_source(&secret(&env, &name, &want, &[(VAULT_PATH, &path)]))
        .await;
    let mut daemon = start(&env, &who, &[("VAULT_CHECK_INTERVAL_SECONDS", "5")]).await;
    let id = ("Secret", env.source_ns.as_str(), name.as_str());
    let e = await_ours(&path, id, &want, WAIT).await;
    assert_eq!(e.version, 1);
    let bound = Duration::from_secs(30);

    kv_put(&path, &[("password", "tampered")]);
    let edited = Instant::now();
    let e = await_ours(&path, id, &want, bound).await;
    eprintln!("edited entry restored in {:?}", edited.elapsed());
    assert_eq!(e.version, 3, "restored by check-and-set over version 2");

    vault_ok(&["kv", "delete", &full(&path)]);
    let deleted = Instant::now();
    let e = await_ours(&path, id, &want, bound).await;
    eprintln!("soft-deleted entry restored in {:?}", deleted.elapsed());
    assert_eq!(e.version, 4);

    vault_ok(&["kv", "metadata", "delete", &full(&path)]);
    let destroyed = Instant::now();
    let e = await_ours(&path, id, &want, bound).await;
    eprintln!("deleted entry recreated in {:?}", destroyed.elapsed());
    assert_eq!(e.version, 1, "a new entry");

    assert_eq!(failed_requests(&daemon, "write").await, 0.0);
    assert_eq!(failed_requests(&daemon, "metadata").await, 0.0);

    // Someone claims it (its custom metadata replaced): not ours any more,
    // so never restored, rewritten or deleted.
    vault_ok(&[
        "kv",
        "metadata",
        "put",
        "-custom-metadata=owner=team-b",
        &full(&path),
    ]);
    let claimed = (kv_get(&path), kv_metadata(&path));
    let note = await_event(&env, &name, "VaultConflict", "Warning", &full(&path)).await;
    assert!(note.contains("not written by push-to-k8s"), "{note}");
    set_values(&env, &name, &[("password", "after-the-claim")]).await;
    env.await_copies(
        &env.targets,
        &name,
        &[("password", "after-the-claim"), ("user", "app")],
    )
    .await;
    let reads = || {
        daemon.metric_sum(
            "push_to_k8s_vault_requests_total",
            &["op=\"read\"", "result=\"ok\""],
        )
    };
    let before = reads().await;
    until("two more checks", WAIT, || async {
        let now = reads().await;
        if now >= before + 2.0 {
            Ok(())
        } else {
            Err(format!("{} reads since", now - before))
        }
    })
    .await;
    env.delete_source(&name).await;
    await_metric(&daemon, "push_to_k8s_vault_conflicts", &[], 0.0).await;
    assert_eq!(
        (kv_get(&path), kv_metadata(&path)),
        claimed,
        "the claimed entry changed"
    );
    assert_eq!(
        daemon
            .metric_sum("push_to_k8s_vault_requests_total", &["op=\"delete\""])
            .await,
        0.0
    );
    stop(&mut daemon);
    vault_ok(&["kv", "metadata", "delete", &full(&path)]);
    env.teardown().await;
}

/// Item 5: the controller logs in with the chart's ServiceAccount through
/// Kubernetes auth, and a token that expires is replaced before it does:
/// with a role whose tokens live 4 s (`--ttl 4s --max-ttl 8s`), the source
/// changes every ~2 s for ~25 s; every value arrives (one version each),
/// no request is refused (no `status=403` in the debug log, no Vault
/// request with a result other than `ok`), and there were more than two
/// logins.
#[tokio::test]
async fn an_expiring_vault_token_is_replaced_without_a_failed_write() {
    let _serial = serial();
    vault_up();
    let env = TestEnv::new("vault-renew", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let who = ChartIdentity::new(&env, &["--ttl", "4s", "--max-ttl", "8s"]).await;
    // The role is what the test needs: a login there gives a 4 s token.
    let login = vault_ok(&[
        "write",
        "-format=json",
        "auth/kubernetes/login",
        &format!("role={}", who.role),
        &format!("jwt=@{}", who.jwt_path.display()),
    ]);
    let login: Value = serde_json::from_str(&login).unwrap();
    assert_eq!(
        login["auth"]["lease_duration"], 4,
        "{}",
        login["auth"]["lease_duration"]
    );

    let name = format!("{}-db", env.id);
    let path = path_of(&env, "db");
    env.add_source(&secret(&env, &name, &[("v", "0")], &[(VAULT_PATH, &path)]))
        .await;
    let mut daemon = start(&env, &who, &[("RUST_LOG", "push_to_k8s=debug")]).await;
    let id = ("Secret", env.source_ns.as_str(), name.as_str());
    await_ours(&path, id, &[("v", "0")], WAIT).await;

    let began = Instant::now();
    let mut n = 0;
    while began.elapsed() < Duration::from_secs(25) {
        n += 1;
        let round = Instant::now();
        let value = format!("{n}-{}", random());
        set_values(&env, &name, &[("v", &value)]).await;
        let e = await_ours(&path, id, &[("v", &value)], Duration::from_secs(30)).await;
        assert_eq!(e.version, n + 1, "one version per value");
        if let Some(rest) = Duration::from_secs(2).checked_sub(round.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
    eprintln!("{n} values in {:?}", began.elapsed());
    assert!(n >= 6, "only {n} rounds in 25 s");
    let logins = daemon
        .metric_sum("push_to_k8s_vault_logins_total", &[])
        .await;
    eprintln!("{logins} logins");
    assert!(logins > 2.0, "{logins} logins in 25 s of 4 s tokens");
    assert_eq!(failed_requests(&daemon, "write").await, 0.0);
    assert_eq!(failed_requests(&daemon, "metadata").await, 0.0);
    assert_no_failed_requests(&daemon).await;
    let log = daemon.logs();
    let requests: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("vault request"))
        .collect();
    assert!(
        requests.len() as u64 >= 2 * n,
        "the debug log shows each Vault request"
    );
    let refused: Vec<&&str> = requests
        .iter()
        .filter(|l| l.contains("status=403") || l.contains("vault request failed"))
        .collect();
    assert!(
        refused.is_empty(),
        "refused or failed Vault requests:\n{refused:#?}"
    );
    env.delete_source(&name).await;
    await_no_entry(&path).await;
    stop(&mut daemon);
    env.teardown().await;
}

/// Item 6: Vault killed mid-run. Namespace copies keep flowing (two
/// changes reach every copy), `/readyz` stays 200 and says `vault
/// degraded`, `push_to_k8s_vault_up` is 0 and the source gets a
/// `VaultFailed` Warning. A source created meanwhile waits too. Vault
/// started again (`cp.sh vault-start`: empty, the recorded Kubernetes auth
/// applied again, every token gone): the controller logs in again and both
/// entries hold the latest values; `/readyz` drops the note, and a later
/// change is written as usual.
#[tokio::test]
async fn vault_down_leaves_namespace_copies_flowing_and_nothing_is_lost() {
    let _serial = serial();
    vault_up();
    let env = TestEnv::new("vault-outage", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let who = ChartIdentity::new(&env, &[]).await;
    let (name, late) = (format!("{}-db", env.id), format!("{}-late", env.id));
    let (path, late_path) = (path_of(&env, "db"), path_of(&env, "late"));
    env.add_source(&secret(&env, &name, &[("v", "1")], &[(VAULT_PATH, &path)]))
        .await;
    let _restore = RestoreVault;
    let mut daemon = start(&env, &who, &[("VAULT_CHECK_INTERVAL_SECONDS", "5")]).await;
    let src = env.source_ns.as_str();
    let id = ("Secret", src, name.as_str());
    await_ours(&path, id, &[("v", "1")], WAIT).await;
    env.await_copies(&env.targets, &name, &[("v", "1")]).await;
    await_metric(&daemon, "push_to_k8s_vault_up", &[], 1.0).await;

    cp(&["vault-kill"]);
    let down = Instant::now();
    set_values(&env, &name, &[("v", "2")]).await;
    env.await_copies(&env.targets, &name, &[("v", "2")]).await;
    eprintln!("copies updated {:?} after Vault went down", down.elapsed());
    let body = until("/readyz 200 saying vault degraded", WAIT, || async {
        match daemon.readyz().await {
            Some((200, body)) if body.contains("vault degraded") => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eprintln!("/readyz while Vault is down: {}", body.trim());
    assert!(body.starts_with("ok"), "{body}");
    assert_eq!(daemon.metric_sum("push_to_k8s_vault_up", &[]).await, 0.0);
    await_event(&env, &name, "VaultFailed", "Warning", &full(&path)).await;
    set_values(&env, &name, &[("v", "3")]).await;
    env.add_source(&secret(
        &env,
        &late,
        &[("v", "late")],
        &[(VAULT_PATH, &late_path)],
    ))
    .await;
    env.await_copies(&env.targets, &name, &[("v", "3")]).await;
    env.await_copies(&env.targets, &late, &[("v", "late")])
        .await;
    assert!(matches!(daemon.readyz().await, Some((200, _))));
    assert!(matches!(daemon.healthz().await, Some((200, _))));

    cp(&["vault-start"]);
    // vault-start applied the recorded role again (nothing re-run here).
    vault_ok(&["read", &format!("auth/kubernetes/role/{}", who.role)]);
    let up = Instant::now();
    let e = await_ours(&path, id, &[("v", "3")], WAIT).await;
    assert_eq!(e.version, 1, "written again into the empty Vault");
    await_ours(&late_path, ("Secret", src, &late), &[("v", "late")], WAIT).await;
    eprintln!("entries back {:?} after Vault did", up.elapsed());
    until("/readyz without the note", WAIT, || async {
        match daemon.readyz().await {
            Some((200, body)) if !body.contains("vault degraded") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(daemon.metric_sum("push_to_k8s_vault_up", &[]).await, 1.0);
    set_values(&env, &name, &[("v", "4")]).await;
    let e = await_ours(&path, id, &[("v", "4")], WAIT).await;
    assert_eq!(e.version, 2);
    env.await_copies(&env.targets, &name, &[("v", "4")]).await;
    stop(&mut daemon);
    vault_ok(&["kv", "metadata", "delete", &full(&path)]);
    vault_ok(&["kv", "metadata", "delete", &full(&late_path)]);
    env.teardown().await;
}

/// docs/vault.md, "Vault down or refusing": a login Vault refuses (the
/// controller's `VAULT_ROLE` does not exist yet) holds the Vault entries
/// only: the namespace copies are made, `/readyz` stays 200 and says
/// `vault degraded`, `push_to_k8s_vault_up` is 0, the source gets a
/// `VaultFailed` Warning naming the path. Once the role exists, the next
/// retry or check logs in and writes, and the note and the gauge clear.
#[tokio::test]
async fn a_refused_login_degrades_vault_only_until_the_role_exists() {
    let _serial = serial();
    vault_up();
    let env = TestEnv::new("vault-login", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let who = ChartIdentity::new(&env, &[]).await;
    let missing = "e2e-vault-login-later";
    // A role of that name from an earlier run must not exist.
    vault_ok(&["delete", &format!("auth/kubernetes/role/{missing}")]);
    let _ = std::fs::remove_file(state_dir().join("vault.k8s-auth").join(missing));
    let name = format!("{}-db", env.id);
    let path = path_of(&env, "db");
    env.add_source(&secret(&env, &name, &[("v", "1")], &[(VAULT_PATH, &path)]))
        .await;
    let mut daemon = start(
        &env,
        &who,
        &[
            ("VAULT_ROLE", missing),
            ("VAULT_CHECK_INTERVAL_SECONDS", "5"),
        ],
    )
    .await;
    env.await_copies(&env.targets, &name, &[("v", "1")]).await;
    let note = await_event(&env, &name, "VaultFailed", "Warning", &full(&path)).await;
    eprintln!("VaultFailed: {note}");
    assert!(note.contains("login"), "{note}");
    assert!(
        daemon
            .metric_sum("push_to_k8s_vault_requests_total", &["result=\"login\""])
            .await
            >= 1.0
    );
    assert_eq!(kv_metadata(&path), None);
    let body = until("/readyz 200 saying vault degraded", WAIT, || async {
        match daemon.readyz().await {
            Some((200, body)) if body.contains("vault degraded") => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eprintln!("/readyz while the login is refused: {}", body.trim());
    await_metric(&daemon, "push_to_k8s_vault_up", &[], 0.0).await;
    set_values(&env, &name, &[("v", "2")]).await;
    env.await_copies(&env.targets, &name, &[("v", "2")]).await;

    cp(&[
        "vault-k8s-auth",
        "--role",
        missing,
        CHART_SA,
        &env.source_ns,
    ]);
    let id = ("Secret", env.source_ns.as_str(), name.as_str());
    await_ours(&path, id, &[("v", "2")], WAIT).await;
    until("/readyz without the note", WAIT, || async {
        match daemon.readyz().await {
            Some((200, body)) if !body.contains("vault degraded") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    await_metric(&daemon, "push_to_k8s_vault_up", &[], 1.0).await;
    env.delete_source(&name).await;
    await_no_entry(&path).await;
    stop(&mut daemon);
    vault_ok(&["delete", &format!("auth/kubernetes/role/{missing}")]);
    let _ = std::fs::remove_file(state_dir().join("vault.k8s-auth").join(missing));
    env.teardown().await;
}

/// Standard base64 (with padding), as a Secret's value is in JSON.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Item 7: at `RUST_LOG=trace`, through a write, an update, refusals (a
/// path outside the role's policy: its read refused; a path it may read but
/// not write: the write with the value refused), a conflict
/// with an entry we did not write, a non-UTF-8 value (an
/// `InvalidAnnotation`; its copies still made) and Vault down and back, no
/// value appears in the controller's output, raw or base64 (nor as a byte
/// list), nor in its Events or metrics; neither do the ServiceAccount JWT,
/// the root token or any Vault token (`hvs.`).
#[tokio::test]
async fn no_value_reaches_the_log_at_trace_level() {
    let _serial = serial();
    vault_up();
    let env = TestEnv::new("vault-quiet", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let who = ChartIdentity::new(&env, &[]).await;
    let r = random();
    let value = |what: &str| format!("v4lue-{r}-{what}");
    let (ok, denied, unwritable, conflict, binary) = (
        format!("{}-ok", env.id),
        format!("{}-denied", env.id),
        format!("{}-unwritable", env.id),
        format!("{}-conflict", env.id),
        format!("{}-binary", env.id),
    );
    let ok_path = path_of(&env, "ok");
    // Outside the role's policy: its metadata read is refused.
    let denied_path = format!("outside-{}/denied", env.id);
    // Its metadata readable and writable, its data not (the policy gets a
    // rule for it below): the refused request is the data write, the value
    // in its body (after the create's `pending` mark, which holds none).
    let unwritable_path = format!("readonly-{}/entry", env.id);
    let conflict_path = path_of(&env, "theirs");
    let binary_path = path_of(&env, "binary");
    let mut values: Vec<Vec<u8>> = Vec::new();
    let mut text = |what: &str| {
        let v = value(what);
        values.push(v.clone().into_bytes());
        v
    };
    let (ok_1, ok_2, ok_down) = (text("ok-1"), text("ok-2"), text("ok-down"));
    let (denied_v, conflict_v, theirs_v) = (text("denied"), text("conflict"), text("theirs"));
    let unwritable_v = text("unwritable");
    let binary_text = text("bin-text");
    let mut blob = value("bin-blob").into_bytes();
    blob.extend_from_slice(&[0xff, 0xfe, 0x00, 0x80]);
    values.push(blob.clone());

    let policy = vault_ok(&["policy", "read", &who.role]);
    let policy = format!(
        "{policy}\npath \"{MOUNT}/metadata/readonly-{}/*\" {{\n  capabilities = [\"read\", \"create\", \"update\", \"delete\"]\n}}\n",
        env.id
    );
    let policy_file = temp_file("push-to-k8s-policy.hcl", &policy);
    vault_ok(&["policy", "write", &who.role, policy_file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&policy_file);
    kv_put(&conflict_path, &[("password", &theirs_v)]);
    env.add_source(&secret(
        &env,
        &unwritable,
        &[("password", &unwritable_v)],
        &[(VAULT_PATH, &unwritable_path)],
    ))
    .await;
    env.add_source(&secret(
        &env,
        &ok,
        &[("password", &ok_1)],
        &[(VAULT_PATH, &ok_path)],
    ))
    .await;
    env.add_source(&secret(
        &env,
        &denied,
        &[("password", &denied_v)],
        &[(VAULT_PATH, &denied_path)],
    ))
    .await;
    env.add_source(&secret(
        &env,
        &conflict,
        &[("password", &conflict_v)],
        &[(VAULT_PATH, &conflict_path)],
    ))
    .await;
    let mut bin = secret(&env, &binary, &[], &[(VAULT_PATH, &binary_path)]);
    bin.data = Some(BTreeMap::from([
        ("blob".to_string(), ByteString(blob.clone())),
        (
            "password".to_string(),
            ByteString(binary_text.clone().into_bytes()),
        ),
    ]));
    env.add_source(&bin).await;

    let _restore = RestoreVault;
    let mut daemon = start(
        &env,
        &who,
        &[("RUST_LOG", "trace"), ("VAULT_CHECK_INTERVAL_SECONDS", "5")],
    )
    .await;
    let src = env.source_ns.as_str();
    await_ours(&ok_path, ("Secret", src, &ok), &[("password", &ok_1)], WAIT).await;
    set_values(&env, &ok, &[("password", &ok_2)]).await;
    await_ours(&ok_path, ("Secret", src, &ok), &[("password", &ok_2)], WAIT).await;
    let note = await_event(&env, &denied, "VaultFailed", "Warning", &full(&denied_path)).await;
    eprintln!("VaultFailed: {note}");
    assert!(
        daemon
            .metric_sum(
                "push_to_k8s_vault_requests_total",
                &["result=\"permission_denied\""]
            )
            .await
            >= 1.0
    );
    assert_eq!(kv_metadata(&denied_path), None);
    await_event(
        &env,
        &unwritable,
        "VaultFailed",
        "Warning",
        &full(&unwritable_path),
    )
    .await;
    assert!(
        daemon
            .metric_sum(
                "push_to_k8s_vault_requests_total",
                &["op=\"write\"", "result=\"permission_denied\""]
            )
            .await
            >= 1.0,
        "a refused write:\n{}",
        vault_metrics(&daemon).await
    );
    // Only our mark: no version.
    let mark = kv_metadata(&unwritable_path).expect("the create's mark");
    assert_eq!(mark["current_version"], 0, "{mark}");
    assert!(mark["custom_metadata"]["pending"].is_string(), "{mark}");
    await_event(
        &env,
        &conflict,
        "VaultConflict",
        "Warning",
        &full(&conflict_path),
    )
    .await;
    let note = await_event(&env, &binary, "InvalidAnnotation", "Warning", "blob").await;
    eprintln!("InvalidAnnotation: {note}");
    assert_eq!(
        daemon
            .metric_sum(
                "push_to_k8s_invalid_annotations_total",
                &["annotation=\"vault-value-not-text\""]
            )
            .await,
        1.0
    );
    assert_eq!(kv_metadata(&binary_path), None, "nothing written for it");
    let copy = eventually("the binary source's copy", WAIT, || async {
        env.copy(&env.targets[0], &binary).await
    })
    .await;
    assert_eq!(copy.data, bin.data, "its copy holds the exact bytes");

    cp(&["vault-kill"]);
    set_values(&env, &ok, &[("password", &ok_down)]).await;
    env.await_copies(&env.targets, &ok, &[("password", &ok_down)])
        .await;
    await_event(&env, &ok, "VaultFailed", "Warning", &full(&ok_path)).await;
    cp(&["vault-start"]);
    await_ours(
        &ok_path,
        ("Secret", src, &ok),
        &[("password", &ok_down)],
        WAIT,
    )
    .await;
    // The entry in the conflict's way went with Vault's memory: written now.
    await_ours(
        &conflict_path,
        ("Secret", src, &conflict),
        &[("password", &conflict_v)],
        WAIT,
    )
    .await;

    let metrics = daemon.metrics().await;
    let mut notes = String::new();
    for name in [&ok, &denied, &unwritable, &conflict, &binary] {
        for reason in [
            "VaultWritten",
            "VaultFailed",
            "VaultConflict",
            "InvalidAnnotation",
        ] {
            for (_, note) in env.events_on(name, reason).await {
                notes.push_str(&note);
                notes.push('\n');
            }
        }
    }
    assert!(!notes.is_empty(), "the sources have Events");
    stop(&mut daemon);
    let log = daemon.logs();
    assert!(
        log.contains(" TRACE ") && log.contains("vault request"),
        "the controller did not log at trace level:\n{}",
        tail(&log)
    );
    eprintln!("trace log: {} lines", log.lines().count());
    let mut needles: Vec<String> = Vec::new();
    for v in &values {
        if let Ok(s) = std::str::from_utf8(v) {
            needles.push(s.to_string());
        }
        let b64 = base64(v);
        needles.push(b64.trim_end_matches('=').to_string());
        needles.push(v.iter().map(u8::to_string).collect::<Vec<_>>().join(", "));
    }
    // The distinctive text of the binary value, however it is rendered.
    needles.push(value("bin-blob"));
    // The random part every value shares.
    needles.push(r.clone());
    let kubeconfig = std::fs::read_to_string(&who.kubeconfig).unwrap();
    let api_token = kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .expect("the kubeconfig's token")
        .to_string();
    let mut secrets = vec![who.jwt.clone(), api_token, root_token(), "hvs.".to_string()];
    secrets.extend(needles);
    for (what, text) in [("log", &log), ("Events", &notes), ("metrics", &metrics)] {
        for needle in &secrets {
            if let Some(at) = text.find(needle.as_str()) {
                let line = text[..at].rsplit('\n').next().unwrap_or("").len();
                let start = at - line;
                let end = text[at..].find('\n').map_or(text.len(), |e| at + e);
                panic!(
                    "the controller's {what} holds a secret ({} chars): {}",
                    needle.len(),
                    &text[start..end.min(start + 400)]
                );
            }
        }
    }
    vault_ok(&["kv", "metadata", "delete", &full(&ok_path)]);
    vault_ok(&["kv", "metadata", "delete", &full(&conflict_path)]);
    env.teardown().await;
}

/// The controller of the same source namespace name in another cluster:
/// remote control plane 1 (`cp.sh`, its own state directory) as its
/// cluster, its admin kubeconfig, Vault with `VAULT_AUTH_METHOD=token` (the
/// root token in a file: the other cluster's Kubernetes auth is not
/// configured in the test Vault), `CLUSTER_NAME` `cluster`.
fn start_elsewhere(
    remote: &common::remote::Remote,
    source_ns: &str,
    cluster: &str,
    token_file: &std::path::Path,
) -> Daemon {
    let kubeconfig = remote.cp.kubeconfig.display().to_string();
    let (addr, token_file) = (vault_addr(), token_file.display().to_string());
    let mut daemon = Daemon::start(
        source_ns,
        &[
            ("KUBECONFIG", &kubeconfig),
            ("VAULT_ADDR", &addr),
            ("VAULT_AUTH_METHOD", "token"),
            ("VAULT_TOKEN_FILE", &token_file),
            ("VAULT_RATE_LIMIT", "50"),
            ("VAULT_CHECK_INTERVAL_SECONDS", "5"),
            ("CLUSTER_NAME", cluster),
        ],
    );
    daemon.keep_log = std::env::var_os("E2E_VAULT_KEEP_LOGS").is_some();
    daemon
}

/// `kv get` and `kv metadata get` of `path`: what must not change.
fn snapshot(path: &str) -> (Option<Value>, Option<Value>) {
    (kv_get(path), kv_metadata(path))
}

/// Vault requests of `op` the controller made, whatever their result.
async fn requests_of(daemon: &Daemon, op: &str) -> f64 {
    daemon
        .metric_sum(
            "push_to_k8s_vault_requests_total",
            &[&format!("op=\"{op}\"")],
        )
        .await
}

/// Wait until `daemon` read at least `n` more entry metadata (checks).
async fn await_reads(daemon: &Daemon, n: f64) {
    let reads = || {
        daemon.metric_sum(
            "push_to_k8s_vault_requests_total",
            &["op=\"read\"", "result=\"ok\""],
        )
    };
    let before = reads().await;
    until(&format!("{n} more Vault reads"), WAIT, || async {
        let now = reads().await;
        if now >= before + n {
            Ok(())
        } else {
            Err(format!("{} reads since", now - before))
        }
    })
    .await;
}

/// Issue 16, item 2: two clusters, each with a source namespace of the same
/// name and a source of the same name asking for the same Vault path. Before
/// the cluster stamp each took the other's entry for its own: the second
/// overwrote the first's at every check (and would have deleted it, every
/// version, with its source). Now the entry carries `source-cluster: <the
/// first's CLUSTER_NAME>`; the second cluster's controller reports a
/// conflict naming the other cluster and never writes nor deletes it,
/// through several checks and the deletion of its source; the first goes on
/// owning it (a change written, its source's deletion deletes it).
#[tokio::test]
async fn two_clusters_with_one_source_name_never_take_each_others_entry() {
    let _serial = serial();
    vault_up();
    let env = TestEnv::new("vault-clusters", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let who = ChartIdentity::new(&env, &[]).await;
    let remote = common::remote::remote(1);
    let remote_namespaces = common::remote::RemoteNamespaces::new(&env.id);
    remote_namespaces.create(remote, &env.source_ns, &[]).await;
    let root = temp_file("vault-root-token", &root_token());
    let (name, path) = (format!("{}-db", env.id), path_of(&env, "shared"));
    let src = env.source_ns.as_str();

    env.add_source(&secret(
        &env,
        &name,
        &[("password", "east")],
        &[(VAULT_PATH, &path)],
    ))
    .await;
    let mut east = start(&env, &who, &[("VAULT_CHECK_INTERVAL_SECONDS", "5")]).await;
    let ours = await_ours(&path, ("Secret", src, &name), &[("password", "east")], WAIT).await;

    // The other cluster: the same namespace name, source name and path.
    let theirs = secret(&env, &name, &[("password", "west")], &[(VAULT_PATH, &path)]);
    Api::<Secret>::namespaced(remote.client().await, src)
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create the other cluster's source");
    let west_cluster = format!("{}-west", env.id);
    let mut west = start_elsewhere(remote, src, &west_cluster, &root);
    west.await_ready().await;
    await_metric(&west, "push_to_k8s_vault_conflicts", &[], 1.0).await;
    let stamp = cluster_of(src);
    eventually(
        "the other cluster's controller names the owner",
        WAIT,
        || async {
            let log = west.logs();
            log.contains(&format!("of another cluster ({stamp})"))
                .then_some(())
        },
    )
    .await;
    let before = snapshot(&path);
    // Two more checks by the other cluster's controller.
    await_reads(&west, 2.0).await;
    assert_eq!(snapshot(&path), before, "the entry changed");
    assert_eq!(entry(&path), Some(ours.clone()));
    // Its source deleted there: the entry stays.
    Api::<Secret>::namespaced(remote.client().await, src)
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the other cluster's source");
    await_metric(&west, "push_to_k8s_vault_conflicts", &[], 0.0).await;
    await_reads(&east, 2.0).await;
    assert_eq!(snapshot(&path), before, "the entry changed");
    for op in ["write", "metadata", "delete"] {
        assert_eq!(
            requests_of(&west, op).await,
            0.0,
            "{op} requests by the other cluster"
        );
    }
    stop(&mut west);

    // Still ours here: a change is written, the deletion deletes it.
    set_values(&env, &name, &[("password", "east-2")]).await;
    let e = await_ours(
        &path,
        ("Secret", src, &name),
        &[("password", "east-2")],
        WAIT,
    )
    .await;
    assert_eq!(e.version, 2);
    env.delete_source(&name).await;
    await_no_entry(&path).await;
    assert_no_failed_requests(&east).await;
    stop(&mut east);
    let _ = std::fs::remove_file(&root);
    drop(remote_namespaces);
    env.teardown().await;
}

/// Issue 16, items 2 and 3: an entry the previous version wrote for this
/// very source (our custom metadata, no `source-cluster`) and an entry
/// someone wrote with exactly the values the source holds (no metadata) are
/// both conflicts: byte-identical (data, metadata, versions) through start-up
/// and several checks, never written, never deleted (the second one's
/// source deleted: it stays, every version). Before, the first was taken
/// for ours and rewritten, the second claimed ("verify": its data read and
/// found equal) and deleted with its source, without `ALLOW_ADOPTION`. The
/// first is taken over only by explicit adoption (`push-to-k8s.io/adopt`
/// with `ALLOW_ADOPTION=true`): then it carries our stamp and goes with its
/// source.
#[tokio::test]
async fn an_unstamped_or_equal_valued_entry_is_taken_only_by_adoption() {
    let _serial = serial();
    vault_up();
    let env = TestEnv::new("vault-unstamped", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let who = ChartIdentity::new(&env, &[]).await;
    let src = env.source_ns.as_str();
    let (legacy, equal) = (format!("{}-legacy", env.id), format!("{}-equal", env.id));
    let (legacy_path, equal_path) = (path_of(&env, "legacy"), path_of(&env, "equal"));
    // As the version before the stamp left it.
    kv_put(&legacy_path, &[("k", "old")]);
    let old_hash = content_hash(&map(&[("k", "old")]));
    vault_ok(&[
        "kv",
        "metadata",
        "put",
        "-custom-metadata=managed-by=push-to-k8s",
        &format!("-custom-metadata=source={src}/{legacy}"),
        "-custom-metadata=source-kind=Secret",
        &format!("-custom-metadata=content-hash={old_hash}"),
        "-custom-metadata=version=1",
        &full(&legacy_path),
    ]);
    // Someone's entry holding exactly what the source holds.
    kv_put(&equal_path, &[("k", "same")]);
    let (legacy_before, equal_before) = (snapshot(&legacy_path), snapshot(&equal_path));
    env.add_source(&secret(
        &env,
        &legacy,
        &[("k", "new")],
        &[(VAULT_PATH, &legacy_path)],
    ))
    .await;
    env.add_source(&secret(
        &env,
        &equal,
        &[("k", "same")],
        &[(VAULT_PATH, &equal_path)],
    ))
    .await;
    let mut daemon = start(
        &env,
        &who,
        &[
            ("ALLOW_ADOPTION", "true"),
            ("VAULT_CHECK_INTERVAL_SECONDS", "5"),
        ],
    )
    .await;
    let note = await_event(
        &env,
        &legacy,
        "VaultConflict",
        "Warning",
        &full(&legacy_path),
    )
    .await;
    assert!(note.contains("without a cluster stamp"), "{note}");
    let note = await_event(&env, &equal, "VaultConflict", "Warning", &full(&equal_path)).await;
    assert!(note.contains("not written by push-to-k8s"), "{note}");
    await_metric(&daemon, "push_to_k8s_vault_conflicts", &[], 2.0).await;
    await_reads(&daemon, 4.0).await;
    assert_eq!(
        snapshot(&legacy_path),
        legacy_before,
        "the unstamped entry changed"
    );
    assert_eq!(
        snapshot(&equal_path),
        equal_before,
        "the equal entry changed"
    );
    // The equal one's source goes: the entry stays.
    env.delete_source(&equal).await;
    await_metric(&daemon, "push_to_k8s_vault_conflicts", &[], 1.0).await;
    await_reads(&daemon, 2.0).await;
    assert_eq!(
        snapshot(&equal_path),
        equal_before,
        "the equal entry changed"
    );
    for op in ["write", "metadata", "delete"] {
        assert_eq!(requests_of(&daemon, op).await, 0.0, "{op} requests");
    }

    // Explicit adoption takes the unstamped one over, in place.
    annotate(&env, &legacy, ADOPT, Some("true")).await;
    let adopted = await_ours(
        &legacy_path,
        ("Secret", src, &legacy),
        &[("k", "new")],
        WAIT,
    )
    .await;
    assert_eq!(adopted.version, 2, "a new version on top of the old one");
    await_event(&env, &legacy, "VaultAdopted", "Normal", &full(&legacy_path)).await;
    env.delete_source(&legacy).await;
    await_no_entry(&legacy_path).await;
    assert_eq!(
        snapshot(&equal_path),
        equal_before,
        "the equal entry changed"
    );
    assert_no_failed_requests(&daemon).await;
    stop(&mut daemon);
    vault_ok(&["kv", "metadata", "delete", &full(&equal_path)]);
    env.teardown().await;
}

/// A file audit device on the test Vault, at a path of the test's own,
/// disabled when dropped (however the test ends). Vault logs every request
/// and response there (values HMAC'd, paths and operations plain).
struct Audit {
    path: String,
    file: PathBuf,
}

impl Audit {
    fn enable(id: &str) -> Audit {
        let path = format!("e2e-{id}");
        let file = state_dir().join(format!("vault-audit-{id}.log"));
        vault_ok(&[
            "audit",
            "enable",
            &format!("-path={path}"),
            "file",
            &format!("file_path={}", file.display()),
        ]);
        Audit { path, file }
    }

    /// Every entry logged so far.
    fn entries(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.file)
            .unwrap_or_else(|e| panic!("{}: {e}", self.file.display()));
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        let out = vault_cli(&["audit", "disable", &self.path]);
        if !out.status.success() && !std::thread::panicking() {
            panic!(
                "could not disable audit device {}: {}",
                self.path,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Issue 16, item 14: `status` and `plan` with `VAULT_ADDR` set, as the
/// chart's ServiceAccount (Kubernetes auth), against a missing entry, an
/// entry of someone else's and one of ours out of date. Vault's own audit
/// log (a file audit device enabled for the test) shows exactly what they
/// do there, as README and docs/vault.md say: one login each (which creates
/// a token), then one read of each entry's metadata; not one request that
/// writes or deletes an entry, its data or its metadata.
#[tokio::test]
async fn status_and_plan_only_log_in_and_read_metadata_in_vault() {
    let _serial = serial();
    vault_up();
    let env = TestEnv::new("vault-readonly", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let who = ChartIdentity::new(&env, &[]).await;
    let src = env.source_ns.as_str();
    let names = ["missing", "theirs", "stale"].map(|n| format!("{}-{n}", env.id));
    let paths = ["missing", "theirs", "stale"].map(|n| path_of(&env, n));
    kv_put(&paths[1], &[("k", "theirs")]);
    for (name, path) in names.iter().zip(&paths).skip(1) {
        env.add_source(&secret(&env, name, &[("k", "v1")], &[(VAULT_PATH, path)]))
            .await;
    }
    // The stale one: written by the controller, then its source changed.
    let mut daemon = start(&env, &who, &[]).await;
    await_ours(&paths[2], ("Secret", src, &names[2]), &[("k", "v1")], WAIT).await;
    stop(&mut daemon);
    set_values(&env, &names[2], &[("k", "v2")]).await;
    // The missing one: a source the controller has not seen.
    env.add_source(&secret(
        &env,
        &names[0],
        &[("k", "v1")],
        &[(VAULT_PATH, &paths[0])],
    ))
    .await;
    let before: Vec<_> = paths.iter().map(|p| snapshot(p)).collect();

    let audit = Audit::enable(&env.id);
    let cluster = cluster_of(src);
    let mut vars = who.vars(&[("NAMESPACE", src), ("CLUSTER_NAME", &cluster)]);
    vars.push(("PATH".into(), std::env::var("PATH").unwrap_or_default()));
    vars.push(("HOME".into(), std::env::temp_dir().display().to_string()));
    for command in ["status", "plan"] {
        let out = Command::new(env!("CARGO_BIN_EXE_push-to-k8s"))
            .args([command, "-o", "json"])
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("run push-to-k8s");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_ne!(
            out.status.code(),
            Some(2),
            "{command}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // `status` names every entry; `plan` the two it would write.
        let named: Vec<&String> = match command {
            "status" => paths.iter().collect(),
            _ => vec![&paths[0], &paths[2]],
        };
        for path in named {
            assert!(
                stdout.contains(&full(path)),
                "{command} names {path}: {stdout}"
            );
        }
    }
    let entries = audit.entries();
    drop(audit);
    assert_eq!(
        paths.iter().map(|p| snapshot(p)).collect::<Vec<_>>(),
        before,
        "an entry changed"
    );
    // What the ServiceAccount's tokens did, and every request on the
    // test's paths by anyone.
    let sa = |v: &Value| v["auth"]["metadata"]["service_account_namespace"] == src;
    let mut logins = 0;
    let mut reads = Vec::new();
    for e in &entries {
        let (op, path) = (
            e["request"]["operation"].as_str().unwrap_or(""),
            e["request"]["path"].as_str().unwrap_or(""),
        );
        if e["type"] == "response" && path.ends_with("/login") && sa(&e["response"]) {
            logins += 1;
        }
        if e["type"] != "request" || path.ends_with("/login") {
            continue;
        }
        if sa(e) || path.contains(&env.id) {
            assert_eq!(op, "read", "{path}: {e}");
            assert!(
                path.starts_with(&format!("{MOUNT}/metadata/")),
                "not a metadata read: {op} {path}"
            );
            reads.push(path.to_string());
        }
    }
    assert_eq!(logins, 2, "one login (a token) per command");
    reads.sort();
    let mut want: Vec<String> = paths
        .iter()
        .flat_map(|p| {
            let read = format!("{MOUNT}/metadata/{p}");
            [read.clone(), read]
        })
        .collect();
    want.sort();
    assert_eq!(reads, want, "one metadata read per entry and command");
    for path in &paths {
        let _ = vault_cli(&["kv", "metadata", "delete", &full(path)]);
    }
    env.teardown().await;
}

#[test]
fn base64_is_standard() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(&[0xff, 0xfe]), "//4=");
}

#[test]
fn content_hash_is_length_prefixed() {
    // Moving a separator changes the hash.
    let a = map(&[("ab", "c")]);
    let b = map(&[("a", "bc")]);
    assert_ne!(content_hash(&a), content_hash(&b));
    assert_eq!(content_hash(&BTreeMap::new()).len(), 64);
}

// ---------------------------------------------------------------- workloads

/// A Deployment in `ns` annotated with `annotations`, referencing Secret
/// `env_secret` by `secretKeyRef` and `from_secret` by `envFrom` (its pods
/// need not run: only the template is read).
fn deployment(ns: &str, name: &str, annotations: &[(&str, &str)], refs: (&str, &str)) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "annotations": map(annotations)},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": "none",
                    "env": [{"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": refs.0, "key": "password"}}}],
                    "envFrom": [{"secretRef": {"name": refs.1}}],
                }]},
            },
        },
    })
}

async fn apply_deployment(env: &TestEnv, d: &Value) {
    use k8s_openapi::api::apps::v1::Deployment;
    let ns = d["metadata"]["namespace"].as_str().unwrap();
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
    let name = d["metadata"]["name"].as_str().unwrap();
    api.patch(
        name,
        &PatchParams::apply("e2e-vault").force(),
        &Patch::Apply(d),
    )
    .await
    .expect("apply the Deployment");
}

async fn delete_deployment(env: &TestEnv, ns: &str, name: &str) {
    use k8s_openapi::api::apps::v1::Deployment;
    let api: Api<Deployment> = Api::namespaced(env.client.clone(), ns);
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete the Deployment");
}

async fn put_secret(env: &TestEnv, ns: &str, name: &str, data: &[(&str, &str)]) {
    let s = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ns}, "stringData": map(data)});
    env.secrets(ns)
        .patch(
            name,
            &PatchParams::apply("e2e-vault").force(),
            &Patch::Apply(&s),
        )
        .await
        .expect("apply the Secret");
}

/// Wait until the entry at `path` holds exactly `want` and names Deployment
/// `ns/deployment` of `cluster` as its owner, at its current version.
async fn await_workload_entry(
    path: &str,
    (ns, deployment, cluster): (&str, &str, &str),
    want: &[(&str, &str)],
) -> Entry {
    let source = format!("{ns}/{deployment}");
    await_owned(path, ("Deployment", &source, cluster), want, WAIT).await
}

/// Issue 19 item 8: workload-driven Vault. A PushRule's `workloadVault`
/// names one namespace (`<id>-t0`) and a prefix (`push-to-k8s/<id>/apps`).
/// There:
/// - a Deployment annotated `vault-sync.io/path` (vault-sync-operator's
///   `<mount>/data/...` form) gets each Secret it references into its own
///   entry at `<path>/<secret>`, values compared exactly, with metadata
///   naming the Deployment; an update of the Secret flows; a referenced
///   Secret created later is picked up when it appears;
/// - a second Deployment referencing the same Secret at another path is a
///   second entry; `vault-sync.io/secrets` picks keys behind a prefix into
///   one entry;
/// - a path outside the prefix is refused (a Warning Event on the
///   Deployment) and nothing is written;
/// - a Deployment in a namespace the rule does not name is ignored;
/// - deleting a Deployment deletes its entries, unless
///   `vault-sync.io/preserve-on-delete`.
///
/// The controller runs with the chart's RBAC only, and no value reaches
/// its log.
#[tokio::test]
async fn deployments_a_rule_names_push_their_secrets_under_its_prefix_only() {
    let _serial = serial();
    vault_up();
    rules::install_crd();
    let env = TestEnv::new("vault-work", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let (named, other_ns) = (env.targets[0].clone(), env.targets[1].clone());
    let rule = format!("{}-workloads", env.id);
    let _rules = rules::Rules(vec![rule.clone()]);
    let prefix = path_of(&env, "apps");
    // The rule's own source (in a namespace of the test; it copies nothing
    // that exists) is beside the point here: its workloadVault is.
    rules::apply_rule(
        &rule,
        json!({
            "source": {"kind": "Secret", "namespace": other_ns, "name": format!("{}-none", env.id)},
            "namespaces": [format!("{}-t*", env.id)],
            "workloadVault": {"namespaces": [named], "pathPrefix": format!("{prefix}/")},
        }),
    );
    let who = ChartIdentity::new(&env, &[]).await;
    let cluster = cluster_of(&env.source_ns);
    let (pw, pw2, token) = (
        format!("pw-{}", random()),
        format!("pw2-{}", random()),
        format!("tok-{}", random()),
    );
    put_secret(&env, &named, "db", &[("password", &pw), ("user", "app")]).await;
    put_secret(&env, &other_ns, "db", &[("password", &pw)]).await;
    // Before the controller starts: picked up by its first listing.
    let app_path = format!("{MOUNT}/data/{prefix}/app");
    apply_deployment(
        &env,
        &deployment(
            &named,
            "app",
            &[("vault-sync.io/path", &app_path)],
            ("db", "later"),
        ),
    )
    .await;
    // In a namespace the rule does not name: ignored.
    let ignored = format!("{prefix}/ignored");
    apply_deployment(
        &env,
        &deployment(
            &other_ns,
            "app",
            &[("vault-sync.io/path", &ignored)],
            ("db", "db"),
        ),
    )
    .await;
    let mut daemon = start(&env, &who, &[]).await;

    let app_db = format!("{prefix}/app/db");
    let first = await_workload_entry(
        &app_db,
        (&named, "app", &cluster),
        &[("password", &pw), ("user", "app")],
    )
    .await;
    // An update of the Secret flows.
    put_secret(&env, &named, "db", &[("password", &pw2), ("user", "app")]).await;
    let second = await_workload_entry(
        &app_db,
        (&named, "app", &cluster),
        &[("password", &pw2), ("user", "app")],
    )
    .await;
    assert!(second.version > first.version);
    // A referenced Secret that did not exist is written when it appears.
    put_secret(&env, &named, "later", &[("token", &token)]).await;
    let app_later = format!("{prefix}/app/later");
    await_workload_entry(&app_later, (&named, "app", &cluster), &[("token", &token)]).await;

    // The same Secret, another Deployment and path: another entry; with
    // vault-sync.io/secrets, the picked keys behind a prefix in one entry.
    let picked = format!("{prefix}/picked");
    apply_deployment(
        &env,
        &deployment(
            &named,
            "picker",
            &[
                ("vault-sync.io/path", &picked),
                (
                    "vault-sync.io/secrets",
                    r#"[{"name": "db", "keys": ["password"], "prefix": "db_"}, {"name": "later"}]"#,
                ),
                ("vault-sync.io/preserve-on-delete", "true"),
            ],
            ("db", "later"),
        ),
    )
    .await;
    await_workload_entry(
        &picked,
        (&named, "picker", &cluster),
        &[("db_password", &pw2), ("token", &token)],
    )
    .await;

    // Outside the prefix: refused, named in a Warning, nothing written.
    let outside = path_of(&env, "elsewhere");
    apply_deployment(
        &env,
        &deployment(
            &named,
            "escape",
            &[("vault-sync.io/path", &outside)],
            ("db", "db"),
        ),
    )
    .await;
    let note = eventually(
        "a Warning InvalidAnnotation Event on Deployment escape",
        WAIT,
        || async {
            env.events_in(&named, "escape", "InvalidAnnotation")
                .await
                .into_iter()
                .find(|(t, n)| t == "Warning" && n.contains("outside"))
                .map(|(_, n)| n)
        },
    )
    .await;
    assert!(note.contains(&outside) && note.contains(&prefix), "{note}");
    assert!(kv_metadata(&format!("{outside}/db")).is_none() && kv_metadata(&outside).is_none());
    assert!(
        kv_metadata(&format!("{ignored}/db")).is_none(),
        "a Deployment of a namespace the rule does not name is ignored"
    );

    // Deleting a Deployment deletes its entries; preserve-on-delete keeps them.
    delete_deployment(&env, &named, "app").await;
    await_no_entry(&app_db).await;
    await_no_entry(&app_later).await;
    delete_deployment(&env, &named, "picker").await;
    eventually(
        "a VaultPreserved Event on Deployment picker",
        WAIT,
        || async {
            (!env
                .events_in(&named, "picker", "VaultPreserved")
                .await
                .is_empty())
            .then_some(())
        },
    )
    .await;
    assert!(entry(&picked).is_some(), "preserved");

    assert_no_failed_requests(&daemon).await;
    stop(&mut daemon);
    let log = daemon.logs();
    for value in [&pw, &pw2, &token] {
        assert!(!log.contains(value.as_str()), "a value reached the log");
    }
    env.teardown().await;
}

/// Issue 19: a PushRule's `spec.vault`. The rule's source (in another
/// namespace) is written to Vault as a labelled source is, its entry naming
/// `<namespace>/<name>`; an update flows. Deleting a rule with
/// `deletionPolicy: Orphan` leaves its entry (and the rule goes); deleting
/// one with `Delete` deletes the entry before the rule's finalizer is
/// removed.
#[tokio::test]
async fn a_rules_source_reaches_vault_and_only_its_deletion_deletes_the_entry() {
    let _serial = serial();
    vault_up();
    rules::install_crd();
    let env = TestEnv::new("vault-rule", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let (target, rule_ns) = (env.targets[0].clone(), env.targets[1].clone());
    let (deleted, orphaned) = (format!("{}-del", env.id), format!("{}-orph", env.id));
    let _rules = rules::Rules(vec![deleted.clone(), orphaned.clone()]);
    let (path_d, path_o) = (path_of(&env, "rule-del"), path_of(&env, "rule-orph"));
    let (v1, v2) = (format!("v1-{}", random()), format!("v2-{}", random()));
    put_secret(&env, &rule_ns, "cert", &[("tls.crt", &v1)]).await;
    put_secret(&env, &rule_ns, "other", &[("token", &v1)]).await;
    let spec = |name: &str, path: &str, policy: &str| {
        json!({
            "source": {"kind": "Secret", "namespace": rule_ns, "name": name},
            "namespaces": [target],
            "vault": {"path": path},
            "deletionPolicy": policy,
        })
    };
    rules::apply_rule(&deleted, spec("cert", &path_d, "Delete"));
    rules::apply_rule(&orphaned, spec("other", &path_o, "Orphan"));
    let who = ChartIdentity::new(&env, &[]).await;
    let cluster = cluster_of(&env.source_ns);
    let mut daemon = start(&env, &who, &[]).await;

    let cert = format!("{rule_ns}/cert");
    await_owned(
        &path_d,
        ("Secret", &cert, &cluster),
        &[("tls.crt", &v1)],
        WAIT,
    )
    .await;
    let other = format!("{rule_ns}/other");
    await_owned(
        &path_o,
        ("Secret", &other, &cluster),
        &[("token", &v1)],
        WAIT,
    )
    .await;
    put_secret(&env, &rule_ns, "cert", &[("tls.crt", &v2)]).await;
    await_owned(
        &path_d,
        ("Secret", &cert, &cluster),
        &[("tls.crt", &v2)],
        WAIT,
    )
    .await;
    rules::await_ready(&deleted, "True", "Ready").await;

    // Orphan: the rule goes, its entry stays.
    rules::kubectl(&["delete", "pushrule", &orphaned, "--wait=false"], None);
    eventually("the Orphan rule gone", WAIT, || async {
        rules::get_rule(&orphaned).is_none().then_some(())
    })
    .await;
    // Delete: the entry is deleted, then the rule goes.
    rules::kubectl(&["delete", "pushrule", &deleted, "--wait=false"], None);
    await_no_entry(&path_d).await;
    eventually("the Delete rule gone", WAIT, || async {
        rules::get_rule(&deleted).is_none().then_some(())
    })
    .await;
    let kept = entry(&path_o).expect("the Orphan rule's entry is kept");
    assert_eq!(kept.data, Some(map(&[("token", &v1)])));

    assert_no_failed_requests(&daemon).await;
    stop(&mut daemon);
    let log = daemon.logs();
    assert!(
        !log.contains(&v1) && !log.contains(&v2),
        "a value reached the log"
    );
    env.teardown().await;
}
