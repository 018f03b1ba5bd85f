//! The watches (DESIGN §1): the I/O that fills the caches ([`crate::observe::cache`])
//! with records ([`crate::model::records`]).
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

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::model::kinds::Kind;
use crate::observe::batch::DirtyKey;
use crate::observe::cache::{Cache, Caches, Change};
use crate::observe::tracked::{self, Tracked};
use crate::operate::metrics::Metrics;

/// Drive one watch into `cache`, sending a dirty key for every real change,
/// and report how it fares to `health`. (Re)lists are applied atomically at
/// `InitDone`, so objects deleted while the watch was down are noticed too.
///
/// `watch` makes a fresh watcher stream (a list, then a watch). After an
/// error the stream is dropped and, after a backoff, a fresh one lists
/// again: a resumed watch delivers nothing until something changes, so only
/// a list can show that the watch works again (see [`crate::operate::http::Health`]).
/// Every watch runs through this loop, so none can be left out of `/readyz`.
pub async fn run<K, Key, V, S>(
    what: &'static str,
    watch: impl Fn() -> S,
    cache: Arc<Cache<Key, V>>,
    transform: impl Fn(&K) -> Option<(Key, V)>,
    key_of: impl Fn(&K) -> Option<Key>,
    dirty_of: impl Fn(&Key, Option<&V>, Option<&V>) -> Option<DirtyKey>,
    ctx: Context,
) where
    K: Send,
    Key: Eq + Hash + Clone,
    V: Clone + PartialEq,
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let Context {
        dirty,
        metrics,
        health,
        shutdown,
    } = ctx;
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
                    Some(Err(e)) => break crate::operate::api_errors::describe_watch(&e),
                    None => break "watch stream ended".to_string(),
                };
                match next {
                    Event::Init => {
                        tracing::trace!(watch = what, "watch (re)list begins");
                        buffer = Some(HashMap::new());
                    }
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
                        tracing::trace!(watch = what, "watch event: apply");
                        metrics
                            .watch_events
                            .get_or_create(&crate::operate::metrics::WatchLabels { watch: what })
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
                        tracing::trace!(watch = what, "watch event: delete");
                        metrics
                            .watch_events
                            .get_or_create(&crate::operate::metrics::WatchLabels { watch: what })
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
            .get_or_create(&crate::operate::metrics::WatchLabels { watch: what })
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

/// Watch one tracked thing ([`crate::observe::tracked`]) until shutdown.
pub async fn watch<O, K, V>(tracked: Tracked<O, K, V>, ctx: Context)
where
    O: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K: Eq + Hash + Clone,
    V: Clone + PartialEq,
{
    let api = tracked.api.clone();
    let selector = tracked.selector;
    let (record, key, dirty_of) = (tracked.record, tracked.key, tracked.dirty);
    run(
        tracked.name,
        move || watcher::watcher(api.clone(), config(selector)),
        tracked.cache,
        |o: &O| record(o),
        |o: &O| key(o),
        |k: &K, old: Option<&V>, new: Option<&V>| dirty_of(k, old, new),
        ctx,
    )
    .await
}

/// Where the watches of one cluster report: the dirty keys of real
/// changes, their metrics, that cluster's health; and when they stop.
#[derive(Clone)]
pub struct Context {
    pub dirty: UnboundedSender<DirtyKey>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<crate::operate::http::Health>,
    pub shutdown: CancellationToken,
}

/// What one cluster's watches cover.
pub struct Watched<'a> {
    /// Copies name their source in this namespace.
    pub source_namespace: &'a str,
    /// A remote cluster's stamp: only copies carrying it are ours there.
    pub stamp: Option<&'a str>,
    /// The kinds whose copies are watched.
    pub kinds: &'a [Kind],
    /// The kinds whose sources are watched here: none in a remote cluster
    /// (its sources are this cluster's), none without ENABLE_SECRET_WATCHER
    /// (the sources are then left to the periodic resync).
    pub sources: &'a [Kind],
}

fn spawn_watch<O, K, V>(tracked: Tracked<O, K, V>, ctx: &Context) -> tokio::task::JoinHandle<()>
where
    O: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + PartialEq + Send + Sync + 'static,
{
    tokio::spawn(watch(tracked, ctx.clone()))
}

/// Spawn every watch: the namespaces, and per kind of `watched` its copies
/// and its sources where they are watched.
pub fn spawn_all(
    client: kube::Client,
    watched: &Watched<'_>,
    caches: Arc<Caches>,
    ctx: &Context,
) -> Vec<tokio::task::JoinHandle<()>> {
    // One task per tracked thing, all through the same loop.
    let mut tasks = vec![spawn_watch(tracked::namespaces(&client, &caches), ctx)];
    for &kind in watched.kinds {
        if watched.sources.contains(&kind) {
            let sources = tracked::sources(&client, &caches, kind, watched.source_namespace);
            tasks.push(spawn_watch(sources, ctx));
        }
        let replicas = tracked::replicas(
            &client,
            &caches,
            kind,
            watched.source_namespace,
            watched.stamp,
        );
        tasks.push(spawn_watch(replicas, ctx));
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
struct WatchStopped<'a>(&'a crate::operate::http::Health, &'static str);

impl Drop for WatchStopped<'_> {
    fn drop(&mut self) {
        self.0.watch_stopped(self.1);
    }
}
