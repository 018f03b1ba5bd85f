//! Scenario 4, restart: the controller that made the copies is stopped with
//! SIGTERM (exit status 0) and a new one started over them: time to ready
//! (`/readyz` 200), to verified (first flush done), and zero writes. The same
//! measured start serves the memory scenario's fresh starts, and the kinds
//! and scale scenarios' starts over seeded copies.

use std::time::Duration;

use anyhow::{Result, bail};
use push_to_k8s::model::kinds::Kind;

use crate::Bench;
use crate::controller::{READY_POLL, Settings};
use crate::daemon::Daemon;
use crate::metrics::Counts;
use crate::report::{RssPoint, Target};

/// A controller started over copies in sync, and what its start cost.
pub struct Started {
    pub c: Daemon,
    /// From the spawn to `/readyz` 200.
    pub ready: Duration,
    /// From the spawn to the first flush done.
    pub verified: Duration,
    /// RSS 5 s after the first flush.
    pub rss: f64,
    /// The API server's requests from just before the spawn until then.
    pub api: Counts,
    /// Copy writes among them (the kinds started over).
    pub writes: f64,
    /// `push_to_k8s_writes_total` of the new process.
    pub writes_daemon: f64,
    /// Changes the copy watch (Secrets) saw meanwhile.
    pub copy_events: usize,
}

impl Started {
    /// LIST requests of the start (namespaces and the kinds started over).
    pub fn lists(&self, kinds: &[Kind]) -> f64 {
        kinds
            .iter()
            .map(|k| self.api.get("LIST", &k.api_resource().plural))
            .sum::<f64>()
            + self.api.get("LIST", "namespaces")
    }
}

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

    /// Start a controller over `want` Secret copies in sync (see
    /// [`Bench::start_over`]); `judge`: report the start as scenario 4.
    /// Returns it running, with its RSS 5 s after the first flush.
    pub async fn restart(
        &mut self,
        name: &str,
        settings: &Settings,
        want: usize,
        judge: bool,
    ) -> Result<(Daemon, f64)> {
        let sc = "restart";
        let s = self.start_over(name, settings, &[Kind::Secret]).await?;
        if !judge {
            return Ok((s.c, s.rss));
        }
        self.report.api.insert("restart".into(), s.api.table());
        self.report.add(
            sc,
            "time to ready (/readyz 200)",
            s.ready.as_secs_f64(),
            "s",
            Target::Below(15.0),
        );
        self.report.add_note(
            sc,
            "time to verified (first flush done)",
            s.verified.as_secs_f64(),
            "s",
            Target::Below(15.0),
            "push_to_k8s_batch_size_count >= 1",
        );
        self.report.add_note(
            sc,
            "write requests after the restart (API server)",
            s.writes,
            "",
            Target::Exactly(0.0),
            &format!(
                "controller counted {}; copy watch saw {} changes; {} LISTs",
                s.writes_daemon,
                s.copy_events,
                s.lists(&[Kind::Secret])
            ),
        );
        self.report.add(
            "memory",
            &format!("RSS after a restart with {want} copies"),
            s.rss,
            "MiB",
            Target::Below(64.0),
        );
        self.report.rss_points.push(RssPoint {
            label: "after a restart".into(),
            copies: want,
            rss_mib: s.rss,
        });
        Ok((s.c, s.rss))
    }

    /// Start a controller over copies (of `kinds`) in sync and measure its
    /// start: ready, verified (first flush done), the API server's requests
    /// and the copy writes among them, and its RSS 5 s after the first flush.
    pub async fn start_over(
        &mut self,
        name: &str,
        settings: &Settings,
        kinds: &[Kind],
    ) -> Result<Started> {
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
        let api = self.counts().await?.minus(&api0);
        let writes = kinds
            .iter()
            .map(|k| api.writes(&k.api_resource().plural))
            .sum();
        let writes_daemon = c.metric_sum("push_to_k8s_writes_total", &[]).await;
        let copy_events = self.watch.log_len() - from;
        println!(
            "bench: {name}: ready after {:.2} s, first flush after {:.2} s, {writes} writes, RSS {rss:.1} MiB",
            ready.as_secs_f64(),
            verified.as_secs_f64(),
        );
        Ok(Started {
            c,
            ready,
            verified,
            rss,
            api,
            writes,
            writes_daemon,
            copy_events,
        })
    }
}
