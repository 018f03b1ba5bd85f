//! Scenario 11, remote clusters (issue 11, item 6): one source with
//! `push-to-k8s.io/clusters: "*"` and N target namespaces in each of three
//! clusters: the bench's own control plane ("local") and two more, brought
//! up with the same script (`cp.sh up`) in their own state directories
//! (`/tmp/push-to-k8s-bench-cp-$UID-remote-1`, `-remote-2`) and taken down
//! at the end of the scenario. They are registered as remote clusters by
//! Secrets in the source namespace holding their admin kubeconfigs with
//! inline credentials (`kubectl config view --raw --flatten --minify`).
//!
//! - Fill: the source is created while the controller runs with both
//!   clusters up; the time to the last copy in each cluster (information).
//! - Update: `--runs` changes of the source's value, each after the last
//!   has settled; per cluster the time from the PATCH to the last of its N
//!   copies carrying the new content hash (one copy watch per cluster),
//!   against D + N/R: each cluster has its own limiter of R, so the three
//!   fill side by side (one limiter for all would need D + 3N/R). The copy
//!   writes each API server counted: exactly N per update in each; then
//!   none in 10 s at rest.
//! - Memory: fresh starts over the copies in place with 0, 1 and 2 clusters
//!   registered (interleaved, 3 starts each); RSS 5 s after every
//!   registered cluster is up with its N copies listed; the difference is
//!   what a remote cluster costs. None of these starts may write in any
//!   cluster; the last one (2 registered, `SYNC_INTERVAL=1`) runs until every
//!   cluster's API server has seen its resync LIST and must write nothing
//!   across it either.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, PostParams};
use push_to_k8s::model::vocabulary::CLUSTERS_ANNOTATION;
use push_to_k8s::model::vocabulary::{CLUSTER_LABEL, KUBECONFIG_KEY};

use crate::cluster::{Cluster, copy_hash, source_secret};
use crate::controller::{READY_POLL, STOP_TIMEOUT, Settings, machine_cpu_s, process_cpu_s};
use crate::copies::{self, CopyWatch};
use crate::daemon::Daemon;
use crate::metrics::{Counts, sum_metric};
use crate::report::{Target, median};
use crate::setup::BenchControlPlane;
use crate::{Bench, DEBOUNCE, RATE, SOURCE_NS};

const SC: &str = "remote";
/// The controller's `CLUSTER_NAME`: what its copies in the remote clusters
/// carry as `push-to-k8s.io/source-cluster`.
const CLUSTER_NAME: &str = "bench-local";
const SOURCE_CLUSTER_ANNOTATION: &str = "push-to-k8s.io/source-cluster";
/// The registered names of the remote clusters (and their state directories'
/// suffixes).
const REMOTES: [&str; 2] = ["remote-1", "remote-2"];
const LOCAL: &str = "local";
/// The one source.
const SOURCE: &str = "fleet";
/// The window "at rest" after the updates.
const REST: Duration = Duration::from_secs(10);
/// Fresh starts per number of registered clusters (medians reported).
const STARTS: usize = 3;

/// A remote cluster as the bench uses it.
pub struct RemoteCluster {
    name: &'static str,
    cluster: Cluster,
    watch: CopyWatch,
    /// Its admin kubeconfig with inline credentials: the registration's data.
    kubeconfig: String,
    /// Last: taken down (`cp.sh down`) after the watch has stopped.
    plane: BenchControlPlane,
}

/// When one cluster's copies carried a new hash, seen by its copy watch.
#[derive(Clone, Debug, Default)]
struct Arrival {
    /// Each copy's first arrival with the hash, seconds after the change, sorted.
    times: Vec<f64>,
    /// From the change to the last copy.
    last_s: f64,
    /// From the change to the first copy (the debounce and one write).
    first_s: f64,
    /// (N - 1) / (last - first): the write rate reached.
    rate: f64,
}

/// CPU seconds used so far, to tell where the machine's 2 cores went.
#[derive(Clone, Copy)]
struct CpuMark {
    at: Instant,
    /// Every core's busy time (`/proc/stat`).
    machine: f64,
    controller: f64,
    /// kube-apiserver, etcd and kube-controller-manager of all three clusters.
    planes: f64,
    /// This process (its client, the copy watches).
    bench: f64,
}

/// Cores in use between two marks: machine, controller, control planes,
/// bench, everything else.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    machine: f64,
    controller: f64,
    planes: f64,
    bench: f64,
    other: f64,
}

impl CpuMark {
    fn now(c: &Daemon, plane_dirs: &[&Path]) -> CpuMark {
        let planes = plane_dirs
            .iter()
            .flat_map(|d| {
                ["kube-apiserver", "etcd", "kube-controller-manager"].map(|name| {
                    let pid =
                        std::fs::read_to_string(d.join(format!("{name}.pid"))).unwrap_or_default();
                    process_cpu_s(pid.trim())
                })
            })
            .sum();
        CpuMark {
            at: Instant::now(),
            machine: machine_cpu_s().0,
            controller: c.cpu_s(),
            planes,
            bench: process_cpu_s("self"),
        }
    }

    fn since(&self, before: &CpuMark) -> CpuUse {
        let wall = self.at.duration_since(before.at).as_secs_f64();
        let cores = |a: f64, b: f64| (a - b) / wall;
        let u = CpuUse {
            machine: cores(self.machine, before.machine),
            controller: cores(self.controller, before.controller),
            planes: cores(self.planes, before.planes),
            bench: cores(self.bench, before.bench),
            other: 0.0,
        };
        CpuUse {
            other: u.machine - u.controller - u.planes - u.bench,
            ..u
        }
    }
}

fn describe_cpu(uses: &[CpuUse]) -> String {
    let m = |f: fn(&CpuUse) -> f64| median(&uses.iter().map(f).collect::<Vec<_>>());
    format!(
        "controller {:.2}, 3 control planes {:.2}, bench {:.2}, everything else {:.2} cores",
        m(|u| u.controller),
        m(|u| u.planes),
        m(|u| u.bench),
        m(|u| u.other)
    )
}

/// A fresh start over the copies in place.
struct Start {
    c: Daemon,
    rss: f64,
    /// Copy writes each API server counted from the spawn until the RSS reading.
    writes: Vec<f64>,
    copy_events: usize,
}

fn registration_name(cluster: &str) -> String {
    format!("bench-cluster-{cluster}")
}

fn registration(r: &RemoteCluster) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(registration_name(r.name)),
            labels: Some([(CLUSTER_LABEL.to_string(), r.name.to_string())].into()),
            ..Default::default()
        },
        data: Some(
            [(
                KUBECONFIG_KEY.to_string(),
                ByteString(r.kubeconfig.clone().into_bytes()),
            )]
            .into(),
        ),
        ..Default::default()
    }
}

/// `admin` with inline credentials, as a registration must hold it; checked
/// with the controller's own rules.
async fn inline_kubeconfig(admin: &Path) -> Result<String> {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(admin)
        .args(["config", "view", "--raw", "--flatten", "--minify"])
        .output()
        .await
        .context("run kubectl config view (the remote scenario needs kubectl)")?;
    if !out.status.success() {
        bail!(
            "kubectl config view --raw --flatten --minify failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout).context("kubectl's output")?;
    let kc = kube::config::Kubeconfig::from_yaml(&text).context("the flattened kubeconfig")?;
    push_to_k8s::targets::remote::kubeconfig::check(&kc).map_err(|e| anyhow!("{e}"))?;
    Ok(text)
}

/// Wait until the controller reports exactly the clusters `names`
/// registered, each up with `replicas` copies in its cache; how long that
/// took.
async fn wait_clusters(
    c: &Daemon,
    names: &[&str],
    replicas: usize,
    timeout: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    loop {
        let text = c.metrics().await;
        let registered = sum_metric(&text, "push_to_k8s_clusters", &[]);
        let ready = |name: &&str| {
            let label = format!("cluster=\"{name}\"");
            sum_metric(&text, "push_to_k8s_cluster_up", &[&label]) == 1.0
                && sum_metric(&text, "push_to_k8s_cluster_replicas", &[&label]) == replicas as f64
        };
        if !text.is_empty() && registered == names.len() as f64 && names.iter().all(ready) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            let state: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("push_to_k8s_cluster"))
                .collect();
            bail!(
                "clusters {names:?} not all up with {replicas} copies within {timeout:?}: {}",
                state.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn show(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Bench<'_> {
    pub async fn remote(&mut self) -> Result<()> {
        let n = self.p.remote_ns;
        println!(
            "\n== remote: {} clusters ({LOCAL}, {}) x {n} namespaces, 1 source with clusters \"*\", {} updates, D = {} s, R = {RATE}/s per cluster, burst 1",
            REMOTES.len() + 1,
            REMOTES.join(", "),
            self.p.prop_runs,
            DEBOUNCE.as_secs()
        );
        let remotes = self.remote_clusters(n).await?;
        self.cluster.set_targets(n).await?;
        let result = self.remote_measure(&remotes, n).await;
        // Whatever the measurement left running was dropped (killed) with it.
        let unregistered = self.set_registrations(&remotes, 0).await;
        let reset = self.cluster.reset(&self.watch).await;
        // The copy watches stop, then `cp.sh down` for both.
        drop(remotes);
        result?;
        unregistered?;
        reset
    }

    /// Both remote control planes up (side by side), each with its copy
    /// watch, the source namespace and exactly `n` target namespaces.
    async fn remote_clusters(&self, n: usize) -> Result<Vec<RemoteCluster>> {
        let keep = self.p.keep_cp;
        let t = Instant::now();
        let ups: Vec<_> = REMOTES
            .iter()
            .map(|name| {
                let dir = BenchControlPlane::dir(&format!("-{name}"));
                tokio::task::spawn_blocking(move || BenchControlPlane::up_at(dir, keep))
            })
            .collect();
        let mut planes = Vec::new();
        for up in ups {
            planes.push(up.await.context("cp.sh up")?);
        }
        // Any plane that did come up is taken down again on an error.
        let planes: Vec<BenchControlPlane> = planes.into_iter().collect::<Result<_>>()?;
        println!(
            "bench: remote control planes up in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let mut out = Vec::new();
        for (name, plane) in REMOTES.into_iter().zip(planes) {
            let client = plane.cp.client().await?;
            let cluster = Cluster {
                client: client.clone(),
            };
            // Never a target there either (the source namespace's name is
            // excluded in every cluster); `reset` lists sources in it.
            cluster.ensure_source_namespace().await?;
            let watch = CopyWatch::start(client).await?;
            // Leftovers of an interrupted run with --keep-cp.
            cluster.reset(&watch).await?;
            cluster.set_targets(n).await?;
            let kubeconfig = inline_kubeconfig(&plane.cp.kubeconfig).await?;
            out.push(RemoteCluster {
                name,
                cluster,
                watch,
                kubeconfig,
                plane,
            });
        }
        Ok(out)
    }

    /// Register the first `k` of `remotes`, unregister the others.
    async fn set_registrations(&self, remotes: &[RemoteCluster], k: usize) -> Result<()> {
        let api = self.cluster.secrets(SOURCE_NS);
        for (i, r) in remotes.iter().enumerate() {
            let name = registration_name(r.name);
            let done = if i < k {
                match api.create(&PostParams::default(), &registration(r)).await {
                    Err(kube::Error::Api(e)) if e.is_already_exists() => Ok(()),
                    other => other.map(|_| ()),
                }
            } else {
                match api.delete(&name, &DeleteParams::default()).await {
                    Err(kube::Error::Api(e)) if e.is_not_found() => Ok(()),
                    other => other.map(|_| ()),
                }
            };
            done.with_context(|| format!("registration {name}"))?;
        }
        Ok(())
    }

    fn remote_controller(&self, name: &str, sync_interval_min: u32) -> Result<Daemon> {
        let s = Settings {
            burst: 1,
            sync_interval_min,
        };
        self.controller_with(name, &s, &[("CLUSTER_NAME", CLUSTER_NAME)])
    }

    fn cpu_mark(&self, c: &Daemon, remotes: &[RemoteCluster]) -> CpuMark {
        let dirs: Vec<&Path> = std::iter::once(self.cp_dir.as_path())
            .chain(remotes.iter().map(|r| r.plane.state_dir()))
            .collect();
        CpuMark::now(c, &dirs)
    }

    /// Every cluster's copy watch: local first.
    fn watches<'a>(&'a self, remotes: &'a [RemoteCluster]) -> Vec<&'a CopyWatch> {
        std::iter::once(&self.watch)
            .chain(remotes.iter().map(|r| &r.watch))
            .collect()
    }

    fn log_lens(&self, remotes: &[RemoteCluster]) -> Vec<usize> {
        self.watches(remotes).iter().map(|w| w.log_len()).collect()
    }

    /// Copy writes the copy watches of every cluster saw since `from`
    /// ([`Self::log_lens`]).
    fn seen_since(&self, remotes: &[RemoteCluster], from: &[usize]) -> usize {
        self.log_lens(remotes)
            .iter()
            .zip(from)
            .map(|(a, b)| a - b)
            .sum()
    }

    /// Every cluster's API server counters: local first.
    async fn counts_all(&self, remotes: &[RemoteCluster]) -> Result<Vec<Counts>> {
        let mut out = vec![self.counts().await?];
        for r in remotes {
            out.push(Counts::fetch(&r.cluster.client).await?);
        }
        Ok(out)
    }

    /// Wait until every cluster has exactly `n` copies with `hash`.
    async fn wait_all(
        &self,
        remotes: &[RemoteCluster],
        hash: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<()> {
        let hs = HashSet::from([hash.to_string()]);
        for (w, name) in self.watches(remotes).into_iter().zip(cluster_names()) {
            w.wait_copies(&hs, n, timeout)
                .await
                .with_context(|| format!("cluster {name}"))?;
        }
        Ok(())
    }

    /// Wait until no cluster's copies have changed for D + 1.5 s.
    async fn settle_all(&self, remotes: &[RemoteCluster]) -> Result<()> {
        let quiet = DEBOUNCE + Duration::from_millis(1500);
        let settles = self
            .watches(remotes)
            .into_iter()
            .map(|w| w.settle(quiet, Duration::from_secs(120)));
        futures::future::try_join_all(settles).await?;
        Ok(())
    }

    /// Per cluster: when its copies first carried `hash`, after log
    /// positions `from`, relative to `t0`.
    fn arrivals(
        &self,
        remotes: &[RemoteCluster],
        from: &[usize],
        hash: &str,
        t0: Instant,
    ) -> Vec<Arrival> {
        self.watches(remotes)
            .iter()
            .zip(from)
            .map(|(w, &from)| {
                let mut first: HashMap<(String, String), Instant> = HashMap::new();
                for e in w.log_since(from) {
                    if e.hash == hash {
                        first.entry(e.key).or_insert(e.at);
                    }
                }
                let last = first.values().max().copied().unwrap_or(t0);
                let earliest = first.values().min().copied().unwrap_or(t0);
                let span = last.duration_since(earliest).as_secs_f64();
                let mut times: Vec<f64> = first
                    .values()
                    .map(|at| at.duration_since(t0).as_secs_f64())
                    .collect();
                times.sort_by(f64::total_cmp);
                Arrival {
                    times,
                    last_s: last.duration_since(t0).as_secs_f64(),
                    first_s: earliest.duration_since(t0).as_secs_f64(),
                    rate: if span > 0.0 {
                        (first.len().saturating_sub(1)) as f64 / span
                    } else {
                        f64::NAN
                    },
                }
            })
            .collect()
    }

    async fn remote_measure(&mut self, remotes: &[RemoteCluster], n: usize) -> Result<()> {
        let names = cluster_names();
        let bound = DEBOUNCE.as_secs_f64() + n as f64 / f64::from(RATE);
        let serial = DEBOUNCE.as_secs_f64() + (names.len() * n) as f64 / f64::from(RATE);
        let timeout = Duration::from_secs_f64(serial * 5.0 + 30.0);
        self.set_registrations(remotes, remotes.len()).await?;
        let mut c = self.remote_controller("remote", 1440)?;
        c.wait_ready(Duration::from_secs(60), READY_POLL).await?;
        let up = wait_clusters(&c, &REMOTES, 0, Duration::from_secs(120)).await?;
        println!(
            "bench: both remote clusters up {:.2} s after ready",
            up.as_secs_f64()
        );
        // Each cluster's first plan (of everything) comes D after it is up:
        // out of the way before the clock runs.
        tokio::time::sleep(DEBOUNCE + Duration::from_millis(1500)).await;

        // The fill: the source created, N copies in each cluster.
        let from = self.log_lens(remotes);
        let api0 = self.counts_all(remotes).await?;
        let t0 = Instant::now();
        let mut source = source_secret(SOURCE, 0);
        source.metadata.annotations = Some([(CLUSTERS_ANNOTATION.to_string(), "*".into())].into());
        let created = self
            .cluster
            .secrets(SOURCE_NS)
            .create(&PostParams::default(), &source)
            .await
            .context("create the source")?;
        let mut hash = copy_hash(&created);
        self.wait_all(remotes, &hash, n, timeout).await?;
        let fill = self.arrivals(remotes, &from, &hash, t0);
        self.settle_all(remotes).await?;
        let api1 = self.counts_all(remotes).await?;
        for (i, name) in names.iter().enumerate() {
            let own = if i == 0 { 1.0 } else { 0.0 };
            let writes = api1[i].minus(&api0[i]).writes("secrets") - own;
            let a = &fill[i];
            self.report.add_note(
                SC,
                &format!("N={n}: fill (source created), last copy in {name}"),
                a.last_s,
                "s",
                Target::Info,
                &format!(
                    "bound D + N/R = {bound:.2} s; first copy after {:.3} s, then {:.1} writes/s; {writes} copy writes (API server)",
                    a.first_s, a.rate
                ),
            );
        }

        // Copies in the remote clusters carry this cluster's name.
        for r in remotes {
            let stamped = copies::list(&r.cluster.client)
                .await?
                .iter()
                .filter(|m| {
                    m.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(SOURCE_CLUSTER_ANNOTATION))
                        .is_some_and(|v| v == CLUSTER_NAME)
                })
                .count();
            self.report.add(
                SC,
                &format!(
                    "copies in {} with {SOURCE_CLUSTER_ANNOTATION}: {CLUSTER_NAME}",
                    r.name
                ),
                stamped as f64,
                "",
                Target::Exactly(n as f64),
            );
        }

        // The updates.
        let runs = self.p.prop_runs;
        let metrics0 = c.metrics().await;
        let (cpu0, api0) = (c.cpu_s(), self.counts_all(remotes).await?);
        let mut per_run: Vec<Vec<Arrival>> = Vec::new();
        let mut cpu: Vec<CpuUse> = Vec::new();
        for run in 0..runs {
            let from = self.log_lens(remotes);
            let mark = self.cpu_mark(&c, remotes);
            let t0 = Instant::now();
            hash = self.cluster.update_source(SOURCE, run as u64 + 1).await?;
            self.wait_all(remotes, &hash, n, timeout).await?;
            cpu.push(self.cpu_mark(&c, remotes).since(&mark));
            let a = self.arrivals(remotes, &from, &hash, t0);
            println!(
                "bench:   N={n} run {}: {}",
                run + 1,
                names
                    .iter()
                    .zip(&a)
                    .map(|(name, a)| format!(
                        "{name} {:.3} s (first {:.3} s, {:.1}/s)",
                        a.last_s, a.first_s, a.rate
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            per_run.push(a);
            self.settle_all(remotes).await?;
        }
        let metrics1 = c.metrics().await;
        let (cpu1, api1) = (c.cpu_s(), self.counts_all(remotes).await?);
        let series = |f: fn(&Arrival) -> f64, i: usize| -> Vec<f64> {
            per_run.iter().map(|a| f(&a[i])).collect()
        };
        for (i, name) in names.iter().enumerate() {
            let last = series(|a| a.last_s, i);
            self.report.add_note(
                SC,
                &format!("N={n}: update, median time to the last copy in {name}"),
                median(&last),
                "s",
                Target::AtMost(bound * 1.1),
                &format!(
                    "bound D + N/R = {bound:.2} s; runs {}; first copy after {} s; {} writes/s",
                    show(&last, 3),
                    show(&series(|a| a.first_s, i), 3),
                    show(&series(|a| a.rate, i), 1)
                ),
            );
        }
        let everywhere: Vec<f64> = per_run
            .iter()
            .map(|a| a.iter().map(|a| a.last_s).fold(0.0, f64::max))
            .collect();
        self.report.add_note(
            SC,
            &format!("N={n}: update, median time to the last copy anywhere"),
            median(&everywhere),
            "s",
            Target::AtMost(bound * 1.1),
            &format!(
                "{} clusters side by side; runs {}; one limiter for all would need D + {}N/R = {serial:.2} s",
                names.len(),
                show(&everywhere, 3),
                names.len()
            ),
        );
        // While every cluster writes (from the last cluster's first copy to
        // the first cluster's last one): how fast all of them together.
        let together: Vec<(f64, f64, f64)> = per_run
            .iter()
            .filter_map(|a| {
                let from = a.iter().map(|a| a.first_s).fold(0.0, f64::max);
                let to = a.iter().map(|a| a.last_s).fold(f64::INFINITY, f64::min);
                let copies = a
                    .iter()
                    .flat_map(|a| &a.times)
                    .filter(|t| (from..=to).contains(*t))
                    .count();
                (to > from).then(|| (from, to, copies as f64 / (to - from)))
            })
            .collect();
        let rates: Vec<f64> = together.iter().map(|t| t.2).collect();
        let windows = if together.is_empty() {
            "in no run did all clusters write at once".to_string()
        } else {
            together
                .iter()
                .map(|(f, t, r)| format!("{f:.2}-{t:.2} s: {r:.0}/s"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        self.report.add_note(
            SC,
            &format!("N={n}: update, copies per second in all clusters together while all write"),
            median(&rates),
            "/s",
            Target::Info,
            &format!(
                "{} x R = {} if each cluster has its own limiter, R = {RATE} if they shared one; windows: {windows}",
                names.len(),
                names.len() as u32 * RATE,
            ),
        );
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        self.report.add_note(
            SC,
            &format!("N={n}: update, machine CPU busy from the change to the last copy"),
            median(&cpu.iter().map(|u| u.machine).collect::<Vec<_>>()),
            "cores",
            Target::Info,
            &format!(
                "of {cores}; runs {}; medians: {}",
                show(&cpu.iter().map(|u| u.machine).collect::<Vec<_>>(), 2),
                describe_cpu(&cpu)
            ),
        );
        let mut writes_total = 0.0;
        for (i, name) in names.iter().enumerate() {
            let delta = api1[i].minus(&api0[i]);
            // The bench's own PATCH of the source, in the local cluster.
            let own = if i == 0 { runs as f64 } else { 0.0 };
            let writes = delta.writes("secrets") - own;
            writes_total += writes;
            let counted = if i == 0 {
                sum_metric(&metrics1, "push_to_k8s_writes_total", &[])
                    - sum_metric(&metrics0, "push_to_k8s_writes_total", &[])
            } else {
                let label = format!("cluster=\"{name}\"");
                sum_metric(&metrics1, "push_to_k8s_cluster_writes_total", &[&label])
                    - sum_metric(&metrics0, "push_to_k8s_cluster_writes_total", &[&label])
            };
            self.report
                .api
                .insert(format!("remote N={n} updates, {name}"), delta.table());
            self.report.add_note(
                SC,
                &format!("N={n}: copy writes per update in {name} (API server)"),
                writes / runs as f64,
                "",
                Target::Exactly(n as f64),
                &format!(
                    "{writes} in {runs} updates; the controller counted {counted}{}",
                    if i == 0 {
                        ""
                    } else {
                        " (push_to_k8s_cluster_writes_total)"
                    }
                ),
            );
        }
        self.report.add_note(
            "cpu",
            &format!(
                "CPU s per 1000 updates (1 source, {} clusters x N={n})",
                names.len()
            ),
            (cpu1 - cpu0) / writes_total * 1000.0,
            "s",
            Target::Info,
            "",
        );

        // At rest after the updates.
        let from = self.log_lens(remotes);
        let (api0, metrics0) = (self.counts_all(remotes).await?, c.metrics().await);
        let mark = self.cpu_mark(&c, remotes);
        tokio::time::sleep(REST).await;
        let at_rest = self.cpu_mark(&c, remotes).since(&mark);
        let (api1, metrics1) = (self.counts_all(remotes).await?, c.metrics().await);
        let rest: Vec<f64> = copy_writes(&api1, &api0);
        let events = self.seen_since(remotes, &from);
        let counted = [
            "push_to_k8s_writes_total",
            "push_to_k8s_cluster_writes_total",
        ]
        .iter()
        .map(|m| sum_metric(&metrics1, m, &[]) - sum_metric(&metrics0, m, &[]))
        .sum::<f64>();
        self.report.add_note(
            SC,
            &format!("copy writes in {} s at rest after the updates", REST.as_secs()),
            rest.iter().sum(),
            "",
            Target::Exactly(0.0),
            &format!(
                "API servers: {}; the controller counted {counted}; copy watches saw {events} changes; machine CPU meanwhile {:.2} cores busy: {}",
                per_cluster(&names, &rest),
                at_rest.machine,
                describe_cpu(&[at_rest])
            ),
        );
        self.report.add(
            SC,
            &format!(
                "controller RSS after the updates, {} remote clusters",
                REMOTES.len()
            ),
            c.rss_mib(),
            "MiB",
            Target::Info,
        );
        self.stop_checked(SC, c)?;

        self.remote_memory(remotes, n).await
    }

    /// Fresh starts over the copies in place with 0, 1 and 2 clusters
    /// registered, then a resync of every cluster with 2.
    async fn remote_memory(&mut self, remotes: &[RemoteCluster], n: usize) -> Result<()> {
        let names = cluster_names();
        let mut rss: Vec<Vec<f64>> = vec![Vec::new(); remotes.len() + 1];
        let mut start_writes = vec![0.0; names.len()];
        let mut start_events = 0;
        let mut last = None;
        for round in 1..=STARTS {
            for (k, rss_k) in rss.iter_mut().enumerate() {
                self.set_registrations(remotes, k).await?;
                let s = self
                    .start_with_clusters(remotes, k, n, &format!("remote-start-{k}-{round}"))
                    .await?;
                rss_k.push(s.rss);
                for (sum, w) in start_writes.iter_mut().zip(&s.writes) {
                    *sum += w;
                }
                start_events += s.copy_events;
                let mut c = s.c;
                if round == STARTS && k == remotes.len() {
                    last = Some(c);
                } else {
                    c.terminate(STOP_TIMEOUT)?;
                }
            }
        }
        let medians: Vec<f64> = rss.iter().map(|v| median(v)).collect();
        for (k, v) in rss.iter().enumerate() {
            self.report.add_note(
                SC,
                &format!(
                    "RSS, fresh start over the copies, {k} of {} clusters registered",
                    remotes.len()
                ),
                medians[k],
                "MiB",
                Target::Info,
                &format!(
                    "median of {STARTS} starts ({} MiB), 5 s after every registered cluster is up with its {n} copies",
                    show(v, 1)
                ),
            );
        }
        let k = remotes.len();
        let steps: Vec<String> = (1..=k)
            .map(|i| format!("{} -> {i}: {:+.1} MiB", i - 1, medians[i] - medians[i - 1]))
            .collect();
        self.report.add_note(
            SC,
            &format!("RSS per remote cluster (N={n} namespaces and copies each)"),
            (medians[k] - medians[0]) / k as f64,
            "MiB",
            Target::Info,
            &format!(
                "({:.1} - {:.1}) / {k}; {}",
                medians[k],
                medians[0],
                steps.join(", ")
            ),
        );
        self.report.add_note(
            SC,
            &format!(
                "copy writes during the {} starts over copies in place",
                STARTS * (k + 1)
            ),
            start_writes.iter().sum(),
            "",
            Target::Exactly(0.0),
            &format!(
                "API servers: {}; copy watches saw {start_events} changes",
                per_cluster(&names, &start_writes)
            ),
        );

        // At rest across a resync of every cluster (SYNC_INTERVAL=1).
        let c = last.context("the last start")?;
        let lists = |counts: &[Counts]| -> Vec<f64> {
            counts.iter().map(|c| c.get("LIST", "secrets")).collect()
        };
        let from = self.log_lens(remotes);
        let api0 = self.counts_all(remotes).await?;
        let lists0 = lists(&api0);
        let t = Instant::now();
        loop {
            let now = lists(&self.counts_all(remotes).await?);
            if now.iter().zip(&lists0).all(|(a, b)| a > b) {
                break;
            }
            if t.elapsed() > Duration::from_secs(150) {
                bail!(
                    "not every cluster resynced within 150 s (SYNC_INTERVAL=1): LIST secrets {lists0:?} -> {now:?}"
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        println!(
            "bench: every cluster's resync LIST seen after {:.1} s",
            t.elapsed().as_secs_f64()
        );
        tokio::time::sleep(DEBOUNCE + Duration::from_secs(3)).await;
        let api1 = self.counts_all(remotes).await?;
        let writes: Vec<f64> = copy_writes(&api1, &api0);
        let events = self.seen_since(remotes, &from);
        self.report.add_note(
            SC,
            &format!("copy writes across a resync of every cluster, {k} registered"),
            writes.iter().sum(),
            "",
            Target::Exactly(0.0),
            &format!(
                "API servers: {}; LIST secrets {}; copy watches saw {events} changes",
                per_cluster(&names, &writes),
                per_cluster(
                    &names,
                    &lists(&api1)
                        .iter()
                        .zip(&lists0)
                        .map(|(a, b)| a - b)
                        .collect::<Vec<_>>()
                )
            ),
        );
        self.stop_checked(SC, c)
    }

    /// A fresh controller with the first `k` remote clusters registered,
    /// over the copies in place: ready, first local flush, every registered
    /// cluster up with its `n` copies, then 5 s; its RSS and what every API
    /// server counted meanwhile.
    async fn start_with_clusters(
        &self,
        remotes: &[RemoteCluster],
        k: usize,
        n: usize,
        name: &str,
    ) -> Result<Start> {
        let from = self.log_lens(remotes);
        let api0 = self.counts_all(remotes).await?;
        let mut c = self.remote_controller(name, 1)?;
        let ready = c.wait_ready(Duration::from_secs(120), READY_POLL).await?;
        while c.metric_sum("push_to_k8s_batch_size_count", &[]).await < 1.0 {
            if c.started.elapsed() > Duration::from_secs(120) {
                bail!("no first flush within 120 s of the start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        wait_clusters(&c, &REMOTES[..k], n, Duration::from_secs(120)).await?;
        let up = c.started.elapsed();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss = c.rss_mib();
        let api1 = self.counts_all(remotes).await?;
        let writes: Vec<f64> = copy_writes(&api1, &api0);
        let copy_events = self.seen_since(remotes, &from);
        println!(
            "bench: {name}: ready after {:.2} s, {k} clusters up after {:.2} s, writes {writes:?}, RSS {rss:.1} MiB",
            ready.as_secs_f64(),
            up.as_secs_f64()
        );
        Ok(Start {
            c,
            rss,
            writes,
            copy_events,
        })
    }
}

/// `local`, then the remote clusters.
fn cluster_names() -> Vec<&'static str> {
    std::iter::once(LOCAL).chain(REMOTES).collect()
}

fn per_cluster(names: &[&str], v: &[f64]) -> String {
    names
        .iter()
        .zip(v)
        .map(|(n, x)| format!("{n} {x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Copy writes (Secrets and ConfigMaps) per cluster between two counts of
/// every API server.
fn copy_writes(after: &[Counts], before: &[Counts]) -> Vec<f64> {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| a.minus(b).writes("secrets") + a.minus(b).writes("configmaps"))
        .collect()
}
