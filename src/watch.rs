//! Watchers and their caches (DESIGN §1).
//!
//! Three watches feed three small caches: the source Secrets (label-selected,
//! source namespace only), the namespaces (metadata only), and our replicas
//! (label-selected, metadata only). Events only mark keys dirty; the planner
//! reads the caches at flush time, so replays and create-then-delete bursts
//! cost nothing.
//!
//! Memory scales with what is replicated: sources are kept whole (rendered),
//! namespaces as labels plus a terminating flag, and replicas as a compact
//! [`ReplicaRecord`] built from their metadata alone (the replica watch is a
//! metadata watch: a copy's data never reaches the controller).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::batch::DirtyKey;
use crate::metrics::Metrics;
use crate::replica::{self, Replica};
use crate::targets::NamespaceInfo;

/// `(namespace, name)` of a replica.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A source as the planner needs it: identity, its annotations (target rules)
/// and the rendered copy.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRecord {
    pub uid: String,
    pub annotations: BTreeMap<String, String>,
    pub replica: Replica,
}

impl SourceRecord {
    pub fn from_secret(s: &Secret, source_namespace: &str) -> Option<(String, SourceRecord)> {
        let name = s.metadata.name.clone()?;
        // Defensive: the watch is label- and namespace-scoped, but a relist
        // or a test double must not be able to widen it.
        let labelled = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(replica::SOURCE_LABEL_KEY))
            .is_some_and(|v| v == replica::SOURCE_LABEL_VALUE);
        if !labelled || s.metadata.namespace.as_deref() != Some(source_namespace) {
            return None;
        }
        Some((
            name,
            SourceRecord {
                uid: s.metadata.uid.clone().unwrap_or_default(),
                annotations: control_annotations(s.metadata.annotations.as_ref()),
                replica: Replica::render(s, source_namespace),
            },
        ))
    }
}

/// Only our own control annotations (`push-to-k8s.io/...`) of a source: the
/// planner needs nothing else, and the rest can be large or sensitive
/// (`kubectl.kubernetes.io/last-applied-configuration` holds the whole Secret,
/// values included), so it is dropped at ingest. The copy's annotations are
/// rendered into [`Replica`] (which drops kubectl's record as well).
pub fn control_annotations(all: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    all.into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(replica::CONTROL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Labels or annotations of a replica: `(key, value)` pairs sorted by key, in
/// one allocation. A `BTreeMap` allocates a ~540-byte node even for a single
/// entry; with two maps per replica that was half of the replica cache: a
/// record took 2,072 bytes with maps, 1,102 with pairs (docs/benchmarks.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairs(Box<[(String, String)]>);

impl Pairs {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Set `key` to `value` (reallocates: for tests and rare paths).
    pub fn insert(&mut self, key: String, value: String) {
        let mut v = std::mem::take(&mut self.0).into_vec();
        match v.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => v[i].1 = value,
            Err(i) => v.insert(i, (key, value)),
        }
        self.0 = v.into_boxed_slice();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl From<BTreeMap<String, String>> for Pairs {
    fn from(map: BTreeMap<String, String>) -> Pairs {
        // A BTreeMap iterates in key order: already sorted.
        Pairs(map.into_iter().collect())
    }
}

/// What we remember about one of our replicas: enough to decide "in sync",
/// "update", "replace" or "delete" from its metadata alone (the replica watch
/// never receives, let alone holds, a copy's data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// Name of the source (in the configured source namespace).
    pub source: String,
    pub uid: String,
    pub resource_version: String,
    /// Our content-hash annotation as found on the object: what our last
    /// write set, type, data and immutability included.
    pub hash: Option<String>,
    /// Whether anyone changed the content since (from its managed fields).
    pub content: Content,
    pub labels: Pairs,
    /// Annotations, without kubectl's apply record (which can be large).
    pub annotations: Pairs,
}

/// What a copy's managed fields say about its content (type, data,
/// immutability), whose values the metadata watch does not carry.
///
/// The API server records, per field manager, which fields it set. Whoever
/// changes a data key takes that key over (an update) or must force it away
/// from us (an apply); whoever removes one takes it from us. So our content
/// hash annotation describes the data exactly while our field manager still
/// owns every key we set and nobody else owns one we do not.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Content {
    /// [`replica::keys_hash`] of the data keys our field manager owns.
    pub our_keys: String,
    /// Another manager owns a data key, or `immutable`, that we do not.
    pub foreign: bool,
    /// `immutable` is set on the copy (by us or anyone): only a delete and a
    /// create can change it.
    pub immutable: bool,
}

impl Content {
    pub fn from_managed_fields(entries: Option<&Vec<ManagedFieldsEntry>>) -> Content {
        let (mut ours, mut theirs) = (BTreeSet::new(), BTreeSet::new());
        let mut our_immutable = false;
        for entry in entries.into_iter().flatten() {
            let Some(fields) = entry.fields_v1.as_ref().map(|f| &f.0) else {
                continue;
            };
            let keys = field_names(fields.get("f:data"));
            let immutable = fields.get("f:immutable").is_some();
            if entry.manager.as_deref() == Some(replica::FIELD_MANAGER) {
                ours.extend(keys);
                our_immutable |= immutable;
            } else {
                theirs.extend(keys);
            }
        }
        // Ownership of `immutable` says who set the field, not its value. We
        // set it only to `true` (`Replica::to_secret`), so our ownership means
        // true. Another manager's may be `false`, and making a copy immutable
        // does not change its content anyway: if it is `true`, the next
        // update is refused as immutable and the writer replaces the copy.
        Content {
            our_keys: replica::keys_hash(ours.iter().copied()),
            foreign: theirs.difference(&ours).next().is_some(),
            immutable: our_immutable,
        }
    }
}

/// The names of the fields a managed-fields set (`fieldsV1`) holds under one
/// map: `{"f:a": {}, "f:b": {}, ".": {}}` gives `a`, `b`.
pub fn field_names(set: Option<&serde_json::Value>) -> impl Iterator<Item = &str> {
    set.and_then(serde_json::Value::as_object)
        .into_iter()
        .flat_map(|m| m.keys())
        .filter_map(|k| k.strip_prefix("f:"))
}

impl ReplicaRecord {
    /// A record for the object with `meta` if it is ours: it carries our
    /// managed-by label *and* a source annotation naming the configured
    /// source namespace.
    pub fn from_meta(
        meta: &ObjectMeta,
        source_namespace: &str,
    ) -> Option<(ObjectKey, ReplicaRecord)> {
        let source = owned_source(meta, source_namespace)?;
        let key = ObjectKey {
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
        };
        let mut annotations = meta.annotations.clone().unwrap_or_default();
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        Some((
            key,
            ReplicaRecord {
                source,
                uid: meta.uid.clone().unwrap_or_default(),
                resource_version: meta.resource_version.clone().unwrap_or_default(),
                hash: annotations.get(replica::HASH_ANNOTATION).cloned(),
                content: Content::from_managed_fields(meta.managed_fields.as_ref()),
                labels: meta.labels.clone().unwrap_or_default().into(),
                annotations: annotations.into(),
            },
        ))
    }
}

/// The source name if `meta` is one of our copies; `None` for anything we
/// must not touch. The ownership rules (docs/architecture.md, "Ownership"):
/// an object is a copy only if
/// - it carries our managed-by label,
/// - its source annotation names a source in the configured source namespace,
/// - its name is the name that source asks for (today: the source's own name),
///   so a renamed backup of a copy (`db-old`, markers and all) is not one,
/// - it is not in the source namespace, and
/// - it does not carry the source label,
///
/// so a source restored from an exported copy, or a marked backup parked
/// beside the sources, can never be taken for a copy and deleted.
pub fn owned_source(meta: &ObjectMeta, source_namespace: &str) -> Option<String> {
    let labels = meta.labels.as_ref()?;
    let managed = labels
        .get(replica::MANAGED_LABEL_KEY)
        .is_some_and(|v| v == replica::MANAGED_LABEL_VALUE);
    if !managed || labels.contains_key(replica::SOURCE_LABEL_KEY) {
        return None;
    }
    if meta.namespace.as_deref() == Some(source_namespace) {
        return None;
    }
    let origin = meta.annotations.as_ref()?.get(replica::SOURCE_ANNOTATION)?;
    let (ns, name) = origin.split_once('/')?;
    let named_as_asked = meta.name.as_deref() == Some(name);
    (ns == source_namespace && !name.is_empty() && named_as_asked).then(|| name.to_string())
}

pub fn namespace_info(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> NamespaceInfo {
    NamespaceInfo {
        labels: meta.labels.clone().unwrap_or_default(),
        terminating: meta.deletion_timestamp.is_some(),
    }
}

/// A map shared between one watcher (writer) and the planner (reader).
pub struct Cache<K, V> {
    map: RwLock<HashMap<K, V>>,
    synced: AtomicBool,
    /// While a resync lists: the keys the watch (or a write) set since the
    /// list began. Their cached values are at least as new as anything the
    /// list can say, so [`Cache::reconcile`] leaves them alone.
    listing: Mutex<Option<HashSet<K>>>,
}

impl<K: Eq + Hash + Clone, V: Clone + PartialEq> Cache<K, V> {
    pub fn new() -> Self {
        Cache {
            map: RwLock::new(HashMap::new()),
            synced: AtomicBool::new(false),
            listing: Mutex::new(None),
        }
    }

    /// A resync is about to list: from now on remember which keys change,
    /// until [`Cache::reconcile`].
    pub fn begin_list(&self) {
        *self.listing.lock().expect("cache lock") = Some(HashSet::new());
    }

    fn touched(&self, k: &K) {
        if let Some(keys) = self.listing.lock().expect("cache lock").as_mut() {
            keys.insert(k.clone());
        }
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.map.read().expect("cache lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, k: &K) -> Option<V> {
        self.map.read().expect("cache lock").get(k).cloned()
    }

    /// Run `f` over the current contents without copying them.
    pub fn read<R>(&self, f: impl FnOnce(&HashMap<K, V>) -> R) -> R {
        f(&self.map.read().expect("cache lock"))
    }

    /// Insert or remove one entry; returns the previous value if it differs.
    pub fn set(&self, k: K, v: Option<V>) -> Change<V> {
        let mut map = self.map.write().expect("cache lock");
        self.touched(&k);
        let old = match v {
            Some(v) => {
                if map.get(&k) == Some(&v) {
                    return Change::None;
                }
                map.insert(k, v.clone())
            }
            None => match map.remove(&k) {
                Some(old) => return Change::Removed(old),
                None => return Change::None,
            },
        };
        Change::Set(old)
    }

    /// Replace everything (after a full list); returns the keys whose value
    /// changed, appeared or disappeared, with their old and new values.
    pub fn replace(&self, fresh: HashMap<K, V>) -> Vec<(K, Option<V>, Option<V>)> {
        let mut map = self.map.write().expect("cache lock");
        let mut changed = Vec::new();
        for (k, old) in map.iter() {
            match fresh.get(k) {
                Some(new) if new == old => {}
                new => changed.push((k.clone(), Some(old.clone()), new.cloned())),
            }
        }
        for (k, new) in fresh.iter() {
            if !map.contains_key(k) {
                changed.push((k.clone(), None, Some(new.clone())));
            }
        }
        *map = fresh;
        self.synced.store(true, Ordering::Release);
        changed
    }
    /// [`Cache::replace`] for a full list given in two parts: `same`, the keys
    /// listed with a record equal to the cached one (compared page by page as
    /// the list came in), and `differ`, the records that are new or differ.
    /// Keys in neither are gone. So a resync never holds a second copy of the
    /// cache: at 20,000 replicas that copy was ~40 MiB (`benches/scale.rs`).
    ///
    /// The list is older than anything the watch delivered after it began
    /// ([`Cache::begin_list`]): a key the watch set or removed meanwhile keeps
    /// the watch's value, whatever the list says (an object created during
    /// the list is not dropped, nor a newer value overwritten by an older one).
    pub fn reconcile(
        &self,
        same: HashSet<K>,
        differ: HashMap<K, V>,
    ) -> Vec<(K, Option<V>, Option<V>)> {
        let mut map = self.map.write().expect("cache lock");
        let newer = self
            .listing
            .lock()
            .expect("cache lock")
            .take()
            .unwrap_or_default();
        let mut changed = Vec::new();
        map.retain(|k, old| {
            let keep = same.contains(k) || differ.contains_key(k) || newer.contains(k);
            if !keep {
                changed.push((k.clone(), Some(old.clone()), None));
            }
            keep
        });
        for (k, new) in differ {
            if newer.contains(&k) {
                continue;
            }
            match map.get(&k) {
                Some(old) if *old == new => {}
                old => {
                    changed.push((k.clone(), old.cloned(), Some(new.clone())));
                    map.insert(k, new);
                }
            }
        }
        self.synced.store(true, Ordering::Release);
        changed
    }
}

impl<K: Eq + Hash + Clone, V: Clone + PartialEq> Default for Cache<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

pub enum Change<V> {
    None,
    /// Inserted or updated; carries the previous value, if any.
    Set(Option<V>),
    Removed(V),
}

/// The three caches together.
pub struct Caches {
    pub sources: Arc<Cache<String, SourceRecord>>,
    pub namespaces: Arc<Cache<String, NamespaceInfo>>,
    pub replicas: Arc<Cache<ObjectKey, ReplicaRecord>>,
}

impl Caches {
    pub fn new() -> Self {
        Caches {
            sources: Arc::default(),
            namespaces: Arc::default(),
            replicas: Arc::default(),
        }
    }

    pub fn synced(&self) -> bool {
        self.sources.synced() && self.namespaces.synced() && self.replicas.synced()
    }
}

impl Default for Caches {
    fn default() -> Self {
        Self::new()
    }
}

/// A change of a replica re-plans its source.
pub fn replica_dirty(
    _: &ObjectKey,
    old: Option<&ReplicaRecord>,
    new: Option<&ReplicaRecord>,
) -> Option<DirtyKey> {
    new.or(old).map(|r| DirtyKey::Source(r.source.clone()))
}

/// Drive one watch into `cache`, sending a dirty key for every real change,
/// and report how it fares to `health`. (Re)lists are applied atomically at
/// `InitDone`, so objects deleted while the watch was down are noticed too.
///
/// `watch` makes a fresh watcher stream (a list, then a watch). After an
/// error the stream is dropped and, after a backoff, a fresh one lists
/// again: a resumed watch delivers nothing until something changes, so only
/// a list can show that the watch works again (see [`crate::http::Health`]).
/// Every watch runs through this loop, so none can be left out of `/readyz`.
#[allow(clippy::too_many_arguments)]
pub async fn run<K, Key, V, S>(
    what: &'static str,
    watch: impl Fn() -> S,
    cache: Arc<Cache<Key, V>>,
    transform: impl Fn(&K) -> Option<(Key, V)>,
    key_of: impl Fn(&K) -> Option<Key>,
    dirty_of: impl Fn(&Key, Option<&V>, Option<&V>) -> Option<DirtyKey>,
    dirty: UnboundedSender<DirtyKey>,
    metrics: Arc<Metrics>,
    health: Arc<crate::http::Health>,
    shutdown: CancellationToken,
) where
    K: Send,
    Key: Eq + Hash + Clone,
    V: Clone + PartialEq,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    // However this loop ends (shutdown, a panic), `/readyz` hears of it.
    let _stopped = WatchStopped(&health, what);
    let emit = |k: &Key, old: Option<&V>, new: Option<&V>| {
        if let Some(d) = dirty_of(k, old, new) {
            let _ = dirty.send(d);
        }
    };
    let mut failures = 0u32;
    loop {
        let started = tokio::time::Instant::now();
        let error = {
            let mut stream = std::pin::pin!(watch());
            let mut buffer: Option<HashMap<Key, V>> = None;
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = stream.next() => next,
                };
                let next = match next {
                    Some(Ok(event)) => event,
                    Some(Err(e)) => break describe_watch_error(&e),
                    None => break "watch stream ended".to_string(),
                };
                match next {
                    Event::Init => buffer = Some(HashMap::new()),
                    Event::InitApply(obj) => {
                        if let (Some(buf), Some((k, v))) = (buffer.as_mut(), transform(&obj)) {
                            buf.insert(k, v);
                        }
                    }
                    Event::InitDone => {
                        let fresh = buffer.take().unwrap_or_default();
                        let first = !cache.synced();
                        let changed = cache.replace(fresh);
                        tracing::debug!(
                            watch = what,
                            objects = cache.len(),
                            changed = changed.len(),
                            "watch (re)listed"
                        );
                        if !first {
                            for (k, old, new) in &changed {
                                emit(k, old.as_ref(), new.as_ref());
                            }
                        }
                        health.watch_listed(what);
                    }
                    Event::Apply(obj) => {
                        metrics
                            .watch_events
                            .get_or_create(&crate::metrics::WatchLabels { watch: what })
                            .inc();
                        health.watch_event(what);
                        match transform(&obj) {
                            Some((k, v)) => {
                                if let Change::Set(old) = cache.set(k.clone(), Some(v.clone())) {
                                    emit(&k, old.as_ref(), Some(&v));
                                }
                            }
                            // No longer one of ours (e.g. its marker was removed): forget it.
                            None => {
                                if let Some(k) = key_of(&obj)
                                    && let Change::Removed(old) = cache.set(k.clone(), None)
                                {
                                    emit(&k, Some(&old), None);
                                }
                            }
                        }
                    }
                    Event::Delete(obj) => {
                        metrics
                            .watch_events
                            .get_or_create(&crate::metrics::WatchLabels { watch: what })
                            .inc();
                        health.watch_event(what);
                        if let Some(k) = key_of(&obj)
                            && let Change::Removed(old) = cache.set(k.clone(), None)
                        {
                            emit(&k, Some(&old), None);
                        }
                    }
                }
            }
        };
        metrics
            .watch_errors
            .get_or_create(&crate::metrics::WatchLabels { watch: what })
            .inc();
        health.watch_failed(what, error.clone());
        // A watch that had been working for a while starts its backoff over.
        if started.elapsed() > WATCH_BACKOFF_RESET {
            failures = 0;
        }
        let delay = watch_backoff(failures);
        failures = failures.saturating_add(1);
        tracing::warn!(
            watch = what,
            error = %error,
            retry_in_s = delay.as_secs(),
            "watch failed; listing again after a backoff"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Watcher settings: a server-side timeout well under the default so a watch
/// that silently stalls is re-established within minutes, not never.
pub fn config(labels: Option<&str>) -> watcher::Config {
    let c = watcher::Config::default().timeout(240);
    match labels {
        Some(l) => c.labels(l),
        None => c,
    }
}

pub fn key_of_meta(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ObjectKey> {
    Some(ObjectKey {
        namespace: meta.namespace.clone()?,
        name: meta.name.clone()?,
    })
}

/// Spawn the three watchers. `watch_sources = false` (ENABLE_SECRET_WATCHER)
/// leaves the source cache to the periodic resync.
#[allow(clippy::too_many_arguments)]
pub fn spawn_all(
    client: kube::Client,
    source_namespace: &str,
    watch_sources: bool,
    caches: Arc<Caches>,
    dirty: UnboundedSender<DirtyKey>,
    metrics: Arc<Metrics>,
    health: Arc<crate::http::Health>,
    shutdown: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let ns = source_namespace.to_string();
    if watch_sources {
        let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let stream = move || watcher::watcher(api.clone(), config(Some(replica::SOURCE_SELECTOR)));
        let (c, d, m, h, s, ns2) = (
            caches.clone(),
            dirty.clone(),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
            ns.clone(),
        );
        tasks.push(tokio::spawn(async move {
            run(
                "sources",
                stream,
                c.sources.clone(),
                move |o: &Secret| SourceRecord::from_secret(o, &ns2),
                |o: &Secret| o.metadata.name.clone(),
                |name: &String, _: Option<&SourceRecord>, _: Option<&SourceRecord>| {
                    Some(DirtyKey::Source(name.clone()))
                },
                d,
                m,
                h,
                s,
            )
            .await
        }));
    }
    {
        // Metadata only: labels and deletion state are all we need.
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
        let stream = move || watcher::watcher(api.clone(), config(None));
        let (c, d, m, h, s) = (
            caches.clone(),
            dirty.clone(),
            metrics.clone(),
            health.clone(),
            shutdown.clone(),
        );
        tasks.push(tokio::spawn(async move {
            run(
                "namespaces",
                stream,
                c.namespaces.clone(),
                |o: &PartialObjectMeta<Namespace>| {
                    Some((o.metadata.name.clone()?, namespace_info(&o.metadata)))
                },
                |o: &PartialObjectMeta<Namespace>| o.metadata.name.clone(),
                |name: &String, _: Option<&NamespaceInfo>, _: Option<&NamespaceInfo>| {
                    Some(DirtyKey::Namespace(name.clone()))
                },
                d,
                m,
                h,
                s,
            )
            .await
        }));
    }
    {
        // Metadata only: a copy's data never reaches us (see [`Content`]).
        let api: Api<PartialObjectMeta<Secret>> = Api::all(client);
        let stream = move || watcher::watcher(api.clone(), config(Some(replica::MANAGED_SELECTOR)));
        let (c, d, m, h, s) = (caches, dirty, metrics, health, shutdown);
        tasks.push(tokio::spawn(async move {
            run(
                "replicas",
                stream,
                c.replicas.clone(),
                move |o: &PartialObjectMeta<Secret>| ReplicaRecord::from_meta(&o.metadata, &ns),
                |o: &PartialObjectMeta<Secret>| key_of_meta(&o.metadata),
                replica_dirty,
                d,
                m,
                h,
                s,
            )
            .await
        }));
    }
    tasks
}

/// A failed watch waits this long before it lists again: 1, 2, 4 ... 30 s.
pub fn watch_backoff(failures: u32) -> std::time::Duration {
    std::time::Duration::from_secs(1u64 << failures.min(5)).min(WATCH_BACKOFF_MAX)
}

const WATCH_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// A watch that worked this long before failing starts its backoff over.
const WATCH_BACKOFF_RESET: std::time::Duration = std::time::Duration::from_secs(60);

/// Tells `health` when the loop of watch `.1` ends, however it ends.
struct WatchStopped<'a>(&'a crate::http::Health, &'static str);

impl Drop for WatchStopped<'_> {
    fn drop(&mut self) {
        self.0.watch_stopped(self.1);
    }
}

/// A watch error in a few words, for the log and `/readyz`: the API's code
/// and reason, never its message (which may quote an object).
pub fn describe_watch_error(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(e) => format!("list failed: {}", describe_error(e)),
        watcher::Error::WatchStartFailed(e) => {
            format!("watch failed to start: {}", describe_error(e))
        }
        watcher::Error::WatchError(s) => format!("watch error: {} {}", s.code, s.reason),
        watcher::Error::WatchFailed(e) => format!("watch stream failed: {}", describe_error(e)),
        watcher::Error::NoResourceVersion => "no resourceVersion in the watch result".into(),
    }
}

/// A request error in a few words: for an API error its code and reason
/// only (a server message may quote the object it rejects); for a transport
/// error its cause chain, which carries no object content.
pub fn describe_error(e: &kube::Error) -> String {
    if let kube::Error::Api(s) = e {
        return format!("{} {}", s.code, s.reason);
    }
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text = format!("{text}: {c_text}");
        }
        cause = c.source();
    }
    text.replace(['\n', '\r'], " ")
}

/// Test support: a managed-fields entry of `manager` owning `data_keys` (and
/// `immutable`), as the API server records it.
#[cfg(test)]
pub fn managed_entry(manager: &str, data_keys: &[&str], immutable: bool) -> ManagedFieldsEntry {
    let mut fields = serde_json::json!({});
    if !data_keys.is_empty() {
        let keys: serde_json::Map<String, serde_json::Value> = data_keys
            .iter()
            .map(|k| (format!("f:{k}"), serde_json::json!({})))
            .collect();
        fields["f:data"] = serde_json::Value::Object(keys);
    }
    if immutable {
        fields["f:immutable"] = serde_json::json!({});
    }
    ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some("Apply".into()),
        api_version: Some("v1".into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
            fields,
        )),
        ..Default::default()
    }
}

/// Test support: `s` as our write leaves it on the server (managed fields).
#[cfg(test)]
pub fn as_written_by_us(mut s: Secret) -> Secret {
    let keys: Vec<&str> = s.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
    let entry = managed_entry(replica::FIELD_MANAGER, &keys, s.immutable == Some(true));
    s.metadata.managed_fields = Some(vec![entry]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        ObjectMeta {
            name: Some("db".into()),
            namespace: Some("team-a".into()),
            labels: map(labels),
            annotations: map(annotations),
            ..Default::default()
        }
    }

    #[test]
    fn ours_needs_the_label_and_a_source_in_our_namespace() {
        let managed = (replica::MANAGED_LABEL_KEY, replica::MANAGED_LABEL_VALUE);
        let cases: &[(ObjectMeta, Option<&str>)] = &[
            (
                meta(&[managed], &[(replica::SOURCE_ANNOTATION, "src/db")]),
                Some("db"),
            ),
            // No label: somebody else's, whatever the annotation says.
            (meta(&[], &[(replica::SOURCE_ANNOTATION, "src/db")]), None),
            // Another controller's source namespace, or one that merely starts like ours.
            (
                meta(&[managed], &[(replica::SOURCE_ANNOTATION, "other/db")]),
                None,
            ),
            (
                meta(&[managed], &[(replica::SOURCE_ANNOTATION, "src-2/db")]),
                None,
            ),
            // Label without (or with a malformed) source annotation.
            (meta(&[managed], &[]), None),
            (
                meta(&[managed], &[(replica::SOURCE_ANNOTATION, "src/")]),
                None,
            ),
            (
                meta(&[managed], &[(replica::SOURCE_ANNOTATION, "src")]),
                None,
            ),
            (
                meta(
                    &[(replica::MANAGED_LABEL_KEY, "helm")],
                    &[(replica::SOURCE_ANNOTATION, "src/db")],
                ),
                None,
            ),
        ];
        for (m, want) in cases {
            assert_eq!(owned_source(m, "src").as_deref(), *want, "{m:?}");
        }
    }

    #[test]
    fn cache_reports_only_real_changes() {
        let c: Cache<String, u32> = Cache::new();
        assert!(matches!(c.set("a".into(), Some(1)), Change::Set(None)));
        assert!(matches!(c.set("a".into(), Some(1)), Change::None));
        assert!(matches!(c.set("a".into(), Some(2)), Change::Set(Some(1))));
        assert!(matches!(c.set("b".into(), None), Change::None));
        assert!(matches!(c.set("a".into(), None), Change::Removed(2)));
        assert!(!c.synced());
    }

    #[test]
    fn relist_replaces_atomically_and_names_every_difference() {
        let c: Cache<String, u32> = Cache::new();
        c.set("same".into(), Some(1));
        c.set("changed".into(), Some(1));
        c.set("gone".into(), Some(1));
        let fresh = HashMap::from([
            ("same".to_string(), 1),
            ("changed".to_string(), 2),
            ("new".to_string(), 3),
        ]);
        let mut diff = c.replace(fresh);
        diff.sort();
        assert_eq!(
            diff,
            vec![
                ("changed".to_string(), Some(1), Some(2)),
                ("gone".to_string(), Some(1), None),
                ("new".to_string(), None, Some(3)),
            ]
        );
        assert!(c.synced());
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn reconcile_from_pages_matches_replace() {
        let c: Cache<String, u32> = Cache::new();
        c.set("same".into(), Some(1));
        c.set("changed".into(), Some(1));
        c.set("gone".into(), Some(1));
        let same = HashSet::from(["same".to_string()]);
        let differ = HashMap::from([("changed".to_string(), 2), ("new".to_string(), 3)]);
        let mut diff = c.reconcile(same, differ);
        diff.sort();
        assert_eq!(
            diff,
            vec![
                ("changed".to_string(), Some(1), Some(2)),
                ("gone".to_string(), Some(1), None),
                ("new".to_string(), None, Some(3)),
            ]
        );
        assert!(c.synced());
        assert_eq!(c.get(&"same".to_string()), Some(1));
        assert_eq!(c.get(&"changed".to_string()), Some(2));
        assert_eq!(c.len(), 3);
        // Listed as equal, but the watch moved it on meanwhile: its value stays.
        c.set("same".into(), Some(5));
        let diff = c.reconcile(
            HashSet::from(["same".to_string(), "changed".to_string(), "new".to_string()]),
            HashMap::new(),
        );
        assert!(diff.is_empty());
        assert_eq!(c.get(&"same".to_string()), Some(5));
    }

    // Issue 7, defect 3: what the watch set while a resync listed is newer
    // than the list, so the resync must neither drop it nor overwrite it.
    #[test]
    fn resync_keeps_what_the_watch_added_while_it_listed() {
        let c: Cache<String, u32> = Cache::new();
        c.set("old".into(), Some(1));
        c.set("updated".into(), Some(1));
        c.set("deleted".into(), Some(1));
        c.begin_list();
        // The list is served here: it has old=1, updated=1, deleted=1.
        let same = HashSet::from(["old".to_string()]);
        let differ = HashMap::from([("updated".to_string(), 1), ("deleted".to_string(), 1)]);
        // Then the watch delivers what happened after the list.
        c.set("new-namespace".into(), Some(1));
        c.set("updated".into(), Some(2));
        c.set("deleted".into(), None);
        let diff = c.reconcile(same, differ);
        assert_eq!(diff, vec![], "the resync corrected nothing");
        assert_eq!(c.get(&"new-namespace".to_string()), Some(1));
        assert_eq!(c.get(&"updated".to_string()), Some(2));
        assert_eq!(c.get(&"deleted".to_string()), None);
        // The next resync (no watch event meanwhile) trusts its list again.
        c.begin_list();
        let diff = c.reconcile(HashSet::from(["old".to_string()]), HashMap::new());
        assert_eq!(diff.len(), 2);
    }

    // Issue 7, defect 11: kubectl's apply record holds the whole Secret,
    // values included; a source record (a `Debug` type) must not keep it.
    #[test]
    fn source_record_drops_the_kubectl_apply_record_at_ingest() {
        let value = "s3cr3t-value-in-apply-record";
        let s = Secret {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("src".into()),
                labels: Some(BTreeMap::from([(
                    replica::SOURCE_LABEL_KEY.to_string(),
                    replica::SOURCE_LABEL_VALUE.to_string(),
                )])),
                annotations: Some(BTreeMap::from([
                    (
                        "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                        format!(r#"{{"stringData":{{"k":"{value}"}}}}"#),
                    ),
                    (
                        "push-to-k8s.io/namespaces".to_string(),
                        "team-*".to_string(),
                    ),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        let (_, rec) = SourceRecord::from_secret(&s, "src").unwrap();
        assert!(!format!("{rec:?}").contains(value), "{rec:?}");
        assert_eq!(
            rec.annotations.keys().collect::<Vec<_>>(),
            ["push-to-k8s.io/namespaces"]
        );
    }

    #[test]
    fn pairs_look_up_and_insert_in_key_order() {
        let mut p = Pairs::from(BTreeMap::from([
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]));
        assert_eq!(p.get("a").map(String::as_str), Some("1"));
        assert_eq!(p.get("b").map(String::as_str), Some("2"));
        assert_eq!(p.get("c"), None);
        p.insert("c".into(), "3".into());
        p.insert("a".into(), "x".into());
        p.insert("0".into(), "0".into());
        let all: Vec<_> = p.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(all, ["0=0", "a=x", "b=2", "c=3"]);
        assert_eq!(p.get("a").map(String::as_str), Some("x"));
    }

    #[test]
    fn content_tells_from_managed_fields_whether_anyone_changed_the_data() {
        use replica::FIELD_MANAGER as US;
        let keys = |k: &[&str]| replica::keys_hash(k.iter().copied());
        let content =
            |entries: Vec<ManagedFieldsEntry>| Content::from_managed_fields(Some(&entries));
        // (entries, our keys, foreign, immutable)
        type Case<'a> = (&'a str, Vec<ManagedFieldsEntry>, &'a [&'a str], bool, bool);
        let cases: Vec<Case> = vec![
            (
                "as we wrote it",
                vec![managed_entry(US, &["j", "k"], false)],
                &["j", "k"],
                false,
                false,
            ),
            // Our create (an update entry) and a later apply: the union is ours.
            (
                "create then apply",
                vec![
                    managed_entry(US, &["k"], false),
                    managed_entry(US, &["j"], false),
                ],
                &["j", "k"],
                false,
                false,
            ),
            // Someone changed k: it moved to them (seen on a real API server).
            (
                "a key edited",
                vec![
                    managed_entry("kubectl-edit", &["k"], false),
                    managed_entry(US, &["j"], false),
                ],
                &["j"],
                true,
                false,
            ),
            // Someone removed j: it is gone from our set, nobody else gained it.
            (
                "a key removed",
                vec![managed_entry(US, &["k"], false)],
                &["k"],
                false,
                false,
            ),
            (
                "a key added",
                vec![
                    managed_entry(US, &["j", "k"], false),
                    managed_entry("kubectl-patch", &["x"], false),
                ],
                &["j", "k"],
                true,
                false,
            ),
            // Applied with the same value by someone else: shared, not a change.
            (
                "a key co-owned",
                vec![
                    managed_entry(US, &["j", "k"], false),
                    managed_entry("kubectl", &["k"], false),
                ],
                &["j", "k"],
                false,
                false,
            ),
            // Someone else owns `immutable`: its value is unknown (often
            // `false`); not a content change, not known to be immutable.
            (
                "immutable set by someone else",
                vec![
                    managed_entry(US, &["k"], false),
                    managed_entry("other", &[], true),
                ],
                &["k"],
                false,
                false,
            ),
            (
                "immutable as we wrote it",
                vec![managed_entry(US, &["k"], true)],
                &["k"],
                false,
                true,
            ),
            // Managed fields wiped: nothing is known to be ours.
            ("no managed fields", vec![], &[], false, false),
        ];
        for (what, entries, our_keys, foreign, immutable) in cases {
            let c = content(entries);
            assert_eq!(c.our_keys, keys(our_keys), "{what}: our keys");
            assert_eq!(c.foreign, foreign, "{what}: foreign");
            assert_eq!(c.immutable, immutable, "{what}: immutable");
        }
    }
}
