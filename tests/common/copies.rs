//! The copies a controller made, as a client sees them: the marks every copy
//! carries (written out here, the contract, not imported from the crate),
//! listing them, and [`CopyWatch`], a metadata watch that records every copy
//! write. Shared by the end-to-end kit and the benchmark (included by `#[path]`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::task::JoinHandle;

/// Every copy carries this label.
pub const MANAGED_SELECTOR: &str = "push-to-k8s.io/managed-by=push-to-k8s";
/// `source-namespace/name` of the copy's source.
pub const SOURCE_ANNOTATION: &str = "push-to-k8s.io/source";
/// The hash of the content the copy was written with.
pub const HASH_ANNOTATION: &str = "push-to-k8s.io/content-hash";
/// The controller's field manager (server-side apply).
pub const FIELD_MANAGER: &str = "push-to-k8s";

/// A copy's metadata (`Api<Meta>` lists and watches metadata only).
pub type Meta = kube::api::PartialObjectMeta<Secret>;

/// `(namespace, name)`.
pub fn key(m: &Meta) -> Option<(String, String)> {
    Some((m.metadata.namespace.clone()?, m.metadata.name.clone()?))
}

fn annotation<'a>(m: &'a Meta, name: &str) -> Option<&'a str> {
    m.metadata
        .annotations
        .as_ref()?
        .get(name)
        .map(String::as_str)
}

/// `source-namespace/name` of its source.
pub fn source(m: &Meta) -> Option<&str> {
    annotation(m, SOURCE_ANNOTATION)
}

/// Its content hash (empty if it has none).
pub fn hash(m: &Meta) -> String {
    annotation(m, HASH_ANNOTATION)
        .unwrap_or_default()
        .to_string()
}

/// When the controller last wrote it: the `managedFields` time of its field
/// manager (the server's clock, whole seconds).
pub fn written_at(m: &Meta) -> Option<i64> {
    m.metadata
        .managed_fields
        .as_ref()?
        .iter()
        .filter(|f| f.manager.as_deref() == Some(FIELD_MANAGER))
        .filter_map(|f| f.time.as_ref().map(|t| t.0.as_second()))
        .max()
}

/// Every copy in the cluster (metadata only).
pub async fn list(client: &kube::Client) -> kube::Result<Vec<Meta>> {
    let api: Api<Secret> = Api::all(client.clone());
    Ok(api
        .list_metadata(&ListParams::default().labels(MANAGED_SELECTOR))
        .await?
        .items)
}

/// One write to a copy, as the watch saw it.
#[derive(Clone, Debug)]
pub struct CopyEvent {
    /// When the watch received it.
    pub at: Instant,
    pub key: (String, String),
    pub hash: String,
    pub deleted: bool,
    /// See [`written_at`].
    pub server_s: Option<i64>,
}

#[derive(Default)]
pub struct WatchState {
    /// Every copy now, with its hash.
    pub copies: HashMap<(String, String), String>,
    /// How many copies carry each hash.
    pub by_hash: HashMap<String, usize>,
    /// Every write since the watch synced, in order.
    pub log: Vec<CopyEvent>,
    pub relists: usize,
    pub synced: bool,
}

impl WatchState {
    fn set(&mut self, key: (String, String), hash: Option<String>) {
        if let Some(old) = self.copies.remove(&key)
            && let Some(n) = self.by_hash.get_mut(&old)
        {
            *n -= 1;
        }
        if let Some(h) = hash {
            *self.by_hash.entry(h.clone()).or_insert(0) += 1;
            self.copies.insert(key, h);
        }
    }

    /// Copies carrying one of `hashes`.
    pub fn count_hashes(&self, hashes: &HashSet<String>) -> usize {
        hashes
            .iter()
            .map(|h| self.by_hash.get(h).copied().unwrap_or(0))
            .sum()
    }
}

/// A metadata watch on every Secret carrying the controller's managed-by
/// label: the client-side witness of each copy write. Stops when dropped.
pub struct CopyWatch {
    state: Arc<Mutex<WatchState>>,
    task: JoinHandle<()>,
}

impl CopyWatch {
    /// Start it and wait (up to 120 s) until it has listed every copy.
    pub async fn start(client: kube::Client) -> Result<CopyWatch> {
        let state = Arc::new(Mutex::new(WatchState::default()));
        // `Api<PartialObjectMeta<_>>` makes the watch metadata-only.
        let api: Api<Meta> = Api::all(client);
        let cfg = watcher::Config::default().labels(MANAGED_SELECTOR);
        let st = state.clone();
        let task = tokio::spawn(async move {
            let stream = watcher::watcher(api, cfg).default_backoff();
            let mut stream = std::pin::pin!(stream);
            let mut buffer: Option<Vec<Meta>> = None;
            while let Some(ev) = stream.next().await {
                let at = Instant::now();
                let Ok(ev) = ev else { continue };
                let mut s = st.lock().expect("watch state");
                match ev {
                    Event::Init => buffer = Some(Vec::new()),
                    Event::InitApply(m) => buffer.get_or_insert_with(Vec::new).push(m),
                    Event::InitDone => {
                        s.copies.clear();
                        s.by_hash.clear();
                        for m in buffer.take().unwrap_or_default() {
                            if let Some(k) = key(&m) {
                                s.set(k, Some(hash(&m)));
                            }
                        }
                        if s.synced {
                            s.relists += 1;
                        }
                        s.synced = true;
                    }
                    Event::Apply(m) => {
                        let Some(key) = key(&m) else { continue };
                        let hash = hash(&m);
                        s.set(key.clone(), Some(hash.clone()));
                        s.log.push(CopyEvent {
                            at,
                            key,
                            hash,
                            deleted: false,
                            server_s: written_at(&m),
                        });
                    }
                    Event::Delete(m) => {
                        let Some(key) = key(&m) else { continue };
                        s.set(key.clone(), None);
                        s.log.push(CopyEvent {
                            at,
                            key,
                            hash: String::new(),
                            deleted: true,
                            server_s: None,
                        });
                    }
                }
            }
        });
        let w = CopyWatch { state, task };
        w.wait("the copy watch to sync", Duration::from_secs(120), |s| {
            s.synced
        })
        .await?;
        Ok(w)
    }

    pub fn with<R>(&self, f: impl FnOnce(&WatchState) -> R) -> R {
        f(&self.state.lock().expect("watch state"))
    }

    pub fn log_len(&self) -> usize {
        self.with(|s| s.log.len())
    }

    /// The writes seen since the log held `from` of them.
    pub fn log_since(&self, from: usize) -> Vec<CopyEvent> {
        self.with(|s| s.log[from.min(s.log.len())..].to_vec())
    }

    pub fn count_hashes(&self, hashes: &HashSet<String>) -> usize {
        self.with(|s| s.count_hashes(hashes))
    }

    /// Poll (every 10 ms) until `cond` holds; how long that took.
    pub async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&WatchState) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if self.with(&cond) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until exactly `want` copies carry one of `hashes`.
    pub async fn wait_copies(
        &self,
        hashes: &HashSet<String>,
        want: usize,
        timeout: Duration,
    ) -> Result<Duration> {
        self.wait(&format!("{want} copies in sync"), timeout, |s| {
            s.count_hashes(hashes) == want
        })
        .await
    }

    /// Wait until no copy event has arrived for `quiet`.
    pub async fn settle(&self, quiet: Duration, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut last = self.log_len();
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let n = self.log_len();
            if n != last {
                last = n;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("copies still changing after {timeout:?}");
            }
        }
    }
}

impl Drop for CopyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
