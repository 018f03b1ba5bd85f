//! The PushRule API (issue 19, `helm/push-to-k8s/files/pushrule-crd.yaml`): the object as
//! the API server serves it, and its spec put into the annotations a labelled
//! source would carry, so that one implementation ([`crate::model::rules`],
//! through [`crate::decide::plan::rules`]) decides what a rule targets and what
//! is valid, for rules and annotations alike.
//!
//! The controller applies rules in [`crate::targets::rules`].

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use crate::model::vocabulary::{
    CLUSTERS_ANNOTATION, COPY_NAME_ANNOTATION, EXCLUDE_KEYS_ANNOTATION,
    EXCLUDE_NAMESPACES_ANNOTATION, INCLUDE_KEYS_ANNOTATION, NAMESPACE_SELECTOR_ANNOTATION,
    NAMESPACES_ANNOTATION, PATH_ANNOTATION, PUSHRULE_GROUP, PUSHRULE_KIND, PUSHRULE_PLURAL,
    PUSHRULE_VERSION,
};

/// A cluster admin's rule: which object to copy and where (cluster-scoped).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct PushRule {
    pub metadata: ObjectMeta,
    pub spec: PushRuleSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<PushRuleStatus>,
}

impl kube::Resource for PushRule {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> std::borrow::Cow<'_, str> {
        PUSHRULE_KIND.into()
    }
    fn group(_: &()) -> std::borrow::Cow<'_, str> {
        PUSHRULE_GROUP.into()
    }
    fn version(_: &()) -> std::borrow::Cow<'_, str> {
        PUSHRULE_VERSION.into()
    }
    fn plural(_: &()) -> std::borrow::Cow<'_, str> {
        PUSHRULE_PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// `spec` of a [`PushRule`]: the fields of the CRD's schema, one for one
/// (`model::pushrule::tests` checks them against the CRD file).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PushRuleSpec {
    pub source: RuleSource,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<RuleVault>,
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_vault: Option<WorkloadVault>,
}

/// The object a rule copies: its kind, namespace, and a name or a selector.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuleSource {
    pub kind: SourceKind,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum SourceKind {
    #[default]
    Secret,
    ConfigMap,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RuleVault {
    pub path: String,
}

/// What deleting the rule does to its copies.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Orphan,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadVault {
    pub namespaces: Vec<String>,
    pub path_prefix: String,
}

/// `status` of a [`PushRule`].
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PushRuleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub wanted: u32,
    #[serde(default)]
    pub in_sync: u32,
    #[serde(default)]
    pub missing: u32,
    #[serde(default)]
    pub stale: u32,
    #[serde(default)]
    pub conflicts: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conflict_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
}

/// Why a rule's spec cannot become a source's annotations (what the schema
/// cannot refuse and the annotation rules cannot see).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A list item holding a comma would become two entries of the
    /// comma-separated annotation: refused rather than split.
    #[error("{field}: {item:?} holds a comma; give each entry as its own list item")]
    Comma { field: &'static str, item: String },
    /// A selector value holding what the selector syntax separates on.
    #[error("{field}: {value:?} is not a valid label key or value")]
    SelectorValue { field: &'static str, value: String },
}

/// The annotations a labelled source would carry to be targeted as `spec`
/// says. [`crate::decide::plan::rules`] then parses and checks them as it does
/// any source's, so a bad glob in a rule is refused exactly as it would be in
/// an annotation; [`spec_field`] names the field in that refusal.
pub fn annotations(spec: &PushRuleSpec) -> Result<BTreeMap<String, String>, SpecError> {
    let mut out = BTreeMap::new();
    let lists: [(&'static str, &Vec<String>); 5] = [
        (NAMESPACES_ANNOTATION, &spec.namespaces),
        (EXCLUDE_NAMESPACES_ANNOTATION, &spec.exclude_namespaces),
        (INCLUDE_KEYS_ANNOTATION, &spec.include_keys),
        (EXCLUDE_KEYS_ANNOTATION, &spec.exclude_keys),
        (CLUSTERS_ANNOTATION, &spec.clusters),
    ];
    for (key, items) in lists {
        if let Some(item) = items.iter().find(|i| i.contains(',')) {
            return Err(SpecError::Comma {
                field: spec_field(key).unwrap_or(key),
                item: item.clone(),
            });
        }
        if !items.is_empty() {
            out.insert(key.to_string(), items.join(","));
        }
    }
    if let Some(selector) = &spec.namespace_selector {
        out.insert(
            NAMESPACE_SELECTOR_ANNOTATION.to_string(),
            selector_string(
                spec_field(NAMESPACE_SELECTOR_ANNOTATION).unwrap_or_default(),
                selector,
            )?,
        );
    }
    if let Some(name) = &spec.copy_name {
        out.insert(COPY_NAME_ANNOTATION.to_string(), name.clone());
    }
    if let Some(vault) = &spec.vault {
        out.insert(PATH_ANNOTATION.to_string(), vault.path.clone());
    }
    Ok(out)
}

/// Each annotation of [`annotations`] and the spec field it comes from.
const SPEC_FIELDS: [(&str, &str); 8] = [
    (NAMESPACES_ANNOTATION, "spec.namespaces"),
    (EXCLUDE_NAMESPACES_ANNOTATION, "spec.excludeNamespaces"),
    (NAMESPACE_SELECTOR_ANNOTATION, "spec.namespaceSelector"),
    (INCLUDE_KEYS_ANNOTATION, "spec.includeKeys"),
    (EXCLUDE_KEYS_ANNOTATION, "spec.excludeKeys"),
    (CLUSTERS_ANNOTATION, "spec.clusters"),
    (COPY_NAME_ANNOTATION, "spec.copyName"),
    (PATH_ANNOTATION, "spec.vault.path"),
];

/// The spec field an annotation of [`annotations`] came from, to name it in a
/// rule's condition instead of the annotation.
pub fn spec_field(annotation: &str) -> Option<&'static str> {
    SPEC_FIELDS
        .into_iter()
        .find_map(|(a, f)| (a == annotation).then_some(f))
}

/// A refusal of the annotation rules, said of a rule: `annotation
/// push-to-k8s.io/namespaces: ...` becomes `spec.namespaces: ...`.
pub fn in_spec_terms(message: &str) -> String {
    SPEC_FIELDS
        .into_iter()
        .fold(message.to_string(), |m, (a, f)| {
            m.replace(&format!("annotation {a}"), f)
        })
}

/// `spec.source.selector` in kubectl's syntax (`None` for a rule naming its
/// source), for [`crate::model::rules::LabelQuery`].
pub fn source_selector(spec: &PushRuleSpec) -> Result<Option<String>, SpecError> {
    spec.source
        .selector
        .as_ref()
        .map(|s| selector_string("spec.source.selector", s))
        .transpose()
}

/// A `LabelSelector` in kubectl's syntax, the form the annotation takes
/// (`k=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated).
fn selector_string(field: &'static str, s: &LabelSelector) -> Result<String, SpecError> {
    // Characters the selector syntax gives a meaning: a key or value holding
    // one would change what the string says, so it is refused here (the
    // parser then checks label syntax as for any annotation).
    let plain = |v: &str| -> Result<String, SpecError> {
        if v.contains([',', '(', ')', '=', '!', ' ']) {
            Err(SpecError::SelectorValue {
                field,
                value: v.to_string(),
            })
        } else {
            Ok(v.to_string())
        }
    };
    let mut parts = Vec::new();
    for (k, v) in s.match_labels.iter().flatten() {
        parts.push(format!("{}={}", plain(k)?, plain(v)?));
    }
    for e in s.match_expressions.iter().flatten() {
        let key = plain(&e.key)?;
        let values = || -> Result<String, SpecError> {
            Ok(e.values
                .iter()
                .flatten()
                .map(|v| plain(v))
                .collect::<Result<Vec<_>, _>>()?
                .join(","))
        };
        parts.push(match e.operator.as_str() {
            "In" => format!("{key} in ({})", values()?),
            "NotIn" => format!("{key} notin ({})", values()?),
            "Exists" => key,
            "DoesNotExist" => format!("!{key}"),
            other => {
                return Err(SpecError::SelectorValue {
                    field,
                    value: other.to_string(),
                });
            }
        });
    }
    Ok(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::rules::{KeyFilter, TargetRules};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn spec() -> PushRuleSpec {
        PushRuleSpec {
            source: RuleSource {
                kind: SourceKind::Secret,
                namespace: "ingress".into(),
                name: Some("wildcard-tls".into()),
                selector: None,
            },
            namespaces: vec!["team-*".into(), "shared".into()],
            exclude_namespaces: vec!["team-legacy".into()],
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("tier".into(), "web".into())])),
                match_expressions: Some(vec![
                    LabelSelectorRequirement {
                        key: "env".into(),
                        operator: "In".into(),
                        values: Some(vec!["prod".into(), "stage".into()]),
                    },
                    LabelSelectorRequirement {
                        key: "frozen".into(),
                        operator: "DoesNotExist".into(),
                        values: None,
                    },
                ]),
            }),
            include_keys: vec!["tls.*".into()],
            clusters: vec!["*".into()],
            ..PushRuleSpec::default()
        }
    }

    #[test]
    fn a_rule_targets_exactly_as_the_same_annotations_do() {
        let from_rule = annotations(&spec()).unwrap();
        let written = BTreeMap::from([
            (
                NAMESPACES_ANNOTATION.to_string(),
                "team-*,shared".to_string(),
            ),
            (
                EXCLUDE_NAMESPACES_ANNOTATION.to_string(),
                "team-legacy".to_string(),
            ),
            (
                NAMESPACE_SELECTOR_ANNOTATION.to_string(),
                "tier=web,env in (prod,stage),!frozen".to_string(),
            ),
            (INCLUDE_KEYS_ANNOTATION.to_string(), "tls.*".to_string()),
            (CLUSTERS_ANNOTATION.to_string(), "*".to_string()),
        ]);
        assert_eq!(from_rule, written);
        assert_eq!(
            TargetRules::parse(&from_rule).unwrap(),
            TargetRules::parse(&written).unwrap()
        );
        assert_eq!(
            KeyFilter::parse(&from_rule).unwrap(),
            KeyFilter::parse(&written).unwrap()
        );
    }

    #[test]
    fn a_bad_glob_is_refused_by_the_annotation_rules_and_named_by_its_field() {
        let mut s = spec();
        s.namespaces = vec!["Team_*".into()];
        let a = annotations(&s).unwrap();
        let err = TargetRules::parse(&a).expect_err("a bad glob");
        let text = err.to_string();
        assert!(text.contains("Team_*"), "{text}");
        assert_eq!(spec_field(NAMESPACES_ANNOTATION), Some("spec.namespaces"));
    }

    #[test]
    fn list_items_and_selector_values_never_change_meaning_when_joined() {
        let mut s = spec();
        s.namespaces = vec!["a,b".into()];
        assert_eq!(
            annotations(&s),
            Err(SpecError::Comma {
                field: "spec.namespaces",
                item: "a,b".into()
            })
        );
        let mut s = spec();
        s.namespace_selector = Some(LabelSelector {
            match_labels: Some(BTreeMap::from([("a".into(), "b,c=d".into())])),
            match_expressions: None,
        });
        assert!(matches!(
            annotations(&s),
            Err(SpecError::SelectorValue { .. })
        ));
    }

    /// The Rust spec and the CRD's schema name the same fields.
    #[test]
    fn the_spec_has_the_fields_of_the_crd_schema() {
        let crd = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/helm/push-to-k8s/files/pushrule-crd.yaml"
        ))
        .unwrap();
        let doc = crd.split("\n---\n").next().unwrap();
        let crd: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"];
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let full = PushRuleSpec {
            source: RuleSource {
                name: Some("n".into()),
                selector: Some(LabelSelector::default()),
                ..RuleSource::default()
            },
            namespaces: vec!["a".into()],
            exclude_namespaces: vec!["a".into()],
            namespace_selector: Some(LabelSelector::default()),
            include_keys: vec!["a".into()],
            exclude_keys: vec!["a".into()],
            copy_name: Some("c".into()),
            clusters: vec!["a".into()],
            vault: Some(RuleVault { path: "p".into() }),
            deletion_policy: DeletionPolicy::Orphan,
            workload_vault: Some(WorkloadVault {
                namespaces: vec!["a".into()],
                path_prefix: "p".into(),
            }),
        };
        let ours = serde_json::to_value(&full).unwrap();
        assert_eq!(keys(&ours), keys(&schema["spec"]["properties"]));
        assert_eq!(
            keys(&ours["source"]),
            keys(&schema["spec"]["properties"]["source"]["properties"])
        );
        let status = PushRuleStatus {
            observed_generation: Some(1),
            conflict_namespaces: vec!["a".into()],
            last_sync_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Default::default(),
            )),
            conditions: vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    Default::default(),
                ),
                message: String::new(),
                observed_generation: None,
                reason: "Synced".into(),
                status: "True".into(),
                type_: "Ready".into(),
            }],
            ..PushRuleStatus::default()
        };
        assert_eq!(
            keys(&serde_json::to_value(&status).unwrap()),
            keys(&schema["status"]["properties"])
        );
        // And a rule as a user writes it reads back whole.
        let rule: PushRule = serde_json::from_value(serde_json::json!({
            "apiVersion": "push-to-k8s.io/v1alpha1",
            "kind": "PushRule",
            "metadata": {"name": "wildcard"},
            "spec": {"source": {"kind": "ConfigMap", "namespace": "ops",
                                "selector": {"matchLabels": {"share": "yes"}}},
                     "deletionPolicy": "Orphan"},
        }))
        .unwrap();
        assert_eq!(rule.spec.source.kind, SourceKind::ConfigMap);
        assert_eq!(rule.spec.deletion_policy, DeletionPolicy::Orphan);
        assert_eq!(
            <PushRule as kube::Resource>::api_version(&()),
            "push-to-k8s.io/v1alpha1"
        );
    }
}
