//! What a copy is: rendering a source Secret into the replica we write, the
//! markers that make a replica ours, and the content hash that turns a no-op
//! into no write at all (DESIGN §4).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::kinds::Kind;

/// Label selecting sources in the source namespace.
pub const SOURCE_LABEL_KEY: &str = "push-to-k8s";
pub const SOURCE_LABEL_VALUE: &str = "source";
pub const SOURCE_SELECTOR: &str = "push-to-k8s=source";

/// Label that lets us list our replicas with a selector.
pub const MANAGED_LABEL_KEY: &str = "push-to-k8s.io/managed-by";
pub const MANAGED_LABEL_VALUE: &str = "push-to-k8s";
pub const MANAGED_SELECTOR: &str = "push-to-k8s.io/managed-by=push-to-k8s";
/// `namespace/name` of the source (annotation: object names may exceed 63 chars).
pub const SOURCE_ANNOTATION: &str = "push-to-k8s.io/source";
/// Hash of everything we set, so an unchanged source never becomes a write.
pub const HASH_ANNOTATION: &str = "push-to-k8s.io/content-hash";
/// Prefix of every annotation that steers push-to-k8s (never copied).
pub const CONTROL_PREFIX: &str = "push-to-k8s.io/";
/// Our field manager for server-side apply.
pub const FIELD_MANAGER: &str = "push-to-k8s";

/// Secret types that grant an identity wherever they land, so they are never
/// copied, whatever the annotations say: kube-controller-manager fills a
/// `service-account-token` Secret with a token for the account it names (in
/// every target namespace), and a bootstrap token lets its holder join nodes.
/// Copying them would turn "may write the source namespace" into "may mint
/// credentials everywhere" (docs/security.md).
pub const NEVER_COPIED_TYPES: &[&str] = &[
    "kubernetes.io/service-account-token",
    "bootstrap.kubernetes.io/token",
];

/// Annotation keys (and prefixes) that are never copied: our own controls,
/// kubectl's apply record, and GitOps ownership, so Argo CD or Flux never
/// adopt (and then prune) a copy.
const DROPPED_KEYS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    "app.kubernetes.io/instance",
];
const DROPPED_PREFIXES: &[&str] = &[
    "push-to-k8s.io/",
    "helm.sh/",
    "meta.helm.sh/",
    "argocd.argoproj.io/",
    "kustomize.toolkit.fluxcd.io/",
];

fn is_dropped(key: &str) -> bool {
    key == SOURCE_LABEL_KEY
        || DROPPED_KEYS.contains(&key)
        || DROPPED_PREFIXES.iter().any(|p| key.starts_with(p))
}

fn copied(map: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    map.into_iter()
        .flatten()
        .filter(|(k, _)| !is_dropped(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The desired copy of one source, the same for every target namespace.
#[derive(Clone, PartialEq)]
pub struct Replica {
    pub kind: Kind,
    pub name: String,
    /// A Secret's `type` (empty for a ConfigMap).
    pub type_: String,
    /// Bytes: a Secret's `data`, or a ConfigMap's `binaryData`.
    pub data: BTreeMap<String, ByteString>,
    /// Text: a ConfigMap's `data` (empty for a Secret).
    pub text: BTreeMap<String, String>,
    pub immutable: bool,
    /// Labels and annotations we set, markers included (hash annotation excluded).
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Hash of the data keys only: comparable with the keys our field manager
    /// owns on a copy (see [`crate::records::Content`]).
    pub keys_hash: String,
    /// Hash of everything we set; written into [`HASH_ANNOTATION`].
    pub hash: String,
}

// Never print values: Debug shows names and hashes only.
impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("type", &self.type_)
            .field("keys", &self.keys().collect::<Vec<_>>())
            .field("immutable", &self.immutable)
            .field("hash", &self.hash)
            .finish()
    }
}

impl Replica {
    /// Render the copy of the Secret `source`, which lives in `source_namespace`.
    pub fn render(source: &Secret, source_namespace: &str) -> Replica {
        let content = secret_content(
            &secret_type(source),
            &source.data.clone().unwrap_or_default(),
            source.immutable.unwrap_or(false),
        );
        Replica::build(
            Kind::Secret,
            &source.metadata,
            source_namespace,
            secret_type(source),
            source.data.clone().unwrap_or_default(),
            BTreeMap::new(),
            source.immutable.unwrap_or(false),
            content,
        )
    }

    /// Render the copy of the ConfigMap `source` (`data` and `binaryData`).
    pub fn render_config_map(source: &ConfigMap, source_namespace: &str) -> Replica {
        let text = source.data.clone().unwrap_or_default();
        let binary = source.binary_data.clone().unwrap_or_default();
        let immutable = source.immutable.unwrap_or(false);
        let content = config_map_content(&text, &binary, immutable);
        Replica::build(
            Kind::ConfigMap,
            &source.metadata,
            source_namespace,
            String::new(),
            binary,
            text,
            immutable,
            content,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        kind: Kind,
        meta: &ObjectMeta,
        source_namespace: &str,
        type_: String,
        data: BTreeMap<String, ByteString>,
        text: BTreeMap<String, String>,
        immutable: bool,
        content: String,
    ) -> Replica {
        let name = meta.name.clone().unwrap_or_default();
        let mut labels = copied(meta.labels.as_ref());
        labels.insert(MANAGED_LABEL_KEY.into(), MANAGED_LABEL_VALUE.into());
        let mut annotations = copied(meta.annotations.as_ref());
        annotations.insert(
            SOURCE_ANNOTATION.into(),
            format!("{source_namespace}/{name}"),
        );
        let keys_hash = keys_hash(
            data.keys()
                .map(String::as_str)
                .chain(text.keys().map(String::as_str)),
        );
        let mut h = Sha256::new();
        h.update(b"push-to-k8s/v1\0");
        h.update(content.as_bytes());
        hash_map(&mut h, &labels);
        hash_map(&mut h, &annotations);
        let hash = hex(&h.finalize()[..16]);
        Replica {
            kind,
            name,
            type_,
            data,
            text,
            immutable,
            labels,
            annotations,
            keys_hash,
            hash,
        }
    }

    /// Every content key (a ConfigMap's `data` and `binaryData` together: the
    /// API refuses a key in both).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.data.keys().chain(self.text.keys()).map(String::as_str)
    }

    /// Whether this copy's type is one we never write (see [`NEVER_COPIED_TYPES`]).
    pub fn grants_identity(&self) -> bool {
        self.kind == Kind::Secret && NEVER_COPIED_TYPES.contains(&self.type_.as_str())
    }

    /// The object we send (create, apply, update) into `namespace`, as JSON.
    pub fn to_json(&self, namespace: &str) -> serde_json::Value {
        let value = match self.kind {
            Kind::Secret => serde_json::to_value(self.to_secret(namespace)),
            Kind::ConfigMap => serde_json::to_value(self.to_config_map(namespace)),
        };
        value.expect("a Secret or ConfigMap serialises")
    }

    fn metadata(&self, namespace: &str) -> ObjectMeta {
        let mut annotations = self.annotations.clone();
        annotations.insert(HASH_ANNOTATION.into(), self.hash.clone());
        ObjectMeta {
            name: Some(self.name.clone()),
            namespace: Some(namespace.to_string()),
            labels: Some(self.labels.clone()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }
    }

    /// The ConfigMap copy into `namespace`.
    pub fn to_config_map(&self, namespace: &str) -> ConfigMap {
        ConfigMap {
            metadata: self.metadata(namespace),
            data: Some(self.text.clone()),
            binary_data: Some(self.data.clone()),
            immutable: self.immutable.then_some(true),
        }
    }

    /// The object we send with server-side apply (or create) into `namespace`.
    pub fn to_secret(&self, namespace: &str) -> Secret {
        Secret {
            metadata: self.metadata(namespace),
            type_: Some(self.type_.clone()),
            data: Some(self.data.clone()),
            immutable: self.immutable.then_some(true),
            string_data: None,
        }
    }
}

/// A Secret without a type is `Opaque` on the server; normalise so the two compare equal.
pub fn secret_type(s: &Secret) -> String {
    s.type_
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "Opaque".into())
}

/// The content part of a Secret copy's hash (unchanged since the first
/// release, so an upgrade rewrites no Secret copy).
fn secret_content(type_: &str, data: &BTreeMap<String, ByteString>, immutable: bool) -> String {
    data_hash(type_, data, immutable)
}

/// The content part of a ConfigMap copy's hash: text and binary data kept
/// apart, so moving a key from one to the other is a change.
fn config_map_content(
    text: &BTreeMap<String, String>,
    binary: &BTreeMap<String, ByteString>,
    immutable: bool,
) -> String {
    let mut h = Sha256::new();
    h.update(b"push-to-k8s/configmap/v1\0");
    h.update([u8::from(immutable)]);
    h.update((text.len() as u64).to_le_bytes());
    for (k, v) in text {
        field(&mut h, k.as_bytes());
        field(&mut h, v.as_bytes());
    }
    h.update((binary.len() as u64).to_le_bytes());
    for (k, v) in binary {
        field(&mut h, k.as_bytes());
        field(&mut h, &v.0);
    }
    hex(&h.finalize()[..16])
}

/// Hash of a set of data keys (each counted once, in order).
pub fn keys_hash<'a>(keys: impl IntoIterator<Item = &'a str>) -> String {
    let keys: std::collections::BTreeSet<&str> = keys.into_iter().collect();
    let mut h = Sha256::new();
    h.update(b"push-to-k8s/keys/v1\0");
    for k in keys {
        field(&mut h, k.as_bytes());
    }
    hex(&h.finalize()[..16])
}

/// Hash of the content of a copy (type, data, immutability), part of the
/// content hash. `stringData` is write-only and never read back, so it is not
/// part of it.
pub fn data_hash(type_: &str, data: &BTreeMap<String, ByteString>, immutable: bool) -> String {
    let mut h = Sha256::new();
    h.update(b"push-to-k8s/data/v1\0");
    field(&mut h, type_.as_bytes());
    h.update([u8::from(immutable)]);
    for (k, v) in data {
        field(&mut h, k.as_bytes());
        field(&mut h, &v.0);
    }
    hex(&h.finalize()[..16])
}

// Length-prefixed so that no two different inputs share a byte stream.
fn field(h: &mut Sha256, bytes: &[u8]) {
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

fn hash_map(h: &mut Sha256, map: &BTreeMap<String, String>) {
    h.update((map.len() as u64).to_le_bytes());
    for (k, v) in map {
        field(h, k.as_bytes());
        field(h, v.as_bytes());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Secret {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        Secret {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("src".into()),
                labels: map(labels),
                annotations: map(annotations),
                uid: Some("u-1".into()),
                resource_version: Some("42".into()),
                finalizers: Some(vec!["x/y".into()]),
                ..Default::default()
            },
            type_: Some("kubernetes.io/basic-auth".into()),
            data: Some(BTreeMap::from([(
                "password".to_string(),
                ByteString(b"hunter2".to_vec()),
            )])),
            immutable: None,
            string_data: None,
        }
    }

    #[test]
    fn copies_user_metadata_and_drops_control_and_gitops_keys() {
        let s = source(
            &[
                ("push-to-k8s", "source"),
                ("team", "a"),
                ("app.kubernetes.io/instance", "argo-app"),
                ("helm.sh/chart", "x"),
            ],
            &[
                ("note", "hi"),
                ("push-to-k8s.io/namespaces", "team-*"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
                ("argocd.argoproj.io/tracking-id", "t"),
                ("kustomize.toolkit.fluxcd.io/name", "k"),
                ("meta.helm.sh/release-name", "r"),
            ],
        );
        let r = Replica::render(&s, "src");
        assert_eq!(
            r.labels,
            BTreeMap::from([
                ("team".to_string(), "a".to_string()),
                (
                    MANAGED_LABEL_KEY.to_string(),
                    MANAGED_LABEL_VALUE.to_string()
                ),
            ])
        );
        assert_eq!(
            r.annotations,
            BTreeMap::from([
                ("note".to_string(), "hi".to_string()),
                (SOURCE_ANNOTATION.to_string(), "src/db".to_string()),
            ])
        );
    }

    #[test]
    fn copy_carries_content_and_markers_but_no_identity() {
        let r = Replica::render(&source(&[], &[]), "src");
        let c = r.to_secret("team-a");
        assert_eq!(c.metadata.namespace.as_deref(), Some("team-a"));
        assert_eq!(c.metadata.name.as_deref(), Some("db"));
        assert_eq!(c.type_.as_deref(), Some("kubernetes.io/basic-auth"));
        assert_eq!(c.data, source(&[], &[]).data);
        assert!(c.metadata.uid.is_none());
        assert!(c.metadata.resource_version.is_none());
        assert!(c.metadata.finalizers.is_none());
        assert!(c.metadata.owner_references.is_none());
        assert_eq!(c.immutable, None);
        let ann = c.metadata.annotations.unwrap();
        assert_eq!(ann[HASH_ANNOTATION], r.hash);
        assert_eq!(ann[SOURCE_ANNOTATION], "src/db");
    }

    #[test]
    fn hash_changes_with_every_field_we_set_and_only_those() {
        let base = source(&[], &[]);
        let h = |s: &Secret| Replica::render(s, "src").hash;
        let mut same = base.clone();
        same.metadata.resource_version = Some("43".into());
        same.metadata.uid = Some("other".into());
        same.metadata.labels = Some(BTreeMap::from([(
            "push-to-k8s".to_string(),
            "source".to_string(),
        )]));
        assert_eq!(
            h(&base),
            h(&same),
            "identity and the source label are not content"
        );

        let mut variants = Vec::new();
        let mut v = base.clone();
        v.data
            .as_mut()
            .unwrap()
            .insert("k2".into(), ByteString(vec![]));
        variants.push(v);
        let mut v = base.clone();
        v.type_ = Some("Opaque".into());
        variants.push(v);
        let mut v = base.clone();
        v.immutable = Some(true);
        variants.push(v);
        let mut v = base.clone();
        v.metadata.labels = Some(BTreeMap::from([("l".to_string(), "1".to_string())]));
        variants.push(v);
        let mut v = base.clone();
        v.metadata.annotations = Some(BTreeMap::from([("a".to_string(), "1".to_string())]));
        variants.push(v);
        for v in &variants {
            assert_ne!(h(&base), h(v), "{v:?}");
        }
        // Different namespace of origin, different marker, different hash.
        assert_ne!(h(&base), Replica::render(&base, "other").hash);
    }

    #[test]
    fn data_hash_is_unambiguous_and_defaults_type() {
        let a = BTreeMap::from([("ab".to_string(), ByteString(b"c".to_vec()))]);
        let b = BTreeMap::from([("a".to_string(), ByteString(b"bc".to_vec()))]);
        assert_ne!(
            data_hash("Opaque", &a, false),
            data_hash("Opaque", &b, false)
        );
        let mut s = source(&[], &[]);
        s.type_ = None;
        assert_eq!(secret_type(&s), "Opaque");
        s.type_ = Some(String::new());
        assert_eq!(secret_type(&s), "Opaque");
    }

    #[test]
    fn debug_output_never_shows_values() {
        let r = Replica::render(&source(&[], &[]), "src");
        let text = format!("{r:?}");
        assert!(text.contains("password"));
        assert!(!text.contains("hunter2"));
    }
}
