//! Workload-driven Vault sync (issue 19, docs/vault.md "Started by a
//! workload"): vault-sync-operator's trigger, made safe by a PushRule.
//!
//! A rule's `workloadVault` names namespaces (names or globs) and a Vault
//! path prefix ([`Grant`]). In those namespaces a Deployment annotated
//! `vault-sync.io/path` pushes the Secrets it references (env, envFrom,
//! volumes), or the ones `vault-sync.io/secrets` lists, to Vault, but only
//! under a prefix a rule grants its namespace: a tenant can never write
//! outside its own subtree. The entries are written by the same worker as
//! labelled sources' ([`Target`], through the [`Book`] seam), so ownership
//! (custom metadata naming the Deployment and this cluster), check-and-set,
//! conflicts, preserve-on-delete, pacing and the write gate are the same.
//!
//! - Without `vault-sync.io/secrets`, each referenced Secret is an entry at
//!   `<path>/<secret>` holding all its keys (vault-sync-operator's
//!   auto-discovery); a Secret referenced by two Deployments with different
//!   paths is two entries.
//! - With it, the listed Secrets' keys (all, or `keys`), each behind its
//!   `prefix`, are one entry at `<path>`.
//! - A Secret that does not exist yet is written when it appears.
//! - Deleting the Deployment, its annotation, or a reference deletes the
//!   entries it no longer asks for (unless `vault-sync.io/preserve-on-delete`).
//! - A namespace no rule grants any more (the rule deleted or missing, the
//!   CRD gone) is no longer watched and its entries are left as they are:
//!   only a Deployment that is seen to change deletes anything.
//!
//! Memory: per namespace a rule names, the annotated Deployments' asks and
//! the Secrets they reference (other Secrets are seen by the watch and
//! dropped); nothing of namespaces no rule names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ObjectReference, PodSpec, Secret};
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::client::VaultClient;
use super::entry::{Desired, Invalid, Names, Us, check_path, content_hash};
use super::target::{Book, Settings, Target, Work};
use crate::model::replica::Replica;
use crate::model::rules::{NamespaceInfo, glob_match};
use crate::model::vocabulary::{
    WORKLOAD_KIND, WORKLOAD_PATH_ANNOTATION, WORKLOAD_PRESERVE_ANNOTATION,
    WORKLOAD_SECRETS_ANNOTATION,
};
use crate::observe::cache::Cache;
use crate::write::Context;
use crate::write::pace::Pacer;

/// How often the namespaces rules name are looked for in the namespace
/// cache (a new namespace is served within this).
const NAMESPACES_EVERY: Duration = Duration::from_secs(2);
/// Most Secrets one `vault-sync.io/secrets` may list.
const MAX_PICKS: usize = 64;
/// Longest key prefix (as `push-to-k8s.io/vault-key-prefix`).
const MAX_PREFIX_LEN: usize = 128;

/// What one PushRule's `workloadVault` allows: the Deployments of these
/// namespaces (names or globs) may push under `prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub rule: String,
    pub namespaces: Vec<String>,
    pub prefix: String,
}

impl Grant {
    pub fn covers(&self, namespace: &str) -> bool {
        self.namespaces
            .iter()
            .any(|g| glob_match(g.trim(), namespace))
    }
}

/// Is `path` at or below `prefix` (whole segments; an empty prefix allows
/// nothing)?
pub fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_matches('/');
    !prefix.is_empty()
        && (path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/')))
}

/// One item of `vault-sync.io/secrets`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Pick {
    name: String,
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    prefix: String,
}

/// What an annotated Deployment asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    /// The path inside the KV mount.
    pub path: String,
    /// `vault-sync.io/secrets`; without it every referenced Secret is an
    /// entry of its own.
    picks: Option<Vec<Pick>>,
    pub preserve: bool,
    /// The Secrets its pod template references.
    pub refs: BTreeSet<String>,
}

impl Ask {
    /// `Ok(None)`: no `vault-sync.io/path`. The path may be given as
    /// vault-sync-operator users write it (`<mount>/data/<path>`).
    pub fn parse(
        annotations: &BTreeMap<String, String>,
        spec: Option<&PodSpec>,
        kv_mount: &str,
    ) -> Result<Option<Ask>, Invalid> {
        let Some(path) = annotations.get(WORKLOAD_PATH_ANNOTATION) else {
            return Ok(None);
        };
        let path = path.trim().trim_start_matches('/');
        let path = path
            .strip_prefix(&format!("{kv_mount}/data/"))
            .unwrap_or(path);
        check_path(path).map_err(|e| Invalid::Workload(WORKLOAD_PATH_ANNOTATION, e))?;
        let picks = match annotations.get(WORKLOAD_SECRETS_ANNOTATION) {
            None => None,
            Some(json) => {
                let picks: Vec<Pick> = serde_json::from_str(json).map_err(|e| {
                    Invalid::Workload(
                        WORKLOAD_SECRETS_ANNOTATION,
                        format!(
                            "not a JSON list of {{\"name\", \"keys\", \"prefix\"}}: {}",
                            e
                        ),
                    )
                })?;
                if picks.is_empty() || picks.len() > MAX_PICKS {
                    return Err(Invalid::Workload(
                        WORKLOAD_SECRETS_ANNOTATION,
                        format!("must list 1 to {MAX_PICKS} Secrets"),
                    ));
                }
                for p in &picks {
                    if p.prefix.len() > MAX_PREFIX_LEN
                        || !p
                            .prefix
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                    {
                        return Err(Invalid::Workload(
                            WORKLOAD_SECRETS_ANNOTATION,
                            format!(
                                "prefix of {:?} must be at most {MAX_PREFIX_LEN} letters, digits, '.', '_' and '-'",
                                p.name
                            ),
                        ));
                    }
                }
                Some(picks)
            }
        };
        let preserve = match annotations
            .get(WORKLOAD_PRESERVE_ANNOTATION)
            .map(|v| v.trim())
        {
            None | Some("") => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => {
                return Err(Invalid::Workload(
                    WORKLOAD_PRESERVE_ANNOTATION,
                    format!("{v:?} is not \"true\" or \"false\""),
                ));
            }
        };
        Ok(Some(Ask {
            path: path.to_owned(),
            picks,
            preserve,
            refs: spec.map(referenced).unwrap_or_default(),
        }))
    }

    /// The Secrets whose change concerns it.
    pub fn secrets(&self) -> BTreeSet<String> {
        match &self.picks {
            Some(picks) => picks.iter().map(|p| p.name.clone()).collect(),
            None => self.refs.clone(),
        }
    }

    /// Its entries: one per referenced Secret, or (`None`) the one entry of
    /// its picks.
    fn entries(&self) -> Vec<Option<String>> {
        match &self.picks {
            Some(_) => vec![None],
            None => self.refs.iter().cloned().map(Some).collect(),
        }
    }

    /// The path of an entry.
    fn path_of(&self, entry: Option<&str>) -> String {
        match entry {
            Some(secret) => format!("{}/{secret}", self.path),
            None => self.path.clone(),
        }
    }

    /// The data of an entry from the Secrets there are (`Ok(None)`: none of
    /// its Secrets exists yet).
    fn data(
        &self,
        entry: Option<&str>,
        secrets: &BTreeMap<String, Replica>,
    ) -> Result<Option<BTreeMap<String, String>>, Invalid> {
        let one;
        let picks = match (entry, &self.picks) {
            (Some(secret), None) => {
                one = [Pick {
                    name: secret.to_owned(),
                    keys: None,
                    prefix: String::new(),
                }];
                &one[..]
            }
            (None, Some(picks)) => &picks[..],
            _ => return Ok(None),
        };
        let mut data = BTreeMap::new();
        let mut found = false;
        for pick in picks {
            let Some(replica) = secrets.get(&pick.name) else {
                continue;
            };
            if replica.grants_identity() {
                return Err(Invalid::Workload(
                    WORKLOAD_PATH_ANNOTATION,
                    format!(
                        "Secret {:?} is of type {}, which grants an identity and is never pushed",
                        pick.name, replica.type_
                    ),
                ));
            }
            found = true;
            for (key, value) in &replica.data {
                if pick.keys.as_ref().is_some_and(|keys| !keys.contains(key)) {
                    continue;
                }
                let text =
                    std::str::from_utf8(&value.0).map_err(|_| Invalid::NotText(key.clone()))?;
                data.insert(format!("{}{key}", pick.prefix), text.to_owned());
            }
        }
        Ok(found.then_some(data))
    }
}

/// The Secrets a pod template references: env, envFrom, secret and
/// projected volumes, of every container.
pub fn referenced(spec: &PodSpec) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        for env in c.env.iter().flatten() {
            if let Some(r) = env
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
            {
                names.insert(r.name.clone());
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.secret_ref {
                names.insert(r.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            names.insert(name);
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &source.secret {
                names.insert(s.name.clone());
            }
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

/// One workload entry: the Deployment that owns it, and the Secret it
/// holds (`None`: the one entry of `vault-sync.io/secrets`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId {
    pub namespace: String,
    pub deployment: String,
    pub secret: Option<String>,
}

impl Names for WorkloadId {
    fn source(&self, _: Us<'_>) -> String {
        format!("{}/{}", self.namespace, self.deployment)
    }
    fn kind(&self) -> &str {
        WORKLOAD_KIND
    }
}

impl fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{WORKLOAD_KIND} {}/{}", self.namespace, self.deployment)?;
        if let Some(s) = &self.secret {
            write!(f, " (Secret {s})")?;
        }
        Ok(())
    }
}

/// An annotated Deployment as last seen.
#[derive(Clone, Debug)]
struct Seen {
    uid: String,
    ask: Result<Ask, Invalid>,
}

impl Seen {
    fn secrets(&self) -> BTreeSet<String> {
        self.ask.as_ref().map(Ask::secrets).unwrap_or_default()
    }
}

/// One namespace a rule grants, as watched.
#[derive(Default)]
struct Served {
    deployments_listed: bool,
    secrets_listed: bool,
    deployments: BTreeMap<String, Seen>,
    /// Only the Secrets an annotated Deployment here references.
    secrets: BTreeMap<String, Replica>,
}

impl Served {
    fn ids(&self, namespace: &str, deployment: &str) -> Vec<WorkloadId> {
        let id = |secret| WorkloadId {
            namespace: namespace.to_owned(),
            deployment: deployment.to_owned(),
            secret,
        };
        match self.deployments.get(deployment).map(|s| &s.ask) {
            None => Vec::new(),
            Some(Ok(ask)) => ask.entries().into_iter().map(id).collect(),
            Some(Err(_)) => vec![id(None)],
        }
    }

    fn all_ids(&self, namespace: &str) -> Vec<WorkloadId> {
        self.deployments
            .keys()
            .flat_map(|d| self.ids(namespace, d))
            .collect()
    }

    fn wanted_secrets(&self) -> BTreeSet<String> {
        self.deployments.values().flat_map(Seen::secrets).collect()
    }

    /// The entries of the Deployments that use `secret`.
    fn users_of(&self, namespace: &str, secret: &str) -> Vec<WorkloadId> {
        self.deployments
            .iter()
            .filter(|(_, s)| s.secrets().contains(secret))
            .flat_map(|(d, _)| self.ids(namespace, d))
            .collect()
    }
}

#[derive(Default)]
struct State {
    grants: Vec<Grant>,
    namespaces: BTreeMap<String, Served>,
}

/// The workloads' [`Book`].
#[derive(Clone)]
pub struct Workloads {
    state: Arc<Mutex<State>>,
}

impl Workloads {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("workloads lock")
    }
}

impl Book for Workloads {
    type Id = WorkloadId;

    fn wanting(&self) -> Vec<WorkloadId> {
        let state = self.lock();
        state
            .namespaces
            .iter()
            .filter(|(_, s)| s.deployments_listed && s.secrets_listed)
            .flat_map(|(ns, s)| s.all_ids(ns))
            .collect()
    }

    fn desired(&self, id: &WorkloadId) -> Result<Option<Desired>, (String, Invalid)> {
        let state = self.lock();
        let Some(served) = state.namespaces.get(&id.namespace) else {
            return Ok(None);
        };
        let Some(seen) = served.deployments.get(&id.deployment) else {
            return Ok(None);
        };
        let ask = seen
            .ask
            .as_ref()
            .map_err(|e| (seen.uid.clone(), e.clone()))?;
        let prefixes: Vec<&str> = state
            .grants
            .iter()
            .filter(|g| g.covers(&id.namespace))
            .map(|g| g.prefix.as_str())
            .collect();
        if !prefixes.iter().any(|p| under(&ask.path, p)) {
            let allowed = prefixes
                .iter()
                .map(|p| format!("{:?}", p.trim_matches('/')))
                .collect::<Vec<_>>()
                .join(", ");
            return Err((
                seen.uid.clone(),
                Invalid::OutsidePrefix(ask.path.clone(), format!("under {allowed}")),
            ));
        }
        if !ask.entries().contains(&id.secret) {
            return Ok(None);
        }
        let Some(data) = ask
            .data(id.secret.as_deref(), &served.secrets)
            .map_err(|e| (seen.uid.clone(), e))?
        else {
            return Ok(None);
        };
        let path = ask.path_of(id.secret.as_deref());
        if let Err(e) = check_path(&path) {
            return Err((seen.uid.clone(), Invalid::Path(e)));
        }
        Ok(Some(Desired {
            path,
            hash: content_hash(&data),
            data,
            preserve: ask.preserve,
            // Tenants never take over an entry that is not theirs.
            adopt: false,
        }))
    }

    fn keep_entries(&self, id: &WorkloadId) -> Option<String> {
        let state = self.lock();
        match state.namespaces.get(&id.namespace) {
            None => Some(format!(
                "no PushRule's workloadVault names namespace {} now",
                id.namespace
            )),
            Some(s) if !(s.deployments_listed && s.secrets_listed) => Some(format!(
                "namespace {}'s Deployments and Secrets are not listed yet",
                id.namespace
            )),
            Some(_) => None,
        }
    }

    /// On the Deployment; one that is gone (its entries deleted or
    /// preserved) by name, in its namespace while that is served.
    fn event_ref(&self, id: &WorkloadId) -> Option<ObjectReference> {
        let state = self.lock();
        let served = state.namespaces.get(&id.namespace)?;
        let uid = served
            .deployments
            .get(&id.deployment)
            .map(|seen| seen.uid.clone());
        Some(ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some(WORKLOAD_KIND.into()),
            namespace: Some(id.namespace.clone()),
            name: Some(id.deployment.clone()),
            uid,
            ..ObjectReference::default()
        })
    }
}

/// What the workloads' worker is started with.
pub struct Parts {
    pub client: kube::Client,
    pub store: VaultClient,
    pub settings: Settings,
    pub ctx: Context,
    /// The labelled sources' Vault limiter: one rate for one Vault.
    pub pacer: Arc<Pacer>,
    pub namespaces: Arc<Cache<String, NamespaceInfo>>,
    /// The controller's own namespace: never served.
    pub own_namespace: String,
    pub grants: watch::Receiver<Vec<Grant>>,
    pub leading: watch::Receiver<bool>,
    pub shutdown: CancellationToken,
}

type Tx = mpsc::UnboundedSender<Work<WorkloadId>>;

fn tell(tx: &Tx, ids: Vec<WorkloadId>) {
    if !ids.is_empty() {
        let _ = tx.send(Work::Sources(ids, Instant::now()));
    }
}

/// Serve the rules' grants until shutdown.
pub fn spawn(parts: Parts) -> tokio::task::JoinHandle<()> {
    let Parts {
        client,
        store,
        settings,
        ctx,
        pacer,
        namespaces,
        own_namespace,
        mut grants,
        leading,
        shutdown,
    } = parts;
    let kv_mount = settings.kv_mount.clone();
    let resend_gate = ctx.gate.clone();
    store.resend_only_while(move || resend_gate.open());
    let book = Workloads {
        state: Arc::default(),
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let worker = Target::new(store, settings, book.clone(), ctx).pacing_with(pacer);
    tokio::spawn(worker.run(rx, leading, shutdown.clone()));
    tokio::spawn(async move {
        let mut served: HashMap<String, CancellationToken> = HashMap::new();
        let mut every = tokio::time::interval(NAMESPACES_EVERY);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {}
                changed = grants.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
            }
            let now = grants.borrow_and_update().clone();
            let wanted: BTreeSet<String> = namespaces.read(|all| {
                all.keys()
                    .filter(|ns| **ns != own_namespace && now.iter().any(|g| g.covers(ns)))
                    .cloned()
                    .collect()
            });
            {
                let mut state = book.lock();
                if state.grants != now {
                    state.grants = now;
                    let _ = tx.send(Work::All);
                }
                for ns in served.keys() {
                    if !wanted.contains(ns) {
                        state.namespaces.remove(ns);
                    }
                }
                for ns in &wanted {
                    state.namespaces.entry(ns.clone()).or_default();
                }
            }
            served.retain(|ns, stop| {
                let keep = wanted.contains(ns);
                if !keep {
                    tracing::info!(namespace = %ns, "no PushRule's workloadVault names this namespace any more; its Vault entries are left");
                    stop.cancel();
                }
                keep
            });
            for ns in wanted {
                if served.contains_key(&ns) {
                    continue;
                }
                tracing::info!(namespace = %ns, "serving the Deployments' vault-sync.io annotations of a namespace");
                let stop = shutdown.child_token();
                served.insert(ns.clone(), stop.clone());
                tokio::spawn(serve(
                    client.clone(),
                    ns,
                    kv_mount.clone(),
                    book.clone(),
                    tx.clone(),
                    stop,
                ));
            }
        }
    })
}

/// Watch one namespace's Deployments, and the Secrets they reference.
async fn serve(
    client: kube::Client,
    ns: String,
    kv_mount: String,
    book: Workloads,
    tx: Tx,
    stop: CancellationToken,
) {
    let (more_secrets, secrets_wanted) = watch::channel(());
    tokio::select! {
        _ = stop.cancelled() => {}
        () = deployments(client.clone(), &ns, &kv_mount, &book, &tx, more_secrets) => {}
        () = secrets(client, &ns, &book, &tx, secrets_wanted) => {}
    }
}

/// Read one Deployment (`None`: not annotated).
fn seen(d: &Deployment, kv_mount: &str) -> Option<(String, Seen)> {
    let name = d.metadata.name.clone()?;
    let annotations = d.metadata.annotations.clone().unwrap_or_default();
    let spec = d.spec.as_ref().and_then(|s| s.template.spec.as_ref());
    let ask = Ask::parse(&annotations, spec, kv_mount).transpose()?;
    Some((
        name,
        Seen {
            uid: d.metadata.uid.clone().unwrap_or_default(),
            ask,
        },
    ))
}

async fn deployments(
    client: kube::Client,
    ns: &str,
    kv_mount: &str,
    book: &Workloads,
    tx: &Tx,
    more_secrets: watch::Sender<()>,
) {
    let api: Api<Deployment> = Api::namespaced(client, ns);
    let mut stream = std::pin::pin!(watcher(api, ns, "Deployment"));
    let mut listing: Option<BTreeMap<String, Seen>> = None;
    while let Some(event) = stream.next().await {
        let mut state = book.lock();
        let Some(served) = state.namespaces.get_mut(ns) else {
            return;
        };
        let before_secrets = served.wanted_secrets();
        let mut ids = Vec::new();
        let deleted = matches!(event, Event::Delete(_));
        match event {
            Event::Init => listing = Some(BTreeMap::new()),
            Event::InitApply(d) => {
                if let (Some(l), Some((name, s))) = (listing.as_mut(), seen(&d, kv_mount)) {
                    l.insert(name, s);
                }
            }
            Event::InitDone => {
                ids.extend(served.all_ids(ns));
                served.deployments = listing.take().unwrap_or_default();
                served.deployments_listed = true;
                ids.extend(served.all_ids(ns));
            }
            Event::Apply(d) | Event::Delete(d) if d.metadata.name.is_some() => {
                let name = d.metadata.name.clone().unwrap_or_default();
                ids.extend(served.ids(ns, &name));
                match seen(&d, kv_mount).filter(|_| !deleted) {
                    Some((name, s)) => served.deployments.insert(name, s),
                    None => served.deployments.remove(&name),
                };
                ids.extend(served.ids(ns, &name));
            }
            _ => {}
        }
        let after_secrets = served.wanted_secrets();
        served
            .secrets
            .retain(|name, _| after_secrets.contains(name));
        if !after_secrets.is_subset(&before_secrets) {
            // A Secret no Deployment referenced before: list them again.
            let _ = more_secrets.send(());
        }
        let ready = served.deployments_listed && served.secrets_listed;
        drop(state);
        if ready {
            tell(tx, ids);
        }
    }
}

async fn secrets(
    client: kube::Client,
    ns: &str,
    book: &Workloads,
    tx: &Tx,
    mut wanted_changed: watch::Receiver<()>,
) {
    let api: Api<Secret> = Api::namespaced(client, ns);
    loop {
        wanted_changed.borrow_and_update();
        // Nothing referenced: nothing to watch until something is.
        let none = book
            .lock()
            .namespaces
            .get_mut(ns)
            .map(|s| {
                let none = s.wanted_secrets().is_empty();
                if none && s.deployments_listed {
                    s.secrets_listed = true;
                }
                none
            })
            .unwrap_or(true);
        if none {
            if wanted_changed.changed().await.is_err() {
                return;
            }
            continue;
        }
        let mut stream = std::pin::pin!(watcher(api.clone(), ns, "Secret"));
        let mut listing: Option<BTreeMap<String, Replica>> = None;
        loop {
            let event = tokio::select! {
                e = stream.next() => match e {
                    Some(e) => e,
                    None => return,
                },
                changed = wanted_changed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
            };
            let mut state = book.lock();
            let Some(served) = state.namespaces.get_mut(ns) else {
                return;
            };
            let wanted = served.wanted_secrets();
            let mut ids = Vec::new();
            let applied = matches!(event, Event::Apply(_));
            match event {
                Event::Init => listing = Some(BTreeMap::new()),
                Event::InitApply(s) => {
                    if let (Some(l), Some(name)) = (listing.as_mut(), s.metadata.name.as_ref())
                        && wanted.contains(name)
                    {
                        l.insert(name.clone(), Replica::render(&s, ns));
                    }
                }
                Event::InitDone => {
                    served.secrets = listing.take().unwrap_or_default();
                    served.secrets_listed = true;
                    ids.extend(served.all_ids(ns));
                }
                Event::Apply(s) | Event::Delete(s) => {
                    let Some(name) = s.metadata.name.clone() else {
                        continue;
                    };
                    let now = (wanted.contains(&name) && applied).then(|| Replica::render(&s, ns));
                    let before = served.secrets.get(&name).map(|r| r.hash.clone());
                    if now.as_ref().map(|r| r.hash.clone()) != before {
                        match now {
                            Some(r) => served.secrets.insert(name.clone(), r),
                            None => served.secrets.remove(&name),
                        };
                        ids.extend(served.users_of(ns, &name));
                    }
                }
            }
            let ready = served.deployments_listed && served.secrets_listed;
            drop(state);
            if ready {
                tell(tx, ids);
            }
        }
    }
}

/// A namespace's `what` objects as watch events; a failed watch is said
/// and retried after a backoff.
fn watcher<K>(
    api: Api<K>,
    ns: &str,
    what: &'static str,
) -> impl futures::Stream<Item = Event<K>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + fmt::Debug + Send + 'static,
{
    let ns = ns.to_owned();
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| {
            let out = match event {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "{what} watch failed; retried");
                    None
                }
            };
            std::future::ready(out)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::{
        Container, EnvFromSource, EnvVar, EnvVarSource, SecretEnvSource, SecretKeySelector,
        SecretVolumeSource, Volume,
    };

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod() -> PodSpec {
        PodSpec {
            containers: vec![Container {
                name: "app".into(),
                env: Some(vec![EnvVar {
                    name: "PASSWORD".into(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(SecretKeySelector {
                            name: "db".into(),
                            key: "password".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                env_from: Some(vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: "api".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            volumes: Some(vec![Volume {
                name: "tls".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some("tls".into()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    fn secret(type_: &str, data: &[(&str, &[u8])]) -> Replica {
        let s = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("x".into()),
                namespace: Some("team-a".into()),
                ..Default::default()
            },
            type_: Some(type_.into()),
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        Replica::render(&s, "team-a")
    }

    #[test]
    fn references_and_paths() {
        assert_eq!(
            referenced(&pod()),
            BTreeSet::from(["api".into(), "db".into(), "tls".into()])
        );
        let ask = Ask::parse(
            &annotations(&[(WORKLOAD_PATH_ANNOTATION, "secret/data/teams/a/app")]),
            Some(&pod()),
            "secret",
        )
        .unwrap()
        .unwrap();
        // vault-sync-operator's form: the mount and `data/` are dropped.
        assert_eq!(ask.path, "teams/a/app");
        assert_eq!(ask.entries().len(), 3);
        assert_eq!(ask.path_of(Some("db")), "teams/a/app/db");
        assert!(under("teams/a/app", "teams/a/"));
        assert!(under("teams/a", "/teams/a"));
        assert!(!under("teams/ab/app", "teams/a"));
        assert!(!under("teams", "teams/a"));
        assert!(!under("x", "/"));
        for bad in ["../x", "a//b", "a b"] {
            assert!(matches!(
                Ask::parse(
                    &annotations(&[(WORKLOAD_PATH_ANNOTATION, bad)]),
                    None,
                    "secret"
                ),
                Err(Invalid::Workload(WORKLOAD_PATH_ANNOTATION, _))
            ));
        }
        assert_eq!(Ask::parse(&annotations(&[]), None, "secret"), Ok(None));
    }

    #[test]
    fn picks_select_keys_behind_a_prefix_in_one_entry() {
        let ask = Ask::parse(
            &annotations(&[
                (WORKLOAD_PATH_ANNOTATION, "teams/a/app"),
                (
                    WORKLOAD_SECRETS_ANNOTATION,
                    r#"[{"name": "db", "keys": ["password"], "prefix": "db_"}, {"name": "api"}]"#,
                ),
            ]),
            Some(&pod()),
            "secret",
        )
        .unwrap()
        .unwrap();
        assert_eq!(ask.entries(), vec![None]);
        let mut secrets = BTreeMap::new();
        assert_eq!(
            ask.data(None, &secrets),
            Ok(None),
            "no Secret yet: no entry"
        );
        secrets.insert(
            "db".to_string(),
            secret("Opaque", &[("password", b"pw"), ("user", b"u")]),
        );
        let data = ask.data(None, &secrets).unwrap().unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["db_password"],
            "only the picked key, behind its prefix"
        );
        secrets.insert(
            "api".to_string(),
            secret("kubernetes.io/service-account-token", &[("token", b"t")]),
        );
        let refused = ask.data(None, &secrets).unwrap_err().to_string();
        assert!(
            refused.contains("service-account-token") && refused.contains("never pushed"),
            "{refused}"
        );
        for bad in [
            "{",
            "[]",
            r#"[{"name": "db", "prefix": "a b"}]"#,
            r#"[{"nom": "db"}]"#,
        ] {
            assert!(
                Ask::parse(
                    &annotations(&[
                        (WORKLOAD_PATH_ANNOTATION, "p"),
                        (WORKLOAD_SECRETS_ANNOTATION, bad)
                    ]),
                    None,
                    "secret"
                )
                .is_err(),
                "{bad}"
            );
        }
    }

    /// The book: a path outside every prefix granted is refused (naming
    /// the path, never a value); a namespace no rule names keeps its
    /// entries; a Deployment's entries follow its references.
    #[test]
    fn the_book_confines_paths_to_the_granted_prefix() {
        let book = Workloads {
            state: Arc::default(),
        };
        let seen = |path: &str| Seen {
            uid: "u1".into(),
            ask: Ok(Ask::parse(
                &annotations(&[(WORKLOAD_PATH_ANNOTATION, path)]),
                Some(&pod()),
                "secret",
            )
            .unwrap()
            .unwrap()),
        };
        let id = WorkloadId {
            namespace: "team-a".into(),
            deployment: "app".into(),
            secret: Some("db".into()),
        };
        assert!(book.keep_entries(&id).is_some(), "not served: entries kept");
        {
            let mut state = book.lock();
            state.grants = vec![Grant {
                rule: "r".into(),
                namespaces: vec!["team-*".into()],
                prefix: "teams/a".into(),
            }];
            let served = state.namespaces.entry("team-a".into()).or_default();
            served.deployments_listed = true;
            served.secrets_listed = true;
            served.deployments.insert("app".into(), seen("teams/a/app"));
            served
                .secrets
                .insert("db".into(), secret("Opaque", &[("password", b"s3cret")]));
        }
        assert_eq!(book.keep_entries(&id), None);
        assert_eq!(book.wanting().len(), 3);
        let d = book.desired(&id).unwrap().unwrap();
        assert_eq!(d.path, "teams/a/app/db");
        assert_eq!(d.data.get("password").map(String::as_str), Some("s3cret"));
        assert!(!d.adopt);
        // A Secret referenced but not there yet: nothing (until it appears).
        let api = WorkloadId {
            secret: Some("api".into()),
            ..id.clone()
        };
        assert_eq!(book.desired(&api), Ok(None));
        // Outside the prefix.
        book.lock()
            .namespaces
            .get_mut("team-a")
            .unwrap()
            .deployments
            .insert("app".into(), seen("teams/b/app"));
        let (uid, why) = book.desired(&id).unwrap_err();
        assert_eq!(uid, "u1");
        let note = why.to_string();
        assert!(
            note.contains("teams/b/app") && note.contains("teams/a"),
            "{note}"
        );
        assert!(!note.contains("s3cret"));
    }
}
