//! What a run measured: every figure next to its target with a verdict
//! (printed as it is measured and again in the summary), the series the plots
//! are drawn from, and the machine it ran on.

use std::collections::BTreeMap;
use std::process::Command;

use serde::Serialize;

use crate::params::Params;
use crate::setup::PlaneUsage;

#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub scenario: String,
    pub figure: String,
    pub value: f64,
    pub unit: String,
    pub target: String,
    /// PASS, MISS, INFO (no target) or ERROR.
    pub verdict: String,
    pub note: String,
}

#[derive(Debug, Default, Serialize)]
pub struct PropagationResult {
    pub n: usize,
    pub bound_s: f64,
    pub runs_s: Vec<f64>,
    pub median_s: f64,
    /// (N - 1) / (last copy - first copy): the write rate actually reached.
    pub write_rate: Vec<f64>,
    /// From the update to the first copy (debounce + first write).
    pub first_copy_s: Vec<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct RssSample {
    pub t_s: f64,
    pub copies: usize,
    pub rss_mib: f64,
    pub cpu_s: f64,
}

#[derive(Debug, Serialize)]
pub struct RssPoint {
    pub label: String,
    pub copies: usize,
    pub rss_mib: f64,
}

/// One size of the scale scenario: the controller's start and resync over
/// copies seeded in sync, and what the control plane holds meanwhile.
#[derive(Debug, Default, Serialize)]
pub struct ScaleSize {
    pub namespaces: usize,
    pub sources: usize,
    pub copies: usize,
    /// Seeding the copies this size added (bench client), and those copies.
    pub seed_s: f64,
    pub seeded: usize,
    pub ready_s: f64,
    pub verified_s: f64,
    pub rss_start_mib: f64,
    pub rss_resync_mib: f64,
    pub hwm_mib: f64,
    pub start_lists: f64,
    pub resync_lists: f64,
    pub resync_writes: f64,
    pub plane: PlaneUsage,
}

#[derive(Debug, Default, Serialize)]
pub struct BurstSeries {
    pub rate: u32,
    pub burst: u32,
    /// Client receive times of the copy writes, seconds after the first one.
    pub watch_times_s: Vec<f64>,
    /// Copy writes per calendar second of the API server (managedFields time).
    pub server_per_second: Vec<(i64, usize)>,
    /// API server counter samples: (window start, window end, secret writes).
    pub apiserver_windows: Vec<(f64, f64, f64)>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub command: String,
    pub started: String,
    pub machine: BTreeMap<String, String>,
    pub params: Option<Params>,
    pub figures: Vec<Figure>,
    pub propagation: Vec<PropagationResult>,
    pub rss_ramp: Vec<RssSample>,
    pub rss_points: Vec<RssPoint>,
    /// The kinds scenario's points (Secret and ConfigMap copies together).
    pub kinds_points: Vec<RssPoint>,
    pub scale: Vec<ScaleSize>,
    pub burst: BurstSeries,
    /// Request counts by verb and resource for selected phases.
    pub api: BTreeMap<String, BTreeMap<String, f64>>,
}

impl Report {
    pub fn add(&mut self, scenario: &str, figure: &str, value: f64, unit: &str, target: Target) {
        self.add_note(scenario, figure, value, unit, target, "");
    }

    pub fn add_note(
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

    pub fn error(&mut self, scenario: &str, e: &anyhow::Error) {
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
pub enum Target {
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

pub fn line(f: &Figure) -> String {
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

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// What the report records about the machine and the code measured.
pub fn machine() -> BTreeMap<String, String> {
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

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
