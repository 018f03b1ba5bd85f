//! The caches the watches fill and the planner reads: one small map per
//! tracked kind, shared between its watcher (writer) and the planner
//! (reader), with the change tracking a resync needs.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::kinds::Kind;
use crate::model::records::{ObjectKey, ReplicaRecord, SourceRecord};
use crate::model::rules::NamespaceInfo;

/// A map shared between one watcher (writer) and the planner (reader).
pub struct Cache<K, V> {
    map: RwLock<HashMap<K, V>>,
    synced: AtomicBool,
    /// While a resync lists: the keys the watch (or a write) set since the
    /// list began. Their cached values are at least as new as anything the
    /// list can say, so [`Cache::reconcile`] leaves them alone.
    listing: Mutex<Option<HashSet<K>>>,
    /// Counts the changes: the same number twice means nothing changed in
    /// between (a PushRule's status is not computed again for nothing).
    generation: AtomicU64,
}

impl<K: Eq + Hash + Clone, V: Clone + PartialEq> Cache<K, V> {
    pub fn new() -> Self {
        Cache {
            map: RwLock::new(HashMap::new()),
            synced: AtomicBool::new(false),
            listing: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    /// How many times the contents changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
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
                Some(old) => {
                    self.changed();
                    return Change::Removed(old);
                }
                None => return Change::None,
            },
        };
        self.changed();
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
        self.changed();
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
        self.changed();
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

/// The sources of one kind and our copies of them.
pub struct KindCaches {
    pub kind: Kind,
    pub sources: Arc<Cache<String, SourceRecord>>,
    pub replicas: Arc<Cache<ObjectKey, ReplicaRecord>>,
}

impl KindCaches {
    fn new(kind: Kind) -> KindCaches {
        KindCaches {
            kind,
            sources: Arc::default(),
            replicas: Arc::default(),
        }
    }

    pub fn synced(&self) -> bool {
        self.sources.synced() && self.replicas.synced()
    }

    /// The sources that ask for copies named `copy_name` (their own name,
    /// or the one their `copy-name` annotation gives), in name order.
    pub fn sources_asking(&self, copy_name: &str) -> Vec<String> {
        let mut names: Vec<String> = self.sources.read(|sources| {
            sources
                .iter()
                .filter(|(_, s)| s.replica.name == copy_name)
                .map(|(name, _)| name.clone())
                .collect()
        });
        names.sort_unstable();
        names
    }

    /// The source of the copy `key`: the one its record names, or, for a
    /// copy not made yet, the source that asks for that name.
    pub fn source_of(&self, key: &ObjectKey) -> Option<String> {
        if let Some(r) = self.replicas.get(key) {
            return Some(r.source.into());
        }
        self.sources.read(|sources| {
            sources
                .iter()
                .find(|(_, s)| s.replica.name == key.name)
                .map(|(name, _)| name.clone())
        })
    }
}

/// The metadata a `kind` object is planned with, or `None` if not a source.
pub type SourceView = Box<dyn Fn(Kind, &ObjectMeta) -> Option<ObjectMeta> + Send + Sync>;

/// How a pipeline that serves PushRules reads its source namespace
/// ([`crate::targets::rules`]): which objects there are sources, planned
/// with what metadata, and which copies are its own.
pub struct Ruled {
    /// The metadata a `kind` object is planned with, or `None` if no rule picks it.
    pub source: SourceView,
    /// Whether a copy of a source in this namespace belongs to a rule held
    /// here: a copy of a rule that is not (deleted while we were down, or
    /// missing from a listing) is left alone, never deleted.
    pub owns: Box<dyn Fn(&ObjectMeta) -> bool + Send + Sync>,
}

/// Every cache: the namespaces, and per kind its sources and copies.
pub struct Caches {
    pub namespaces: Arc<Cache<String, NamespaceInfo>>,
    /// This cluster's namespaces (the same cache as `namespaces` here; the
    /// home cluster's, shared, in a remote cluster's caches): where the
    /// source namespace is seen (see [`Caches::source_namespace_lost`]).
    home_namespaces: Arc<Cache<String, NamespaceInfo>>,
    kinds: [KindCaches; 2],
    /// Set for a pipeline serving PushRules; `None`: labelled sources.
    pub ruled: Option<Arc<Ruled>>,
}

impl Caches {
    pub fn new() -> Self {
        let namespaces: Arc<Cache<String, NamespaceInfo>> = Arc::default();
        Caches {
            home_namespaces: namespaces.clone(),
            namespaces,
            kinds: Kind::ALL.map(KindCaches::new),
            ruled: None,
        }
    }

    /// Why nothing may be deleted now: the source namespace `source_namespace`
    /// is being deleted, or is not there (docs/architecture.md, "Losing the
    /// source namespace"). Its deletion deletes every source, which would
    /// otherwise make every copy in every cluster look orphaned. Before the
    /// namespace cache has listed, it is not known to be there either.
    pub fn source_namespace_lost(&self, source_namespace: &str) -> Option<String> {
        match self.home_namespaces.get(&source_namespace.to_string()) {
            Some(info) if info.terminating => Some(format!(
                "source namespace {source_namespace} is being deleted: no copy is deleted"
            )),
            Some(_) => None,
            None => Some(format!(
                "source namespace {source_namespace} does not exist: no copy is deleted"
            )),
        }
    }

    pub fn of(&self, kind: Kind) -> &KindCaches {
        &self.kinds[Kind::ALL
            .iter()
            .position(|k| *k == kind)
            .expect("every kind has caches")]
    }

    /// A kind that is switched off: nothing is watched, its caches stay
    /// empty and count as synced.
    pub fn switch_off(&self, kind: Kind) {
        let c = self.of(kind);
        c.sources.replace(HashMap::new());
        c.replicas.replace(HashMap::new());
    }

    /// Caches for an instance tracking the copies of `kinds` and the
    /// sources of `source_kinds`: the rest stay empty and count as synced (a
    /// kind whose copies are tracked without its sources is being cleaned
    /// up: every copy looks orphaned).
    pub fn for_kinds(kinds: &[Kind], source_kinds: &[Kind]) -> Caches {
        let caches = Caches::new();
        for kind in Kind::ALL {
            if !kinds.contains(&kind) {
                caches.switch_off(kind);
            } else if !source_kinds.contains(&kind) {
                caches.of(kind).sources.replace(HashMap::new());
            }
        }
        caches
    }

    /// Caches for a remote cluster: its own namespaces and copies (of
    /// `kinds`; the others count as synced and empty), and `home`'s sources,
    /// shared, not copied: every cluster is planned from the same sources.
    pub fn sharing_sources(&self, kinds: &[Kind]) -> Caches {
        let caches = Caches {
            namespaces: Arc::default(),
            home_namespaces: self.home_namespaces.clone(),
            kinds: Kind::ALL.map(|kind| KindCaches {
                kind,
                sources: self.of(kind).sources.clone(),
                replicas: Arc::default(),
            }),
            ruled: self.ruled.clone(),
        };
        for kind in Kind::ALL {
            if !kinds.contains(&kind) {
                caches.of(kind).replicas.replace(HashMap::new());
            }
        }
        caches
    }

    /// These caches, for a pipeline serving PushRules.
    pub fn ruled_by(mut self, ruled: Ruled) -> Caches {
        self.ruled = Some(Arc::new(ruled));
        self
    }

    pub fn synced(&self) -> bool {
        self.namespaces.synced() && self.kinds.iter().all(KindCaches::synced)
    }

    /// Copies of every kind (for the managed-replicas gauge).
    pub fn replica_count(&self) -> usize {
        self.kinds.iter().map(|k| k.replicas.len()).sum()
    }
}

impl Default for Caches {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
