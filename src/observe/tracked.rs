//! What is watched and re-listed, described once (DESIGN §1): for each
//! tracked thing its API (with selector), its cache, how an object becomes a
//! record, and which key a change makes dirty. The watch ([`crate::observe::watch`])
//! and the periodic resync ([`crate::observe::resync`]) both use these descriptions,
//! so they can never disagree on what they track.
//!
//! - the namespaces (metadata only);
//! - per kind ([`Kind`]), the labelled sources in the source namespace (whole
//!   objects: their content is what we copy);
//! - per kind, our copies in every namespace (label-selected, metadata
//!   only: a copy's data never reaches the controller).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DynamicObject, PartialObjectMeta};

use crate::model::kinds::Kind;
use crate::model::records::{ObjectKey, ReplicaRecord, SourceRecord, namespace_info};
use crate::model::rules::NamespaceInfo;
use crate::observe::batch::DirtyKey;
use crate::observe::cache::{Cache, Caches};

type Record<O, K, V> = Arc<dyn Fn(&O) -> Option<(K, V)> + Send + Sync>;
type KeyOf<O, K> = Arc<dyn Fn(&O) -> Option<K> + Send + Sync>;
type Dirty<K, V> = Arc<dyn Fn(&K, Option<&V>, Option<&V>) -> Option<DirtyKey> + Send + Sync>;

/// One tracked thing: watched and re-listed the same way.
pub struct Tracked<O, K, V> {
    /// Its name in logs, metrics and `/readyz` (bounded: not user-chosen).
    pub name: &'static str,
    pub api: Api<O>,
    pub selector: Option<&'static str>,
    pub cache: Arc<Cache<K, V>>,
    /// The record of an object, or `None` for one we do not track.
    pub record: Record<O, K, V>,
    /// The key of any object (to forget one that stopped being tracked).
    pub key: KeyOf<O, K>,
    /// What a change of a record makes dirty.
    pub dirty: Dirty<K, V>,
}

impl<O, K, V> Clone for Tracked<O, K, V>
where
    O: Clone,
    Api<O>: Clone,
{
    fn clone(&self) -> Self {
        Tracked {
            name: self.name,
            api: self.api.clone(),
            selector: self.selector,
            cache: self.cache.clone(),
            record: self.record.clone(),
            key: self.key.clone(),
            dirty: self.dirty.clone(),
        }
    }
}

pub type Namespaces = Tracked<PartialObjectMeta<Namespace>, String, NamespaceInfo>;
pub type Sources = Tracked<DynamicObject, String, SourceRecord>;
pub type Replicas = Tracked<PartialObjectMeta<DynamicObject>, ObjectKey, ReplicaRecord>;

pub fn namespaces(client: &kube::Client, caches: &Caches) -> Namespaces {
    Tracked {
        name: "namespaces",
        api: Api::all(client.clone()),
        selector: None,
        cache: caches.namespaces.clone(),
        record: Arc::new(|o: &PartialObjectMeta<Namespace>| {
            Some((o.metadata.name.clone()?, namespace_info(&o.metadata)))
        }),
        key: Arc::new(|o: &PartialObjectMeta<Namespace>| o.metadata.name.clone()),
        dirty: Arc::new(|name: &String, _, _| Some(DirtyKey::Namespace(name.clone()))),
    }
}

/// The sources of `kind` in `source_namespace`: the labelled ones, or, in a
/// pipeline serving PushRules, the objects its rules pick, as the rules say
/// ([`crate::observe::cache::Ruled`]; the watch is then not label-selected,
/// and what no rule picks is not kept).
pub fn sources(
    client: &kube::Client,
    caches: &Caches,
    kind: Kind,
    source_namespace: &str,
) -> Sources {
    let ns = source_namespace.to_string();
    let ruled = caches.ruled.clone();
    Tracked {
        name: match kind {
            Kind::Secret => "sources",
            Kind::ConfigMap => "configmap-sources",
        },
        api: Api::namespaced_with(client.clone(), source_namespace, &kind.api_resource()),
        selector: ruled
            .is_none()
            .then_some(crate::model::vocabulary::SOURCE_SELECTOR),
        cache: caches.of(kind).sources.clone(),
        record: Arc::new(move |o: &DynamicObject| match &ruled {
            None => source_record(kind, o, &ns),
            Some(ruled) => {
                let meta = (ruled.source)(kind, &o.metadata)?;
                let picked = DynamicObject {
                    metadata: meta,
                    ..o.clone()
                };
                source_record(kind, &picked, &ns)
            }
        }),
        key: Arc::new(|o: &DynamicObject| o.metadata.name.clone()),
        dirty: Arc::new(move |name: &String, _, _| Some(DirtyKey::Source(kind, name.clone()))),
    }
}

/// A source object of `kind` as the planner needs it.
pub fn source_record(
    kind: Kind,
    o: &DynamicObject,
    source_namespace: &str,
) -> Option<(String, SourceRecord)> {
    match kind {
        Kind::Secret => {
            let s: Secret = o.clone().try_parse().ok()?;
            SourceRecord::from_secret(&s, source_namespace)
        }
        Kind::ConfigMap => {
            let c: ConfigMap = o.clone().try_parse().ok()?;
            SourceRecord::from_config_map(&c, source_namespace)
        }
    }
}

/// Our copies of `kind` in every namespace (metadata only); in a remote
/// cluster those stamped `stamp` (see [`crate::model::records::owned_source_in`]).
pub fn replicas(
    client: &kube::Client,
    caches: &Caches,
    kind: Kind,
    source_namespace: &str,
    stamp: Option<&str>,
) -> Replicas {
    let ns = source_namespace.to_string();
    let stamp = stamp.map(str::to_string);
    let sources = caches.of(kind).sources.clone();
    let ruled = caches.ruled.clone();
    Tracked {
        name: match kind {
            Kind::Secret => "replicas",
            Kind::ConfigMap => "configmap-replicas",
        },
        api: Api::all_with(client.clone(), &kind.api_resource()),
        selector: Some(crate::model::vocabulary::MANAGED_SELECTOR),
        cache: caches.of(kind).replicas.clone(),
        record: Arc::new(move |o: &PartialObjectMeta<DynamicObject>| {
            ReplicaRecord::from_meta_in(kind, &o.metadata, &ns, stamp.as_deref())
                .filter(|_| ruled.as_ref().is_none_or(|r| (r.owns)(&o.metadata)))
        }),
        key: Arc::new(move |o: &PartialObjectMeta<DynamicObject>| {
            Some(ObjectKey::new(
                kind,
                o.metadata.namespace.as_deref()?,
                o.metadata.name.as_deref()?,
            ))
        }),
        // Only a copy under a name its source asks for now is re-planned:
        // that copy alone ([`DirtyKey::Copy`]), at once, without waiting for
        // the quiet window (an edited or deleted copy has nothing to
        // coalesce; see [`crate::observe::batch`]). Anything else (a copy of
        // a gone source, or under another name) needs at most a delete,
        // which the next full plan finds and the stray lane makes
        // (docs/architecture.md, "Strays"): so what a tenant creates or
        // deletes in its own namespace never keeps the batcher from going
        // quiet.
        dirty: Arc::new(
            move |k: &ObjectKey, old: Option<&ReplicaRecord>, new: Option<&ReplicaRecord>| {
                let r = new.or(old)?;
                let asked = sources.read(|all| {
                    all.get(&*r.source)
                        .is_some_and(|s| s.replica.name == k.name)
                });
                asked.then(|| DirtyKey::Copy(ObjectKey::new(k.kind, &k.namespace, &r.source)))
            },
        ),
    }
}
