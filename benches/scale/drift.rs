//! Drift (issue 17): a copy that someone else edited or deleted, and one that
//! another writer keeps rewriting. One source, `2K + 1` target namespaces
//! (K = `--runs`), all in sync, D = 1 s:
//!
//! - edited: K times, another client patches a fresh copy's data; the time
//!   from the moment the patch returned until the copy holds the source's
//!   data again (a GET every [`POLL`]);
//! - deleted: K times, a fresh copy is deleted; the time from the moment the
//!   delete returned until the copy exists again with the source's data;
//! - fought: another writer rewrites the last copy with a value of its own
//!   every [`FIGHT_EVERY`] for [`FIGHT_FOR`]; the controller's writes
//!   meanwhile (its `push_to_k8s_writes_total`, and the API server's secret
//!   writes less the fighter's own), against the bound of
//!   `src/targets/cluster/fights.rs`.
//!
//! Each edit and delete hits a copy of its own: the fight bound counts the
//! repairs of one copy for one source content, so repeating them on one copy
//! would turn the measurement into a fight.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use push_to_k8s::targets::cluster::fights::{FIRST_HOLD, FREE_REPAIRS, MAX_HOLD};

use crate::controller::{READY_POLL, STOP_TIMEOUT, Settings};
use crate::report::{Target, median};
use crate::{Bench, DEBOUNCE, SOURCE_NS, TARGET_PREFIX};

/// How often the bench reads a copy while it waits for its repair.
const POLL: Duration = Duration::from_millis(10);
/// The fighter's period and how long it fights.
const FIGHT_EVERY: Duration = Duration::from_millis(100);
const FIGHT_FOR: Duration = Duration::from_secs(20);
/// The target for a repair with D = 1 s.
const REPAIR_TARGET_S: f64 = 0.3;

type Data = BTreeMap<String, ByteString>;

/// How long after `t0` the copy `name` in `api`'s namespace held `want`
/// (first seen so; read every `poll`), up to `timeout`.
async fn restored(
    api: &Api<Secret>,
    name: &str,
    want: &Data,
    t0: Instant,
    (timeout, poll): (Duration, Duration),
) -> Result<f64> {
    loop {
        if let Some(s) = api.get_opt(name).await?
            && s.data.as_ref() == Some(want)
        {
            return Ok(t0.elapsed().as_secs_f64());
        }
        if t0.elapsed() > timeout {
            bail!("copy {name} not back to the source's data within {timeout:?}");
        }
        tokio::time::sleep(poll).await;
    }
}

/// The most repairs of one copy that `src/targets/cluster/fights.rs` allows
/// within `span` of a fight: [`FREE_REPAIRS`] at once, then one after each
/// hold (from [`FIRST_HOLD`], doubling up to [`MAX_HOLD`]) that ends within it.
pub fn fight_bound(span: Duration) -> u32 {
    let (mut writes, mut at, mut hold) = (FREE_REPAIRS, Duration::ZERO, FIRST_HOLD);
    loop {
        at += hold;
        if at > span {
            return writes;
        }
        writes += 1;
        hold = (hold * 2).min(MAX_HOLD);
    }
}

fn summary(v: &[f64]) -> String {
    v.iter()
        .map(|r| format!("{r:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Bench<'_> {
    pub async fn drift(&mut self) -> Result<()> {
        let sc = "drift";
        let runs = self.p.prop_runs;
        let n = 2 * runs + 1;
        println!(
            "\n== drift: 1 source, {n} target namespaces, D = {} s; {runs} edited and {runs} deleted copies, one fought for {} s",
            DEBOUNCE.as_secs(),
            FIGHT_FOR.as_secs()
        );
        self.cluster.set_targets(n).await?;
        let mut c = self.controller(
            "drift",
            &Settings {
                burst: 1,
                sync_interval_min: 1440,
            },
        )?;
        c.wait_ready(Duration::from_secs(60), READY_POLL).await?;
        let name = "drift".to_string();
        let hash = self
            .cluster
            .create_sources(std::slice::from_ref(&name))
            .await?[&name]
            .clone();
        let hs = std::collections::HashSet::from([hash]);
        self.wait_in_sync(&hs, n, Duration::from_secs(60)).await?;
        let want: Data = self
            .cluster
            .secrets(SOURCE_NS)
            .get(&name)
            .await?
            .data
            .context("the source has data")?;
        let copy = |i: usize| self.cluster.secrets(&format!("{TARGET_PREFIX}{i:04}"));
        let settle = DEBOUNCE + Duration::from_millis(1500);
        let pp = PatchParams::default();
        let tamper =
            |v: String| serde_json::json!({"data": {"password": ByteString(v.into_bytes())}});

        let (mut edited, mut deleted) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let api = copy(2 * run);
            api.patch(&name, &pp, &Patch::Merge(&tamper(format!("edited-{run}"))))
                .await
                .context("edit a copy")?;
            let t0 = Instant::now();
            edited.push(restored(&api, &name, &want, t0, (Duration::from_secs(30), POLL)).await?);
            self.watch.settle(settle, Duration::from_secs(60)).await?;

            let api = copy(2 * run + 1);
            api.delete(&name, &DeleteParams::default())
                .await
                .context("delete a copy")?;
            let t0 = Instant::now();
            deleted.push(restored(&api, &name, &want, t0, (Duration::from_secs(30), POLL)).await?);
            self.watch.settle(settle, Duration::from_secs(60)).await?;
            println!(
                "bench:   run {}: edited copy repaired after {:.3} s, deleted copy after {:.3} s",
                run + 1,
                edited[run],
                deleted[run]
            );
        }
        for (what, v) in [("an edited copy", &edited), ("a deleted copy", &deleted)] {
            let max = v.iter().copied().fold(f64::NAN, f64::max);
            self.report.add_note(
                sc,
                &format!("D = 1 s: median time to repair {what}"),
                median(v),
                "s",
                Target::Below(REPAIR_TARGET_S),
                &format!(
                    "{} runs: {}; max {max:.3} s; from the request's return, read every {} ms",
                    v.len(),
                    summary(v),
                    POLL.as_millis()
                ),
            );
            self.report.add(
                sc,
                &format!("D = 1 s: max time to repair {what}"),
                max,
                "s",
                Target::Info,
            );
        }

        // The fought copy.
        let api = copy(2 * runs);
        let writes = || c.metric_sum("push_to_k8s_writes_total", &[]);
        let fights = || c.metric_sum("push_to_k8s_copy_fights_total", &[]);
        let (ours0, fights0, api0) = (writes().await, fights().await, self.counts().await?);
        let start = Instant::now();
        let mut tick = tokio::time::interval(FIGHT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut theirs, mut i) = (0u32, 0u32);
        while start.elapsed() < FIGHT_FOR {
            tick.tick().await;
            i += 1;
            // Each write a value of its own: every one is a change the
            // controller sees.
            api.patch(&name, &pp, &Patch::Merge(&tamper(format!("fought-{i}"))))
                .await
                .context("fight a copy")?;
            theirs += 1;
        }
        let fought_s = start.elapsed();
        // A repair the last rewrite caused is written within D.
        tokio::time::sleep(DEBOUNCE + Duration::from_millis(500)).await;
        let span = start.elapsed();
        let (ours1, fights1, api1) = (writes().await, fights().await, self.counts().await?);
        let ours = ours1 - ours0;
        let by_server = api1.minus(&api0).writes("secrets") - f64::from(theirs);
        let bound = fight_bound(span);
        println!(
            "bench: fought copy: {theirs} rewrites by the other writer in {:.1} s; the controller wrote {ours} times (API server: {by_server})",
            fought_s.as_secs_f64()
        );
        self.report.add_note(
            sc,
            &format!(
                "fought copy: controller writes in {:.0} s of rewrites",
                span.as_secs_f64()
            ),
            ours,
            "",
            Target::AtMost(f64::from(bound)),
            &format!(
                "the other writer: {theirs} rewrites, one every {} ms for {} s; API server: {by_server} secret writes besides its; bound from fights.rs: {FREE_REPAIRS} free repairs, then holds from {} s; fights noticed {}",
                FIGHT_EVERY.as_millis(),
                FIGHT_FOR.as_secs(),
                FIRST_HOLD.as_secs(),
                fights1 - fights0
            ),
        );
        self.report.add(
            sc,
            "fought copy: rewrites by the other writer",
            f64::from(theirs),
            "",
            Target::Info,
        );
        // Still repaired once the other writer stops: after the hold.
        let t0 = Instant::now();
        let within = FIRST_HOLD + Duration::from_secs(30);
        let slow = Duration::from_millis(100);
        match restored(&api, &name, &want, t0, (within, slow)).await {
            Ok(s) => self.report.add_note(
                sc,
                "fought copy: repaired after the other writer stopped",
                s,
                "s",
                Target::Info,
                &format!(
                    "the hold started by the fight is {} s",
                    FIRST_HOLD.as_secs()
                ),
            ),
            _ => self.report.add_note(
                sc,
                "fought copy: repaired after the other writer stopped",
                f64::NAN,
                "s",
                Target::Info,
                "not within the first hold + 30 s",
            ),
        }
        c.terminate(STOP_TIMEOUT)?;
        self.cluster.reset(&self.watch).await
    }
}
