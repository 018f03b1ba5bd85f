//! Wiring only: preflight, the HTTP endpoints, this cluster's watches, the
//! lease and the write gate, Events, the targets (this cluster's lane,
//! registered clusters, Vault) behind one fan-out fed by the source batch,
//! and a clean shutdown. The loop that serves a cluster is
//! [`crate::targets::cluster::lane`], one for every cluster.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use kube::runtime::events::{EventType, Reporter};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::observe::batch::{Batcher, DirtyKey};
use crate::observe::cache::Caches;
use crate::observe::watch;
use crate::operate::config::Config;
use crate::operate::http::{self, Health};
use crate::operate::lease;
use crate::operate::metrics::Metrics;
use crate::targets::FanOut;
use crate::targets::cluster::lane::{Inbox, Inputs, Lane, Told};
use crate::targets::cluster::writer::Writer;
use crate::write::events::Events;
use crate::write::gate::WriteGate;
use crate::write::pace::Pacer;

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

/// Watchers, targets and the fan-out, until `shutdown` fires.
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
    // This cluster's dirty keys, its lane's own among them: one source batch.
    let (dirty_tx, dirty_rx) = mpsc::unbounded_channel::<DirtyKey>();
    let watched = watch::Watched {
        source_namespace: &cfg.namespace,
        stamp: None,
        kinds: &kinds,
        // Without the source watch, the sources come from the list at start
        // and each resync.
        sources: if cfg.enable_secret_watcher {
            &source_kinds
        } else {
            &[]
        },
    };
    let watchers = watch::spawn_all(
        client.clone(),
        &watched,
        caches.clone(),
        &watch::Context {
            dirty: dirty_tx.clone(),
            metrics: metrics.clone(),
            health: health.clone(),
            shutdown: shutdown.clone(),
        },
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
        reporter.clone(),
        cfg.namespace.clone(),
        gate.clone(),
    ));

    // The targets, each told every batch: this cluster's lane, ...
    let told = Arc::new(Told::default());
    let mut fan_out = FanOut::default().with(Inbox(told.clone()));
    // ... Vault (before anything is written: the caches have not synced yet), ...
    let ctx = crate::write::Context {
        caches: caches.clone(),
        gate: gate.clone(),
        events: events.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
    };
    let mut grants = None;
    let mut rules_vault = None;
    if let Some(vault_cfg) = &cfg.vault {
        let vault = crate::targets::vault::spawn(
            vault_cfg,
            cfg,
            &stamp,
            &ctx,
            leading_rx.clone(),
            shutdown.clone(),
        )
        .map_err(|e| Error::Vault(e.to_string()))?;
        // ... with the Deployments PushRules let push to it (one Vault
        // limiter for both workers).
        if cfg.enable_push_rules {
            let (tx, rx) = tokio::sync::watch::channel(Vec::new());
            grants = Some(tx);
            crate::targets::vault::workloads::spawn(crate::targets::vault::workloads::Parts {
                client: client.clone(),
                store: crate::targets::vault::client_for(vault_cfg)
                    .map_err(|e| Error::Vault(e.to_string()))?,
                settings: crate::targets::vault::settings(vault_cfg, cfg, &stamp),
                ctx: ctx.clone(),
                pacer: vault.pacer.clone(),
                namespaces: caches.namespaces.clone(),
                own_namespace: cfg.namespace.clone(),
                grants: rx,
                leading: leading_rx.clone(),
                shutdown: shutdown.clone(),
            });
        }
        // ... and the rules' sources (each rule namespace's own worker).
        rules_vault = Some(crate::targets::rules::domain::DomainVault {
            stamp: stamp.clone(),
            pacer: vault.pacer.clone(),
            health: health.clone(),
        });
        fan_out = fan_out.with(vault);
    }
    // ... and the registered clusters, each served by its own lane.
    fan_out = fan_out.with(crate::targets::remote::spawn(
        crate::targets::remote::Shared {
            cfg: cfg.clone(),
            ctx,
            leading: leading_rx.clone(),
            stamp: stamp.clone(),
            registrations: cfg.namespace.clone(),
            sites: Default::default(),
        },
        client.clone(),
        shutdown.clone(),
    ));
    let batching = tokio::spawn(crate::targets::batches(
        dirty_rx,
        Batcher::new(cfg.debounce, cfg.max_wait),
        fan_out,
        gate.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    // This cluster's one write limiter: the labelled sources' lane and the
    // rules' (their copies, finalizers and statuses) share it.
    let pacer = Arc::new(Pacer::new(cfg.rate_limit, cfg.rate_burst));
    let rules = cfg.enable_push_rules.then(|| {
        crate::targets::rules::spawn(
            crate::targets::rules::domain::Parts {
                cfg: cfg.clone(),
                vault: rules_vault,
                stamp: stamp.clone(),
                client: client.clone(),
                metrics: metrics.clone(),
                gate: gate.clone(),
                leading: leading_rx.clone(),
                pacer: pacer.clone(),
                reporter: reporter.clone(),
                shutdown: shutdown.clone(),
            },
            events.clone(),
            health.clone(),
            grants,
        )
    });
    let writer = Writer::new(
        client.clone(),
        cfg.namespace.clone(),
        pacer,
        events.clone(),
        metrics.clone(),
        caches.clone(),
        gate.clone(),
    )
    .allowing_adoption(cfg.allow_adoption)
    .sweeping_apart();
    let lane = Lane {
        cfg: cfg.clone(),
        kinds,
        source_kinds,
        remote: None,
        client: client.clone(),
        caches,
        writer: Arc::new(writer),
        metrics: metrics.clone(),
        health: health.clone(),
        gate,
        pass: None,
        // Its own keys join the source batch, which it is told.
        upstream: Some(dirty_tx),
    };
    let (_, no_keys) = mpsc::unbounded_channel();
    let lane = lane.run(Inputs {
        dirty: no_keys,
        told,
        leading: leading_rx.clone(),
        back: None,
        stop: shutdown.clone(),
    });
    let mut lane = std::pin::pin!(lane);

    // Until the lane ends (shutdown): say who leads, and stop if the
    // election ends while running.
    loop {
        tokio::select! {
            () = &mut lane => break,
            Ok(()) = leading_rx.changed(), if lease_task.is_some() => {
                let leading = *leading_rx.borrow_and_update();
                metrics.leader.set(i64::from(leading));
                health.set_role(if leading { "leader" } else { "standby" });
                if leading && let Some(le) = &cfg.leader_election {
                    announce_leader(&events, le).await;
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
        }
    }

    health.set_synced(false);
    let _ = batching.await;
    if let Some(rules) = rules {
        let _ = rules.await;
    }
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
async fn announce_leader(events: &Events, le: &crate::operate::config::LeaderElection) {
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("coordination.k8s.io/v1".into()),
        kind: Some("Lease".into()),
        namespace: Some(le.lease_namespace.clone()),
        name: Some(le.lease_name.clone()),
        ..Default::default()
    };
    events
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, ApiServer, Reply};
    use crate::targets::cluster::lane::RESYNC_RETRY;
    use ::http::{Method, StatusCode};
    use tokio::time::Instant;

    /// What a LIST finds: nothing, but the source namespace `src` in a
    /// LIST of namespaces (without it nothing may be deleted, and /readyz
    /// says so).
    fn listing(uri: &str) -> serde_json::Value {
        fixtures::only_namespaces(uri, &[("src", "src-uid")])
    }

    /// The next LIST request and its URI (watches are parked in `watches`).
    async fn next_list(server: &mut ApiServer, watches: &mut Vec<Reply>) -> (String, Reply) {
        loop {
            let (method, uri, send) = fixtures::next_besides_watches(server, watches).await;
            assert_eq!(method, Method::GET, "no write expected: {uri}");
            // The rules' task looks for the PushRule CRD: not installed here.
            if uri.contains("customresourcedefinitions") {
                fixtures::reply(
                    send,
                    StatusCode::NOT_FOUND,
                    fixtures::failure(404, "NotFound"),
                );
                continue;
            }
            return (uri, send);
        }
    }

    // Issue 7, defect 5: the periodic resync ran on the control loop, so a
    // slow one stopped propagation and the heartbeat. Now it is a spawned
    // task: the loop beats through it, and its result reaches /readyz.
    #[tokio::test(start_paused = true)]
    async fn defect5_a_long_resync_neither_blocks_the_loop_nor_trips_healthz() {
        let (client, mut handle) = fixtures::client();
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
            fixtures::reply(send, StatusCode::OK, listing(&uri));
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
        fixtures::reply(
            hanging,
            StatusCode::FORBIDDEN,
            fixtures::failure(403, "Forbidden"),
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
        fixtures::reply(retry, StatusCode::OK, listing(&uri));
        for _ in 0..2 * cfg.kinds().len() {
            let (uri, send) = next_list(&mut handle, &mut watches).await;
            fixtures::reply(send, StatusCode::OK, listing(&uri));
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
