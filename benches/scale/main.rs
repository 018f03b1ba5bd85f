//! Scale benchmark (issue 4): propagation latency, API cost, memory, restart
//! and burst behaviour of the release binary against the project's own, real
//! control plane.
//!
//! Issue 8 adds memory with both kinds (Secret and ConfigMap copies,
//! unrelated ConfigMaps) and scale (up to 100,000 copies seeded in sync).
//! Issue 10 adds `vault`: the Vault KV v2 target against a dev Vault.
//! Issue 11 adds `remote`: one source to three clusters (the bench's control
//! plane and two more it starts for the scenario).
//! Issue 16 adds `chaos` (only with `--only chaos`): two instances, one remote
//! cluster and Vault under random faults for 20 minutes, then every copy and
//! entry checked against its source and the audit logs against the Lease.
//! Issue 19 adds `rules` (only with `--only rules`): 1,000 PushRules x 100
//! namespaces at the full size; start-up, writes at rest, propagation, RSS.
//! Issue 17 adds `drift`: how soon an edited or deleted copy is repaired
//! (D = 1 s), and the writes a copy fought by another writer costs.
//!
//! ```text
//! cargo bench --bench scale                 # quick size, a few minutes
//! cargo bench --bench scale -- --full       # the issues' sizes
//! cargo bench --bench scale -- --help       # every option
//! ```
//!
//! - The control plane is a private instance (`PUSH_TO_K8S_CP_DIR=
//!   /tmp/push-to-k8s-bench-cp-$UID`), brought up with `tests/control-plane/cp.sh
//!   up` and taken down at the end, also on failure or Ctrl-C (`--keep-cp`
//!   leaves it up), so it never collides with the e2e suite's instance.
//! - The controller is the release binary, run as a separate process. `cargo
//!   bench` builds it with the bench profile (= release settings) before the
//!   bench runs and hands its path over in `CARGO_BIN_EXE_push-to-k8s`; if that
//!   file is missing or older than the sources (bench executable run by hand),
//!   the bench runs `cargo build --release` first.
//! - Independent witnesses: the API server's own `apiserver_request_total`
//!   (by verb and resource), a metadata watch on the copies (timestamps of
//!   every write as seen by a client, plus the server's `managedFields` time),
//!   and `/proc/<pid>` for RSS (`VmRSS`, `VmHWM`) and CPU (`utime + stime`).
//! - Results: printed next to their targets (PASS/MISS), and written to
//!   `target/bench/scale/results.{json,csv}`; the plots (PNG) are drawn by
//!   `benches/plot.py` with matplotlib from a venv under `target/bench-venv`
//!   (created on first use; `--no-plot` skips it).
//!
//! Layout: one file per scenario (`propagation`, `drift`, `burst`, `memory`,
//! with `steady` and `restart` run over the memory scenario's copies; CPU is
//! measured inside each; `kinds` and `scale`, which start the controller over
//! copies the bench seeded through the project's own renderer and reuse
//! `restart`'s measured start and `steady`'s resync), `cluster` (seeding),
//! `controller` (the process under test), `params`, `report`, `output` and
//! `setup` (also what the control plane uses). What the end-to-end tests
//! use too (the control plane, the daemon process, metrics, the copies) is the
//! test kit under `tests/common/`, included here by `#[path]`.

// The test kit shared with the end-to-end tests; the bench uses part of it.
#[allow(dead_code)]
#[path = "../../tests/common/control_plane.rs"]
mod control_plane;
#[allow(dead_code)]
#[path = "../../tests/common/copies.rs"]
mod copies;
#[allow(dead_code)]
#[path = "../../tests/common/daemon.rs"]
mod daemon;
#[path = "../../tests/common/http_get.rs"]
mod http_get;
#[allow(dead_code)]
#[path = "../../tests/common/metrics.rs"]
mod metrics;

mod burst;
mod chaos;
mod cluster;
mod controller;
mod drift;
mod kinds;
mod memory;
mod output;
mod params;
mod propagation;
mod remote;
mod report;
mod restart;
mod rules;
mod scale;
mod setup;
mod steady;
mod vault;

use std::collections::HashSet;
use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use push_to_k8s::model::kinds::Kind;
use push_to_k8s::model::replica::Replica;

use cluster::Cluster;
use control_plane::ControlPlane;
use controller::{STOP_TIMEOUT, Settings};
use copies::CopyWatch;
use daemon::Daemon;
use metrics::Counts;
use output::{Paths, plot, write_results};
use params::{Params, SCENARIOS};
use report::{Report, Target, line, loadavg, machine};
use setup::{BenchControlPlane, PlaneUsage, controller_binary};

/// Source namespace of every scenario.
const SOURCE_NS: &str = "bench-src";
/// Target namespaces are `bench-t0000`, `bench-t0001`, ...
const TARGET_PREFIX: &str = "bench-t";
/// Namespaces beyond a scenario's N carry this label, which the controller is
/// told to exclude (`EXCLUDE_NAMESPACE_LABEL`), so every scenario has exactly N
/// targets while namespaces are only ever added.
const PARKED_LABEL: &str = "bench.push-to-k8s.io/parked";
/// `default` is protected too, so the bench namespaces are the only targets.
const PROTECTED: &str = "kube-system,kube-public,kube-node-lease,default";
/// D and R of the issue.
const DEBOUNCE: Duration = Duration::from_secs(1);
const RATE: u32 = 100;
/// Concurrency of the bench's own (unthrottled) seeding client.
const SEED_CONCURRENCY: usize = 48;
/// Page size of the controller's lists (`src/observe/resync.rs`, kube's watcher).
const LIST_PAGE: usize = 500;

/// What every scenario works with; each scenario is an `impl Bench` in its
/// own file.
struct Bench<'a> {
    p: &'a Params,
    bin: PathBuf,
    kubeconfig: PathBuf,
    /// The control plane's state directory (its pid files, etcd's port).
    cp_dir: PathBuf,
    logs: PathBuf,
    cluster: Cluster,
    watch: CopyWatch,
    report: Report,
}

impl Bench<'_> {
    fn controller(&self, name: &str, s: &Settings) -> Result<Daemon> {
        self.controller_with(name, s, &[])
    }

    /// A controller with `extra` variables beside the bench's settings.
    fn controller_with(&self, name: &str, s: &Settings, extra: &[(&str, &str)]) -> Result<Daemon> {
        println!(
            "bench: starting controller {name} (load average {})",
            loadavg()
        );
        controller::start(&self.bin, &self.kubeconfig, &self.logs, name, s, extra)
    }

    async fn counts(&self) -> Result<Counts> {
        Counts::fetch(&self.cluster.client).await
    }

    /// Wait until exactly `want` copies carry one of `hashes` (how long that
    /// took), then until no copy has been written for D + 1.5 s: the quiet
    /// start of a measurement.
    async fn wait_in_sync(
        &self,
        hashes: &HashSet<String>,
        want: usize,
        timeout: Duration,
    ) -> Result<Duration> {
        let took = self.watch.wait_copies(hashes, want, timeout).await?;
        let quiet = DEBOUNCE + Duration::from_millis(1500);
        self.watch.settle(quiet, Duration::from_secs(120)).await?;
        Ok(took)
    }

    /// Seed the copies of `replicas` into the target namespaces numbered
    /// `namespaces` (see [`Cluster::seed_copies`]), then check that every
    /// copy of them in the targets up to `namespaces.end` is there with its
    /// hash. Returns how long the seeding took and how many it created.
    async fn seed(&self, replicas: &[Replica], namespaces: Range<usize>) -> Result<(f64, usize)> {
        let t = Instant::now();
        let created = self
            .cluster
            .seed_copies(replicas, namespaces.clone())
            .await?;
        let took = t.elapsed().as_secs_f64();
        println!(
            "bench: {created} copies seeded in {took:.1} s ({:.0}/s)",
            created as f64 / took
        );
        for kind in Kind::ALL {
            let of_kind = || replicas.iter().filter(|r| r.kind == kind);
            let want = of_kind().count() * namespaces.end;
            let hashes: HashSet<String> = of_kind().map(|r| r.hash.clone()).collect();
            if want == 0 {
                continue;
            }
            let found = match kind {
                // The copy watch sees Secret copies as they are created.
                Kind::Secret => {
                    let timeout = Duration::from_secs(120 + want as u64 / 100);
                    self.watch.wait_copies(&hashes, want, timeout).await?;
                    want
                }
                Kind::ConfigMap => self.cluster.count_copies(kind, &hashes).await?,
            };
            if found != want {
                bail!("{found} of {want} {kind} copies in sync after seeding");
            }
        }
        Ok((took, created))
    }

    async fn plane_usage(&self) -> PlaneUsage {
        PlaneUsage::of(&self.cp_dir).await
    }

    /// SIGTERM `c` and report its exit status (0 expected) under `scenario`.
    fn stop_checked(&mut self, scenario: &str, mut c: Daemon) -> Result<()> {
        let status = c.terminate(STOP_TIMEOUT)?;
        self.report.add(
            scenario,
            "exit status after SIGTERM",
            f64::from(status.code().unwrap_or(-1)),
            "",
            Target::Exactly(0.0),
        );
        Ok(())
    }
}

async fn run(
    p: &Params,
    paths: &Paths,
    bin: PathBuf,
    cp: &ControlPlane,
    report: &mut Report,
) -> Result<()> {
    let client = cp.client().await?;
    let cluster = Cluster {
        client: client.clone(),
    };
    cluster.ensure_source_namespace().await?;
    let watch = CopyWatch::start(client).await?;
    // Leftovers of an interrupted run with --keep-cp.
    cluster.reset(&watch).await?;
    let mut bench = Bench {
        p,
        bin,
        kubeconfig: cp.kubeconfig.clone(),
        cp_dir: cp
            .dir
            .clone()
            .context("the bench names its control plane's directory")?,
        logs: paths.out.join("logs"),
        cluster,
        watch,
        report: std::mem::take(report),
    };
    for sc in SCENARIOS {
        if !p.wants(sc) {
            continue;
        }
        let r = match *sc {
            "burst" => bench.burst().await,
            "propagation" => bench.propagation().await,
            "drift" => bench.drift().await,
            "kinds" => bench.kinds().await,
            "scale" => bench.scale().await,
            "vault" => bench.vault().await,
            "remote" => bench.remote().await,
            "chaos" => bench.chaos().await,
            "rules" => bench.rules().await,
            _ => bench.memory().await,
        };
        if let Err(e) = r {
            bench.report.error(sc, &e);
            // Whatever the scenario left running was dropped (killed) with it.
            if let Err(e) = bench.cluster.reset(&bench.watch).await {
                bench.report.error("reset", &e);
                break;
            }
        }
    }
    *report = std::mem::take(&mut bench.report);
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let p = match Params::parse(args.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    let shown: Vec<&String> = args.iter().filter(|a| *a != "--bench").collect();
    let mut report = Report {
        command: if shown.is_empty() {
            "cargo bench --bench scale".into()
        } else {
            format!(
                "cargo bench --bench scale -- {}",
                shown
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        },
        started: format!("{:?}", SystemTime::now()),
        machine: machine(),
        params: Some(p.clone()),
        ..Default::default()
    };
    println!("bench: {}", report.command);
    println!("bench: machine {:?}", report.machine);
    println!("bench: parameters {p:?}");
    let result = (|| -> Result<()> {
        let paths = Paths::new()?;
        let bin = match &p.bin {
            Some(b) => b
                .canonicalize()
                .with_context(|| format!("--bin {}", b.display()))?,
            None => controller_binary(&paths.repo)?,
        };
        println!("bench: controller binary {}", bin.display());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let started = Instant::now();
        {
            let cp = BenchControlPlane::up(p.keep_cp)?;
            let outcome = rt.block_on(async {
                tokio::select! {
                    r = run(&p, &paths, bin, &cp.cp, &mut report) => r,
                    _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
                }
            });
            // Tasks (the copy watch) and controllers go before the control plane.
            rt.shutdown_timeout(Duration::from_secs(2));
            drop(cp);
            outcome?;
        }
        println!(
            "\n== summary ({:.1} min)",
            started.elapsed().as_secs_f64() / 60.0
        );
        for f in &report.figures {
            println!("{}", line(f));
        }
        write_results(&paths, &report)?;
        if p.plot {
            plot(&paths, p.docs.as_deref())?;
        }
        Ok(())
    })();
    match result {
        Ok(()) if report.figures.iter().any(|f| f.verdict == "ERROR") => ExitCode::from(1),
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
