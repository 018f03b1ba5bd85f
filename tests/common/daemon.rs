//! A running `push-to-k8s` process: started with an exact environment, its
//! `/readyz` and `/metrics`, SIGTERM with the exit status, killed on drop.
//! Shared by the end-to-end kit (`mod.rs` adds `Daemon::start` against the
//! test control plane, and panics where this returns errors) and the
//! benchmark (included by `#[path]`; it adds `/proc` readings).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::http_get::http_get;
use super::metrics::sum_metric;

/// A free TCP port on loopback (for `METRICS_PORT`).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub struct Daemon {
    /// `None` once stopped or killed.
    pub(crate) child: Option<Child>,
    pub pid: u32,
    /// Its stdout and stderr.
    pub log: PathBuf,
    pub metrics_port: u16,
    /// When it was spawned.
    pub started: Instant,
    /// Keep the log when dropped; otherwise it is removed unless the thread
    /// is panicking (a failed test keeps it for diagnosis).
    pub keep_log: bool,
}

impl Daemon {
    /// Run `bin` with exactly `env`, plus PATH, HOME, `kubeconfig` as
    /// KUBECONFIG and a free METRICS_PORT unless `env` sets them; stdout and
    /// stderr go to `log`.
    pub fn spawn(
        bin: &Path,
        kubeconfig: &Path,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> Result<Daemon> {
        let given = |key: &str| env.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let metrics_port = match given("METRICS_PORT") {
            Some(p) => p.parse().with_context(|| format!("METRICS_PORT={p}"))?,
            None => free_port()?,
        };
        let file =
            std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::temp_dir())
            .env("KUBECONFIG", kubeconfig)
            .env("METRICS_PORT", metrics_port.to_string());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        Ok(Daemon {
            pid: child.id(),
            child: Some(child),
            log,
            metrics_port,
            started,
            keep_log: false,
        })
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, if it has exited (and was not stopped here).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// `GET path` on its metrics port: status and body, `None` while nothing answers.
    pub async fn http(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.metrics_port, path).await
    }

    /// Poll `/readyz` every `poll` until it answers 200; the time from the
    /// spawn. An error if the process exits or `timeout` passes first.
    pub async fn wait_ready(&mut self, timeout: Duration, poll: Duration) -> Result<Duration> {
        loop {
            if let Some(status) = self.exited() {
                bail!(
                    "controller exited early with {status} (log {})",
                    self.log.display()
                );
            }
            if matches!(self.http("/readyz").await, Some((200, _))) {
                return Ok(self.started.elapsed());
            }
            if self.started.elapsed() > timeout {
                bail!(
                    "controller not ready within {timeout:?} (log {})",
                    self.log.display()
                );
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// Its own `/metrics` text (empty while nothing answers).
    pub async fn metrics(&self) -> String {
        self.http("/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// Sum of a metric family's samples whose line contains every `filter`.
    pub async fn metric_sum(&self, name: &str, filters: &[&str]) -> f64 {
        sum_metric(&self.metrics().await, name, filters)
    }

    /// SIGTERM, then wait up to `timeout` for the exit status (killed after that).
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("controller already stopped");
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("controller did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.keep_log && !std::thread::panicking() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
