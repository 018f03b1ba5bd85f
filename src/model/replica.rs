//! What a copy is: rendering a source Secret into the replica we write, the
//! markers that make a replica ours, and the content hash that turns a no-op
//! into no write at all (DESIGN §4).

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::model::kinds::Kind;
use crate::model::rules::KeyFilter;
use crate::model::vocabulary::{
    COPY_NAME_ANNOTATION, HASH_ANNOTATION, MANAGED_LABEL_KEY, MANAGED_LABEL_VALUE, RULE_ANNOTATION,
    SOURCE_ANNOTATION, SOURCE_LABEL_KEY, SOURCE_NAME_LABEL, SOURCE_NAMESPACE_LABEL,
};

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
    crate::model::vocabulary::CONTROL_PREFIX,
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
    /// The copy's name: the source's, or the one it asks for by
    /// [`COPY_NAME_ANNOTATION`].
    pub name: String,
    /// The source's own name.
    pub source: String,
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
    /// owns on a copy (see [`crate::model::records::Content`]).
    pub keys_hash: ShortHash,
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

/// What a copy holds, by kind, before the markers are added.
struct Body {
    kind: Kind,
    /// A Secret's `type` (empty for a ConfigMap).
    type_: String,
    /// A Secret's `data`, a ConfigMap's `binaryData`.
    data: BTreeMap<String, ByteString>,
    /// A ConfigMap's `data`.
    text: BTreeMap<String, String>,
    immutable: bool,
    /// The hashed form of the content ([`secret_content`], [`config_map_content`]).
    content: String,
}

impl Replica {
    /// Render the copy of the Secret `source`, which lives in `source_namespace`.
    /// Only the data keys its key filter keeps are copied.
    pub fn render(source: &Secret, source_namespace: &str) -> Replica {
        let filter = key_filter(&source.metadata);
        let data = selected(filter.as_ref(), source.data.as_ref());
        let immutable = source.immutable.unwrap_or(false);
        let content = secret_content(&secret_type(source), &data, immutable);
        Replica::build(
            &source.metadata,
            source_namespace,
            Body {
                kind: Kind::Secret,
                type_: secret_type(source),
                data,
                text: BTreeMap::new(),
                immutable,
                content,
            },
        )
    }

    /// Render the copy of the ConfigMap `source` (`data` and `binaryData`,
    /// both narrowed by its key filter).
    pub fn render_config_map(source: &ConfigMap, source_namespace: &str) -> Replica {
        let filter = key_filter(&source.metadata);
        let text = selected(filter.as_ref(), source.data.as_ref());
        let binary = selected(filter.as_ref(), source.binary_data.as_ref());
        let immutable = source.immutable.unwrap_or(false);
        let content = config_map_content(&text, &binary, immutable);
        Replica::build(
            &source.metadata,
            source_namespace,
            Body {
                kind: Kind::ConfigMap,
                type_: String::new(),
                data: binary,
                text,
                immutable,
                content,
            },
        )
    }

    fn build(meta: &ObjectMeta, source_namespace: &str, body: Body) -> Replica {
        let Body {
            kind,
            type_,
            data,
            text,
            immutable,
            content,
        } = body;
        let source = meta.name.clone().unwrap_or_default();
        let name = copy_name(meta);
        let mut labels = copied(meta.labels.as_ref());
        labels.insert(MANAGED_LABEL_KEY.into(), MANAGED_LABEL_VALUE.into());
        labels.insert(SOURCE_NAME_LABEL.into(), discovery_value(&source));
        labels.insert(
            SOURCE_NAMESPACE_LABEL.into(),
            discovery_value(source_namespace),
        );
        let mut annotations = copied(meta.annotations.as_ref());
        annotations.insert(
            SOURCE_ANNOTATION.into(),
            format!("{source_namespace}/{source}"),
        );
        if name != source {
            annotations.insert(COPY_NAME_ANNOTATION.into(), name.clone());
        }
        // A rule's copy names its rule (its other control annotations are not copied).
        if let Some(rule) = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(RULE_ANNOTATION))
        {
            annotations.insert(RULE_ANNOTATION.into(), rule.clone());
        }
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
            source,
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

/// The name the copies of the source with `meta` get: the value of its
/// [`COPY_NAME_ANNOTATION`] if it has one, else its own name. (Whether that
/// is a valid object name is the planner's check: `plan::rules`.)
pub fn copy_name(meta: &ObjectMeta) -> String {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(COPY_NAME_ANNOTATION))
        .filter(|n| !n.is_empty())
        .or(meta.name.as_ref())
        .cloned()
        .unwrap_or_default()
}

/// The key filter of the source with `meta` ([`KeyFilter`]); `None` if it
/// does not parse.
fn key_filter(meta: &ObjectMeta) -> Option<KeyFilter> {
    match &meta.annotations {
        Some(annotations) => KeyFilter::parse(annotations).ok(),
        None => Some(KeyFilter::default()),
    }
}

/// The entries of `all` whose keys `filter` keeps. With no filter (it does
/// not parse) nothing is kept: such a source is refused by the planner
/// (`plan::rules`) and never written, and should its annotation change
/// between planning and writing, no key it meant to leave out can reach a
/// namespace.
fn selected<V: Clone>(
    filter: Option<&KeyFilter>,
    all: Option<&BTreeMap<String, V>>,
) -> BTreeMap<String, V> {
    all.into_iter()
        .flatten()
        .filter(|(k, _)| filter.is_some_and(|f| f.keeps(k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The value of a discovery label ([`SOURCE_NAME_LABEL`],
/// [`SOURCE_NAMESPACE_LABEL`]) for `name`: the name itself when it is a valid
/// label value, else `h_` and the first 20 hex digits of its SHA-256
/// (`printf %s NAME | sha256sum | cut -c1-20`). A Secret, ConfigMap or
/// namespace name never contains `_`, so a hash never equals a real name;
/// names longer than 63 characters are the case this is for.
pub fn discovery_value(name: &str) -> String {
    if !name.is_empty() && crate::model::names::label_value(name).is_ok() {
        return name.to_string();
    }
    let digest = Sha256::digest(name.as_bytes());
    format!("h_{}", &hex(&digest[..10]))
}

/// A Secret without a type is `Opaque` on the server; normalise so the two compare equal.
pub fn secret_type(s: &Secret) -> String {
    s.type_
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "Opaque".into())
}

/// The content part of a Secret copy's hash (of the selected keys; the
/// same function since the first release, so a source without a key filter
/// hashes its content as before).
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

/// Hash of a set of data keys (each counted once, in order). Only ever
/// compared in memory (with [`crate::model::records::Content::our_keys`]), never
/// written.
pub fn keys_hash<'a>(keys: impl IntoIterator<Item = &'a str>) -> ShortHash {
    let keys: std::collections::BTreeSet<&str> = keys.into_iter().collect();
    let mut h = Sha256::new();
    h.update(b"push-to-k8s/keys/v1\0");
    for k in keys {
        field(&mut h, k.as_bytes());
    }
    ShortHash::of(&h.finalize())
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

/// One of our hashes (the first 16 bytes of a SHA-256) as bytes: what a
/// cached copy keeps of its content-hash annotation and of the data keys our
/// field manager owns, 16 bytes in place of a 32-digit hex `String` (24
/// bytes inline and a 48-byte heap block, at 100,000 copies twice over).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShortHash([u8; 16]);

impl ShortHash {
    /// The first 16 bytes of `digest`.
    fn of(digest: &[u8]) -> ShortHash {
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&digest[..16]);
        ShortHash(bytes)
    }

    /// A hash exactly as we write it: 32 lowercase hex digits. Anything else
    /// (an annotation someone edited, upper case included) is `None`, which
    /// equals no real hash.
    pub fn parse(hex: &str) -> Option<ShortHash> {
        lower_hex(hex.as_bytes()).map(ShortHash)
    }

    /// Whether `hex` is this hash as we write it.
    pub fn is(&self, hex: &str) -> bool {
        ShortHash::parse(hex) == Some(*self)
    }
}

impl std::fmt::Display for ShortHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for ShortHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShortHash({self})")
    }
}

/// The `N` bytes that `2 × N` lowercase hex digits spell; `None` for any
/// other length or character (upper case included, so that decoding and
/// [`hex`] are inverse: a string decodes only if it is the one encoding).
pub fn lower_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vocabulary::SOURCE_LABEL_VALUE;

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
                // A source cannot set our discovery labels for its copies.
                (SOURCE_NAME_LABEL, "someone-else"),
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
                (SOURCE_NAME_LABEL.to_string(), "db".to_string()),
                (SOURCE_NAMESPACE_LABEL.to_string(), "src".to_string()),
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

    fn bytes(keys: &[&str]) -> Option<BTreeMap<String, ByteString>> {
        Some(
            keys.iter()
                .map(|k| {
                    (
                        k.to_string(),
                        ByteString(format!("value of {k}").into_bytes()),
                    )
                })
                .collect(),
        )
    }

    fn with_data(mut s: Secret, keys: &[&str]) -> Secret {
        s.data = bytes(keys);
        s
    }

    const ALL_KEYS: &[&str] = &["tls.crt", "tls.key", "ca.crt", "password", "DB_URL"];

    #[test]
    fn key_filter_selects_secret_keys() {
        use crate::model::vocabulary::{
            EXCLUDE_KEYS_ANNOTATION as EX, INCLUDE_KEYS_ANNOTATION as IN,
        };
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            ("no filter", &[], ALL_KEYS),
            ("names", &[(IN, "password,DB_URL")], &["DB_URL", "password"]),
            ("glob", &[(IN, "tls.*")], &["tls.crt", "tls.key"]),
            ("suffix glob", &[(IN, "*.crt")], &["ca.crt", "tls.crt"]),
            (
                "exclusions",
                &[(EX, "*.key, password")],
                &["DB_URL", "ca.crt", "tls.crt"],
            ),
            (
                "exclusions win",
                &[(IN, "tls.*,*.crt"), (EX, "tls.key,ca.*")],
                &["tls.crt"],
            ),
            ("nothing matches", &[(IN, "absent")], &[]),
        ];
        for (what, annotations, want) in cases {
            let s = with_data(source(&[], annotations), ALL_KEYS);
            let r = Replica::render(&s, "src");
            let want: BTreeMap<String, ByteString> = bytes(want).unwrap();
            assert_eq!(r.data, want, "{what}");
            assert!(r.text.is_empty(), "{what}");
            assert_eq!(r.keys_hash, keys_hash(want.keys().map(String::as_str)));
            assert_eq!(r.to_secret("team-a").data, Some(want.clone()), "{what}");
            // The same content rendered without a filter: same hash. The
            // filter annotation is ours, not part of the copy.
            let plain = Replica::render(
                &with_data(source(&[], &[]), &r.keys().collect::<Vec<_>>()),
                "src",
            );
            assert_eq!(r.hash, plain.hash, "{what}");
        }
    }

    #[test]
    fn key_filter_selects_config_map_data_and_binary_data() {
        use crate::model::vocabulary::{
            EXCLUDE_KEYS_ANNOTATION as EX, INCLUDE_KEYS_ANNOTATION as IN,
        };
        let config_map = |annotations: &[(&str, &str)]| ConfigMap {
            metadata: source(&[], annotations).metadata,
            data: Some(BTreeMap::from([
                ("app.yaml".to_string(), "a: 1".to_string()),
                ("app.env".to_string(), "A=1".to_string()),
                ("README".to_string(), "docs".to_string()),
            ])),
            binary_data: bytes(&["ca.crt", "logo.png"]),
            immutable: None,
        };
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[],
                &["README", "app.env", "app.yaml"],
                &["ca.crt", "logo.png"],
            ),
            (&[(IN, "app.*")], &["app.env", "app.yaml"], &[]),
            (&[(IN, "*.crt,README")], &["README"], &["ca.crt"]),
            (
                &[(EX, "*.png,app.env")],
                &["README", "app.yaml"],
                &["ca.crt"],
            ),
            (
                &[(IN, "app.*,*.png"), (EX, "*.yaml,logo.*")],
                &["app.env"],
                &[],
            ),
        ];
        for (annotations, text, binary) in cases {
            let r = Replica::render_config_map(&config_map(annotations), "src");
            assert_eq!(
                r.text.keys().collect::<Vec<_>>(),
                *text,
                "{annotations:?}: data"
            );
            assert_eq!(
                r.data.keys().collect::<Vec<_>>(),
                *binary,
                "{annotations:?}: binaryData"
            );
            let c = r.to_config_map("team-a");
            assert_eq!(c.data.unwrap().len(), text.len());
            assert_eq!(c.binary_data.unwrap().len(), binary.len());
            assert_eq!(r.keys_hash, keys_hash(text.iter().chain(*binary).copied()));
        }
    }

    #[test]
    fn a_short_hash_reads_back_exactly_what_we_write() {
        let r = Replica::render(&source(&[], &[]), "src");
        let h = ShortHash::parse(&r.hash).expect("our own hash");
        assert_eq!(h.to_string(), r.hash);
        assert!(h.is(&r.hash));
        assert!(!h.is(&r.hash.to_uppercase()));
        assert_eq!(ShortHash::parse(&r.hash.to_uppercase()), None);
        assert_eq!(ShortHash::parse(&r.hash[1..]), None);
        assert_eq!(ShortHash::parse(&format!("{}0", r.hash)), None);
        assert_eq!(ShortHash::parse(""), None);
        assert_eq!(lower_hex::<2>(b"0aff"), Some([0x0a, 0xff]));
        assert_eq!(lower_hex::<2>(b"0aFf"), None);
        assert_eq!(lower_hex::<2>(b"0ag0"), None);
        assert_eq!(r.keys_hash.to_string().len(), 32);
    }

    #[test]
    fn changing_the_key_filter_changes_the_copy_and_its_hash() {
        use crate::model::vocabulary::{
            EXCLUDE_KEYS_ANNOTATION as EX, INCLUDE_KEYS_ANNOTATION as IN,
        };
        let render = |annotations: &[(&str, &str)]| {
            Replica::render(&with_data(source(&[], annotations), ALL_KEYS), "src")
        };
        let all = render(&[]);
        // Keeping every key is no change at all (no write after adding it).
        assert_eq!(all.hash, render(&[(IN, "*")]).hash);
        assert_eq!(all.hash, render(&[(EX, "nothing-like-this")]).hash);
        let fewer = render(&[(EX, "tls.key")]);
        assert_ne!(all.hash, fewer.hash);
        assert_ne!(all.keys_hash, fewer.keys_hash);
        assert_ne!(fewer.hash, render(&[(IN, "tls.*")]).hash);
    }

    #[test]
    fn a_key_glob_that_does_not_parse_refuses_the_source() {
        use crate::decide::plan::{Refusal, refusal};
        use crate::model::records::SourceRecord;
        use crate::model::rules::{AnnotationError, KeyEntryProblem};
        use crate::model::vocabulary::{
            EXCLUDE_KEYS_ANNOTATION as EX, INCLUDE_KEYS_ANNOTATION as IN,
        };
        for (key, label) in [(IN, "include_keys"), (EX, "exclude_keys")] {
            let mut s = with_data(source(&[], &[(key, "tls.*, tls.[ck]ey")]), ALL_KEYS);
            s.metadata.labels = Some(BTreeMap::from([(
                SOURCE_LABEL_KEY.to_string(),
                SOURCE_LABEL_VALUE.to_string(),
            )]));
            let (_, rec) = SourceRecord::from_secret(&s, "src").unwrap();
            let refused = refusal(&rec).expect("refused");
            assert_eq!(
                refused,
                Refusal::Annotation(AnnotationError::KeyEntry {
                    key,
                    entry: "tls.[ck]ey".into(),
                    problem: KeyEntryProblem::InvalidChar,
                })
            );
            assert_eq!(refused.metric_label(), label);
            assert_eq!(refused.reason(), "InvalidAnnotation");
            // Never written; and were it written, no key could leak.
            assert_eq!(rec.replica.keys().count(), 0, "{key}");
            // Fixed: no longer refused.
            s.metadata
                .annotations
                .as_mut()
                .unwrap()
                .insert(key.into(), "tls.*".into());
            let (_, rec) = SourceRecord::from_secret(&s, "src").unwrap();
            assert_eq!(refusal(&rec), None);
        }
    }

    #[test]
    fn discovery_label_values() {
        let name63 = "n".repeat(63);
        let name64 = "n".repeat(64);
        let name70 = "very-long-".repeat(7);
        let name253 = format!("{}.b", "a".repeat(251));
        // (name, the label value; None: a hash)
        let cases: &[(&str, Option<&str>)] = &[
            ("db", Some("db")),
            ("tls.example.com", Some("tls.example.com")),
            (&name63, Some(&name63)),
            (&name64, None),
            (&name70, Some("h_2b69b238fcea61185465")),
            (&name253, None),
        ];
        for (name, want) in cases {
            let value = discovery_value(name);
            crate::model::names::label_value(&value).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(value, discovery_value(name), "stable");
            match want {
                Some(want) => assert_eq!(value, *want, "{name}"),
                None => {
                    assert!(value.starts_with("h_"), "{value}");
                    assert_eq!(value.len(), 22, "{value}");
                }
            }
        }
        // Long names that share a prefix get different values.
        assert_ne!(discovery_value(&name64), discovery_value(&"n".repeat(65)));
        // The hash (pinned above) is `printf %s NAME | sha256sum | cut -c1-20`,
        // as the README says.
        let digest = Sha256::digest(name70.as_bytes());
        assert_eq!(
            discovery_value(&name70),
            format!("h_{}", &hex(&digest)[..20])
        );
    }

    #[test]
    fn copies_carry_discovery_labels_but_never_the_source_label() {
        let name70 = "very-long-".repeat(7);
        let mut s = source(
            &[(SOURCE_LABEL_KEY, SOURCE_LABEL_VALUE), ("team", "a")],
            &[],
        );
        for (name, ns, want_name) in [
            ("db", "src", "db"),
            (name70.as_str(), "src", "h_2b69b238fcea61185465"),
        ] {
            s.metadata.name = Some(name.into());
            let r = Replica::render(&s, ns);
            let labels = r.to_secret("team-a").metadata.labels.unwrap();
            assert_eq!(
                labels.get(SOURCE_NAME_LABEL).map(String::as_str),
                Some(want_name)
            );
            assert_eq!(
                labels.get(SOURCE_NAMESPACE_LABEL).map(String::as_str),
                Some(ns)
            );
            assert_eq!(labels[MANAGED_LABEL_KEY], MANAGED_LABEL_VALUE);
            assert_eq!(labels["team"], "a");
            assert!(!labels.contains_key(SOURCE_LABEL_KEY), "{labels:?}");
            assert_eq!(r.annotations[SOURCE_ANNOTATION], format!("{ns}/{name}"));
            let c = ConfigMap {
                metadata: s.metadata.clone(),
                ..Default::default()
            };
            let cm = Replica::render_config_map(&c, ns);
            assert_eq!(cm.labels, r.labels, "the same labels for a ConfigMap");
        }
        // The labels are part of what we set: another source namespace,
        // another label, another hash.
        s.metadata.name = Some("db".into());
        assert_ne!(
            Replica::render(&s, "src").hash,
            Replica::render(&s, "src2").hash
        );
    }

    #[test]
    fn debug_output_never_shows_values() {
        let r = Replica::render(&source(&[], &[]), "src");
        let text = format!("{r:?}");
        assert!(text.contains("password"));
        assert!(!text.contains("hunter2"));
    }
}
