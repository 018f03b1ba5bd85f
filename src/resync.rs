//! The periodic full resync: the fallback and the consistency check.
//!
//! Every `SYNC_INTERVAL` it re-LISTs sources, namespaces and replicas from the
//! API server (paginated, a handful of requests), replaces the caches with
//! what it found, and marks everything dirty. A watch that stalled silently
//! therefore cannot leave the cluster wrong for longer than one interval.
//! When everything is in sync the plan is empty: zero writes, no GETs.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, ObjectList};
use serde::de::DeserializeOwned;

use crate::metrics::{Metrics, ResultLabels};
use crate::replica;
use crate::watch::{Cache, Caches, ReplicaRecord, SourceRecord, namespace_info};

const PAGE: u32 = 500;

/// List every page, keeping only the compact record of each object.
async fn list_records<K, Key, V, L>(
    list: L,
    selector: Option<&str>,
    transform: impl Fn(&K) -> Option<(Key, V)>,
) -> kube::Result<HashMap<Key, V>>
where
    Key: Eq + Hash,
    K: Clone + DeserializeOwned,
    L: AsyncFn(&ListParams) -> kube::Result<ObjectList<K>>,
{
    let mut out = HashMap::new();
    let mut lp = ListParams::default().limit(PAGE);
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    loop {
        let page = list(&lp).await?;
        out.extend(page.items.iter().filter_map(&transform));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Replace `cache` with `fresh`; count the entries the watch had wrong.
fn correct<K: Eq + Hash + Clone, V: Clone + PartialEq>(
    what: &str,
    cache: &Cache<K, V>,
    fresh: HashMap<K, V>,
    metrics: &Metrics,
) -> usize {
    let n = cache.replace(fresh).len();
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

/// Re-list everything into `caches`. `sources` is false only when nothing
/// else refreshes the sources either (it is always true today; kept explicit).
pub async fn relist(
    client: &kube::Client,
    source_namespace: &str,
    caches: &Caches,
    metrics: &Metrics,
) -> kube::Result<usize> {
    let secrets_src: Api<Secret> = Api::namespaced(client.clone(), source_namespace);
    let sources = list_records(
        async |lp: &ListParams| secrets_src.list(lp).await,
        Some(replica::SOURCE_SELECTOR),
        |s: &Secret| SourceRecord::from_secret(s, source_namespace),
    )
    .await?;
    let namespaces_api: Api<Namespace> = Api::all(client.clone());
    let namespaces = list_records(
        async |lp: &ListParams| namespaces_api.list_metadata(lp).await,
        None,
        |n: &kube::api::PartialObjectMeta<Namespace>| {
            Some((n.metadata.name.clone()?, namespace_info(&n.metadata)))
        },
    )
    .await?;
    let replicas_api: Api<Secret> = Api::all(client.clone());
    let replicas = list_records(
        async |lp: &ListParams| replicas_api.list(lp).await,
        Some(replica::MANAGED_SELECTOR),
        |s: &Secret| ReplicaRecord::from_secret(s, source_namespace),
    )
    .await?;
    let mut n = correct("sources", &caches.sources, sources, metrics);
    n += correct("namespaces", &caches.namespaces, namespaces, metrics);
    n += correct("replicas", &caches.replicas, replicas, metrics);
    Ok(n)
}

/// One resync: relist, then let the caller plan everything.
pub async fn once(
    client: &kube::Client,
    source_namespace: &str,
    caches: &Arc<Caches>,
    metrics: &Metrics,
) -> bool {
    match relist(client, source_namespace, caches, metrics).await {
        Ok(_) => {
            metrics
                .resyncs
                .get_or_create(&ResultLabels { result: "ok" })
                .inc();
            true
        }
        Err(e) => {
            metrics
                .resyncs
                .get_or_create(&ResultLabels { result: "error" })
                .inc();
            tracing::warn!(error = %e, "resync could not list; the watches' caches stay in use");
            false
        }
    }
}
