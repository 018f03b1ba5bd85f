//! Remote clusters as targets (DESIGN §7, docs/remote-clusters.md).
//!
//! A Secret in the source namespace labelled `push-to-k8s.io/cluster=<name>`
//! with a kubeconfig under the data key `kubeconfig` registers the cluster
//! `<name>`. This module watches those Secrets (label-selected: nothing else
//! of the namespace is read) and keeps one [`site`] task per registered
//! cluster: started when a registration appears, started again when its
//! kubeconfig changes, stopped when it goes. Stopping leaves the copies in
//! that cluster as they are: nothing there is managed any more.
//!
//! Sources opt in with `push-to-k8s.io/clusters` (names, globs, `*`); the
//! planner asks [`crate::targets::TargetRules::selects_cluster`].

pub mod kubeconfig;
pub mod site;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::batch::DirtyKey;
use crate::kinds::Kind;
pub use site::Shared;

/// The label that registers a cluster; its value is the cluster's name.
pub const CLUSTER_LABEL: &str = "push-to-k8s.io/cluster";
/// The data key of a registration Secret that holds the kubeconfig.
pub const KUBECONFIG_KEY: &str = "kubeconfig";
/// The `/readyz` and metrics name of the registrations watch.
const WATCH_NAME: &str = "cluster-registrations";

type Senders = Arc<Mutex<BTreeMap<String, mpsc::UnboundedSender<Vec<DirtyKey>>>>>;

/// The control loop's handle: forwards each flushed batch to every cluster.
pub struct Handle {
    clusters: Senders,
}

impl Handle {
    /// The sources of a flushed batch (and "everything") concern every
    /// cluster; namespace and copy keys belong to this cluster's own.
    pub fn tell(&self, keys: &[DirtyKey]) {
        let keys: Vec<DirtyKey> = keys
            .iter()
            .filter(|k| matches!(k, DirtyKey::All | DirtyKey::Source(..)))
            .cloned()
            .collect();
        if keys.is_empty() {
            return;
        }
        for tx in self.clusters.lock().expect("lock").values() {
            let _ = tx.send(keys.clone());
        }
    }
}

/// Start watching the registrations.
pub fn spawn(shared: Shared, client: kube::Client, shutdown: CancellationToken) -> Handle {
    let clusters = Senders::default();
    let manager = Manager {
        shared: Arc::new(shared),
        senders: clusters.clone(),
        running: BTreeMap::new(),
        said: HashMap::new(),
        labelled: BTreeSet::new(),
    };
    tokio::spawn(manager.run(client, shutdown));
    Handle { clusters }
}

/// One registration Secret as read.
#[derive(Clone)]
pub struct Registration {
    pub secret: String,
    uid: String,
    /// The label's value.
    pub cluster: String,
    /// SHA-256 of the kubeconfig bytes: a change restarts the cluster.
    fingerprint: [u8; 32],
    pub kubeconfig: Result<kube::config::Kubeconfig, kubeconfig::Refused>,
}

/// The registrations that count, by cluster name, and the refused ones
/// with why: one per cluster name (the first Secret by name wins), and the
/// label's value must be a DNS label. Same for the daemon and `status`.
pub fn choose(
    listed: &BTreeMap<String, Registration>,
) -> (
    BTreeMap<String, &Registration>,
    Vec<(&Registration, String)>,
) {
    let mut wanted: BTreeMap<String, &Registration> = BTreeMap::new();
    let mut refusals = Vec::new();
    for r in listed.values() {
        if let Err(reason) = crate::names::dns1123_label(&r.cluster) {
            refusals.push((
                r,
                format!(
                    "the label {CLUSTER_LABEL} must be a DNS label, the cluster's name ({reason})"
                ),
            ));
        } else if let Some(first) = wanted.get(&r.cluster) {
            refusals.push((
                r,
                format!(
                    "cluster {} is already registered by Secret {}",
                    r.cluster, first.secret
                ),
            ));
        } else {
            wanted.insert(r.cluster.clone(), r);
        }
    }
    (wanted, refusals)
}

impl Registration {
    pub fn read(s: &Secret) -> Option<Registration> {
        let secret = s.metadata.name.clone()?;
        let cluster = s.metadata.labels.as_ref()?.get(CLUSTER_LABEL)?.clone();
        let bytes = s
            .data
            .as_ref()
            .and_then(|d| d.get(KUBECONFIG_KEY))
            .map(|b| b.0.as_slice());
        Some(Registration {
            secret,
            uid: s.metadata.uid.clone().unwrap_or_default(),
            cluster,
            fingerprint: Sha256::digest(bytes.unwrap_or_default()).into(),
            kubeconfig: kubeconfig::parse(bytes, KUBECONFIG_KEY),
        })
    }

    fn reference_in(&self, namespace: &str) -> ObjectReference {
        secret_ref(namespace, &self.secret, &self.uid)
    }
}

/// A registration Secret, for Events.
fn secret_ref(namespace: &str, name: &str, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some(Kind::Secret.name().into()),
        namespace: Some(namespace.to_string()),
        name: Some(name.to_string()),
        uid: Some(uid.to_string()),
        ..ObjectReference::default()
    }
}

/// A cluster being served.
struct Running {
    secret: String,
    uid: String,
    fingerprint: [u8; 32],
    stop: CancellationToken,
}

struct Manager {
    shared: Arc<Shared>,
    senders: Senders,
    running: BTreeMap<String, Running>,
    /// Per registration Secret: the last refusal said (once per change).
    said: HashMap<String, String>,
    /// Cluster names with metric series or `/readyz` notes.
    labelled: BTreeSet<String>,
}

impl Manager {
    async fn run(mut self, client: kube::Client, shutdown: CancellationToken) {
        let api: Api<Secret> = Api::namespaced(client, &self.shared.cfg.namespace);
        let health = self.shared.health.clone();
        let mut stream = watcher(api, crate::watch::config(Some(CLUSTER_LABEL))).boxed();
        let mut listed: BTreeMap<String, Registration> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, Registration>> = None;
        let mut failures = 0u32;
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                e = stream.next() => e,
            };
            let Some(event) = event else { break };
            match event {
                Ok(watcher::Event::Init) => listing = Some(BTreeMap::new()),
                Ok(watcher::Event::InitApply(s)) => {
                    if let (Some(l), Some(r)) = (listing.as_mut(), Registration::read(&s)) {
                        l.insert(r.secret.clone(), r);
                    }
                }
                Ok(watcher::Event::InitDone) => {
                    listed = listing.take().unwrap_or_default();
                    health.watch_listed(WATCH_NAME);
                    failures = 0;
                    self.reconcile(&listed).await;
                }
                Ok(watcher::Event::Apply(s)) => {
                    health.watch_event(WATCH_NAME);
                    let name = s.metadata.name.clone().unwrap_or_default();
                    match Registration::read(&s) {
                        Some(r) => listed.insert(name, r),
                        None => listed.remove(&name),
                    };
                    self.reconcile(&listed).await;
                }
                Ok(watcher::Event::Delete(s)) => {
                    health.watch_event(WATCH_NAME);
                    listed.remove(&s.metadata.name.clone().unwrap_or_default());
                    self.reconcile(&listed).await;
                }
                Err(e) => {
                    let error = crate::watch::describe_watch_error(&e);
                    health.watch_failed(WATCH_NAME, error.clone());
                    self.shared
                        .metrics
                        .watch_errors
                        .get_or_create(&crate::metrics::WatchLabels { watch: WATCH_NAME })
                        .inc();
                    let delay = crate::watch::watch_backoff(failures);
                    failures += 1;
                    tracing::warn!(watch = WATCH_NAME, error = %error, retry_in_s = delay.as_secs(), "watch failed; listing again after a backoff");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        for (_, r) in std::mem::take(&mut self.running) {
            r.stop.cancel();
        }
    }

    /// Bring the running clusters to the registrations in `listed`.
    async fn reconcile(&mut self, listed: &BTreeMap<String, Registration>) {
        // One registration per cluster name; the others are refused (and said so).
        let (wanted, mut refusals) = choose(listed);
        for r in wanted.values() {
            if let Err(refused) = &r.kubeconfig {
                refusals.push((r, format!("cluster {} is not served: {refused}", r.cluster)));
            }
        }
        self.said.retain(|secret, _| listed.contains_key(secret));
        for (r, note) in refusals {
            self.refuse(r, note).await;
        }

        // Gone, or changed: stop.
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, run)| {
                wanted
                    .get(*name)
                    .is_none_or(|r| r.fingerprint != run.fingerprint || r.secret != run.secret)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let run = self.running.remove(&name).expect("listed");
            run.stop.cancel();
            self.senders.lock().expect("lock").remove(&name);
            if !wanted.contains_key(&name) {
                self.removed(&name, &run).await;
            }
        }
        // New, or changed: start.
        for (name, r) in &wanted {
            if self.running.contains_key(name) {
                continue;
            }
            let labels = crate::metrics::ClusterLabels {
                cluster: name.clone(),
            };
            self.labelled.insert(name.clone());
            let kubeconfig = match &r.kubeconfig {
                Ok(k) => k.clone(),
                Err(refused) => {
                    self.shared.metrics.cluster_up.get_or_create(&labels).set(0);
                    self.shared
                        .health
                        .set_cluster_degraded(name, Some(refused.to_string()));
                    continue;
                }
            };
            let client = match kubeconfig::client(kubeconfig).await {
                Ok(c) => c,
                Err(refused) => {
                    self.shared.metrics.cluster_up.get_or_create(&labels).set(0);
                    self.shared
                        .health
                        .set_cluster_degraded(name, Some(refused.to_string()));
                    self.refuse(r, format!("cluster {name} is not served: {refused}"))
                        .await;
                    continue;
                }
            };
            self.shared.metrics.cluster_up.get_or_create(&labels).set(0);
            let (tx, rx) = mpsc::unbounded_channel();
            let stop = CancellationToken::new();
            let site = site::Site {
                cluster: name.clone(),
                client,
                registration: r.reference_in(&self.shared.cfg.namespace),
            };
            let span = tracing::info_span!("cluster", cluster = %name);
            tokio::spawn(site::run(self.shared.clone(), site, rx, stop.clone()).instrument(span));
            self.senders.lock().expect("lock").insert(name.clone(), tx);
            self.running.insert(
                name.clone(),
                Running {
                    secret: r.secret.clone(),
                    uid: r.uid.clone(),
                    fingerprint: r.fingerprint,
                    stop,
                },
            );
        }
        // Registered clusters whose kubeconfig is refused count as well.
        self.shared.metrics.clusters.set(wanted.len() as i64);
        // Series and notes only for registered clusters (bounded cardinality).
        let gone: Vec<String> = self
            .labelled
            .iter()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.shared.metrics.forget_cluster(&name);
            self.shared.health.set_cluster_degraded(&name, None);
            self.labelled.remove(&name);
        }
    }

    /// A registration that is not used, said once per change.
    async fn refuse(&mut self, r: &Registration, note: String) {
        if self.said.get(&r.secret) == Some(&note) {
            return;
        }
        self.said.insert(r.secret.clone(), note.clone());
        tracing::warn!(secret = %r.secret, "cluster registration refused: {note}");
        let events = &self.shared.events;
        let reference = r.reference_in(&self.shared.cfg.namespace);
        events
            .publish(
                &reference,
                EventType::Warning,
                "InvalidCluster",
                "Register",
                note,
            )
            .await;
    }

    /// The registration of `name` is gone: its copies stay, unmanaged.
    async fn removed(&mut self, name: &str, run: &Running) {
        tracing::info!(cluster = %name, "cluster registration removed; its copies there are left in place and no longer managed");
        let reference = secret_ref(&self.shared.cfg.namespace, &run.secret, &run.uid);
        self.shared
            .events
            .publish(
                &reference,
                EventType::Normal,
                "ClusterRemoved",
                "Register",
                format!("cluster {name} is no longer registered: push-to-k8s stops managing it; its copies there are left in place, no longer managed"),
            )
            .await;
    }
}
