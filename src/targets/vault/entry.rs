//! Pure rules of the Vault target (no I/O): what a source asks for by
//! annotation, the KV entry it should have, whose an entry is (its custom
//! metadata), and what to do about one. `vault/target.rs` does the requests.
//!
//! The ownership rules mirror those of a copy in a namespace
//! (docs/architecture.md, "Ownership"; docs/vault.md):
//! - an entry is ours only if its KV custom metadata says `managed-by:
//!   push-to-k8s`, names this source (`source: <namespace>/<name>`,
//!   `source-kind`) and this cluster (`source-cluster`: `CLUSTER_NAME`, or
//!   the source namespace's uid, as on copies in remote clusters);
//! - anything else at the path is a conflict: never written, never deleted,
//!   unless the source asks for adoption and the controller allows it (never
//!   another source's or another cluster's);
//! - every data write is a check-and-set against the version we saw;
//! - a create marks the entry `pending` (its metadata, before any data), so a
//!   create cut short is recognised as ours by that mark, never by its values.

use std::collections::BTreeMap;
use std::fmt;

use sha2::{Digest, Sha256};

use crate::decide::adoption;
use crate::model::kinds::Kind;
use crate::model::records::SourceRecord;
use crate::model::vocabulary::{
    KEY_PREFIX_ANNOTATION, META_CLUSTER, META_HASH, META_MANAGED_BY, META_PENDING, META_SOURCE,
    META_SOURCE_KIND, META_VERSION, PATH_ANNOTATION, PRESERVE_ANNOTATION,
};

/// Longest path we accept (Vault has no small limit; this keeps Events short).
const MAX_PATH_LEN: usize = 512;
/// Longest key prefix (keys stay within Kubernetes' 253-character key rule).
const MAX_PREFIX_LEN: usize = 128;

/// What a source asks of Vault by annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub path: String,
    pub prefix: String,
    pub preserve: bool,
}

/// Why a source's Vault annotations or data cannot be written. The source's
/// namespace copies are not affected; its Vault entry is left as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    Path(String),
    Prefix(String),
    Preserve(String),
    /// A data value that is not UTF-8 text (KV v2 holds JSON strings). Names
    /// the key, never the value.
    NotText(String),
    /// A workload's path outside every prefix the rules allow it
    /// (`crate::targets::workloads`): the path and the prefixes.
    OutsidePrefix(String, String),
    /// A workload's `vault-sync.io/*` annotation that cannot be read: which
    /// one, and why.
    Workload(&'static str, String),
}

impl Invalid {
    /// Bounded label for the `invalid_annotations` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Invalid::Path(_) => "vault-path",
            Invalid::Prefix(_) => "vault-key-prefix",
            Invalid::Preserve(_) => "vault-preserve-on-delete",
            Invalid::NotText(_) => "vault-value-not-text",
            Invalid::OutsidePrefix(..) => "vault-path-outside-prefix",
            Invalid::Workload(..) => "vault-sync-workload",
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Path(reason) => write!(f, "annotation {PATH_ANNOTATION}: {reason}"),
            Invalid::Prefix(reason) => write!(f, "annotation {KEY_PREFIX_ANNOTATION}: {reason}"),
            Invalid::Preserve(value) => write!(
                f,
                "annotation {PRESERVE_ANNOTATION}: {value:?} is not \"true\" or \"false\""
            ),
            Invalid::NotText(key) => write!(
                f,
                "data key {key:?} is not UTF-8 text, which a Vault KV entry cannot hold as a string; nothing was written to Vault"
            ),
            Invalid::OutsidePrefix(path, prefixes) => write!(
                f,
                "Vault path {path:?} is outside what the PushRules allow this namespace ({prefixes}); nothing was written to Vault"
            ),
            Invalid::Workload(annotation, reason) => {
                write!(
                    f,
                    "annotation {annotation}: {reason}; nothing was written to Vault"
                )
            }
        }
    }
}

/// A KV path inside the mount ([`crate::targets::vault::client::valid_path`]), at
/// most [`MAX_PATH_LEN`] characters.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.len() > MAX_PATH_LEN {
        return Err(format!("must be at most {MAX_PATH_LEN} characters"));
    }
    crate::targets::vault::client::valid_path(path)
}

impl Spec {
    /// `None`: the source has no Vault path (the Vault target leaves it be).
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Option<Spec>, Invalid> {
        let Some(path) = annotations.get(PATH_ANNOTATION) else {
            return Ok(None);
        };
        let path = path.trim();
        check_path(path).map_err(Invalid::Path)?;
        let prefix = annotations
            .get(KEY_PREFIX_ANNOTATION)
            .map_or("", |p| p.trim());
        if prefix.len() > MAX_PREFIX_LEN
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(Invalid::Prefix(format!(
                "must be at most {MAX_PREFIX_LEN} letters, digits, '.', '_' and '-'"
            )));
        }
        let preserve = match annotations.get(PRESERVE_ANNOTATION).map(|v| v.trim()) {
            None | Some("") => false,
            Some(v) if v.eq_ignore_ascii_case("true") => true,
            Some(v) if v.eq_ignore_ascii_case("false") => false,
            Some(v) => return Err(Invalid::Preserve(v.to_owned())),
        };
        Ok(Some(Spec {
            path: path.to_owned(),
            prefix: prefix.to_owned(),
            preserve,
        }))
    }
}

/// Who a source is, as entries name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceId {
    pub kind: Kind,
    pub name: String,
}

/// What an entry's custom metadata names as its source: a labelled source
/// ([`SourceId`], in the source namespace) or a workload that pushes the
/// Secrets it references (`crate::targets::workloads`).
pub trait Names {
    /// `namespace/name` of the object that owns the entry.
    fn source(&self, us: Us<'_>) -> String;
    /// Its kind (`Secret`, `ConfigMap`, `Deployment`).
    fn kind(&self) -> &str;
}

impl Names for SourceId {
    fn source(&self, us: Us<'_>) -> String {
        format!("{}/{}", us.namespace, self.name)
    }
    fn kind(&self) -> &str {
        self.kind.name()
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// The entry a source should have.
#[derive(Clone, PartialEq, Eq)]
pub struct Desired {
    pub path: String,
    /// Key (prefixed) to value: what the entry's data must be.
    pub data: BTreeMap<String, String>,
    /// [`content_hash`] of `data`.
    pub hash: String,
    pub preserve: bool,
    /// The source asks for adoption (`push-to-k8s.io/adopt`) and the
    /// controller allows it (`ALLOW_ADOPTION`).
    pub adopt: bool,
}

// Never print values.
impl fmt::Debug for Desired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Desired")
            .field("path", &self.path)
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("hash", &self.hash)
            .field("preserve", &self.preserve)
            .field("adopt", &self.adopt)
            .finish()
    }
}

/// The entry `source` asks for: `Ok(None)` without a Vault path. Its keys
/// are the copy's (the key filter applied), with the prefix in front.
pub fn desired(source: &SourceRecord, allow_adoption: bool) -> Result<Option<Desired>, Invalid> {
    let Some(spec) = Spec::parse(&source.annotations)? else {
        return Ok(None);
    };
    let replica = &source.replica;
    let mut data = BTreeMap::new();
    for (key, value) in &replica.data {
        let text = std::str::from_utf8(&value.0).map_err(|_| Invalid::NotText(key.clone()))?;
        data.insert(format!("{}{key}", spec.prefix), text.to_owned());
    }
    for (key, text) in &replica.text {
        data.insert(format!("{}{key}", spec.prefix), text.clone());
    }
    Ok(Some(Desired {
        hash: content_hash(&data),
        path: spec.path,
        data,
        preserve: spec.preserve,
        adopt: allow_adoption && adoption::asked(&source.annotations).unwrap_or(false),
    }))
}

/// SHA-256 over the keys and values, each length-prefixed (so no two maps
/// hash alike by moving a separator), hex.
pub fn content_hash(data: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in data {
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Who we are, as entries name us: the source namespace and the cluster
/// stamp.
#[derive(Clone, Copy, Debug)]
pub struct Us<'a> {
    pub namespace: &'a str,
    pub cluster: &'a str,
}

/// The custom metadata naming us and `source`, without content.
fn ours(us: Us<'_>, source: &impl Names) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            META_MANAGED_BY.into(),
            crate::model::vocabulary::MANAGED_LABEL_VALUE.into(),
        ),
        (META_SOURCE.into(), source.source(us)),
        (META_SOURCE_KIND.into(), source.kind().into()),
        (META_CLUSTER.into(), us.cluster.into()),
    ])
}

/// The custom metadata of an entry we wrote at `version`.
pub fn custom_metadata(
    us: Us<'_>,
    source: &impl Names,
    hash: &str,
    version: u64,
) -> BTreeMap<String, String> {
    let mut custom = ours(us, source);
    custom.insert(META_HASH.into(), hash.into());
    custom.insert(META_VERSION.into(), version.to_string());
    custom
}

/// The custom metadata written before a create's data: ours, and the hash of
/// the data about to be written.
pub fn pending_metadata(us: Us<'_>, source: &impl Names, hash: &str) -> BTreeMap<String, String> {
    let mut custom = ours(us, source);
    custom.insert(META_PENDING.into(), hash.into());
    custom
}

/// An entry as its metadata shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub current_version: u64,
    pub custom: BTreeMap<String, String>,
    /// The current version is deleted or destroyed (or there is none).
    pub current_deleted: bool,
}

/// Whose an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Ours, for this source.
    Ours,
    /// push-to-k8s's, for another source (or another source namespace).
    OtherSource(String),
    /// push-to-k8s's, stamped by another cluster (named).
    OtherCluster(String),
    /// push-to-k8s's metadata for this source but no cluster stamp: written
    /// by a version before the stamp, or by anyone who copied our metadata.
    /// Whose it is cannot be told: only an explicit adoption takes it.
    Unstamped,
    /// Our create that did not finish (our `pending` mark), but the data
    /// there is not what we were about to write, or was written over since.
    Unfinished,
    /// Not written by push-to-k8s (no custom metadata saying so).
    Foreign,
}

impl Owner {
    /// For a `VaultConflict` Event and `status`: "... was {whose}".
    pub fn whose(&self) -> String {
        match self {
            Owner::Ours => "written by us".into(),
            Owner::OtherSource(other) => format!("written by push-to-k8s for {other}"),
            Owner::OtherCluster(cluster) => {
                format!("written by push-to-k8s of another cluster ({cluster})")
            }
            Owner::Unstamped => {
                "written by push-to-k8s for this source but without a cluster stamp (an earlier version, or another cluster)".into()
            }
            Owner::Unfinished => {
                "marked as our create in progress, but holds data we did not write".into()
            }
            Owner::Foreign => "not written by push-to-k8s".into(),
        }
    }
}

pub fn owner(custom: &BTreeMap<String, String>, us: Us<'_>, source: &impl Names) -> Owner {
    if custom.get(META_MANAGED_BY).map(String::as_str)
        != Some(crate::model::vocabulary::MANAGED_LABEL_VALUE)
    {
        return Owner::Foreign;
    }
    let stamp = custom.get(META_CLUSTER);
    if let Some(cluster) = stamp
        && cluster != us.cluster
    {
        return Owner::OtherCluster(cluster.clone());
    }
    let named = custom.get(META_SOURCE).cloned().unwrap_or_default();
    let kind = custom.get(META_SOURCE_KIND).map(String::as_str);
    if named != source.source(us) || kind != Some(source.kind()) {
        return Owner::OtherSource(format!("{} {named}", kind.unwrap_or("?")));
    }
    if stamp.is_none() {
        Owner::Unstamped
    } else {
        Owner::Ours
    }
}

/// What to do about one source's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// In sync.
    Nothing,
    /// No data of ours yet (no entry, or our `pending` mark without data):
    /// mark it pending, write the data (`cas` 0: only if still none), then
    /// our metadata.
    Create,
    /// Ours and out of date, edited or deleted in Vault: write it again,
    /// check-and-set against the version seen.
    Write { cas: u64 },
    /// Not ours (someone's, or unstamped), and the source asks for adoption
    /// (allowed): write it and mark it ours, check-and-set against the
    /// version seen.
    Adopt { cas: u64 },
    /// Not ours: leave it byte-identical and report.
    Conflict { owner: Owner },
    /// Our create cut short after its data write perhaps (our `pending` mark,
    /// version 1): read the data; only if it is what the mark says we were
    /// about to write is it ours.
    Verify { cas: u64, pending: String },
}

/// The `pending` mark of an entry of ours, if it has one.
pub fn pending(obs: &Observed) -> Option<&str> {
    obs.custom.get(META_PENDING).map(String::as_str)
}

/// The step for `desired` given the entry as observed (`None`: no entry).
pub fn step(
    desired: &Desired,
    observed: Option<&Observed>,
    us: Us<'_>,
    source: &impl Names,
) -> Step {
    let Some(obs) = observed else {
        return Step::Create;
    };
    match owner(&obs.custom, us, source) {
        Owner::Ours => match pending(obs) {
            // Marked, no data written yet (by anyone).
            Some(_) if obs.current_version == 0 => Step::Create,
            // Our data write may have happened: version 1 is the one it made.
            Some(hash) if obs.current_version == 1 && !obs.current_deleted => Step::Verify {
                cas: 1,
                pending: hash.to_owned(),
            },
            Some(_) if desired.adopt => Step::Adopt {
                cas: obs.current_version,
            },
            Some(_) => Step::Conflict {
                owner: Owner::Unfinished,
            },
            None => {
                let in_sync = !obs.current_deleted
                    && obs.custom.get(META_VERSION) == Some(&obs.current_version.to_string())
                    && obs.custom.get(META_HASH) == Some(&desired.hash);
                if in_sync {
                    Step::Nothing
                } else {
                    Step::Write {
                        cas: obs.current_version,
                    }
                }
            }
        },
        // Never another source's or another cluster's (two owners would
        // fight over it). Equal values prove nothing: an entry without our
        // metadata is someone's, whatever it holds.
        Owner::Foreign | Owner::Unstamped if desired.adopt => Step::Adopt {
            cas: obs.current_version,
        },
        owner => Step::Conflict { owner },
    }
}

/// May the entry observed be deleted for `source`? Only ours, and of a
/// create cut short only what holds no data yet (with data, the caller
/// reads it: [`Deletable::IfData`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletable {
    Yes,
    No,
    /// Ours if its data (version 1) hashes to this (our `pending` mark).
    IfData(String),
}

pub fn deletable(obs: &Observed, us: Us<'_>, source: &impl Names) -> Deletable {
    if owner(&obs.custom, us, source) != Owner::Ours {
        return Deletable::No;
    }
    match pending(obs) {
        None => Deletable::Yes,
        Some(_) if obs.current_version == 0 => Deletable::Yes,
        Some(hash) if obs.current_version == 1 && !obs.current_deleted => {
            Deletable::IfData(hash.to_owned())
        }
        Some(_) => Deletable::No,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;

    /// Source `src/db`, labelled, with these annotations and data.
    pub(crate) fn secret(annotations: &[(&str, &str)], data: &[(&str, &[u8])]) -> Secret {
        crate::fixtures::labelled_secret("src", "db", annotations, data)
    }

    fn source(annotations: &[(&str, &str)], data: &[(&str, &[u8])]) -> SourceRecord {
        SourceRecord::from_secret(&secret(annotations, data), "src")
            .unwrap()
            .1
    }

    pub(crate) fn id() -> SourceId {
        SourceId {
            kind: Kind::Secret,
            name: "db".into(),
        }
    }

    #[test]
    fn no_path_no_entry() {
        let s = source(&[], &[("a", b"1")]);
        assert_eq!(desired(&s, true), Ok(None));
    }

    #[test]
    fn keys_are_filtered_then_prefixed() {
        let s = source(
            &[
                (PATH_ANNOTATION, "team/db"),
                (KEY_PREFIX_ANNOTATION, "app_"),
                ("push-to-k8s.io/exclude-keys", "debug*"),
            ],
            &[("user", b"u"), ("password", b"p"), ("debug_token", b"x")],
        );
        let d = desired(&s, false).unwrap().unwrap();
        assert_eq!(d.path, "team/db");
        assert_eq!(
            d.data,
            BTreeMap::from([
                ("app_password".to_string(), "p".to_string()),
                ("app_user".to_string(), "u".to_string()),
            ])
        );
        assert!(!d.preserve && !d.adopt);
        assert_eq!(d.hash, content_hash(&d.data));
        // Debug never shows a value.
        assert!(!format!("{d:?}").contains("\"p\""), "{d:?}");
    }

    #[test]
    fn bad_annotations_and_binary_values_are_named_without_values() {
        for (annotations, want) in [
            (vec![(PATH_ANNOTATION, "/abs")], "vault-path"),
            (vec![(PATH_ANNOTATION, "a//b")], "vault-path"),
            (vec![(PATH_ANNOTATION, "a/../b")], "vault-path"),
            (vec![(PATH_ANNOTATION, "a b")], "vault-path"),
            (
                vec![(PATH_ANNOTATION, "ok"), (KEY_PREFIX_ANNOTATION, "a/b")],
                "vault-key-prefix",
            ),
            (
                vec![(PATH_ANNOTATION, "ok"), (PRESERVE_ANNOTATION, "yes")],
                "vault-preserve-on-delete",
            ),
        ] {
            let s = source(&annotations, &[("a", b"1")]);
            let e = desired(&s, false).unwrap_err();
            assert_eq!(e.metric_label(), want, "{annotations:?}: {e}");
        }
        let s = source(&[(PATH_ANNOTATION, "ok")], &[("blob", &[0xff, 0xfe, 0x00])]);
        let e = desired(&s, false).unwrap_err();
        assert_eq!(e, Invalid::NotText("blob".into()));
        assert!(e.to_string().contains("\"blob\""), "{e}");
    }

    #[test]
    fn adoption_needs_both_the_annotation_and_the_switch() {
        let s = source(
            &[(PATH_ANNOTATION, "p"), ("push-to-k8s.io/adopt", "true")],
            &[],
        );
        assert!(desired(&s, true).unwrap().unwrap().adopt);
        assert!(!desired(&s, false).unwrap().unwrap().adopt);
        let s = source(&[(PATH_ANNOTATION, "p")], &[]);
        assert!(!desired(&s, true).unwrap().unwrap().adopt);
    }

    fn want(hash: &str, adopt: bool) -> Desired {
        Desired {
            path: "p".into(),
            data: BTreeMap::new(),
            hash: hash.into(),
            preserve: false,
            adopt,
        }
    }

    pub(crate) const US: Us<'static> = Us {
        namespace: "src",
        cluster: "east",
    };

    #[test]
    fn steps_follow_ownership_and_versions() {
        let ours = |hash: &str, version: u64, current: u64, deleted: bool| Observed {
            current_version: current,
            custom: custom_metadata(US, &id(), hash, version),
            current_deleted: deleted,
        };
        let d = want("h1", false);
        assert_eq!(step(&d, None, US, &id()), Step::Create);
        assert_eq!(
            step(&d, Some(&ours("h1", 3, 3, false)), US, &id()),
            Step::Nothing
        );
        // Edited in Vault (a newer version), deleted in Vault, or a new source value.
        assert_eq!(
            step(&d, Some(&ours("h1", 3, 4, false)), US, &id()),
            Step::Write { cas: 4 }
        );
        assert_eq!(
            step(&d, Some(&ours("h1", 3, 3, true)), US, &id()),
            Step::Write { cas: 3 }
        );
        assert_eq!(
            step(&d, Some(&ours("h0", 3, 3, false)), US, &id()),
            Step::Write { cas: 3 }
        );
        // Someone else's entry.
        let foreign = Observed {
            current_version: 2,
            custom: BTreeMap::from([("owner".into(), "team".into())]),
            current_deleted: false,
        };
        assert_eq!(
            step(&d, Some(&foreign), US, &id()),
            Step::Conflict {
                owner: Owner::Foreign
            }
        );
        assert_eq!(
            step(&want("h1", true), Some(&foreign), US, &id()),
            Step::Adopt { cas: 2 }
        );
        // Another source's, or the same name in another source namespace.
        let other = SourceId {
            kind: Kind::ConfigMap,
            name: "db".into(),
        };
        let theirs = ours("h1", 3, 3, false);
        assert!(matches!(
            step(&d, Some(&theirs), US, &other),
            Step::Conflict {
                owner: Owner::OtherSource(_)
            }
        ));
        assert!(matches!(
            step(&want("h1", true), Some(&theirs), US, &other),
            Step::Conflict {
                owner: Owner::OtherSource(_)
            }
        ));
        let elsewhere = Us {
            namespace: "elsewhere",
            ..US
        };
        assert!(matches!(
            step(&d, Some(&theirs), elsewhere, &id()),
            Step::Conflict {
                owner: Owner::OtherSource(_)
            }
        ));
        assert_eq!(deletable(&theirs, elsewhere, &id()), Deletable::No);
        assert_eq!(deletable(&theirs, US, &id()), Deletable::Yes);
        assert_eq!(deletable(&foreign, US, &id()), Deletable::No);
    }

    // Issue 16, item 2: two clusters with the same source namespace and
    // Vault path overwrote each other's entry at every check (ownership
    // named no cluster); an unstamped entry (an earlier version's) was ours.
    #[test]
    fn another_clusters_entry_or_an_unstamped_one_is_a_conflict() {
        let d = want("h1", false);
        let west = Us {
            cluster: "west",
            ..US
        };
        let theirs = Observed {
            current_version: 3,
            custom: custom_metadata(west, &id(), "h0", 3),
            current_deleted: false,
        };
        for adopt in [false, true] {
            assert_eq!(
                step(&want("h1", adopt), Some(&theirs), US, &id()),
                Step::Conflict {
                    owner: Owner::OtherCluster("west".into())
                },
                "adopt: {adopt}"
            );
        }
        assert_eq!(deletable(&theirs, US, &id()), Deletable::No);
        assert_eq!(deletable(&theirs, west, &id()), Deletable::Yes);
        // Written before the stamp: ours in every other way, still not ours.
        let mut unstamped = theirs.clone();
        unstamped.custom.remove(META_CLUSTER);
        assert_eq!(
            step(&d, Some(&unstamped), US, &id()),
            Step::Conflict {
                owner: Owner::Unstamped
            }
        );
        assert_eq!(deletable(&unstamped, US, &id()), Deletable::No);
        // ... unless adoption is asked and allowed.
        assert_eq!(
            step(&want("h1", true), Some(&unstamped), US, &id()),
            Step::Adopt { cas: 3 }
        );
    }

    // Issue 16, item 3: an entry without our metadata holding exactly the
    // data we would write was claimed ("verify") and later deleted with all
    // its versions, without ALLOW_ADOPTION.
    #[test]
    fn only_our_own_pending_create_is_finished_never_equal_values() {
        let d = want("h1", false);
        let bare = Observed {
            current_version: 1,
            ..Default::default()
        };
        assert_eq!(
            step(&d, Some(&bare), US, &id()),
            Step::Conflict {
                owner: Owner::Foreign
            }
        );
        assert_eq!(deletable(&bare, US, &id()), Deletable::No);
        let marked = |current_version: u64, current_deleted: bool| Observed {
            current_version,
            custom: pending_metadata(US, &id(), "h0"),
            current_deleted,
        };
        // Marked, no data yet: create (again); deletable.
        assert_eq!(step(&d, Some(&marked(0, true)), US, &id()), Step::Create);
        assert_eq!(deletable(&marked(0, true), US, &id()), Deletable::Yes);
        // Marked, one version: ours only if it holds what the mark says.
        assert_eq!(
            step(&d, Some(&marked(1, false)), US, &id()),
            Step::Verify {
                cas: 1,
                pending: "h0".into()
            }
        );
        assert_eq!(
            deletable(&marked(1, false), US, &id()),
            Deletable::IfData("h0".into())
        );
        // More versions since: whose they are cannot be told.
        assert_eq!(
            step(&d, Some(&marked(2, false)), US, &id()),
            Step::Conflict {
                owner: Owner::Unfinished
            }
        );
        assert_eq!(deletable(&marked(2, false), US, &id()), Deletable::No);
        // Another cluster's mark is another cluster's.
        let west = Us {
            cluster: "west",
            ..US
        };
        let theirs = Observed {
            current_version: 0,
            custom: pending_metadata(west, &id(), "h0"),
            current_deleted: true,
        };
        assert!(matches!(
            step(&d, Some(&theirs), US, &id()),
            Step::Conflict {
                owner: Owner::OtherCluster(_)
            }
        ));
    }

    #[test]
    fn paths() {
        for ok in ["a", "team-a/db", "x/y.z/_w-1"] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", ".", "a/..", "a b", "a?b", "ä"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }
}
