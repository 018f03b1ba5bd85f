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
//! A cluster that cannot be reached, hangs or refuses us holds up nothing
//! else: the control loop only adds keys to a set ([`super::Told`]: told
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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Told;
use crate::batch::{Batcher, DirtyKey};
use crate::cache::Caches;
use crate::config::Config;
use crate::conflicts;
use crate::controller::{every, flush};
use crate::events::Events;
use crate::fights::Fights;
use crate::gate::{Gate, WriteGate};
use crate::http::Health;
use crate::metrics::{ClusterLabels, Metrics, RegistrationLabels};
use crate::pace::Pacer;
use crate::push::{Remote, Writer};
use crate::records::ObjectKey;
use crate::resync;
use crate::retry::RetryQueue;
use crate::targets::Scope;
use crate::watch;

/// How often the cluster's API server is asked and its state reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How long the probe waits for the API server's answer: a server that
/// does not answer within this is reported down (so within about
/// `REPORT_EVERY + PROBE_TIMEOUT` of hanging).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The namespace whose uid identifies an API server (every cluster has it;
/// the remote identity may `get` namespaces).
const IDENTITY_NAMESPACE: &str = "kube-system";
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

/// Serve `site` until `stop` fires; `told` holds the sources the control
/// loop told it about (coalesced).
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
    let (dirty_tx, mut dirty_rx) = tokio::sync::mpsc::unbounded_channel::<DirtyKey>();
    let pass = Arc::new(Pass::new(cluster, owners.clone(), stop.clone()));
    let back = Arc::new(Notify::new());
    let mut guard = Guard {
        tasks: watch::spawn_all(
            site.watch_client.clone(),
            (&cfg.namespace, Some(stamp)),
            &kinds,
            &[],
            false,
            caches.clone(),
            dirty_tx,
            metrics.clone(),
            own_health.clone(),
            stop.clone(),
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
    let scope = Scope {
        source_namespace: &cfg.namespace,
        exclude_label: cfg.exclude_namespace_label.as_deref(),
        protected: &cfg.protected_namespaces,
        require_consent: cfg.require_namespace_consent,
        cluster: Some(cluster),
        stamp: Some(stamp),
    };
    tracing::info!("remote cluster registered; listing its namespaces and our copies");

    // Plan nothing before both lists are in (a half-filled cache would
    // create what exists); the batches told meanwhile are covered by "All".
    let mut wait = tokio::time::interval(Duration::from_millis(250));
    while !caches.synced() {
        own_health.beat();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = wait.tick() => {}
        }
    }
    own_health.set_synced(true);
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
            _ = stop.cancelled() => return,
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
                // Not served now (down, or another registration owns the
                // server): nothing is planned; "back" plans everything.
                if shared.gate.leading() && pass.open() {
                    let mut gate = Gate { retry: &mut retry, fights: &mut fights };
                    flush(&kinds, &caches, &scope, &writer, &metrics, &keys, since, &own_health, &mut gate, false).await;
                }
            }
            Ok(()) = leading.changed() => {
                if *leading.borrow_and_update() {
                    add(&mut batcher, &mut since, DirtyKey::All);
                }
            }
            () = back.notified() => {
                // Back after an outage (or it owns its server now): what
                // failed meanwhile waits out no backoff; everything is
                // planned again now.
                retry = RetryQueue::new();
                add(&mut batcher, &mut since, DirtyKey::All);
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
            () = told.wait() => {
                // Measured from the batch's first change, as at home.
                let (keys, told_since) = told.take();
                if shared.gate.leading() && pass.open() {
                    let mut gate = Gate { retry: &mut retry, fights: &mut fights };
                    flush(&kinds, &caches, &scope, &writer, &metrics, &keys, told_since, &own_health, &mut gate, false).await;
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
        }
    }
    drop(guard);
}

/// Add `key`, starting the batch's clock if it is the first.
fn add(batcher: &mut Batcher, since: &mut Instant, key: DirtyKey) {
    if batcher.pending() == 0 {
        *since = Instant::now();
    }
    batcher.add(key);
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
                watch::describe_error(&e)
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
