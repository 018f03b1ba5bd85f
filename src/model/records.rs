//! Pure records of what the watches see (no I/O): the key of a copy, a
//! source as the planner needs it, a copy as its metadata shows it, and the
//! ownership rules that decide what is a copy at all (docs/architecture.md,
//! "Ownership"). The watches and the resync fill caches of these
//! ([`crate::observe::cache`]); the planner reads them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

use crate::model::kinds::Kind;
use crate::model::replica::{self, Replica, ShortHash};
use crate::model::rules::NamespaceInfo;

/// `(kind, namespace, name)` of a copy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A source as the planner needs it: identity, its annotations (target rules)
/// and the rendered copy.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRecord {
    pub uid: String,
    /// Its creationTimestamp (RFC 3339, as the API server gives it; empty if
    /// none): of two sources asking for one copy name, the older keeps it
    /// ([`crate::decide::plan::copy_name_holders`]).
    pub created: String,
    pub annotations: BTreeMap<String, String>,
    pub replica: Replica,
}

impl SourceRecord {
    /// A Secret that registers a remote cluster (it carries
    /// [`crate::model::vocabulary::CLUSTER_LABEL`]) is never a source, even with the
    /// source label: its kubeconfig must not be copied anywhere (the
    /// registrations watch says so with a Warning Event). Copies an older
    /// version made of it are collected like those of a deleted source.
    pub fn from_secret(s: &Secret, source_namespace: &str) -> Option<(String, SourceRecord)> {
        if s.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(crate::model::vocabulary::CLUSTER_LABEL))
        {
            return None;
        }
        SourceRecord::from_parts(&s.metadata, source_namespace, || {
            Replica::render(s, source_namespace)
        })
    }

    pub fn from_config_map(
        c: &ConfigMap,
        source_namespace: &str,
    ) -> Option<(String, SourceRecord)> {
        SourceRecord::from_parts(&c.metadata, source_namespace, || {
            Replica::render_config_map(c, source_namespace)
        })
    }

    fn from_parts(
        meta: &ObjectMeta,
        source_namespace: &str,
        render: impl FnOnce() -> Replica,
    ) -> Option<(String, SourceRecord)> {
        let name = meta.name.clone()?;
        // Defensive: the watch is label- and namespace-scoped, but a relist
        // or a test double must not be able to widen it.
        if !is_labelled_source(meta) || meta.namespace.as_deref() != Some(source_namespace) {
            return None;
        }
        Some((
            name,
            SourceRecord {
                uid: meta.uid.clone().unwrap_or_default(),
                created: meta
                    .creation_timestamp
                    .as_ref()
                    .and_then(|t| serde_json::to_value(t).ok())
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                annotations: control_annotations(meta.annotations.as_ref()),
                replica: render(),
            },
        ))
    }
}

/// Does `meta` carry the source label (`push-to-k8s=source`)?
pub fn is_labelled_source(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(crate::model::vocabulary::SOURCE_LABEL_KEY))
        .is_some_and(|v| v == crate::model::vocabulary::SOURCE_LABEL_VALUE)
}

/// Only our own control annotations (`push-to-k8s.io/...`) of a source: the
/// planner needs nothing else, and the rest can be large or sensitive
/// (`kubectl.kubernetes.io/last-applied-configuration` holds the whole Secret,
/// values included), so it is dropped at ingest. The copy's annotations are
/// rendered into [`Replica`] (which drops kubectl's record as well).
pub fn control_annotations(all: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    all.into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(crate::model::vocabulary::CONTROL_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Labels or annotations of a replica: `(key, value)` pairs sorted by key, in
/// one allocation. A `BTreeMap` allocates a ~540-byte node even for a single
/// entry; with two maps per replica that was half of the replica cache: a
/// record took 2,072 bytes with maps, 1,102 with pairs (docs/benchmarks.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pairs(Box<[(String, String)]>);

impl Pairs {
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Set `key` to `value` (reallocates: for tests and rare paths).
    pub fn insert(&mut self, key: String, value: String) {
        let mut v = std::mem::take(&mut self.0).into_vec();
        match v.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => v[i].1 = value,
            Err(i) => v.insert(i, (key, value)),
        }
        self.0 = v.into_boxed_slice();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl From<BTreeMap<String, String>> for Pairs {
    fn from(map: BTreeMap<String, String>) -> Pairs {
        // A BTreeMap iterates in key order: already sorted.
        Pairs(map.into_iter().collect())
    }
}

/// What we remember about one of our replicas: enough to decide "in sync",
/// "update", "replace" or "delete" from its metadata alone (the replica watch
/// never receives, let alone holds, a copy's data).
///
/// One per copy, so it is kept small (100,000 copies must fit the scale
/// target): 128 bytes inline and, for a copy with no label or annotation of
/// its own, one heap block (`source`, 32 bytes of malloc chunk), where
/// strings and hex hashes took 168 bytes and five blocks (208 bytes of malloc
/// chunks). `tests/record_memory.rs` counts both.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRecord {
    /// Name of the source (in the configured source namespace).
    pub source: Box<str>,
    pub uid: Uid,
    pub resource_version: ResourceVersion,
    /// Our content-hash annotation as found on the object: what our last
    /// write set, type, data and immutability included. `None` if it is
    /// missing, or is not a hash as we write it (edited): equal to no
    /// desired hash.
    pub hash: Option<ShortHash>,
    /// Whether anyone changed the content since (from its managed fields).
    pub content: Content,
    /// The discovery labels hold what they must for this source and its
    /// namespace. They (and the other markers, which every record has by
    /// construction) are checked here once and not kept: at 100,000 copies
    /// each kept label costs megabytes.
    pub markers: bool,
    /// Labels other than our markers.
    pub labels: Pairs,
    /// Annotations other than our markers and kubectl's apply record (which
    /// can be large).
    pub annotations: Pairs,
}

impl ReplicaRecord {
    /// Whether the copy's content-hash annotation is `hash` (as we write it).
    pub fn has_hash(&self, hash: &str) -> bool {
        self.hash.is_some_and(|h| h.is(hash))
    }
}

/// A copy's uid, exactly as the API server gave it (delete and adoption
/// preconditions send it back). A canonical UUID in lowercase hex, which is
/// what the API server hands out, is kept as its 16 bytes (no heap block);
/// anything else as the string it is, so [`Uid`]'s `Display` always gives
/// back the original.
#[derive(Clone, PartialEq, Eq)]
pub enum Uid {
    /// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase hex digits.
    Uuid([u8; 16]),
    /// Anything else (upper case, no hyphens, empty), verbatim.
    Other(Box<str>),
}

impl Uid {
    pub fn new(uid: &str) -> Uid {
        Uid::uuid(uid).map_or_else(|| Uid::Other(uid.into()), Uid::Uuid)
    }

    fn uuid(uid: &str) -> Option<[u8; 16]> {
        const HYPHENS: [usize; 4] = [8, 13, 18, 23];
        let b = uid.as_bytes();
        if b.len() != 36 || HYPHENS.iter().any(|&i| b[i] != b'-') {
            return None;
        }
        let mut digits = [0; 32];
        let hex = (0..36).filter(|i| !HYPHENS.contains(i)).map(|i| b[i]);
        for (d, c) in digits.iter_mut().zip(hex) {
            *d = c;
        }
        replica::lower_hex(&digits)
    }
}

impl std::fmt::Display for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uid::Uuid(bytes) => {
                for (i, b) in bytes.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            Uid::Other(s) => f.write_str(s),
        }
    }
}

impl std::fmt::Debug for Uid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// A copy's resourceVersion, exactly as the API server gave it (update and
/// delete preconditions send it back). Opaque by contract; today's API
/// servers give decimal integers, kept as a number when the string is one
/// in canonical form (no sign, no leading zero, fits 64 bits), so that
/// `Display` gives back the original; anything else verbatim.
#[derive(Clone, PartialEq, Eq)]
pub enum ResourceVersion {
    Number(u64),
    Other(Box<str>),
}

impl ResourceVersion {
    pub fn new(rv: &str) -> ResourceVersion {
        ResourceVersion::number(rv).map_or_else(
            || ResourceVersion::Other(rv.into()),
            ResourceVersion::Number,
        )
    }

    /// The number `rv` spells if it is canonical decimal: the one string
    /// that `u64`'s `Display` would give for it.
    fn number(rv: &str) -> Option<u64> {
        let canonical =
            rv.bytes().all(|c| c.is_ascii_digit()) && (rv == "0" || !rv.starts_with('0'));
        canonical.then(|| rv.parse().ok()).flatten()
    }
}

/// Equal exactly when the strings are (a number is only ever kept for its
/// canonical string, anything else verbatim).
impl PartialEq<str> for ResourceVersion {
    fn eq(&self, other: &str) -> bool {
        match self {
            ResourceVersion::Number(n) => ResourceVersion::number(other) == Some(*n),
            ResourceVersion::Other(s) => **s == *other,
        }
    }
}

impl PartialEq<&str> for ResourceVersion {
    fn eq(&self, other: &&str) -> bool {
        *self == **other
    }
}

impl std::fmt::Display for ResourceVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ResourceVersion::Number(n) => write!(f, "{n}"),
            ResourceVersion::Other(s) => f.write_str(s),
        }
    }
}

impl std::fmt::Debug for ResourceVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}

/// Labels every copy carries whose values follow from its source alone.
pub const MARKER_LABELS: [&str; 3] = [
    crate::model::vocabulary::MANAGED_LABEL_KEY,
    crate::model::vocabulary::SOURCE_NAME_LABEL,
    crate::model::vocabulary::SOURCE_NAMESPACE_LABEL,
];
/// Annotations every copy carries whose values are kept elsewhere in the
/// record (its key, `source`, `hash`).
pub const MARKER_ANNOTATIONS: [&str; 4] = [
    crate::model::vocabulary::SOURCE_ANNOTATION,
    crate::model::vocabulary::HASH_ANNOTATION,
    crate::model::vocabulary::COPY_NAME_ANNOTATION,
    crate::model::vocabulary::SOURCE_CLUSTER_ANNOTATION,
];

/// What a copy's managed fields say about its content (type, data,
/// immutability), whose values the metadata watch does not carry.
///
/// The API server records, per field manager, which fields it set. Whoever
/// changes a data key takes that key over (an update) or must force it away
/// from us (an apply); whoever removes one takes it from us. So our content
/// hash annotation describes the data exactly while our field manager still
/// owns every key we set and nobody else owns one we do not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Content {
    /// [`replica::keys_hash`] of the data keys our field manager owns.
    pub our_keys: ShortHash,
    /// Another manager owns a data key, or `immutable`, that we do not.
    pub foreign: bool,
    /// `immutable` is set on the copy (by us or anyone): only a delete and a
    /// create can change it.
    pub immutable: bool,
}

impl Content {
    pub fn from_managed_fields(entries: Option<&Vec<ManagedFieldsEntry>>) -> Content {
        let (mut ours, mut theirs) = (BTreeSet::new(), BTreeSet::new());
        let mut our_immutable = false;
        for entry in entries.into_iter().flatten() {
            let Some(fields) = entry.fields_v1.as_ref().map(|f| &f.0) else {
                continue;
            };
            // A ConfigMap's text and binary keys together (the API refuses a
            // key in both); a Secret has only `data`.
            let keys =
                field_names(fields.get("f:data")).chain(field_names(fields.get("f:binaryData")));
            let immutable = fields.get("f:immutable").is_some();
            if entry.manager.as_deref() == Some(crate::model::vocabulary::FIELD_MANAGER) {
                ours.extend(keys);
                our_immutable |= immutable;
            } else {
                theirs.extend(keys);
            }
        }
        // Ownership of `immutable` says who set the field, not its value. We
        // set it only to `true` (`Replica::to_secret`), so our ownership means
        // true. Another manager's may be `false`, and making a copy immutable
        // does not change its content anyway: if it is `true`, the next
        // update is refused as immutable and the writer replaces the copy.
        Content {
            our_keys: replica::keys_hash(ours.iter().copied()),
            foreign: theirs.difference(&ours).next().is_some(),
            immutable: our_immutable,
        }
    }
}

/// The names of the fields a managed-fields set (`fieldsV1`) holds under one
/// map: `{"f:a": {}, "f:b": {}, ".": {}}` gives `a`, `b`.
pub fn field_names(set: Option<&serde_json::Value>) -> impl Iterator<Item = &str> {
    set.and_then(serde_json::Value::as_object)
        .into_iter()
        .flat_map(|m| m.keys())
        .filter_map(|k| k.strip_prefix("f:"))
}

impl ReplicaRecord {
    /// A record for the `kind` object with `meta` if it is one of our
    /// copies (see [`owned_source`]).
    pub fn from_meta(
        kind: Kind,
        meta: &ObjectMeta,
        source_namespace: &str,
    ) -> Option<(ObjectKey, ReplicaRecord)> {
        Self::from_meta_in(kind, meta, source_namespace, None)
    }

    /// [`ReplicaRecord::from_meta`] for a copy stamped as coming from the
    /// source cluster `stamp` (a copy in a remote cluster), or, with `None`,
    /// one that names no source cluster (a copy in this cluster).
    pub fn from_meta_in(
        kind: Kind,
        meta: &ObjectMeta,
        source_namespace: &str,
        stamp: Option<&str>,
    ) -> Option<(ObjectKey, ReplicaRecord)> {
        let source = owned_source_in(meta, source_namespace, stamp)?;
        let key = ObjectKey {
            kind,
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
        };
        let mut annotations = meta.annotations.clone().unwrap_or_default();
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        let hash = annotations
            .get(crate::model::vocabulary::HASH_ANNOTATION)
            .and_then(|h| ShortHash::parse(h));
        annotations.retain(|k, _| !MARKER_ANNOTATIONS.contains(&k.as_str()));
        let mut labels = meta.labels.clone().unwrap_or_default();
        let label = |k: &str| labels.get(k).map(String::as_str);
        let markers = label(crate::model::vocabulary::SOURCE_NAME_LABEL)
            == Some(replica::discovery_value(&source).as_str())
            && label(crate::model::vocabulary::SOURCE_NAMESPACE_LABEL)
                == Some(replica::discovery_value(source_namespace).as_str());
        labels.retain(|k, _| !MARKER_LABELS.contains(&k.as_str()));
        Some((
            key,
            ReplicaRecord {
                source: source.into(),
                uid: Uid::new(meta.uid.as_deref().unwrap_or_default()),
                resource_version: ResourceVersion::new(
                    meta.resource_version.as_deref().unwrap_or_default(),
                ),
                hash,
                content: Content::from_managed_fields(meta.managed_fields.as_ref()),
                markers,
                labels: labels.into(),
                annotations: annotations.into(),
            },
        ))
    }
}

/// The source name if `meta` is one of our copies; `None` for anything we
/// must not touch. The ownership rules (docs/architecture.md, "Ownership"):
/// an object is a copy only if
/// - it carries our managed-by label,
/// - its source annotation names a source in the configured source namespace,
/// - its name is the name that source asks for (the source's own name, or
///   the one its `copy-name` annotation gave and our write recorded on the
///   copy), so a renamed backup of a copy (`db-old`, markers and all) is not one,
/// - it is not in the source namespace, and
/// - it does not carry the source label,
///
/// so a source restored from an exported copy, or a marked backup parked
/// beside the sources, can never be taken for a copy and deleted.
pub fn owned_source(meta: &ObjectMeta, source_namespace: &str) -> Option<String> {
    owned_source_in(meta, source_namespace, None)
}

/// [`owned_source`] with one more rule, for copies that cross clusters: the
/// copy's [`crate::model::vocabulary::SOURCE_CLUSTER_ANNOTATION`] must be exactly `stamp`.
/// With `None` (this cluster) a copy must not carry it at all: a copy stamped
/// with any source cluster was pushed here by another cluster's controller,
/// even if its source namespace has the same name as ours.
pub fn owned_source_in(
    meta: &ObjectMeta,
    source_namespace: &str,
    stamp: Option<&str>,
) -> Option<String> {
    let labels = meta.labels.as_ref()?;
    let managed = labels
        .get(crate::model::vocabulary::MANAGED_LABEL_KEY)
        .is_some_and(|v| v == crate::model::vocabulary::MANAGED_LABEL_VALUE);
    if !managed || labels.contains_key(crate::model::vocabulary::SOURCE_LABEL_KEY) {
        return None;
    }
    if meta.namespace.as_deref() == Some(source_namespace) {
        return None;
    }
    let annotations = meta.annotations.as_ref()?;
    let cluster = annotations.get(crate::model::vocabulary::SOURCE_CLUSTER_ANNOTATION);
    if cluster.map(String::as_str) != stamp {
        return None;
    }
    let origin = annotations.get(crate::model::vocabulary::SOURCE_ANNOTATION)?;
    let (ns, name) = origin.split_once('/')?;
    // The name its source asks for, as our write recorded it on the copy.
    let asked = annotations
        .get(crate::model::vocabulary::COPY_NAME_ANNOTATION)
        .map_or(name, String::as_str);
    let named_as_asked = meta.name.as_deref() == Some(asked);
    (ns == source_namespace && !name.is_empty() && named_as_asked).then(|| name.to_string())
}

pub fn namespace_info(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> NamespaceInfo {
    NamespaceInfo {
        labels: meta.labels.clone().unwrap_or_default(),
        terminating: meta.deletion_timestamp.is_some(),
    }
}

/// Test support: a managed-fields entry of `manager` owning `data_keys` (and
/// `immutable`), as the API server records it.
#[cfg(test)]
pub fn managed_entry(manager: &str, data_keys: &[&str], immutable: bool) -> ManagedFieldsEntry {
    let mut fields = serde_json::json!({});
    if !data_keys.is_empty() {
        let keys: serde_json::Map<String, serde_json::Value> = data_keys
            .iter()
            .map(|k| (format!("f:{k}"), serde_json::json!({})))
            .collect();
        fields["f:data"] = serde_json::Value::Object(keys);
    }
    if immutable {
        fields["f:immutable"] = serde_json::json!({});
    }
    ManagedFieldsEntry {
        manager: Some(manager.into()),
        operation: Some("Apply".into()),
        api_version: Some("v1".into()),
        fields_type: Some("FieldsV1".into()),
        fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(
            fields,
        )),
        ..Default::default()
    }
}

/// Test support: `s` as our write leaves it on the server (managed fields).
#[cfg(test)]
pub fn as_written_by_us(mut s: Secret) -> Secret {
    let keys: Vec<&str> = s.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
    let entry = managed_entry(
        crate::model::vocabulary::FIELD_MANAGER,
        &keys,
        s.immutable == Some(true),
    );
    s.metadata.managed_fields = Some(vec![entry]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        ObjectMeta {
            name: Some("db".into()),
            namespace: Some("team-a".into()),
            labels: map(labels),
            annotations: map(annotations),
            ..Default::default()
        }
    }

    #[test]
    fn a_copy_is_ours_only_from_the_source_cluster_it_names() {
        let managed = (
            crate::model::vocabulary::MANAGED_LABEL_KEY,
            crate::model::vocabulary::MANAGED_LABEL_VALUE,
        );
        let source = (crate::model::vocabulary::SOURCE_ANNOTATION, "src/db");
        let from = |c: &'static str| (crate::model::vocabulary::SOURCE_CLUSTER_ANNOTATION, c);
        let local = meta(&[managed], &[source]);
        let from_home = meta(&[managed], &[source, from("home")]);
        let from_other = meta(&[managed], &[source, from("other")]);
        // This cluster: only copies that name no source cluster.
        assert_eq!(owned_source_in(&local, "src", None).as_deref(), Some("db"));
        assert_eq!(owned_source(&from_home, "src"), None);
        assert_eq!(owned_source(&from_other, "src"), None);
        // A remote cluster: only copies stamped with our own cluster's name,
        // though another cluster's controller uses the same source namespace.
        let home = Some("home");
        assert_eq!(
            owned_source_in(&from_home, "src", home).as_deref(),
            Some("db")
        );
        assert_eq!(owned_source_in(&from_other, "src", home), None);
        assert_eq!(owned_source_in(&local, "src", home), None);
        // The stamp is a marker: not kept among the record's annotations.
        let (_, r) = ReplicaRecord::from_meta_in(Kind::Secret, &from_home, "src", home).unwrap();
        assert!(
            r.annotations
                .get(crate::model::vocabulary::SOURCE_CLUSTER_ANNOTATION)
                .is_none()
        );
    }

    #[test]
    fn ours_needs_the_label_and_a_source_in_our_namespace() {
        let managed = (
            crate::model::vocabulary::MANAGED_LABEL_KEY,
            crate::model::vocabulary::MANAGED_LABEL_VALUE,
        );
        let cases: &[(ObjectMeta, Option<&str>)] = &[
            (
                meta(
                    &[managed],
                    &[(crate::model::vocabulary::SOURCE_ANNOTATION, "src/db")],
                ),
                Some("db"),
            ),
            // No label: somebody else's, whatever the annotation says.
            (
                meta(
                    &[],
                    &[(crate::model::vocabulary::SOURCE_ANNOTATION, "src/db")],
                ),
                None,
            ),
            // Another controller's source namespace, or one that merely starts like ours.
            (
                meta(
                    &[managed],
                    &[(crate::model::vocabulary::SOURCE_ANNOTATION, "other/db")],
                ),
                None,
            ),
            (
                meta(
                    &[managed],
                    &[(crate::model::vocabulary::SOURCE_ANNOTATION, "src-2/db")],
                ),
                None,
            ),
            // Label without (or with a malformed) source annotation.
            (meta(&[managed], &[]), None),
            (
                meta(
                    &[managed],
                    &[(crate::model::vocabulary::SOURCE_ANNOTATION, "src/")],
                ),
                None,
            ),
            (
                meta(
                    &[managed],
                    &[(crate::model::vocabulary::SOURCE_ANNOTATION, "src")],
                ),
                None,
            ),
            (
                meta(
                    &[(crate::model::vocabulary::MANAGED_LABEL_KEY, "helm")],
                    &[(crate::model::vocabulary::SOURCE_ANNOTATION, "src/db")],
                ),
                None,
            ),
        ];
        for (m, want) in cases {
            assert_eq!(owned_source(m, "src").as_deref(), *want, "{m:?}");
        }
    }

    // Issue 7, defect 11: kubectl's apply record holds the whole Secret,
    // values included; a source record (a `Debug` type) must not keep it.
    #[test]
    fn source_record_drops_the_kubectl_apply_record_at_ingest() {
        let value = "s3cr3t-value-in-apply-record";
        let s = Secret {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("src".into()),
                labels: Some(BTreeMap::from([(
                    crate::model::vocabulary::SOURCE_LABEL_KEY.to_string(),
                    crate::model::vocabulary::SOURCE_LABEL_VALUE.to_string(),
                )])),
                annotations: Some(BTreeMap::from([
                    (
                        "kubectl.kubernetes.io/last-applied-configuration".to_string(),
                        format!(r#"{{"stringData":{{"k":"{value}"}}}}"#),
                    ),
                    (
                        "push-to-k8s.io/namespaces".to_string(),
                        "team-*".to_string(),
                    ),
                ])),
                ..Default::default()
            },
            ..Default::default()
        };
        let (_, rec) = SourceRecord::from_secret(&s, "src").unwrap();
        assert!(!format!("{rec:?}").contains(value), "{rec:?}");
        assert_eq!(
            rec.annotations.keys().collect::<Vec<_>>(),
            ["push-to-k8s.io/namespaces"]
        );
    }

    // Issue 16, item 6: a registration Secret is never a source.
    #[test]
    fn a_secret_registering_a_cluster_is_never_a_source() {
        let labelled = |extra: &[(&str, &str)]| {
            let mut labels = BTreeMap::from([(
                crate::model::vocabulary::SOURCE_LABEL_KEY.to_string(),
                crate::model::vocabulary::SOURCE_LABEL_VALUE.to_string(),
            )]);
            labels.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            Secret {
                metadata: ObjectMeta {
                    name: Some("cluster-east".into()),
                    namespace: Some("src".into()),
                    labels: Some(labels),
                    ..Default::default()
                },
                ..Default::default()
            }
        };
        assert!(SourceRecord::from_secret(&labelled(&[]), "src").is_some());
        for value in ["east", "", "Not A Label"] {
            let s = labelled(&[(crate::model::vocabulary::CLUSTER_LABEL, value)]);
            assert!(SourceRecord::from_secret(&s, "src").is_none(), "{value:?}");
        }
    }

    // Preconditions must send back exactly the string the API server gave.
    #[test]
    fn uid_gives_back_exactly_the_string_it_was_made_from() {
        let uuid = "0c9d4a7e-5b1f-4e2a-9c3d-00000000abcd";
        assert!(matches!(Uid::new(uuid), Uid::Uuid(_)));
        let others = [
            "0C9D4A7E-5B1F-4E2A-9C3D-00000000ABCD",
            "0c9d4a7e-5b1f-4e2a-9c3d-00000000ABCD",
            "0c9d4a7e5b1f4e2a9c3d00000000abcd",
            "0c9d4a7e-5b1f-4e2a-9c3d-00000000abc",
            "0c9d4a7e-5b1f-4e2a-9c3d-00000000abcde",
            "0c9d4a7e-5b1f-4e2a-9c3d0-0000000abcd",
            "0c9d4a7e-5b1f-4e2a-9c3d--0000000abcd",
            "0c9d4a7e-5b1f-4e2a-9c3d-00000000abcg",
            "+c9d4a7e-5b1f-4e2a-9c3d-00000000abcd",
            "uid-team-a",
            "",
        ];
        for s in others {
            assert!(matches!(Uid::new(s), Uid::Other(_)), "{s:?}");
        }
        for s in [uuid, "00000000-0000-0000-0000-000000000000"]
            .into_iter()
            .chain(others)
        {
            assert_eq!(Uid::new(s).to_string(), s);
            assert_eq!(format!("{:?}", Uid::new(s)), format!("{s:?}"));
        }
        // Different strings, different uids.
        assert_ne!(Uid::new(uuid), Uid::new(&uuid.to_uppercase()));
    }

    #[test]
    fn resource_version_gives_back_exactly_the_string_it_was_made_from() {
        for s in ["0", "7", "1234567", "18446744073709551615"] {
            assert!(
                matches!(ResourceVersion::new(s), ResourceVersion::Number(_)),
                "{s:?}"
            );
        }
        let others = [
            "",
            "07",
            "00",
            "+7",
            "-7",
            " 7",
            "7 ",
            "18446744073709551616",
            "1e3",
            "abc",
        ];
        for s in others {
            assert!(
                matches!(ResourceVersion::new(s), ResourceVersion::Other(_)),
                "{s:?}"
            );
        }
        for s in ["0", "7", "1234567", "18446744073709551615"]
            .into_iter()
            .chain(others)
        {
            let rv = ResourceVersion::new(s);
            assert_eq!(rv.to_string(), s);
            assert_eq!(format!("{rv:?}"), format!("{s:?}"));
            // Equal to a string exactly when the strings are equal.
            for t in ["0", "7", "07", "1234567", "+7", "", "abc"] {
                assert_eq!(rv == *t, s == t, "{s:?} == {t:?}");
                assert_eq!(rv == ResourceVersion::new(t), s == t, "{s:?} == {t:?}");
            }
        }
    }

    // An annotation someone edited compares unequal to every real hash.
    #[test]
    fn a_hash_annotation_not_as_we_write_it_matches_nothing() {
        let copy = |hash: Option<&str>| {
            let mut annotations = vec![(crate::model::vocabulary::SOURCE_ANNOTATION, "src/db")];
            annotations.extend(hash.map(|h| (crate::model::vocabulary::HASH_ANNOTATION, h)));
            let managed = (
                crate::model::vocabulary::MANAGED_LABEL_KEY,
                crate::model::vocabulary::MANAGED_LABEL_VALUE,
            );
            ReplicaRecord::from_meta(Kind::Secret, &meta(&[managed], &annotations), "src")
                .unwrap()
                .1
        };
        let real = "0123456789abcdef0123456789abcdef";
        let r = copy(Some(real));
        assert!(r.has_hash(real));
        assert_eq!(r.hash.unwrap().to_string(), real);
        for edited in [
            "0123456789ABCDEF0123456789ABCDEF",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123abcd",
            "",
        ] {
            let r = copy(Some(edited));
            assert_eq!(r.hash, None, "{edited:?}");
            assert!(!r.has_hash(edited) && !r.has_hash(real), "{edited:?}");
        }
        assert!(!copy(None).has_hash(real));
    }

    // One record per copy: 100,000 copies must fit the scale target
    // (tests/record_memory.rs counts the heap as well).
    #[test]
    fn a_replica_record_stays_small() {
        assert!(std::mem::size_of::<ReplicaRecord>() <= 128);
        assert_eq!(std::mem::size_of::<Uid>(), 24);
        // The number lives where the string's length would (niche).
        assert_eq!(std::mem::size_of::<ResourceVersion>(), 16);
        assert_eq!(std::mem::size_of::<Option<ShortHash>>(), 17);
    }

    #[test]
    fn pairs_look_up_and_insert_in_key_order() {
        let mut p = Pairs::from(BTreeMap::from([
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]));
        assert_eq!(p.get("a").map(String::as_str), Some("1"));
        assert_eq!(p.get("b").map(String::as_str), Some("2"));
        assert_eq!(p.get("c"), None);
        p.insert("c".into(), "3".into());
        p.insert("a".into(), "x".into());
        p.insert("0".into(), "0".into());
        let all: Vec<_> = p.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(all, ["0=0", "a=x", "b=2", "c=3"]);
        assert_eq!(p.get("a").map(String::as_str), Some("x"));
    }

    #[test]
    fn content_tells_from_managed_fields_whether_anyone_changed_the_data() {
        use crate::model::vocabulary::FIELD_MANAGER as US;
        let keys = |k: &[&str]| replica::keys_hash(k.iter().copied());
        let content =
            |entries: Vec<ManagedFieldsEntry>| Content::from_managed_fields(Some(&entries));
        // (entries, our keys, foreign, immutable)
        type Case<'a> = (&'a str, Vec<ManagedFieldsEntry>, &'a [&'a str], bool, bool);
        let cases: Vec<Case> = vec![
            (
                "as we wrote it",
                vec![managed_entry(US, &["j", "k"], false)],
                &["j", "k"],
                false,
                false,
            ),
            // Our create (an update entry) and a later apply: the union is ours.
            (
                "create then apply",
                vec![
                    managed_entry(US, &["k"], false),
                    managed_entry(US, &["j"], false),
                ],
                &["j", "k"],
                false,
                false,
            ),
            // Someone changed k: it moved to them (seen on a real API server).
            (
                "a key edited",
                vec![
                    managed_entry("kubectl-edit", &["k"], false),
                    managed_entry(US, &["j"], false),
                ],
                &["j"],
                true,
                false,
            ),
            // Someone removed j: it is gone from our set, nobody else gained it.
            (
                "a key removed",
                vec![managed_entry(US, &["k"], false)],
                &["k"],
                false,
                false,
            ),
            (
                "a key added",
                vec![
                    managed_entry(US, &["j", "k"], false),
                    managed_entry("kubectl-patch", &["x"], false),
                ],
                &["j", "k"],
                true,
                false,
            ),
            // Applied with the same value by someone else: shared, not a change.
            (
                "a key co-owned",
                vec![
                    managed_entry(US, &["j", "k"], false),
                    managed_entry("kubectl", &["k"], false),
                ],
                &["j", "k"],
                false,
                false,
            ),
            // Someone else owns `immutable`: its value is unknown (often
            // `false`); not a content change, not known to be immutable.
            (
                "immutable set by someone else",
                vec![
                    managed_entry(US, &["k"], false),
                    managed_entry("other", &[], true),
                ],
                &["k"],
                false,
                false,
            ),
            (
                "immutable as we wrote it",
                vec![managed_entry(US, &["k"], true)],
                &["k"],
                false,
                true,
            ),
            // Managed fields wiped: nothing is known to be ours.
            ("no managed fields", vec![], &[], false, false),
        ];
        for (what, entries, our_keys, foreign, immutable) in cases {
            let c = content(entries);
            assert_eq!(c.our_keys, keys(our_keys), "{what}: our keys");
            assert_eq!(c.foreign, foreign, "{what}: foreign");
            assert_eq!(c.immutable, immutable, "{what}: immutable");
        }
    }
}
