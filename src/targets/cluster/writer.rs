//! The writer: turns planned [`Action`]s into API requests.
//!
//! Every write request (create, apply, update, delete) first waits on one
//! shared limiter ([`crate::write::pace::Pacer`]), so the API load is `SECRET_SYNC_RATE_LIMIT`
//! requests per second whatever caused them. One namespace failing never
//! blocks another: each action ends in its own [`Outcome`], which the caller
//! feeds to the per-copy retry queue ([`crate::write::retry`]); the source gets an
//! Event ([`crate::write::events`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::EventType;
use tokio::time::Instant;

use crate::decide::plan::Action;
use crate::model::kinds::Kind;
use crate::model::records::{ObjectKey, ReplicaRecord, field_names, owned_source_in};
use crate::model::replica::Replica;
use crate::model::vocabulary::FIELD_MANAGER;
use crate::observe::cache::Caches;
use crate::operate::api_errors;
use crate::operate::http::Health;
use crate::operate::metrics::Metrics;
use crate::write::events::Events;
use crate::write::gate::WriteGate;
use crate::write::pace::Pacer;

/// Writes in flight at once. The limiter alone decides the rate; a few
/// requests in flight only hide API latency so that rate is actually reached.
const IN_FLIGHT: usize = 4;

/// How one action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// Nothing to do after all (namespace gone, object already deleted).
    Skipped,
    /// An unmanaged object of the same name exists; it is left alone.
    Conflict,
    /// An unmanaged object of the same name was taken over as the copy, as
    /// its source asks and the controller allows ([`crate::decide::adoption`]).
    Adopted,
    /// Its source asks for adoption, but this object is never adopted (the
    /// reason); it is left alone, a conflict like any other.
    NotAdopted(&'static str),
    /// Failed for a reason worth retrying; carries a short reason (never a value).
    Failed(String),
    /// Not sent: the write gate closed (the Lease was lost, or shutdown).
    /// Whoever leads next plans it again.
    Abandoned,
}

pub struct Writer {
    client: kube::Client,
    source_namespace: String,
    pacer: Arc<Pacer>,
    pub events: Arc<Events>,
    metrics: Arc<Metrics>,
    caches: Arc<Caches>,
    /// Unmanaged same-named objects we must not overwrite.
    pub conflicts: Mutex<HashSet<ObjectKey>>,
    /// Copies the server changed while writing them (a mutating webhook or
    /// admission policy rewrote a label we set): the resourceVersion our
    /// write produced. What we wrote is the measure of "in sync" for them,
    /// so a server that always changes our request is not written forever.
    pub accepted: Mutex<HashMap<ObjectKey, String>>,
    /// `ALLOW_ADOPTION`: an unmanaged object in the way of a copy may be
    /// taken over when its source asks for it.
    allow_adoption: bool,
    gate: Arc<WriteGate>,
    /// Writing into a remote cluster: its registration name (for Events and
    /// logs) and the source-cluster stamp our copies there carry.
    remote: Option<Remote>,
    /// Every `(kind, source, copy name)` a source asked for while this
    /// instance ran: a copy under such a name is collected on the
    /// propagation path (see [`Writer::split_strays`]).
    asked: Mutex<HashSet<(Kind, String, String)>>,
    /// Deletes of strays, waiting for the low-priority lane ([`Writer::sweep`]).
    strays: Mutex<BTreeMap<ObjectKey, Action>>,
    /// The caller runs [`Writer::sweep`] beside its loop; otherwise each
    /// flush sweeps at most [`SWEEP_INLINE`] strays after its writes.
    sweeps_apart: bool,
}

/// Strays deleted by one flush of a writer whose caller does not sweep apart.
pub const SWEEP_INLINE: usize = 8;

/// A remote cluster a writer writes into.
#[derive(Clone, Debug)]
pub struct Remote {
    pub cluster: String,
    pub stamp: String,
    /// The cluster's own gate, asked with the write gate before each
    /// request: closed once its registration is removed, while its API
    /// server does not answer, and while another registration owns it.
    pub pass: Arc<dyn ClusterPass>,
}

/// The gate of one remote cluster (its registration's), asked with the
/// write gate before each request there. Implemented by
/// `targets::remote::site::Pass`; a trait so the writer needs nothing of the
/// remote module.
pub trait ClusterPass: std::fmt::Debug + Send + Sync {
    /// Whether a write request may go to the cluster now.
    fn open(&self) -> bool;
}

#[derive(Default)]
struct Tally {
    done: BTreeMap<&'static str, usize>,
    failed: Vec<(String, String)>,
    conflicts: Vec<String>,
    adopted: Vec<String>,
    not_adopted: Vec<(String, &'static str)>,
}

impl Writer {
    pub fn new(
        client: kube::Client,
        source_namespace: String,
        pacer: Arc<Pacer>,
        events: Arc<Events>,
        metrics: Arc<Metrics>,
        caches: Arc<Caches>,
        gate: Arc<WriteGate>,
    ) -> Writer {
        Writer {
            client,
            source_namespace,
            pacer,
            events,
            metrics,
            caches,
            conflicts: Mutex::default(),
            accepted: Mutex::default(),
            allow_adoption: false,
            gate,
            remote: None,
            asked: Mutex::default(),
            strays: Mutex::default(),
            sweeps_apart: false,
        }
    }

    /// The caller runs [`Writer::sweep`] beside its control loop (at low
    /// priority): flushes only queue strays.
    pub fn sweeping_apart(mut self) -> Writer {
        self.sweeps_apart = true;
        self
    }

    pub fn sweeps_apart(&self) -> bool {
        self.sweeps_apart
    }

    /// Remember the copy names the `sources` of `kind` ask for now.
    pub fn record_asked(
        &self,
        kind: Kind,
        sources: &HashMap<String, crate::model::records::SourceRecord>,
    ) {
        let mut asked = self.asked.lock().expect("lock");
        for (name, s) in sources {
            let pair = (kind, name.clone(), s.replica.name.clone());
            if !asked.contains(&pair) {
                asked.insert(pair);
            }
        }
    }

    /// Of the planned `actions`, those for the propagation path; deletes of
    /// *strays* are queued for [`Writer::sweep`] instead. A stray is an object
    /// that passes the ownership rules under a name that no source asks for,
    /// nor asked for while this instance ran: a copy of a source deleted (or
    /// renamed) while we were down, or an object a tenant made to look like
    /// a copy. Telling these apart would need a record the tenant cannot
    /// forge; instead their cost is kept off the propagation path
    /// (docs/architecture.md, "Strays").
    pub fn split_strays(&self, actions: Vec<Action>) -> Vec<Action> {
        let asked = self.asked.lock().expect("lock");
        let (mut keep, mut strays) = (Vec::with_capacity(actions.len()), Vec::new());
        for a in actions {
            let stray = matches!(a, Action::Delete { .. }) && {
                let key = a.key();
                !asked.contains(&(a.kind(), a.source().to_string(), key.name))
            };
            if stray { strays.push(a) } else { keep.push(a) }
        }
        drop(asked);
        if !strays.is_empty() {
            let mut queued = self.strays.lock().expect("lock");
            for a in strays {
                queued.insert(a.key(), a);
            }
            self.metrics.stray_copies.set(queued.len() as i64);
        }
        keep
    }

    /// Strays waiting to be deleted.
    pub fn strays_pending(&self) -> usize {
        self.strays.lock().expect("lock").len()
    }

    /// Delete up to `max` queued strays, one request at a time (so at most
    /// one limiter slot is ever reserved ahead of a flush that starts
    /// meanwhile), each still a stray as the caches show it now (same uid,
    /// still no source asking for its name). No Event: a tenant's forgeries
    /// must not flood the source namespace. Returns how many were deleted.
    pub async fn sweep(&self, max: usize) -> usize {
        let batch: Vec<Action> = {
            let mut queued = self.strays.lock().expect("lock");
            let asked = self.asked.lock().expect("lock");
            let mut batch = Vec::new();
            while batch.len() < max {
                let Some((key, action)) = queued.pop_first() else {
                    break;
                };
                let Action::Delete { uid, source, .. } = &action else {
                    continue;
                };
                let of = self.caches.of(key.kind);
                let same = of
                    .replicas
                    .get(&key)
                    .is_some_and(|r| r.uid.to_string() == *uid);
                let now_asked = asked.contains(&(key.kind, source.clone(), key.name.clone()))
                    || of
                        .sources
                        .get(source)
                        .is_some_and(|s| s.replica.name == key.name);
                if same && !now_asked {
                    batch.push(action);
                }
            }
            self.metrics.stray_copies.set(queued.len() as i64);
            batch
        };
        let mut deleted = 0;
        for action in &batch {
            if !self.gate.open() {
                break;
            }
            let outcome = self.run(action).await;
            let result = match &outcome {
                Outcome::Done => "ok",
                Outcome::Skipped => "skipped",
                Outcome::Abandoned => "abandoned",
                _ => "error",
            };
            self.metrics.write(action.kind(), action.op(), result);
            deleted += usize::from(outcome == Outcome::Done);
        }
        if !batch.is_empty() {
            tracing::info!(
                deleted,
                swept = batch.len(),
                left = self.strays_pending(),
                "strays swept: objects marked as copies under a name no source asks for"
            );
        }
        self.metrics
            .managed_replicas
            .set(self.caches.replica_count() as i64);
        deleted
    }

    /// Writing into the remote cluster `remote.cluster`: every copy carries
    /// the stamp, and only copies with it are ours there. Nothing is adopted
    /// in a remote cluster.
    pub fn into_remote(mut self, remote: Remote) -> Writer {
        self.remote = Some(remote);
        self.allow_adoption = false;
        self
    }

    fn stamp(&self) -> Option<&str> {
        self.remote.as_ref().map(|r| r.stamp.as_str())
    }

    /// How Events name a namespace: in a remote cluster, with the cluster.
    pub fn place(&self, ns: &str) -> String {
        match &self.remote {
            None => format!("namespace {ns}"),
            Some(r) => format!("namespace {ns} of cluster {}", r.cluster),
        }
    }

    /// With `ALLOW_ADOPTION`: copies whose source asks for it take over an
    /// unmanaged object in their way (see [`crate::decide::adoption`]).
    pub fn allowing_adoption(mut self, allowed: bool) -> Writer {
        self.allow_adoption = allowed;
        self
    }

    pub fn adoption_allowed(&self) -> bool {
        self.allow_adoption
    }

    /// Wait for the limiter, then ask the write gate: `false` means do not
    /// send (not leading any more, or shutting down).
    async fn admitted(&self) -> bool {
        self.pacer.ready().await;
        self.open()
    }

    /// The write gate, and in a remote cluster its own gate too.
    fn open(&self) -> bool {
        self.gate.open() && self.remote.as_ref().is_none_or(|r| r.pass.open())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Execute `actions`; `since` is when the first change of this batch was
    /// seen. Returns how each ended (actions abandoned at shutdown are left
    /// out), for the caller's retry queue.
    pub async fn execute(
        &self,
        actions: Vec<Action>,
        since: Instant,
        health: &Health,
    ) -> Vec<(ObjectKey, Outcome)> {
        let results: Vec<(Action, Outcome)> = futures::stream::iter(actions)
            .map(|a| async move {
                if !self.open() {
                    return None;
                }
                let outcome = self.run(&a).await;
                health.beat();
                if matches!(outcome, Outcome::Done | Outcome::Adopted) {
                    // Observed as each write completes, not when the batch does.
                    self.metrics
                        .observe_propagation(since.elapsed().as_secs_f64());
                }
                Some((a, outcome))
            })
            .buffer_unordered(IN_FLIGHT)
            .filter_map(|r| async move { r })
            .collect()
            .await;

        let mut tallies: BTreeMap<(Kind, String), Tally> = BTreeMap::new();
        let mut outcomes = Vec::with_capacity(results.len());
        for (action, outcome) in results {
            let key = action.key();
            let tally = tallies
                .entry((action.kind(), action.source().to_string()))
                .or_default();
            let result = match &outcome {
                Outcome::Done => "ok",
                Outcome::Skipped => "skipped",
                Outcome::Conflict | Outcome::NotAdopted(_) => "conflict",
                Outcome::Adopted => "adopted",
                Outcome::Failed(_) => "error",
                Outcome::Abandoned => "abandoned",
            };
            self.metrics.write(action.kind(), action.op(), result);
            match &outcome {
                Outcome::Done => {
                    *tally.done.entry(action.op()).or_default() += 1;
                }
                Outcome::Skipped | Outcome::Abandoned => {}
                Outcome::Conflict => {
                    self.metrics.conflicts.inc();
                    tally.conflicts.push(key.namespace.clone());
                    self.conflicts.lock().expect("lock").insert(key.clone());
                }
                Outcome::Adopted => {
                    self.metrics.adoptions.inc();
                    tally.adopted.push(key.namespace.clone());
                }
                Outcome::NotAdopted(why) => {
                    self.metrics.conflicts.inc();
                    tally.not_adopted.push((key.namespace.clone(), why));
                    self.conflicts.lock().expect("lock").insert(key.clone());
                }
                Outcome::Failed(reason) => {
                    tally.failed.push((key.namespace.clone(), reason.clone()));
                }
            }
            outcomes.push((key, outcome));
        }
        self.metrics
            .managed_replicas
            .set(self.caches.replica_count() as i64);
        for ((kind, source), tally) in tallies {
            self.report(kind, &source, tally).await;
        }
        outcomes
    }

    async fn run(&self, action: &Action) -> Outcome {
        let key = action.key();
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &key.kind.api_resource(),
        );
        let desired = || {
            self.caches
                .of(key.kind)
                .sources
                .get(&action.source().to_string())
                .map(|s| s.replica)
                // Gone, or renamed since this was planned: re-planned anyway.
                .filter(|r| r.name == key.name)
                .map(|mut r| {
                    if let Some(stamp) = self.stamp() {
                        r.annotations.insert(
                            crate::model::vocabulary::SOURCE_CLUSTER_ANNOTATION.into(),
                            stamp.into(),
                        );
                    }
                    r
                })
                .ok_or(Outcome::Skipped)
        };
        let result = match action {
            Action::Create { .. } => match desired() {
                Ok(d) => self.create(&api, &key, &d).await,
                Err(o) => o,
            },
            Action::Update {
                uid,
                resource_version,
                ..
            } => match desired() {
                Ok(d) => {
                    self.apply(&api, &key, &d, uid, resource_version, Over::Copy)
                        .await
                }
                Err(o) => o,
            },
            Action::Replace {
                uid,
                resource_version,
                ..
            } => match desired() {
                Ok(d) => self.replace(&api, &key, &d, uid, resource_version).await,
                Err(o) => o,
            },
            Action::Delete {
                uid,
                resource_version,
                ..
            } => self.delete(&api, &key, uid, resource_version).await,
        };
        match &result {
            Outcome::Failed(reason) => {
                tracing::warn!(op = action.op(), copy = %key, reason, "write failed")
            }
            other => tracing::debug!(op = action.op(), copy = %key, outcome = ?other, "write"),
        }
        result
    }

    fn remember(&self, kind: Kind, written: &ObjectMeta) {
        if let Some((k, r)) =
            ReplicaRecord::from_meta_in(kind, written, &self.source_namespace, self.stamp())
        {
            self.caches.of(kind).replicas.set(k, Some(r));
        }
    }

    /// Delete (UID and resourceVersion preconditions), then create.
    async fn replace(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        desired: &Replica,
        uid: &str,
        resource_version: &str,
    ) -> Outcome {
        match self.delete(api, key, uid, resource_version).await {
            Outcome::Done | Outcome::Skipped => self.create(api, key, desired).await,
            other => other,
        }
    }

    async fn create(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        desired: &Replica,
    ) -> Outcome {
        if !self.admitted().await {
            return Outcome::Abandoned;
        }
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match api.create(&pp, &body(desired, &key.namespace, None)).await {
            Ok(created) => {
                self.remember(key.kind, &created.metadata);
                self.done_as_stored(key, desired, &created.metadata)
            }
            Err(kube::Error::Api(s)) if s.is_already_exists() => {
                // Ours but not yet in the cache, or somebody else's? Ask (metadata only).
                match api.get_metadata_opt(&key.name).await {
                    Ok(Some(meta)) => {
                        // Ours: our source's, and (serving PushRules) a rule held here.
                        let ours =
                            owned_source_in(&meta.metadata, &self.source_namespace, self.stamp())
                                .as_deref()
                                == Some(desired.source.as_str())
                                && self
                                    .caches
                                    .ruled
                                    .as_ref()
                                    .is_none_or(|r| (r.owns)(&meta.metadata));
                        if ours {
                            Outcome::Failed("copy exists but was not yet in the cache".into())
                        } else if self.adopts(desired) {
                            self.adopt(api, key, desired, &meta.metadata).await
                        } else {
                            self.tell_the_other_source(key, desired, &meta.metadata)
                                .await;
                            Outcome::Conflict
                        }
                    }
                    Ok(None) => Outcome::Failed("copy vanished during create".into()),
                    Err(e) => Outcome::Failed(api_errors::describe(&e)),
                }
            }
            Err(e) => classify(&e),
        }
    }

    /// The object in the way of a copy is another source's copy in this
    /// cluster (a labelled source's or a PushRule's): say so on that source
    /// too, so both sides of the conflict see it; neither copy is changed.
    async fn tell_the_other_source(&self, key: &ObjectKey, desired: &Replica, meta: &ObjectMeta) {
        use crate::model::vocabulary::{
            MANAGED_LABEL_KEY, MANAGED_LABEL_VALUE, RULE_ANNOTATION, SOURCE_ANNOTATION,
            SOURCE_CLUSTER_ANNOTATION,
        };
        if self.remote.is_some() {
            return;
        }
        let managed = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(MANAGED_LABEL_KEY))
            .is_some_and(|v| v == MANAGED_LABEL_VALUE);
        let Some(annotations) = meta.annotations.as_ref() else {
            return;
        };
        let Some((ns, name)) = annotations
            .get(SOURCE_ANNOTATION)
            .and_then(|s| s.split_once('/'))
        else {
            return;
        };
        if !managed || annotations.contains_key(SOURCE_CLUSTER_ANNOTATION) {
            return;
        }
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some(key.kind.name().into()),
            namespace: Some(ns.to_string()),
            name: Some(name.to_string()),
            ..Default::default()
        };
        let asker = match desired.annotations.get(RULE_ANNOTATION) {
            Some(rule) => format!(
                "PushRule {rule} (source {}/{})",
                self.source_namespace, desired.source
            ),
            None => format!("the source {}/{}", self.source_namespace, desired.source),
        };
        self.events
            .publish(
                &reference,
                EventType::Warning,
                "Conflict",
                "Push",
                format!(
                    "{asker} also asks for a {} named {} in namespace {}, where this source's copy is; both were left as they are",
                    key.kind, key.name, key.namespace
                ),
            )
            .await;
    }

    /// Do the copies of `desired`'s source take over what is in their way?
    fn adopts(&self, desired: &Replica) -> bool {
        self.allow_adoption
            && self
                .caches
                .of(desired.kind)
                .sources
                .get(&desired.source)
                .is_some_and(|s| crate::decide::adoption::wanted(&s, true))
    }

    /// Take over `found`, the unmanaged object with the copy's name, as its
    /// source asks: the apply path with the uid and resourceVersion read,
    /// so nothing but exactly that object is ever written, and never a
    /// delete ([`Over::Adopted`]).
    async fn adopt(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        desired: &Replica,
        found: &ObjectMeta,
    ) -> Outcome {
        if let Some(why) =
            crate::decide::adoption::refusal(found, &self.source_namespace, self.stamp())
        {
            return Outcome::NotAdopted(why);
        }
        let (Some(uid), Some(rv)) = (found.uid.as_deref(), found.resource_version.as_deref())
        else {
            return Outcome::Failed("the object to adopt has no uid or resourceVersion".into());
        };
        // Boxed: apply may (for our own copies) replace, which creates.
        match Box::pin(self.apply(api, key, desired, uid, rv, Over::Adopted)).await {
            Outcome::Done => Outcome::Adopted,
            other => other,
        }
    }

    async fn apply(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        desired: &Replica,
        uid: &str,
        resource_version: &str,
        over: Over,
    ) -> Outcome {
        // Precondition: we only overwrite the object we saw as ours.
        let mut patch = body(desired, &key.namespace, Some(resource_version));
        if over == Over::Adopted {
            // And exactly the object we read: another uid is refused (422).
            patch.metadata.uid = Some(uid.to_string());
        }
        if !self.admitted().await {
            return Outcome::Abandoned;
        }
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let applied = match api.patch(&key.name, &pp, &Patch::Apply(&patch)).await {
            Ok(applied) => applied,
            // The copy's `type` differs (the metadata watch cannot see it), or
            // it became immutable meanwhile: only a delete and a create help.
            Err(kube::Error::Api(s)) if refused_as_immutable(&s) => {
                if over == Over::Adopted {
                    // Never deleted to be adopted: it stays as it is.
                    return Outcome::NotAdopted(
                        "its type or immutability cannot change in place (delete it, and the copy is created)",
                    );
                }
                return self.replace(api, key, desired, uid, resource_version).await;
            }
            Err(e) => return classify(&e),
        };
        self.remember(key.kind, &applied.metadata);
        let record = ReplicaRecord::from_meta_in(
            key.kind,
            &applied.metadata,
            &self.source_namespace,
            self.stamp(),
        );
        let in_sync = record
            .as_ref()
            .is_some_and(|(_, r)| crate::decide::plan::in_sync(r, desired));
        let stale = stale_keys(&applied.metadata, desired);
        // An adopted object also loses what its former owners set.
        let leftovers = over == Over::Adopted && foreign_metadata(&applied.metadata, desired);
        if in_sync && stale.is_empty() && !leftovers {
            return Outcome::Done;
        }
        // The content is exactly ours (our hash, every key ours, no key of
        // anyone else's) and nothing we set is stale, yet it is not in sync:
        // only a label or annotation differs, so the server itself changed
        // our request (a mutating webhook or policy).
        let content_ours = record.as_ref().is_some_and(|(_, r)| {
            r.has_hash(&desired.hash)
                && !r.content.foreign
                && r.content.our_keys == desired.keys_hash
        });
        if stale.is_empty() && content_ours && !leftovers {
            // We own everything we set, nothing stale: the server itself
            // changed our request (a mutating webhook or policy). A full
            // update would come back changed the same way; what we wrote is
            // the measure from now on.
            return self.accept(key, &applied.metadata);
        }
        // Apply prunes only what our *apply* entry owned. Fields somebody else
        // owns (a data key added by hand) and fields our create (a POST, so an
        // Update entry) set but the source no longer has (a removed label)
        // stay. One full update makes the copy exactly the desired one.
        let full = body(
            desired,
            &key.namespace,
            applied.metadata.resource_version.as_deref(),
        );
        if !self.admitted().await {
            return Outcome::Abandoned;
        }
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        match api.replace(&key.name, &pp, &full).await {
            Ok(updated) => {
                self.remember(key.kind, &updated.metadata);
                self.done_as_stored(key, desired, &updated.metadata)
            }
            Err(e) => classify(&e),
        }
    }

    /// A write succeeded: if the server stored something else than we sent
    /// (a mutating webhook), take what it stored as written.
    fn done_as_stored(&self, key: &ObjectKey, desired: &Replica, stored: &ObjectMeta) -> Outcome {
        let in_sync =
            ReplicaRecord::from_meta_in(key.kind, stored, &self.source_namespace, self.stamp())
                .is_some_and(|(_, r)| crate::decide::plan::in_sync(&r, desired));
        if in_sync {
            Outcome::Done
        } else {
            self.accept(key, stored)
        }
    }

    /// Remember that `written`, as the server stored it, is what we wrote.
    fn accept(&self, key: &ObjectKey, written: &ObjectMeta) -> Outcome {
        if let Some(rv) = written.resource_version.clone() {
            tracing::debug!(copy = %key, "the server changed our write; taking what it stored as written");
            self.accepted.lock().expect("lock").insert(key.clone(), rv);
        }
        Outcome::Done
    }

    async fn delete(
        &self,
        api: &Api<DynamicObject>,
        key: &ObjectKey,
        uid: &str,
        resource_version: &str,
    ) -> Outcome {
        if !self.admitted().await {
            return Outcome::Abandoned;
        }
        // Losing the source namespace deletes nothing (its deletion deletes
        // every source): the flush plans no delete then, and a delete planned
        // before is not sent. Planned again once it is back.
        if let Some(why) = self.caches.source_namespace_lost(&self.source_namespace) {
            tracing::warn!(copy = %key, "delete not sent: {why}");
            return Outcome::Abandoned;
        }
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: Some(resource_version.to_string()),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&key.name, &dp).await {
            Ok(_) => {
                self.caches.of(key.kind).replicas.set(key.clone(), None);
                Outcome::Done
            }
            Err(kube::Error::Api(s)) if s.is_not_found() => {
                self.caches.of(key.kind).replicas.set(key.clone(), None);
                Outcome::Skipped
            }
            Err(e) => classify(&e),
        }
    }

    /// Events on the source: one summary per flush, one per new conflict.
    /// Only names, namespaces, counts and reasons; never a value.
    async fn report(&self, kind: Kind, source: &str, tally: Tally) {
        let note = tally
            .done
            .iter()
            .map(|(op, n)| format!("{op} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        if !note.is_empty() {
            tracing::info!(kind = kind.label(), source, writes = %note, "copies written");
        }
        if !tally.conflicts.is_empty() {
            tracing::warn!(kind = kind.label(), source, namespaces = ?tally.conflicts, "copies skipped: an unmanaged object of the same name exists");
        }
        if !tally.adopted.is_empty() {
            tracing::info!(kind = kind.label(), source, namespaces = ?tally.adopted, "unmanaged objects adopted as copies, as the source asks");
        }
        for (ns, why) in &tally.not_adopted {
            tracing::warn!(kind = kind.label(), source, namespace = %ns, why, "copy skipped: the unmanaged object in its way is never adopted");
        }
        let Some(rec) = self.caches.of(kind).sources.get(&source.to_string()) else {
            return; // a deleted source has nothing to carry Events
        };
        let events = &self.events;
        let reference = events.source_ref(kind, source, &rec.uid);
        if !tally.done.is_empty() {
            events
                .publish(
                    &reference,
                    EventType::Normal,
                    "Pushed",
                    "Push",
                    match &self.remote {
                        None => format!("copies written: {note}"),
                        Some(r) => format!("copies written in cluster {}: {note}", r.cluster),
                    },
                )
                .await;
        }
        for ns in tally.conflicts {
            events.publish(
                &reference,
                EventType::Warning,
                "Conflict",
                "Push",
                format!(
                    "{} already has a {kind} named {} that push-to-k8s does not manage; it was left untouched",
                    self.place(&ns),
                    rec.replica.name
                ),
            )
            .await;
        }
        let name = &rec.replica.name;
        for ns in tally.adopted {
            events.publish(
                &reference,
                EventType::Normal,
                "Adopted",
                "Push",
                format!(
                    "namespace {ns} had a {kind} named {name} that push-to-k8s did not manage; as the source asks ({}), it was adopted and is now an exact copy",
                    crate::model::vocabulary::ADOPT_ANNOTATION
                ),
            )
            .await;
        }
        for (ns, why) in tally.not_adopted {
            events.publish(
                &reference,
                EventType::Warning,
                "Conflict",
                "Push",
                format!(
                    "namespace {ns} already has a {kind} named {name} that push-to-k8s does not manage; it is not adopted although the source asks, because {why}; it was left untouched"
                ),
            )
            .await;
        }
        if !tally.failed.is_empty() {
            let n = tally.failed.len();
            let sample = tally
                .failed
                .iter()
                .take(5)
                .map(|(ns, r)| match &self.remote {
                    None => format!("{ns}: {r}"),
                    Some(remote) => format!("{}/{ns}: {r}", remote.cluster),
                })
                .collect::<Vec<_>>()
                .join("; ");
            events
                .publish(
                    &reference,
                    EventType::Warning,
                    "PushFailed",
                    "Push",
                    format!("{n} copies failed, retrying with backoff ({sample})"),
                )
                .await;
        }
    }
}

/// Whose object an in-place write (a forced apply, then a full update if
/// needed) goes over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Over {
    /// One of our copies. A field that cannot change in place (its `type`)
    /// is changed by a delete and a create; labels and annotations someone
    /// else added may stay.
    Copy,
    /// An unmanaged object being adopted: guarded by its uid as well, never
    /// deleted, and left with nothing its former owners set.
    Adopted,
}

/// Does `obj` carry a label or annotation that `desired` does not set (our
/// content hash aside)? On an adopted object: what its former owners left.
fn foreign_metadata(obj: &ObjectMeta, desired: &Replica) -> bool {
    let labels = obj.labels.iter().flatten();
    let annotations = obj.annotations.iter().flatten();
    labels
        .into_iter()
        .any(|(k, _)| !desired.labels.contains_key(k))
        || annotations.into_iter().any(|(k, _)| {
            k != crate::model::vocabulary::HASH_ANNOTATION && !desired.annotations.contains_key(k)
        })
}

/// Label, annotation and data keys our field manager owns on `obj` (by any
/// operation) that `desired` no longer sets.
pub fn stale_keys(obj: &ObjectMeta, desired: &Replica) -> Vec<String> {
    let mut stale = Vec::new();
    let entries = obj.managed_fields.iter().flatten();
    // Where each content key belongs: a Secret's `data` holds bytes; a
    // ConfigMap's `data` text and its `binaryData` bytes.
    let (data, binary) = match desired.kind {
        Kind::Secret => (desired.data.keys().collect::<Vec<_>>(), Vec::new()),
        Kind::ConfigMap => (desired.text.keys().collect(), desired.data.keys().collect()),
    };
    for entry in entries.filter(|e| e.manager.as_deref() == Some(FIELD_MANAGER)) {
        let Some(fields) = entry.fields_v1.as_ref().map(|f| &f.0) else {
            continue;
        };
        let meta = fields.get("f:metadata");
        for k in field_names(meta.and_then(|m| m.get("f:labels"))) {
            if !desired.labels.contains_key(k) {
                stale.push(format!("label {k}"));
            }
        }
        for k in field_names(meta.and_then(|m| m.get("f:annotations"))) {
            if k != crate::model::vocabulary::HASH_ANNOTATION
                && !desired.annotations.contains_key(k)
            {
                stale.push(format!("annotation {k}"));
            }
        }
        for k in field_names(fields.get("f:data")) {
            if !data.iter().any(|d| d.as_str() == k) {
                stale.push(format!("data key {k}"));
            }
        }
        for k in field_names(fields.get("f:binaryData")) {
            if !binary.iter().any(|d| d.as_str() == k) {
                stale.push(format!("binaryData key {k}"));
            }
        }
    }
    stale
}

/// The object we send for `desired` into `namespace`; with `resource_version`
/// as a precondition (the copy we saw as ours).
fn body(desired: &Replica, namespace: &str, resource_version: Option<&str>) -> DynamicObject {
    let mut obj: DynamicObject =
        serde_json::from_value(desired.to_json(namespace)).expect("a copy is a valid object");
    obj.metadata.resource_version = resource_version.map(str::to_string);
    obj
}

/// Whether a 422 is the server's refusal to change a field that cannot
/// change in place: a Secret's `type`, or `data`/`immutable` of an immutable
/// Secret. Only then is a delete and create the answer; any other 422 (a bad
/// label value, say) is a failure to report, not a reason to delete a copy.
pub fn refused_as_immutable(s: &kube::core::Status) -> bool {
    const FIELDS: &[&str] = &["type", "data", "immutable"];
    let causes = s
        .details
        .as_ref()
        .map(|d| d.causes.as_slice())
        .unwrap_or(&[]);
    s.code == 422
        && !causes.is_empty()
        && causes
            .iter()
            .all(|c| FIELDS.contains(&c.field.as_str()) && c.message.contains("field is immutable"))
}

fn classify(e: &kube::Error) -> Outcome {
    match e {
        // The namespace is gone or going: its copies go with it.
        kube::Error::Api(s) if s.is_not_found() => Outcome::Skipped,
        kube::Error::Api(s) if s.is_forbidden() && s.message.contains("being terminated") => {
            Outcome::Skipped
        }
        other => Outcome::Failed(api_errors::describe(other)),
    }
}

/// "Exactly these requests, nothing else": the writer against a mock API
/// server that checks each request (method, path and query, body) in order.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records::SourceRecord;
    use crate::model::vocabulary::{MANAGED_LABEL_KEY, SOURCE_LABEL_KEY};
    use crate::write::events::Events;
    use http::{Method, StatusCode};
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;

    use crate::fixtures::{self, ApiServer as ApiHandle, Reply, next, reply, success};
    use kube::runtime::events::Reporter;
    use serde_json::{Value, json};
    use std::collections::BTreeMap;
    use std::num::NonZeroU32;
    use tokio_util::sync::CancellationToken;

    const SRC: &str = "src";

    fn writer() -> (Writer, ApiHandle, Arc<Caches>) {
        let (client, handle) = fixtures::client();
        let caches = Arc::new(Caches::new());
        let source = Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some("db".into()),
                namespace: Some(SRC.into()),
                uid: Some("src-uid".into()),
                labels: Some(BTreeMap::from([(SOURCE_LABEL_KEY.into(), "source".into())])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("k".into(), ByteString(b"v".to_vec()))])),
            ..Default::default()
        };
        let (name, rec) = SourceRecord::from_secret(&source, SRC).unwrap();
        caches.of(Kind::Secret).sources.set(name, Some(rec));
        // The source namespace is there (else nothing is deleted).
        caches.namespaces.set(
            SRC.into(),
            Some(crate::model::rules::NamespaceInfo::default()),
        );
        let reporter = Reporter {
            controller: "push-to-k8s".into(),
            instance: None,
        };
        let nz = |n| NonZeroU32::new(n).unwrap();
        let w = Writer::new(
            client.clone(),
            SRC.into(),
            Arc::new(Pacer::new(nz(100), nz(10))),
            Arc::new(Events::new(
                client.clone(),
                reporter,
                SRC.into(),
                Arc::new(WriteGate::single(CancellationToken::new())),
            )),
            Arc::new(Metrics::new()),
            caches.clone(),
            Arc::new(WriteGate::single(CancellationToken::new())),
        );
        (w, handle, caches)
    }

    /// `body` as the API server returns it after our write: with a UID, the
    /// new resourceVersion and our managed fields.
    fn stored(mut body: Value, rv: &str) -> Value {
        body["metadata"]["uid"] = json!("copy-uid");
        body["metadata"]["resourceVersion"] = json!(rv);
        let keys: Vec<&str> = body["data"]
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let entry = crate::model::records::managed_entry(FIELD_MANAGER, &keys, false);
        body["metadata"]["managedFields"] = json!([entry]);
        body
    }

    async fn expect_event(handle: &mut ApiHandle, reason: &str) {
        fixtures::expect_event(handle, SRC, reason, "\"v\"").await;
    }

    /// Returns how each action ended and the copies accepted as written.
    async fn run(
        w: Writer,
        mut handle: ApiHandle,
        actions: Vec<Action>,
        server: impl AsyncFnOnce(&mut ApiHandle),
    ) -> (Vec<(ObjectKey, Outcome)>, HashMap<ObjectKey, String>) {
        let health = Health::default();
        let client = async move {
            let outcomes = w.execute(actions, Instant::now(), &health).await;
            let accepted = w.accepted.lock().unwrap().clone();
            drop(w); // drops the last client: the mock sees no further request
            (outcomes, accepted)
        };
        let server = async move {
            server(&mut handle).await;
            fixtures::done(handle).await;
        };
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            futures::future::join(client, server),
        )
        .await
        .expect("writer finished")
        .0
    }

    #[tokio::test]
    async fn update_is_one_forced_apply_guarded_by_resource_version() {
        let (w, handle, caches) = writer();
        let action = Action::Update {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
            uid: "copy-uid".into(),
            resource_version: "7".into(),
        };
        run(w, handle, vec![action], async |h: &mut ApiHandle| {
            let (method, uri, body, send) = next(h).await;
            assert_eq!(method, Method::PATCH);
            assert_eq!(
                uri,
                "/api/v1/namespaces/a/secrets/db?&force=true&fieldManager=push-to-k8s"
            );
            assert_eq!(body["metadata"]["resourceVersion"], "7");
            assert_eq!(body["metadata"]["labels"][MANAGED_LABEL_KEY], "push-to-k8s");
            assert_eq!(
                body["metadata"]["annotations"]["push-to-k8s.io/source"],
                "src/db"
            );
            assert_eq!(body["data"]["k"], "dg==");
            assert!(body["metadata"]["labels"].get(SOURCE_LABEL_KEY).is_none());
            reply(send, StatusCode::OK, stored(body, "8"));
            expect_event(h, "Pushed").await;
        })
        .await;
        let key = ObjectKey {
            kind: Kind::Secret,
            namespace: "a".into(),
            name: "db".into(),
        };
        assert_eq!(
            caches
                .of(Kind::Secret)
                .replicas
                .get(&key)
                .unwrap()
                .resource_version,
            "8",
            "write-through cache"
        );
    }

    #[tokio::test]
    async fn create_over_an_unmanaged_object_is_a_conflict_not_an_overwrite() {
        let (w, handle, _) = writer();
        let action = Action::Create {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
        };
        run(w, handle, vec![action], async |h: &mut ApiHandle| {
            let (method, uri, _, send) = next(h).await;
            assert_eq!(method, Method::POST);
            assert_eq!(uri, "/api/v1/namespaces/a/secrets?&fieldManager=push-to-k8s");
            reply(
                send,
                StatusCode::CONFLICT,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "reason": "AlreadyExists", "code": 409, "message": "secrets \"db\" already exists"}),
            );
            // Whose is it? A metadata-only GET, never a write.
            let (method, uri, _, send) = next(h).await;
            assert_eq!(method, Method::GET);
            assert_eq!(uri, "/api/v1/namespaces/a/secrets/db");
            reply(
                send,
                StatusCode::OK,
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                       "metadata": {"name": "db", "namespace": "a", "uid": "theirs",
                                    "labels": {MANAGED_LABEL_KEY: "push-to-k8s"},
                                    "annotations": {"push-to-k8s.io/source": "other-ns/db"}}}),
            );
            // Another source's copy (issue 19: a rule's or another
            // namespace's): that source is told too, then ours.
            fixtures::expect_event(h, "other-ns", "Conflict", "\"v\"").await;
            expect_event(h, "Conflict").await;
        })
        .await;
    }

    /// The writer of [`writer`], with `ALLOW_ADOPTION` as `allowed`, and its
    /// source `db` with `push-to-k8s.io/adopt` as `asks` (absent if `None`).
    fn adoption_writer(allowed: bool, asks: Option<&str>) -> (Writer, ApiHandle, Arc<Caches>) {
        let (w, handle, caches) = writer();
        let sources = &caches.of(Kind::Secret).sources;
        let mut rec = sources.get(&"db".to_string()).unwrap();
        if let Some(v) = asks {
            rec.annotations
                .insert(crate::model::vocabulary::ADOPT_ANNOTATION.into(), v.into());
        }
        sources.set("db".into(), Some(rec));
        (w.allowing_adoption(allowed), handle, caches)
    }

    fn create_db() -> Action {
        Action::Create {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
        }
    }

    /// POST → 409 AlreadyExists, then the metadata GET, answered with
    /// `found` (an object in namespace `a` named `db`).
    async fn expect_create_refused_then_get(h: &mut ApiHandle, found: Value) {
        let (method, uri, _, send) = next(h).await;
        assert_eq!(method, Method::POST);
        assert_eq!(
            uri,
            "/api/v1/namespaces/a/secrets?&fieldManager=push-to-k8s"
        );
        reply(
            send,
            StatusCode::CONFLICT,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "AlreadyExists", "code": 409, "message": "secrets \"db\" already exists"}),
        );
        let (method, uri, _, send) = next(h).await;
        assert_eq!(method, Method::GET);
        assert_eq!(uri, "/api/v1/namespaces/a/secrets/db");
        let meta = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                          "metadata": found});
        reply(send, StatusCode::OK, meta);
    }

    /// An unmanaged Secret `a/db` as its owner left it: uid `theirs`,
    /// resourceVersion 5, a label and a Helm annotation of its own.
    fn theirs() -> Value {
        json!({"name": "db", "namespace": "a", "uid": "theirs", "resourceVersion": "5",
               "labels": {"app": "legacy"},
               "annotations": {"meta.helm.sh/release-name": "old"}})
    }

    /// The next request must be an Event with `reason`; its type and note.
    async fn expect_note(h: &mut ApiHandle, reason: &str) -> (String, String) {
        let (method, uri, body, send) = next(h).await;
        assert_eq!(method, Method::POST, "{uri}");
        assert!(
            uri.starts_with("/apis/events.k8s.io/v1/namespaces/src/events"),
            "{uri}"
        );
        assert_eq!(body["reason"], reason, "{body}");
        let out = (
            body["type"].as_str().unwrap_or_default().to_string(),
            body["note"].as_str().unwrap_or_default().to_string(),
        );
        reply(send, StatusCode::CREATED, body);
        out
    }

    /// The forced apply of an adoption: guarded by the uid and the
    /// resourceVersion read, carrying our markers and the source's data.
    async fn expect_adopting_apply(h: &mut ApiHandle) -> (Value, Reply) {
        let (method, uri, body, send) = next(h).await;
        assert_eq!(method, Method::PATCH);
        assert_eq!(
            uri,
            "/api/v1/namespaces/a/secrets/db?&force=true&fieldManager=push-to-k8s"
        );
        assert_eq!(body["metadata"]["uid"], "theirs");
        assert_eq!(body["metadata"]["resourceVersion"], "5");
        assert_eq!(body["metadata"]["labels"][MANAGED_LABEL_KEY], "push-to-k8s");
        assert_eq!(
            body["metadata"]["annotations"]["push-to-k8s.io/source"],
            "src/db"
        );
        assert_eq!(body["data"], json!({"k": "dg=="}));
        (body, send)
    }

    // Issue 8, adoption: with both switches, an unmanaged object in the way
    // is adopted in place: POST → 409, GET, one forced apply guarded by its
    // uid and resourceVersion; nothing else when that leaves it exact.
    #[tokio::test]
    async fn adoption_is_one_apply_guarded_by_the_uid_and_resource_version_read() {
        let (w, handle, caches) = adoption_writer(true, Some("true"));
        let metrics = w.metrics.clone();
        let (outcomes, _) = run(w, handle, vec![create_db()], async |h: &mut ApiHandle| {
            let mut found = theirs();
            found["labels"] = json!({});
            found["annotations"] = json!({});
            expect_create_refused_then_get(h, found).await;
            let (body, send) = expect_adopting_apply(h).await;
            reply(send, StatusCode::OK, stored(body, "6"));
            let (type_, note) = expect_note(h, "Adopted").await;
            assert_eq!(type_, "Normal");
            assert!(
                note.contains("namespace a ") && note.contains("adopted"),
                "{note}"
            );
        })
        .await;
        let key = ObjectKey::new(Kind::Secret, "a", "db");
        assert_eq!(outcomes, vec![(key.clone(), Outcome::Adopted)]);
        let cached = caches.of(Kind::Secret).replicas.get(&key).unwrap();
        assert_eq!(cached.resource_version, "6", "now a copy in the cache");
        let text = metrics.encode();
        assert!(text.contains("push_to_k8s_adoptions_total 1"), "{text}");
        assert!(text.contains("result=\"adopted\""), "{text}");
    }

    // Issue 8, adoption: what the former owner left (a data key, a label, a
    // Helm annotation) is removed by one full update, guarded by the
    // resourceVersion our apply produced: the object ends an exact copy.
    #[tokio::test]
    async fn an_adopted_object_keeps_nothing_its_former_owner_set() {
        // What the apply leaves: the former owner's label and Helm
        // annotation (our apply never removes what it does not own), or a
        // data key of theirs. Either way, one full update.
        for leftover in ["metadata", "data"] {
            let (w, handle, _) = adoption_writer(true, Some("true"));
            let (outcomes, _) = run(w, handle, vec![create_db()], async |h: &mut ApiHandle| {
                expect_create_refused_then_get(h, theirs()).await;
                let (body, send) = expect_adopting_apply(h).await;
                let mut applied = stored(body, "6");
                let theirs_owns: &[&str] = if leftover == "data" {
                    applied["data"]["theirs"] = json!("eA==");
                    &["k", "theirs"]
                } else {
                    applied["metadata"]["labels"]["app"] = json!("legacy");
                    applied["metadata"]["annotations"]["meta.helm.sh/release-name"] = json!("old");
                    &["k"]
                };
                applied["metadata"]["managedFields"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!(crate::model::records::managed_entry(
                        "kubectl-create",
                        theirs_owns,
                        false
                    )));
                reply(send, StatusCode::OK, applied);
                let (method, uri, body, send) = next(h).await;
                assert_eq!(method, Method::PUT, "{leftover}: {uri}");
                assert_eq!(
                    uri,
                    "/api/v1/namespaces/a/secrets/db?&fieldManager=push-to-k8s"
                );
                assert_eq!(body["metadata"]["resourceVersion"], "6");
                assert_eq!(
                    body["data"],
                    json!({"k": "dg=="}),
                    "exactly the source's keys"
                );
                assert!(body["metadata"]["labels"].get("app").is_none(), "{body}");
                let annotations = body["metadata"]["annotations"].as_object().unwrap();
                assert!(
                    !annotations.contains_key("meta.helm.sh/release-name"),
                    "{body}"
                );
                reply(send, StatusCode::OK, stored(body, "7"));
                expect_note(h, "Adopted").await;
            })
            .await;
            assert_eq!(outcomes[0].1, Outcome::Adopted, "{leftover}");
        }
    }

    // Issue 8, adoption: without both switches (adoption allowed, the source
    // asking "true") the object is only read: POST → 409, GET, a Conflict
    // Event, no write.
    #[tokio::test]
    async fn without_both_switches_an_unmanaged_object_is_only_read() {
        for (allowed, asks) in [
            (false, Some("true")),
            (true, None),
            (true, Some("false")),
            (false, None),
        ] {
            let (w, handle, _) = adoption_writer(allowed, asks);
            let (outcomes, _) = run(w, handle, vec![create_db()], async |h: &mut ApiHandle| {
                expect_create_refused_then_get(h, theirs()).await;
                let (type_, _) = expect_note(h, "Conflict").await;
                assert_eq!(type_, "Warning");
            })
            .await;
            assert_eq!(outcomes[0].1, Outcome::Conflict, "{allowed} {asks:?}");
        }
    }

    // Issue 8, adoption: what the ownership rules protect is never adopted,
    // whatever was asked: a source (even another push-to-k8s's), another
    // push-to-k8s's copy. Read, reported, never written.
    #[tokio::test]
    async fn sources_and_other_controllers_copies_are_never_adopted() {
        let mut source = theirs();
        source["labels"] = json!({SOURCE_LABEL_KEY: "source"});
        let mut foreign_copy = theirs();
        foreign_copy["labels"] = json!({MANAGED_LABEL_KEY: "push-to-k8s"});
        foreign_copy["annotations"] = json!({"push-to-k8s.io/source": "other-ns/db"});
        for (found, why) in [
            (source, "source label"),
            (foreign_copy, "another push-to-k8s"),
        ] {
            let (w, handle, _) = adoption_writer(true, Some("true"));
            let (outcomes, _) = run(w, handle, vec![create_db()], async |h: &mut ApiHandle| {
                expect_create_refused_then_get(h, found.clone()).await;
                let (type_, note) = expect_note(h, "Conflict").await;
                assert_eq!(type_, "Warning");
                assert!(note.contains("not adopted") && note.contains(why), "{note}");
            })
            .await;
            assert!(
                matches!(outcomes[0].1, Outcome::NotAdopted(_)),
                "{outcomes:?}"
            );
        }
    }

    // Issue 8, adoption: an object whose type differs (the apply is refused
    // as immutable) is never deleted to be adopted: no DELETE, a Conflict.
    #[tokio::test]
    async fn an_object_that_cannot_change_in_place_is_never_deleted_to_be_adopted() {
        let (w, handle, _) = adoption_writer(true, Some("true"));
        let (outcomes, _) = run(w, handle, vec![create_db()], async |h: &mut ApiHandle| {
            expect_create_refused_then_get(h, theirs()).await;
            let (_, send) = expect_adopting_apply(h).await;
            reply(
                send,
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
                       "reason": "Invalid",
                       "message": "Secret \"db\" is invalid: type: Invalid value: \"kubernetes.io/tls\": field is immutable",
                       "details": {"name": "db", "kind": "secrets", "causes": [
                           {"reason": "FieldValueInvalid", "message": "Invalid value: \"kubernetes.io/tls\": field is immutable", "field": "type"}]}}),
            );
            let (_, note) = expect_note(h, "Conflict").await;
            assert!(note.contains("cannot change in place"), "{note}");
        })
        .await;
        assert!(
            matches!(outcomes[0].1, Outcome::NotAdopted(_)),
            "{outcomes:?}"
        );
    }

    // Issue 16, defect 7: deletes under names no source asks for (nor asked
    // for while we ran) leave the propagation path for the stray lane.
    #[tokio::test]
    async fn defect7_deletes_under_names_no_source_asks_for_wait_for_the_stray_lane() {
        let (w, _handle, caches) = writer();
        caches
            .of(Kind::Secret)
            .sources
            .read(|s| w.record_asked(Kind::Secret, s));
        let delete = |source: &str, name: &str| Action::Delete {
            kind: Kind::Secret,
            namespace: "tenant".into(),
            source: source.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            resource_version: "1".into(),
        };
        let create = Action::Create {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
        };
        let kept = w.split_strays(vec![
            delete("db", "db"),
            delete("db", "x-1"),
            delete("gone", "gone"),
            create.clone(),
        ]);
        assert_eq!(kept, vec![delete("db", "db"), create]);
        assert_eq!(w.strays_pending(), 2);
        // A name asked for once stays asked for after its source goes.
        caches.of(Kind::Secret).sources.set("db".into(), None);
        assert_eq!(w.split_strays(vec![delete("db", "db")]).len(), 1);
    }

    #[tokio::test]
    async fn delete_carries_uid_and_resource_version_preconditions() {
        let (w, handle, caches) = writer();
        caches.of(Kind::Secret).sources.set("db".into(), None); // the source is gone: no Event either
        let action = Action::Delete {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
            uid: "copy-uid".into(),
            resource_version: "9".into(),
        };
        run(w, handle, vec![action], async |h: &mut ApiHandle| {
            let (method, uri, body, send) = next(h).await;
            assert_eq!(method, Method::DELETE);
            assert_eq!(uri, "/api/v1/namespaces/a/secrets/db?");
            assert_eq!(
                body["preconditions"],
                json!({"uid": "copy-uid", "resourceVersion": "9"})
            );
            reply(send, StatusCode::OK, success());
        })
        .await;
    }

    /// The server side of a replace: a DELETE with UID and resourceVersion
    /// preconditions, then a POST; then the summary Event.
    async fn expect_delete_then_create(h: &mut ApiHandle, uid: &str, rv: &str) {
        let (method, _, body, send) = next(h).await;
        assert_eq!(method, Method::DELETE);
        assert_eq!(
            body["preconditions"],
            json!({"uid": uid, "resourceVersion": rv})
        );
        reply(send, StatusCode::OK, success());
        let (method, uri, body, send) = next(h).await;
        assert_eq!(method, Method::POST);
        assert_eq!(
            uri,
            "/api/v1/namespaces/a/secrets?&fieldManager=push-to-k8s"
        );
        reply(send, StatusCode::CREATED, stored(body, "4"));
        expect_event(h, "Pushed").await;
    }

    #[tokio::test]
    async fn replace_deletes_with_preconditions_then_creates() {
        let (w, handle, _) = writer();
        let action = Action::Replace {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
            uid: "old-uid".into(),
            resource_version: "3".into(),
        };
        run(w, handle, vec![action], async |h: &mut ApiHandle| {
            expect_delete_then_create(h, "old-uid", "3").await;
        })
        .await;
    }

    #[tokio::test]
    async fn update_refused_for_an_immutable_field_becomes_a_replace() {
        // The copy's type differs: the metadata watch could not see it, the
        // server says so, and only a delete and a create can change it.
        let (w, handle, _) = writer();
        let action = Action::Update {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
            uid: "old-uid".into(),
            resource_version: "3".into(),
        };
        run(w, handle, vec![action], async |h: &mut ApiHandle| {
            let (method, _, _, send) = next(h).await;
            assert_eq!(method, Method::PATCH);
            reply(
                send,
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
                       "reason": "Invalid",
                       "message": "Secret \"db\" is invalid: type: Invalid value: \"kubernetes.io/tls\": field is immutable",
                       "details": {"name": "db", "kind": "secrets", "causes": [
                           {"reason": "FieldValueInvalid", "message": "Invalid value: \"kubernetes.io/tls\": field is immutable", "field": "type"}]}}),
            );
            expect_delete_then_create(h, "old-uid", "3").await;
        })
        .await;
    }

    // Issue 7, defect 10: only the known immutable-field refusals become a
    // delete and create; any other 422 is a failure, and the copy stays.
    #[tokio::test]
    async fn a_422_that_is_not_an_immutable_field_refusal_never_deletes_the_copy() {
        let (w, handle, _) = writer();
        let action = Action::Update {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
            uid: "old-uid".into(),
            resource_version: "3".into(),
        };
        let (outcomes, _) = run(w, handle, vec![action], async |h: &mut ApiHandle| {
            let (method, _, _, send) = next(h).await;
            assert_eq!(method, Method::PATCH);
            // An admission policy refuses a label; its message says "immutable".
            reply(
                send,
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
                       "reason": "Invalid",
                       "message": "Secret \"db\" is invalid: metadata.labels: Invalid value: \"x\": team labels are immutable",
                       "details": {"name": "db", "kind": "secrets", "causes": [
                           {"reason": "FieldValueInvalid", "message": "Invalid value: \"x\": team labels are immutable", "field": "metadata.labels"}]}}),
            );
            expect_event(h, "PushFailed").await;
        })
        .await;
        assert!(matches!(outcomes[0].1, Outcome::Failed(_)), "{outcomes:?}");
    }

    // The regression issue 7's webhook fix first introduced (caught by e2e
    // s05): a data key someone else added stays after our apply (apply
    // never touches fields it does not own); one full update removes it.
    #[tokio::test]
    async fn a_key_someone_else_added_is_removed_by_one_full_update() {
        let (w, handle, _) = writer();
        let action = Action::Update {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
            uid: "copy-uid".into(),
            resource_version: "7".into(),
        };
        let (outcomes, accepted) = run(w, handle, vec![action], async |h: &mut ApiHandle| {
            let (method, _, body, send) = next(h).await;
            assert_eq!(method, Method::PATCH);
            let mut applied = stored(body, "8");
            applied["data"]["added"] = json!("eA==");
            applied["metadata"]["managedFields"]
                .as_array_mut()
                .unwrap()
                .push(json!(crate::model::records::managed_entry(
                    "kubectl-patch",
                    &["added"],
                    false
                )));
            reply(send, StatusCode::OK, applied);
            let (method, uri, body, send) = next(h).await;
            assert_eq!(method, Method::PUT, "{uri}");
            assert_eq!(body["metadata"]["resourceVersion"], "8");
            assert_eq!(
                body["data"],
                json!({"k": "dg=="}),
                "exactly the source's keys"
            );
            reply(send, StatusCode::OK, stored(body, "9"));
            expect_event(h, "Pushed").await;
        })
        .await;
        assert!(matches!(outcomes[0].1, Outcome::Done));
        assert!(
            accepted.is_empty(),
            "not a server-side change: {accepted:?}"
        );
    }

    // Issue 7, defect 4: the server changed our write (a mutating webhook
    // rewrote a label we set). A full update would come back changed the
    // same way, so what we wrote is taken as the copy: no second request.
    #[tokio::test]
    async fn a_write_the_server_changes_is_taken_as_written_not_rewritten() {
        let (w, handle, caches) = writer();
        // The source carries a label `team=a` that the copy gets too.
        let sources = &caches.of(Kind::Secret).sources;
        let mut rec = sources.get(&"db".to_string()).unwrap();
        rec.replica = {
            let mut s = Secret {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some("db".into()),
                    namespace: Some(SRC.into()),
                    labels: Some(BTreeMap::from([
                        (SOURCE_LABEL_KEY.into(), "source".into()),
                        ("team".into(), "a".into()),
                    ])),
                    ..Default::default()
                },
                ..Default::default()
            };
            s.data = Some(BTreeMap::from([("k".into(), ByteString(b"v".to_vec()))]));
            Replica::render(&s, SRC)
        };
        sources.set("db".into(), Some(rec));
        let action = Action::Update {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
            uid: "copy-uid".into(),
            resource_version: "7".into(),
        };
        let (outcomes, accepted) = run(w, handle, vec![action], async |h: &mut ApiHandle| {
            let (method, _, body, send) = next(h).await;
            assert_eq!(method, Method::PATCH);
            assert_eq!(body["metadata"]["labels"]["team"], "a");
            let mut mutated = stored(body, "8");
            mutated["metadata"]["labels"]["team"] = json!("rewritten-by-webhook");
            reply(send, StatusCode::OK, mutated);
            expect_event(h, "Pushed").await;
        })
        .await;
        let key = ObjectKey {
            kind: Kind::Secret,
            namespace: "a".into(),
            name: "db".into(),
        };
        assert_eq!(outcomes, vec![(key.clone(), Outcome::Done)]);
        assert_eq!(accepted.get(&key).map(String::as_str), Some("8"));
    }
}
