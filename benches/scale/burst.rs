//! Scenario 5, burst (and CPU per create and per update): S sources with
//! their S x N copies in sync are all changed within 1.9 s; every copy must be
//! written exactly once, at no more than R + burst writes in any second, by
//! three witnesses (the API server's counters sampled every second, the
//! server's `managedFields` time, the watch's receive time).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::controller::{READY_POLL, Settings};
use crate::copies::CopyEvent;
use crate::metrics::Counts;
use crate::report::{BurstSeries, Target};
use crate::{Bench, DEBOUNCE, RATE};

impl Bench<'_> {
    pub async fn burst(&mut self) -> Result<()> {
        let (s_count, n, b) = (self.p.burst_sources, self.p.burst_ns, self.p.burst_b);
        let sc = "burst";
        println!("\n== burst: {s_count} sources x {n} namespaces, R = {RATE}/s, burst {b}");
        self.cluster.set_targets(n).await?;
        let mut c = self.controller(
            "burst",
            &Settings {
                burst: b,
                sync_interval_min: 1440,
            },
        )?;
        c.wait_ready(Duration::from_secs(60), READY_POLL).await?;

        // Initial copies: S x N creates, also the CPU cost of creates.
        let names: Vec<String> = (0..s_count).map(|i| format!("burst-{i:03}")).collect();
        let (cpu0, api0) = (c.cpu_s(), self.counts().await?);
        let hashes = self.cluster.create_sources(&names).await?;
        let want = s_count * n;
        let limit = Duration::from_secs_f64(want as f64 / f64::from(RATE) * 3.0 + 120.0);
        let took = self
            .wait_in_sync(&hashes.values().cloned().collect(), want, limit)
            .await?;
        let (cpu1, api1) = (c.cpu_s(), self.counts().await?);
        let creates = api1.minus(&api0).writes("secrets") - s_count as f64;
        println!(
            "bench: {want} initial copies created in {:.1} s",
            took.as_secs_f64()
        );
        self.report.add_note(
            "cpu",
            &format!("CPU s per 1000 creates ({} creates, N={n})", want),
            (cpu1 - cpu0) / creates * 1000.0,
            "s",
            Target::Info,
            &format!("{:.2} CPU s in total", cpu1 - cpu0),
        );

        // The burst: every source changed within 2 s.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let from = self.watch.log_len();
        let writes_daemon0 = c.metric_sum("push_to_k8s_writes_total", &[]).await;
        let (cpu0, api0) = (c.cpu_s(), self.counts().await?);
        let t0 = Instant::now();
        let spacing = Duration::from_secs_f64(1.9 / s_count as f64);
        let mut new_hashes = HashSet::new();
        for (i, name) in names.iter().enumerate() {
            tokio::time::sleep_until((t0 + spacing * i as u32).into()).await;
            new_hashes.insert(self.cluster.update_source(name, 1).await?);
        }
        let changed_in = t0.elapsed();
        // Sample the API server's counters once a second while the controller writes.
        let sampler = {
            let client = self.cluster.client.clone();
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = stop.clone();
            let h = tokio::spawn(async move {
                let mut out = Vec::new();
                while !stop2.load(Ordering::Relaxed) {
                    let s = Instant::now();
                    if let Ok(c) = Counts::fetch(&client).await {
                        out.push((s, Instant::now(), c.writes("secrets")));
                    }
                    tokio::time::sleep_until((s + Duration::from_secs(1)).into()).await;
                }
                out
            });
            (stop, h)
        };
        let limit = Duration::from_secs_f64(want as f64 / f64::from(RATE) * 3.0 + 120.0);
        self.watch.wait_copies(&new_hashes, want, limit).await?;
        let done = t0.elapsed();
        self.watch
            .settle(DEBOUNCE + Duration::from_secs(3), Duration::from_secs(120))
            .await?;
        sampler.0.store(true, Ordering::Relaxed);
        let samples = sampler.1.await?;
        let (cpu1, api1) = (c.cpu_s(), self.counts().await?);
        let writes_daemon = c.metric_sum("push_to_k8s_writes_total", &[]).await - writes_daemon0;
        let delta = api1.minus(&api0);
        self.report.api.insert("burst".into(), delta.table());
        let writes = delta.writes("secrets") - s_count as f64;

        let events: Vec<CopyEvent> = self
            .watch
            .log_since(from)
            .into_iter()
            .filter(|e| !e.deleted)
            .collect();
        let mut per_copy: HashMap<&(String, String), usize> = HashMap::new();
        for e in &events {
            *per_copy.entry(&e.key).or_insert(0) += 1;
        }
        let duplicates = per_copy
            .values()
            .map(|n| n.saturating_sub(1))
            .sum::<usize>();
        let untouched = want.saturating_sub(per_copy.len());

        self.report.add_note(
            sc,
            &format!(
                "sources changed (spread over {:.2} s)",
                changed_in.as_secs_f64()
            ),
            s_count as f64,
            "",
            Target::Info,
            "",
        );
        self.report.add_note(
            sc,
            "copy writes counted by the API server",
            writes,
            "",
            Target::Exactly(want as f64),
            &format!("{s_count} x {n}; the bench's own {s_count} source PATCHes subtracted; controller counted {writes_daemon}"),
        );
        self.report.add(
            sc,
            "copies written more than once (watch)",
            duplicates as f64,
            "",
            Target::Exactly(0.0),
        );
        self.report.add(
            sc,
            "copies never written (watch)",
            untouched as f64,
            "",
            Target::Exactly(0.0),
        );

        // Rate over one-second windows, three witnesses.
        let allowed = f64::from(RATE + b);
        let times: Vec<Instant> = events.iter().map(|e| e.at).collect();
        let mut max_sliding = 0usize;
        let mut lo = 0;
        for hi in 0..times.len() {
            while times[hi].duration_since(times[lo]) >= Duration::from_secs(1) {
                lo += 1;
            }
            max_sliding = max_sliding.max(hi - lo + 1);
        }
        let mut per_sec: BTreeMap<i64, usize> = BTreeMap::new();
        for e in &events {
            if let Some(s) = e.server_s {
                *per_sec.entry(s).or_insert(0) += 1;
            }
        }
        let max_server = per_sec.values().copied().max().unwrap_or(0);
        let mut worst_excess = f64::NEG_INFINITY;
        let mut worst = (0.0, 0.0);
        let base = samples.first().map(|s| s.0).unwrap_or(t0);
        let mut windows = Vec::new();
        for w in samples.windows(2) {
            let (s_prev, _, c_prev) = w[0];
            let (_, r_cur, c_cur) = w[1];
            // The counters were read somewhere inside each request: the window
            // is at most from the previous request's start to this one's end.
            let dur = r_cur.duration_since(s_prev).as_secs_f64();
            let count = c_cur - c_prev;
            windows.push((
                s_prev.duration_since(base).as_secs_f64(),
                r_cur.duration_since(base).as_secs_f64(),
                count,
            ));
            let excess = count - (f64::from(RATE) * dur + f64::from(b));
            if excess > worst_excess {
                worst_excess = excess;
                worst = (count, dur);
            }
        }
        self.report.add_note(
            sc,
            "max copy writes in 1 s (API server counters, 1 s samples)",
            worst.0,
            "",
            Target::AtMost((f64::from(RATE) * worst.1 + f64::from(b)).floor()),
            &format!(
                "worst window {:.3} s long; allowed R x window + burst",
                worst.1
            ),
        );
        self.report.add_note(
            sc,
            "max copy writes in one server second (managedFields)",
            max_server as f64,
            "",
            Target::AtMost(allowed),
            "calendar seconds of the API server clock",
        );
        self.report.add_note(
            sc,
            "max copy writes in any sliding 1 s (watch receive time)",
            max_sliding as f64,
            "",
            Target::Info,
            &format!(
                "R + burst = {allowed}; client-side times include request latency and watch delivery jitter"
            ),
        );
        let expected = DEBOUNCE.as_secs_f64() + want as f64 / f64::from(RATE);
        self.report.add_note(
            sc,
            "time from first change to last copy",
            done.as_secs_f64(),
            "s",
            Target::Info,
            &format!("D + S x N / R = {expected:.1} s"),
        );
        let cpu = cpu1 - cpu0;
        self.report.add_note(
            "cpu",
            &format!("CPU s per 1000 updates ({writes} updates, N={n})"),
            cpu / writes * 1000.0,
            "s",
            Target::Info,
            &format!("{cpu:.2} CPU s in total"),
        );
        let first = events.first().map(|e| e.at).unwrap_or(t0);
        self.report.burst = BurstSeries {
            rate: RATE,
            burst: b,
            watch_times_s: times
                .iter()
                .map(|t| t.duration_since(first).as_secs_f64())
                .collect(),
            server_per_second: per_sec.into_iter().collect(),
            apiserver_windows: windows,
        };
        self.stop_checked(sc, c)?;
        self.cluster.reset(&self.watch).await
    }
}
