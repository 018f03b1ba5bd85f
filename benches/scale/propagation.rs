//! Scenario 1, propagation: one source, N target namespaces; the time from
//! a change to the last of its N copies carrying the new content, against
//! the bound D + N/R that the controller's settings allow.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::controller::{READY_POLL, STOP_TIMEOUT, Settings};
use crate::report::{PropagationResult, RssPoint, Target, median};
use crate::{Bench, DEBOUNCE, RATE};

impl Bench<'_> {
    pub async fn propagation(&mut self) -> Result<()> {
        let sc = "propagation";
        let ns_list = self.p.prop_ns.clone();
        println!(
            "\n== propagation: N in {ns_list:?}, {} runs each, D = {} s, R = {RATE}/s, burst 1",
            self.p.prop_runs,
            DEBOUNCE.as_secs()
        );
        self.cluster.set_targets(ns_list[0]).await?;
        let mut c = self.controller(
            "propagation",
            &Settings {
                burst: 1,
                sync_interval_min: 1440,
            },
        )?;
        c.wait_ready(Duration::from_secs(60), READY_POLL).await?;
        let name = "prop".to_string();
        let mut hash = self
            .cluster
            .create_sources(std::slice::from_ref(&name))
            .await?[&name]
            .clone();
        let mut version = 0;
        for &n in &ns_list {
            self.cluster.set_targets(n).await?;
            let hs = HashSet::from([hash.clone()]);
            self.wait_in_sync(&hs, n, Duration::from_secs(60 + n as u64 / 10))
                .await?;
            let bound = DEBOUNCE.as_secs_f64() + n as f64 / f64::from(RATE);
            let mut res = PropagationResult {
                n,
                bound_s: bound,
                ..Default::default()
            };
            let (cpu0, api0) = (c.cpu_s(), self.counts().await?);
            for run in 0..self.p.prop_runs {
                version += 1;
                let from = self.watch.log_len();
                let t0 = Instant::now();
                hash = self.cluster.update_source(&name, version).await?;
                let hs = HashSet::from([hash.clone()]);
                self.wait_in_sync(&hs, n, Duration::from_secs_f64(bound * 5.0 + 30.0))
                    .await?;
                // First time each copy carried the new hash, as received.
                let mut first: HashMap<(String, String), Instant> = HashMap::new();
                for e in self.watch.log_since(from) {
                    if e.hash == hash {
                        first.entry(e.key).or_insert(e.at);
                    }
                }
                let last = first.values().max().copied().unwrap_or(t0);
                let earliest = first.values().min().copied().unwrap_or(t0);
                let total = last.duration_since(t0).as_secs_f64();
                let span = last.duration_since(earliest).as_secs_f64();
                res.runs_s.push(total);
                res.first_copy_s
                    .push(earliest.duration_since(t0).as_secs_f64());
                res.write_rate.push(if span > 0.0 {
                    (n - 1) as f64 / span
                } else {
                    f64::NAN
                });
                println!(
                    "bench:   N={n} run {}: {total:.3} s (first copy after {:.3} s, then {:.1} writes/s)",
                    run + 1,
                    earliest.duration_since(t0).as_secs_f64(),
                    res.write_rate.last().unwrap()
                );
            }
            let (cpu1, api1) = (c.cpu_s(), self.counts().await?);
            let delta = api1.minus(&api0);
            self.report
                .api
                .insert(format!("propagation N={n}"), delta.table());
            res.median_s = median(&res.runs_s);
            self.report.add_note(
                sc,
                &format!(
                    "N={n}: median time to last copy ({} runs)",
                    res.runs_s.len()
                ),
                res.median_s,
                "s",
                Target::AtMost(bound * 1.1),
                &format!(
                    "bound D + N/R = {bound:.2} s; runs {}; write rate reached {:.1}/s",
                    res.runs_s
                        .iter()
                        .map(|r| format!("{r:.2}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    median(&res.write_rate)
                ),
            );
            let runs = self.p.prop_runs as f64;
            let writes = delta.writes("secrets") - runs;
            self.report.add_note(
                sc,
                &format!("N={n}: copy writes per update (API server)"),
                writes / runs,
                "",
                Target::Exactly(n as f64),
                "",
            );
            self.report.add_note(
                "cpu",
                &format!("CPU s per 1000 updates (1 source, N={n})"),
                (cpu1 - cpu0) / writes * 1000.0,
                "s",
                Target::Info,
                "",
            );
            self.report.rss_points.push(RssPoint {
                label: format!("propagation, 1 source x {n}"),
                copies: n,
                rss_mib: c.rss_mib(),
            });
            self.report.propagation.push(res);
        }
        c.terminate(STOP_TIMEOUT)?;
        self.cluster.reset(&self.watch).await
    }
}
