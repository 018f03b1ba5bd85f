//! The controller under test as the bench runs it: the release binary with
//! the bench's settings, and what `/proc` says about it (RSS, CPU). Starting,
//! readiness, `/metrics` and SIGTERM are the test kit's [`Daemon`].

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::daemon::Daemon;
use crate::{DEBOUNCE, PARKED_LABEL, PROTECTED, RATE, SOURCE_NS};

/// `/readyz` is polled this often: the restart figure is "time to ready".
pub const READY_POLL: Duration = Duration::from_millis(20);
/// How long a controller may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// What differs between the scenarios' controllers.
pub struct Settings {
    pub burst: u32,
    pub sync_interval_min: u32,
}

/// Start `bin` with the bench's settings and `extra` variables beside them;
/// its log is `logs/<name>.log`, kept.
pub fn start(
    bin: &Path,
    kubeconfig: &Path,
    logs: &Path,
    name: &str,
    s: &Settings,
    extra: &[(&str, &str)],
) -> Result<Daemon> {
    let (debounce, rate) = (DEBOUNCE.as_secs().to_string(), RATE.to_string());
    let (burst, interval) = (s.burst.to_string(), s.sync_interval_min.to_string());
    let env = [
        ("NAMESPACE", SOURCE_NS),
        ("SECRET_SYNC_DEBOUNCE_SECONDS", &debounce),
        ("SECRET_SYNC_RATE_LIMIT", &rate),
        ("SECRET_SYNC_RATE_BURST", &burst),
        ("SYNC_INTERVAL", &interval),
        ("EXCLUDE_NAMESPACE_LABEL", PARKED_LABEL),
        ("PROTECTED_NAMESPACES", PROTECTED),
    ];
    let env: Vec<(&str, &str)> = env.iter().chain(extra).copied().collect();
    let mut d = Daemon::spawn(bin, kubeconfig, logs.join(format!("{name}.log")), &env)?;
    d.keep_log = true;
    Ok(d)
}

fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`); NaN if unknown.
pub fn status_kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// utime + stime of process `pid` (a number, or `self`), in seconds; NaN if
/// unknown.
pub fn process_cpu_s(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    if f.len() < 13 {
        return f64::NAN;
    }
    (f[11] + f[12]) / clock_ticks()
}

/// The machine's CPU time from `/proc/stat`: (busy, all), in seconds summed
/// over every core.
pub fn machine_cpu_s() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        // user nice system idle iowait irq softirq steal (guest time is
        // already in user and nice).
        .take(8)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let all: f64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    ((all - idle) / clock_ticks(), all / clock_ticks())
}

impl Daemon {
    pub fn rss_mib(&self) -> f64 {
        status_kib(self.pid, "VmRSS:") / 1024.0
    }

    pub fn hwm_mib(&self) -> f64 {
        status_kib(self.pid, "VmHWM:") / 1024.0
    }

    /// utime + stime, in seconds.
    pub fn cpu_s(&self) -> f64 {
        process_cpu_s(&self.pid.to_string())
    }

    /// Wait for the next completed resync and the flush it causes, then
    /// long enough for anything the resync might cause to happen.
    pub async fn wait_resync(&self, what: &str) -> Result<()> {
        let resyncs = || self.metric_sum("push_to_k8s_resyncs_total", &["result=\"ok\""]);
        let batches = || self.metric_sum("push_to_k8s_batch_size_count", &[]);
        let (resyncs0, batches0) = (resyncs().await, batches().await);
        let start = Instant::now();
        while resyncs().await <= resyncs0 || batches().await <= batches0 {
            if start.elapsed() > Duration::from_secs(150) {
                bail!("no resync within 150 s (SYNC_INTERVAL=1) waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!(
            "bench: {what}: seen after {:.1} s",
            start.elapsed().as_secs_f64()
        );
        tokio::time::sleep(DEBOUNCE + Duration::from_secs(3)).await;
        Ok(())
    }
}
