//! The Vault target's worker: a task beside the namespace control loop, so
//! Vault being slow, down or refusing never holds up a namespace copy.
//!
//! It is told which sources changed (the control loop forwards each flushed
//! batch's source keys, so Vault writes follow the same debounce) and checks
//! every entry every `VAULT_CHECK_INTERVAL_SECONDS`. Per source it decides
//! with [`entry::step`] and writes through its own limiter. Every write
//! request (data, metadata, delete) asks the write gate right before it is
//! sent, as every Kubernetes write does (only the leader writes): a gate
//! that closes in the middle of one source's requests stops them there, and
//! whoever leads next looks at that source again. A failure holds that
//! source with exponential backoff; the others go on.
//!
//! Every look at an entry reads its metadata first (one request), so an
//! entry someone took over since (their custom metadata, which does not bump
//! the version a check-and-set guards) is never written. What it knows in
//! memory is the path and preserve flag of each entry it wrote or found in
//! sync, which it needs when the source, or its path, goes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::events::EventType;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use k8s_openapi::api::core::v1::ObjectReference;

use crate::model::kinds::Kind;
use crate::observe::cache::Caches;
use crate::operate::http::Health;
use crate::operate::metrics::{AnnotationLabels, Metrics, VaultLabels};
use crate::targets::vault::entry::{
    self, Deletable, Desired, Invalid, Names, Observed, Owner, SourceId, Step, Us,
};
use crate::write::Context;
use crate::write::events::Events;
use crate::write::gate::WriteGate;
use crate::write::pace::Pacer;
use crate::write::retry::RetryQueue;

/// What a failed Vault request was, in the few ways the worker tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The write's check-and-set did not match: the entry changed since we
    /// looked. The retry reads it again.
    CasMismatch,
    /// Vault did not answer (down, unreachable, timed out, sealed).
    Unreachable,
    /// Vault refused to log us in: nothing can be written until it does.
    Login,
    /// Vault answered with a refusal of this request (permission, a bad request).
    Refused,
    /// The write gate closed inside the request (before a resend after a
    /// fresh login): nothing more was sent, as with a gate closed before it.
    Gate,
}

/// The requests the worker makes: implemented by
/// [`crate::targets::vault::client::VaultClient`] (and by an in-memory Vault in the
/// unit tests). Errors display without any value.
pub trait Store: Send + Sync + 'static {
    type Error: fmt::Display + Send;
    fn read_metadata(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<Option<Observed>, Self::Error>> + Send;
    fn write_metadata(
        &self,
        path: &str,
        custom: &BTreeMap<String, String>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn write_data(
        &self,
        path: &str,
        data: &BTreeMap<String, String>,
        cas: u64,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;
    fn read_data(
        &self,
        path: &str,
    ) -> impl Future<Output = Result<Option<BTreeMap<String, String>>, Self::Error>> + Send;
    fn delete_all(&self, path: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Log in now if there is no valid token (no request otherwise), so a
    /// write's gate check is not followed by a login round trip.
    fn ensure_login(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    fn classify(error: &Self::Error) -> Failure;
    /// Short, bounded reason for metrics.
    fn reason(error: &Self::Error) -> &'static str;
    /// Logins so far (for the metric).
    fn logins(&self) -> u64;
}

/// Where a worker's entries come from, the one seam between the Vault
/// worker and what asks for entries: the labelled sources of the source
/// namespace ([`Sources`]), or the Deployments PushRules let push the
/// Secrets they reference (`crate::targets::workloads`).
pub trait Book: Send + Sync + 'static {
    /// Names one entry (and the object that owns it).
    type Id: Names + Clone + Ord + std::hash::Hash + fmt::Display + Send + Sync + 'static;
    /// Every id that asks for an entry now.
    fn wanting(&self) -> Vec<Self::Id>;
    /// The entry `id` asks for (`Ok(None)`: none, its owner or path went).
    /// `Err`: its owner's uid and why it cannot be written; its entry is
    /// left as it is.
    fn desired(&self, id: &Self::Id) -> Result<Option<Desired>, (String, Invalid)>;
    /// Why no entry of `id` may be deleted now, if so.
    fn keep_entries(&self, id: &Self::Id) -> Option<String>;
    /// The object an Event about `id` goes on, if it (still) exists.
    fn event_ref(&self, id: &Self::Id) -> Option<ObjectReference>;
    /// Is `id`'s entry to be forgotten rather than written or deleted? What
    /// asked for it is no longer known to have gone (a PushRule missing
    /// from a listing): its entry is left as it is.
    fn forgotten(&self, _id: &Self::Id) -> bool {
        false
    }
}

/// The labelled sources of the source namespace with a Vault path.
pub struct Sources {
    pub caches: Arc<Caches>,
    pub events: Arc<Events>,
    pub source_namespace: String,
    pub kinds: Vec<Kind>,
    pub allow_adoption: bool,
}

impl Sources {
    fn record(&self, id: &SourceId) -> Option<crate::model::records::SourceRecord> {
        self.kinds
            .contains(&id.kind)
            .then(|| self.caches.of(id.kind).sources.get(&id.name))
            .flatten()
    }
}

impl Book for Sources {
    type Id = SourceId;

    fn wanting(&self) -> Vec<SourceId> {
        let mut ids = Vec::new();
        for &kind in &self.kinds {
            self.caches.of(kind).sources.read(|sources| {
                for (name, rec) in sources {
                    if rec
                        .annotations
                        .contains_key(crate::model::vocabulary::PATH_ANNOTATION)
                    {
                        ids.push(SourceId {
                            kind,
                            name: name.clone(),
                        });
                    }
                }
            });
        }
        ids
    }

    fn desired(&self, id: &SourceId) -> Result<Option<Desired>, (String, Invalid)> {
        match self.record(id) {
            None => Ok(None),
            Some(rec) => entry::desired(&rec, self.allow_adoption).map_err(|e| (rec.uid, e)),
        }
    }

    fn keep_entries(&self, _: &SourceId) -> Option<String> {
        // Deleting the source namespace deletes every source: no entry goes
        // for that (docs/architecture.md, "Losing the source namespace").
        self.caches.source_namespace_lost(&self.source_namespace)
    }

    fn event_ref(&self, id: &SourceId) -> Option<ObjectReference> {
        let rec = self.record(id)?;
        Some(self.events.source_ref(id.kind, &id.name, &rec.uid))
    }
}

/// Why a source's requests stopped.
#[derive(Debug)]
enum Halt<E> {
    /// The write gate closed before a write request: nothing was sent.
    Gate,
    /// Vault (or the way to it) failed the request.
    Store(E),
}

/// What the control loop tells the worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Work<I = SourceId> {
    /// These sources changed (or went): look at their entries. The instant:
    /// when the first change of their batch was seen (propagation is measured
    /// from there, as for copies).
    Sources(Vec<I>, std::time::Instant),
    /// Look at every entry again, reading its metadata (a resync, a new leader).
    All,
}

/// An entry the worker wrote or found in sync: what it needs when the
/// source, or its path, goes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Known {
    path: String,
    preserve: bool,
    /// The content hash it was written or found with: a source event that
    /// leaves it unchanged (one of its copies changed) costs no request.
    hash: String,
}

/// Where one source stands in Vault, as the worker knows it (unit tests;
/// `status` reads Vault itself, `inspect.rs`).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    InSync,
    Conflict(String),
    Failing(String),
}

pub struct Settings {
    /// The namespace labelled sources' entries name (`Us`).
    pub source_namespace: String,
    /// The cluster stamp our entries carry (`CLUSTER_NAME`, or the source
    /// namespace's uid): [`crate::model::vocabulary::META_CLUSTER`].
    pub cluster: String,
    pub kv_mount: String,
    pub rate: std::num::NonZeroU32,
    pub check_interval: Duration,
}

pub struct Target<S: Store, B: Book> {
    store: S,
    settings: Settings,
    book: B,
    pacer: Arc<Pacer>,
    gate: Arc<WriteGate>,
    events: Arc<Events>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    known: HashMap<B::Id, Known>,
    /// Sources whose path holds an entry that is not theirs: the path and
    /// the owner last reported (one Event per change).
    conflicts: HashMap<B::Id, (String, String)>,
    /// The failure last reported per source (one Event per change).
    failures: HashMap<B::Id, String>,
    /// The refusal last reported per source and object (one Event per change).
    refused: HashMap<B::Id, (String, String)>,
    retry: RetryQueue<B::Id>,
    /// Sources to look at.
    pending: BTreeSet<B::Id>,
    /// Of those, the ones to look at in Vault even if the source did not
    /// change: a check, a retry.
    looks: BTreeSet<B::Id>,
    /// When the first unwritten change of each source was seen (its batch's
    /// first change; its propagation latency to Vault is measured from there
    /// to its entry written).
    handed: HashMap<B::Id, std::time::Instant>,
    logins_seen: u64,
    /// The ids of the entries known, for whoever must wait until an entry
    /// is deleted (a PushRule's finalizer).
    shown: Arc<std::sync::RwLock<BTreeSet<B::Id>>>,
}

impl<S: Store, B: Book> Target<S, B> {
    /// The ids of the entries it knows (wrote or found in sync, and not
    /// deleted since), kept up to date.
    pub fn known_ids(&self) -> Arc<std::sync::RwLock<BTreeSet<B::Id>>> {
        self.shown.clone()
    }

    fn publish_known(&self) {
        let mut shown = self.shown.write().expect("lock");
        if shown.len() != self.known.len() || self.known.keys().any(|id| !shown.contains(id)) {
            *shown = self.known.keys().cloned().collect();
        }
    }

    pub fn new(store: S, settings: Settings, book: B, ctx: Context) -> Target<S, B> {
        let Context {
            caches: _,
            gate,
            events,
            metrics,
            health,
        } = ctx;
        let one = std::num::NonZeroU32::new(1).expect("1");
        Target {
            pacer: Arc::new(Pacer::new(settings.rate, one)),
            store,
            settings,
            book,
            gate,
            events,
            metrics,
            health,
            known: HashMap::new(),
            conflicts: HashMap::new(),
            failures: HashMap::new(),
            refused: HashMap::new(),
            retry: RetryQueue::new(),
            pending: BTreeSet::new(),
            looks: BTreeSet::new(),
            handed: HashMap::new(),
            logins_seen: 0,
            shown: Arc::default(),
        }
    }

    /// Share `pacer` (one Vault, one request rate for every worker).
    pub fn pacing_with(mut self, pacer: Arc<Pacer>) -> Target<S, B> {
        self.pacer = pacer;
        self
    }

    /// This worker's request limiter.
    pub fn pacer(&self) -> Arc<Pacer> {
        self.pacer.clone()
    }

    /// Run until `shutdown`: everything once at the start (and whenever this
    /// instance becomes the leader), each change as told, every entry each
    /// check interval.
    pub async fn run(
        mut self,
        mut work: mpsc::UnboundedReceiver<Work<B::Id>>,
        mut leading: tokio::sync::watch::Receiver<bool>,
        shutdown: CancellationToken,
    ) {
        // The first look at everything comes from the control loop's first
        // flush (`Work::All`, also on becoming the leader); checks follow.
        let every = self.settings.check_interval;
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            while let Ok(w) = work.try_recv() {
                self.take(w);
            }
            self.metrics
                .vault_pending
                .set(self.pending.len().max(self.retry.len()) as i64);
            if self.gate.open()
                && let Some(id) = self.pending.pop_first()
            {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    () = self.reconcile(&id) => {}
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                w = work.recv() => match w {
                    Some(w) => self.take(w),
                    None => break,
                },
                id = self.retry.next() => {
                    self.looks.insert(id.clone());
                    self.pending.insert(id);
                }
                _ = check.tick() => self.take(Work::All),
                Ok(()) = leading.changed() => {
                    if *leading.borrow_and_update() {
                        self.take(Work::All);
                    }
                }
            }
        }
    }

    fn take(&mut self, work: Work<B::Id>) {
        match work {
            Work::Sources(ids, since) => {
                for id in ids {
                    // The earliest change not yet written.
                    self.handed.entry(id.clone()).or_insert(since);
                    // A source in backoff waits for its retry.
                    if !self.retry.holds(&id) {
                        self.pending.insert(id);
                    }
                }
            }
            Work::All => {
                let mut ids: BTreeSet<B::Id> = self.known.keys().cloned().collect();
                ids.extend(self.book.wanting());
                for id in ids {
                    self.retry.succeeded(&id);
                    self.looks.insert(id.clone());
                    self.pending.insert(id);
                }
            }
        }
    }

    /// Bring one source's entry where it should be.
    async fn reconcile(&mut self, id: &B::Id) {
        let look = self.looks.remove(id);
        match self.reconcile_inner(id, look).await {
            Ok(()) => {
                self.retry.succeeded(id);
                self.handed.remove(id);
                if self.failures.remove(id).is_some() {
                    tracing::info!(source = %id, "Vault entry written again after failures");
                }
            }
            Err((_, Halt::Gate)) => {
                // Not sent: whoever leads next (this instance too) looks again.
                tracing::debug!(source = %id, "write gate closed; Vault requests stopped");
                self.looks.insert(id.clone());
                self.pending.insert(id.clone());
            }
            Err((path, Halt::Store(e))) => {
                let failure = S::classify(&e);
                let delay = if failure == Failure::CasMismatch {
                    // Someone wrote in between: look again soon.
                    self.retry.hold(id.clone(), 1, Duration::from_millis(500));
                    Duration::from_millis(500)
                } else {
                    self.retry.failed(id.clone())
                };
                let note = format!("Vault entry {}/{path}: {e}", self.settings.kv_mount);
                tracing::warn!(source = %id, retry_in_s = delay.as_secs_f64(), "{note}");
                if failure != Failure::CasMismatch && self.failures.get(id) != Some(&e.to_string())
                {
                    self.failures.insert(id.clone(), e.to_string());
                    self.event(
                        id,
                        EventType::Warning,
                        "VaultFailed",
                        format!("{note}; retried with backoff"),
                    )
                    .await;
                }
            }
        }
        self.publish_known();
        self.metrics.vault_entries.set(self.known.len() as i64);
        self.metrics
            .vault_conflicts
            .set(self.conflicts.len() as i64);
        let logins = self.store.logins();
        if logins > self.logins_seen {
            self.metrics.vault_logins.inc_by(logins - self.logins_seen);
            self.logins_seen = logins;
        }
    }

    async fn reconcile_inner(
        &mut self,
        id: &B::Id,
        look: bool,
    ) -> Result<(), (String, Halt<S::Error>)> {
        if self.book.forgotten(id) {
            if self.known.remove(id).is_some() {
                tracing::info!(source = %id, "Vault entry forgotten, left as it is (its PushRule is no longer held)");
            }
            return Ok(());
        }
        let wanted = match self.book.desired(id) {
            Ok(d) => {
                self.refused.remove(id);
                d
            }
            Err((uid, invalid)) => {
                {
                    // Only this source's Vault entry is left alone; its
                    // namespace copies are not affected.
                    let note = invalid.to_string();
                    let seen = (uid, note.clone());
                    if self.refused.get(id) != Some(&seen) {
                        self.refused.insert(id.clone(), seen);
                        self.metrics
                            .invalid_annotations
                            .get_or_create(&AnnotationLabels {
                                annotation: invalid.metric_label(),
                            })
                            .inc();
                        tracing::warn!(source = %id, "Vault entry not written: {note}");
                        self.event(id, EventType::Warning, "InvalidAnnotation", note)
                            .await;
                    }
                    return Ok(());
                }
            }
        };

        // An entry this source no longer wants (the source, its label or its
        // path went, or the path changed).
        if let Some(known) = self.known.get(id).cloned()
            && wanted.as_ref().map(|d| &d.path) != Some(&known.path)
        {
            if known.preserve {
                self.known.remove(id);
                tracing::info!(source = %id, path = %known.path, "Vault entry preserved (vault-preserve-on-delete)");
                self.event(
                    id,
                    EventType::Normal,
                    "VaultPreserved",
                    format!(
                        "Vault entry {}/{} kept (vault-preserve-on-delete)",
                        self.settings.kv_mount, known.path
                    ),
                )
                .await;
            } else if let Some(why) = self.book.keep_entries(id) {
                // Still known, so a later look deletes it if its source
                // does not come back.
                tracing::warn!(source = %id, path = %known.path, "Vault entry not deleted: {why}");
                return Ok(());
            } else {
                self.delete(id, &known.path)
                    .await
                    .map_err(|e| (known.path.clone(), e))?;
                self.known.remove(id);
            }
        }
        let Some(desired) = wanted else {
            self.conflicts.remove(id);
            return Ok(());
        };
        let unchanged = self.known.get(id).is_some_and(|k| {
            k.path == desired.path && k.hash == desired.hash && k.preserve == desired.preserve
        });
        if unchanged && !look {
            return Ok(());
        }
        let path = desired.path.clone();
        self.converge(id, &desired).await.map_err(|e| (path, e))
    }

    fn us(&self) -> Us<'_> {
        Us {
            namespace: &self.settings.source_namespace,
            cluster: &self.settings.cluster,
        }
    }

    async fn converge(&mut self, id: &B::Id, desired: &Desired) -> Result<(), Halt<S::Error>> {
        let observed = self
            .call("read", false, |s| s.read_metadata(&desired.path))
            .await?;
        match entry::step(desired, observed.as_ref(), self.us(), id) {
            Step::Nothing => {
                self.remember(id, desired);
                self.conflicts.remove(id);
                Ok(())
            }
            Step::Create => {
                // The mark first: a create cut short (a crash, a lost
                // answer, the gate) is then recognisably ours.
                let mark = entry::pending_metadata(self.us(), id, &desired.hash);
                self.call("metadata", true, |s| s.write_metadata(&desired.path, &mark))
                    .await?;
                self.write(id, desired, 0, "VaultWritten").await
            }
            Step::Write { cas } => self.write(id, desired, cas, "VaultWritten").await,
            Step::Adopt { cas } => self.write(id, desired, cas, "VaultAdopted").await,
            Step::Verify { cas, pending } => {
                let data = self
                    .call("read", false, |s| s.read_data(&desired.path))
                    .await?;
                if data.as_ref().map(entry::content_hash).as_deref() == Some(pending.as_str()) {
                    // Our own create, its last metadata write lost: finish
                    // it (with what was written; a newer value follows).
                    let custom = entry::custom_metadata(self.us(), id, &pending, cas);
                    self.call("metadata", true, |s| {
                        s.write_metadata(&desired.path, &custom)
                    })
                    .await?;
                    tracing::info!(source = %id, path = %desired.path, "unfinished Vault create finished");
                    if pending == desired.hash {
                        self.remember(id, desired);
                        self.conflicts.remove(id);
                        Ok(())
                    } else {
                        self.write(id, desired, cas, "VaultWritten").await
                    }
                } else {
                    self.conflict(id, desired, Owner::Unfinished).await;
                    Ok(())
                }
            }
            Step::Conflict { owner } => {
                self.conflict(id, desired, owner).await;
                Ok(())
            }
        }
    }

    /// Write the data (check-and-set against `cas`), then our metadata
    /// naming the version written. Data first: the create's `cas=0` is what
    /// makes it safe against anyone else's entry appearing meanwhile.
    async fn write(
        &mut self,
        id: &B::Id,
        desired: &Desired,
        cas: u64,
        reason: &str,
    ) -> Result<(), Halt<S::Error>> {
        let version = self
            .call("write", true, |s| {
                s.write_data(&desired.path, &desired.data, cas)
            })
            .await?;
        let custom = entry::custom_metadata(self.us(), id, &desired.hash, version);
        self.call("metadata", true, |s| {
            s.write_metadata(&desired.path, &custom)
        })
        .await?;
        self.remember(id, desired);
        self.conflicts.remove(id);
        if let Some(at) = self.handed.remove(id) {
            self.metrics
                .observe_propagation_to("vault", at.elapsed().as_secs_f64());
        }
        let what = if reason == "VaultAdopted" {
            "adopted"
        } else {
            "wrote"
        };
        tracing::info!(source = %id, path = %desired.path, version, keys = desired.data.len(), "Vault entry {what}");
        self.event(
            id,
            EventType::Normal,
            reason,
            format!(
                "{what} Vault entry {}/{} (version {version}, {} keys)",
                self.settings.kv_mount,
                desired.path,
                desired.data.len()
            ),
        )
        .await;
        Ok(())
    }

    /// Delete every version and the metadata at `path`, if it is still ours.
    async fn delete(&mut self, id: &B::Id, path: &str) -> Result<(), Halt<S::Error>> {
        let observed = self.call("read", false, |s| s.read_metadata(path)).await?;
        let Some(observed) = observed else {
            return Ok(());
        };
        let ours = match entry::deletable(&observed, self.us(), id) {
            Deletable::Yes => true,
            Deletable::No => false,
            Deletable::IfData(pending) => {
                let data = self.call("read", false, |s| s.read_data(path)).await?;
                data.as_ref().map(entry::content_hash).as_deref() == Some(pending.as_str())
            }
        };
        if !ours {
            tracing::info!(source = %id, path, "Vault entry no longer ours; left as it is");
            return Ok(());
        }
        self.call("delete", true, |s| s.delete_all(path)).await?;
        tracing::info!(source = %id, path, "Vault entry deleted");
        self.event(
            id,
            EventType::Normal,
            "VaultDeleted",
            format!("deleted Vault entry {}/{path}", self.settings.kv_mount),
        )
        .await;
        Ok(())
    }

    async fn conflict(&mut self, id: &B::Id, desired: &Desired, owner: Owner) {
        self.known.remove(id);
        let whose = owner.whose();
        let now = (desired.path.clone(), whose.clone());
        if self.conflicts.get(id) == Some(&now) {
            return;
        }
        self.conflicts.insert(id.clone(), now);
        let note = format!(
            "Vault entry {}/{} exists and was {whose}; left as it is (adoption needs push-to-k8s.io/adopt and ALLOW_ADOPTION)",
            self.settings.kv_mount, desired.path
        );
        tracing::warn!(source = %id, "{note}");
        self.event(id, EventType::Warning, "VaultConflict", note)
            .await;
    }

    fn remember(&mut self, id: &B::Id, desired: &Desired) {
        self.known.insert(
            id.clone(),
            Known {
                path: desired.path.clone(),
                preserve: desired.preserve,
                hash: desired.hash.clone(),
            },
        );
    }

    /// One paced request, counted by operation and result. A `write` asks
    /// the write gate right before it is sent (after the limiter and the
    /// login, so nothing but this check stands between the two) and is not
    /// sent when it is closed.
    async fn call<'a, T, F, Fut>(
        &'a self,
        op: &'static str,
        write: bool,
        request: F,
    ) -> Result<T, Halt<S::Error>>
    where
        F: FnOnce(&'a S) -> Fut,
        Fut: Future<Output = Result<T, S::Error>> + 'a,
    {
        self.pacer.ready().await;
        let result = if write {
            match self.store.ensure_login().await {
                Err(e) => Err(e),
                Ok(()) if !self.gate.open() => return Err(Halt::Gate),
                Ok(()) => request(&self.store).await,
            }
        } else {
            request(&self.store).await
        };
        let label = match &result {
            Ok(_) => "ok",
            Err(e) => S::reason(e),
        };
        self.metrics
            .vault_requests
            .get_or_create(&VaultLabels { op, result: label })
            .inc();
        // Vault is degraded while it does not answer or does not let us in;
        // a refusal of one request (a policy that does not cover one path)
        // is that source's failure, not Vault's.
        match result.as_ref().err().map(S::classify) {
            Some(Failure::Unreachable | Failure::Login) => {
                let why = result.as_ref().err().map(ToString::to_string);
                self.metrics.vault_up.set(0);
                self.health.set_vault_degraded(why);
            }
            _ => {
                self.metrics.vault_up.set(1);
                self.health.set_vault_degraded(None);
            }
        }
        match result {
            Err(e) if S::classify(&e) == Failure::Gate => Err(Halt::Gate),
            other => other.map_err(Halt::Store),
        }
    }

    /// An Event on the source, if it (still) exists.
    async fn event(&self, id: &B::Id, type_: EventType, reason: &str, note: String) {
        let Some(reference) = self.book.event_ref(id) else {
            return;
        };
        self.events
            .publish(&reference, type_, reason, "Vault", note)
            .await;
    }

    /// Where each source with a Vault path stands.
    #[cfg(test)]
    pub fn standings(&self) -> BTreeMap<B::Id, Standing> {
        let mut out = BTreeMap::new();
        for id in self.known.keys() {
            out.insert(id.clone(), Standing::InSync);
        }
        for (id, (path, whose)) in &self.conflicts {
            out.insert(id.clone(), Standing::Conflict(format!("{path}: {whose}")));
        }
        for (id, why) in &self.failures {
            out.insert(id.clone(), Standing::Failing(why.clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records::SourceRecord;
    use crate::model::rules::NamespaceInfo;
    use k8s_openapi::api::core::v1::Secret;
    use std::sync::Mutex;

    /// An in-memory KV v2 mount with Vault's check-and-set rules.
    #[derive(Default)]
    struct Fake {
        entries: Mutex<BTreeMap<String, FakeEntry>>,
        down: std::sync::atomic::AtomicBool,
        requests: Mutex<Vec<String>>,
        /// The worker's write gate: open until a request starting with
        /// `close_on` is made.
        leading: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
        close_on: Mutex<Option<String>>,
    }

    #[derive(Clone, Default)]
    struct FakeEntry {
        versions: Vec<Option<BTreeMap<String, String>>>,
        custom: BTreeMap<String, String>,
    }

    #[derive(Debug)]
    enum FakeError {
        Down,
        Cas,
    }

    impl fmt::Display for FakeError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{self:?}")
        }
    }

    impl Fake {
        fn log(&self, what: String) -> Result<(), FakeError> {
            let close = self
                .close_on
                .lock()
                .unwrap()
                .as_ref()
                .is_some_and(|c| what.starts_with(c.as_str()));
            if close && let Some(leading) = self.leading.lock().unwrap().as_ref() {
                leading.send_replace(false);
            }
            self.requests.lock().unwrap().push(what);
            if self.down.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(FakeError::Down);
            }
            Ok(())
        }
        fn take_requests(&self) -> Vec<String> {
            std::mem::take(&mut self.requests.lock().unwrap())
        }
        fn data(&self, path: &str) -> Option<BTreeMap<String, String>> {
            let e = self.entries.lock().unwrap();
            e.get(path)?.versions.last().cloned().flatten()
        }
    }

    impl Store for Arc<Fake> {
        type Error = FakeError;
        async fn read_metadata(&self, path: &str) -> Result<Option<Observed>, FakeError> {
            self.log(format!("read_metadata {path}"))?;
            Ok(self.entries.lock().unwrap().get(path).map(|e| Observed {
                current_version: e.versions.len() as u64,
                custom: e.custom.clone(),
                current_deleted: e.versions.last().is_none_or(Option::is_none),
            }))
        }
        async fn write_metadata(
            &self,
            path: &str,
            custom: &BTreeMap<String, String>,
        ) -> Result<(), FakeError> {
            self.log(format!("write_metadata {path}"))?;
            self.entries
                .lock()
                .unwrap()
                .entry(path.into())
                .or_default()
                .custom = custom.clone();
            Ok(())
        }
        async fn write_data(
            &self,
            path: &str,
            data: &BTreeMap<String, String>,
            cas: u64,
        ) -> Result<u64, FakeError> {
            self.log(format!("write_data {path} cas={cas}"))?;
            let mut entries = self.entries.lock().unwrap();
            let e = entries.entry(path.into()).or_default();
            if e.versions.len() as u64 != cas {
                return Err(FakeError::Cas);
            }
            e.versions.push(Some(data.clone()));
            Ok(e.versions.len() as u64)
        }
        async fn read_data(
            &self,
            path: &str,
        ) -> Result<Option<BTreeMap<String, String>>, FakeError> {
            self.log(format!("read_data {path}"))?;
            Ok(self.data(path))
        }
        async fn delete_all(&self, path: &str) -> Result<(), FakeError> {
            self.log(format!("delete_all {path}"))?;
            self.entries.lock().unwrap().remove(path);
            Ok(())
        }
        async fn ensure_login(&self) -> Result<(), FakeError> {
            Ok(())
        }
        fn classify(e: &FakeError) -> Failure {
            match e {
                FakeError::Down => Failure::Unreachable,
                FakeError::Cas => Failure::CasMismatch,
            }
        }
        fn reason(_: &FakeError) -> &'static str {
            "error"
        }
        fn logins(&self) -> u64 {
            1
        }
    }

    fn secret(annotations: &[(&str, &str)], value: &str) -> Secret {
        entry::tests::secret(annotations, &[("password", value.as_bytes())])
    }

    use crate::targets::vault::entry::tests::id;

    fn target(
        fake: &Arc<Fake>,
        caches: &Arc<Caches>,
        allow_adoption: bool,
    ) -> Target<Arc<Fake>, Sources> {
        let (client, _server) = crate::fixtures::client();
        // Events go nowhere: their gate is closed. The worker's is open
        // until the fake closes it.
        let (_tx, closed) = tokio::sync::watch::channel(false);
        let events = Arc::new(Events::new(
            client,
            kube::runtime::events::Reporter {
                controller: "t".into(),
                instance: None,
            },
            "src".into(),
            Arc::new(WriteGate::new(closed, CancellationToken::new())),
        ));
        let (leading, open) = tokio::sync::watch::channel(true);
        *fake.leading.lock().unwrap() = Some(leading);
        let gate = Arc::new(WriteGate::new(open, CancellationToken::new()));
        let book = Sources {
            caches: caches.clone(),
            events: events.clone(),
            source_namespace: "src".into(),
            kinds: vec![Kind::Secret],
            allow_adoption,
        };
        Target::new(
            fake.clone(),
            Settings {
                source_namespace: "src".into(),
                cluster: "east".into(),
                kv_mount: "secret".into(),
                rate: std::num::NonZeroU32::new(100).unwrap(),
                check_interval: Duration::from_secs(60),
            },
            book,
            Context {
                caches: caches.clone(),
                gate,
                events,
                metrics: Arc::new(Metrics::new()),
                health: Arc::new(Health::default()),
            },
        )
    }

    fn set(caches: &Caches, s: Option<&Secret>) {
        let rec = s.map(|s| SourceRecord::from_secret(s, "src").unwrap().1);
        caches.of(Kind::Secret).sources.set("db".into(), rec);
    }

    /// Look at the source's entry, as a check or a retry does.
    async fn look(t: &mut Target<Arc<Fake>, Sources>) {
        t.looks.insert(id());
        t.reconcile(&id()).await;
    }

    /// Caches holding the source namespace `src` (as the namespace watch
    /// would), so deletes are allowed.
    fn caches() -> Arc<Caches> {
        let caches = Arc::new(Caches::for_kinds(&[Kind::Secret], &[Kind::Secret]));
        caches
            .namespaces
            .set("src".into(), Some(NamespaceInfo::default()));
        caches
    }

    /// Issue 16 item 12, in Vault: while the source namespace is being
    /// deleted (every source goes with it) or is absent, no entry is deleted;
    /// once it is back without the source, the entry goes.
    #[tokio::test]
    async fn no_entry_is_deleted_while_the_source_namespace_is_lost() {
        let (fake, caches) = (Arc::new(Fake::default()), caches());
        let mut t = target(&fake, &caches, false);
        let path = [(crate::model::vocabulary::PATH_ANNOTATION, "team/db")];
        set(&caches, Some(&secret(&path, "s3cret")));
        look(&mut t).await;
        assert!(fake.data("team/db").is_some());
        fake.take_requests();
        let terminating = NamespaceInfo {
            terminating: true,
            ..Default::default()
        };
        caches.namespaces.set("src".into(), Some(terminating));
        set(&caches, None);
        look(&mut t).await;
        assert!(
            fake.take_requests().is_empty(),
            "no request while terminating"
        );
        caches.namespaces.set("src".into(), None);
        look(&mut t).await;
        assert!(fake.take_requests().is_empty(), "no request while absent");
        assert!(fake.data("team/db").is_some(), "the entry stays");
        caches
            .namespaces
            .set("src".into(), Some(NamespaceInfo::default()));
        look(&mut t).await;
        assert!(
            fake.data("team/db").is_none(),
            "back without its source: deleted"
        );
    }

    // Issue 20: Vault's propagation latency is measured from the first change
    // of the batch that handed the source over, the earliest one not written
    // yet, not from when the worker took it.
    #[tokio::test]
    async fn vault_propagation_is_measured_from_the_first_change() {
        let (fake, caches) = (Arc::new(Fake::default()), caches());
        let mut t = target(&fake, &caches, false);
        set(
            &caches,
            Some(&secret(
                &[(crate::model::vocabulary::PATH_ANNOTATION, "team/db")],
                "s3cret",
            )),
        );
        let first = std::time::Instant::now() - Duration::from_secs(5);
        t.take(Work::Sources(vec![id()], first));
        t.take(Work::Sources(vec![id()], std::time::Instant::now()));
        let next = t.pending.pop_first().unwrap();
        t.reconcile(&next).await;
        assert!(fake.data("team/db").is_some());
        let text = t.metrics.encode();
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("push_to_k8s_propagation_seconds_sum{target=\"vault\"} "))
            .unwrap_or_else(|| panic!("no vault propagation in\n{text}"))
            .parse()
            .unwrap();
        assert!(
            text.contains("push_to_k8s_propagation_seconds_count{target=\"vault\"} 1"),
            "{text}"
        );
        assert!((5.0..60.0).contains(&sum), "vault propagation {sum} s");
    }

    #[tokio::test]
    async fn create_update_and_delete_cost_what_they_must() {
        let (fake, caches) = (Arc::new(Fake::default()), caches());
        let mut t = target(&fake, &caches, false);
        let path = [(crate::model::vocabulary::PATH_ANNOTATION, "team/db")];
        set(&caches, Some(&secret(&path, "s3cret")));
        look(&mut t).await;
        assert_eq!(
            fake.take_requests(),
            [
                "read_metadata team/db",
                "write_metadata team/db",
                "write_data team/db cas=0",
                "write_metadata team/db"
            ]
        );
        assert_eq!(fake.data("team/db").unwrap()["password"], "s3cret");
        let custom = fake.entries.lock().unwrap()["team/db"].custom.clone();
        assert_eq!(custom[crate::model::vocabulary::META_CLUSTER], "east");
        assert!(
            !custom.contains_key(crate::model::vocabulary::META_PENDING),
            "{custom:?}"
        );
        // In sync: a check reads, writes nothing; an event that leaves the
        // entry as it is (a copy of the source changed) costs nothing.
        t.take(Work::All);
        let next = t.pending.pop_first().unwrap();
        t.reconcile(&next).await;
        assert_eq!(fake.take_requests(), ["read_metadata team/db"]);
        t.take(Work::Sources(vec![id()], std::time::Instant::now()));
        let next = t.pending.pop_first().unwrap();
        t.reconcile(&next).await;
        assert!(fake.take_requests().is_empty());
        // A new value: a read (whose is it now?), then two writes.
        set(&caches, Some(&secret(&path, "rotated")));
        look(&mut t).await;
        assert_eq!(
            fake.take_requests(),
            [
                "read_metadata team/db",
                "write_data team/db cas=1",
                "write_metadata team/db"
            ]
        );
        // Edited in Vault: the check restores it.
        fake.entries
            .lock()
            .unwrap()
            .get_mut("team/db")
            .unwrap()
            .versions
            .push(Some(BTreeMap::new()));
        look(&mut t).await;
        assert_eq!(fake.data("team/db").unwrap()["password"], "rotated");
        fake.take_requests();
        // The source goes: the entry goes (ownership checked first).
        set(&caches, None);
        look(&mut t).await;
        assert_eq!(
            fake.take_requests(),
            ["read_metadata team/db", "delete_all team/db"]
        );
        assert!(fake.entries.lock().unwrap().is_empty());
        assert!(t.standings().is_empty());
    }

    #[tokio::test]
    async fn someone_elses_entry_is_never_written_or_deleted() {
        let (fake, caches) = (Arc::new(Fake::default()), caches());
        let theirs = FakeEntry {
            versions: vec![Some(BTreeMap::from([("k".into(), "v".into())]))],
            custom: BTreeMap::from([("owner".into(), "team".into())]),
        };
        fake.entries
            .lock()
            .unwrap()
            .insert("team/db".into(), theirs.clone());
        let mut t = target(&fake, &caches, true);
        set(
            &caches,
            Some(&secret(
                &[(crate::model::vocabulary::PATH_ANNOTATION, "team/db")],
                "x",
            )),
        );
        look(&mut t).await;
        set(&caches, None);
        look(&mut t).await;
        assert_eq!(fake.take_requests(), ["read_metadata team/db"]);
        let after = fake.entries.lock().unwrap()["team/db"].clone();
        assert_eq!(
            (after.versions, after.custom),
            (theirs.versions.clone(), theirs.custom.clone())
        );
        // Adoption asked and allowed: taken over.
        set(
            &caches,
            Some(&secret(
                &[
                    (crate::model::vocabulary::PATH_ANNOTATION, "team/db"),
                    ("push-to-k8s.io/adopt", "true"),
                ],
                "x",
            )),
        );
        look(&mut t).await;
        assert_eq!(fake.data("team/db").unwrap()["password"], "x");
        assert_eq!(
            entry::owner(
                &fake.entries.lock().unwrap()["team/db"].custom,
                entry::tests::US,
                &id()
            ),
            Owner::Ours
        );
    }

    #[tokio::test]
    async fn preserve_on_delete_and_a_moved_path() {
        let (fake, caches) = (Arc::new(Fake::default()), caches());
        let mut t = target(&fake, &caches, false);
        set(
            &caches,
            Some(&secret(
                &[(crate::model::vocabulary::PATH_ANNOTATION, "a")],
                "x",
            )),
        );
        look(&mut t).await;
        // Moved: the new one written, the old one deleted.
        set(
            &caches,
            Some(&secret(
                &[(crate::model::vocabulary::PATH_ANNOTATION, "b")],
                "x",
            )),
        );
        look(&mut t).await;
        assert!(fake.data("a").is_none() && fake.data("b").is_some());
        set(
            &caches,
            Some(&secret(
                &[
                    (crate::model::vocabulary::PATH_ANNOTATION, "b"),
                    (crate::model::vocabulary::PRESERVE_ANNOTATION, "true"),
                ],
                "x",
            )),
        );
        look(&mut t).await;
        set(&caches, None);
        fake.take_requests();
        look(&mut t).await;
        assert!(fake.take_requests().is_empty());
        assert!(fake.data("b").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn vault_down_holds_the_source_with_backoff_and_recovers() {
        let (fake, caches) = (Arc::new(Fake::default()), caches());
        let mut t = target(&fake, &caches, false);
        set(
            &caches,
            Some(&secret(
                &[(crate::model::vocabulary::PATH_ANNOTATION, "p")],
                "x",
            )),
        );
        fake.down.store(true, std::sync::atomic::Ordering::SeqCst);
        look(&mut t).await;
        assert!(t.retry.holds(&id()));
        assert!(matches!(t.standings()[&id()], Standing::Failing(_)));
        assert_eq!(t.metrics.vault_up.get(), 0);
        // A change while held waits for the retry.
        t.take(Work::Sources(vec![id()], std::time::Instant::now()));
        assert!(t.pending.is_empty());
        fake.down.store(false, std::sync::atomic::Ordering::SeqCst);
        let due = t.retry.next().await;
        t.reconcile(&due).await;
        assert_eq!(fake.data("p").unwrap()["password"], "x");
        assert_eq!(t.standings()[&id()], Standing::InSync);
        assert_eq!(t.metrics.vault_up.get(), 1);
    }

    // Issue 16, item 3: an entry without our metadata holding exactly what
    // we would write was claimed (its data read and found equal), and
    // deleted with all its versions when the source went.
    #[tokio::test]
    async fn equal_values_are_not_ours_only_our_pending_create_is() {
        let (fake, caches) = (Arc::new(Fake::default()), caches());
        let mut t = target(&fake, &caches, false);
        let path = [(crate::model::vocabulary::PATH_ANNOTATION, "p")];
        set(&caches, Some(&secret(&path, "x")));
        // Someone wrote exactly our values, without our metadata.
        let data = BTreeMap::from([("password".to_string(), "x".to_string())]);
        fake.write_data("p", &data, 0).await.unwrap();
        fake.take_requests();
        look(&mut t).await;
        set(&caches, None);
        look(&mut t).await;
        assert_eq!(fake.take_requests(), ["read_metadata p"]);
        let left = fake.entries.lock().unwrap()["p"].clone();
        assert!(left.custom.is_empty() && left.versions.len() == 1);

        // Our create cut short after its data write: our mark, our data.
        fake.entries.lock().unwrap().clear();
        set(&caches, Some(&secret(&path, "x")));
        let us = entry::tests::US;
        let mark = entry::pending_metadata(us, &id(), &entry::content_hash(&data));
        fake.write_metadata("p", &mark).await.unwrap();
        fake.write_data("p", &data, 0).await.unwrap();
        fake.take_requests();
        look(&mut t).await;
        assert_eq!(t.standings()[&id()], Standing::InSync);
        assert_eq!(
            fake.take_requests(),
            ["read_metadata p", "read_data p", "write_metadata p"]
        );
        assert_eq!(
            entry::step(
                &entry::desired(
                    &caches
                        .of(Kind::Secret)
                        .sources
                        .get(&"db".to_string())
                        .unwrap(),
                    false
                )
                .unwrap()
                .unwrap(),
                fake.read_metadata("p").await.unwrap().as_ref(),
                us,
                &id()
            ),
            Step::Nothing
        );
        // Our mark, but someone else's data: theirs, never deleted.
        fake.entries.lock().unwrap().clear();
        fake.write_metadata("p", &mark).await.unwrap();
        let other = BTreeMap::from([("password".to_string(), "y".to_string())]);
        fake.write_data("p", &other, 0).await.unwrap();
        look(&mut t).await;
        assert!(matches!(t.standings()[&id()], Standing::Conflict(_)));
        t.known.insert(
            id(),
            Known {
                path: "p".into(),
                preserve: false,
                hash: String::new(),
            },
        );
        set(&caches, None);
        fake.take_requests();
        look(&mut t).await;
        assert_eq!(fake.take_requests(), ["read_metadata p", "read_data p"]);
        assert_eq!(fake.data("p").unwrap(), other);
    }

    // Issue 16, item 4: the worker asked the write gate once per source, so
    // a standby-to-be sent the rest of that source's requests after the
    // gate had closed.
    #[tokio::test]
    async fn every_write_request_asks_the_gate_right_before_it_is_sent() {
        let (fake, caches) = (Arc::new(Fake::default()), caches());
        let mut t = target(&fake, &caches, false);
        set(
            &caches,
            Some(&secret(
                &[(crate::model::vocabulary::PATH_ANNOTATION, "p")],
                "x",
            )),
        );
        // The Lease is lost while the data write is under way.
        *fake.close_on.lock().unwrap() = Some("write_data".into());
        look(&mut t).await;
        assert_eq!(
            fake.take_requests(),
            ["read_metadata p", "write_metadata p", "write_data p cas=0"],
            "the metadata write went after the gate closed"
        );
        // Not a failure: looked at again when the gate opens.
        assert!(t.pending.contains(&id()) && t.looks.contains(&id()));
        assert!(!t.retry.holds(&id()));
        // Leading again: the create is finished.
        *fake.close_on.lock().unwrap() = None;
        fake.leading
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .send_replace(true);
        let next = t.pending.pop_first().unwrap();
        t.reconcile(&next).await;
        assert_eq!(t.standings()[&id()], Standing::InSync);
        fake.take_requests();
        // The gate closes while the delete's metadata is read.
        set(&caches, None);
        *fake.close_on.lock().unwrap() = Some("read_metadata".into());
        look(&mut t).await;
        assert_eq!(fake.take_requests(), ["read_metadata p"]);
        assert!(fake.data("p").is_some());
        // And while the entry is rewritten: no metadata write after the data.
        fake.leading
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .send_replace(true);
        set(
            &caches,
            Some(&secret(
                &[(crate::model::vocabulary::PATH_ANNOTATION, "p")],
                "y",
            )),
        );
        *fake.close_on.lock().unwrap() = Some("write_data".into());
        look(&mut t).await;
        assert_eq!(
            fake.take_requests(),
            ["read_metadata p", "write_data p cas=1"]
        );
    }

    // Found by tests/e2e_vault.rs: an entry whose custom metadata someone
    // replaced (taking it over) was overwritten by the next source change,
    // planned from memory without a read: a metadata change does not bump
    // the version, so the check-and-set write went through.
    #[tokio::test]
    async fn an_entry_taken_over_in_vault_is_not_overwritten_by_the_next_change() {
        let (fake, caches) = (Arc::new(Fake::default()), caches());
        let mut t = target(&fake, &caches, false);
        let path = [(crate::model::vocabulary::PATH_ANNOTATION, "p")];
        set(&caches, Some(&secret(&path, "x")));
        look(&mut t).await;
        let theirs = BTreeMap::from([("owner".to_string(), "team-b".to_string())]);
        fake.entries.lock().unwrap().get_mut("p").unwrap().custom = theirs.clone();
        set(&caches, Some(&secret(&path, "y")));
        t.take(Work::Sources(vec![id()], std::time::Instant::now()));
        let id = t.pending.pop_first().unwrap();
        t.reconcile(&id).await;
        let entry = fake.entries.lock().unwrap()["p"].clone();
        assert_eq!(entry.custom, theirs);
        assert_eq!(entry.versions.len(), 1, "their entry was written");
        assert!(matches!(t.standings()[&id], Standing::Conflict(_)));
    }
}
