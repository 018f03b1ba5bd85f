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
//! planner asks [`crate::model::rules::TargetRules::selects_cluster`].

pub mod kubeconfig;
pub mod owners;
pub mod probe;
pub mod site;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::runtime::watcher;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::model::kinds::Kind;
use crate::model::vocabulary::{CLUSTER_LABEL, KUBECONFIG_KEY};
pub use crate::targets::cluster::lane::Told;
use crate::targets::{Batch, Target};
use crate::write::gate::WriteGate;
pub use site::{Shared, Sites};

/// The `/readyz` and metrics name of the registrations watch.
const WATCH_NAME: &str = "cluster-registrations";

type Senders = Arc<Mutex<BTreeMap<String, Arc<Told>>>>;

/// The fan-out's handle on every registered cluster: tells each cluster's
/// lane each batch.
pub struct Handle {
    clusters: Senders,
    gate: Arc<WriteGate>,
}

impl Target for Handle {
    /// The sources of a batch (and "everything") concern every cluster;
    /// namespace and copy keys belong to this cluster's own. A standby tells
    /// nothing. Never waits, and never grows beyond one key per source per
    /// cluster.
    fn tell(&self, batch: &Batch) {
        if !self.gate.leading() {
            return;
        }
        let batch = batch.sources();
        if batch.keys.is_empty() {
            return;
        }
        for told in self.clusters.lock().expect("lock").values() {
            told.add(&batch);
        }
    }
}

/// Start watching the registrations.
pub fn spawn(shared: Shared, client: kube::Client, shutdown: CancellationToken) -> Handle {
    let clusters = Senders::default();
    let gate = shared.ctx.gate.clone();
    let manager = Manager {
        shared: Arc::new(shared),
        senders: clusters.clone(),
        running: BTreeMap::new(),
        said: HashMap::new(),
        labelled: BTreeSet::new(),
        owners: Arc::new(owners::Owners::default()),
    };
    tokio::spawn(manager.run(client, shutdown));
    Handle { clusters, gate }
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
    /// The Secret's creation (seconds since the epoch; `i64::MAX` if
    /// unknown): of two registrations of one name or one API server, neither
    /// served yet, the older is used.
    created: i64,
    /// It also carries the source label: it is never a source, said once.
    pub source_labelled: bool,
}

/// The registrations that count, by cluster name, and the refused ones
/// with why. Same for the daemon and `status`:
/// - the label's value must be a DNS label;
/// - one registration per cluster name, and one per API server (its
///   kubeconfig's server URL; the task also compares the server's own
///   identity at connect, [`owners::Owners`]);
/// - a registration already served (`running`: cluster name to Secret name)
///   keeps its name and its server: a newcomer is refused, whatever its
///   name; among the others the older Secret (creation time, then name)
///   wins.
pub fn choose<'a>(
    listed: &'a BTreeMap<String, Registration>,
    running: &BTreeMap<String, String>,
) -> (
    BTreeMap<String, &'a Registration>,
    Vec<(&'a Registration, Refusal)>,
) {
    let mut order: Vec<&Registration> = listed.values().collect();
    order.sort_by_key(|r| {
        let served = running.get(&r.cluster) == Some(&r.secret);
        (!served, r.created, r.secret.clone())
    });
    let mut wanted: BTreeMap<String, &Registration> = BTreeMap::new();
    let mut servers: BTreeMap<String, &Registration> = BTreeMap::new();
    let mut refusals = Vec::new();
    for r in order {
        let server = r.kubeconfig.as_ref().ok().and_then(kubeconfig::server);
        if let Err(reason) = crate::model::names::dns1123_label(&r.cluster) {
            refusals.push((
                r,
                Refusal::new(
                    "label",
                    format!(
                        "the label {CLUSTER_LABEL} must be a DNS label, the cluster's name ({reason})"
                    ),
                ),
            ));
        } else if let Some(first) = wanted.get(&r.cluster) {
            refusals.push((
                r,
                Refusal::new(
                    "name",
                    format!(
                        "cluster {} is already registered by Secret {}; this registration is refused and that one stays in use (remove one of them)",
                        r.cluster, first.secret
                    ),
                ),
            ));
        } else if let Some(first) = server.as_ref().and_then(|s| servers.get(s)) {
            refusals.push((
                r,
                Refusal::new(
                    "server",
                    format!(
                        "cluster {} is not served: its API server {} is already registered as cluster {} by Secret {}: one API server has one owner; this registration is refused (to rename a cluster, see docs/remote-clusters.md)",
                        r.cluster,
                        server.as_deref().unwrap_or_default(),
                        first.cluster,
                        first.secret
                    ),
                ),
            ));
        } else {
            wanted.insert(r.cluster.clone(), r);
            if let Some(server) = server {
                servers.insert(server, r);
            }
        }
    }
    (wanted, refusals)
}

/// Why a registration is not used: the Event's note and the metric's reason.
pub struct Refusal {
    pub reason: &'static str,
    pub note: String,
}

impl Refusal {
    fn new(reason: &'static str, note: String) -> Refusal {
        Refusal { reason, note }
    }
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
            created: s
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(i64::MAX, |t| t.0.as_second()),
            source_labelled: crate::model::records::is_labelled_source(&s.metadata),
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
    /// The cluster's task: aborted when it stops, so nothing it was in the
    /// middle of (a write waiting on a hung server) goes on.
    task: tokio::task::JoinHandle<()>,
}

struct Manager {
    shared: Arc<Shared>,
    senders: Senders,
    running: BTreeMap<String, Running>,
    /// Per registration Secret: the last refusal said (once per change).
    said: HashMap<String, String>,
    /// Cluster names with metric series or `/readyz` notes.
    labelled: BTreeSet<String>,
    /// Which task serves which remote API server.
    owners: Arc<owners::Owners>,
}

impl Manager {
    async fn run(mut self, client: kube::Client, shutdown: CancellationToken) {
        let api: Api<Secret> = Api::namespaced(client, &self.shared.registrations);
        let health = self.shared.ctx.health.clone();
        let mut stream = watcher(api, crate::observe::watch::config(Some(CLUSTER_LABEL))).boxed();
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
                    let error = crate::operate::api_errors::describe_watch(&e);
                    health.watch_failed(WATCH_NAME, error.clone());
                    self.shared
                        .ctx
                        .metrics
                        .watch_errors
                        .get_or_create(&crate::operate::metrics::WatchLabels { watch: WATCH_NAME })
                        .inc();
                    let delay = crate::observe::watch::watch_backoff(failures);
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
            r.task.abort();
        }
    }

    /// Bring the running clusters to the registrations in `listed`.
    async fn reconcile(&mut self, listed: &BTreeMap<String, Registration>) {
        // One registration per cluster name and per API server; the others
        // are refused (and said so).
        let running: BTreeMap<String, String> = self
            .running
            .iter()
            .map(|(name, run)| (name.clone(), run.secret.clone()))
            .collect();
        let (wanted, mut refusals) = choose(listed, &running);
        for r in wanted.values() {
            if let Err(refused) = &r.kubeconfig {
                refusals.push((
                    r,
                    Refusal::new(
                        "kubeconfig",
                        format!("cluster {} is not served: {refused}", r.cluster),
                    ),
                ));
            }
        }
        self.said.retain(|key, _| match key.split_once('\0') {
            None => listed.contains_key(key),
            Some((secret, _)) => listed.get(secret).is_some_and(|r| r.source_labelled),
        });
        for (r, refusal) in refusals {
            self.refuse(r, refusal).await;
        }
        // A registration is never a source (it is not in the source cache,
        // see `records::SourceRecord`): said once per Secret.
        for r in listed.values().filter(|r| r.source_labelled) {
            self.not_a_source(r).await;
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
            // At once: the task's gate closes and the task is aborted, even
            // if it waits on a server that does not answer.
            run.stop.cancel();
            run.task.abort();
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
            let labels = crate::operate::metrics::ClusterLabels {
                cluster: name.clone(),
            };
            self.labelled.insert(name.clone());
            let kubeconfig = match &r.kubeconfig {
                Ok(k) => k.clone(),
                Err(refused) => {
                    self.shared
                        .ctx
                        .metrics
                        .cluster_up
                        .get_or_create(&labels)
                        .set(0);
                    self.shared
                        .ctx
                        .health
                        .set_cluster_degraded(name, Some(refused.to_string()));
                    continue;
                }
            };
            let clients = match kubeconfig::clients(kubeconfig).await {
                Ok(c) => c,
                Err(refused) => {
                    self.shared
                        .ctx
                        .metrics
                        .cluster_up
                        .get_or_create(&labels)
                        .set(0);
                    self.shared
                        .ctx
                        .health
                        .set_cluster_degraded(name, Some(refused.to_string()));
                    self.refuse(
                        r,
                        Refusal::new(
                            "kubeconfig",
                            format!("cluster {name} is not served: {refused}"),
                        ),
                    )
                    .await;
                    continue;
                }
            };
            self.shared
                .ctx
                .metrics
                .cluster_up
                .get_or_create(&labels)
                .set(0);
            let told = Arc::new(Told::default());
            let stop = CancellationToken::new();
            let site = site::Site {
                cluster: name.clone(),
                client: clients.requests,
                watch_client: clients.watches,
                registration: r.reference_in(&self.shared.registrations),
                rank: (r.created, r.secret.clone()),
            };
            let span = tracing::info_span!("cluster", cluster = %name);
            let task = tokio::spawn(
                site::run(
                    self.shared.clone(),
                    self.owners.clone(),
                    site,
                    told.clone(),
                    stop.clone(),
                )
                .instrument(span),
            );
            self.senders
                .lock()
                .expect("lock")
                .insert(name.clone(), told);
            self.running.insert(
                name.clone(),
                Running {
                    secret: r.secret.clone(),
                    uid: r.uid.clone(),
                    fingerprint: r.fingerprint,
                    stop,
                    task,
                },
            );
        }
        // Registered clusters whose kubeconfig is refused count as well.
        self.shared.ctx.metrics.clusters.set(wanted.len() as i64);
        // Series and notes only for registered clusters (bounded cardinality).
        let gone: Vec<String> = self
            .labelled
            .iter()
            .filter(|name| !wanted.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            self.shared.ctx.metrics.forget_cluster(&name);
            self.shared.ctx.health.set_cluster_degraded(&name, None);
            self.labelled.remove(&name);
        }
    }

    /// A registration that is not used, said once per change.
    async fn refuse(&mut self, r: &Registration, refusal: Refusal) {
        let Refusal { reason, note } = refusal;
        if self.said.get(&r.secret) == Some(&note) {
            return;
        }
        self.said.insert(r.secret.clone(), note.clone());
        self.shared
            .ctx
            .metrics
            .registrations_refused
            .get_or_create(&crate::operate::metrics::RegistrationLabels { reason })
            .inc();
        tracing::warn!(secret = %r.secret, "cluster registration refused: {note}");
        let events = &self.shared.ctx.events;
        let reference = r.reference_in(&self.shared.registrations);
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

    /// A registration that also carries the source label: never copied.
    async fn not_a_source(&mut self, r: &Registration) {
        let key = format!("{}\0source", r.secret);
        let note = format!(
            "Secret {} registers cluster {} and also carries the source label {}={}: a registration is never a source, it is not copied anywhere (remove the source label)",
            r.secret,
            r.cluster,
            crate::model::vocabulary::SOURCE_LABEL_KEY,
            crate::model::vocabulary::SOURCE_LABEL_VALUE
        );
        if self.said.get(&key) == Some(&note) {
            return;
        }
        self.said.insert(key, note.clone());
        self.shared
            .ctx
            .metrics
            .registrations_refused
            .get_or_create(&crate::operate::metrics::RegistrationLabels { reason: "source" })
            .inc();
        tracing::warn!(secret = %r.secret, "a cluster registration carries the source label; it is not a source");
        let reference = r.reference_in(&self.shared.registrations);
        self.shared
            .ctx
            .events
            .publish(
                &reference,
                EventType::Warning,
                "RegistrationNotSource",
                "Plan",
                note,
            )
            .await;
    }

    /// The registration of `name` is gone: its copies stay, unmanaged.
    async fn removed(&mut self, name: &str, run: &Running) {
        tracing::info!(cluster = %name, "cluster registration removed; its copies there are left in place and no longer managed");
        let reference = secret_ref(&self.shared.registrations, &run.secret, &run.uid);
        self.shared
            .ctx.events
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kinds::Kind;
    use crate::observe::batch::DirtyKey;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

    fn kubeconfig(server: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: Zm9v\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n"
        )
    }

    fn registration(secret: &str, cluster: &str, server: &str, created: i64) -> Registration {
        let s = Secret {
            metadata: ObjectMeta {
                name: Some(secret.into()),
                labels: Some(BTreeMap::from([(CLUSTER_LABEL.into(), cluster.into())])),
                creation_timestamp: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
                )),
                ..Default::default()
            },
            data: Some(BTreeMap::from([(
                KUBECONFIG_KEY.into(),
                k8s_openapi::ByteString(kubeconfig(server).into_bytes()),
            )])),
            ..Default::default()
        };
        Registration::read(&s).expect("a registration")
    }

    fn listed(rs: Vec<Registration>) -> BTreeMap<String, Registration> {
        rs.into_iter().map(|r| (r.secret.clone(), r)).collect()
    }

    /// (cluster, Secret) chosen; (Secret, reason) refused.
    type Chosen = (Vec<(String, String)>, Vec<(String, &'static str)>);

    fn chosen(listed: &BTreeMap<String, Registration>, running: &[(&str, &str)]) -> Chosen {
        let running = running
            .iter()
            .map(|(c, s)| (c.to_string(), s.to_string()))
            .collect();
        let (wanted, refused) = choose(listed, &running);
        (
            wanted
                .iter()
                .map(|(c, r)| (c.clone(), r.secret.clone()))
                .collect(),
            refused
                .iter()
                .map(|(r, why)| (r.secret.clone(), why.reason))
                .collect(),
        )
    }

    // Issue 16, item 6: a newcomer never displaces a registration in use,
    // whatever its Secret's name; among new ones the older Secret wins.
    #[test]
    fn a_duplicate_name_keeps_the_running_registration() {
        let l = listed(vec![
            registration("zz-real", "east", "https://10.0.0.1:6443", 100),
            registration("aa-newcomer", "east", "https://10.0.0.9:6443", 200),
        ]);
        let (wanted, refused) = chosen(&l, &[("east", "zz-real")]);
        assert_eq!(wanted, [("east".to_string(), "zz-real".to_string())]);
        assert_eq!(refused, [("aa-newcomer".to_string(), "name")]);
        // Nothing running yet (a start, `status`): the older Secret wins,
        // not the first by name.
        let (wanted, _) = chosen(&l, &[]);
        assert_eq!(wanted, [("east".to_string(), "zz-real".to_string())]);
        // Even an older Secret labelled later does not displace the one in use.
        let l = listed(vec![
            registration("zz-real", "east", "https://10.0.0.1:6443", 100),
            registration("aa-old", "east", "https://10.0.0.9:6443", 1),
        ]);
        let (wanted, refused) = chosen(&l, &[("east", "zz-real")]);
        assert_eq!(wanted, [("east".to_string(), "zz-real".to_string())]);
        assert_eq!(refused, [("aa-old".to_string(), "name")]);
        let (wanted, _) = chosen(&l, &[]);
        assert_eq!(wanted, [("east".to_string(), "aa-old".to_string())]);
    }

    // Issue 16, item 5: one API server (by its URL, normalised) has one
    // registration; the running one keeps it.
    #[test]
    fn one_api_server_url_has_one_registration() {
        let l = listed(vec![
            registration("cluster-a", "a", "https://127.0.0.1:6443", 100),
            registration("cluster-b", "b", "HTTPS://127.0.0.1:6443/", 50),
            registration("cluster-c", "c", "https://127.0.0.1:6444", 10),
        ]);
        let (wanted, refused) = chosen(&l, &[("a", "cluster-a")]);
        assert_eq!(
            wanted,
            [
                ("a".to_string(), "cluster-a".to_string()),
                ("c".to_string(), "cluster-c".to_string())
            ]
        );
        assert_eq!(refused, [("cluster-b".to_string(), "server")]);
        // Nothing running: the older one.
        let (wanted, refused) = chosen(&l, &[]);
        assert_eq!(
            wanted,
            [
                ("b".to_string(), "cluster-b".to_string()),
                ("c".to_string(), "cluster-c".to_string())
            ]
        );
        assert_eq!(refused, [("cluster-a".to_string(), "server")]);
    }

    // Issue 16, item 6: a registration with the source label is flagged
    // (and `records` keeps it out of the sources).
    #[test]
    fn a_registration_with_the_source_label_is_flagged() {
        let mut r = registration("cluster-a", "a", "https://10.0.0.1:6443", 1);
        assert!(!r.source_labelled);
        let s = Secret {
            metadata: ObjectMeta {
                name: Some("cluster-a".into()),
                labels: Some(BTreeMap::from([
                    (CLUSTER_LABEL.into(), "a".into()),
                    ("push-to-k8s".into(), "source".into()),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        r = Registration::read(&s).unwrap();
        assert!(r.source_labelled);
    }

    fn batch(keys: Vec<DirtyKey>) -> Batch {
        Batch {
            keys,
            since: tokio::time::Instant::now(),
        }
    }

    fn keys(told: &Told) -> Vec<DirtyKey> {
        told.take().map(|b| b.keys).unwrap_or_default()
    }

    // Issue 16, item 10: told batches coalesce: bounded by the sources,
    // however many batches arrive before the task takes them.
    #[tokio::test]
    async fn told_batches_coalesce_into_a_bounded_set() {
        let told = Told::default();
        for round in 0..10_000 {
            let name = format!("s{}", round % 3);
            told.add(&batch(vec![DirtyKey::Source(Kind::Secret, name)]));
        }
        assert_eq!(told.len(), 3);
        told.wait().await;
        let mut taken = keys(&told);
        taken.sort();
        assert_eq!(
            taken,
            ["s0", "s1", "s2"]
                .map(|n| DirtyKey::Source(Kind::Secret, n.to_string()))
                .to_vec()
        );
        assert!(told.is_empty());
        // "Everything" swallows the rest, before and after.
        told.add(&batch(vec![DirtyKey::Source(Kind::Secret, "x".into())]));
        told.add(&batch(vec![DirtyKey::All]));
        told.add(&batch(vec![DirtyKey::Source(Kind::Secret, "y".into())]));
        assert_eq!(keys(&told), [DirtyKey::All]);
        // A handle tells every cluster, and only sources and "everything".
        let senders = Senders::default();
        let (one, two) = (Arc::new(Told::default()), Arc::new(Told::default()));
        senders.lock().unwrap().insert("one".into(), one.clone());
        senders.lock().unwrap().insert("two".into(), two.clone());
        let handle = Handle {
            clusters: senders,
            gate: Arc::new(WriteGate::single(CancellationToken::new())),
        };
        for _ in 0..100 {
            handle.tell(&batch(vec![
                DirtyKey::Source(Kind::Secret, "db".into()),
                DirtyKey::Namespace("team-a".into()),
            ]));
        }
        assert_eq!(keys(&one), [DirtyKey::Source(Kind::Secret, "db".into())]);
        assert_eq!(two.len(), 1);
    }

    // Issue 20: a remote cluster's propagation is measured from the first
    // change of the batches it was told, not from when its task takes them
    // (which is after the home quiet window D).
    #[tokio::test]
    async fn told_keys_keep_the_first_change_of_their_batches() {
        let told = Told::default();
        let first = tokio::time::Instant::now() - std::time::Duration::from_secs(5);
        let later = first + std::time::Duration::from_secs(2);
        let at = |keys: Vec<DirtyKey>, since| Batch { keys, since };
        told.add(&at(vec![DirtyKey::Source(Kind::Secret, "a".into())], later));
        told.add(&at(vec![DirtyKey::Source(Kind::Secret, "b".into())], first));
        told.add(&at(vec![DirtyKey::All], later));
        let taken = told.take().expect("a batch");
        assert_eq!(taken.keys, [DirtyKey::All]);
        assert_eq!(taken.since, first);
        // Taken: the next batch starts its own clock.
        told.add(&at(vec![DirtyKey::Source(Kind::Secret, "c".into())], later));
        assert_eq!(told.take().expect("a batch").since, later);
    }
}
