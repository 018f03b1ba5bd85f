//! Scenario 10, Vault (issue 10, item 8): the Vault KV v2 target against a
//! real Vault (`cp.sh vault-up`: `vault server -dev` beside the bench's
//! control plane, in its state directory, taken down with it).
//!
//! - Part A: one source annotated `push-to-k8s.io/vault-path`, N target
//!   namespaces. The time from its creation, and from each change of its
//!   value, until all N copies and the Vault entry hold the value, against
//!   D + N/R for the copies and D + requests/V for the entry (V =
//!   `VAULT_RATE_LIMIT`); the Kubernetes and Vault requests of each.
//! - Part B: S sources, each with its own path, and no target namespace (all
//!   parked), so only Vault is measured. The time from creating them (and
//!   from changing all of them) until every entry holds its value, against
//!   the time the bench took to create them + D + S x requests / V; the
//!   requests per source (docs/vault.md, "How fast": a create and a change
//!   alike read the entry's metadata, write the data, write the metadata).
//!   Then a controller with a short check interval: its start and one
//!   periodic check over S entries in sync read S metadata and write
//!   nothing, in Vault or in Kubernetes.
//!
//! The controller logs in with `VAULT_AUTH_METHOD=token` and a child token of
//! the dev server's root token (display name `push-to-k8s-bench`), so that
//! Vault's file audit device, enabled by the bench, tells the controller's
//! requests from the bench's own: the independent witness of Vault requests
//! (path, operation, arrival time), as the API server's counters are for
//! Kubernetes. The controller's `push_to_k8s_vault_requests_total` is
//! reported beside it. The bench reads entries back through Vault's HTTP API
//! with the root token, polling every 10 ms.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use push_to_k8s::model::replica::Replica;
use push_to_k8s::model::vocabulary::PATH_ANNOTATION;
use serde_json::json;

use crate::controller::READY_POLL;
use crate::daemon::Daemon;
use crate::metrics::{Counts, sum_metric};
use crate::report::{Target, loadavg, median};
use crate::{
    Bench, DEBOUNCE, PARKED_LABEL, PROTECTED, RATE, SEED_CONCURRENCY, SOURCE_NS, control_plane,
};

const SC: &str = "vault";
/// The KV v2 mount of `vault server -dev`.
const MOUNT: &str = "secret";
/// Entries are `secret/bench/<source name>`.
const PATH_PREFIX: &str = "bench";
/// The controller's token: Vault shows it as `token-push-to-k8s-bench`.
const TOKEN_NAME: &str = "push-to-k8s-bench";
/// The bench's audit device (`sys/audit/bench`).
const AUDIT_DEVICE: &str = "bench";
/// `VAULT_CHECK_INTERVAL_SECONDS` while changes are measured: no periodic
/// check in the way (the largest value allowed).
const NO_CHECK_S: u64 = 86_400;
/// How often the bench reads an entry it waits for.
const POLL: Duration = Duration::from_millis(10);
const VAULT_REQUESTS: &str = "push_to_k8s_vault_requests_total";
/// Vault requests per source created, and per change of its value
/// (docs/vault.md, "How fast"): the metadata read (none yet; still ours?),
/// the data write (check-and-set), the metadata write; a create first
/// writes its `pending` mark (metadata), so it costs four.
const CREATE_REQUESTS: f64 = 4.0;
const UPDATE_REQUESTS: f64 = 3.0;

fn entry_path(name: &str) -> String {
    format!("{PATH_PREFIX}/{name}")
}

/// Deterministic printable filler (KV v2 holds text; no secret, a realistic size).
fn text(seed: &str, len: usize) -> String {
    String::from_utf8(crate::cluster::filler(seed, len)).expect("filler is ASCII")
}

fn password(name: &str, version: u64) -> ByteString {
    ByteString(text(&format!("{name}/{version}"), 32).into_bytes())
}

/// A source written to Vault at `secret/bench/<name>`: a user name, a
/// password and a ~1 KiB certificate, as the other scenarios' sources.
fn vault_source(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                push_to_k8s::model::vocabulary::SOURCE_LABEL_KEY.to_string(),
                push_to_k8s::model::vocabulary::SOURCE_LABEL_VALUE.to_string(),
            )])),
            annotations: Some(BTreeMap::from([(
                PATH_ANNOTATION.to_string(),
                entry_path(name),
            )])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([
            (
                "username".to_string(),
                ByteString(format!("svc-{name}").into_bytes()),
            ),
            ("password".to_string(), password(name, 0)),
            (
                "ca.crt".to_string(),
                ByteString(text(name, 1024).into_bytes()),
            ),
        ])),
        ..Default::default()
    }
}

/// What the entry of source `s` must hold: its keys, values as text.
fn entry_data(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// One entry the bench waits for: its path and the data it must hold.
type Wanted = (String, BTreeMap<String, String>);

fn wanted(s: &Secret) -> Wanted {
    (
        entry_path(s.metadata.name.as_deref().unwrap_or_default()),
        entry_data(s),
    )
}

/// The dev server, as the bench uses it.
pub struct VaultServer {
    /// `http://127.0.0.1:<port>`, the controller's `VAULT_ADDR`.
    pub(crate) addr: String,
    port: u16,
    root: String,
    /// The controller's token (`VAULT_TOKEN_FILE`).
    token_file: PathBuf,
    pub(crate) audit_log: PathBuf,
}

/// A controller's Vault requests by operation (`push_to_k8s_vault_requests_total`).
#[derive(Clone, Copy, Debug, Default)]
struct Ops {
    read: f64,
    write: f64,
    metadata: f64,
    delete: f64,
    failed: f64,
}

impl Ops {
    fn of(metrics: &str) -> Ops {
        let op = |op: &str| sum_metric(metrics, VAULT_REQUESTS, &[&format!("op=\"{op}\"")]);
        let all = sum_metric(metrics, VAULT_REQUESTS, &[]);
        Ops {
            read: op("read"),
            write: op("write"),
            metadata: op("metadata"),
            delete: op("delete"),
            failed: all - sum_metric(metrics, VAULT_REQUESTS, &["result=\"ok\""]),
        }
    }

    fn minus(&self, o: &Ops) -> Ops {
        Ops {
            read: self.read - o.read,
            write: self.write - o.write,
            metadata: self.metadata - o.metadata,
            delete: self.delete - o.delete,
            failed: self.failed - o.failed,
        }
    }

    fn total(&self) -> f64 {
        self.read + self.write + self.metadata + self.delete
    }

    fn writes(&self) -> f64 {
        self.write + self.metadata + self.delete
    }

    fn describe(&self) -> String {
        format!(
            "read {}, write {}, metadata {}, delete {}, failed {}",
            self.read, self.write, self.metadata, self.delete, self.failed
        )
    }
}

/// The controller's requests in Vault's audit log, by the controller's
/// operation names (`read` is a metadata read; data reads are apart).
#[derive(Debug, Default)]
struct Audited {
    read: usize,
    read_data: usize,
    write: usize,
    metadata: usize,
    delete: usize,
    logins: usize,
    other: usize,
    /// Arrival times (Vault's clock, seconds) of the KV requests.
    times: Vec<f64>,
}

impl Audited {
    fn total(&self) -> usize {
        self.read + self.read_data + self.write + self.metadata + self.delete
    }

    fn writes(&self) -> usize {
        self.write + self.metadata + self.delete
    }

    fn describe(&self) -> String {
        format!(
            "metadata read {}, data read {}, data write {}, metadata write {}, delete {}; logins {}, other {}",
            self.read,
            self.read_data,
            self.write,
            self.metadata,
            self.delete,
            self.logins,
            self.other
        )
    }

    /// Most requests arriving within any 1 s.
    fn max_per_second(&self) -> usize {
        let mut t = self.times.clone();
        t.sort_by(f64::total_cmp);
        let (mut lo, mut best) = (0, 0);
        for hi in 0..t.len() {
            while t[hi] - t[lo] >= 1.0 {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    /// From the first request's arrival to the last one's.
    fn span_s(&self) -> f64 {
        let first = self.times.iter().copied().fold(f64::INFINITY, f64::min);
        let last = self.times.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if self.times.is_empty() {
            0.0
        } else {
            last - first
        }
    }
}

impl VaultServer {
    /// `cp.sh vault-up` in the bench's state directory, the audit device and
    /// the controller's token.
    async fn up(cp_dir: &Path) -> Result<VaultServer> {
        let v = VaultServer::start(cp_dir).await?;
        // A device left by an interrupted run (--keep-cp) is replaced.
        v.root_call("DELETE", &format!("sys/audit/{AUDIT_DEVICE}"), None)
            .await?;
        v.enable_audit().await?;
        let (code, body) = v
            .root_call(
                "POST",
                "auth/token/create",
                Some(&json!({"display_name": TOKEN_NAME})),
            )
            .await?;
        let token: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("create the controller's Vault token: {code}"))?;
        let token = token["auth"]["client_token"]
            .as_str()
            .with_context(|| format!("create the controller's Vault token: {code}"))?;
        write_private(&v.token_file, token)?;
        println!(
            "bench: Vault at {}, audit log {}",
            v.addr,
            v.audit_log.display()
        );
        Ok(v)
    }

    /// `cp.sh vault-up` in `cp_dir` (also used by the chaos scenario): the
    /// server's address and root token; no audit device, no token yet.
    pub(crate) async fn start(cp_dir: &Path) -> Result<VaultServer> {
        println!("bench: starting Vault (cp.sh vault-up)");
        let mut cmd = control_plane::command(Some(cp_dir), &["vault-up"]);
        cmd.stdout(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit());
        let status = tokio::process::Command::from(cmd)
            .status()
            .await
            .context("run cp.sh vault-up")?;
        if !status.success() {
            bail!("cp.sh vault-up failed ({status})");
        }
        let read = |f: &str| -> Result<String> {
            Ok(std::fs::read_to_string(cp_dir.join(f))
                .with_context(|| format!("read {}", cp_dir.join(f).display()))?
                .trim()
                .to_string())
        };
        let addr = read("vault.addr")?;
        let port = addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .with_context(|| format!("no port in VAULT_ADDR {addr}"))?;
        Ok(VaultServer {
            addr,
            port,
            root: read("vault.token")?,
            // Its name starts with "vault": `cp.sh vault-down` removes it.
            token_file: cp_dir.join("vault-bench-controller.token"),
            audit_log: cp_dir.join("vault-bench-audit.log"),
        })
    }

    /// Enable the bench's file audit device (appending to `audit_log`); a
    /// device already there is kept. Dev mode forgets it when Vault stops.
    pub(crate) async fn enable_audit(&self) -> Result<()> {
        let file = self.audit_log.display().to_string();
        let (code, body) = self
            .root_call(
                "PUT",
                &format!("sys/audit/{AUDIT_DEVICE}"),
                Some(&json!({"type": "file", "options": {"file_path": file}})),
            )
            .await?;
        if code != 204 && !body.contains("already in use") {
            bail!("enable Vault's file audit device: {code} {body}");
        }
        Ok(())
    }

    /// One request with the root token over HTTP/1.0 (the body ends with the
    /// connection): the status and the body.
    pub(crate) async fn root_call(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            let head = format!(
                "{method} /v1/{path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nX-Vault-Token: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                self.port,
                self.root,
                body.len()
            );
            s.write_all(head.as_bytes()).await?;
            s.write_all(body.as_bytes()).await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let buf = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .with_context(|| format!("Vault {method} {path}: no answer within 10 s"))?
            .with_context(|| format!("Vault {method} {path}"))?;
        let text = String::from_utf8_lossy(&buf);
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("Vault {method} {path}: no HTTP status"))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    }

    /// The data of the entry's current version; `None` if there is none.
    pub(crate) async fn data(&self, path: &str) -> Result<Option<BTreeMap<String, String>>> {
        let (code, body) = self
            .root_call("GET", &format!("{MOUNT}/data/{path}"), None)
            .await?;
        match code {
            404 => Ok(None),
            200 => {
                let v: serde_json::Value = serde_json::from_str(&body)?;
                Ok(serde_json::from_value(v["data"]["data"].clone()).ok())
            }
            _ => bail!("Vault GET {MOUNT}/data/{path}: {code}"),
        }
    }

    /// Remove the entry (every version and the metadata), if there is one.
    async fn delete(&self, path: &str) -> Result<()> {
        let (code, _) = self
            .root_call("DELETE", &format!("{MOUNT}/metadata/{path}"), None)
            .await?;
        if code != 204 && code != 404 {
            bail!("Vault DELETE {MOUNT}/metadata/{path}: {code}");
        }
        Ok(())
    }

    async fn delete_all(&self, paths: &[String]) -> Result<()> {
        futures::stream::iter(paths)
            .map(|p| self.delete(p))
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Poll `want` in its order (the controller's: by source name), each
    /// until it holds its data: when each was first seen so. A round stops at
    /// the first entry not there yet (entries written out of order are only
    /// seen later, which the last time does not suffer from).
    async fn wait_entries(&self, want: &[Wanted], timeout: Duration) -> Result<Vec<Instant>> {
        let start = Instant::now();
        let mut seen: Vec<Option<Instant>> = vec![None; want.len()];
        loop {
            for (i, (path, data)) in want.iter().enumerate() {
                if seen[i].is_some() {
                    continue;
                }
                if self.data(path).await?.as_ref() == Some(data) {
                    seen[i] = Some(Instant::now());
                } else {
                    break;
                }
            }
            if seen.iter().all(Option::is_some) {
                return Ok(seen.into_iter().flatten().collect());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} of {} Vault entries hold their values after {timeout:?}",
                    seen.iter().flatten().count(),
                    want.len()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn audit_len(&self) -> u64 {
        std::fs::metadata(&self.audit_log).map_or(0, |m| m.len())
    }

    /// The controller's requests in the audit log after byte `from`.
    fn audited_since(&self, from: u64) -> Result<Audited> {
        let text = std::fs::read(&self.audit_log)
            .with_context(|| format!("read {}", self.audit_log.display()))?;
        let text = String::from_utf8_lossy(&text[(from as usize).min(text.len())..]).into_owned();
        let (data, meta) = (format!("{MOUNT}/data/"), format!("{MOUNT}/metadata/"));
        let mut a = Audited::default();
        for line in text.lines() {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            // One "request" entry per request, logged as it arrives.
            let ours = e["auth"]["display_name"]
                .as_str()
                .is_some_and(|n| n.ends_with(TOKEN_NAME));
            if e["type"] != "request" || !ours {
                continue;
            }
            let path = e["request"]["path"].as_str().unwrap_or_default();
            let op = e["request"]["operation"].as_str().unwrap_or_default();
            let write = op == "create" || op == "update";
            let counter = match () {
                _ if path.starts_with(&meta) && op == "read" => &mut a.read,
                _ if path.starts_with(&data) && op == "read" => &mut a.read_data,
                _ if path.starts_with(&data) && write => &mut a.write,
                _ if path.starts_with(&meta) && write => &mut a.metadata,
                _ if path.starts_with(&meta) && op == "delete" => &mut a.delete,
                _ if path == "auth/token/lookup-self" => {
                    a.logins += 1;
                    continue;
                }
                _ => {
                    a.other += 1;
                    continue;
                }
            };
            *counter += 1;
            if let Some(t) = e["time"]
                .as_str()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
            {
                a.times.push(t.as_nanosecond() as f64 / 1e9);
            }
        }
        Ok(a)
    }
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    writeln!(f, "{text}")?;
    Ok(())
}

/// The counters a phase is measured between.
struct Mark {
    ops: Ops,
    k8s_writes: f64,
    api: Counts,
    audit: u64,
}

/// What a phase cost, by every witness.
struct Cost {
    ops: Ops,
    /// `push_to_k8s_writes_total`.
    k8s_writes: f64,
    api: Counts,
    audited: Audited,
}

impl Cost {
    /// Writes to `resource` counted by the API server, `own` of the bench's subtracted.
    fn api_writes(&self, resource: &str, own: f64) -> f64 {
        self.api.writes(resource) - own
    }
}

/// Figures of one timed change (a create or an update).
struct Timed {
    copies_s: f64,
    entry_s: f64,
}

impl Bench<'_> {
    pub async fn vault(&mut self) -> Result<()> {
        let (n, s_count, v_rate) = (self.p.vault_ns, self.p.vault_sources, self.p.vault_rate);
        println!(
            "\n== vault: A: 1 source x {n} namespaces, {} updates; B: {s_count} sources; D = {} s, R = {RATE}/s, VAULT_RATE_LIMIT = {v_rate}/s",
            self.p.prop_runs,
            DEBOUNCE.as_secs()
        );
        let v = VaultServer::up(&self.cp_dir).await?;
        if let Err(e) = self.vault_one(&v).await {
            self.report.error(SC, &e.context("part A"));
        }
        // Whatever part A left running was dropped (killed) with it.
        self.cluster.reset(&self.watch).await?;
        self.vault_many(&v).await.context("part B")?;
        self.cluster.reset(&self.watch).await
    }

    /// A controller with the Vault target on: the bench's settings (burst 1,
    /// no resync in the way) and `check_s` as `VAULT_CHECK_INTERVAL_SECONDS`.
    fn vault_controller(&self, name: &str, v: &VaultServer, check_s: u64) -> Result<Daemon> {
        println!(
            "bench: starting controller {name} (load average {})",
            loadavg()
        );
        let (debounce, rate) = (DEBOUNCE.as_secs().to_string(), RATE.to_string());
        let (v_rate, check) = (self.p.vault_rate.to_string(), check_s.to_string());
        let token = v.token_file.display().to_string();
        let env = [
            ("NAMESPACE", SOURCE_NS),
            ("SECRET_SYNC_DEBOUNCE_SECONDS", &debounce),
            ("SECRET_SYNC_RATE_LIMIT", &rate),
            ("SECRET_SYNC_RATE_BURST", "1"),
            ("SYNC_INTERVAL", "1440"),
            ("EXCLUDE_NAMESPACE_LABEL", PARKED_LABEL),
            ("PROTECTED_NAMESPACES", PROTECTED),
            ("VAULT_ADDR", &v.addr),
            ("VAULT_AUTH_METHOD", "token"),
            ("VAULT_TOKEN_FILE", &token),
            ("VAULT_KV_MOUNT", MOUNT),
            ("VAULT_RATE_LIMIT", &v_rate),
            ("VAULT_CHECK_INTERVAL_SECONDS", &check),
        ];
        let log = self.logs.join(format!("{name}.log"));
        let mut d = Daemon::spawn(&self.bin, &self.kubeconfig, log, &env)?;
        d.keep_log = true;
        Ok(d)
    }

    async fn mark(&self, c: &Daemon, v: &VaultServer) -> Result<Mark> {
        let text = c.metrics().await;
        Ok(Mark {
            ops: Ops::of(&text),
            k8s_writes: sum_metric(&text, "push_to_k8s_writes_total", &[]),
            api: self.counts().await?,
            audit: v.audit_len(),
        })
    }

    async fn cost_since(&self, m: &Mark, c: &Daemon, v: &VaultServer) -> Result<Cost> {
        let now = self.mark(c, v).await?;
        Ok(Cost {
            ops: now.ops.minus(&m.ops),
            k8s_writes: now.k8s_writes - m.k8s_writes,
            api: now.api.minus(&m.api),
            audited: v.audited_since(m.audit)?,
        })
    }

    /// The smallest quiet time that tells a pause from the gap between two
    /// paced Vault requests.
    fn vault_quiet_time(&self) -> Duration {
        Duration::from_secs(1).max(Duration::from_secs_f64(3.0 / f64::from(self.p.vault_rate)))
    }

    /// Wait until the controller's Vault requests have not changed for
    /// `quiet` and nothing waits for Vault; its counts then.
    async fn vault_settle(&self, c: &Daemon, quiet: Duration, timeout: Duration) -> Result<Ops> {
        let start = Instant::now();
        let text = c.metrics().await;
        let (mut last, mut since) = (Ops::of(&text).total(), Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let text = c.metrics().await;
            let ops = Ops::of(&text);
            let pending = sum_metric(&text, "push_to_k8s_vault_pending", &[]);
            if ops.total() != last || pending > 0.0 {
                last = ops.total();
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return Ok(ops);
            }
            if start.elapsed() > timeout {
                bail!("Vault requests still going on after {timeout:?}");
            }
        }
    }

    /// Part A: one source, N namespaces, its creation and its updates.
    async fn vault_one(&mut self, v: &VaultServer) -> Result<()> {
        let n = self.p.vault_ns;
        let runs = self.p.prop_runs;
        let d = DEBOUNCE.as_secs_f64();
        println!("\n== vault A: 1 source to Vault and {n} namespaces");
        self.cluster.set_targets(n).await?;
        let name = "vault-one";
        v.delete(&entry_path(name)).await?;
        let mut c = self.vault_controller("vault-a", v, NO_CHECK_S)?;
        c.wait_ready(Duration::from_secs(60), READY_POLL).await?;
        self.vault_settle(&c, self.vault_quiet_time(), Duration::from_secs(60))
            .await?;
        let api = self.cluster.secrets(SOURCE_NS);
        let copies_bound = d + n as f64 / f64::from(RATE);
        let timeout = Duration::from_secs_f64(copies_bound * 5.0 + 30.0);

        // Creation: the read of a path never seen, then the write and the metadata.
        let m = self.mark(&c, v).await?;
        let from = self.watch.log_len();
        let t0 = Instant::now();
        let created = api
            .create(&PostParams::default(), &vault_source(name))
            .await
            .context("create the source")?;
        let t = self.timed_change(v, &created, n, t0, from, timeout).await?;
        self.vault_settle(&c, self.vault_quiet_time(), Duration::from_secs(60))
            .await?;
        let cost = self.cost_since(&m, &c, v).await?;
        self.report
            .api
            .insert(format!("vault A N={n} create"), cost.api.table());
        println!(
            "bench:   create: last copy after {:.3} s, Vault entry after {:.3} s",
            t.copies_s, t.entry_s
        );
        self.report_change(
            &format!("A N={n} create"),
            &[t],
            &cost,
            CREATE_REQUESTS,
            1.0,
            copies_bound,
        );

        // Updates of the value: the metadata read (still ours?), the write and the metadata.
        let mut timed = Vec::new();
        let m = self.mark(&c, v).await?;
        for run in 1..=runs as u64 {
            let from = self.watch.log_len();
            let t0 = Instant::now();
            let p = json!({"data": {"password": password(name, run)}});
            let updated = api
                .patch(name, &PatchParams::default(), &Patch::Merge(&p))
                .await
                .context("update the source")?;
            let t = self.timed_change(v, &updated, n, t0, from, timeout).await?;
            self.vault_settle(&c, self.vault_quiet_time(), Duration::from_secs(60))
                .await?;
            println!(
                "bench:   update {run}: last copy after {:.3} s, Vault entry after {:.3} s",
                t.copies_s, t.entry_s
            );
            timed.push(t);
        }
        let cost = self.cost_since(&m, &c, v).await?;
        self.report
            .api
            .insert(format!("vault A N={n} updates"), cost.api.table());
        self.report_change(
            &format!("A N={n} update"),
            &timed,
            &cost,
            UPDATE_REQUESTS,
            runs as f64,
            copies_bound,
        );
        self.stop_checked(SC, c)?;
        v.delete(&entry_path(name)).await
    }

    /// Create or change a source: until its N copies (the watch) and its
    /// entry (read back) hold the value, then quiet.
    async fn timed_change(
        &self,
        v: &VaultServer,
        source: &Secret,
        n: usize,
        t0: Instant,
        from: usize,
        timeout: Duration,
    ) -> Result<Timed> {
        let hash = Replica::render(source, SOURCE_NS).hash;
        let hashes = HashSet::from([hash.clone()]);
        let want = [wanted(source)];
        let (copies, entry) = tokio::join!(
            self.watch.wait_copies(&hashes, n, timeout),
            v.wait_entries(&want, timeout)
        );
        copies?;
        let entry_at = entry?[0];
        self.watch
            .settle(
                DEBOUNCE + Duration::from_millis(1500),
                Duration::from_secs(120),
            )
            .await?;
        // The first time each copy carried the new hash, as received.
        let mut first = std::collections::HashMap::new();
        for e in self.watch.log_since(from) {
            if e.hash == hash {
                first.entry(e.key).or_insert(e.at);
            }
        }
        let last = first.values().max().copied().unwrap_or(t0);
        Ok(Timed {
            copies_s: last.duration_since(t0).as_secs_f64(),
            entry_s: entry_at.duration_since(t0).as_secs_f64(),
        })
    }

    /// The figures of part A's creation (`changes` = 1) or updates
    /// (`changes` runs), `requests` Vault requests each.
    fn report_change(
        &mut self,
        what: &str,
        timed: &[Timed],
        cost: &Cost,
        requests: f64,
        changes: f64,
        copies_bound: f64,
    ) {
        let n = self.p.vault_ns as f64;
        let v_rate = f64::from(self.p.vault_rate);
        let d = DEBOUNCE.as_secs_f64();
        let entry_bound = d + requests / v_rate;
        let both_bound = copies_bound.max(entry_bound);
        let copies: Vec<f64> = timed.iter().map(|t| t.copies_s).collect();
        let entry: Vec<f64> = timed.iter().map(|t| t.entry_s).collect();
        let both: Vec<f64> = timed.iter().map(|t| t.copies_s.max(t.entry_s)).collect();
        let runs = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let of = if timed.len() > 1 {
            format!(" (median of {})", timed.len())
        } else {
            String::new()
        };
        self.report.add_note(
            SC,
            &format!("{what}: time to last copy{of}"),
            median(&copies),
            "s",
            Target::AtMost(copies_bound * 1.1),
            &format!(
                "D + N/R = {copies_bound:.2} s, +10%; runs {}",
                runs(&copies)
            ),
        );
        self.report.add_note(
            SC,
            &format!("{what}: time to the Vault entry{of}"),
            median(&entry),
            "s",
            Target::AtMost(entry_bound * 1.1),
            &format!(
                "D + {requests} requests / VAULT_RATE_LIMIT = {entry_bound:.3} s, +10%; runs {}; polled every {} ms",
                runs(&entry),
                POLL.as_millis()
            ),
        );
        self.report.add_note(
            SC,
            &format!("{what}: time to copies and entry{of}"),
            median(&both),
            "s",
            Target::AtMost(both_bound * 1.1),
            &format!("the larger bound, {both_bound:.2} s, +10%"),
        );
        self.report.add_note(
            SC,
            &format!("{what}: copy writes per change (API server)"),
            cost.api_writes("secrets", changes) / changes,
            "",
            Target::Exactly(n),
            &format!(
                "the bench's own {changes} source write(s) subtracted; events written {}; controller's push_to_k8s_writes_total {}",
                cost.api_writes("events", 0.0),
                cost.k8s_writes
            ),
        );
        self.report.add_note(
            SC,
            &format!("{what}: Vault requests per change (controller)"),
            cost.ops.total() / changes,
            "",
            Target::Exactly(requests),
            &format!("push_to_k8s_vault_requests_total: {}", cost.ops.describe()),
        );
        self.report.add_note(
            SC,
            &format!("{what}: Vault requests per change (audit log)"),
            cost.audited.total() as f64 / changes,
            "",
            Target::Exactly(requests),
            &cost.audited.describe(),
        );
        self.report.add(
            SC,
            &format!("{what}: failed Vault requests"),
            cost.ops.failed,
            "",
            Target::Exactly(0.0),
        );
    }

    /// Part B: S sources to S entries, no namespace; then the periodic check.
    async fn vault_many(&mut self, v: &VaultServer) -> Result<()> {
        let (s_count, v_rate) = (self.p.vault_sources, f64::from(self.p.vault_rate));
        println!(
            "\n== vault B: {s_count} sources to Vault, no target namespace, VAULT_RATE_LIMIT = {v_rate}/s"
        );
        // Every bench namespace parked: the namespace side has nothing to do.
        self.cluster.set_targets(0).await?;
        let names: Vec<String> = (0..s_count).map(|i| format!("vault-b-{i:03}")).collect();
        let paths: Vec<String> = names.iter().map(|n| entry_path(n)).collect();
        v.delete_all(&paths).await?;
        let mut c = self.vault_controller("vault-b", v, NO_CHECK_S)?;
        c.wait_ready(Duration::from_secs(60), READY_POLL).await?;
        self.vault_settle(&c, self.vault_quiet_time(), Duration::from_secs(60))
            .await?;
        let api = self.cluster.secrets(SOURCE_NS);
        let bound_for = |requests: f64, spread: f64| {
            spread + DEBOUNCE.as_secs_f64() + s_count as f64 * requests / v_rate
        };
        let timeout = Duration::from_secs_f64(
            bound_for(CREATE_REQUESTS.max(UPDATE_REQUESTS), 10.0) * 5.0 + 60.0,
        );

        // Creation.
        let m = self.mark(&c, v).await?;
        let t0 = Instant::now();
        let created: Vec<Secret> = futures::stream::iter(names.clone())
            .map(|name| {
                let api = api.clone();
                async move {
                    api.create(&PostParams::default(), &vault_source(&name))
                        .await
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect()
            .await
            .context("create the sources")?;
        let spread = t0.elapsed().as_secs_f64();
        let (took, cost) = self
            .written_many((&c, v, &m, t0), created, "created", timeout)
            .await?;
        let what = format!("B S={s_count} create");
        self.report
            .api
            .insert(format!("vault {what}"), cost.api.table());
        let bound = bound_for(CREATE_REQUESTS, spread);
        self.report_many(&what, took, spread, bound, CREATE_REQUESTS, &cost);

        // Every value changed.
        let m = self.mark(&c, v).await?;
        let t0 = Instant::now();
        let updated: Vec<Secret> = futures::stream::iter(names.clone())
            .map(|name| {
                let api = api.clone();
                async move {
                    let p = json!({"data": {"password": password(&name, 1)}});
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(&p))
                        .await
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect()
            .await
            .context("update the sources")?;
        let spread = t0.elapsed().as_secs_f64();
        let (took, cost) = self
            .written_many((&c, v, &m, t0), updated, "updated", timeout)
            .await?;
        let what = format!("B S={s_count} update");
        self.report
            .api
            .insert(format!("vault {what}"), cost.api.table());
        let bound = bound_for(UPDATE_REQUESTS, spread);
        self.report_many(&what, took, spread, bound, UPDATE_REQUESTS, &cost);
        self.stop_checked(SC, c)?;

        let r = self.vault_check(v, s_count).await;
        v.delete_all(&paths).await?;
        r
    }

    /// After `objects` were created or changed (from `t0`): when every entry
    /// held its value, and what it cost once Vault settled.
    async fn written_many(
        &self,
        (c, v, m, t0): (&Daemon, &VaultServer, &Mark, Instant),
        mut objects: Vec<Secret>,
        verb: &str,
        timeout: Duration,
    ) -> Result<(f64, Cost)> {
        let spread = t0.elapsed().as_secs_f64();
        objects.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let want: Vec<Wanted> = objects.iter().map(wanted).collect();
        let seen = v.wait_entries(&want, timeout).await?;
        let last = seen.iter().max().copied().unwrap_or(t0);
        let took = last.duration_since(t0).as_secs_f64();
        println!(
            "bench:   {} sources {verb} in {spread:.2} s, every entry written after {took:.3} s",
            objects.len()
        );
        self.vault_settle(c, self.vault_quiet_time(), timeout)
            .await?;
        Ok((took, self.cost_since(m, c, v).await?))
    }

    fn report_many(
        &mut self,
        what: &str,
        took: f64,
        spread: f64,
        bound: f64,
        requests: f64,
        cost: &Cost,
    ) {
        let s = self.p.vault_sources as f64;
        let v_rate = f64::from(self.p.vault_rate);
        self.report.add_note(
            SC,
            &format!("{what}: time to the last entry"),
            took,
            "s",
            Target::AtMost(bound * 1.1),
            &format!(
                "bound {bound:.2} s = {spread:.2} s to send the changes + D + {s} x {requests} / VAULT_RATE_LIMIT {v_rate}, +10%"
            ),
        );
        self.report.add_note(
            SC,
            &format!("{what}: Vault requests per source (controller)"),
            cost.ops.total() / s,
            "",
            Target::Exactly(requests),
            &format!("push_to_k8s_vault_requests_total: {}", cost.ops.describe()),
        );
        self.report.add_note(
            SC,
            &format!("{what}: Vault requests per source (audit log)"),
            cost.audited.total() as f64 / s,
            "",
            Target::Exactly(requests),
            &cost.audited.describe(),
        );
        self.report.add(
            SC,
            &format!("{what}: failed Vault requests"),
            cost.ops.failed,
            "",
            Target::Exactly(0.0),
        );
        let span = cost.audited.span_s();
        self.report.add_note(
            SC,
            &format!("{what}: Vault requests in any 1 s (audit log)"),
            cost.audited.max_per_second() as f64,
            "",
            Target::AtMost(v_rate + 1.0),
            &format!(
                "VAULT_RATE_LIMIT + 1 (burst 1); arrival times in Vault; {} requests over {span:.3} s = {:.1}/s",
                cost.audited.times.len(),
                (cost.audited.times.len().saturating_sub(1)) as f64 / span.max(1e-9)
            ),
        );
        self.report.add_note(
            SC,
            &format!("{what}: Kubernetes writes (API server)"),
            cost.api_writes("secrets", s) + cost.api_writes("configmaps", 0.0),
            "",
            Target::Exactly(0.0),
            &format!(
                "secrets and configmaps, the bench's own {s} subtracted; events written {} (Events on the sources)",
                cost.api_writes("events", 0.0)
            ),
        );
    }

    /// A controller with a short check interval over S entries in sync: its
    /// start, then one periodic check.
    async fn vault_check(&mut self, v: &VaultServer, s_count: usize) -> Result<()> {
        let v_rate = f64::from(self.p.vault_rate);
        let s = s_count as f64;
        // Long enough for a check (S reads at the Vault rate) and the quiet
        // that tells it is over, with room to spare before the next one.
        let check_s = 10.max((3.0 * s / v_rate).ceil() as u64 + 5);
        println!(
            "\n== vault B: periodic check over {s_count} entries in sync, VAULT_CHECK_INTERVAL_SECONDS = {check_s}"
        );
        let m0 = Mark {
            ops: Ops::default(),
            k8s_writes: 0.0,
            api: self.counts().await?,
            audit: v.audit_len(),
        };
        let mut c = self.vault_controller("vault-b-check", v, check_s)?;
        c.wait_ready(Duration::from_secs(60), READY_POLL).await?;
        // The start looks at every entry (reading its metadata), once the
        // first plan (a debounce after the start) tells it of the sources:
        // quiet for a debounce longer than between two requests.
        let quiet = self.vault_quiet_time();
        let start_quiet = quiet + DEBOUNCE + Duration::from_secs(1);
        let start = Instant::now();
        loop {
            let ops = self
                .vault_settle(&c, start_quiet, Duration::from_secs(check_s + 60))
                .await?;
            if ops.read >= s || start.elapsed() > Duration::from_secs(check_s + 60) {
                break;
            }
        }
        let at = c
            .started
            .elapsed()
            .saturating_sub(start_quiet)
            .as_secs_f64();
        let cost = self.cost_since(&m0, &c, v).await?;
        println!("bench:   start over {s_count} entries done after {at:.1} s");
        self.report.add_note(
            SC,
            &format!("B start over {s_count} entries in sync: Vault writes"),
            cost.ops.writes() + cost.audited.writes() as f64,
            "",
            Target::Exactly(0.0),
            &format!(
                "controller: {}; audit log: {}",
                cost.ops.describe(),
                cost.audited.describe()
            ),
        );
        self.report.add_note(
            SC,
            &format!("B start over {s_count} entries in sync: metadata reads"),
            cost.ops.read,
            "",
            Target::Info,
            &format!(
                "one per entry is {s_count}; audit log {}",
                cost.audited.read
            ),
        );
        if at >= check_s as f64 {
            bail!(
                "the start's reads went on until {at:.1} s, past the first periodic check at {check_s} s"
            );
        }

        // The next periodic check.
        let m = self.mark(&c, v).await?;
        let t = Instant::now();
        loop {
            let ops = Ops::of(&c.metrics().await);
            if ops.total() > m.ops.total() {
                break;
            }
            if t.elapsed() > Duration::from_secs(check_s + 30) {
                bail!(
                    "no Vault request within {} s of a check interval of {check_s} s",
                    check_s + 30
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.vault_settle(&c, quiet, Duration::from_secs(check_s))
            .await?;
        let cost = self.cost_since(&m, &c, v).await?;
        self.report
            .api
            .insert(format!("vault B S={s_count} check"), cost.api.table());
        self.report.add_note(
            SC,
            &format!("B check over {s_count} entries in sync: metadata reads"),
            cost.ops.read,
            "",
            Target::Exactly(s),
            &format!("push_to_k8s_vault_requests_total: {}", cost.ops.describe()),
        );
        self.report.add_note(
            SC,
            &format!("B check over {s_count} entries: metadata reads (audit)"),
            cost.audited.read as f64,
            "",
            Target::Exactly(s),
            &cost.audited.describe(),
        );
        self.report.add_note(
            SC,
            &format!("B check over {s_count} entries: Vault writes"),
            cost.ops.writes() + cost.audited.writes() as f64,
            "",
            Target::Exactly(0.0),
            "controller's write, metadata and delete, and the audit log's",
        );
        self.report.add_note(
            SC,
            &format!("B check over {s_count} entries: Kubernetes writes"),
            cost.api_writes("secrets", 0.0)
                + cost.api_writes("configmaps", 0.0)
                + cost.api_writes("events", 0.0),
            "",
            Target::Exactly(0.0),
            "secrets, configmaps and events (API server)",
        );
        self.report.add_note(
            SC,
            &format!("B check over {s_count} entries: duration (audit log)"),
            cost.audited.span_s(),
            "s",
            Target::Info,
            &format!(
                "first to last request; (S - 1) / VAULT_RATE_LIMIT = {:.2} s",
                (s - 1.0) / v_rate
            ),
        );
        self.stop_checked(SC, c)
    }
}
