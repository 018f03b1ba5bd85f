//! One cluster's lane: the loop that serves one Kubernetes cluster's
//! namespaces, this cluster's or a registered one's (one implementation).
//!
//! - [`Lane::run`] starts (synced caches, the conflicts already there), then
//!   turns one `select!` until `stop`: a batch is due, a batch is told
//!   ([`Told`]), a key is dirty, a retry is due, the leader changes, the
//!   cluster is back, and the resync and conflict-recheck timers and
//!   replies, the stray lane and the heartbeat.
//! - [`Lane::flush`]: plan → admit → write → record → prune.
//! - The periodic resync and the conflict recheck are spawned tasks that
//!   report back on a channel ([`Reply`]), so neither holds up the lane's
//!   propagation or its heartbeat, in any cluster.
//! - A batch's start time travels with it ([`Batch::since`]): the
//!   propagation latency counts from the source's event for every cluster.
//!
//! The cluster that holds the sources batches nothing itself
//! ([`Lane::upstream`]): its own keys (retries, resyncs, rechecks, a new
//! leader) join its watches' keys in the one source batch, which every
//! target is told ([`crate::targets::FanOut`]), this lane included.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::EventType;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::decide::plan::{self, Action, Refusal, World};
use crate::model::kinds::Kind;
use crate::model::records::ObjectKey;
use crate::model::rules::Scope;
use crate::observe::batch::{Batcher, DirtyKey};
use crate::observe::cache::Caches;
use crate::observe::resync;
use crate::operate::config::Config;
use crate::operate::http::Health;
use crate::operate::metrics::{AnnotationLabels, Metrics};
use crate::targets::cluster::admit::Admission;
use crate::targets::cluster::conflicts;
use crate::targets::cluster::fights::Fights;
use crate::targets::cluster::writer::{ClusterPass, Writer};
use crate::targets::{Batch, Target};
use crate::write::gate::WriteGate;
use crate::write::retry::RetryQueue;

/// How often the known conflicts are looked at again (one LIST per name).
pub const CONFLICT_RECHECK: Duration = Duration::from_secs(60);

/// A failed resync is tried again this soon (at most `SYNC_INTERVAL`), so
/// `/readyz` does not stay unready for a whole interval after a blip.
pub const RESYNC_RETRY: Duration = Duration::from_secs(30);

/// Strays deleted per turn of the stray lane, and how often it looks for
/// work when idle.
const SWEEP_BATCH: usize = 32;
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What the planner may target, by the settings: in this cluster
/// (`remote: None`) or in a registered one (its name and our stamp there).
pub fn scope<'a>(cfg: &'a Config, remote: Option<&'a (String, String)>) -> Scope<'a> {
    Scope {
        source_namespace: &cfg.namespace,
        exclude_label: cfg.exclude_namespace_label.as_deref(),
        protected: &cfg.protected_namespaces,
        require_consent: cfg.require_namespace_consent,
        cluster: remote.map(|(c, _)| c.as_str()),
        stamp: remote.map(|(_, s)| s.as_str()),
    }
}

/// The loop beats at least this often (`/healthz`).
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A turn of the stray lane: how many strays it deleted.
type Sweep<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send + 'a>>;

/// What one cluster's lane is made of.
pub struct Lane {
    pub cfg: Config,
    /// The kinds whose copies this lane keeps.
    pub kinds: Vec<Kind>,
    /// The kinds whose sources this lane lists itself at a resync (the
    /// cluster that holds the sources; none in a registered cluster).
    pub source_kinds: Vec<Kind>,
    /// A registered cluster's name and the source-cluster stamp its copies
    /// carry; `None` for the cluster that holds the sources.
    pub remote: Option<(String, String)>,
    /// Requests to this cluster's API server.
    pub client: kube::Client,
    pub caches: Arc<Caches>,
    pub writer: Arc<Writer>,
    pub metrics: Arc<Metrics>,
    /// This cluster's health (the process's own for the source cluster).
    pub health: Arc<Health>,
    pub gate: Arc<WriteGate>,
    /// The cluster's own gate, asked with the write gate before planning
    /// (a remote cluster's: reachable, registered, owned).
    pub pass: Option<Arc<dyn ClusterPass>>,
    /// Where this lane's own keys go when it does not batch them itself:
    /// the source batch (the cluster that holds the sources).
    pub upstream: Option<mpsc::UnboundedSender<DirtyKey>>,
}

/// What a lane listens to.
pub struct Inputs {
    /// Keys its own watches found (none when they go upstream).
    pub dirty: mpsc::UnboundedReceiver<DirtyKey>,
    /// Batches it is told.
    pub told: Arc<Told>,
    /// Whether this instance leads.
    pub leading: watch::Receiver<bool>,
    /// Fired when the cluster may be served again after it could not:
    /// what failed meanwhile waits out no backoff, everything is planned.
    pub back: Option<Arc<Notify>>,
    pub stop: CancellationToken,
}

/// The batches told to a lane that it has not taken yet: a set, not a
/// queue, so a lane that is slow or hung holds at most one entry per key
/// (or "everything"), however many batches are told meanwhile; and the
/// earliest start among them, so latency counts from the first event.
#[derive(Default)]
pub struct Told {
    pending: Mutex<(BTreeSet<DirtyKey>, Option<Instant>)>,
    more: Notify,
}

impl Told {
    /// Add a batch (coalesced: a key already pending is not added twice,
    /// and "everything" makes every other key redundant).
    pub fn add(&self, batch: &Batch) {
        if batch.keys.is_empty() {
            return;
        }
        {
            let mut guard = self.pending.lock().expect("lock");
            let (keys, since) = &mut *guard;
            if keys.contains(&DirtyKey::All) {
                // Already everything.
            } else if batch.keys.contains(&DirtyKey::All) {
                keys.clear();
                keys.insert(DirtyKey::All);
            } else {
                keys.extend(batch.keys.iter().cloned());
            }
            *since = Some(since.map_or(batch.since, |s| s.min(batch.since)));
        }
        self.more.notify_one();
    }

    /// Everything pending, taken as one batch (`None` if nothing is).
    pub fn take(&self) -> Option<Batch> {
        let (keys, since) = std::mem::take(&mut *self.pending.lock().expect("lock"));
        (!keys.is_empty()).then(|| Batch {
            keys: keys.into_iter().collect(),
            since: since.unwrap_or_else(Instant::now),
        })
    }

    /// How many keys are pending.
    pub fn len(&self) -> usize {
        self.pending.lock().expect("lock").0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until keys are pending (returns at once if some already are).
    pub async fn wait(&self) {
        loop {
            let notified = self.more.notified();
            if !self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// A lane as a target: told every key of every batch.
pub struct Inbox(pub Arc<Told>);

impl Target for Inbox {
    fn tell(&self, batch: &Batch) {
        self.0.add(batch);
    }
}

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

/// What a spawned task reports back to the lane.
enum Finished {
    /// A periodic resync: `Err` carries a short reason.
    Resync(Result<(), String>),
    /// A conflict recheck: the conflicts that are gone.
    Recheck(Vec<ObjectKey>),
}

/// The lane's own keys, batched here or upstream, with their start time.
struct Keys {
    batcher: Batcher,
    since: Instant,
    upstream: Option<mpsc::UnboundedSender<DirtyKey>>,
}

impl Keys {
    /// Add `key`, starting the batch's clock if it is the first.
    fn add(&mut self, key: DirtyKey) {
        match &self.upstream {
            Some(up) => {
                let _ = up.send(key);
            }
            None => {
                if self.batcher.pending() == 0 {
                    self.since = Instant::now();
                }
                self.batcher.add(key);
            }
        }
    }
}

impl Lane {
    /// The source namespace, and the stamp our copies carry in this cluster.
    fn place(&self) -> (&str, Option<&str>) {
        (
            &self.cfg.namespace,
            self.remote.as_ref().map(|(_, s)| s.as_str()),
        )
    }

    fn scope(&self) -> Scope<'_> {
        scope(&self.cfg, self.remote.as_ref())
    }

    /// The cluster that holds the sources reports refused sources and a lost
    /// source namespace (once, for every cluster).
    fn holds_sources(&self) -> bool {
        self.remote.is_none()
    }

    /// Planned and written now: this instance leads and the cluster may be served.
    fn serving(&self) -> bool {
        self.gate.leading() && self.pass.as_ref().is_none_or(|pass| pass.open())
    }

    /// Serve the cluster until `stop` fires; returns after the current write.
    pub async fn run(self, inputs: Inputs) {
        let Inputs {
            mut dirty,
            told,
            mut leading,
            back,
            stop,
        } = inputs;
        if !self.start(&stop).await {
            return;
        }
        let mut keys = Keys {
            batcher: Batcher::new(self.cfg.debounce, self.cfg.max_wait),
            since: Instant::now(),
            upstream: self.upstream.clone(),
        };
        // The first plan covers everything, which also collects copies
        // orphaned while we were down (only those naming our source namespace).
        keys.add(DirtyKey::All);
        let mut retry = RetryQueue::new();
        let mut fights = Fights::new();
        let mut resync_timer = every(self.cfg.sync_interval);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        // Unmanaged objects that block a copy are invisible to our label-selected
        // watch; look at them again (one LIST per name) once a minute.
        let mut conflict_timer = every(CONFLICT_RECHECK);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let (mut resyncing, mut rechecking) = (false, false);
        // The stray lane: deletes of strays (see `Writer::split_strays`), a
        // bounded number at a time, polled only while the loop has nothing
        // else to do, so a flush always goes first.
        let apart = self.writer.sweeps_apart();
        let mut sweeping: Option<Sweep<'_>> = None;
        let mut sweep_timer = every(SWEEP_EVERY);
        let back = back.unwrap_or_default();

        loop {
            self.health.beat();
            if self.holds_sources() {
                // While the source namespace is being deleted or gone, nothing
                // is deleted (flush, writer) and /readyz says why.
                self.health.set_source_namespace_lost(
                    self.caches.source_namespace_lost(&self.cfg.namespace),
                );
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                // A due batch goes before new keys, so a flood of events cannot
                // push a batch past its maximum wait.
                due = keys.batcher.ready() => {
                    self.metrics.queue_depth.set(keys.batcher.pending() as i64);
                    let batch = Batch { keys: due, since: keys.since };
                    self.take(&batch, &mut Admission { retry: &mut retry, fights: &mut fights }).await;
                }
                // Already batched (their quiet window is over): planned at
                // once, not after a second window, and timed from their start.
                () = told.wait() => {
                    if let Some(batch) = told.take() {
                        self.take(&batch, &mut Admission { retry: &mut retry, fights: &mut fights }).await;
                    }
                }
                Ok(()) = leading.changed() => {
                    // Plan everything: the last leader may have left anything.
                    if *leading.borrow_and_update() {
                        keys.add(DirtyKey::All);
                    }
                }
                () = back.notified() => {
                    retry = RetryQueue::new();
                    keys.add(DirtyKey::All);
                }
                // A copy's backoff is over: re-plan that copy only.
                key = retry.next() => {
                    // Planned per source: the copy's source (gone: all of them).
                    keys.add(match self.caches.of(key.kind).source_of(&key) {
                        Some(source) => DirtyKey::Copy(ObjectKey::new(key.kind, &key.namespace, &source)),
                        None => DirtyKey::Namespace(key.namespace),
                    });
                }
                Some(key) = dirty.recv() => {
                    keys.add(key);
                    self.metrics.queue_depth.set(keys.batcher.pending() as i64);
                }
                _ = resync_timer.tick(), if !resyncing => {
                    tracing::info!("periodic resync: re-listing from the API server");
                    resyncing = true;
                    self.spawn_resync(done_tx.clone(), stop.clone());
                }
                _ = conflict_timer.tick(), if !rechecking => {
                    let known: Vec<ObjectKey> =
                        self.writer.conflicts.lock().expect("lock").iter().cloned().collect();
                    if !known.is_empty() {
                        rechecking = true;
                        self.spawn_recheck(known, done_tx.clone(), stop.clone());
                    }
                }
                Some(finished) = done_rx.recv() => match finished {
                    Finished::Resync(result) => {
                        resyncing = false;
                        if result.is_ok() {
                            // Look at the known conflicts again too.
                            conflict_timer.reset_immediately();
                        } else {
                            resync_timer.reset_after(RESYNC_RETRY.min(self.cfg.sync_interval));
                        }
                        self.health.resync_result(result);
                        keys.add(DirtyKey::All);
                    }
                    Finished::Recheck(gone) => {
                        rechecking = false;
                        if !gone.is_empty() {
                            tracing::info!(copies = gone.len(), "conflicts resolved; their copies are planned again");
                        }
                        for key in gone {
                            self.writer.conflicts.lock().expect("lock").remove(&key);
                            // A conflict is keyed by the copy's name: re-plan the
                            // sources that ask for that name (a renamed copy's
                            // source has another name).
                            for source in self.caches.of(key.kind).sources_asking(&key.name) {
                                keys.add(DirtyKey::Source(key.kind, source));
                            }
                        }
                    }
                },
                _ = async { sweeping.as_mut().expect("guarded").await }, if sweeping.is_some() => {
                    sweeping = None;
                    sweep_timer.reset_immediately();
                }
                _ = sweep_timer.tick(), if apart && sweeping.is_none() => {
                    if self.gate.leading()
                        && self.writer.strays_pending() > 0
                        && self.caches.source_namespace_lost(&self.cfg.namespace).is_none()
                    {
                        sweeping = Some(Box::pin(self.writer.sweep(SWEEP_BATCH)));
                    }
                }
                _ = heartbeat.tick() => {}
            }
        }
        if keys.batcher.pending() > 0 {
            tracing::info!(
                pending = keys.batcher.pending(),
                "shutting down; pending keys are re-planned at the next start"
            );
        }
    }

    /// Before the loop: the sources listed (when not watched), the caches
    /// synced, and the conflicts already there known. `false` if `stop`
    /// fired first.
    async fn start(&self, stop: &CancellationToken) -> bool {
        // Without a source watch, the sources come from the list at start and each resync.
        if self.holds_sources() && !self.cfg.enable_secret_watcher {
            loop {
                let listed = resync::once(
                    &self.client,
                    self.place(),
                    &self.kinds,
                    &self.source_kinds,
                    &self.caches,
                    &self.metrics,
                );
                let Some(result) = beating(&self.health, stop, listed).await else {
                    return false;
                };
                let ok = result.is_ok();
                self.health.resync_result(result);
                if ok {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
        // Wait for the first full list of every cache before planning anything:
        // planning from a half-filled replica cache would create what exists.
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        while !self.caches.synced() {
            self.health.beat();
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tick.tick() => {}
            }
        }
        self.health.set_synced(true);
        match &self.remote {
            None => {
                for &kind in &self.kinds {
                    tracing::info!(
                        namespace = %self.cfg.namespace,
                        kind = kind.label(),
                        sources = self.caches.of(kind).sources.len(),
                        replicas = self.caches.of(kind).replicas.len(),
                        "caches synced"
                    );
                }
                tracing::info!(namespaces = self.caches.namespaces.len(), "ready");
            }
            Some(_) => tracing::info!(
                namespaces = self.caches.namespaces.len(),
                copies = self.caches.replica_count(),
                "remote cluster listed"
            ),
        }
        // Unmanaged same-named objects already in the cluster: known from one
        // LIST per source before the first plan, so it makes no POST (and no GET
        // and Event per namespace) to find them.
        let scope = self.scope();
        for &kind in &self.kinds {
            let of = self.caches.of(kind);
            let scan = conflicts::at_start(
                &self.client,
                of,
                &self.caches.namespaces,
                &scope,
                self.writer.adoption_allowed(),
                &self.metrics,
            );
            let Some(found) = beating(&self.health, stop, scan).await else {
                return false;
            };
            conflicts::report_at_start(
                &found,
                &self.writer.conflicts,
                of,
                &self.writer.events,
                &self.metrics,
                self.remote.as_ref().map(|(c, _)| c.as_str()),
            )
            .await;
        }
        true
    }

    /// A batch to act on: planned and written while this cluster is served;
    /// otherwise only the copy names sources ask for are kept track of, so a
    /// source deleted before this instance leads is collected on the
    /// propagation path, not in the stray lane.
    async fn take(&self, batch: &Batch, gate: &mut Admission<'_>) {
        if self.serving() {
            self.flush(&batch.keys, batch.since, gate).await;
        } else {
            for &kind in &self.kinds {
                self.caches
                    .of(kind)
                    .sources
                    .read(|sources| self.writer.record_asked(kind, sources));
            }
        }
    }

    /// Beside the loop: re-list from the API server, and say how it went.
    fn spawn_resync(&self, done: mpsc::UnboundedSender<Finished>, stop: CancellationToken) {
        let (client, caches, metrics) = (
            self.client.clone(),
            self.caches.clone(),
            self.metrics.clone(),
        );
        let (kinds, source_kinds) = (self.kinds.clone(), self.source_kinds.clone());
        let (ns, stamp) = (
            self.cfg.namespace.clone(),
            self.remote.as_ref().map(|(_, s)| s.clone()),
        );
        tokio::spawn(async move {
            // Reports a failure if the task ends any other way (a panic).
            let mut guard = Reply::new(done, Finished::Resync(Err("resync task failed".into())));
            let relisted = resync::once(
                &client,
                (&ns, stamp.as_deref()),
                &kinds,
                &source_kinds,
                &caches,
                &metrics,
            );
            tokio::select! {
                _ = stop.cancelled() => guard.cancel(),
                r = relisted => guard.send(Finished::Resync(r)),
            }
        });
    }

    /// Beside the loop: look at the known conflicts again, and say which are gone.
    fn spawn_recheck(
        &self,
        known: Vec<ObjectKey>,
        done: mpsc::UnboundedSender<Finished>,
        stop: CancellationToken,
    ) {
        let (client, metrics) = (self.client.clone(), self.metrics.clone());
        let (ns, stamp) = (
            self.cfg.namespace.clone(),
            self.remote.as_ref().map(|(_, s)| s.clone()),
        );
        tokio::spawn(async move {
            let mut guard = Reply::new(done, Finished::Recheck(Vec::new()));
            let gone = conflicts::recheck(&client, (&ns, stamp.as_deref()), known, &metrics);
            tokio::select! {
                _ = stop.cancelled() => guard.cancel(),
                gone = gone => guard.send(Finished::Recheck(gone)),
            }
        });
    }

    /// Plan `keys` against this cluster's caches and write what is needed;
    /// `since`: when the batch's first change was seen.
    pub async fn flush(&self, keys: &[DirtyKey], since: Instant, gate: &mut Admission<'_>) {
        let (caches, writer, metrics) = (&*self.caches, &self.writer, &*self.metrics);
        let scope = self.scope();
        // A source that asks for adoption (and may) tries again what was in its way.
        for &kind in &self.kinds {
            let allowed = writer.adoption_allowed();
            conflicts::release_for_adoption(&writer.conflicts, caches.of(kind), keys, allowed);
        }
        let conflicts = writer.conflicts.lock().expect("lock").clone();
        let accepted = writer.accepted.lock().expect("lock").clone();
        let mut planned = Vec::new();
        for &kind in &self.kinds {
            let of = caches.of(kind);
            of.sources
                .read(|sources| writer.record_asked(kind, sources));
            let plan = World::of(caches, kind, &conflicts, &accepted, |world| {
                plan::plan(world, &scope, keys)
            });
            {
                let mut conflicts = writer.conflicts.lock().expect("lock");
                for k in &plan.resolved_conflicts {
                    conflicts.remove(k);
                }
            }
            if self.holds_sources() {
                self.report_refusals(kind, &plan.refused).await;
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
            let outcomes = writer.execute(actions, since, &self.health).await;
            gate.record(outcomes);
        }
        if !writer.sweeps_apart()
            && caches
                .source_namespace_lost(scope.source_namespace)
                .is_none()
        {
            writer
                .sweep(crate::targets::cluster::writer::SWEEP_INLINE)
                .await;
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
    async fn report_refusals(&self, kind: Kind, refused: &[(String, Refusal)]) {
        let (caches, metrics) = (&self.caches, &self.metrics);
        let events = &self.writer.events;
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
}

/// A timer that first fires one `period` from now, then every `period`; a
/// late tick delays the next rather than bunching them.
pub fn every(period: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

/// Await `work` before the loop starts while keeping the heartbeat:
/// `None` if `stop` fires first.
pub async fn beating<T>(
    health: &Health,
    stop: &CancellationToken,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let mut work = std::pin::pin!(work);
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            out = &mut work => return Some(out),
            _ = beat.tick() => health.beat(),
        }
    }
}
