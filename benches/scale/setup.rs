//! What the bench measures against: the release binary (rebuilt when older
//! than the sources) and its own control plane, taken down at the end.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};

use crate::control_plane::{self, ControlPlane};

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

/// The bench's own control plane (`PUSH_TO_K8S_CP_DIR=
/// /tmp/push-to-k8s-bench-cp-$UID`, never the e2e suite's instance); `cp.sh
/// down` on drop, also on failure, unless `--keep-cp`.
pub struct BenchControlPlane {
    pub cp: ControlPlane,
    keep: bool,
}

impl BenchControlPlane {
    pub fn up(keep: bool) -> Result<BenchControlPlane> {
        let dir = PathBuf::from(format!(
            "/tmp/push-to-k8s-bench-cp-{}",
            control_plane::uid()
        ));
        // Held before `up` so that a half-started instance is still taken down.
        let cp = BenchControlPlane {
            cp: ControlPlane::at(Some(dir))?,
            keep,
        };
        let dir = cp.dir().display();
        println!("bench: starting the bench control plane (PUSH_TO_K8S_CP_DIR={dir})");
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

    fn dir(&self) -> &Path {
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
        println!("bench: taking the bench control plane down");
        let _ = self.cp.command(&["down"]).stdout(Stdio::null()).status();
    }
}
