//! Wiring: watchers → dirty keys → batcher → planner → writer, plus the
//! periodic resync, the conflict rechecks, the HTTP endpoints and a clean
//! shutdown.
//!
//! The control loop only moves keys and plans and writes: the periodic
//! resync and the conflict rechecks are spawned tasks that report back on a
//! channel, so neither can hold up propagation or the loop's heartbeat.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::events::{EventType, Reporter};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batcher, DirtyKey};
use crate::cache::Caches;
use crate::config::Config;
use crate::conflicts;
use crate::events::Events;
use crate::fights::Fights;
use crate::gate::Gate;
use crate::gate::WriteGate;
use crate::http::{self, Health};
use crate::kinds::Kind;
use crate::lease;
use crate::metrics::{AnnotationLabels, Metrics};
use crate::pace::Pacer;
use crate::plan::{self, Action, Refusal, World};
use crate::push::Writer;
use crate::records::ObjectKey;
use crate::resync;
use crate::retry::RetryQueue;
use crate::targets::Scope;
use crate::watch;

const CONFLICT_RECHECK: Duration = Duration::from_secs(60);

/// Strays deleted per turn of the stray lane, and how often it looks for
/// work when idle.
const SWEEP_BATCH: usize = 32;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A turn of the stray lane: how many strays it deleted.
type Sweep<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + 'a>>;

/// The loop beats at least this often (`/healthz`).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// A failed resync is tried again this soon (at most `SYNC_INTERVAL`), so
/// `/readyz` does not stay unready for a whole interval after a blip.
const RESYNC_RETRY: Duration = Duration::from_secs(30);

/// What a spawned task reports back to the control loop.
/// The one answer of a background task to the loop. If the task ends
/// without sending one (it panicked), the drop sends `fallback`, so the loop
/// never waits forever for a resync or recheck that will not come.
struct Reply {
    to: Option<mpsc::UnboundedSender<Finished>>,
    fallback: Option<Finished>,
}

impl Reply {
    fn new(to: mpsc::UnboundedSender<Finished>, fallback: Finished) -> Reply {
        Reply {
            to: Some(to),
            fallback: Some(fallback),
        }
    }
    fn send(&mut self, answer: Finished) {
        if let Some(to) = self.to.take() {
            let _ = to.send(answer);
        }
    }
    /// Shutting down: no answer is needed.
    fn cancel(&mut self) {
        self.to = None;
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let (Some(to), Some(answer)) = (self.to.take(), self.fallback.take()) {
            let _ = to.send(answer);
        }
    }
}

enum Finished {
    /// A periodic resync: `Err` carries a short reason.
    Resync(Result<(), String>),
    /// A conflict recheck: the conflicts that are gone.
    Recheck(Vec<ObjectKey>),
}

/// Errors that stop the controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured source namespace does not exist: refuse to start, so a
    /// typo can never make every replica look orphaned.
    #[error(
        "invalid NAMESPACE={0:?}: namespace does not exist in the cluster; refusing to start (nothing was changed)"
    )]
    MissingNamespace(String),
    #[error("cannot reach the Kubernetes API to check namespace {namespace:?}: {source}")]
    Api {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    /// The leader election task ended while running: we could no longer
    /// tell whether we lead, so the process stops (and is restarted).
    #[error("the leader election task ended unexpectedly")]
    LeaseTaskEnded,
    /// The Vault client cannot be set up (a CA file that does not parse).
    #[error("invalid Vault settings: {0}")]
    Vault(String),
    #[error("cannot serve metrics on port {port}: {source}")]
    Http {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Exit status: 2 for a configuration the user must fix, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::MissingNamespace(_) | Error::Vault(_) => 2,
            _ => 1,
        }
    }
}

/// Check what must hold before anything is written.
/// Returns the source namespace's uid.
pub async fn preflight(client: &kube::Client, cfg: &Config) -> Result<String, Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_metadata_opt(&cfg.namespace).await {
        Ok(Some(ns)) => Ok(ns.metadata.uid.unwrap_or_default()),
        Ok(None) => Err(Error::MissingNamespace(cfg.namespace.clone())),
        Err(source) => Err(Error::Api {
            namespace: cfg.namespace.clone(),
            source,
        }),
    }
}

/// Run until `shutdown` fires. Returns once the current write has finished.
pub async fn run(
    cfg: Config,
    client: kube::Client,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let namespace_uid = preflight(&client, &cfg).await?;
    let metrics = Arc::new(Metrics::new());
    metrics
        .debounce_seconds
        .set(i64::try_from(cfg.debounce.as_secs()).unwrap_or(i64::MAX));
    metrics
        .write_rate_limit
        .set(i64::from(cfg.rate_limit.get()));
    let health = Arc::new(Health::new(cfg.ready_watch_failure));
    health.beat();
    let listener = http::bind(cfg.metrics_port)
        .await
        .map_err(|source| Error::Http {
            port: cfg.metrics_port,
            source,
        })?;
    let http_task = {
        let (h, m, s) = (health.clone(), metrics.clone(), shutdown.child_token());
        tokio::spawn(async move { http::serve(listener, h, m, s).await })
    };
    let stamp = cfg.cluster_name.clone().unwrap_or(namespace_uid);
    let result = control(&cfg, client, metrics, health, stamp, shutdown).await;
    let _ = http_task.await;
    result
}

/// Watchers, writer and the control loop, until `shutdown` fires.
async fn control(
    cfg: &Config,
    client: kube::Client,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stamp: String,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (kinds, source_kinds) = (cfg.kinds(), cfg.source_kinds());
    let caches = Arc::new(Caches::for_kinds(&kinds, &source_kinds));
    let (dirty_tx, mut dirty_rx) = mpsc::unbounded_channel::<DirtyKey>();
    let watchers = watch::spawn_all(
        client.clone(),
        (&cfg.namespace, None),
        &kinds,
        &source_kinds,
        cfg.enable_secret_watcher,
        caches.clone(),
        dirty_tx.clone(),
        metrics.clone(),
        health.clone(),
        shutdown.clone(),
    );

    let reporter = Reporter {
        controller: "push-to-k8s".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    // Leader election: the write gate is open only while we hold the Lease.
    let (leading_tx, mut leading_rx) = tokio::sync::watch::channel(cfg.leader_election.is_none());
    let mut lease_task = cfg.leader_election.as_ref().map(|le| {
        let settings = lease::Settings {
            name: le.lease_name.clone(),
            namespace: le.lease_namespace.clone(),
            identity: identity(),
            duration: le.duration,
            renew_deadline: le.renew_deadline,
            retry_period: le.retry_period,
        };
        health.set_role("standby");
        metrics.leader.set(0);
        let elector = lease::Elector::new(client.clone(), settings);
        tokio::spawn(elector.run(leading_tx, shutdown.child_token()))
    });
    let gate = Arc::new(WriteGate::new(leading_rx.clone(), shutdown.clone()));
    let events = Arc::new(Events::new(
        client.clone(),
        reporter,
        cfg.namespace.clone(),
        gate.clone(),
    ));
    // The Vault target runs beside the loop, told of every flushed source.
    let vault = match cfg.vault.as_ref().map(|vault_cfg| {
        crate::vault::spawn(
            vault_cfg,
            cfg,
            &stamp,
            caches.clone(),
            gate.clone(),
            events.clone(),
            metrics.clone(),
            health.clone(),
            leading_rx.clone(),
            shutdown.clone(),
        )
    }) {
        None => None,
        Some(Ok(handle)) => Some(handle),
        // Before anything is written (the caches have not synced yet).
        Some(Err(e)) => return Err(Error::Vault(e.to_string())),
    };
    // Registered remote clusters, each served by its own task beside the loop.
    let remote = crate::remote::spawn(
        crate::remote::Shared {
            cfg: cfg.clone(),
            caches: caches.clone(),
            gate: gate.clone(),
            events: events.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            leading: leading_rx.clone(),
            stamp,
        },
        client.clone(),
        shutdown.clone(),
    );
    let writer = Writer::new(
        client.clone(),
        cfg.namespace.clone(),
        Pacer::new(cfg.rate_limit, cfg.rate_burst),
        events,
        metrics.clone(),
        caches.clone(),
        gate.clone(),
    )
    .allowing_adoption(cfg.allow_adoption)
    .sweeping_apart();
    let mut retry = RetryQueue::new();
    let mut fights = Fights::new();

    // Without a source watch, the sources come from the list at start and each resync.
    if !cfg.enable_secret_watcher {
        loop {
            let listed = resync::once(
                &client,
                (&cfg.namespace, None),
                &kinds,
                &source_kinds,
                &caches,
                &metrics,
            );
            let Some(result) = beating(&health, &shutdown, listed).await else {
                return Ok(());
            };
            let ok = result.is_ok();
            health.resync_result(result);
            if ok {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }

    // Wait for the first full list of every cache before planning anything:
    // planning from a half-filled replica cache would create what exists.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while !caches.synced() {
        health.beat();
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
    }
    health.set_synced(true);
    for &kind in &kinds {
        tracing::info!(
            namespace = %cfg.namespace,
            kind = kind.label(),
            sources = caches.of(kind).sources.len(),
            replicas = caches.of(kind).replicas.len(),
            "caches synced"
        );
    }
    tracing::info!(namespaces = caches.namespaces.len(), "ready");

    let protected = cfg.protected_namespaces.clone();
    let scope = Scope {
        source_namespace: &cfg.namespace,
        exclude_label: cfg.exclude_namespace_label.as_deref(),
        protected: &protected,
        require_consent: cfg.require_namespace_consent,
        cluster: None,
        stamp: None,
    };
    // Unmanaged same-named Secrets already in the cluster: known from one
    // LIST per source before the first plan, so it makes no POST (and no GET
    // and Event per namespace) to find them.
    for &kind in &kinds {
        let of = caches.of(kind);
        let scan = conflicts::at_start(
            &client,
            of,
            &caches.namespaces,
            &scope,
            cfg.allow_adoption,
            &metrics,
        );
        let Some(found) = beating(&health, &shutdown, scan).await else {
            return Ok(());
        };
        conflicts::report_at_start(
            &found,
            &writer.conflicts,
            of,
            &writer.events,
            &metrics,
            None,
        )
        .await;
    }

    let mut batcher = Batcher::new(cfg.debounce, cfg.max_wait);
    let mut since = Instant::now();
    // The first plan covers everything, which also collects copies orphaned
    // while we were down (only those naming our source namespace).
    batcher.add(DirtyKey::All);
    let mut resync_timer = every(cfg.sync_interval);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    // Unmanaged objects that block a copy are invisible to our label-selected
    // watch; look at them again (one LIST per name) once a minute.
    let mut conflict_timer = every(CONFLICT_RECHECK);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let (mut resyncing, mut rechecking) = (false, false);
    // The stray lane: deletes of strays (see `Writer::split_strays`), a
    // bounded number at a time, polled only while the loop has nothing
    // else to do, so a flush always goes first.
    let mut sweeping: Option<Sweep<'_>> = None;
    let mut sweep_timer = every(SWEEP_EVERY);

    loop {
        health.beat();
        // While the source namespace is being deleted or gone, nothing is
        // deleted (flush, writer) and /readyz says why.
        health.set_source_namespace_lost(caches.source_namespace_lost(&cfg.namespace));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // A due batch goes before new keys, so a flood of events cannot
            // push a batch past its maximum wait.
            keys = batcher.ready() => {
                metrics.queue_depth.set(0);
                // A standby plans nothing: whoever leads does, and a new
                // leader starts with everything (below).
                if gate.leading() {
                    if let Some(vault) = &vault {
                        vault.tell(&keys, since);
                    }
                    remote.tell(&keys, since);
                    metrics.batch_size.observe(keys.len() as f64);
                    let mut gate = Gate { retry: &mut retry, fights: &mut fights };
                    flush(&kinds, &caches, &scope, &writer, &metrics, &keys, since, &health, &mut gate, true).await;
                } else {
                    // A standby keeps track of the copy names sources ask
                    // for, so a source deleted before it leads is collected
                    // on the propagation path, not in the stray lane.
                    for &kind in &kinds {
                        caches.of(kind).sources.read(|sources| writer.record_asked(kind, sources));
                    }
                }
            }
            Ok(()) = leading_rx.changed(), if lease_task.is_some() => {
                let leading = *leading_rx.borrow_and_update();
                metrics.leader.set(i64::from(leading));
                health.set_role(if leading { "leader" } else { "standby" });
                if leading {
                    // Plan everything: the last leader may have left anything.
                    if batcher.pending() == 0 {
                        since = Instant::now();
                    }
                    batcher.add(DirtyKey::All);
                    if let Some(le) = &cfg.leader_election {
                        announce_leader(&writer, le).await;
                    }
                }
            }
            ended = async { lease_task.as_mut().expect("guarded").await }, if lease_task.is_some() => {
                // The election only ends at shutdown; anything else means we
                // can no longer know whether we lead: stop instead of running headless.
                lease_task = None;
                if !shutdown.is_cancelled() {
                    tracing::error!(ended = ?ended.err().map(|e| e.to_string()), "the leader election task ended; exiting");
                    return Err(Error::LeaseTaskEnded);
                }
            }
            // A copy's backoff is over: re-plan that copy only.
            key = retry.next() => {
                if batcher.pending() == 0 {
                    since = Instant::now();
                }
                // Planned per source: the copy's source (gone: all of them).
                match caches.of(key.kind).source_of(&key) {
                    Some(source) => batcher.add(DirtyKey::Copy(ObjectKey::new(key.kind, &key.namespace, &source))),
                    None => batcher.add(DirtyKey::Namespace(key.namespace)),
                }
            }
            Some(key) = dirty_rx.recv() => {
                if batcher.pending() == 0 {
                    since = Instant::now();
                }
                batcher.add(key);
                metrics.queue_depth.set(batcher.pending() as i64);
            }
            _ = resync_timer.tick(), if !resyncing => {
                tracing::info!("periodic resync: re-listing from the API server");
                resyncing = true;
                let (client, ns, caches, metrics) =
                    (client.clone(), cfg.namespace.clone(), caches.clone(), metrics.clone());
                let (kinds, source_kinds) = (kinds.clone(), source_kinds.clone());
                let (done, stop) = (done_tx.clone(), shutdown.clone());
                tokio::spawn(async move {
                    // Reports a failure if the task ends any other way (a panic).
                    let mut guard = Reply::new(done, Finished::Resync(Err("resync task failed".into())));
                    tokio::select! {
                        _ = stop.cancelled() => guard.cancel(),
                        r = resync::once(&client, (&ns, None), &kinds, &source_kinds, &caches, &metrics) => guard.send(Finished::Resync(r)),
                    }
                });
            }
            _ = conflict_timer.tick(), if !rechecking => {
                let known: Vec<ObjectKey> =
                    writer.conflicts.lock().expect("lock").iter().cloned().collect();
                if !known.is_empty() {
                    rechecking = true;
                    let (client, ns, metrics) =
                        (client.clone(), cfg.namespace.clone(), metrics.clone());
                    let (done, stop) = (done_tx.clone(), shutdown.clone());
                    tokio::spawn(async move {
                        let mut guard = Reply::new(done, Finished::Recheck(Vec::new()));
                        tokio::select! {
                            _ = stop.cancelled() => guard.cancel(),
                            gone = conflicts::recheck(&client, (&ns, None), known, &metrics) => guard.send(Finished::Recheck(gone)),
                        }
                    });
                }
            }
            Some(finished) = done_rx.recv() => match finished {
                Finished::Resync(result) => {
                    resyncing = false;
                    if result.is_ok() {
                        // Look at the known conflicts again too.
                        conflict_timer.reset_immediately();
                    } else {
                        resync_timer.reset_after(RESYNC_RETRY.min(cfg.sync_interval));
                    }
                    health.resync_result(result);
                    if batcher.pending() == 0 {
                        since = Instant::now();
                    }
                    batcher.add(DirtyKey::All);
                }
                Finished::Recheck(gone) => {
                    rechecking = false;
                    if !gone.is_empty() {
                        tracing::info!(copies = gone.len(), "conflicts resolved; their copies are planned again");
                    }
                    let mut known = writer.conflicts.lock().expect("lock");
                    for key in gone {
                        known.remove(&key);
                        if batcher.pending() == 0 {
                            since = Instant::now();
                        }
                        // A conflict is keyed by the copy's name: re-plan the
                        // sources that ask for that name (a renamed copy's
                        // source has another name).
                        for source in caches.of(key.kind).sources_asking(&key.name) {
                            batcher.add(DirtyKey::Source(key.kind, source));
                        }
                    }
                }
            },
            _ = async { sweeping.as_mut().expect("guarded").await }, if sweeping.is_some() => {
                sweeping = None;
                sweep_timer.reset_immediately();
            }
            _ = sweep_timer.tick(), if sweeping.is_none() => {
                if gate.leading()
                    && writer.strays_pending() > 0
                    && caches.source_namespace_lost(&cfg.namespace).is_none()
                {
                    sweeping = Some(Box::pin(writer.sweep(SWEEP_BATCH)));
                }
            }
            _ = heartbeat.tick() => {}
        }
    }

    tracing::info!(
        pending = batcher.pending(),
        "shutting down; pending keys are re-planned at the next start"
    );
    health.set_synced(false);
    for w in watchers {
        w.abort();
    }
    // The elector releases the Lease on shutdown, so a standby takes over
    // at once; give it a moment to do so.
    if let Some(task) = lease_task {
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    }
    Ok(())
}

/// Plan `keys` against one cluster's caches and write what is needed;
/// `refusals`: report refused sources (this cluster does, once for all).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn flush(
    kinds: &[Kind],
    caches: &Caches,
    scope: &Scope<'_>,
    writer: &Writer,
    metrics: &Metrics,
    keys: &[DirtyKey],
    since: Instant,
    health: &Health,
    gate: &mut Gate<'_>,
    refusals: bool,
) {
    // A source that asks for adoption (and may) tries again what was in its way.
    for &kind in kinds {
        let allowed = writer.adoption_allowed();
        conflicts::release_for_adoption(&writer.conflicts, caches.of(kind), keys, allowed);
    }
    let conflicts = writer.conflicts.lock().expect("lock").clone();
    let accepted = writer.accepted.lock().expect("lock").clone();
    let mut planned = Vec::new();
    for &kind in kinds {
        let of = caches.of(kind);
        of.sources
            .read(|sources| writer.record_asked(kind, sources));
        let plan = of.sources.read(|sources| {
            caches.namespaces.read(|namespaces| {
                of.replicas.read(|replicas| {
                    plan::plan(
                        &World {
                            kind,
                            sources,
                            namespaces,
                            replicas,
                            conflicts: &conflicts,
                            accepted: &accepted,
                        },
                        scope,
                        keys,
                    )
                })
            })
        });
        {
            let mut conflicts = writer.conflicts.lock().expect("lock");
            for k in &plan.resolved_conflicts {
                conflicts.remove(k);
            }
        }
        if refusals {
            report_refusals(kind, caches, writer, metrics, &plan.refused).await;
        }
        planned.extend(plan.actions);
    }
    // Losing the source namespace deletes nothing: its deletion deletes
    // every source, which would make every copy look orphaned.
    if let Some(why) = caches.source_namespace_lost(scope.source_namespace) {
        let before = planned.len();
        planned.retain(|a| !matches!(a, Action::Delete { .. } | Action::Replace { .. }));
        if planned.len() < before {
            tracing::warn!(
                deletes = before - planned.len(),
                "deletes not planned: {why}"
            );
        }
    }
    // Deletes under names no source asks for (or asked for while we ran)
    // wait for the low-priority lane: what a tenant makes to look like our
    // copies never holds up propagation.
    let planned = writer.split_strays(planned);
    tracing::debug!(keys = keys.len(), actions = planned.len(), "flush");
    let actions = gate.admit(caches, writer, planned).await;
    if !actions.is_empty() {
        let outcomes = writer.execute(actions, since, health).await;
        gate.record(outcomes);
    }
    if !writer.sweeps_apart()
        && caches
            .source_namespace_lost(scope.source_namespace)
            .is_none()
    {
        writer.sweep(crate::push::SWEEP_INLINE).await;
    }
    gate.prune(caches, writer);
    metrics.retry_queue.set(gate.retry.len() as i64);
    metrics.set_out_of_sync_since(gate.retry.oldest().map(|t| t.into_std()));
    metrics
        .conflicted_copies
        .set(writer.conflicts.lock().expect("lock").len() as i64);
}

/// One Warning Event (and one count) per refused source and change of its
/// reason, not one per flush.
async fn report_refusals(
    kind: Kind,
    caches: &Caches,
    writer: &Writer,
    metrics: &Metrics,
    refused: &[(String, Refusal)],
) {
    let events = &writer.events;
    events.retain_refusals(|k, name| {
        caches
            .of(k)
            .sources
            .read(|sources| plan::refusal_among(sources, name).is_some())
    });
    for (source, refusal) in refused {
        let Some(rec) = caches.of(kind).sources.get(source) else {
            continue;
        };
        let note = refusal.to_string();
        if !events.first_refusal(kind, source, &rec.uid, &note) {
            continue;
        }
        match refusal {
            Refusal::Annotation(_) => metrics
                .invalid_annotations
                .get_or_create(&AnnotationLabels {
                    annotation: refusal.metric_label(),
                })
                .inc(),
            Refusal::IdentityType(_) => metrics.refused_types.inc(),
        };
        tracing::warn!(kind = kind.label(), source = %source, reason = refusal.reason(), "source refused: {note}");
        events
            .publish(
                &events.source_ref(kind, source, &rec.uid),
                EventType::Warning,
                refusal.reason(),
                "Plan",
                note,
            )
            .await;
    }
}

/// A timer that first fires one `period` from now, then every `period`; a
/// late tick delays the next rather than bunching them.
pub(crate) fn every(period: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// Who we are in the Lease: the pod's name, else host name and process id.
fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "push-to-k8s".into());
            format!("{host}-{}", std::process::id())
        })
}

/// Say who leads: an Event on the Lease (and the log line the elector wrote).
async fn announce_leader(writer: &Writer, le: &crate::config::LeaderElection) {
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("coordination.k8s.io/v1".into()),
        kind: Some("Lease".into()),
        namespace: Some(le.lease_namespace.clone()),
        name: Some(le.lease_name.clone()),
        ..Default::default()
    };
    writer
        .events
        .publish(
            &reference,
            EventType::Normal,
            "LeaderElected",
            "Lead",
            format!(
                "{} holds the Lease and writes; other replicas stand by",
                identity()
            ),
        )
        .await;
}

/// Await `work` before the loop starts while keeping the heartbeat:
/// `None` if `shutdown` fires first.
async fn beating<T>(
    health: &Health,
    shutdown: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let mut work = std::pin::pin!(work);
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            out = &mut work => return Some(out),
            _ = beat.tick() => health.beat(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::{Method, Request, Response, StatusCode};
    use kube::client::Body;
    use tower_test::mock::{Handle, SendResponse};

    type ApiHandle = Handle<Request<Body>, Response<Body>>;

    fn respond(send: SendResponse<Response<Body>>, code: StatusCode, body: serde_json::Value) {
        let bytes = serde_json::to_vec(&body).unwrap();
        send.send_response(
            Response::builder()
                .status(code)
                .body(Body::from(bytes))
                .unwrap(),
        );
    }

    fn empty_list() -> serde_json::Value {
        serde_json::json!({"apiVersion": "v1", "kind": "List",
                           "metadata": {"resourceVersion": "1"}, "items": []})
    }

    /// What a LIST finds: nothing, but the source namespace `src` in a
    /// LIST of namespaces (without it nothing may be deleted, and /readyz
    /// says so).
    fn listing(uri: &str) -> serde_json::Value {
        let mut list = empty_list();
        if uri.starts_with("/api/v1/namespaces?") {
            list["items"] = serde_json::json!([{"metadata": {"name": "src", "uid": "src-uid"}}]);
        }
        list
    }

    /// The next LIST request and its URI (watch requests are parked in
    /// `watches`, never answered, like watches with nothing to say).
    async fn next_list(
        h: &mut ApiHandle,
        watches: &mut Vec<SendResponse<Response<Body>>>,
    ) -> (String, SendResponse<Response<Body>>) {
        loop {
            let (req, send) = h.next_request().await.expect("a request");
            let uri = req.uri().to_string();
            assert_eq!(req.method(), Method::GET, "no write expected: {uri}");
            if uri.contains("watch=true") {
                watches.push(send);
            } else {
                return (uri, send);
            }
        }
    }

    // Issue 7, defect 5: the periodic resync ran on the control loop, so a
    // slow one stopped propagation and the heartbeat. Now it is a spawned
    // task: the loop beats through it, and its result reaches /readyz.
    #[tokio::test(start_paused = true)]
    async fn defect5_a_long_resync_neither_blocks_the_loop_nor_trips_healthz() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let cfg = Config::from_vars([
            ("NAMESPACE".to_string(), "src".to_string()),
            ("SYNC_INTERVAL".to_string(), "1".to_string()),
        ])
        .unwrap();
        let health = Arc::new(Health::new(cfg.ready_watch_failure));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(control_with(
            cfg.clone(),
            client,
            health.clone(),
            shutdown.clone(),
        ));

        let mut watches = Vec::new();
        // Every watch lists (nothing there), then watches: the namespaces,
        // the sources and copies of each kind, and the cluster registrations.
        for _ in 0..2 + 2 * cfg.kinds().len() {
            let (uri, send) = next_list(&mut handle, &mut watches).await;
            respond(send, StatusCode::OK, listing(&uri));
        }
        // A minute later the resync lists, and its first LIST hangs.
        let t0 = Instant::now();
        let (_, hanging) = next_list(&mut handle, &mut watches).await;
        assert!(
            t0.elapsed() >= Duration::from_secs(55),
            "{:?}",
            t0.elapsed()
        );
        assert!(health.ready(), "{:?}", health.readiness());
        // Five minutes of a hanging resync: alive, ready, and no second resync.
        let more = tokio::time::timeout(
            Duration::from_secs(300),
            next_list(&mut handle, &mut watches),
        )
        .await;
        assert!(more.is_err(), "one resync at a time");
        assert_eq!(health.liveness(), Ok(()), "the loop beat all along");
        assert_eq!(health.readiness(), Ok(()));
        // It fails: /readyz says so, and it is tried again within 30 s.
        respond(
            hanging,
            StatusCode::FORBIDDEN,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "Forbidden", "code": 403, "message": "forbidden"}),
        );
        let t1 = Instant::now();
        tokio::task::yield_now().await;
        let (uri, retry) = next_list(&mut handle, &mut watches).await;
        assert!(t1.elapsed() <= RESYNC_RETRY, "{:?}", t1.elapsed());
        let why = health.readiness().unwrap_err();
        assert!(
            why.contains("last resync failed") && why.contains("403 Forbidden"),
            "{why}"
        );
        // The retry succeeds: ready again.
        respond(retry, StatusCode::OK, listing(&uri));
        for _ in 0..2 * cfg.kinds().len() {
            let (uri, send) = next_list(&mut handle, &mut watches).await;
            respond(send, StatusCode::OK, listing(&uri));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(health.readiness(), Ok(()));
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    async fn control_with(
        cfg: Config,
        client: kube::Client,
        health: Arc<Health>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        health.beat();
        let stamp = "home".to_string();
        control(
            &cfg,
            client,
            Arc::new(Metrics::new()),
            health,
            stamp,
            shutdown,
        )
        .await
    }
}
