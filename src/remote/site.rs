//! One registered remote cluster, served beside the control loop.
//!
//! The same pieces as at home, on the remote cluster's API server: a watch of
//! its namespaces and a metadata-only watch of our copies there
//! ([`crate::watch::spawn_all`] without sources), caches whose *sources* are
//! this cluster's (shared, never copied), the same planner ([`flush`]), a
//! writer with its own limiter (`SECRET_SYNC_RATE_LIMIT` per API server),
//! its own retry queue, fights and conflicts, and its own resync. The control
//! loop tells it each flushed batch's sources, which it plans at once (they
//! waited out the quiet window there); its own watches tell it about its
//! namespaces and copies, which it batches itself. Every write asks the one
//! write gate.
//!
//! A cluster that cannot be reached or refuses us holds up nothing else: the
//! control loop only sends on a channel, and this task's watches and writes
//! fail, back off and retry on their own. Its state is reported in
//! `/readyz` (a note; it never makes the controller unready),
//! `push_to_k8s_cluster_up{cluster}` and an Event on the registration.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::EventType;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::batch::{Batcher, DirtyKey};
use crate::cache::Caches;
use crate::config::Config;
use crate::conflicts;
use crate::controller::{every, flush};
use crate::events::Events;
use crate::fights::Fights;
use crate::gate::{Gate, WriteGate};
use crate::http::Health;
use crate::metrics::{ClusterLabels, Metrics};
use crate::pace::Pacer;
use crate::push::{Remote, Writer};
use crate::records::ObjectKey;
use crate::resync;
use crate::retry::RetryQueue;
use crate::targets::Scope;
use crate::watch;

/// How often the cluster's state is looked at and reported.
const REPORT_EVERY: Duration = Duration::from_secs(2);
const CONFLICT_RECHECK: Duration = Duration::from_secs(60);
const RESYNC_RETRY: Duration = Duration::from_secs(30);

/// What every remote cluster shares with the control loop.
pub struct Shared {
    pub cfg: Config,
    /// This cluster's caches: the sources come from here.
    pub caches: Arc<Caches>,
    pub gate: Arc<WriteGate>,
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub leading: tokio::sync::watch::Receiver<bool>,
    /// The source-cluster stamp our copies carry there (`CLUSTER_NAME`).
    pub stamp: String,
}

/// One remote cluster to serve.
pub struct Site {
    pub cluster: String,
    pub client: kube::Client,
    /// The registration Secret (for Events).
    pub registration: ObjectReference,
}

/// Serve `site` until `stop` fires; `told` carries each flushed batch's keys.
pub async fn run(
    shared: Arc<Shared>,
    site: Site,
    mut told: mpsc::UnboundedReceiver<Vec<DirtyKey>>,
    stop: CancellationToken,
) {
    let cfg = &shared.cfg;
    let cluster = site.cluster.as_str();
    let stamp = shared.stamp.as_str();
    let kinds = cfg.kinds();
    let own_health = Arc::new(Health::new(cfg.ready_watch_failure));
    own_health.beat();
    let metrics = Arc::new(Metrics::for_cluster(cluster, &shared.metrics));
    let caches = Arc::new(shared.caches.sharing_sources(&kinds));
    let (dirty_tx, mut dirty_rx) = mpsc::unbounded_channel::<DirtyKey>();
    let watchers = watch::spawn_all(
        site.client.clone(),
        (&cfg.namespace, Some(stamp)),
        &kinds,
        &[],
        false,
        caches.clone(),
        dirty_tx,
        metrics.clone(),
        own_health.clone(),
        stop.clone(),
    );
    let writer = Writer::new(
        site.client.clone(),
        cfg.namespace.clone(),
        Pacer::new(cfg.rate_limit, cfg.rate_burst),
        shared.events.clone(),
        metrics.clone(),
        caches.clone(),
        shared.gate.clone(),
    )
    .into_remote(Remote {
        cluster: cluster.to_string(),
        stamp: stamp.to_string(),
    });
    let scope = Scope {
        source_namespace: &cfg.namespace,
        exclude_label: cfg.exclude_namespace_label.as_deref(),
        protected: &cfg.protected_namespaces,
        require_consent: cfg.require_namespace_consent,
        cluster: Some(cluster),
        stamp: Some(stamp),
    };
    let mut report = Report::new(
        &shared,
        &site,
        own_health.clone(),
        caches.clone(),
        stop.clone(),
    );
    tracing::info!("remote cluster registered; listing its namespaces and our copies");

    // Plan nothing before both lists are in (a half-filled cache would
    // create what exists); the batches told meanwhile are covered by "All".
    let mut tick = tokio::time::interval(REPORT_EVERY);
    while !caches.synced() {
        own_health.beat();
        tokio::select! {
            _ = stop.cancelled() => return finish(watchers),
            _ = tick.tick() => {
                report.update().await;
            }
            Some(_) = told.recv() => {}
        }
    }
    own_health.set_synced(true);
    report.update().await;
    tracing::info!(
        namespaces = caches.namespaces.len(),
        copies = caches.replica_count(),
        "remote cluster listed"
    );
    for &kind in &kinds {
        let of = caches.of(kind);
        let scan = conflicts::at_start(
            &site.client,
            of,
            &caches.namespaces,
            &scope,
            false,
            &metrics,
        );
        let found = tokio::select! {
            _ = stop.cancelled() => return finish(watchers),
            found = scan => found,
        };
        conflicts::report_at_start(
            &found,
            &writer.conflicts,
            of,
            &writer.events,
            &metrics,
            Some(cluster),
        )
        .await;
    }

    let mut leading = shared.leading.clone();
    let mut retry = RetryQueue::new();
    let mut fights = Fights::new();
    let mut batcher = Batcher::new(cfg.debounce, cfg.max_wait);
    let mut since = Instant::now();
    batcher.add(DirtyKey::All);
    let mut resync_timer = every(cfg.sync_interval);
    let mut conflict_timer = every(CONFLICT_RECHECK);
    loop {
        own_health.beat();
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            keys = batcher.ready() => {
                if shared.gate.leading() {
                    let mut gate = Gate { retry: &mut retry, fights: &mut fights };
                    flush(&kinds, &caches, &scope, &writer, &metrics, &keys, since, &own_health, &mut gate, false).await;
                }
            }
            Ok(()) = leading.changed() => {
                if *leading.borrow_and_update() {
                    add(&mut batcher, &mut since, DirtyKey::All);
                }
            }
            key = retry.next() => {
                let key = match caches.of(key.kind).source_of(&key) {
                    Some(source) => DirtyKey::Copy(ObjectKey::new(key.kind, &key.namespace, &source)),
                    None => DirtyKey::Namespace(key.namespace),
                };
                add(&mut batcher, &mut since, key);
            }
            Some(key) = dirty_rx.recv() => add(&mut batcher, &mut since, key),
            // Already batched by the control loop (its quiet window is
            // over): planned at once, not after a second window.
            Some(keys) = told.recv() => {
                if shared.gate.leading() {
                    let mut gate = Gate { retry: &mut retry, fights: &mut fights };
                    flush(&kinds, &caches, &scope, &writer, &metrics, &keys, Instant::now(), &own_health, &mut gate, false).await;
                }
            }
            _ = resync_timer.tick() => {
                // On this task: a slow remote list holds up only this cluster.
                let relisted = resync::once(&site.client, (&cfg.namespace, Some(stamp)), &kinds, &[], &caches, &metrics);
                let result = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = relisted => r,
                };
                if result.is_err() {
                    resync_timer.reset_after(RESYNC_RETRY.min(cfg.sync_interval));
                }
                own_health.resync_result(result);
                add(&mut batcher, &mut since, DirtyKey::All);
            }
            _ = conflict_timer.tick() => {
                let known: Vec<ObjectKey> =
                    writer.conflicts.lock().expect("lock").iter().cloned().collect();
                if !known.is_empty() {
                    let gone = conflicts::recheck(&site.client, (&cfg.namespace, Some(stamp)), known, &metrics);
                    let gone = tokio::select! {
                        _ = stop.cancelled() => break,
                        gone = gone => gone,
                    };
                    for key in gone {
                        writer.conflicts.lock().expect("lock").remove(&key);
                        add(&mut batcher, &mut since, DirtyKey::Source(key.kind, key.name));
                    }
                }
            }
            _ = tick.tick() => {
                // Back after an outage: what failed meanwhile waits out no
                // backoff; everything is planned again now.
                if report.update().await {
                    retry = RetryQueue::new();
                    add(&mut batcher, &mut since, DirtyKey::All);
                }
            }
        }
    }
    finish(watchers);
}

/// Add `key`, starting the batch's clock if it is the first.
fn add(batcher: &mut Batcher, since: &mut Instant, key: DirtyKey) {
    if batcher.pending() == 0 {
        *since = Instant::now();
    }
    batcher.add(key);
}

fn finish(watchers: Vec<tokio::task::JoinHandle<()>>) {
    for w in watchers {
        w.abort();
    }
}

/// The cluster's state as the rest of the controller shows it: `/readyz`
/// notes, `push_to_k8s_cluster_up` and `_replicas`, an Event on the
/// registration when it goes down or comes back.
struct Report {
    cluster: String,
    labels: ClusterLabels,
    shared: Arc<Shared>,
    registration: ObjectReference,
    own: Arc<Health>,
    caches: Arc<Caches>,
    /// What was last said: `None` up, `Some(why)` down.
    said: Option<Option<String>>,
    /// Stopped: the registration is gone and its series with it.
    stop: CancellationToken,
}

impl Report {
    fn new(
        shared: &Arc<Shared>,
        site: &Site,
        own: Arc<Health>,
        caches: Arc<Caches>,
        stop: CancellationToken,
    ) -> Report {
        Report {
            cluster: site.cluster.clone(),
            labels: ClusterLabels {
                cluster: site.cluster.clone(),
            },
            shared: shared.clone(),
            registration: site.registration.clone(),
            own,
            caches,
            said: None,
            stop,
        }
    }

    /// Look and report; `true` when the cluster just came back after it
    /// was reported unreachable.
    async fn update(&mut self) -> bool {
        if self.stop.is_cancelled() {
            return false;
        }
        let down = match self.own.readiness() {
            Ok(()) => None,
            Err(why) => Some(why.trim_start_matches("not ready: ").to_string()),
        };
        let (metrics, health) = (&self.shared.metrics, &self.shared.health);
        metrics
            .cluster_up
            .get_or_create(&self.labels)
            .set(i64::from(down.is_none()));
        metrics
            .cluster_replicas
            .get_or_create(&self.labels)
            .set(self.caches.replica_count() as i64);
        health.set_cluster_degraded(&self.cluster, down.clone());
        // Say it once per change, and "listing" only once it is really late.
        let first_listing = self.said.is_none() && down.as_deref() == Some("caches not synced yet");
        if self.said.as_ref() == Some(&down) || first_listing {
            return false;
        }
        let previous = self.said.replace(down.clone());
        let back = down.is_none() && matches!(previous, Some(Some(_)));
        let (kind, reason, note) = match &down {
            Some(why) => {
                tracing::warn!(why = %why, "remote cluster cannot be served; retrying");
                (
                    EventType::Warning,
                    "ClusterUnreachable",
                    format!(
                        "cluster {} cannot be served: {why}; its copies are retried with backoff, other clusters go on",
                        self.cluster
                    ),
                )
            }
            None if matches!(previous, Some(Some(_))) => {
                tracing::info!("remote cluster reachable again; converging");
                (
                    EventType::Normal,
                    "ClusterReachable",
                    format!(
                        "cluster {} is reachable again; its copies converge",
                        self.cluster
                    ),
                )
            }
            None => (
                EventType::Normal,
                "ClusterRegistered",
                format!(
                    "cluster {} is served: {} namespaces, {} copies of ours there",
                    self.cluster,
                    self.caches.namespaces.len(),
                    self.caches.replica_count()
                ),
            ),
        };
        let events = &self.shared.events;
        events
            .publish(&self.registration, kind, reason, "Register", note)
            .await;
        back
    }
}
