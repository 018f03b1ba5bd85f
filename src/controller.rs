//! Wiring: watchers → dirty keys → batcher → planner → writer, plus the
//! periodic resync, the HTTP endpoints and a clean shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::Api;
use kube::runtime::events::{EventType, Reporter};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batcher, DirtyKey};
use crate::config::Config;
use crate::http::{self, Health};
use crate::metrics::{AnnotationLabels, Metrics};
use crate::pace::Pacer;
use crate::plan::{self, World};
use crate::push::Writer;
use crate::resync;
use crate::targets::Scope;
use crate::watch::{self, Caches, owned_source};

const CONFLICT_RECHECK: Duration = Duration::from_secs(60);

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
            Error::MissingNamespace(_) => 2,
            _ => 1,
        }
    }
}

/// Check what must hold before anything is written.
pub async fn preflight(client: &kube::Client, cfg: &Config) -> Result<(), Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get_metadata_opt(&cfg.namespace).await {
        Ok(Some(_)) => Ok(()),
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
    preflight(&client, &cfg).await?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
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

    let caches = Arc::new(Caches::new());
    let (dirty_tx, mut dirty_rx) = mpsc::unbounded_channel::<DirtyKey>();
    let watchers = watch::spawn_all(
        client.clone(),
        &cfg.namespace,
        cfg.enable_secret_watcher,
        caches.clone(),
        dirty_tx.clone(),
        metrics.clone(),
        shutdown.clone(),
    );

    let reporter = Reporter {
        controller: "push-to-k8s".into(),
        instance: std::env::var("POD_NAME").ok(),
    };
    let writer = Writer::new(
        client.clone(),
        cfg.namespace.clone(),
        Pacer::new(cfg.rate_limit, cfg.rate_burst),
        reporter,
        metrics.clone(),
        caches.clone(),
        dirty_tx.clone(),
        shutdown.clone(),
    );

    // Without a source watch, the sources come from the list at start and each resync.
    if !cfg.enable_secret_watcher {
        while !resync::once(&client, &cfg.namespace, &caches, &metrics).await {
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
    health.set_ready(true);
    tracing::info!(
        namespace = %cfg.namespace,
        sources = caches.sources.len(),
        namespaces = caches.namespaces.len(),
        replicas = caches.replicas.len(),
        "caches synced; ready"
    );

    let protected = cfg.protected_namespaces.clone();
    let scope = Scope {
        source_namespace: &cfg.namespace,
        exclude_label: cfg.exclude_namespace_label.as_deref(),
        protected: &protected,
    };
    let mut batcher = Batcher::new(cfg.debounce, cfg.max_wait);
    let mut since = Instant::now();
    // The first plan covers everything, which also collects copies orphaned
    // while we were down (only those naming our source namespace).
    batcher.add(DirtyKey::All);
    let mut resync_timer =
        tokio::time::interval_at(Instant::now() + cfg.sync_interval, cfg.sync_interval);
    resync_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    // Unmanaged objects that block a copy are invisible to our label-selected
    // watch; look at them again (a metadata GET each) once a minute.
    let mut conflict_timer =
        tokio::time::interval_at(Instant::now() + CONFLICT_RECHECK, CONFLICT_RECHECK);
    conflict_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);

    loop {
        health.beat();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // A due batch goes before new keys, so a flood of events cannot
            // push a batch past its maximum wait.
            keys = batcher.ready() => {
                metrics.queue_depth.set(0);
                metrics.batch_size.observe(keys.len() as f64);
                flush(&caches, &scope, &writer, &metrics, &keys, since, &health).await;
            }
            Some(key) = dirty_rx.recv() => {
                if batcher.pending() == 0 {
                    since = Instant::now();
                }
                batcher.add(key);
                metrics.queue_depth.set(batcher.pending() as i64);
            }
            _ = resync_timer.tick() => {
                tracing::info!("periodic resync: re-listing from the API server");
                if resync::once(&client, &cfg.namespace, &caches, &metrics).await {
                    recheck_conflicts(&client, &cfg.namespace, &writer).await;
                }
                if batcher.pending() == 0 {
                    since = Instant::now();
                }
                batcher.add(DirtyKey::All);
            }
            _ = conflict_timer.tick() => {
                for source in recheck_conflicts(&client, &cfg.namespace, &writer).await {
                    if batcher.pending() == 0 {
                        since = Instant::now();
                    }
                    batcher.add(DirtyKey::Source(source));
                }
            }
            _ = heartbeat.tick() => {}
        }
    }

    tracing::info!(
        pending = batcher.pending(),
        "shutting down; pending keys are re-planned at the next start"
    );
    health.set_ready(false);
    for w in watchers {
        w.abort();
    }
    let _ = http_task.await;
    Ok(())
}

async fn flush(
    caches: &Caches,
    scope: &Scope<'_>,
    writer: &Writer,
    metrics: &Metrics,
    keys: &[DirtyKey],
    since: Instant,
    health: &Health,
) {
    let plan = {
        let conflicts = writer.conflicts.lock().expect("lock").clone();
        caches.sources.read(|sources| {
            caches.namespaces.read(|namespaces| {
                caches.replicas.read(|replicas| {
                    plan::plan(
                        &World {
                            sources,
                            namespaces,
                            replicas,
                            conflicts: &conflicts,
                        },
                        scope,
                        keys,
                    )
                })
            })
        })
    };
    {
        let mut conflicts = writer.conflicts.lock().expect("lock");
        for k in &plan.resolved_conflicts {
            conflicts.remove(k);
        }
    }
    tracing::debug!(keys = keys.len(), actions = plan.actions.len(), "flush");
    for (source, error) in &plan.invalid {
        metrics
            .invalid_annotations
            .get_or_create(&AnnotationLabels {
                annotation: error.metric_label(),
            })
            .inc();
        tracing::warn!(source = %source, error = %error, "source skipped: invalid annotation; its copies are left as they are");
        if let Some(rec) = caches.sources.get(source) {
            writer
                .publish(
                    &writer.source_ref(source, &rec.uid),
                    EventType::Warning,
                    "InvalidAnnotation",
                    "Plan",
                    format!("{error}; existing copies are left unchanged until it is fixed"),
                )
                .await;
        }
    }
    if !plan.actions.is_empty() {
        writer.execute(plan.actions, since, health).await;
    }
}

/// At a resync, look again at the unmanaged objects that blocked a copy
/// (metadata GETs, no writes): the ones that are gone, or became ours, are
/// forgotten so the next plan creates or adopts them.
/// Returns the sources whose blocked copies may now be written.
async fn recheck_conflicts(
    client: &kube::Client,
    source_namespace: &str,
    writer: &Writer,
) -> Vec<String> {
    let known: Vec<_> = writer
        .conflicts
        .lock()
        .expect("lock")
        .iter()
        .cloned()
        .collect();
    let mut gone = HashMap::new();
    for key in known {
        let api: Api<Secret> = Api::namespaced(client.clone(), &key.namespace);
        let still_blocked = match api.get_metadata_opt(&key.name).await {
            Ok(Some(m)) => {
                owned_source(&m.metadata, source_namespace).as_deref() != Some(key.name.as_str())
            }
            Ok(None) => false,
            Err(_) => true,
        };
        if !still_blocked {
            gone.insert(key, ());
        }
    }
    let mut conflicts = writer.conflicts.lock().expect("lock");
    conflicts.retain(|k| !gone.contains_key(k));
    gone.into_keys().map(|k| k.name).collect()
}
