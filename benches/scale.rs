//! Scale benchmark (issue 4): propagation latency, API cost, memory, restart
//! and burst behaviour of the release binary against the project's own, real
//! control plane.
//!
//! ```text
//! cargo bench --bench scale                 # quick size, a few minutes
//! cargo bench --bench scale -- --full       # the issue's sizes
//! cargo bench --bench scale -- --help       # every option
//! ```
//!
//! - The control plane is a private instance (`PUSH_TO_K8S_CP_DIR=
//!   /tmp/push-to-k8s-bench-cp-$UID`), brought up with `tests/control-plane/cp.sh
//!   up` and taken down at the end, also on failure or Ctrl-C (`--keep-cp`
//!   leaves it up), so it never collides with the e2e suite's instance.
//! - The controller is the release binary, run as a separate process. `cargo
//!   bench` builds it with the bench profile (= release settings) before the
//!   bench runs and hands its path over in `CARGO_BIN_EXE_push-to-k8s`; if that
//!   file is missing or older than the sources (bench executable run by hand),
//!   the bench runs `cargo build --release` first.
//! - Independent witnesses: the API server's own `apiserver_request_total`
//!   (by verb and resource), a metadata watch on the copies (timestamps of
//!   every write as seen by a client, plus the server's `managedFields` time),
//!   and `/proc/<pid>` for RSS (`VmRSS`, `VmHWM`) and CPU (`utime + stime`).
//! - Results: printed next to their targets (PASS/MISS), and written to
//!   `target/bench/scale/results.{json,csv}`; the plots (PNG) are drawn by
//!   `benches/plot.py` with matplotlib from a venv under `target/bench-venv`
//!   (created on first use; `--no-plot` skips it).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};

#[path = "../tests/common/http_get.rs"]
mod http_get;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use push_to_k8s::replica::{self, Replica};
use serde::Serialize;
use tokio::task::JoinHandle;

/// Source namespace of every scenario.
const SOURCE_NS: &str = "bench-src";
/// Target namespaces are `bench-t0000`, `bench-t0001`, ...
const TARGET_PREFIX: &str = "bench-t";
/// Namespaces beyond a scenario's N carry this label, which the controller is
/// told to exclude (`EXCLUDE_NAMESPACE_LABEL`), so every scenario has exactly N
/// targets while namespaces are only ever added.
const PARKED_LABEL: &str = "bench.push-to-k8s.io/parked";
/// `default` is protected too, so the bench namespaces are the only targets.
const PROTECTED: &str = "kube-system,kube-public,kube-node-lease,default";
/// D and R of the issue.
const DEBOUNCE: Duration = Duration::from_secs(1);
const RATE: u32 = 100;
/// Concurrency of the bench's own (unthrottled) seeding client.
const SEED_CONCURRENCY: usize = 48;
/// Page size of the controller's lists (`src/resync.rs`, kube's watcher).
const LIST_PAGE: usize = 500;

// ------------------------------------------------------------------ parameters

#[derive(Clone, Debug, Serialize)]
struct Params {
    full: bool,
    /// Scenario 1: target namespace counts, runs per count.
    prop_ns: Vec<usize>,
    prop_runs: usize,
    /// Scenario 5: sources changed at once, target namespaces, limiter burst.
    burst_sources: usize,
    burst_ns: usize,
    burst_b: u32,
    /// Scenarios 2-4: namespaces x sources, and unrelated Secrets added.
    mem_ns: usize,
    mem_sources: usize,
    unrelated: usize,
    scenarios: Vec<String>,
    keep_cp: bool,
    plot: bool,
    docs: Option<PathBuf>,
    /// Another controller binary to measure (e.g. an older build).
    bin: Option<PathBuf>,
}

const SCENARIOS: &[&str] = &["burst", "propagation", "memory"];

const USAGE: &str = "\
usage: cargo bench --bench scale -- [options]

  --full                 the issue's sizes: N in {100,500,1000} x 5 runs, burst 100
                         sources x 100 namespaces, memory 1000 namespaces x 20 sources
  --prop-n A,B,..        propagation target namespace counts (quick: 50,100)
  --runs K               propagation runs per N, median reported (quick: 3, full: 5)
  --burst-sources S      sources changed within 2 s (quick: 20, full: 100)
  --burst-n N            target namespaces of the burst (quick: 50, full: 100)
  --burst-b B            SECRET_SYNC_RATE_BURST of the burst scenario (default 10)
  --mem-ns N             memory/steady/restart namespaces (quick: 100, full: 1000)
  --mem-sources S        memory/steady/restart sources (quick: 5, full: 20)
  --unrelated U          unrelated Secrets added (default: mem-ns x mem-sources)
  --only a,b             run only these of: burst, propagation, memory
                         (memory also measures steady state, CPU and restart)
  --keep-cp              leave the bench control plane up at the end
  --no-plot              do not draw the PNG plots (no Python venv needed)
  --docs DIR             also copy the plots and results.json into DIR (e.g. docs/benchmarks)
  --bin PATH             measure this controller binary instead of the release build
";

fn list(v: &str) -> Result<Vec<usize>> {
    v.split(',')
        .map(|x| x.trim().parse::<usize>().map_err(|e| anyhow!("{x:?}: {e}")))
        .collect()
}

impl Params {
    fn parse(args: Vec<String>) -> Result<Params> {
        let full = args.iter().any(|a| a == "--full");
        let mut p = if full {
            Params {
                full,
                prop_ns: vec![100, 500, 1000],
                prop_runs: 5,
                burst_sources: 100,
                burst_ns: 100,
                burst_b: 10,
                mem_ns: 1000,
                mem_sources: 20,
                unrelated: 0,
                scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
                keep_cp: false,
                plot: true,
                docs: None,
                bin: None,
            }
        } else {
            Params {
                full,
                prop_ns: vec![50, 100],
                prop_runs: 3,
                burst_sources: 20,
                burst_ns: 50,
                burst_b: 10,
                mem_ns: 100,
                mem_sources: 5,
                unrelated: 0,
                scenarios: SCENARIOS.iter().map(|s| s.to_string()).collect(),
                keep_cp: false,
                plot: true,
                docs: None,
                bin: None,
            }
        };
        let mut unrelated = None;
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
            match a.as_str() {
                // `cargo bench` passes `--bench` to every bench executable.
                "--bench" | "--full" => {}
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                "--prop-n" => p.prop_ns = list(&value()?)?,
                "--runs" => p.prop_runs = value()?.parse()?,
                "--burst-sources" => p.burst_sources = value()?.parse()?,
                "--burst-n" => p.burst_ns = value()?.parse()?,
                "--burst-b" => p.burst_b = value()?.parse()?,
                "--mem-ns" => p.mem_ns = value()?.parse()?,
                "--mem-sources" => p.mem_sources = value()?.parse()?,
                "--unrelated" => unrelated = Some(value()?.parse()?),
                "--only" => {
                    p.scenarios = value()?.split(',').map(|s| s.trim().to_string()).collect();
                    if let Some(bad) = p
                        .scenarios
                        .iter()
                        .find(|s| !SCENARIOS.contains(&s.as_str()))
                    {
                        bail!("unknown scenario {bad:?} (known: {SCENARIOS:?})");
                    }
                }
                "--keep-cp" => p.keep_cp = true,
                "--no-plot" => p.plot = false,
                "--docs" => p.docs = Some(PathBuf::from(value()?)),
                "--bin" => p.bin = Some(PathBuf::from(value()?)),
                // Filters that cargo may forward; a harness = false bench ignores them.
                other if !other.starts_with('-') => {}
                other => bail!("unknown option {other:?}\n{USAGE}"),
            }
        }
        p.prop_ns.sort_unstable();
        p.prop_ns.dedup();
        p.unrelated = unrelated.unwrap_or(p.mem_ns * p.mem_sources);
        if p.prop_runs == 0 || p.prop_ns.contains(&0) || p.burst_ns == 0 || p.mem_ns == 0 {
            bail!("counts must be at least 1");
        }
        if !(1..=100).contains(&p.burst_b) {
            bail!("--burst-b must be from 1 to 100 (SECRET_SYNC_RATE_BURST)");
        }
        Ok(p)
    }

    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

// ------------------------------------------------------------------ results

#[derive(Clone, Debug, Serialize)]
struct Figure {
    scenario: String,
    figure: String,
    value: f64,
    unit: String,
    target: String,
    /// PASS, MISS, INFO (no target) or ERROR.
    verdict: String,
    note: String,
}

#[derive(Debug, Default, Serialize)]
struct PropagationResult {
    n: usize,
    bound_s: f64,
    runs_s: Vec<f64>,
    median_s: f64,
    /// (N - 1) / (last copy - first copy): the write rate actually reached.
    write_rate: Vec<f64>,
    /// From the update to the first copy (debounce + first write).
    first_copy_s: Vec<f64>,
}

#[derive(Debug, Default, Serialize)]
struct RssSample {
    t_s: f64,
    copies: usize,
    rss_mib: f64,
    cpu_s: f64,
}

#[derive(Debug, Serialize)]
struct RssPoint {
    label: String,
    copies: usize,
    rss_mib: f64,
}

#[derive(Debug, Default, Serialize)]
struct BurstSeries {
    rate: u32,
    burst: u32,
    /// Client receive times of the copy writes, seconds after the first one.
    watch_times_s: Vec<f64>,
    /// Copy writes per calendar second of the API server (managedFields time).
    server_per_second: Vec<(i64, usize)>,
    /// API server counter samples: (window start, window end, secret writes).
    apiserver_windows: Vec<(f64, f64, f64)>,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    command: String,
    started: String,
    machine: BTreeMap<String, String>,
    params: Option<Params>,
    figures: Vec<Figure>,
    propagation: Vec<PropagationResult>,
    rss_ramp: Vec<RssSample>,
    rss_points: Vec<RssPoint>,
    burst: BurstSeries,
    /// Request counts by verb and resource for selected phases.
    api: BTreeMap<String, BTreeMap<String, f64>>,
}

impl Report {
    fn add(&mut self, scenario: &str, figure: &str, value: f64, unit: &str, target: Target) {
        self.add_note(scenario, figure, value, unit, target, "");
    }

    fn add_note(
        &mut self,
        scenario: &str,
        figure: &str,
        value: f64,
        unit: &str,
        target: Target,
        note: &str,
    ) {
        let (target, verdict) = target.judge(value);
        let f = Figure {
            scenario: scenario.into(),
            figure: figure.into(),
            value,
            unit: unit.into(),
            target,
            verdict: verdict.into(),
            note: note.into(),
        };
        println!("{}", line(&f));
        self.figures.push(f);
    }

    fn error(&mut self, scenario: &str, e: &anyhow::Error) {
        let f = Figure {
            scenario: scenario.into(),
            figure: "scenario failed".into(),
            value: f64::NAN,
            unit: String::new(),
            target: String::new(),
            verdict: "ERROR".into(),
            note: format!("{e:#}"),
        };
        println!("{}", line(&f));
        self.figures.push(f);
    }
}

/// A target a figure is judged against.
enum Target {
    AtMost(f64),
    Below(f64),
    Exactly(f64),
    Info,
}

impl Target {
    fn judge(&self, v: f64) -> (String, &'static str) {
        let pass = |ok: bool| if ok { "PASS" } else { "MISS" };
        match *self {
            Target::AtMost(t) => (format!("<= {}", num(t)), pass(v <= t)),
            Target::Below(t) => (format!("< {}", num(t)), pass(v < t)),
            Target::Exactly(t) => (format!("= {}", num(t)), pass(v == t)),
            Target::Info => (String::new(), "INFO"),
        }
    }
}

fn num(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v == v.trunc() && v.abs() < 1e12 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn line(f: &Figure) -> String {
    let note = if f.note.is_empty() {
        String::new()
    } else {
        format!("  ({})", f.note)
    };
    format!(
        "  {:<5} {:<12} {:<52} {:>12} {:<6} {:<14}{}",
        f.verdict,
        f.scenario,
        f.figure,
        num(f.value),
        f.unit,
        f.target,
        note
    )
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

// ------------------------------------------------------------------ paths and machine

struct Paths {
    repo: PathBuf,
    out: PathBuf,
}

impl Paths {
    fn new() -> Result<Paths> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|p| if p.is_absolute() { p } else { repo.join(p) })
            .unwrap_or_else(|| repo.join("target"));
        let out = target.join("bench/scale");
        std::fs::create_dir_all(out.join("logs"))?;
        Ok(Paths { repo, out })
    }
}

fn uid() -> String {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "0".into())
}

fn machine() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    m.insert("cpu_model".into(), model);
    m.insert(
        "nproc".into(),
        std::thread::available_parallelism()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    if let Some(kib) = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
    {
        m.insert("memory".into(), format!("{:.1} GiB", kib / 1024.0 / 1024.0));
    }
    m.insert(
        "kernel".into(),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .into(),
    );
    m.insert("loadavg_at_start".into(), loadavg());
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    m.insert("git_commit".into(), git(&["rev-parse", "--short", "HEAD"]));
    m.insert(
        "git_uncommitted".into(),
        git(&["status", "--short", "--untracked-files=no"]).replace('\n', ";"),
    );
    m
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

// ------------------------------------------------------------------ the binary

fn newest_mtime(dir: &Path, newest: &mut SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            newest_mtime(&p, newest);
        } else if let Ok(t) = e.metadata().and_then(|m| m.modified()) {
            *newest = (*newest).max(t);
        }
    }
}

/// The release binary, rebuilt if it is missing or older than the sources.
fn controller_binary(repo: &Path) -> Result<PathBuf> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_push-to-k8s"));
    let mut newest = SystemTime::UNIX_EPOCH;
    newest_mtime(&repo.join("src"), &mut newest);
    for f in ["Cargo.toml", "Cargo.lock"] {
        if let Ok(t) = std::fs::metadata(repo.join(f)).and_then(|m| m.modified()) {
            newest = newest.max(t);
        }
    }
    let fresh = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t >= newest)
    };
    if fresh(&built) {
        return Ok(built);
    }
    println!(
        "bench: {} is missing or older than src/; running cargo build --release",
        built.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--bin", "push-to-k8s"])
        .current_dir(repo)
        .status()
        .context("run cargo build --release")?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    let release = repo.join("target/release/push-to-k8s");
    if fresh(&release) {
        Ok(release)
    } else {
        bail!("{} is still older than the sources", release.display())
    }
}

// ------------------------------------------------------------------ control plane

/// The bench's own control plane; `cp.sh down` on drop (also on panic).
struct ControlPlane {
    script: PathBuf,
    dir: PathBuf,
    kubeconfig: PathBuf,
    keep: bool,
}

impl ControlPlane {
    fn up(repo: &Path, keep: bool) -> Result<ControlPlane> {
        let script = repo.join("tests/control-plane/cp.sh");
        let dir = PathBuf::from(format!("/tmp/push-to-k8s-bench-cp-{}", uid()));
        // Constructed first so that a half-started instance is still taken down.
        let cp = ControlPlane {
            kubeconfig: dir.join("admin.kubeconfig"),
            script,
            dir,
            keep,
        };
        println!(
            "bench: starting the bench control plane (PUSH_TO_K8S_CP_DIR={})",
            cp.dir.display()
        );
        let status = cp
            .command("up")
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .context("run tests/control-plane/cp.sh up")?;
        if !status.success() {
            bail!(
                "tests/control-plane/cp.sh up failed ({status}); logs in {}",
                cp.dir.display()
            );
        }
        Ok(cp)
    }

    fn command(&self, verb: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(&self.script)
            .arg(verb)
            .env("PUSH_TO_K8S_CP_DIR", &self.dir)
            .stdin(Stdio::null());
        c
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if self.keep {
            println!(
                "bench: control plane left up: export KUBECONFIG={}",
                self.kubeconfig.display()
            );
            return;
        }
        println!("bench: taking the bench control plane down");
        let _ = self.command("down").stdout(Stdio::null()).status();
    }
}

async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

// ------------------------------------------------------------------ API server counters

/// `apiserver_request_total`, summed by (verb, resource).
#[derive(Clone, Debug, Default)]
struct Counts(HashMap<(String, String), f64>);

const WRITE_VERBS: &[&str] = &[
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "DELETECOLLECTION",
    "APPLY",
];

fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    let pat = format!("{key}=\"");
    labels
        .find(&pat)
        .map(|i| &labels[i + pat.len()..])
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
}

impl Counts {
    fn parse(text: &str) -> Counts {
        let mut m = HashMap::new();
        for l in text.lines() {
            let Some(rest) = l.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            let key = (
                label(labels, "verb").to_string(),
                label(labels, "resource").to_string(),
            );
            *m.entry(key).or_insert(0.0) += v;
        }
        Counts(m)
    }

    fn get(&self, verb: &str, resource: &str) -> f64 {
        self.0
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0.0)
    }

    fn writes(&self, resource: &str) -> f64 {
        WRITE_VERBS.iter().map(|v| self.get(v, resource)).sum()
    }

    fn minus(&self, before: &Counts) -> Counts {
        let mut m = HashMap::new();
        for (k, v) in &self.0 {
            let d = v - before.0.get(k).copied().unwrap_or(0.0);
            if d != 0.0 {
                m.insert(k.clone(), d);
            }
        }
        Counts(m)
    }

    /// `"VERB resource" -> count` for the report.
    fn table(&self) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .filter(|((_, r), _)| !r.is_empty())
            .map(|((v, r), n)| (format!("{v} {r}"), *n))
            .collect()
    }
}

async fn apiserver_counts(client: &kube::Client) -> Result<Counts> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(req)
        .await
        .context("apiserver /metrics")?;
    Ok(Counts::parse(&text))
}

// ------------------------------------------------------------------ controller process

struct Controller {
    child: Option<Child>,
    pid: u32,
    port: u16,
    log: PathBuf,
    started: Instant,
    ticks: f64,
}

struct Settings {
    burst: u32,
    sync_interval_min: u32,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Controller {
    fn start(
        bin: &Path,
        kubeconfig: &Path,
        logs: &Path,
        name: &str,
        s: &Settings,
    ) -> Result<Controller> {
        let port = free_port()?;
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .env("KUBECONFIG", kubeconfig)
            .env("NAMESPACE", SOURCE_NS)
            .env("METRICS_PORT", port.to_string())
            .env(
                "SECRET_SYNC_DEBOUNCE_SECONDS",
                DEBOUNCE.as_secs().to_string(),
            )
            .env("SECRET_SYNC_RATE_LIMIT", RATE.to_string())
            .env("SECRET_SYNC_RATE_BURST", s.burst.to_string())
            .env("SYNC_INTERVAL", s.sync_interval_min.to_string())
            .env("EXCLUDE_NAMESPACE_LABEL", PARKED_LABEL)
            .env("PROTECTED_NAMESPACES", PROTECTED)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        Ok(Controller {
            pid: child.id(),
            child: Some(child),
            port,
            log,
            started,
            ticks: clock_ticks(),
        })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    async fn http(&self, path: &str) -> Option<(u16, String)> {
        http_get::http_get(self.port, path).await
    }

    /// Poll `/readyz` every 20 ms; the time from spawn to the first 200.
    async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "controller exited early ({status}); log {}",
                    self.log.display()
                );
            }
            if matches!(self.http("/readyz").await, Some((200, _))) {
                return Ok(self.started.elapsed());
            }
            if self.started.elapsed() > timeout {
                bail!(
                    "controller not ready within {timeout:?}; log {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.http("/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    async fn metric(&self, name: &str, filters: &[&str]) -> f64 {
        sum_metric(&self.metrics().await, name, filters)
    }

    fn status_kib(&self, field: &str) -> f64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") / 1024.0
    }

    fn hwm_mib(&self) -> f64 {
        self.status_kib("VmHWM:") / 1024.0
    }

    /// utime + stime, in seconds.
    fn cpu_s(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // Fields after the command name (which may contain spaces) start at field 3.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<f64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0.0))
            .collect();
        if f.len() < 13 {
            return f64::NAN;
        }
        (f[11] + f[12]) / self.ticks
    }

    /// SIGTERM and wait for the exit status.
    fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("controller already stopped");
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("controller did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sum_metric(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

// ------------------------------------------------------------------ watch on the copies

/// One write to a copy, as the watch saw it.
#[derive(Clone, Debug)]
struct CopyEvent {
    at: Instant,
    key: (String, String),
    hash: String,
    deleted: bool,
    /// managedFields time of our field manager (server clock, whole seconds).
    server_s: Option<i64>,
}

#[derive(Default)]
struct WatchState {
    copies: HashMap<(String, String), String>,
    by_hash: HashMap<String, usize>,
    log: Vec<CopyEvent>,
    relists: usize,
    synced: bool,
}

impl WatchState {
    fn set(&mut self, key: (String, String), hash: Option<String>) {
        if let Some(old) = self.copies.remove(&key)
            && let Some(n) = self.by_hash.get_mut(&old)
        {
            *n -= 1;
        }
        if let Some(h) = hash {
            *self.by_hash.entry(h.clone()).or_insert(0) += 1;
            self.copies.insert(key, h);
        }
    }
}

/// A metadata watch on every Secret carrying the controller's managed-by
/// label: the client-side witness of each copy write.
struct CopyWatch {
    state: Arc<Mutex<WatchState>>,
    task: JoinHandle<()>,
}

type Meta = kube::api::PartialObjectMeta<Secret>;

fn meta_key(m: &Meta) -> Option<(String, String)> {
    Some((m.metadata.namespace.clone()?, m.metadata.name.clone()?))
}

fn meta_hash(m: &Meta) -> String {
    m.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(replica::HASH_ANNOTATION))
        .cloned()
        .unwrap_or_default()
}

fn server_time(m: &Meta) -> Option<i64> {
    m.metadata
        .managed_fields
        .as_ref()?
        .iter()
        .filter(|f| f.manager.as_deref() == Some(replica::FIELD_MANAGER))
        .filter_map(|f| f.time.as_ref().map(|t| t.0.as_second()))
        .max()
}

impl CopyWatch {
    async fn start(client: kube::Client) -> Result<CopyWatch> {
        let state = Arc::new(Mutex::new(WatchState::default()));
        // `Api<PartialObjectMeta<_>>` makes the watch metadata-only.
        let api: Api<Meta> = Api::all(client);
        let cfg = watcher::Config::default().labels(replica::MANAGED_SELECTOR);
        let st = state.clone();
        let task = tokio::spawn(async move {
            let stream = watcher::watcher(api, cfg).default_backoff();
            let mut stream = std::pin::pin!(stream);
            let mut buffer: Option<Vec<Meta>> = None;
            while let Some(ev) = stream.next().await {
                let at = Instant::now();
                let Ok(ev) = ev else { continue };
                let mut s = st.lock().expect("watch state");
                match ev {
                    Event::Init => buffer = Some(Vec::new()),
                    Event::InitApply(m) => buffer.get_or_insert_with(Vec::new).push(m),
                    Event::InitDone => {
                        s.copies.clear();
                        s.by_hash.clear();
                        for m in buffer.take().unwrap_or_default() {
                            if let Some(k) = meta_key(&m) {
                                s.set(k, Some(meta_hash(&m)));
                            }
                        }
                        if s.synced {
                            s.relists += 1;
                        }
                        s.synced = true;
                    }
                    Event::Apply(m) => {
                        let Some(key) = meta_key(&m) else { continue };
                        let hash = meta_hash(&m);
                        s.set(key.clone(), Some(hash.clone()));
                        s.log.push(CopyEvent {
                            at,
                            key,
                            hash,
                            deleted: false,
                            server_s: server_time(&m),
                        });
                    }
                    Event::Delete(m) => {
                        let Some(key) = meta_key(&m) else { continue };
                        s.set(key.clone(), None);
                        s.log.push(CopyEvent {
                            at,
                            key,
                            hash: String::new(),
                            deleted: true,
                            server_s: None,
                        });
                    }
                }
            }
        });
        let w = CopyWatch { state, task };
        w.wait(
            "the bench's copy watch to sync",
            Duration::from_secs(120),
            |s| s.synced,
        )
        .await?;
        Ok(w)
    }

    fn with<R>(&self, f: impl FnOnce(&WatchState) -> R) -> R {
        f(&self.state.lock().expect("watch state"))
    }

    fn log_len(&self) -> usize {
        self.with(|s| s.log.len())
    }

    fn log_since(&self, from: usize) -> Vec<CopyEvent> {
        self.with(|s| s.log[from.min(s.log.len())..].to_vec())
    }

    fn count_hashes(&self, hashes: &HashSet<String>) -> usize {
        self.with(|s| {
            hashes
                .iter()
                .map(|h| s.by_hash.get(h).copied().unwrap_or(0))
                .sum()
        })
    }

    /// Poll (every 10 ms) until `cond` holds.
    async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&WatchState) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.with(&cond) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until exactly `want` copies carry one of `hashes`.
    async fn wait_copies(
        &self,
        hashes: &HashSet<String>,
        want: usize,
        timeout: Duration,
    ) -> Result<Duration> {
        self.wait(&format!("{want} copies in sync"), timeout, |s| {
            hashes
                .iter()
                .map(|h| s.by_hash.get(h).copied().unwrap_or(0))
                .sum::<usize>()
                == want
        })
        .await
    }

    /// Wait until no copy event has arrived for `quiet`.
    async fn settle(&self, quiet: Duration, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = self.log_len();
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = self.log_len();
            if n != last {
                last = n;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("copies still changing after {timeout:?}");
            }
        }
    }
}

impl Drop for CopyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ------------------------------------------------------------------ cluster helpers

struct Cluster {
    client: kube::Client,
}

fn target_name(i: usize) -> String {
    format!("{TARGET_PREFIX}{i:04}")
}

/// Deterministic filler bytes (no secret, just a realistic size).
fn filler(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.bytes() {
        x = (x ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(x % 64) as usize]
        })
        .collect()
}

/// A source of realistic size: a user name, a password and a ~1 KiB certificate.
fn source_secret(name: &str, version: u64) -> Secret {
    let data = BTreeMap::from([
        (
            "username".to_string(),
            ByteString(format!("svc-{name}").into_bytes()),
        ),
        (
            "password".to_string(),
            ByteString(filler(&format!("{name}/{version}"), 32)),
        ),
        ("ca.crt".to_string(), ByteString(filler(name, 1024))),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                replica::SOURCE_LABEL_KEY.to_string(),
                replica::SOURCE_LABEL_VALUE.to_string(),
            )])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

fn copy_hash(source: &Secret) -> String {
    Replica::render(source, SOURCE_NS).hash
}

impl Cluster {
    fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), ns)
    }

    async fn ensure_source_namespace(&self) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        if api.get_metadata_opt(SOURCE_NS).await?.is_none() {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(SOURCE_NS.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            api.create(&PostParams::default(), &ns).await?;
        }
        Ok(())
    }

    /// Make exactly `bench-t0000 .. bench-t{n-1}` targets: create what is
    /// missing, park (label) every other bench namespace, unpark these.
    /// Only call while no controller runs, or when growing.
    async fn set_targets(&self, n: usize) -> Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let existing: HashMap<String, bool> = api
            .list_metadata(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter_map(|m| {
                let name = m.metadata.name?;
                let parked = m
                    .metadata
                    .labels
                    .is_some_and(|l| l.contains_key(PARKED_LABEL));
                name.starts_with(TARGET_PREFIX).then_some((name, parked))
            })
            .collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Job {
            Create,
            Park,
            Unpark,
        }
        let start = Instant::now();
        let mut jobs = Vec::new();
        for i in 0..n {
            let name = target_name(i);
            match existing.get(&name) {
                None => jobs.push((name, Job::Create)),
                Some(true) => jobs.push((name, Job::Unpark)),
                Some(false) => {}
            }
        }
        for (name, parked) in &existing {
            let idx: usize = name[TARGET_PREFIX.len()..].parse().unwrap_or(usize::MAX);
            if idx >= n && !parked {
                jobs.push((name.clone(), Job::Park));
            }
        }
        let created = jobs.iter().filter(|j| j.1 == Job::Create).count();
        let patched = jobs.len() - created;
        futures::stream::iter(jobs)
            .map(|(name, job)| {
                let api = api.clone();
                async move {
                    let label = |v: serde_json::Value| {
                        serde_json::json!({"metadata": {"labels": {PARKED_LABEL: v}}})
                    };
                    let pp = PatchParams::default();
                    match job {
                        Job::Create => {
                            let ns = Namespace {
                                metadata: ObjectMeta {
                                    name: Some(name),
                                    ..Default::default()
                                },
                                ..Default::default()
                            };
                            api.create(&PostParams::default(), &ns).await.map(|_| ())
                        }
                        Job::Park => api
                            .patch(&name, &pp, &Patch::Merge(&label("true".into())))
                            .await
                            .map(|_| ()),
                        Job::Unpark => api
                            .patch(&name, &pp, &Patch::Merge(&label(serde_json::Value::Null)))
                            .await
                            .map(|_| ()),
                    }
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        if created + patched > 0 {
            println!(
                "bench: {n} target namespaces ({created} created, {patched} relabelled in {:.1} s)",
                start.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// Create (or overwrite) `names` as sources; returns their expected copy hashes.
    async fn create_sources(&self, names: &[String]) -> Result<HashMap<String, String>> {
        let api = self.secrets(SOURCE_NS);
        futures::stream::iter(names.to_vec())
            .map(|name| {
                let api = api.clone();
                async move {
                    let s = api
                        .create(&PostParams::default(), &source_secret(&name, 0))
                        .await?;
                    Ok::<_, kube::Error>((name, copy_hash(&s)))
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect()
            .await
            .context("create sources")
    }

    /// Change one source's password; returns the copies' new expected hash.
    async fn update_source(&self, name: &str, version: u64) -> Result<String> {
        let api = self.secrets(SOURCE_NS);
        let data = source_secret(name, version).data.unwrap_or_default();
        let p = serde_json::json!({"data": {"password": data["password"]}});
        let s = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&p))
            .await
            .with_context(|| format!("update source {name}"))?;
        Ok(copy_hash(&s))
    }

    /// `count` unlabelled Secrets spread over the first `namespaces` targets.
    async fn create_unrelated(&self, count: usize, namespaces: usize) -> Result<()> {
        futures::stream::iter(0..count)
            .map(|j| {
                let api = self.secrets(&target_name(j % namespaces));
                async move {
                    let name = format!("unrelated-{j}");
                    let s = Secret {
                        metadata: ObjectMeta {
                            name: Some(name.clone()),
                            labels: Some(BTreeMap::from([(
                                "app".to_string(),
                                "unrelated".to_string(),
                            )])),
                            ..Default::default()
                        },
                        data: Some(BTreeMap::from([
                            ("token".to_string(), ByteString(filler(&name, 64))),
                            ("ca.crt".to_string(), ByteString(filler("u", 1024))),
                        ])),
                        ..Default::default()
                    };
                    match api.create(&PostParams::default(), &s).await {
                        Ok(_) => Ok(()),
                        Err(kube::Error::Api(e)) if e.is_already_exists() => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .context("create unrelated Secrets")?;
        Ok(())
    }

    /// Delete every source and every copy (no controller may run).
    async fn reset(&self, watch: &CopyWatch) -> Result<()> {
        let start = Instant::now();
        self.secrets(SOURCE_NS)
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(replica::SOURCE_SELECTOR),
            )
            .await?;
        let namespaces: HashSet<String> =
            watch.with(|s| s.copies.keys().map(|k| k.0.clone()).collect());
        futures::stream::iter(namespaces)
            .map(|ns| {
                let api = self.secrets(&ns);
                async move {
                    api.delete_collection(
                        &DeleteParams::default(),
                        &ListParams::default().labels(replica::MANAGED_SELECTOR),
                    )
                    .await
                    .map(|_| ())
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        watch
            .wait("every copy to be gone", Duration::from_secs(300), |s| {
                s.copies.is_empty()
            })
            .await?;
        println!(
            "bench: reset (sources and copies deleted) in {:.1} s",
            start.elapsed().as_secs_f64()
        );
        Ok(())
    }
}

// ------------------------------------------------------------------ scenarios

struct Bench<'a> {
    p: &'a Params,
    bin: PathBuf,
    kubeconfig: PathBuf,
    logs: PathBuf,
    cluster: Cluster,
    watch: CopyWatch,
    report: Report,
}

impl Bench<'_> {
    fn controller(&self, name: &str, s: &Settings) -> Result<Controller> {
        println!(
            "bench: starting controller {name} (load average {})",
            loadavg()
        );
        Controller::start(&self.bin, &self.kubeconfig, &self.logs, name, s)
    }

    async fn counts(&self) -> Result<Counts> {
        apiserver_counts(&self.cluster.client).await
    }

    // ---------------------------------------------------------- 5. burst (+ 6. CPU)

    async fn burst(&mut self) -> Result<()> {
        let (s_count, n, b) = (self.p.burst_sources, self.p.burst_ns, self.p.burst_b);
        let sc = "burst";
        println!("\n== burst: {s_count} sources x {n} namespaces, R = {RATE}/s, burst {b}");
        self.cluster.set_targets(n).await?;
        let mut c = self.controller(
            "burst",
            &Settings {
                burst: b,
                sync_interval_min: 1440,
            },
        )?;
        c.wait_ready(Duration::from_secs(60)).await?;

        // Initial copies: S x N creates, also the CPU cost of creates.
        let names: Vec<String> = (0..s_count).map(|i| format!("burst-{i:03}")).collect();
        let (cpu0, api0) = (c.cpu_s(), self.counts().await?);
        let hashes = self.cluster.create_sources(&names).await?;
        let want = s_count * n;
        let limit = Duration::from_secs_f64(want as f64 / f64::from(RATE) * 3.0 + 120.0);
        let took = self
            .watch
            .wait_copies(&hashes.values().cloned().collect(), want, limit)
            .await?;
        self.watch
            .settle(
                DEBOUNCE + Duration::from_millis(1500),
                Duration::from_secs(120),
            )
            .await?;
        let (cpu1, api1) = (c.cpu_s(), self.counts().await?);
        let creates = api1.minus(&api0).writes("secrets") - s_count as f64;
        println!(
            "bench: {want} initial copies created in {:.1} s",
            took.as_secs_f64()
        );
        self.report.add_note(
            "cpu",
            &format!("CPU s per 1000 creates ({} creates, N={n})", want),
            (cpu1 - cpu0) / creates * 1000.0,
            "s",
            Target::Info,
            &format!("{:.2} CPU s in total", cpu1 - cpu0),
        );

        // The burst: every source changed within 2 s.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let from = self.watch.log_len();
        let writes_daemon0 = c.metric("push_to_k8s_writes_total", &[]).await;
        let (cpu0, api0) = (c.cpu_s(), self.counts().await?);
        let t0 = Instant::now();
        let spacing = Duration::from_secs_f64(1.9 / s_count as f64);
        let mut new_hashes = HashSet::new();
        for (i, name) in names.iter().enumerate() {
            tokio::time::sleep_until((t0 + spacing * i as u32).into()).await;
            new_hashes.insert(self.cluster.update_source(name, 1).await?);
        }
        let changed_in = t0.elapsed();
        // Sample the API server's counters once a second while the controller writes.
        let sampler = {
            let client = self.cluster.client.clone();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let stop2 = stop.clone();
            let h = tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    let s = Instant::now();
                    if let Ok(c) = apiserver_counts(&client).await {
                        out.push((s, Instant::now(), c.writes("secrets")));
                    }
                    tokio::time::sleep_until((s + Duration::from_secs(1)).into()).await;
                }
                out
            });
            (stop, h)
        };
        let limit = Duration::from_secs_f64(want as f64 / f64::from(RATE) * 3.0 + 120.0);
        self.watch.wait_copies(&new_hashes, want, limit).await?;
        let done = t0.elapsed();
        self.watch
            .settle(DEBOUNCE + Duration::from_secs(3), Duration::from_secs(120))
            .await?;
        sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
        let samples = sampler.1.await?;
        let (cpu1, api1) = (c.cpu_s(), self.counts().await?);
        let writes_daemon = c.metric("push_to_k8s_writes_total", &[]).await - writes_daemon0;
        let delta = api1.minus(&api0);
        self.report.api.insert("burst".into(), delta.table());
        let writes = delta.writes("secrets") - s_count as f64;

        let events: Vec<CopyEvent> = self
            .watch
            .log_since(from)
            .into_iter()
            .filter(|e| !e.deleted)
            .collect();
        let mut per_copy: HashMap<&(String, String), usize> = HashMap::new();
        for e in &events {
            *per_copy.entry(&e.key).or_insert(0) += 1;
        }
        let duplicates = per_copy
            .values()
            .map(|n| n.saturating_sub(1))
            .sum::<usize>();
        let untouched = want.saturating_sub(per_copy.len());

        self.report.add_note(
            sc,
            &format!(
                "sources changed (spread over {:.2} s)",
                changed_in.as_secs_f64()
            ),
            s_count as f64,
            "",
            Target::Info,
            "",
        );
        self.report.add_note(
            sc,
            "copy writes counted by the API server",
            writes,
            "",
            Target::Exactly(want as f64),
            &format!("{s_count} x {n}; the bench's own {s_count} source PATCHes subtracted; controller counted {writes_daemon}"),
        );
        self.report.add(
            sc,
            "copies written more than once (watch)",
            duplicates as f64,
            "",
            Target::Exactly(0.0),
        );
        self.report.add(
            sc,
            "copies never written (watch)",
            untouched as f64,
            "",
            Target::Exactly(0.0),
        );

        // Rate over one-second windows, three witnesses.
        let allowed = f64::from(RATE + b);
        let times: Vec<Instant> = events.iter().map(|e| e.at).collect();
        let mut max_sliding = 0usize;
        let mut lo = 0;
        for hi in 0..times.len() {
            while times[hi].duration_since(times[lo]) >= Duration::from_secs(1) {
                lo += 1;
            }
            max_sliding = max_sliding.max(hi - lo + 1);
        }
        let mut per_sec: BTreeMap<i64, usize> = BTreeMap::new();
        for e in &events {
            if let Some(s) = e.server_s {
                *per_sec.entry(s).or_insert(0) += 1;
            }
        }
        let max_server = per_sec.values().copied().max().unwrap_or(0);
        let mut worst_excess = f64::NEG_INFINITY;
        let mut worst = (0.0, 0.0);
        let base = samples.first().map(|s| s.0).unwrap_or(t0);
        let mut windows = Vec::new();
        for w in samples.windows(2) {
            let (s_prev, _, c_prev) = w[0];
            let (_, r_cur, c_cur) = w[1];
            // The counters were read somewhere inside each request: the window
            // is at most from the previous request's start to this one's end.
            let dur = r_cur.duration_since(s_prev).as_secs_f64();
            let count = c_cur - c_prev;
            windows.push((
                s_prev.duration_since(base).as_secs_f64(),
                r_cur.duration_since(base).as_secs_f64(),
                count,
            ));
            let excess = count - (f64::from(RATE) * dur + f64::from(b));
            if excess > worst_excess {
                worst_excess = excess;
                worst = (count, dur);
            }
        }
        self.report.add_note(
            sc,
            "max copy writes in 1 s (API server counters, 1 s samples)",
            worst.0,
            "",
            Target::AtMost((f64::from(RATE) * worst.1 + f64::from(b)).floor()),
            &format!(
                "worst window {:.3} s long; allowed R x window + burst",
                worst.1
            ),
        );
        self.report.add_note(
            sc,
            "max copy writes in one server second (managedFields)",
            max_server as f64,
            "",
            Target::AtMost(allowed),
            "calendar seconds of the API server clock",
        );
        self.report.add_note(
            sc,
            "max copy writes in any sliding 1 s (watch receive time)",
            max_sliding as f64,
            "",
            Target::Info,
            &format!(
                "R + burst = {allowed}; client-side times include request latency and watch delivery jitter"
            ),
        );
        let expected = DEBOUNCE.as_secs_f64() + want as f64 / f64::from(RATE);
        self.report.add_note(
            sc,
            "time from first change to last copy",
            done.as_secs_f64(),
            "s",
            Target::Info,
            &format!("D + S x N / R = {expected:.1} s"),
        );
        let cpu = cpu1 - cpu0;
        self.report.add_note(
            "cpu",
            &format!("CPU s per 1000 updates ({writes} updates, N={n})"),
            cpu / writes * 1000.0,
            "s",
            Target::Info,
            &format!("{cpu:.2} CPU s in total"),
        );
        let first = events.first().map(|e| e.at).unwrap_or(t0);
        self.report.burst = BurstSeries {
            rate: RATE,
            burst: b,
            watch_times_s: times
                .iter()
                .map(|t| t.duration_since(first).as_secs_f64())
                .collect(),
            server_per_second: per_sec.into_iter().collect(),
            apiserver_windows: windows,
        };
        let status = c.stop()?;
        self.report.add_note(
            sc,
            "exit status after SIGTERM",
            f64::from(status.code().unwrap_or(-1)),
            "",
            Target::Exactly(0.0),
            "",
        );
        self.cluster.reset(&self.watch).await
    }

    // ---------------------------------------------------------- 1. propagation

    async fn propagation(&mut self) -> Result<()> {
        let sc = "propagation";
        let ns_list = self.p.prop_ns.clone();
        println!(
            "\n== propagation: N in {ns_list:?}, {} runs each, D = {} s, R = {RATE}/s, burst 1",
            self.p.prop_runs,
            DEBOUNCE.as_secs()
        );
        self.cluster.set_targets(ns_list[0]).await?;
        let mut c = self.controller(
            "propagation",
            &Settings {
                burst: 1,
                sync_interval_min: 1440,
            },
        )?;
        c.wait_ready(Duration::from_secs(60)).await?;
        let name = "prop".to_string();
        let mut hash = self
            .cluster
            .create_sources(std::slice::from_ref(&name))
            .await?[&name]
            .clone();
        let mut version = 0;
        for &n in &ns_list {
            self.cluster.set_targets(n).await?;
            let hs = HashSet::from([hash.clone()]);
            self.watch
                .wait_copies(&hs, n, Duration::from_secs(60 + n as u64 / 10))
                .await?;
            self.watch
                .settle(
                    DEBOUNCE + Duration::from_millis(1500),
                    Duration::from_secs(60),
                )
                .await?;
            let bound = DEBOUNCE.as_secs_f64() + n as f64 / f64::from(RATE);
            let mut res = PropagationResult {
                n,
                bound_s: bound,
                ..Default::default()
            };
            let (cpu0, api0) = (c.cpu_s(), self.counts().await?);
            for run in 0..self.p.prop_runs {
                version += 1;
                let from = self.watch.log_len();
                let t0 = Instant::now();
                hash = self.cluster.update_source(&name, version).await?;
                let hs = HashSet::from([hash.clone()]);
                self.watch
                    .wait_copies(&hs, n, Duration::from_secs_f64(bound * 5.0 + 30.0))
                    .await?;
                // First time each copy carried the new hash, as received.
                let mut first: HashMap<(String, String), Instant> = HashMap::new();
                for e in self.watch.log_since(from) {
                    if e.hash == hash {
                        first.entry(e.key).or_insert(e.at);
                    }
                }
                let last = first.values().max().copied().unwrap_or(t0);
                let earliest = first.values().min().copied().unwrap_or(t0);
                let total = last.duration_since(t0).as_secs_f64();
                let span = last.duration_since(earliest).as_secs_f64();
                res.runs_s.push(total);
                res.first_copy_s
                    .push(earliest.duration_since(t0).as_secs_f64());
                res.write_rate.push(if span > 0.0 {
                    (n - 1) as f64 / span
                } else {
                    f64::NAN
                });
                println!(
                    "bench:   N={n} run {}: {total:.3} s (first copy after {:.3} s, then {:.1} writes/s)",
                    run + 1,
                    earliest.duration_since(t0).as_secs_f64(),
                    res.write_rate.last().unwrap()
                );
                self.watch
                    .settle(
                        DEBOUNCE + Duration::from_millis(1500),
                        Duration::from_secs(60),
                    )
                    .await?;
            }
            let (cpu1, api1) = (c.cpu_s(), self.counts().await?);
            let delta = api1.minus(&api0);
            self.report
                .api
                .insert(format!("propagation N={n}"), delta.table());
            res.median_s = median(&res.runs_s);
            self.report.add_note(
                sc,
                &format!(
                    "N={n}: median time to last copy ({} runs)",
                    res.runs_s.len()
                ),
                res.median_s,
                "s",
                Target::AtMost(bound * 1.1),
                &format!(
                    "bound D + N/R = {bound:.2} s; runs {}; write rate reached {:.1}/s",
                    res.runs_s
                        .iter()
                        .map(|r| format!("{r:.2}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    median(&res.write_rate)
                ),
            );
            let runs = self.p.prop_runs as f64;
            let writes = delta.writes("secrets") - runs;
            self.report.add_note(
                sc,
                &format!("N={n}: copy writes per update (API server)"),
                writes / runs,
                "",
                Target::Exactly(n as f64),
                "",
            );
            self.report.add_note(
                "cpu",
                &format!("CPU s per 1000 updates (1 source, N={n})"),
                (cpu1 - cpu0) / writes * 1000.0,
                "s",
                Target::Info,
                "",
            );
            self.report.rss_points.push(RssPoint {
                label: format!("propagation, 1 source x {n}"),
                copies: n,
                rss_mib: c.rss_mib(),
            });
            self.report.propagation.push(res);
        }
        c.stop()?;
        self.cluster.reset(&self.watch).await
    }

    // ---------------------------------------------------------- 3. memory, 2. steady, 4. restart

    async fn memory(&mut self) -> Result<()> {
        let (n, s_count) = (self.p.mem_ns, self.p.mem_sources);
        let want = n * s_count;
        println!(
            "\n== memory / steady state / restart: {n} namespaces x {s_count} sources = {want} copies"
        );
        self.cluster.set_targets(n).await?;
        let settings = Settings {
            burst: 1,
            sync_interval_min: 1,
        };
        let mut c = self.controller("memory", &settings)?;
        c.wait_ready(Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_empty = c.rss_mib();
        self.report.rss_points.push(RssPoint {
            label: "no copies".into(),
            copies: 0,
            rss_mib: rss_empty,
        });

        // Ramp: the controller creates every copy; sample RSS and CPU meanwhile.
        let names: Vec<String> = (0..s_count).map(|i| format!("mem-{i:02}")).collect();
        let (cpu0, api0) = (c.cpu_s(), self.counts().await?);
        let t0 = Instant::now();
        let hashes: HashSet<String> = self
            .cluster
            .create_sources(&names)
            .await?
            .into_values()
            .collect();
        let deadline = t0 + Duration::from_secs_f64(want as f64 / f64::from(RATE) * 3.0 + 120.0);
        let mut ramp = Vec::new();
        loop {
            let copies = self.watch.count_hashes(&hashes);
            ramp.push(RssSample {
                t_s: t0.elapsed().as_secs_f64(),
                copies,
                rss_mib: c.rss_mib(),
                cpu_s: c.cpu_s() - cpu0,
            });
            if copies == want {
                break;
            }
            if Instant::now() > deadline {
                bail!("only {copies} of {want} copies after {:?}", t0.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let ramp_s = t0.elapsed().as_secs_f64();
        self.watch
            .settle(DEBOUNCE + Duration::from_secs(2), Duration::from_secs(120))
            .await?;
        let (cpu1, api1) = (c.cpu_s(), self.counts().await?);
        let creates = api1.minus(&api0).writes("secrets") - s_count as f64;
        let rss_created = c.rss_mib();
        self.report.rss_points.push(RssPoint {
            label: "in sync, right after creating".into(),
            copies: want,
            rss_mib: rss_created,
        });
        // Keep the plotted series small.
        let step = ramp.len().div_ceil(400).max(1);
        self.report.rss_ramp = ramp.into_iter().step_by(step).collect();
        self.report.add_note(
            "cpu",
            &format!("CPU s per 1000 creates ({creates} creates, N={n})"),
            (cpu1 - cpu0) / creates * 1000.0,
            "s",
            Target::Info,
            &format!("{:.2} CPU s; {want} copies in {ramp_s:.1} s", cpu1 - cpu0),
        );

        // 2. Steady state: one full resync with everything in sync.
        let sc = "steady";
        let writes_daemon0 = c.metric("push_to_k8s_writes_total", &[]).await;
        let api0 = self.counts().await?;
        self.wait_resync(&c, "a full resync with everything in sync")
            .await?;
        let api1 = self.counts().await?;
        let writes_daemon = c.metric("push_to_k8s_writes_total", &[]).await - writes_daemon0;
        let d = api1.minus(&api0);
        self.report.api.insert("steady resync".into(), d.table());
        let gets: f64 = ["secrets", "namespaces"]
            .iter()
            .map(|r| d.get("GET", r))
            .sum();
        let lists: f64 = ["secrets", "namespaces"]
            .iter()
            .map(|r| d.get("LIST", r))
            .sum();
        let pages = 1 + (n + 5).div_ceil(LIST_PAGE) + want.div_ceil(LIST_PAGE);
        self.report.add_note(
            sc,
            "write requests during a full resync (API server)",
            d.writes("secrets") + d.writes("events"),
            "",
            Target::Exactly(0.0),
            &format!("secrets and events; controller counted {writes_daemon}"),
        );
        self.report.add(
            sc,
            "GET requests (secrets, namespaces)",
            gets,
            "",
            Target::Exactly(0.0),
        );
        self.report.add_note(
            sc,
            "LIST requests (secrets, namespaces)",
            lists,
            "",
            Target::AtMost(pages as f64),
            &format!("pages of {LIST_PAGE}: 1 sources + namespaces + {want} copies"),
        );

        // 3. Memory with everything in sync.
        let sc = "memory";
        let rss_synced = c.rss_mib();
        self.report.add_note(
            sc,
            &format!("RSS with {want} copies in sync, after a resync"),
            rss_synced,
            "MiB",
            Target::Below(64.0),
            &format!(
                "{rss_empty:.1} MiB with none; {rss_created:.1} MiB right after creating them"
            ),
        );
        self.report.add_note(
            sc,
            "peak RSS (VmHWM) while creating them and resyncing",
            c.hwm_mib(),
            "MiB",
            Target::Info,
            "",
        );
        self.report.rss_points.push(RssPoint {
            label: "in sync, after a resync".into(),
            copies: want,
            rss_mib: rss_synced,
        });

        // 4. Restart with everything in sync.
        let sc = "restart";
        let status = c.stop()?;
        drop(c);
        self.report.add(
            sc,
            "exit status after SIGTERM",
            f64::from(status.code().unwrap_or(-1)),
            "",
            Target::Exactly(0.0),
        );
        let (mut c, rss_restart) = self.restart("restart", &settings, want, true).await?;

        // 3b. Unrelated Secrets: the controller must not even see them. Two
        // witnesses: fresh starts without and with them (median of 3 each,
        // as the RSS a start leaves behind varies), and a running controller
        // across a resync (it re-lists with label selectors).
        let sc = "memory";
        let mut fresh_before = vec![rss_restart];
        c.stop()?;
        drop(c);
        let (mut c2, rss) = self.restart("fresh-2", &settings, want, false).await?;
        fresh_before.push(rss);
        c2.stop()?;
        drop(c2);
        let (c, rss) = self.restart("fresh-3", &settings, want, false).await?;
        fresh_before.push(rss);
        self.wait_resync(&c, "first resync after the start").await?;
        let rss_first = c.rss_mib();
        // Control: one more resync with nothing changed, to separate what a
        // resync itself does to RSS (allocator) from the unrelated Secrets.
        self.wait_resync(&c, "a second resync, nothing changed")
            .await?;
        let rss_before = c.rss_mib();
        self.report.add_note(
            sc,
            "control: RSS growth across a resync, nothing changed",
            (rss_before - rss_first) / rss_first * 100.0,
            "%",
            Target::Info,
            &format!("{rss_first:.1} -> {rss_before:.1} MiB"),
        );
        self.report.rss_points.push(RssPoint {
            label: "in sync, after 2 resyncs".into(),
            copies: want,
            rss_mib: rss_before,
        });
        let unrelated = self.p.unrelated;
        let t = Instant::now();
        self.cluster.create_unrelated(unrelated, n).await?;
        println!(
            "bench: {unrelated} unrelated Secrets created in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        self.wait_resync(&c, "a resync with the unrelated Secrets present")
            .await?;
        let rss_after = c.rss_mib();
        let growth = (rss_after - rss_before) / rss_before * 100.0;
        self.report.add_note(
            sc,
            &format!("RSS growth, {unrelated} unrelated Secrets, running controller"),
            growth,
            "%",
            Target::Below(5.0),
            &format!("{rss_before:.1} -> {rss_after:.1} MiB, each after a full resync"),
        );
        self.report.rss_points.push(RssPoint {
            label: format!("+ {unrelated} unrelated, after a resync"),
            copies: want,
            rss_mib: rss_after,
        });
        self.report.add(
            sc,
            &format!("peak RSS (VmHWM) of a controller over {want} copies, 3 resyncs"),
            c.hwm_mib(),
            "MiB",
            Target::Info,
        );
        let mut c = c;
        c.stop()?;
        drop(c);
        let mut fresh_after = Vec::new();
        for i in 1..=3 {
            let (mut c, rss) = self
                .restart(&format!("fresh-unrelated-{i}"), &settings, want, false)
                .await?;
            fresh_after.push(rss);
            c.stop()?;
        }
        let (before, after) = (median(&fresh_before), median(&fresh_after));
        let show = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.report.add_note(
            sc,
            &format!("RSS growth, {unrelated} unrelated Secrets, fresh start"),
            (after - before) / before * 100.0,
            "%",
            Target::Below(5.0),
            &format!(
                "median of 3 starts, 5 s after the first flush: {before:.1} MiB ({}) -> {after:.1} MiB ({})",
                show(&fresh_before),
                show(&fresh_after)
            ),
        );
        self.report.rss_points.push(RssPoint {
            label: format!("+ {unrelated} unrelated, fresh start"),
            copies: want,
            rss_mib: after,
        });
        self.cluster.reset(&self.watch).await
    }

    /// Wait for the next completed resync of `c` and the flush it causes.
    async fn wait_resync(&self, c: &Controller, what: &str) -> Result<()> {
        let resyncs = c
            .metric("push_to_k8s_resyncs_total", &["result=\"ok\""])
            .await;
        let batches = c.metric("push_to_k8s_batch_size_count", &[]).await;
        let start = Instant::now();
        loop {
            if c.metric("push_to_k8s_resyncs_total", &["result=\"ok\""])
                .await
                > resyncs
                && c.metric("push_to_k8s_batch_size_count", &[]).await > batches
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(150) {
                bail!("no resync within 150 s (SYNC_INTERVAL=1) waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "bench: {what}: seen after {:.1} s",
            start.elapsed().as_secs_f64()
        );
        // Let anything the resync might cause happen.
        tokio::time::sleep(DEBOUNCE + Duration::from_secs(3)).await;
        Ok(())
    }

    /// Start a controller over `want` copies in sync; measure ready, verified
    /// (first flush done) and writes (`judge`: report them as scenario 4).
    /// Returns it running, with its RSS 5 s after the first flush.
    async fn restart(
        &mut self,
        name: &str,
        settings: &Settings,
        want: usize,
        judge: bool,
    ) -> Result<(Controller, f64)> {
        let sc = "restart";
        let from = self.watch.log_len();
        let api0 = self.counts().await?;
        let mut c = self.controller(name, settings)?;
        let ready = c.wait_ready(Duration::from_secs(120)).await?;
        let verified = loop {
            if c.metric("push_to_k8s_batch_size_count", &[]).await >= 1.0 {
                break c.started.elapsed();
            }
            if c.started.elapsed() > Duration::from_secs(120) {
                bail!("no first flush within 120 s of the start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss = c.rss_mib();
        let api1 = self.counts().await?;
        let d = api1.minus(&api0);
        let writes_daemon = c.metric("push_to_k8s_writes_total", &[]).await;
        let copy_events = self.watch.log_len() - from;
        println!(
            "bench: {name}: ready after {:.2} s, first flush after {:.2} s, {} writes, RSS {rss:.1} MiB",
            ready.as_secs_f64(),
            verified.as_secs_f64(),
            d.writes("secrets")
        );
        if !judge {
            return Ok((c, rss));
        }
        self.report.api.insert("restart".into(), d.table());
        self.report.add(
            sc,
            "time to ready (/readyz 200)",
            ready.as_secs_f64(),
            "s",
            Target::Below(15.0),
        );
        self.report.add_note(
            sc,
            "time to verified (first flush done)",
            verified.as_secs_f64(),
            "s",
            Target::Below(15.0),
            "push_to_k8s_batch_size_count >= 1",
        );
        self.report.add_note(
            sc,
            "write requests after the restart (API server)",
            d.writes("secrets"),
            "",
            Target::Exactly(0.0),
            &format!(
                "controller counted {writes_daemon}; copy watch saw {copy_events} changes; {} LISTs",
                d.get("LIST", "secrets") + d.get("LIST", "namespaces")
            ),
        );
        self.report.add(
            "memory",
            &format!("RSS after a restart with {want} copies"),
            rss,
            "MiB",
            Target::Below(64.0),
        );
        self.report.rss_points.push(RssPoint {
            label: "after a restart".into(),
            copies: want,
            rss_mib: rss,
        });
        Ok((c, rss))
    }
}

// ------------------------------------------------------------------ output

fn write_results(paths: &Paths, report: &Report) -> Result<()> {
    let json = paths.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)?;
    let mut csv = String::from("scenario,figure,value,unit,target,verdict,note\n");
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for f in &report.figures {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            q(&f.scenario),
            q(&f.figure),
            f.value,
            q(&f.unit),
            q(&f.target),
            f.verdict,
            q(&f.note)
        ));
    }
    std::fs::write(paths.out.join("results.csv"), csv)?;
    println!("bench: results in {} and results.csv", json.display());
    Ok(())
}

/// Draw the PNGs with matplotlib from a venv under target/ (created once).
fn plot(paths: &Paths, docs: Option<&Path>) -> Result<()> {
    let venv = paths.repo.join("target/bench-venv");
    let python = venv.join("bin/python");
    let has_mpl = |py: &Path| {
        Command::new(py)
            .args(["-c", "import matplotlib"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_mpl(&python) {
        println!("bench: creating {} with matplotlib (once)", venv.display());
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "matplotlib"])
                .status()
                .is_ok_and(|s| s.success());
        if !ok || !has_mpl(&python) {
            bail!(
                "could not set up matplotlib; run `python3 -m venv target/bench-venv && \
                 target/bench-venv/bin/pip install matplotlib`, or pass --no-plot"
            );
        }
    }
    let status = Command::new(&python)
        .arg(paths.repo.join("benches/plot.py"))
        .arg(paths.out.join("results.json"))
        .arg(&paths.out)
        .status()?;
    if !status.success() {
        bail!("benches/plot.py failed ({status})");
    }
    if let Some(dir) = docs {
        std::fs::create_dir_all(dir)?;
        for f in ["propagation.png", "rss.png", "burst.png", "results.json"] {
            let from = paths.out.join(f);
            if from.exists() {
                std::fs::copy(&from, dir.join(f))?;
            }
        }
        println!("bench: plots and results.json copied to {}", dir.display());
    }
    Ok(())
}

async fn run(
    p: &Params,
    paths: &Paths,
    bin: PathBuf,
    cp: &ControlPlane,
    report: &mut Report,
) -> Result<()> {
    let client = client(&cp.kubeconfig).await?;
    let cluster = Cluster {
        client: client.clone(),
    };
    cluster.ensure_source_namespace().await?;
    let watch = CopyWatch::start(client).await?;
    // Leftovers of an interrupted run with --keep-cp.
    cluster.reset(&watch).await?;
    let mut bench = Bench {
        p,
        bin,
        kubeconfig: cp.kubeconfig.clone(),
        logs: paths.out.join("logs"),
        cluster,
        watch,
        report: std::mem::take(report),
    };
    for sc in SCENARIOS {
        if !p.wants(sc) {
            continue;
        }
        let r = match *sc {
            "burst" => bench.burst().await,
            "propagation" => bench.propagation().await,
            _ => bench.memory().await,
        };
        if let Err(e) = r {
            bench.report.error(sc, &e);
            // Whatever the scenario left running was dropped (killed) with it.
            if let Err(e) = bench.cluster.reset(&bench.watch).await {
                bench.report.error("reset", &e);
                break;
            }
        }
    }
    *report = std::mem::take(&mut bench.report);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let p = match Params::parse(args.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let shown: Vec<&String> = args.iter().filter(|a| *a != "--bench").collect();
    let mut report = Report {
        command: if shown.is_empty() {
            "cargo bench --bench scale".into()
        } else {
            format!(
                "cargo bench --bench scale -- {}",
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        },
        started: format!("{:?}", SystemTime::now()),
        machine: machine(),
        params: Some(p.clone()),
        ..Default::default()
    };
    println!("bench: {}", report.command);
    println!("bench: machine {:?}", report.machine);
    println!("bench: parameters {p:?}");
    let result = (|| -> Result<()> {
        let paths = Paths::new()?;
        let bin = match &p.bin {
            Some(b) => b
                .canonicalize()
                .with_context(|| format!("--bin {}", b.display()))?,
            None => controller_binary(&paths.repo)?,
        };
        println!("bench: controller binary {}", bin.display());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let started = Instant::now();
        {
            let cp = ControlPlane::up(&paths.repo, p.keep_cp)?;
            let outcome = rt.block_on(async {
                tokio::select! {
                    r = run(&p, &paths, bin, &cp, &mut report) => r,
                    _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
                }
            });
            // Tasks (the copy watch) and controllers go before the control plane.
            rt.shutdown_timeout(Duration::from_secs(2));
            drop(cp);
            outcome?;
        }
        println!(
            "\n== summary ({:.1} min)",
            started.elapsed().as_secs_f64() / 60.0
        );
        for f in &report.figures {
            println!("{}", line(f));
        }
        write_results(&paths, &report)?;
        if p.plot {
            plot(&paths, p.docs.as_deref())?;
        }
        Ok(())
    })();
    match result {
        Ok(()) if report.figures.iter().any(|f| f.verdict == "ERROR") => ExitCode::from(1),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
