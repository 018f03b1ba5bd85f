//! What the bench measures against: the release binary (rebuilt when older
//! than the sources) and its own control plane, taken down at the end, and
//! what that control plane uses (memory, etcd's database) as it grows.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::control_plane::{self, ControlPlane};
use crate::controller::status_kib;
use crate::http_get::http_get;
use crate::metrics::sum_metric;

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
pub fn controller_binary(repo: &Path) -> Result<PathBuf> {
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

/// A control plane of the bench's own (`PUSH_TO_K8S_CP_DIR=
/// /tmp/push-to-k8s-bench-cp-$UID`, and `...-remote-1`, `-remote-2` for the
/// remote scenario's clusters; never the e2e suite's instances); `cp.sh
/// down` on drop, also on failure, unless `--keep-cp`.
pub struct BenchControlPlane {
    pub cp: ControlPlane,
    keep: bool,
}

impl BenchControlPlane {
    /// `/tmp/push-to-k8s-bench-cp-$UID`, with `suffix` appended (the remote
    /// clusters' planes: `-remote-1`, ...).
    pub fn dir(suffix: &str) -> PathBuf {
        PathBuf::from(format!(
            "/tmp/push-to-k8s-bench-cp-{}{suffix}",
            control_plane::uid()
        ))
    }

    /// The bench's own control plane.
    pub fn up(keep: bool) -> Result<BenchControlPlane> {
        Self::up_at(Self::dir(""), keep)
    }

    /// `cp.sh up` with `PUSH_TO_K8S_CP_DIR=dir` (blocking).
    pub fn up_at(dir: PathBuf, keep: bool) -> Result<BenchControlPlane> {
        // Held before `up` so that a half-started instance is still taken down.
        let cp = BenchControlPlane {
            cp: ControlPlane::at(Some(dir))?,
            keep,
        };
        let dir = cp.state_dir().display();
        println!("bench: starting a bench control plane (PUSH_TO_K8S_CP_DIR={dir})");
        let status = cp
            .cp
            .command(&["up"])
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .status()
            .context("run tests/control-plane/cp.sh up")?;
        if !status.success() {
            bail!("tests/control-plane/cp.sh up failed ({status}); logs in {dir}");
        }
        Ok(cp)
    }

    pub fn state_dir(&self) -> &Path {
        self.cp
            .dir
            .as_deref()
            .expect("the bench names its state directory")
    }
}

impl Drop for BenchControlPlane {
    fn drop(&mut self) {
        if self.keep {
            println!(
                "bench: control plane left up: export KUBECONFIG={}",
                self.cp.kubeconfig.display()
            );
            return;
        }
        println!(
            "bench: taking the bench control plane in {} down",
            self.state_dir().display()
        );
        let _ = self.cp.command(&["down"]).stdout(Stdio::null()).status();
    }
}

/// What the control plane uses: kube-apiserver's and etcd's RSS (by their pid
/// files in the state directory) and etcd's database (its own `/metrics`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlaneUsage {
    pub apiserver_rss_mib: f64,
    /// kube-apiserver's highest RSS so far (VmHWM).
    pub apiserver_hwm_mib: f64,
    pub etcd_rss_mib: f64,
    /// etcd's database file; of it in use (the rest: pages freed by
    /// compaction, reused before the file grows).
    pub etcd_db_mib: f64,
    pub etcd_db_in_use_mib: f64,
    /// etcd refuses every write ("database space exceeded") beyond this.
    pub etcd_quota_mib: f64,
}

impl PlaneUsage {
    /// Now, for the instance in `dir`; NaN for what cannot be read.
    pub async fn of(dir: &Path) -> PlaneUsage {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let status = |daemon: &str, field: &str| match read(&format!("{daemon}.pid")).trim().parse()
        {
            Ok(pid) => status_kib(pid, field) / 1024.0,
            Err(_) => f64::NAN,
        };
        let etcd = match read("etcd.port").trim().parse() {
            Ok(port) => http_get(port, "/metrics").await.map(|(_, b)| b),
            Err(_) => None,
        };
        let mib = |name: &str| match &etcd {
            Some(text) => sum_metric(text, name, &[]) / 1024.0 / 1024.0,
            None => f64::NAN,
        };
        PlaneUsage {
            apiserver_rss_mib: status("kube-apiserver", "VmRSS:"),
            apiserver_hwm_mib: status("kube-apiserver", "VmHWM:"),
            etcd_rss_mib: status("etcd", "VmRSS:"),
            etcd_db_mib: mib("etcd_mvcc_db_total_size_in_bytes"),
            etcd_db_in_use_mib: mib("etcd_mvcc_db_total_size_in_use_in_bytes"),
            etcd_quota_mib: mib("etcd_server_quota_backend_bytes"),
        }
    }
}
