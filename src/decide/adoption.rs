//! Explicit adoption (DESIGN §5): an unmanaged object with a copy's name is
//! taken over only when its source asks for it ([`ADOPT_ANNOTATION`]) *and*
//! the controller runs with `ALLOW_ADOPTION=true`. Without both it is a
//! conflict and stays byte-identical.
//!
//! These are the pure rules. The takeover itself is the writer's (its create
//! path, `crate::targets::cluster::writer`): on AlreadyExists it reads the object's metadata,
//! and adopts it by a forced server-side apply guarded by the uid and
//! resourceVersion it read, plus one full update if anything remains that
//! the source does not set. It never deletes the object.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::records::{SourceRecord, owned_source};
use crate::model::rules::AnnotationError;
use crate::model::vocabulary::ADOPT_ANNOTATION;

/// Does a source with these (control) `annotations` ask for adoption?
pub fn asked(annotations: &BTreeMap<String, String>) -> Result<bool, AnnotationError> {
    match annotations.get(ADOPT_ANNOTATION).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(AnnotationError::Adopt {
            value: other.to_string(),
        }),
    }
}

/// May the copies of `source` take over what is in their way: the
/// controller allows adoption and the source asks for it.
pub fn wanted(source: &SourceRecord, allowed: bool) -> bool {
    allowed && asked(&source.annotations) == Ok(true)
}

/// Why the object with `meta` is never adopted, whatever was asked; `None`
/// if it may be. The ownership rules (docs/architecture.md, "Ownership")
/// apply to adoption too: nothing in the source namespace, no source (not
/// even another push-to-k8s's), and no copy that belongs to another source
/// or to another push-to-k8s (two owners would fight over it), and nothing
/// whose source-cluster stamp is not exactly `stamp` (ours: `None` in this
/// cluster, where any stamp means another cluster's push-to-k8s made it;
/// the stamp is never stripped by an adoption).
pub fn refusal(
    meta: &ObjectMeta,
    source_namespace: &str,
    stamp: Option<&str>,
) -> Option<&'static str> {
    if meta.namespace.as_deref() == Some(source_namespace) {
        return Some("it is in the source namespace");
    }
    let stamped = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::model::vocabulary::SOURCE_CLUSTER_ANNOTATION))
        .map(String::as_str);
    if stamped != stamp {
        return Some(
            "it carries the stamp of another cluster's push-to-k8s (push-to-k8s.io/source-cluster)",
        );
    }
    let labels = meta.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(crate::model::vocabulary::SOURCE_LABEL_KEY)) {
        return Some("it carries the source label push-to-k8s, so it is a source itself");
    }
    if owned_source(meta, source_namespace).is_some() {
        return Some("it is the copy of another source");
    }
    let marked = labels
        .and_then(|l| l.get(crate::model::vocabulary::MANAGED_LABEL_KEY))
        .is_some_and(|v| v == crate::model::vocabulary::MANAGED_LABEL_VALUE);
    let elsewhere = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::model::vocabulary::SOURCE_ANNOTATION))
        .is_some_and(|origin| {
            origin
                .split_once('/')
                .is_none_or(|(ns, _)| ns != source_namespace)
        });
    if marked && elsewhere {
        return Some(
            "it is a copy made by another push-to-k8s (its source is in another namespace)",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(value: Option<&str>) -> BTreeMap<String, String> {
        value
            .map(|v| (ADOPT_ANNOTATION.to_string(), v.to_string()))
            .into_iter()
            .collect()
    }

    #[test]
    fn only_true_asks_and_only_true_or_false_parse() {
        assert_eq!(asked(&annotations(None)), Ok(false));
        assert_eq!(asked(&annotations(Some("false"))), Ok(false));
        assert_eq!(asked(&annotations(Some("true"))), Ok(true));
        for bad in ["", "True", "TRUE", "yes", "1", " true", "true "] {
            let e = asked(&annotations(Some(bad))).unwrap_err();
            assert_eq!(e.metric_label(), "adopt");
            let shown = e.to_string();
            assert!(
                shown.contains(ADOPT_ANNOTATION) && shown.contains("true or false"),
                "{shown}"
            );
            assert!(shown.contains(&format!("{bad:?}")), "{shown}");
        }
    }

    fn meta(ns: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        ObjectMeta {
            name: Some("db".into()),
            namespace: Some(ns.into()),
            labels: map(labels),
            annotations: map(annotations),
            ..Default::default()
        }
    }

    #[test]
    fn ownership_rules_say_what_is_never_adopted() {
        use crate::model::vocabulary::{
            MANAGED_LABEL_KEY as M, SOURCE_ANNOTATION as S, SOURCE_CLUSTER_ANNOTATION as C,
            SOURCE_LABEL_KEY as L,
        };
        let ours = (M, "push-to-k8s");
        let cases: &[(ObjectMeta, Option<&str>)] = &[
            // Adoptable: a plain object, one with other labels and
            // annotations, a marked object naming a source of ours that does
            // not ask for this name (a renamed backup).
            (meta("a", &[], &[]), None),
            (
                meta("a", &[("app", "x")], &[("meta.helm.sh/release-name", "r")]),
                None,
            ),
            (meta("a", &[ours], &[(S, "src/db-old")]), None),
            (meta("a", &[ours], &[]), None),
            // Never: in the source namespace, a source, another source's
            // copy, another push-to-k8s's copy.
            (meta("src", &[], &[]), Some("source namespace")),
            (meta("a", &[(L, "source")], &[]), Some("source label")),
            (
                meta("a", &[(L, "x"), ours], &[(S, "src/db")]),
                Some("source label"),
            ),
            (
                meta(
                    "a",
                    &[ours],
                    &[(S, "src/db"), ("push-to-k8s.io/copy-name", "db")],
                ),
                Some("another source"),
            ),
            (meta("a", &[ours], &[(S, "src/db")]), Some("another source")),
            (
                meta("a", &[ours], &[(S, "other/db")]),
                Some("another push-to-k8s"),
            ),
            (
                meta("a", &[ours], &[(S, "garbage")]),
                Some("another push-to-k8s"),
            ),
            // Another cluster's copy (any stamp, here), even one that names
            // our source namespace and source, or carries nothing else.
            (
                meta("a", &[ours], &[(S, "src/db"), (C, "west")]),
                Some("another cluster"),
            ),
            (meta("a", &[], &[(C, "west")]), Some("another cluster")),
            (meta("a", &[], &[(C, "")]), Some("another cluster")),
        ];
        for (m, want) in cases {
            let got = refusal(m, "src", None);
            match want {
                None => assert_eq!(got, None, "{m:?}"),
                Some(fragment) => assert!(
                    got.is_some_and(|g| g.contains(fragment)),
                    "{m:?}: {got:?}, want {fragment}"
                ),
            }
        }
        // In a remote cluster (were adoption ever done there): only our own
        // stamp passes; none, or another's, is refused.
        let stamped = |c: Option<&str>| match c {
            Some(c) => meta("a", &[], &[(C, c)]),
            None => meta("a", &[], &[]),
        };
        assert_eq!(refusal(&stamped(Some("home")), "src", Some("home")), None);
        assert!(refusal(&stamped(Some("west")), "src", Some("home")).is_some());
        assert!(refusal(&stamped(None), "src", Some("home")).is_some());
    }
}
