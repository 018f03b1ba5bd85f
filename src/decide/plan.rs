//! The planner: a pure function from (sources, namespaces, replicas, config,
//! dirty keys) to the writes that make observed state equal desired state.
//!
//! Level-triggered: it never looks at *what* happened, only at what is true
//! now, so a replayed event or a create-then-delete inside one window plans
//! nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::model::kinds::Kind;
use crate::model::records::{
    MARKER_ANNOTATIONS, MARKER_LABELS, ObjectKey, Pairs, ReplicaRecord, SourceRecord,
};
use crate::model::rules::{AnnotationError, KeyFilter, NamespaceInfo, Scope, TargetRules};
use crate::observe::batch::DirtyKey;

/// One write (or write pair) against one `(namespace, name)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// No copy exists yet: create it (fails safely if an unmanaged one does).
    Create {
        kind: Kind,
        namespace: String,
        /// The source's name.
        source: String,
        /// The copy's name (the source's, or the one it asks for).
        name: String,
    },
    /// Our copy differs: server-side apply, guarded by its resourceVersion.
    Update {
        kind: Kind,
        namespace: String,
        /// The source's name.
        source: String,
        /// The copy's name (the source's, or the one it asks for).
        name: String,
        /// For a delete and create instead, should the server refuse the
        /// update because a field is immutable (the copy's `type`).
        uid: String,
        resource_version: String,
    },
    /// Our copy is immutable: delete (UID precondition) then create.
    Replace {
        kind: Kind,
        namespace: String,
        /// The source's name.
        source: String,
        /// The copy's name (the source's, or the one it asks for).
        name: String,
        uid: String,
        resource_version: String,
    },
    /// Our copy should not exist: delete with UID and resourceVersion preconditions.
    Delete {
        kind: Kind,
        namespace: String,
        /// The source's name.
        source: String,
        /// The copy's name (the source's, or the one it asks for).
        name: String,
        uid: String,
        resource_version: String,
    },
}

impl Action {
    /// The copy this action writes.
    pub fn key(&self) -> ObjectKey {
        let (kind, namespace, name) = match self {
            Action::Create {
                kind,
                namespace,
                name,
                ..
            }
            | Action::Update {
                kind,
                namespace,
                name,
                ..
            }
            | Action::Replace {
                kind,
                namespace,
                name,
                ..
            }
            | Action::Delete {
                kind,
                namespace,
                name,
                ..
            } => (*kind, namespace, name),
        };
        ObjectKey::new(kind, namespace, name)
    }

    pub fn kind(&self) -> Kind {
        match self {
            Action::Create { kind, .. }
            | Action::Update { kind, .. }
            | Action::Replace { kind, .. }
            | Action::Delete { kind, .. } => *kind,
        }
    }

    pub fn source(&self) -> &str {
        match self {
            Action::Create { source, .. }
            | Action::Update { source, .. }
            | Action::Replace { source, .. }
            | Action::Delete { source, .. } => source,
        }
    }

    pub fn op(&self) -> &'static str {
        match self {
            Action::Create { .. } => "create",
            Action::Update { .. } => "apply",
            Action::Replace { .. } => "replace",
            Action::Delete { .. } => "delete",
        }
    }
}

/// Why a source is not pushed at all. Its existing copies are left as they are.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// A targeting annotation does not parse (only this source is affected).
    Annotation(AnnotationError),
    /// Its type grants an identity where it lands ([`crate::model::replica::NEVER_COPIED_TYPES`]).
    IdentityType(String),
}

impl Refusal {
    /// Bounded metric label.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Refusal::Annotation(e) => e.metric_label(),
            Refusal::IdentityType(_) => "type",
        }
    }

    /// The Event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Annotation(_) => "InvalidAnnotation",
            Refusal::IdentityType(_) => "TypeNotCopied",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Annotation(e) => {
                write!(
                    f,
                    "{e}; existing copies are left unchanged until it is fixed"
                )
            }
            Refusal::IdentityType(t) => write!(
                f,
                "Secrets of type {t} are never copied: a copy would grant an identity in every target namespace; existing copies are left unchanged"
            ),
        }
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Sources left untouched, and why (a bad annotation, a forbidden type).
    pub refused: Vec<(String, Refusal)>,
    /// Known conflicts that are no longer wanted (the planner forgets them).
    pub resolved_conflicts: Vec<ObjectKey>,
}

/// What the planner reads: the sources and copies of one kind.
pub struct World<'a> {
    pub kind: Kind,
    pub sources: &'a HashMap<String, SourceRecord>,
    pub namespaces: &'a HashMap<String, NamespaceInfo>,
    pub replicas: &'a HashMap<ObjectKey, ReplicaRecord>,
    /// `(namespace, name)` pairs where an unmanaged object blocks a copy.
    pub conflicts: &'a HashSet<ObjectKey>,
    /// Copies the server changed while we wrote them, with the
    /// resourceVersion our write produced: unchanged since, they are what we
    /// wrote (see [`crate::targets::cluster::writer::Writer::accepted`]).
    pub accepted: &'a HashMap<ObjectKey, String>,
}

impl World<'_> {
    /// The world of `kind` as `caches` hold it (read-locked while `f` runs),
    /// with the known conflicts and accepted copies: what every planner
    /// call reads (a lane's flush, `status`, a PushRule's status).
    pub fn of<R>(
        caches: &crate::observe::cache::Caches,
        kind: Kind,
        conflicts: &HashSet<ObjectKey>,
        accepted: &HashMap<ObjectKey, String>,
        f: impl FnOnce(&World<'_>) -> R,
    ) -> R {
        let of = caches.of(kind);
        of.sources.read(|sources| {
            caches.namespaces.read(|namespaces| {
                of.replicas.read(|replicas| {
                    f(&World {
                        kind,
                        sources,
                        namespaces,
                        replicas,
                        conflicts,
                        accepted,
                    })
                })
            })
        })
    }
}

/// Is `r` exactly the copy `desired` describes, as far as we set it? Its
/// content hash says what our last write set; its managed fields say that
/// nobody changed the content since (see [`crate::model::records::Content`]).
pub fn in_sync(r: &ReplicaRecord, desired: &crate::model::replica::Replica) -> bool {
    // Markers were checked at ingest (`r.markers`, the record's key and
    // source); every other label and annotation we set must be there.
    let subset = |want: &BTreeMap<String, String>, have: &Pairs, markers: &[&str]| {
        want.iter()
            .filter(|(k, _)| !markers.contains(&k.as_str()))
            .all(|(k, v)| have.get(k) == Some(v))
    };
    r.has_hash(&desired.hash)
        && r.markers
        && !r.content.foreign
        && r.content.our_keys == desired.keys_hash
        && subset(&desired.labels, &r.labels, &MARKER_LABELS)
        && subset(&desired.annotations, &r.annotations, &MARKER_ANNOTATIONS)
}

/// Plan the writes for `dirty` (see [`DirtyKey`]): a source key re-plans that
/// source everywhere, a namespace key re-plans every source in that namespace,
/// `All` re-plans everything (and collects orphans).
pub fn plan(world: &World<'_>, scope: &Scope<'_>, dirty: &[DirtyKey]) -> Plan {
    let all = dirty.iter().any(|d| matches!(d, DirtyKey::All));
    let mut whole_sources: BTreeSet<&str> = BTreeSet::new();
    let mut only_namespaces: BTreeSet<&str> = BTreeSet::new();
    let mut copies: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for d in dirty {
        match d {
            DirtyKey::Source(kind, s) if *kind == world.kind => {
                whole_sources.insert(s);
            }
            DirtyKey::Source(..) => {}
            DirtyKey::Namespace(n) => {
                only_namespaces.insert(n);
            }
            DirtyKey::Copy(k) if k.kind == world.kind => {
                copies.entry(&k.name).or_default().insert(&k.namespace);
            }
            DirtyKey::Copy(_) => {}
            DirtyKey::All => {}
        }
    }

    // Copies grouped by source and namespace, so a gone source finds its
    // copies, and a renamed source its copies under the old name.
    type Copies<'a> = BTreeMap<&'a str, Vec<(&'a str, &'a ReplicaRecord)>>;
    let mut by_source: BTreeMap<&str, Copies<'_>> = BTreeMap::new();
    for (k, r) in world.replicas {
        by_source
            .entry(&*r.source)
            .or_default()
            .entry(k.namespace.as_str())
            .or_default()
            .push((k.name.as_str(), r));
    }

    let mut names: BTreeSet<&str> = world.sources.keys().map(String::as_str).collect();
    names.extend(by_source.keys().copied());
    let namespaces: BTreeMap<&str, &NamespaceInfo> = world
        .namespaces
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();

    let holders = copy_name_holders(world.sources);
    let mut out = Plan::default();
    let empty = BTreeMap::new();
    for name in names {
        // Which namespaces to look at for this source.
        let everywhere = all || whole_sources.contains(name);
        let these = copies.get(name);
        if !everywhere && only_namespaces.is_empty() && these.is_none() {
            continue;
        }
        let in_scope = |ns: &str| {
            everywhere || only_namespaces.contains(ns) || these.is_some_and(|c| c.contains(ns))
        };
        let replicas = by_source.get(name).unwrap_or(&empty);

        let Some(source) = world.sources.get(name) else {
            // Source deleted or unlabelled: its copies go.
            for (ns, copies) in replicas {
                if in_scope(ns) && !namespaces.get(ns).is_some_and(|i| i.terminating) {
                    for (copy, r) in copies {
                        out.actions.push(delete(world.kind, ns, name, copy, r));
                    }
                }
            }
            continue;
        };
        let desired = &source.replica;
        let rules =
            match rules(source).and_then(|r| holds_copy_name(&holders, name, source).map(|()| r)) {
                Ok(rules) => rules,
                Err(refusal) => {
                    // Only this source is affected, and its copies stay as they are.
                    out.refused.push((name.to_string(), refusal));
                    continue;
                }
            };
        let copy_name = desired.name.as_str();
        let none = Vec::new();
        for (ns, info) in &namespaces {
            if !in_scope(ns) || info.terminating {
                continue;
            }
            let copies = replicas.get(ns).unwrap_or(&none);
            // Copies under another name (the source was renamed since): moved.
            for (copy, r) in copies.iter().filter(|(c, _)| *c != copy_name) {
                out.actions.push(delete(world.kind, ns, name, copy, r));
            }
            let current = copies
                .iter()
                .find(|(c, _)| *c == copy_name)
                .map(|(_, r)| *r);
            let key = ObjectKey::new(world.kind, ns, copy_name);
            let want = rules.wants(scope, name, ns, info);
            match (want, current) {
                (true, None) if world.conflicts.contains(&key) => {}
                (true, None) => out.actions.push(Action::Create {
                    kind: world.kind,
                    namespace: ns.to_string(),
                    source: name.to_string(),
                    name: copy_name.to_string(),
                }),
                (true, Some(r)) if in_sync(r, desired) => {}
                (true, Some(r))
                    if r.has_hash(&desired.hash)
                        && world
                            .accepted
                            .get(&key)
                            .is_some_and(|rv| r.resource_version == **rv) => {}
                (true, Some(r)) if r.content.immutable => out.actions.push(Action::Replace {
                    kind: world.kind,
                    namespace: ns.to_string(),
                    source: name.to_string(),
                    name: copy_name.to_string(),
                    uid: r.uid.to_string(),
                    resource_version: r.resource_version.to_string(),
                }),
                (true, Some(r)) => out.actions.push(Action::Update {
                    kind: world.kind,
                    namespace: ns.to_string(),
                    source: name.to_string(),
                    name: copy_name.to_string(),
                    uid: r.uid.to_string(),
                    resource_version: r.resource_version.to_string(),
                }),
                (false, Some(r)) => out.actions.push(delete(world.kind, ns, name, copy_name, r)),
                (false, None) => {
                    if world.conflicts.contains(&key) {
                        out.resolved_conflicts.push(key);
                    }
                }
            }
        }
    }
    out.actions.sort();
    out
}

/// The target rules of `source`, or why it is not pushed at all.
pub fn rules(source: &SourceRecord) -> Result<TargetRules, Refusal> {
    if source.replica.grants_identity() {
        return Err(Refusal::IdentityType(source.replica.type_.clone()));
    }
    let copy = &source.replica;
    if copy.name != copy.source {
        crate::model::names::dns1123_subdomain(&copy.name).map_err(|reason| {
            Refusal::Annotation(AnnotationError::CopyName {
                value: copy.name.clone(),
                reason,
            })
        })?;
    }
    // The key filter was applied when the copy was rendered; a filter that
    // does not parse refuses the source like a bad target rule.
    KeyFilter::parse(&source.annotations).map_err(Refusal::Annotation)?;
    // Only `true` or `false`: a doubtful request to take over objects is none.
    crate::decide::adoption::asked(&source.annotations).map_err(Refusal::Annotation)?;
    TargetRules::parse(&source.annotations).map_err(Refusal::Annotation)
}

/// Why `source` is not pushed at all, if it is not.
pub fn refusal(source: &SourceRecord) -> Option<Refusal> {
    rules(source).err()
}

/// Why the source `name` of `sources` is not pushed at all, if it is not:
/// [`refusal`], or another source keeps its copy name.
pub fn refusal_among(sources: &HashMap<String, SourceRecord>, name: &str) -> Option<Refusal> {
    let source = sources.get(name)?;
    rules(source)
        .and_then(|_| holds_copy_name(&copy_name_holders(sources), name, source))
        .err()
}

/// Per copy name asked for by more than one source, the source that keeps
/// it: the older (creationTimestamp), of two created in the same second the
/// first by name. So a newcomer never takes a name from a source that is
/// pushed, and every instance and restart decides the same. The others are
/// refused ([`holds_copy_name`]). Names asked for once are not listed.
pub fn copy_name_holders(sources: &HashMap<String, SourceRecord>) -> HashMap<&str, &str> {
    let mut first: HashMap<&str, (&str, &str)> = HashMap::with_capacity(sources.len());
    let mut shared: HashSet<&str> = HashSet::new();
    for (name, s) in sources {
        let copy = s.replica.name.as_str();
        let candidate = (s.created.as_str(), name.as_str());
        match first.get_mut(copy) {
            None => {
                first.insert(copy, candidate);
            }
            Some(held) => {
                shared.insert(copy);
                if candidate < *held {
                    *held = candidate;
                }
            }
        }
    }
    shared
        .into_iter()
        .map(|copy| (copy, first[copy].1))
        .collect()
}

/// `Ok` unless another source keeps the copy name `source` asks for.
fn holds_copy_name(
    holders: &HashMap<&str, &str>,
    name: &str,
    source: &SourceRecord,
) -> Result<(), Refusal> {
    match holders.get(source.replica.name.as_str()) {
        Some(by) if *by != name => Err(Refusal::Annotation(AnnotationError::CopyNameTaken {
            value: source.replica.name.clone(),
            by: by.to_string(),
        })),
        _ => Ok(()),
    }
}

/// The namespaces that should hold a copy of the source `name` with these
/// `rules` (see [`rules`]), in name order: the same `wants` that [`plan`]
/// asks per namespace, for reports that count them (`push-to-k8s status`).
pub fn wanted_namespaces<'a>(
    rules: &TargetRules,
    scope: &Scope<'_>,
    name: &str,
    namespaces: &'a HashMap<String, NamespaceInfo>,
) -> Vec<&'a str> {
    let mut wanted: Vec<&str> = namespaces
        .iter()
        .filter(|(ns, info)| rules.wants(scope, name, ns, info))
        .map(|(ns, _)| ns.as_str())
        .collect();
    wanted.sort_unstable();
    wanted
}

fn delete(kind: Kind, ns: &str, source: &str, name: &str, r: &ReplicaRecord) -> Action {
    Action::Delete {
        kind,
        namespace: ns.to_string(),
        source: source.to_string(),
        name: name.to_string(),
        uid: r.uid.to_string(),
        resource_version: r.resource_version.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::replica::{self, Replica};
    use k8s_openapi::api::core::v1::Secret;

    const SRC: &str = "push-to-k8s";

    fn secret(name: &str, value: &str, annotations: &[(&str, &str)]) -> Secret {
        crate::fixtures::source_secret(SRC, name, value, annotations)
    }

    fn source(name: &str, value: &str, annotations: &[(&str, &str)]) -> (String, SourceRecord) {
        SourceRecord::from_secret(&secret(name, value, annotations), SRC).unwrap()
    }

    /// The record of a copy exactly as we would write it into `ns`.
    fn copy(ns: &str, s: &Secret) -> (ObjectKey, ReplicaRecord) {
        crate::fixtures::copy_record(SRC, ns, s)
    }

    fn ns(labels: &[(&str, &str)]) -> NamespaceInfo {
        NamespaceInfo {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            terminating: false,
        }
    }

    struct Case {
        sources: HashMap<String, SourceRecord>,
        namespaces: HashMap<String, NamespaceInfo>,
        replicas: HashMap<ObjectKey, ReplicaRecord>,
        conflicts: HashSet<ObjectKey>,
        accepted: HashMap<ObjectKey, String>,
    }

    impl Case {
        fn new(namespaces: &[&str]) -> Case {
            let mut n: HashMap<String, NamespaceInfo> = namespaces
                .iter()
                .map(|n| (n.to_string(), ns(&[])))
                .collect();
            n.insert(SRC.into(), ns(&[]));
            n.insert("kube-system".into(), ns(&[]));
            Case {
                sources: HashMap::new(),
                namespaces: n,
                replicas: HashMap::new(),
                conflicts: HashSet::new(),
                accepted: HashMap::new(),
            }
        }
        fn plan(&self, dirty: &[DirtyKey]) -> Plan {
            self.plan_in(None, dirty)
        }
        /// Planned for the remote cluster registered as `cluster` (`None`: this one).
        fn plan_in(&self, cluster: Option<&str>, dirty: &[DirtyKey]) -> Plan {
            let protected = vec!["kube-system".to_string()];
            let scope = Scope {
                source_namespace: SRC,
                exclude_label: Some("skip"),
                protected: &protected,
                require_consent: false,
                cluster,
                stamp: cluster.map(|_| "home"),
            };
            let world = World {
                kind: Kind::Secret,
                sources: &self.sources,
                namespaces: &self.namespaces,
                replicas: &self.replicas,
                conflicts: &self.conflicts,
                accepted: &self.accepted,
            };
            plan(&world, &scope, dirty)
        }
    }

    fn create(ns: &str, s: &str) -> Action {
        Action::Create {
            kind: Kind::Secret,
            namespace: ns.into(),
            source: s.into(),
            name: s.into(),
        }
    }

    fn src(n: &str) -> DirtyKey {
        DirtyKey::Source(Kind::Secret, n.into())
    }

    #[test]
    fn new_source_goes_everywhere_but_source_protected_and_excluded() {
        let mut c = Case::new(&["a", "b"]);
        c.namespaces.insert("opted-out".into(), ns(&[("skip", "")]));
        let mut gone = ns(&[]);
        gone.terminating = true;
        c.namespaces.insert("dying".into(), gone);
        c.sources.extend([source("db", "v1", &[])]);
        let p = c.plan(&[src("db")]);
        assert_eq!(p.actions, vec![create("a", "db"), create("b", "db")]);
    }

    #[test]
    fn a_remote_cluster_gets_only_the_sources_that_select_it() {
        let clusters = crate::model::vocabulary::CLUSTERS_ANNOTATION;
        let mut c = Case::new(&["a"]);
        c.sources.extend([
            source("local-only", "v1", &[]),
            source("everywhere", "v1", &[(clusters, "*")]),
            source("east-only", "v1", &[(clusters, "east")]),
            source("globbed", "v1", &[(clusters, "we*")]),
        ]);
        let all = [DirtyKey::All];
        let created =
            |p: Plan| -> Vec<String> { p.actions.iter().map(|a| a.source().to_string()).collect() };
        // Here: every source, as always.
        assert_eq!(
            created(c.plan(&all)),
            ["east-only", "everywhere", "globbed", "local-only"]
        );
        assert_eq!(
            created(c.plan_in(Some("east"), &all)),
            ["east-only", "everywhere"]
        );
        assert_eq!(
            created(c.plan_in(Some("west"), &all)),
            ["everywhere", "globbed"]
        );

        // A source that no longer names the cluster: its copies there go.
        let s = secret("east-only", "v1", &[(clusters, "east")]);
        c.replicas.extend([copy("a", &s)]);
        c.sources.insert(
            "east-only".into(),
            source("east-only", "v1", &[(clusters, "west")]).1,
        );
        let p = c.plan_in(Some("east"), &[src("east-only")]);
        assert!(
            matches!(&p.actions[..], [Action::Delete { namespace, .. }] if namespace == "a"),
            "{p:?}"
        );
        // A clusters annotation that does not parse refuses the source
        // everywhere: its copies stay as they are.
        c.sources.insert(
            "east-only".into(),
            source("east-only", "v1", &[(clusters, "East_1")]).1,
        );
        for cluster in [None, Some("east")] {
            let p = c.plan_in(cluster, &[src("east-only")]);
            assert!(p.actions.is_empty(), "{p:?}");
            assert_eq!(p.refused.len(), 1, "{p:?}");
            assert_eq!(p.refused[0].1.metric_label(), "clusters");
        }
    }

    #[test]
    fn in_sync_plans_nothing_even_for_all() {
        let mut c = Case::new(&["a", "b"]);
        let s = secret("db", "v1", &[]);
        c.sources.extend([source("db", "v1", &[])]);
        c.replicas.extend([copy("a", &s), copy("b", &s)]);
        assert_eq!(c.plan(&[DirtyKey::All]), Plan::default());
        assert_eq!(
            c.plan(&[src("db"), DirtyKey::Namespace("a".into())]),
            Plan::default()
        );
    }

    #[test]
    fn changed_data_labels_or_tampering_update() {
        let old = secret("db", "v1", &[]);
        // Source changed: the hash annotation no longer matches.
        let mut c = Case::new(&["a"]);
        c.sources.extend([source("db", "v2", &[])]);
        c.replicas.extend([copy("a", &old)]);
        let update = Action::Update {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
            uid: "uid-a".into(),
            resource_version: "7".into(),
        };
        assert_eq!(c.plan(&[src("db")]).actions, vec![update.clone()]);

        // Annotation-only change on the source.
        let mut c = Case::new(&["a"]);
        c.sources.extend([source("db", "v1", &[("note", "x")])]);
        c.replicas.extend([copy("a", &old)]);
        assert_eq!(c.plan(&[src("db")]).actions, vec![update.clone()]);

        // Copy's data edited by someone else (its managed fields say so),
        // its hash annotation untouched.
        let mut c = Case::new(&["a"]);
        c.sources.extend([source("db", "v1", &[])]);
        let (k, mut r) = copy("a", &old);
        r.content.foreign = true;
        c.replicas.insert(k.clone(), r.clone());
        assert_eq!(c.plan(&[src("db")]).actions, vec![update.clone()]);

        // A data key removed by someone else: we no longer own all our keys.
        let (_, mut r) = copy("a", &old);
        r.content.our_keys = replica::keys_hash([]);
        c.replicas.insert(k.clone(), r.clone());
        assert_eq!(c.plan(&[src("db")]).actions, vec![update.clone()]);

        // A discovery label edited (checked at ingest: `markers`).
        let (_, mut r) = copy("a", &old);
        r.markers = false;
        c.replicas.insert(k.clone(), r);
        assert_eq!(c.plan(&[src("db")]).actions, vec![update.clone()]);

        // A label we copied from the source edited.
        let old = secret("db", "v1", &[]);
        let mut labelled = old.clone();
        labelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "a".into());
        c.sources
            .extend([SourceRecord::from_secret(&labelled, SRC).unwrap()]);
        let (_, mut r) = copy("a", &labelled);
        r.labels.insert("team".into(), "b".into());
        c.replicas.insert(k.clone(), r);
        assert_eq!(c.plan(&[src("db")]).actions, vec![update]);
        c.sources.extend([source("db", "v1", &[])]);

        // Extra labels added by someone else are not drift.
        let (_, mut r) = copy("a", &old);
        r.labels.insert("added-by-policy".into(), "y".into());
        c.replicas.insert(k, r);
        assert_eq!(c.plan(&[src("db")]).actions, vec![]);
    }

    #[test]
    fn immutable_copy_is_replaced_and_a_type_change_is_left_to_the_writer() {
        // The metadata watch does not see a copy's type: a type change is an
        // update, which the writer turns into a replace when the server
        // refuses it (push.rs).
        let mut c = Case::new(&["a"]);
        let mut s = secret("db", "v1", &[]);
        c.replicas.extend([copy("a", &s)]);
        s.type_ = Some("kubernetes.io/tls".into());
        c.sources
            .extend([SourceRecord::from_secret(&s, SRC).unwrap()]);
        let update = Action::Update {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
            uid: "uid-a".into(),
            resource_version: "7".into(),
        };
        assert_eq!(c.plan(&[src("db")]).actions, vec![update]);

        let replace = Action::Replace {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db".into(),
            uid: "uid-a".into(),
            resource_version: "7".into(),
        };

        let mut c = Case::new(&["a"]);
        let mut s = secret("db", "v1", &[]);
        s.immutable = Some(true);
        c.replicas.extend([copy("a", &s)]);
        c.sources
            .extend([SourceRecord::from_secret(&secret("db", "v2", &[]), SRC).unwrap()]);
        assert_eq!(c.plan(&[src("db")]).actions, vec![replace]);
    }

    #[test]
    fn gone_source_deletes_its_copies_only() {
        let mut c = Case::new(&["a", "b"]);
        let s = secret("db", "v1", &[]);
        let other = secret("api", "v1", &[]);
        c.replicas
            .extend([copy("a", &s), copy("b", &s), copy("a", &other)]);
        c.sources.extend([source("api", "v1", &[])]);
        let p = c.plan(&[src("db")]);
        let names: Vec<_> = p
            .actions
            .iter()
            .map(|a| (a.op(), a.key().to_string()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("delete", "Secret a/db".into()),
                ("delete", "Secret b/db".into())
            ]
        );
        // All (startup, resync) collects the same orphans (and creates api in b).
        let all = c.plan(&[DirtyKey::All]).actions;
        let deletes: Vec<_> = all.iter().filter(|a| a.op() == "delete").cloned().collect();
        assert_eq!(deletes, p.actions);
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn create_then_delete_in_one_window_plans_nothing() {
        // The source appeared and vanished before the flush: the cache has
        // neither it nor copies, so the dirty key plans nothing.
        let c = Case::new(&["a"]);
        assert_eq!(c.plan(&[src("db"), src("db")]), Plan::default());
    }

    #[test]
    fn namespace_key_replans_only_that_namespace() {
        let mut c = Case::new(&["a", "b"]);
        c.sources
            .extend([source("db", "v1", &[]), source("api", "v1", &[])]);
        let p = c.plan(&[DirtyKey::Namespace("b".into())]);
        assert_eq!(p.actions, vec![create("b", "api"), create("b", "db")]);
    }

    #[test]
    fn namespace_that_starts_to_be_excluded_loses_copies() {
        let mut c = Case::new(&["a"]);
        let s = secret("db", "v1", &[]);
        c.sources.extend([source("db", "v1", &[])]);
        c.replicas.extend([copy("a", &s)]);
        c.namespaces.insert("a".into(), ns(&[("skip", "true")]));
        let p = c.plan(&[DirtyKey::Namespace("a".into())]);
        assert_eq!(
            p.actions,
            vec![Action::Delete {
                kind: Kind::Secret,
                namespace: "a".into(),
                source: "db".into(),
                name: "db".into(),
                uid: "uid-a".into(),
                resource_version: "7".into()
            }]
        );
    }

    #[test]
    fn bad_annotation_skips_only_that_source_and_keeps_its_copies() {
        let mut c = Case::new(&["a"]);
        let bad = secret("bad", "v1", &[("push-to-k8s.io/namespaces", "Team_[")]);
        c.replicas.extend([copy("a", &bad)]);
        c.sources.extend([
            SourceRecord::from_secret(&bad, SRC).unwrap(),
            source("good", "v1", &[]),
        ]);
        let p = c.plan(&[DirtyKey::All]);
        assert_eq!(p.actions, vec![create("a", "good")]);
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].0, "bad");
    }

    #[test]
    fn an_adopt_annotation_other_than_true_or_false_refuses_only_that_source() {
        let mut c = Case::new(&["a"]);
        let bad = secret("bad", "v1", &[("push-to-k8s.io/adopt", "yes")]);
        c.replicas.extend([copy("a", &bad)]);
        c.sources.extend([
            SourceRecord::from_secret(&bad, SRC).unwrap(),
            source("asks", "v1", &[("push-to-k8s.io/adopt", "true")]),
        ]);
        let p = c.plan(&[DirtyKey::All]);
        // Asking for adoption changes nothing in the plan: a create, whose
        // writer adopts what is in the way.
        assert_eq!(p.actions, vec![create("a", "asks")]);
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].0, "bad");
        assert_eq!(p.refused[0].1.metric_label(), "adopt");
    }

    #[test]
    fn known_conflict_is_not_retried_until_no_longer_wanted() {
        let mut c = Case::new(&["a", "b"]);
        c.sources.extend([source("db", "v1", &[])]);
        let key = ObjectKey {
            kind: Kind::Secret,
            namespace: "a".into(),
            name: "db".into(),
        };
        c.conflicts.insert(key.clone());
        assert_eq!(c.plan(&[src("db")]).actions, vec![create("b", "db")]);
        c.namespaces.insert("a".into(), ns(&[("skip", "")]));
        assert_eq!(c.plan(&[src("db")]).resolved_conflicts, vec![key]);
    }

    fn update(ns: &str, s: &str) -> Action {
        Action::Update {
            kind: Kind::Secret,
            namespace: ns.into(),
            source: s.into(),
            name: s.into(),
            uid: format!("uid-{ns}"),
            resource_version: "7".into(),
        }
    }

    // Issue 7, defect 1: an operator restores a source from an exported copy
    // (it keeps our markers). It must stay a source: never a copy to delete.
    #[test]
    fn source_restored_from_an_exported_copy_is_never_taken_for_its_own_copy() {
        let mut c = Case::new(&["a"]);
        let exported = copy("a", &secret("db", "v1", &[])).1;
        let mut restored = secret("db", "v1", &[]);
        let meta = &mut restored.metadata;
        for (k, v) in exported.labels.iter() {
            meta.labels
                .get_or_insert_default()
                .insert(k.clone(), v.clone());
        }
        for (k, v) in exported.annotations.iter() {
            meta.annotations
                .get_or_insert_default()
                .insert(k.clone(), v.clone());
        }
        // A marked backup parked beside the sources, without the source label.
        let mut parked = restored.clone();
        parked.metadata.name = Some("db-backup".into());
        parked.metadata.labels = Some(BTreeMap::from([(
            crate::model::vocabulary::MANAGED_LABEL_KEY.to_string(),
            crate::model::vocabulary::MANAGED_LABEL_VALUE.to_string(),
        )]));
        for s in [&restored, &parked] {
            assert_eq!(
                ReplicaRecord::from_meta(Kind::Secret, &s.metadata, SRC),
                None,
                "{s:?}"
            );
            // Even without the source label, nothing in the source namespace is a copy.
            let mut unlabelled = s.metadata.clone();
            unlabelled
                .labels
                .as_mut()
                .unwrap()
                .remove(crate::model::vocabulary::SOURCE_LABEL_KEY);
            assert_eq!(
                ReplicaRecord::from_meta(Kind::Secret, &unlabelled, SRC),
                None
            );
        }
        c.sources
            .extend([SourceRecord::from_secret(&restored, SRC).unwrap()]);
        let p = c.plan(&[DirtyKey::All]);
        assert_eq!(p.actions, vec![create("a", "db")]);
    }

    // Issue 7, defect 2: a renamed backup of a copy (markers and all) is not
    // a copy; only an object named as its source asks is.
    #[test]
    fn renamed_backup_of_a_copy_is_not_a_copy() {
        let mut c = Case::new(&["a"]);
        let old = secret("db", "v1", &[]);
        let real = copy("a", &old);
        let mut backup = Replica::render(&old, SRC).to_secret("a");
        backup.metadata.name = Some("db-old".into());
        backup.metadata.uid = Some("uid-backup".into());
        assert_eq!(
            ReplicaRecord::from_meta(Kind::Secret, &backup.metadata, SRC),
            None
        );
        c.replicas.extend([real]);
        c.sources.extend([source("db", "v2", &[])]);
        assert_eq!(c.plan(&[src("db")]).actions, vec![update("a", "db")]);
        // Source gone: only the real copy is deleted.
        c.sources.clear();
        let p = c.plan(&[DirtyKey::All]);
        assert_eq!(
            p.actions,
            vec![Action::Delete {
                kind: Kind::Secret,
                namespace: "a".into(),
                source: "db".into(),
                name: "db".into(),
                uid: "uid-a".into(),
                resource_version: "7".into()
            }]
        );
    }

    // Issue 7, defect 12.
    #[test]
    fn identity_granting_secret_types_are_never_copied() {
        for t in replica::NEVER_COPIED_TYPES {
            let mut c = Case::new(&["a"]);
            let mut s = secret(
                "token",
                "v1",
                &[("push-to-k8s.io/namespaces", "kube-system,a")],
            );
            s.type_ = Some(t.to_string());
            c.sources
                .extend([SourceRecord::from_secret(&s, SRC).unwrap()]);
            let p = c.plan(&[DirtyKey::All]);
            assert_eq!(p.actions, vec![], "{t}");
            assert_eq!(
                p.refused,
                vec![("token".to_string(), Refusal::IdentityType(t.to_string()))]
            );
        }
    }

    // Issue 7, defect 10: who owns `immutable` says nothing of its value.
    #[test]
    fn immutable_owned_by_someone_else_is_an_update_not_a_replace() {
        let mut c = Case::new(&["a"]);
        let (k, mut r) = copy("a", &secret("db", "v1", &[]));
        r.content = crate::model::records::Content::from_managed_fields(Some(&vec![
            crate::model::records::managed_entry(
                crate::model::vocabulary::FIELD_MANAGER,
                &["k"],
                false,
            ),
            crate::model::records::managed_entry("kubectl", &[], true),
        ]));
        c.replicas.insert(k, r);
        c.sources.extend([source("db", "v2", &[])]);
        assert_eq!(c.plan(&[src("db")]).actions, vec![update("a", "db")]);
    }

    // Issue 7, defect 4: a copy the server changed while we wrote it (a
    // mutating webhook rewrote a label) is in sync as written, until anyone
    // changes it again or the source changes.
    #[test]
    fn a_copy_the_server_changed_while_we_wrote_it_is_in_sync_as_written() {
        let mut c = Case::new(&["a"]);
        let s = secret("db", "v1", &[]);
        let (k, mut r) = copy("a", &s);
        r.markers = false;
        c.replicas.insert(k.clone(), r);
        c.sources.extend([source("db", "v1", &[])]);
        assert_eq!(c.plan(&[src("db")]).actions, vec![update("a", "db")]);
        c.accepted.insert(k.clone(), "7".into());
        assert_eq!(c.plan(&[src("db")]).actions, vec![]);
        // Changed since our write (another resourceVersion): repaired.
        c.accepted.insert(k, "6".into());
        assert_eq!(c.plan(&[src("db")]).actions, vec![update("a", "db")]);
    }

    fn renamed(name: &str, value: &str, copy_name: &str) -> Secret {
        secret(
            name,
            value,
            &[(crate::model::vocabulary::COPY_NAME_ANNOTATION, copy_name)],
        )
    }

    // Issue 8: renamed copies. The copy has the name the source asks for,
    // and is ours only under that name.
    #[test]
    fn a_renamed_source_writes_its_copies_under_the_asked_name() {
        let mut c = Case::new(&["a"]);
        let s = renamed("db", "v1", "db-copy");
        c.sources
            .extend([SourceRecord::from_secret(&s, SRC).unwrap()]);
        let want = Action::Create {
            kind: Kind::Secret,
            namespace: "a".into(),
            source: "db".into(),
            name: "db-copy".into(),
        };
        assert_eq!(c.plan(&[src("db")]).actions, vec![want]);
        // Written: in sync, and ours under that name only.
        let (k, r) = copy("a", &s);
        assert_eq!(k.name, "db-copy");
        assert_eq!(&*r.source, "db");
        c.replicas.insert(k, r);
        assert_eq!(c.plan(&[DirtyKey::All]), Plan::default());
        let mut backup = Replica::render(&s, SRC).to_secret("a");
        backup.metadata.name = Some("db-copy-old".into());
        assert_eq!(
            ReplicaRecord::from_meta(Kind::Secret, &backup.metadata, SRC),
            None,
            "a backup of a renamed copy is not a copy"
        );
    }

    #[test]
    fn changing_the_copy_name_moves_the_copy() {
        let mut c = Case::new(&["a"]);
        c.replicas
            .extend([copy("a", &renamed("db", "v1", "old-name"))]);
        c.sources
            .extend([SourceRecord::from_secret(&renamed("db", "v1", "new-name"), SRC).unwrap()]);
        let ops: Vec<_> = c
            .plan(&[src("db")])
            .actions
            .iter()
            .map(|a| (a.op(), a.key().to_string()))
            .collect();
        assert_eq!(
            ops,
            vec![
                ("create", "Secret a/new-name".to_string()),
                ("delete", "Secret a/old-name".to_string())
            ]
        );
        // Back to its own name: the same move.
        c.sources
            .extend([SourceRecord::from_secret(&secret("db", "v1", &[]), SRC).unwrap()]);
        let ops: Vec<_> = c
            .plan(&[src("db")])
            .actions
            .iter()
            .map(|a| (a.op(), a.key().to_string()))
            .collect();
        assert_eq!(
            ops,
            vec![
                ("create", "Secret a/db".to_string()),
                ("delete", "Secret a/old-name".to_string())
            ]
        );
    }

    /// Issue 16, defect 11: two sources asking for one copy name were both
    /// planned (each create then failed against the other's copy, at every
    /// start and resync, and no one said why). The older keeps the name
    /// (then the first by name); the other is refused, whichever way round.
    #[test]
    fn defect11_of_two_sources_asking_for_one_copy_name_the_older_keeps_it() {
        let at = |name: &str, value: &str, ann: &[(&str, &str)], created: &str| {
            let mut s = secret(name, value, ann);
            s.metadata.creation_timestamp =
                Some(serde_json::from_value(serde_json::json!(created)).unwrap());
            SourceRecord::from_secret(&s, SRC).unwrap()
        };
        let ask = [(crate::model::vocabulary::COPY_NAME_ANNOTATION, "shared")];
        for (older, newer) in [("zeta", "alpha"), ("alpha", "zeta")] {
            let mut c = Case::new(&["a"]);
            c.sources.extend([
                at(older, "v1", &ask, "2026-01-01T00:00:00Z"),
                at(newer, "v2", &ask, "2026-06-01T00:00:00Z"),
            ]);
            let p = c.plan(&[DirtyKey::All]);
            assert_eq!(
                p.actions,
                vec![Action::Create {
                    kind: Kind::Secret,
                    namespace: "a".into(),
                    source: older.into(),
                    name: "shared".into(),
                }],
                "older {older}"
            );
            assert_eq!(p.refused.len(), 1, "{:?}", p.refused);
            let (refused, why) = &p.refused[0];
            assert_eq!(refused, newer);
            assert_eq!(why.reason(), "InvalidAnnotation");
            assert_eq!(why.metric_label(), "copy_name_taken");
            assert!(why.to_string().contains(older), "{why}");
            assert_eq!(refusal_among(&c.sources, newer), Some(why.clone()));
            assert_eq!(refusal_among(&c.sources, older), None);
        }
        // A source's own name counts as asking for it; created in the same
        // second, the first by name keeps it.
        let mut c = Case::new(&["a"]);
        let same = "2026-01-01T00:00:00Z";
        c.sources.extend([
            at("shared", "v1", &[], same),
            at("a-rename", "v2", &ask, same),
        ]);
        let p = c.plan(&[DirtyKey::All]);
        assert_eq!(p.actions.len(), 1, "{:?}", p.actions);
        assert_eq!(p.actions[0].source(), "a-rename");
        assert_eq!(p.refused[0].0, "shared");
    }

    #[test]
    fn an_invalid_copy_name_refuses_only_that_source() {
        let mut c = Case::new(&["a"]);
        c.sources.extend([
            SourceRecord::from_secret(&renamed("db", "v1", "Not_A_Name"), SRC).unwrap(),
            source("api", "v1", &[]),
        ]);
        let p = c.plan(&[DirtyKey::All]);
        assert_eq!(p.actions.len(), 1, "{:?}", p.actions);
        assert_eq!(p.refused.len(), 1);
        assert_eq!(p.refused[0].1.metric_label(), "copy_name");
    }

    #[test]
    fn a_copy_key_replans_only_that_copy() {
        let mut c = Case::new(&["a", "b"]);
        c.sources.extend([source("db", "v1", &[])]);
        let key = ObjectKey {
            kind: Kind::Secret,
            namespace: "b".into(),
            name: "db".into(),
        };
        assert_eq!(
            c.plan(&[DirtyKey::Copy(key)]).actions,
            vec![create("b", "db")]
        );
    }

    #[test]
    fn narrowed_source_deletes_copies_outside_its_targets() {
        let mut c = Case::new(&["team-a", "other"]);
        let s = secret("db", "v1", &[("push-to-k8s.io/namespaces", "team-*")]);
        c.sources
            .extend([SourceRecord::from_secret(&s, SRC).unwrap()]);
        c.replicas.extend([copy("team-a", &s), copy("other", &s)]);
        let ops: Vec<_> = c
            .plan(&[src("db")])
            .actions
            .iter()
            .map(|a| (a.op(), a.key().to_string()))
            .collect();
        assert_eq!(ops, vec![("delete", "Secret other/db".to_string())]);
    }
}
