//! One registered remote cluster, served beside this cluster's lane: a thin
//! constructor. [`run`] builds the cluster's watches (its namespaces and a
//! metadata-only watch of our copies there: [`crate::observe::watch::spawn_all`]
//! without sources), caches whose *sources* are this cluster's (shared,
//! never copied), a writer with its own limiter (`SECRET_SYNC_RATE_LIMIT`
//! per API server) and the cluster's [`Pass`], starts the [`probe`] beside
//! it, and runs the one [`Lane`] every cluster runs with them (retries,
//! fights, conflicts, resync beside the loop). The fan-out tells it each
//! batch's sources (already through the quiet window at home, planned at
//! once, timed from their first event); its own watches' keys it batches
//! itself. Every write asks the one write gate and the cluster's [`Pass`].
//!
//! A cluster that cannot be reached, hangs or refuses us holds up nothing
//! else: the fan-out only adds keys to a set ([`Told`]: told batches
//! coalesce, bounded by the sources), every request has a timeout
//! ([`super::kubeconfig::REQUEST_TIMEOUT`]), and this task's watches and
//! writes fail, back off and retry on their own. The probe
//! ([`super::probe`]) asks the API server for its identity every few
//! seconds ([`Owners`]: one API server, one owner) and reports the
//! cluster's state (`/readyz` note, `push_to_k8s_cluster_up{cluster}`, an
//! Event on the registration); the [`Pass`] is closed while the server
//! does not answer, while another registration owns it, and from the moment
//! the registration is removed (the task is aborted then as well).

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::owners::{Owners, Pass};
use super::probe::{Report, probe};
use crate::observe::batch::DirtyKey;
use crate::observe::cache::Caches;
use crate::observe::watch;
use crate::operate::config::Config;
use crate::operate::http::Health;
use crate::operate::metrics::Metrics;
use crate::targets::cluster::lane::{Inputs, Lane, Told};
use crate::targets::cluster::writer::{Remote, Writer};
use crate::write::Context;
use crate::write::pace::Pacer;

/// What every remote cluster shares with the control loop.
pub struct Shared {
    pub cfg: Config,
    /// This cluster's caches (the sources come from here), the write gate,
    /// Events, the process's metrics and health.
    pub ctx: Context,
    pub leading: tokio::sync::watch::Receiver<bool>,
    /// The source-cluster stamp our copies carry there (`CLUSTER_NAME`).
    pub stamp: String,
    /// Where the registrations are read: the controller's own namespace,
    /// also for a PushRule namespace's pipeline (whose sources are in
    /// `cfg.namespace`): a tenant never registers a cluster.
    pub registrations: String,
    /// Each cluster's caches while it is served, by cluster name: what a
    /// rule's finalizer counts its copies in.
    pub sites: Sites,
}

/// Each served cluster's caches, by cluster name.
pub type Sites = Arc<std::sync::Mutex<std::collections::BTreeMap<String, Arc<Caches>>>>;

/// One remote cluster to serve.
pub struct Site {
    pub cluster: String,
    /// Requests (everything but watches), each with a timeout.
    pub client: kube::Client,
    /// Watches (they wait on the server by design).
    pub watch_client: kube::Client,
    /// The registration Secret (for Events).
    pub registration: ObjectReference,
    /// The registration's age (creation, then Secret name): of two
    /// registrations of one API server starting together, the older owns it.
    pub rank: (i64, String),
}

/// Ends what belongs to one cluster's task however it ends (returned,
/// or aborted when its registration goes): the probe, the watches, its
/// claim on the API server.
struct Guard {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    owners: Arc<Owners>,
    cluster: String,
    sites: Sites,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.owners.release(&self.cluster);
        self.sites.lock().expect("lock").remove(&self.cluster);
    }
}

/// Serve `site` until `stop` fires: a lane with another client ([`Lane`]),
/// beside a probe of its API server; `told` holds the batches the fan-out
/// told it (coalesced).
pub async fn run(
    shared: Arc<Shared>,
    owners: Arc<Owners>,
    site: Site,
    told: Arc<Told>,
    stop: CancellationToken,
) {
    let cfg = &shared.cfg;
    let cluster = site.cluster.as_str();
    let stamp = shared.stamp.as_str();
    let kinds = cfg.kinds();
    let own_health = Arc::new(Health::new(cfg.ready_watch_failure));
    own_health.beat();
    let metrics = Arc::new(Metrics::for_cluster(cluster, &shared.ctx.metrics));
    let caches = Arc::new(shared.ctx.caches.sharing_sources(&kinds));
    let (dirty_tx, dirty) = tokio::sync::mpsc::unbounded_channel::<DirtyKey>();
    let pass = Arc::new(Pass::new(cluster, owners.clone(), stop.clone()));
    let back = Arc::new(Notify::new());
    let mut guard = Guard {
        tasks: watch::spawn_all(
            site.watch_client.clone(),
            &watch::Watched {
                source_namespace: &cfg.namespace,
                stamp: Some(stamp),
                kinds: &kinds,
                sources: &[],
            },
            caches.clone(),
            &watch::Context {
                dirty: dirty_tx,
                metrics: metrics.clone(),
                health: own_health.clone(),
                shutdown: stop.clone(),
            },
        ),
        owners: owners.clone(),
        cluster: cluster.to_string(),
        sites: shared.sites.clone(),
    };
    shared
        .sites
        .lock()
        .expect("lock")
        .insert(cluster.to_string(), caches.clone());
    let report = Report::new(
        (cluster, &site.registration),
        (own_health.clone(), caches.clone()),
        (
            shared.ctx.metrics.clone(),
            shared.ctx.health.clone(),
            shared.ctx.events.clone(),
        ),
    );
    guard.tasks.push(tokio::spawn(probe(
        site.client.clone(),
        report,
        pass.clone(),
        site.rank.clone(),
        back.clone(),
        stop.clone(),
    )));
    let writer = Writer::new(
        site.client.clone(),
        cfg.namespace.clone(),
        Arc::new(Pacer::new(cfg.rate_limit, cfg.rate_burst)),
        shared.ctx.events.clone(),
        metrics.clone(),
        caches.clone(),
        shared.ctx.gate.clone(),
    )
    .into_remote(Remote {
        cluster: cluster.to_string(),
        stamp: stamp.to_string(),
        pass: pass.clone(),
    });
    tracing::info!("remote cluster registered; listing its namespaces and our copies");
    let lane = Lane {
        cfg: cfg.clone(),
        kinds,
        source_kinds: Vec::new(),
        remote: Some((cluster.to_string(), stamp.to_string())),
        client: site.client,
        caches,
        writer: Arc::new(writer),
        metrics,
        health: own_health,
        gate: shared.ctx.gate.clone(),
        // Not served now (down, or another registration owns the server):
        // nothing is planned; "back" plans everything.
        pass: Some(pass),
        upstream: None,
    };
    lane.run(Inputs {
        dirty,
        told,
        leading: shared.leading.clone(),
        back: Some(back),
        stop,
    })
    .await;
    drop(guard);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, ApiServer};
    use crate::observe::cache::Caches;
    use crate::write::events::Events;
    use crate::write::gate::WriteGate;
    use ::http::{Method, StatusCode};
    use k8s_openapi::api::core::v1::Secret;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    /// What a LIST finds in the remote cluster: the namespace `team-a`
    /// (and nothing else: no copies).
    fn listing(uri: &str) -> serde_json::Value {
        fixtures::only_namespaces(uri, &[("team-a", "a-uid")])
    }

    /// What the remote API server was asked, as the test sees it.
    enum Asked {
        /// A LIST after the first ones (the periodic resync's): left hanging.
        ResyncList,
        /// A write (method, URI).
        Write(Method, String),
    }

    /// Answer the remote API server's side: the first LISTs (the watches'),
    /// the probe, the watches (parked), Events; a later LIST (the resync)
    /// hangs; a write is created as asked.
    async fn serve(
        mut h: ApiServer,
        first_lists: usize,
        tx: tokio::sync::mpsc::UnboundedSender<Asked>,
    ) {
        let mut parked = Vec::new();
        let mut lists = 0;
        while let Some((req, send)) = h.next_request().await {
            let (method, uri) = (req.method().clone(), req.uri().to_string());
            if uri.contains("watch=true") {
                parked.push(send);
            } else if uri.starts_with("/api/v1/namespaces/kube-system") {
                fixtures::reply(
                    send,
                    StatusCode::OK,
                    serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": "kube-system", "uid": "remote-server"}}),
                );
            } else if uri.contains("/events") {
                fixtures::reply(send, StatusCode::CREATED, serde_json::json!({}));
            } else if method == Method::GET {
                lists += 1;
                if lists <= first_lists {
                    fixtures::reply(send, StatusCode::OK, listing(&uri));
                } else {
                    parked.push(send);
                    let _ = tx.send(Asked::ResyncList);
                }
            } else {
                let body = req.into_body().collect_bytes().await.unwrap();
                let mut obj: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                obj["metadata"]["uid"] = "copy-uid".into();
                obj["metadata"]["resourceVersion"] = "2".into();
                fixtures::reply(send, StatusCode::CREATED, obj);
                let _ = tx.send(Asked::Write(method, uri));
            }
        }
    }

    fn source(name: &str) -> Secret {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": "src", "uid": format!("{name}-uid"),
                         "resourceVersion": "1",
                         "labels": {"push-to-k8s": "source"},
                         "annotations": {"push-to-k8s.io/clusters": "*"}},
            "data": {"k": "dg=="}
        }))
        .unwrap()
    }

    // Issue 17, item 4: a remote cluster's periodic resync ran inline on
    // its loop, so a slow or hanging LIST there stopped that cluster's
    // propagation. Now it runs beside the loop as at home: a source told
    // while the resync hangs is written at once.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_remote_resync_does_not_hold_up_a_told_source() {
        let (client, handle) = fixtures::client();
        let cfg = Config::from_vars([
            ("NAMESPACE".to_string(), "src".to_string()),
            ("SYNC_INTERVAL".to_string(), "1".to_string()),
            ("CLUSTER_NAME".to_string(), "home".to_string()),
        ])
        .unwrap();
        let kinds = cfg.kinds();
        let (tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(serve(handle, 1 + kinds.len(), tx));
        let stop = CancellationToken::new();
        let home = Arc::new(Caches::for_kinds(&kinds, &cfg.source_kinds()));
        for kind in crate::model::kinds::Kind::ALL {
            home.of(kind).sources.replace(Default::default());
        }
        home.namespaces.replace(
            [(
                "src".to_string(),
                crate::model::records::namespace_info(&Default::default()),
            )]
            .into(),
        );
        let gate = Arc::new(WriteGate::single(stop.clone()));
        let (_leading_tx, leading) = tokio::sync::watch::channel(true);
        let reporter = kube::runtime::events::Reporter {
            controller: "push-to-k8s".into(),
            instance: None,
        };
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            ctx: Context {
                caches: home.clone(),
                gate: gate.clone(),
                events: Arc::new(Events::new(
                    client.clone(),
                    reporter,
                    "src".into(),
                    gate.clone(),
                )),
                metrics: Arc::new(Metrics::new()),
                health: Arc::new(Health::new(cfg.ready_watch_failure)),
            },
            leading,
            stamp: "home".into(),
            registrations: "src".into(),
            sites: Sites::default(),
        });
        let site = Site {
            cluster: "east".into(),
            client: client.clone(),
            watch_client: client,
            registration: ObjectReference::default(),
            rank: (1, "east".into()),
        };
        let told = Arc::new(Told::default());
        let task = tokio::spawn(run(
            shared,
            Arc::new(Owners::default()),
            site,
            told.clone(),
            stop.clone(),
        ));

        // A minute on, the resync's first LIST hangs.
        let hung = tokio::time::timeout(Duration::from_secs(120), async {
            match asked.recv().await.expect("serving") {
                Asked::ResyncList => {}
                Asked::Write(m, uri) => panic!("nothing to write yet: {m} {uri}"),
            }
        })
        .await;
        assert!(hung.is_ok(), "the resync listed");
        // Meanwhile a source appears at home, and the control loop tells it.
        let (name, record) =
            crate::model::records::SourceRecord::from_secret(&source("db"), "src").unwrap();
        home.of(crate::model::kinds::Kind::Secret)
            .sources
            .set(name.clone(), Some(record));
        told.add(&crate::targets::Batch {
            keys: vec![DirtyKey::Source(crate::model::kinds::Kind::Secret, name)],
            since: tokio::time::Instant::now(),
        });
        let written = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Asked::Write(m, uri) = asked.recv().await.expect("serving") {
                    return (m, uri);
                }
            }
        })
        .await;
        let (method, uri) = written.expect("the told source is written while the resync hangs");
        assert_eq!(method, Method::POST);
        assert!(
            uri.starts_with("/api/v1/namespaces/team-a/secrets"),
            "{uri}"
        );
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }

    // Issue 17, item 4: a batch told to a remote cluster was flushed with
    // the time it was taken, so its propagation latency left out the quiet
    // window (and any wait) at home. The lane flushes it with the batch's
    // start: latency counts from the source's event for every cluster.
    #[tokio::test(start_paused = true)]
    async fn a_told_batch_is_timed_from_its_first_event_in_a_remote_cluster() {
        let (client, handle) = fixtures::client();
        let cfg = Config::from_vars([
            ("NAMESPACE".to_string(), "src".to_string()),
            ("CLUSTER_NAME".to_string(), "home".to_string()),
        ])
        .unwrap();
        let kinds = cfg.kinds();
        let (tx, mut asked) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(serve(handle, usize::MAX, tx));
        let stop = CancellationToken::new();
        let home = Arc::new(Caches::for_kinds(&kinds, &cfg.source_kinds()));
        for kind in crate::model::kinds::Kind::ALL {
            home.of(kind).sources.replace(Default::default());
        }
        home.namespaces.replace(
            [(
                "src".to_string(),
                crate::model::records::namespace_info(&Default::default()),
            )]
            .into(),
        );
        // The remote cluster, listed: the namespace team-a, no copies.
        let caches = Arc::new(home.sharing_sources(&kinds));
        caches.namespaces.replace(
            [(
                "team-a".to_string(),
                crate::model::records::namespace_info(&Default::default()),
            )]
            .into(),
        );
        for &kind in &kinds {
            caches.of(kind).replicas.replace(Default::default());
        }
        let gate = Arc::new(WriteGate::single(stop.clone()));
        let reporter = kube::runtime::events::Reporter {
            controller: "push-to-k8s".into(),
            instance: None,
        };
        let events = Arc::new(Events::new(
            client.clone(),
            reporter,
            "src".into(),
            gate.clone(),
        ));
        let owners = Arc::new(Owners::default());
        let pass = Arc::new(Pass::new("east", owners.clone(), stop.clone()));
        owners
            .claim("remote-server", "east", &(1, "east".into()))
            .unwrap();
        *pass.identity.lock().unwrap() = Some("remote-server".into());
        pass.up.store(true, Ordering::SeqCst);
        let metrics = Arc::new(Metrics::new());
        let writer = Writer::new(
            client.clone(),
            "src".into(),
            Arc::new(Pacer::new(cfg.rate_limit, cfg.rate_burst)),
            events,
            metrics.clone(),
            caches.clone(),
            gate.clone(),
        )
        .into_remote(Remote {
            cluster: "east".into(),
            stamp: "home".into(),
            pass: pass.clone(),
        });
        let lane = Lane {
            cfg: cfg.clone(),
            kinds,
            source_kinds: Vec::new(),
            remote: Some(("east".into(), "home".into())),
            client,
            caches,
            writer: Arc::new(writer),
            metrics: metrics.clone(),
            health: Arc::new(Health::new(cfg.ready_watch_failure)),
            gate,
            pass: Some(pass),
            upstream: None,
        };
        let told = Arc::new(Told::default());
        let (_keys, dirty) = tokio::sync::mpsc::unbounded_channel();
        let (_leading_tx, leading) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(lane.run(Inputs {
            dirty,
            told: told.clone(),
            leading,
            back: None,
            stop: stop.clone(),
        }));
        // The lane's first plan (everything) finds nothing to write.
        tokio::time::sleep(Duration::from_secs(10)).await;
        // A source changed at home 7 s ago (its quiet window and more); the
        // batch is told now.
        let since = tokio::time::Instant::now();
        tokio::time::sleep(Duration::from_secs(7)).await;
        let (name, record) =
            crate::model::records::SourceRecord::from_secret(&source("db"), "src").unwrap();
        home.of(crate::model::kinds::Kind::Secret)
            .sources
            .set(name.clone(), Some(record));
        told.add(&crate::targets::Batch {
            keys: vec![DirtyKey::Source(crate::model::kinds::Kind::Secret, name)],
            since,
        });
        let written = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Asked::Write(m, uri) = asked.recv().await.expect("serving") {
                    return (m, uri);
                }
            }
        })
        .await
        .expect("the told source is written");
        assert_eq!(written.0, Method::POST, "{written:?}");
        // The write is counted once it has completed.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = metrics.encode();
        let sum: f64 = text
            .lines()
            .find(|l| l.starts_with("push_to_k8s_propagation_seconds_sum"))
            .and_then(|l| l.rsplit(' ').next())
            .expect("the latency histogram")
            .parse()
            .unwrap();
        assert!(sum >= 7.0, "latency counted from the event: {sum}s\n{text}");
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
}
