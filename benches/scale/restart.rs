//! Scenario 4, restart: the controller that made the copies is stopped with
//! SIGTERM (exit status 0) and a new one started over them: time to ready
//! (`/readyz` 200), to verified (first flush done), and zero writes. The same
//! measured start serves the memory scenario's fresh starts.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::Bench;
use crate::controller::{READY_POLL, Settings};
use crate::daemon::Daemon;
use crate::report::{RssPoint, Target};

impl Bench<'_> {
    /// Stop `c` (running over `want` copies in sync) and start a new
    /// controller over them, judged; returns it running and its RSS.
    pub async fn restart_in_sync(
        &mut self,
        c: Daemon,
        settings: &Settings,
        want: usize,
    ) -> Result<(Daemon, f64)> {
        self.stop_checked("restart", c)?;
        self.restart("restart", settings, want, true).await
    }

    /// Start a controller over `want` copies in sync; measure ready, verified
    /// (first flush done) and writes (`judge`: report them as scenario 4).
    /// Returns it running, with its RSS 5 s after the first flush.
    pub async fn restart(
        &mut self,
        name: &str,
        settings: &Settings,
        want: usize,
        judge: bool,
    ) -> Result<(Daemon, f64)> {
        let sc = "restart";
        let from = self.watch.log_len();
        let api0 = self.counts().await?;
        let mut c = self.controller(name, settings)?;
        let ready = c.wait_ready(Duration::from_secs(120), READY_POLL).await?;
        let verified = loop {
            if c.metric_sum("push_to_k8s_batch_size_count", &[]).await >= 1.0 {
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
        let writes_daemon = c.metric_sum("push_to_k8s_writes_total", &[]).await;
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
