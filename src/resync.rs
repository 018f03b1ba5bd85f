//! The periodic full resync: the fallback and the consistency check.
//!
//! Every `SYNC_INTERVAL` it re-LISTs sources, namespaces and replica metadata
//! from the API server (paginated, a handful of requests), brings the caches
//! to what it found (compared page by page, so no second copy of a cache is
//! ever held), and marks everything dirty. A watch that stalled silently
//! therefore cannot leave the cluster wrong for longer than one interval.
//! When everything is in sync the plan is empty: zero writes, no GETs.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, ObjectList};
use serde::de::DeserializeOwned;

use crate::cache::{Cache, Caches};
use crate::metrics::{Metrics, ResultLabels};
use crate::records::{ReplicaRecord, SourceRecord, namespace_info};
use crate::replica;
use crate::watch::describe_error;

const PAGE: u32 = 500;

/// A full list, compared with a cache page by page as it came in.
struct Listed<Key, V> {
    /// Keys listed with a record equal to the cached one.
    same: HashSet<Key>,
    /// Records that are new or differ from the cache.
    differ: HashMap<Key, V>,
}

/// List every page, keeping only the compact record of each object, and only
/// the key of each record the cache already holds: a resync never holds a
/// second copy of the cache (see [`Cache::reconcile`]).
async fn list_records<K, Key, V, L, F>(
    cache: &Cache<Key, V>,
    list: L,
    selector: Option<&str>,
    transform: impl Fn(&K) -> Option<(Key, V)>,
) -> kube::Result<Listed<Key, V>>
where
    Key: Eq + Hash + Clone,
    V: Clone + PartialEq,
    K: Clone + DeserializeOwned,
    // A closure returning an owned future, not an async closure: the
    // resync runs in a spawned task, which must be `Send`, and rustc cannot
    // yet prove that of an async closure's borrowing future.
    L: Fn(ListParams) -> F,
    F: Future<Output = kube::Result<ObjectList<K>>>,
{
    let mut out = Listed {
        same: HashSet::new(),
        differ: HashMap::new(),
    };
    // What the watch delivers from here on is newer than this list.
    cache.begin_list();
    let mut lp = ListParams::default().limit(PAGE);
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    loop {
        let page = list(lp.clone()).await?;
        let records: Vec<(Key, V)> = page.items.iter().filter_map(&transform).collect();
        cache.read(|cached| {
            for (k, v) in records {
                if cached.get(&k) == Some(&v) {
                    out.same.insert(k);
                } else {
                    out.differ.insert(k, v);
                }
            }
        });
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Bring `cache` to what was listed; count the entries the watch had wrong.
fn correct<K: Eq + Hash + Clone, V: Clone + PartialEq>(
    what: &str,
    cache: &Cache<K, V>,
    listed: Listed<K, V>,
    metrics: &Metrics,
) -> usize {
    let n = cache.reconcile(listed.same, listed.differ).len();
    if n > 0 {
        tracing::info!(
            cache = what,
            corrections = n,
            "resync found the cache out of date"
        );
        metrics.resync_stale.inc_by(n as u64);
    }
    n
}

/// Re-list sources, namespaces and replicas, then bring `caches` to what was
/// listed; returns how many cache entries were corrected.
pub async fn relist(
    client: &kube::Client,
    source_namespace: &str,
    caches: &Caches,
    metrics: &Metrics,
) -> kube::Result<usize> {
    let secrets_src: Api<Secret> = Api::namespaced(client.clone(), source_namespace);
    let sources = list_records(
        &caches.sources,
        |lp: ListParams| {
            let api = secrets_src.clone();
            async move { api.list(&lp).await }
        },
        Some(replica::SOURCE_SELECTOR),
        |s: &Secret| SourceRecord::from_secret(s, source_namespace),
    )
    .await?;
    let namespaces_api: Api<Namespace> = Api::all(client.clone());
    let namespaces = list_records(
        &caches.namespaces,
        |lp: ListParams| {
            let api = namespaces_api.clone();
            async move { api.list_metadata(&lp).await }
        },
        None,
        |n: &kube::api::PartialObjectMeta<Namespace>| {
            Some((n.metadata.name.clone()?, namespace_info(&n.metadata)))
        },
    )
    .await?;
    let replicas_api: Api<Secret> = Api::all(client.clone());
    let replicas = list_records(
        &caches.replicas,
        |lp: ListParams| {
            let api = replicas_api.clone();
            async move { api.list_metadata(&lp).await }
        },
        Some(replica::MANAGED_SELECTOR),
        |s: &kube::api::PartialObjectMeta<Secret>| {
            ReplicaRecord::from_meta(&s.metadata, source_namespace)
        },
    )
    .await?;
    let mut n = correct("sources", &caches.sources, sources, metrics);
    n += correct("namespaces", &caches.namespaces, namespaces, metrics);
    n += correct("replicas", &caches.replicas, replicas, metrics);
    Ok(n)
}

/// One resync: relist, then let the caller plan everything. `Err` carries a
/// short reason for `/readyz` (an API error's code and reason, no content).
pub async fn once(
    client: &kube::Client,
    source_namespace: &str,
    caches: &Caches,
    metrics: &Metrics,
) -> Result<(), String> {
    match relist(client, source_namespace, caches, metrics).await {
        Ok(_) => {
            metrics
                .resyncs
                .get_or_create(&ResultLabels { result: "ok" })
                .inc();
            Ok(())
        }
        Err(e) => {
            metrics
                .resyncs
                .get_or_create(&ResultLabels { result: "error" })
                .inc();
            let reason = describe_error(&e);
            tracing::warn!(error = %reason, "resync could not list; the watches' caches stay in use");
            Err(reason)
        }
    }
}
