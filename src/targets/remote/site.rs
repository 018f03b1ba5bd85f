//! One registered remote cluster, served beside the control loop.
//!
//! The same pieces as at home, on the remote cluster's API server: a watch of
//! its namespaces and a metadata-only watch of our copies there
//! ([`crate::observe::watch::spawn_all`] without sources), caches whose *sources* are
//! this cluster's (shared, never copied), the same planner ([`flush`]), a
//! writer with its own limiter (`SECRET_SYNC_RATE_LIMIT` per API server),
//! its own retry queue, fights and conflicts, and its own resync. The control
//! loop tells it each flushed batch's sources, which it plans at once (they
//! waited out the quiet window there); its own watches tell it about its
//! namespaces and copies, which it batches itself. Every write asks the one
//! write gate.
//!
//! A cluster that cannot be reached, hangs or refuses us holds up nothing
//! else: the control loop only adds keys to a set ([`Told`]: told
//! batches coalesce, bounded by the sources), every request has a timeout
//! ([`super::kubeconfig::REQUEST_TIMEOUT`]), and this task's watches and
//! writes fail, back off and retry on their own. A probe beside the task
//! asks the API server for its `kube-system` namespace every
//! [`REPORT_EVERY`] (answer within [`PROBE_TIMEOUT`]): its uid is the
//! server's identity ([`Owners`]: one API server, one owner), and a server
//! that does not answer is reported down at once, whatever the task is
//! doing. The cluster's state is reported in `/readyz` (a note; it never
//! makes the controller unready), `push_to_k8s_cluster_up{cluster}` and an
//! Event on the registration. The cluster's own gate ([`Pass`]) is asked
//! before each write request: closed while the server does not answer,
//! while another registration owns it, and from the moment the
//! registration is removed (the task is aborted then as well).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::api::Api;
use kube::runtime::events::EventType;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::observe::batch::DirtyKey;
use crate::observe::cache::Caches;
use crate::observe::watch;
use crate::operate::config::Config;
use crate::operate::http::Health;
use crate::operate::metrics::{ClusterLabels, Metrics, RegistrationLabels};
use crate::targets::cluster::lane::Told;
use crate::targets::cluster::lane::{Inputs, Lane};
use crate::targets::cluster::writer::{Remote, Writer};
use crate::write::events::Events;
use crate::write::gate::WriteGate;
use crate::write::pace::Pacer;

/// How often the cluster's API server is asked and its state reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How long the probe waits for the API server's answer: a server that
/// does not answer within this is reported down (so within about
/// `REPORT_EVERY + PROBE_TIMEOUT` of hanging).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The namespace whose uid identifies an API server (every cluster has it;
/// the remote identity may `get` namespaces).
const IDENTITY_NAMESPACE: &str = "kube-system";

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

/// Which registered cluster serves which remote API server, by the
/// server's own identity: the uid of its `kube-system` namespace, read at
/// connect. Two registrations of one server (two names, two URLs) would each
/// take the other's copies for strays and delete them; so the first to own
/// it keeps it and the other is refused (not served, said so). Of two that
/// connect together, before either wrote, the older registration wins.
#[derive(Default)]
pub struct Owners {
    claims: Mutex<HashMap<String, Claim>>,
}

struct Claim {
    cluster: String,
    rank: (i64, String),
    /// It has been asked to write: it keeps the server from now on.
    serving: bool,
}

impl Owners {
    /// Claim the API server `identity` for `cluster`: `Ok`, or the name of
    /// the cluster that owns it.
    pub fn claim(&self, identity: &str, cluster: &str, rank: &(i64, String)) -> Result<(), String> {
        let mut claims = self.claims.lock().expect("lock");
        match claims.get(identity) {
            Some(c) if c.cluster == cluster => Ok(()),
            Some(c) if c.serving || c.rank <= *rank => Err(c.cluster.clone()),
            _ => {
                claims.insert(
                    identity.to_string(),
                    Claim {
                        cluster: cluster.to_string(),
                        rank: rank.clone(),
                        serving: false,
                    },
                );
                Ok(())
            }
        }
    }

    /// May `cluster` write to the API server `identity` now (it owns it)?
    /// From the first yes on, it keeps it against any newcomer.
    pub fn serve(&self, identity: &str, cluster: &str) -> bool {
        match self.claims.lock().expect("lock").get_mut(identity) {
            Some(c) if c.cluster == cluster => {
                c.serving = true;
                true
            }
            _ => false,
        }
    }

    /// `cluster` no longer serves anything (its task ended).
    pub fn release(&self, cluster: &str) {
        self.claims
            .lock()
            .expect("lock")
            .retain(|_, c| c.cluster != cluster);
    }
}

/// A remote cluster's own gate, asked (with the write gate) before each
/// write request there.
pub struct Pass {
    cluster: String,
    owners: Arc<Owners>,
    /// Fired when the registration is removed or changed.
    stop: CancellationToken,
    /// The API server answered the last probe.
    up: AtomicBool,
    /// The API server's identity, once read.
    identity: Mutex<Option<String>>,
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("cluster", &self.cluster)
            .field("up", &self.up.load(Ordering::SeqCst))
            .field("stopped", &self.stop.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Pass {
    fn new(cluster: &str, owners: Arc<Owners>, stop: CancellationToken) -> Pass {
        Pass {
            cluster: cluster.to_string(),
            owners,
            stop,
            up: AtomicBool::new(false),
            identity: Mutex::new(None),
        }
    }

    /// Open: still registered, the server answers, and we own it.
    pub fn open(&self) -> bool {
        !self.stop.is_cancelled()
            && self.up.load(Ordering::SeqCst)
            && self
                .identity
                .lock()
                .expect("lock")
                .as_deref()
                .is_some_and(|id| self.owners.serve(id, &self.cluster))
    }
}

impl crate::targets::cluster::writer::ClusterPass for Pass {
    fn open(&self) -> bool {
        Pass::open(self)
    }
}

/// Ends what belongs to one cluster's task however it ends (returned,
/// or aborted when its registration goes): the probe, the watches, its
/// claim on the API server.
struct Guard {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    owners: Arc<Owners>,
    cluster: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.owners.release(&self.cluster);
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
    let metrics = Arc::new(Metrics::for_cluster(cluster, &shared.metrics));
    let caches = Arc::new(shared.caches.sharing_sources(&kinds));
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
    };
    let report = Report::new(&shared, &site, own_health.clone(), caches.clone());
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
        Pacer::new(cfg.rate_limit, cfg.rate_burst),
        shared.events.clone(),
        metrics.clone(),
        caches.clone(),
        shared.gate.clone(),
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
        writer,
        metrics,
        health: own_health,
        gate: shared.gate.clone(),
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

/// Beside the cluster's task, whatever it is doing: every [`REPORT_EVERY`]
/// ask the API server for its identity (answer within [`PROBE_TIMEOUT`]),
/// claim it ([`Owners`]), open or close the [`Pass`], and report. Wakes the
/// task (`back`) when the cluster may be served again after it could not.
async fn probe(
    client: kube::Client,
    mut report: Report,
    pass: Arc<Pass>,
    rank: (i64, String),
    back: Arc<Notify>,
    stop: CancellationToken,
) {
    let api: Api<Namespace> = Api::all(client);
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_open = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let asked = tokio::time::timeout(PROBE_TIMEOUT, api.get_metadata(IDENTITY_NAMESPACE));
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = asked => answer,
        };
        let probed = match answer {
            Err(_) => Err(format!(
                "its API server did not answer within {}s",
                PROBE_TIMEOUT.as_secs()
            )),
            Ok(Err(e)) => Err(format!(
                "its API server cannot be asked: {}",
                crate::operate::api_errors::describe(&e)
            )),
            Ok(Ok(ns)) => ns
                .metadata
                .uid
                .ok_or_else(|| format!("its namespace {IDENTITY_NAMESPACE} has no uid")),
        };
        let state = match probed {
            Err(why) => State::Down(why),
            Ok(identity) => {
                let owner = pass.owners.claim(&identity, &pass.cluster, &rank);
                *pass.identity.lock().expect("lock") = Some(identity);
                match owner {
                    Ok(()) => State::Up,
                    Err(other) => State::Refused(other),
                }
            }
        };
        pass.up
            .store(!matches!(state, State::Down(_)), Ordering::SeqCst);
        if stop.is_cancelled() {
            return;
        }
        // Served again (or for the first time): what was not planned while
        // the pass was closed is planned now.
        let open = matches!(state, State::Up);
        let opened = open && !was_open;
        was_open = open;
        if report.update(&state).await || opened {
            back.notify_one();
        }
    }
}

/// What the last probe found.
enum State {
    Up,
    /// Not answering (the reason).
    Down(String),
    /// Answering, but the API server is served as the cluster named.
    Refused(String),
}

/// The cluster's state as the rest of the controller shows it: `/readyz`
/// notes, `push_to_k8s_cluster_up` and `_replicas`, an Event on the
/// registration when it goes down, is refused, or comes back.
struct Report {
    cluster: String,
    labels: ClusterLabels,
    shared: Arc<Shared>,
    registration: ObjectReference,
    own: Arc<Health>,
    caches: Arc<Caches>,
    /// What was last said: `None` up, `Some(why)` down or refused.
    said: Option<Option<String>>,
}

impl Report {
    fn new(shared: &Arc<Shared>, site: &Site, own: Arc<Health>, caches: Arc<Caches>) -> Report {
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
        }
    }

    /// Look and report; `true` when the cluster may be served again after
    /// it was reported down or refused.
    async fn update(&mut self, state: &State) -> bool {
        let refused = match state {
            State::Refused(owner) => Some(format!(
                "not served: its API server (the same kube-system namespace uid) is already served as cluster {owner}; one API server has one owner (to rename a cluster, see docs/remote-clusters.md)"
            )),
            _ => None,
        };
        let down = match (state, self.own.readiness()) {
            (State::Refused(_), _) => refused.clone(),
            (State::Down(why), _) => Some(why.clone()),
            (State::Up, Ok(())) => None,
            (State::Up, Err(why)) => Some(why.trim_start_matches("not ready: ").to_string()),
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
            Some(why) if refused.is_some() => {
                tracing::warn!(why = %why, "remote cluster registration refused");
                metrics
                    .registrations_refused
                    .get_or_create(&RegistrationLabels { reason: "server" })
                    .inc();
                (
                    EventType::Warning,
                    "InvalidCluster",
                    format!("cluster {} is {why}", self.cluster),
                )
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 16, item 5: one API server (by its identity) has one owner; a
    // serving owner is never displaced; of two claiming before either
    // served, the older registration wins; a release frees it.
    #[test]
    fn one_api_server_has_one_owner() {
        let owners = Owners::default();
        let (old, new) = ((1, "cluster-a".to_string()), (2, "cluster-b".to_string()));
        assert_eq!(owners.claim("uid-1", "a", &old), Ok(()));
        assert_eq!(owners.claim("uid-1", "a", &old), Ok(()));
        assert_eq!(owners.claim("uid-1", "b", &new), Err("a".into()));
        assert!(!owners.serve("uid-1", "b"));
        assert!(owners.serve("uid-1", "a"));
        // Serving: even an older registration is refused now.
        assert_eq!(
            owners.claim("uid-1", "z", &(0, "x".into())),
            Err("a".into())
        );
        // Another server is another claim.
        assert_eq!(owners.claim("uid-2", "b", &new), Ok(()));
        // Not serving yet: an older registration takes it over, and the
        // younger may not write.
        assert_eq!(owners.claim("uid-2", "c", &old), Ok(()));
        assert!(!owners.serve("uid-2", "b"));
        assert_eq!(owners.claim("uid-2", "b", &new), Err("c".into()));
        owners.release("a");
        assert_eq!(owners.claim("uid-1", "b", &new), Ok(()));
        assert!(owners.serve("uid-1", "b"));
    }

    // Issue 16, item 10: the cluster's gate closes at once when the
    // registration goes, while the server does not answer, and without
    // ownership.
    #[test]
    fn the_pass_is_open_only_while_registered_answering_and_owner() {
        let owners = Arc::new(Owners::default());
        let stop = CancellationToken::new();
        let pass = Pass::new("a", owners.clone(), stop.clone());
        assert!(!pass.open(), "nothing known yet");
        *pass.identity.lock().unwrap() = Some("uid".into());
        pass.up.store(true, Ordering::SeqCst);
        assert!(!pass.open(), "not claimed");
        owners.claim("uid", "a", &(1, "s".into())).unwrap();
        assert!(pass.open());
        pass.up.store(false, Ordering::SeqCst);
        assert!(!pass.open(), "down");
        pass.up.store(true, Ordering::SeqCst);
        assert!(pass.open());
        stop.cancel();
        assert!(!pass.open(), "removed");
    }
}

#[cfg(test)]
mod lane_tests {
    use super::*;
    use crate::fixtures::{self, ApiServer};
    use ::http::{Method, StatusCode};
    use k8s_openapi::api::core::v1::Secret;

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
            leading,
            stamp: "home".into(),
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
            Pacer::new(cfg.rate_limit, cfg.rate_burst),
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
            writer,
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
            .find_map(|l| l.strip_prefix("push_to_k8s_propagation_seconds_sum "))
            .expect("the latency histogram")
            .parse()
            .unwrap();
        assert!(sum >= 7.0, "latency counted from the event: {sum}s\n{text}");
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
}
