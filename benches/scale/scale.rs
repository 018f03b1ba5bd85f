//! Scenario 9 (issue 8), scale: namespaces x sources Secret copies (100,000
//! at the full size), seeded in sync by the bench through the project's own
//! renderer, so seeding does not wait on the controller's rate limit. For
//! each size, a controller started over them: ready within 10 s with zero
//! writes, RSS under 110 MiB, and a resync with zero writes and only
//! paginated LISTs. Sizes are measured in ascending order, each adding
//! namespaces and copies to the last, so the largest size the control plane
//! holds is the last one measured; what the control plane uses (kube-apiserver
//! and etcd memory, etcd's database against its quota) is reported with each.

use std::time::Instant;

use anyhow::Result;
use push_to_k8s::model::kinds::Kind;

use crate::Bench;
use crate::controller::{STOP_TIMEOUT, Settings};
use crate::report::{ScaleSize, Target};
use crate::steady::Resync;

/// Issue 8's bounds: RSS (about 1 KiB per copy at 100,000) and time to ready.
const RSS_MIB: f64 = 110.0;
const READY_S: f64 = 10.0;

impl Bench<'_> {
    pub async fn scale(&mut self) -> Result<()> {
        let sc = "scale";
        let (sizes, s_count) = (self.p.scale_ns.clone(), self.p.scale_sources);
        println!("\n== scale: {sizes:?} namespaces x {s_count} sources, copies seeded in sync");
        let names: Vec<String> = (0..s_count).map(|i| format!("scale-{i:02}")).collect();
        let replicas = self
            .cluster
            .create_rendered_sources(Kind::Secret, &names)
            .await?;
        let settings = Settings {
            burst: 1,
            sync_interval_min: 1,
        };
        let mut seeded_ns = 0;
        let mut previous: Option<(usize, f64)> = None;
        for &n in &sizes {
            let copies = n * s_count;
            let size = format!("at {copies} copies");
            println!("\n-- scale: {n} namespaces x {s_count} sources = {copies} copies");
            let t = Instant::now();
            self.cluster.set_targets(n).await?;
            let namespaces_s = t.elapsed().as_secs_f64();
            let (seed_s, seeded) = self.seed(&replicas, seeded_ns..n).await?;
            seeded_ns = n;
            self.report.add_note(
                sc,
                &format!("seeding (bench client) {size}"),
                seed_s,
                "s",
                Target::Info,
                &format!(
                    "{seeded} copies added, {:.0} creates/s at {} in flight; {namespaces_s:.1} s for the namespaces",
                    seeded as f64 / seed_s,
                    crate::SEED_CONCURRENCY
                ),
            );

            let s = self
                .start_over(&format!("scale-{copies}"), &settings, &[Kind::Secret])
                .await?;
            self.report
                .api
                .insert(format!("scale start {size}"), s.api.table());
            self.report.add(
                sc,
                &format!("time to ready (/readyz 200) {size}"),
                s.ready.as_secs_f64(),
                "s",
                Target::Below(READY_S),
            );
            self.report.add_note(
                sc,
                &format!("time to verified (first flush done) {size}"),
                s.verified.as_secs_f64(),
                "s",
                Target::Info,
                "push_to_k8s_batch_size_count >= 1",
            );
            self.report.add_note(
                sc,
                &format!("write requests after the start {size}"),
                s.writes,
                "",
                Target::Exactly(0.0),
                &format!(
                    "secrets (API server); controller counted {}; copy watch saw {} changes; {} LISTs",
                    s.writes_daemon,
                    s.copy_events,
                    s.lists(&[Kind::Secret])
                ),
            );
            self.report.add_note(
                sc,
                &format!("RSS after the start {size}"),
                s.rss,
                "MiB",
                Target::Below(RSS_MIB),
                "5 s after the first flush",
            );

            let start_lists = s.lists(&[Kind::Secret]);
            let c = s.c;
            let resync = Resync {
                scenario: sc,
                label: size.clone(),
                namespaces: self.cluster.namespace_count().await?,
                kinds: vec![(Kind::Secret, s_count, copies)],
            };
            let d = self.steady(&c, &resync).await?;
            let rss = c.rss_mib();
            self.report.add_note(
                sc,
                &format!("RSS after a resync {size}"),
                rss,
                "MiB",
                Target::Below(RSS_MIB),
                &format!(
                    "{:.2} KiB per copy, all included",
                    rss * 1024.0 / copies as f64
                ),
            );
            if let Some((copies0, rss0)) = previous {
                self.report.add_note(
                    sc,
                    &format!("RSS per added copy, {copies0} -> {copies} copies"),
                    (rss - rss0) * 1024.0 / (copies - copies0) as f64,
                    "KiB",
                    Target::Info,
                    &format!("{rss0:.1} -> {rss:.1} MiB, each after a resync"),
                );
            }
            previous = Some((copies, rss));
            let hwm = c.hwm_mib();
            self.report.add(
                sc,
                &format!("peak RSS (VmHWM), start and a resync {size}"),
                hwm,
                "MiB",
                Target::Info,
            );

            // What the control plane holds at this size.
            let plane = self.plane_usage().await;
            self.report.add_note(
                sc,
                &format!("kube-apiserver RSS {size}"),
                plane.apiserver_rss_mib,
                "MiB",
                Target::Info,
                &format!("peak {:.0} MiB (seeding)", plane.apiserver_hwm_mib),
            );
            self.report.add_note(
                sc,
                &format!("etcd database {size}"),
                plane.etcd_db_mib,
                "MiB",
                Target::Info,
                &format!(
                    "{:.1} MiB in use; quota {:.0} MiB; etcd RSS {:.0} MiB",
                    plane.etcd_db_in_use_mib, plane.etcd_quota_mib, plane.etcd_rss_mib
                ),
            );

            let mut c = c;
            let status = c.terminate(STOP_TIMEOUT)?;
            self.report.add(
                sc,
                &format!("exit status after SIGTERM {size}"),
                f64::from(status.code().unwrap_or(-1)),
                "",
                Target::Exactly(0.0),
            );
            self.report.scale.push(ScaleSize {
                namespaces: n,
                sources: s_count,
                copies,
                seed_s,
                seeded,
                ready_s: s.ready.as_secs_f64(),
                verified_s: s.verified.as_secs_f64(),
                rss_start_mib: s.rss,
                rss_resync_mib: rss,
                hwm_mib: hwm,
                start_lists,
                resync_lists: d.get("LIST", "secrets") + d.get("LIST", "namespaces"),
                resync_writes: d.writes("secrets") + d.writes("events"),
                plane,
            });
        }
        // Scale runs last (`SCENARIOS`): unless the control plane stays up,
        // `cp.sh down` removes the copies faster than deleting them would.
        if self.p.keep_cp {
            self.cluster.reset(&self.watch).await?;
        }
        Ok(())
    }
}
