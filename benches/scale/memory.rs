//! Scenario 3, memory, with scenarios 2 (steady state) and 4 (restart) run
//! over the same copies: RSS with no copies, while the controller creates
//! them, in sync after a resync, after a restart; then unrelated Secrets are
//! added, which must not make a running or a freshly started controller grow.
//! The kinds scenario measures unrelated ConfigMaps the same way.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use push_to_k8s::model::kinds::Kind;

use crate::controller::{READY_POLL, STOP_TIMEOUT, Settings};
use crate::daemon::Daemon;
use crate::report::{Report, RssPoint, RssSample, Target, median};
use crate::steady::Resync;
use crate::{Bench, DEBOUNCE, RATE};

/// Objects the controller must never even see, added while it runs over
/// copies in sync, and where their figures go.
pub struct Unrelated {
    pub scenario: &'static str,
    /// Of which kind, how many, spread over the first `namespaces` targets.
    pub kind: Kind,
    pub count: usize,
    pub namespaces: usize,
    /// The kinds of the copies the controller runs over, and how many in all.
    pub copy_kinds: Vec<Kind>,
    pub copies: usize,
    /// The plotted series its RSS points go to.
    pub points: fn(&mut Report) -> &mut Vec<RssPoint>,
}

impl Bench<'_> {
    /// Scenarios 3, 2 and 4 over `mem_ns` namespaces x `mem_sources` sources.
    pub async fn memory(&mut self) -> Result<()> {
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
        c.wait_ready(Duration::from_secs(60), READY_POLL).await?;
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
        let resync = Resync {
            scenario: "steady",
            label: String::new(),
            namespaces: self.cluster.namespace_count().await?,
            kinds: vec![(Kind::Secret, s_count, want)],
        };
        self.steady(&c, &resync).await?;

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
        let (c, rss_restart) = self.restart_in_sync(c, &settings, want).await?;

        // 3b. Unrelated Secrets.
        let u = Unrelated {
            scenario: sc,
            kind: Kind::Secret,
            count: self.p.unrelated,
            namespaces: n,
            copy_kinds: vec![Kind::Secret],
            copies: want,
            points: |r| &mut r.rss_points,
        };
        let (c, fresh_before) = self.fresh_starts(c, rss_restart, &settings, &u).await?;
        c.wait_resync("first resync after the start").await?;
        self.unrelated(c, fresh_before, &settings, &u).await?;
        self.cluster.reset(&self.watch).await
    }

    /// Two more fresh starts after `c` (the first start over the copies,
    /// whose RSS was `rss_first`): returns the third, running, and the RSS
    /// of all three (5 s after each first flush), the "before" of
    /// [`Bench::unrelated`].
    pub async fn fresh_starts(
        &mut self,
        mut c: Daemon,
        rss_first: f64,
        settings: &Settings,
        u: &Unrelated,
    ) -> Result<(Daemon, Vec<f64>)> {
        let mut fresh = vec![rss_first];
        for i in 2..=3 {
            c.terminate(STOP_TIMEOUT)?;
            let name = format!("{}-fresh-{i}", u.scenario);
            let s = self.start_over(&name, settings, &u.copy_kinds).await?;
            fresh.push(s.rss);
            c = s.c;
        }
        Ok((c, fresh))
    }

    /// The unrelated objects of `u`: the controller must not even see them.
    /// Two witnesses: a running controller across a resync (it re-lists with
    /// label selectors), and fresh starts without and with them (median of 3
    /// each, as the RSS a start leaves behind varies; `fresh_before` from
    /// [`Bench::fresh_starts`]). `c` is the last of those starts, past its
    /// first resync.
    pub async fn unrelated(
        &mut self,
        mut c: Daemon,
        fresh_before: Vec<f64>,
        settings: &Settings,
        u: &Unrelated,
    ) -> Result<()> {
        let sc = u.scenario;
        let rss_first = c.rss_mib();
        // Control: one more resync with nothing changed, to separate what a
        // resync itself does to RSS (allocator) from the unrelated objects.
        c.wait_resync("a second resync, nothing changed").await?;
        let rss_before = c.rss_mib();
        self.report.add_note(
            sc,
            "control: RSS growth across a resync, nothing changed",
            (rss_before - rss_first) / rss_first * 100.0,
            "%",
            Target::Info,
            &format!("{rss_first:.1} -> {rss_before:.1} MiB"),
        );
        (u.points)(&mut self.report).push(RssPoint {
            label: "in sync, after 2 resyncs".into(),
            copies: u.copies,
            rss_mib: rss_before,
        });
        let (unrelated, what) = (u.count, format!("{}s", u.kind));
        let t = Instant::now();
        let cluster = &self.cluster;
        match u.kind {
            Kind::Secret => cluster.create_unrelated(unrelated, u.namespaces).await?,
            Kind::ConfigMap => {
                cluster
                    .create_unrelated_config_maps(unrelated, u.namespaces)
                    .await?
            }
        }
        println!(
            "bench: {unrelated} unrelated {what} created in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        c.wait_resync(&format!("a resync with the unrelated {what} present"))
            .await?;
        let rss_after = c.rss_mib();
        let growth = (rss_after - rss_before) / rss_before * 100.0;
        self.report.add_note(
            sc,
            &format!("RSS growth, {unrelated} unrelated {what}, running controller"),
            growth,
            "%",
            Target::Below(5.0),
            &format!("{rss_before:.1} -> {rss_after:.1} MiB, each after a full resync"),
        );
        (u.points)(&mut self.report).push(RssPoint {
            label: format!("+ {unrelated} unrelated, after a resync"),
            copies: u.copies,
            rss_mib: rss_after,
        });
        self.report.add(
            sc,
            &format!(
                "peak RSS (VmHWM) of a controller over {} copies, 3 resyncs",
                u.copies
            ),
            c.hwm_mib(),
            "MiB",
            Target::Info,
        );
        c.terminate(STOP_TIMEOUT)?;
        let mut fresh_after = Vec::new();
        for i in 1..=3 {
            let name = format!("{sc}-fresh-unrelated-{i}");
            let mut s = self.start_over(&name, settings, &u.copy_kinds).await?;
            fresh_after.push(s.rss);
            s.c.terminate(STOP_TIMEOUT)?;
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
            &format!("RSS growth, {unrelated} unrelated {what}, fresh start"),
            (after - before) / before * 100.0,
            "%",
            Target::Below(5.0),
            &format!(
                "median of 3 starts, 5 s after the first flush: {before:.1} MiB ({}) -> {after:.1} MiB ({})",
                show(&fresh_before),
                show(&fresh_after)
            ),
        );
        (u.points)(&mut self.report).push(RssPoint {
            label: format!("+ {unrelated} unrelated, fresh start"),
            copies: u.copies,
            rss_mib: after,
        });
        Ok(())
    }
}
