//! Which instance of the project's control plane (`tests/control-plane/cp.sh`)
//! a run talks to, its kubeconfig, a client for it and the `cp.sh` verbs run
//! against it. Shared by the end-to-end kit (`mod.rs`: the instance the
//! environment names, started once per test binary) and the benchmark (its own
//! instance in its own state directory; included by `#[path]`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// `tests/control-plane/cp.sh`.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/control-plane/cp.sh")
}

/// `bash cp.sh <args>` with no stdin, against the instance in `dir`
/// (`PUSH_TO_K8S_CP_DIR`); `None` leaves the choice to the environment
/// (`PUSH_TO_K8S_CP_DIR` if set, else cp.sh's default).
pub fn command(dir: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).args(args).stdin(Stdio::null());
    if let Some(dir) = dir {
        cmd.env("PUSH_TO_K8S_CP_DIR", dir);
    }
    cmd
}

/// The user id, from `id -u` (no libc dependency): it keys per-user paths.
pub fn uid() -> String {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// One control-plane instance: its state directory and its admin kubeconfig.
pub struct ControlPlane {
    /// `PUSH_TO_K8S_CP_DIR` of every `cp.sh` call; `None`: the environment's.
    pub dir: Option<PathBuf>,
    pub kubeconfig: PathBuf,
}

impl ControlPlane {
    /// The instance in `dir` (see [`command`]), up or not: its kubeconfig is
    /// where `cp.sh env` says.
    pub fn at(dir: Option<PathBuf>) -> Result<ControlPlane> {
        let mut env = command(dir.as_deref(), &["env"]);
        let out = env.output().with_context(|| format!("run {env:?}"))?;
        if !out.status.success() {
            bail!(
                "`cp.sh env` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(path) = text.trim().strip_prefix("export KUBECONFIG=") else {
            bail!("unexpected `cp.sh env` output: {text}");
        };
        Ok(ControlPlane {
            kubeconfig: PathBuf::from(path),
            dir,
        })
    }

    /// `cp.sh <args>` against this instance.
    pub fn command(&self, args: &[&str]) -> Command {
        command(self.dir.as_deref(), args)
    }

    /// A client with the admin kubeconfig and kube's default settings.
    pub async fn client(&self) -> Result<kube::Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("read {}", self.kubeconfig.display()))?;
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(cfg)?)
    }
}
