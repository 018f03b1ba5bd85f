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

use kube::api::ListParams;
use serde::de::DeserializeOwned;

use crate::model::kinds::Kind;
use crate::observe::cache::{Cache, Caches};
use crate::observe::tracked::{self, Tracked};
use crate::operate::api_errors::describe as describe_error;
use crate::operate::metrics::{Metrics, ResultLabels};

const PAGE: u32 = 500;

/// A full list, compared with a cache page by page as it came in.
struct Listed<Key, V> {
    /// Keys listed with a record equal to the cached one.
    same: HashSet<Key>,
    /// Records that are new or differ from the cache.
    differ: HashMap<Key, V>,
}

/// List every page of `tracked`, keeping only the compact record of each
/// object, and only the key of each record the cache already holds: a resync
/// never holds a second copy of the cache (see [`Cache::reconcile`]).
async fn list_records<O, Key, V>(tracked: &Tracked<O, Key, V>) -> kube::Result<Listed<Key, V>>
where
    O: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    Key: Eq + Hash + Clone,
    V: Clone + PartialEq,
{
    let cache = &tracked.cache;
    let mut out = Listed {
        same: HashSet::new(),
        differ: HashMap::new(),
    };
    // What the watch delivers from here on is newer than this list.
    cache.begin_list();
    let mut lp = ListParams::default().limit(PAGE);
    if let Some(s) = tracked.selector {
        lp = lp.labels(s);
    }
    loop {
        let page = tracked.api.list(&lp).await?;
        let records: Vec<(Key, V)> = page
            .items
            .iter()
            .filter_map(|o| (tracked.record)(o))
            .collect();
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

/// A listed tracked thing, ready to be brought into its cache.
type Correction = Box<dyn FnOnce(&Metrics) -> usize + Send>;

async fn listed<O, Key, V>(tracked: Tracked<O, Key, V>) -> kube::Result<Correction>
where
    O: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    Key: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + PartialEq + Send + Sync + 'static,
{
    let list = list_records(&tracked).await?;
    let (name, cache) = (tracked.name, tracked.cache);
    Ok(Box::new(move |metrics: &Metrics| {
        correct(name, &cache, list, metrics)
    }))
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

/// Re-list the namespaces and, per kind in `kinds`, the sources and copies;
/// once every list succeeded, bring the caches to what was listed. Returns
/// how many cache entries were corrected.
pub async fn relist(
    client: &kube::Client,
    (source_namespace, stamp): (&str, Option<&str>),
    kinds: &[Kind],
    source_kinds: &[Kind],
    caches: &Caches,
    metrics: &Metrics,
) -> kube::Result<usize> {
    let mut corrections = vec![listed(tracked::namespaces(client, caches)).await?];
    for &kind in kinds {
        if source_kinds.contains(&kind) {
            corrections
                .push(listed(tracked::sources(client, caches, kind, source_namespace)).await?);
        }
        corrections.push(
            listed(tracked::replicas(
                client,
                caches,
                kind,
                source_namespace,
                stamp,
            ))
            .await?,
        );
    }
    Ok(corrections.into_iter().map(|c| c(metrics)).sum())
}

/// One resync: relist, then let the caller plan everything. `Err` carries a
/// short reason for `/readyz` (an API error's code and reason, no content).
pub async fn once(
    client: &kube::Client,
    (source_namespace, stamp): (&str, Option<&str>),
    kinds: &[Kind],
    source_kinds: &[Kind],
    caches: &Caches,
    metrics: &Metrics,
) -> Result<(), String> {
    match relist(
        client,
        (source_namespace, stamp),
        kinds,
        source_kinds,
        caches,
        metrics,
    )
    .await
    {
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
