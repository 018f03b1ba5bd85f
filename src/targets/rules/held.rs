//! Rules as the controller holds them (pure): a [`PushRule`] turned into what
//! its source namespace's pipeline applies — which objects it picks, and the
//! annotations its sources carry there — and the object a picked source
//! becomes: the annotations of the rule instead of its own control
//! annotations, so a tenant who can write in that namespace can never widen
//! what a cluster admin's rule targets.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::kinds::Kind;
use crate::model::pushrule::{self, DeletionPolicy, PushRule, SourceKind};
use crate::model::rules::LabelQuery;
use crate::model::vocabulary::{
    CONTROL_PREFIX, RULE_ANNOTATION, SOURCE_LABEL_KEY, SOURCE_LABEL_VALUE,
};

/// Which objects of its kind and namespace a rule copies.
#[derive(Clone, Debug, PartialEq)]
pub enum Pick {
    Name(String),
    Selector(LabelQuery),
}

/// One rule as its source namespace's pipeline applies it.
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    /// The rule's name (cluster-scoped: unique).
    pub rule: String,
    pub kind: Kind,
    pub namespace: String,
    pub pick: Pick,
    /// What its sources carry (the spec as annotations, and the rule's name).
    pub annotations: BTreeMap<String, String>,
    /// Its creationTimestamp: of two rules picking one object, the older copies it.
    pub created: String,
    pub policy: DeletionPolicy,
    /// Its copies are being deleted (the rule is terminating, policy `Delete`):
    /// it picks nothing, so the plan deletes them as a gone source's.
    pub deleting: bool,
}

/// Why a rule cannot be held (its `Ready=False` reason and message).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unheld {
    pub reason: &'static str,
    pub message: String,
}

impl Held {
    /// The rule as held, or why it cannot be: a spec the schema let through
    /// but that cannot be put into annotations, or a source in the
    /// controller's own namespace (labelled sources live there: use the label).
    pub fn from_rule(rule: &PushRule, own_namespace: &str) -> Result<Held, Unheld> {
        let spec = &rule.spec;
        let invalid = |message: String| Unheld {
            reason: "InvalidSpec",
            message,
        };
        if spec.source.namespace == own_namespace {
            return Err(invalid(format!(
                "spec.source.namespace: {own_namespace} is the controller's own namespace; label the source push-to-k8s=source there instead"
            )));
        }
        // `spec.clusters` is served by the domain's registered clusters, and
        // `spec.vault` by its Vault worker (with Vault configured; otherwise
        // ignored, as the annotation of a labelled source is).
        let mut annotations = pushrule::annotations(spec).map_err(|e| invalid(e.to_string()))?;
        let rule_name = rule.metadata.name.clone().unwrap_or_default();
        annotations.insert(RULE_ANNOTATION.to_string(), rule_name.clone());
        let pick = match (&spec.source.name, pushrule::source_selector(spec)) {
            (Some(name), _) => Pick::Name(name.clone()),
            (None, Ok(Some(selector))) => Pick::Selector(
                LabelQuery::parse(&selector)
                    .map_err(|e| invalid(format!("spec.source.selector: {e}")))?,
            ),
            (None, Ok(None)) => {
                return Err(invalid(
                    "spec.source: a name or a selector is needed".into(),
                ));
            }
            (None, Err(e)) => return Err(invalid(e.to_string())),
        };
        Ok(Held {
            rule: rule_name,
            kind: match spec.source.kind {
                SourceKind::Secret => Kind::Secret,
                SourceKind::ConfigMap => Kind::ConfigMap,
            },
            namespace: spec.source.namespace.clone(),
            pick,
            annotations,
            created: rule
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
            policy: spec.deletion_policy,
            deleting: false,
        })
    }

    /// Does this rule pick the `kind` object with `meta`?
    pub fn picks(&self, kind: Kind, meta: &ObjectMeta) -> bool {
        if self.deleting || kind != self.kind || meta.namespace.as_deref() != Some(&self.namespace)
        {
            return false;
        }
        match &self.pick {
            Pick::Name(name) => meta.name.as_deref() == Some(name),
            Pick::Selector(q) => q.matches(meta.labels.as_ref().unwrap_or(&BTreeMap::new())),
        }
    }
}

/// The rule that copies the `kind` object with `meta`, among `rules`: of
/// several, the oldest (then the first by name); the others are told in
/// their status that it is taken.
pub fn picker<'a>(
    rules: impl IntoIterator<Item = &'a Held>,
    kind: Kind,
    meta: &ObjectMeta,
) -> Option<&'a Held> {
    rules
        .into_iter()
        .filter(|h| h.picks(kind, meta))
        .min_by(|a, b| (&a.created, &a.rule).cmp(&(&b.created, &b.rule)))
}

/// The metadata a picked object is planned with: its own control annotations
/// dropped (a tenant's `push-to-k8s.io/namespaces: "*"` means nothing on a
/// rule's source), the rule's put in, and the source label, so the planner
/// and the copy rendering treat it as any labelled source.
pub fn as_source(held: &Held, meta: &ObjectMeta) -> ObjectMeta {
    let mut meta = meta.clone();
    let mut annotations = meta.annotations.take().unwrap_or_default();
    annotations.retain(|k, _| !k.starts_with(CONTROL_PREFIX));
    annotations.extend(held.annotations.clone());
    meta.annotations = Some(annotations);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(SOURCE_LABEL_KEY.to_string(), SOURCE_LABEL_VALUE.to_string());
    meta
}

/// The rules of one source namespace, by rule name.
pub type Rules = BTreeMap<String, Held>;

/// Every rule as held, by source namespace, and why the others are not
/// (pure: the controller and `status` hold rules alike). A rule being
/// deleted with our finalizer and `deletionPolicy: Delete` is held
/// [`Held::deleting`] (its copies are deleted); any other rule being deleted
/// is not held (its copies are left as they are).
pub fn hold_all<'a>(
    rules: impl IntoIterator<Item = &'a PushRule>,
    own_namespace: &str,
) -> (BTreeMap<String, Rules>, BTreeMap<String, Unheld>) {
    let mut held: BTreeMap<String, Rules> = BTreeMap::new();
    let mut unheld = BTreeMap::new();
    for rule in rules {
        let name = rule.metadata.name.clone().unwrap_or_default();
        let mut h = match Held::from_rule(rule, own_namespace) {
            Ok(h) => h,
            Err(why) => {
                unheld.insert(name, why);
                continue;
            }
        };
        if rule.metadata.deletion_timestamp.is_some() {
            if !(has_finalizer(rule) && h.policy == DeletionPolicy::Delete) {
                continue;
            }
            h.deleting = true;
        }
        held.entry(h.namespace.clone()).or_default().insert(name, h);
    }
    (held, unheld)
}

/// Does `rule` carry our finalizer?
pub fn has_finalizer(rule: &PushRule) -> bool {
    rule.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == crate::model::vocabulary::RULE_FINALIZER)
}

/// The rule a copy names, if any.
pub fn rule_of(meta: &ObjectMeta) -> Option<&str> {
    meta.annotations
        .as_ref()?
        .get(RULE_ANNOTATION)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::pushrule::{PushRuleSpec, RuleSource};
    use crate::model::vocabulary::{ADOPT_ANNOTATION, NAMESPACES_ANNOTATION};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};

    fn rule(name: &str, created: i64, source: RuleSource) -> PushRule {
        PushRule {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(
                    k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
                )),
                ..ObjectMeta::default()
            },
            spec: PushRuleSpec {
                source,
                namespaces: vec!["team-*".into()],
                ..PushRuleSpec::default()
            },
            status: None,
        }
    }

    fn named(name: &str) -> RuleSource {
        RuleSource {
            kind: SourceKind::Secret,
            namespace: "ingress".into(),
            name: Some(name.into()),
            selector: None,
        }
    }

    fn object(name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ingress".into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            annotations: Some(BTreeMap::from([
                (NAMESPACES_ANNOTATION.to_string(), "*".to_string()),
                (ADOPT_ANNOTATION.to_string(), "true".to_string()),
                ("team".to_string(), "web".to_string()),
            ])),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_rule_picks_by_name_or_selector_and_the_oldest_wins() {
        let by_name = Held::from_rule(&rule("b-tls", 20, named("tls")), "push-to-k8s").unwrap();
        let older = Held::from_rule(&rule("z-tls", 10, named("tls")), "push-to-k8s").unwrap();
        let selector = RuleSource {
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("copy".into(), "yes".into())])),
                match_expressions: None,
            }),
            name: None,
            ..named("")
        };
        let by_label = Held::from_rule(&rule("labels", 5, selector), "push-to-k8s").unwrap();
        let tls = object("tls", &[]);
        assert!(by_name.picks(Kind::Secret, &tls));
        assert!(!by_name.picks(Kind::ConfigMap, &tls));
        assert!(!by_label.picks(Kind::Secret, &tls));
        assert!(by_label.picks(Kind::Secret, &object("x", &[("copy", "yes")])));
        let rules = [by_name.clone(), older.clone(), by_label];
        assert_eq!(picker(&rules, Kind::Secret, &tls).unwrap().rule, "z-tls");
        let mut deleting = older;
        deleting.deleting = true;
        let rules = [by_name, deleting];
        assert_eq!(picker(&rules, Kind::Secret, &tls).unwrap().rule, "b-tls");
    }

    #[test]
    fn a_picked_object_carries_the_rules_annotations_never_its_own() {
        let held = Held::from_rule(&rule("tls", 1, named("tls")), "push-to-k8s").unwrap();
        let meta = as_source(&held, &object("tls", &[]));
        let a = meta.annotations.unwrap();
        assert_eq!(a[NAMESPACES_ANNOTATION], "team-*");
        assert_eq!(a[RULE_ANNOTATION], "tls");
        assert!(!a.contains_key(ADOPT_ANNOTATION), "{a:?}");
        assert_eq!(a["team"], "web");
        assert_eq!(meta.labels.unwrap()[SOURCE_LABEL_KEY], SOURCE_LABEL_VALUE);
    }

    #[test]
    fn a_rule_in_the_controllers_namespace_or_with_a_bad_item_is_not_held() {
        let mut own = rule("own", 1, named("tls"));
        own.spec.source.namespace = "push-to-k8s".into();
        let e = Held::from_rule(&own, "push-to-k8s").unwrap_err();
        assert_eq!(e.reason, "InvalidSpec");
        assert!(e.message.contains("push-to-k8s=source"), "{}", e.message);
        let mut comma = rule("comma", 1, named("tls"));
        comma.spec.namespaces = vec!["a,b".into()];
        let e = Held::from_rule(&comma, "push-to-k8s").unwrap_err();
        assert!(e.message.contains("spec.namespaces"), "{}", e.message);
        // Registered clusters and Vault are the annotations' own.
        let mut remote = rule("remote", 1, named("tls"));
        remote.spec.clusters = vec!["east".into(), "west-*".into()];
        let held = Held::from_rule(&remote, "push-to-k8s").unwrap();
        assert_eq!(
            held.annotations[crate::model::vocabulary::CLUSTERS_ANNOTATION],
            "east,west-*"
        );
        let rules = Rules::from([("remote".to_string(), held)]);
        assert!(crate::targets::rules::domain::names_clusters(&rules));
    }

    #[test]
    fn deleted_rules_are_held_only_to_delete_their_copies() {
        let mut deleting = rule("deleting", 1, named("a"));
        deleting.metadata.deletion_timestamp =
            Some(Time(k8s_openapi::jiff::Timestamp::from_second(9).unwrap()));
        deleting.metadata.finalizers = Some(vec![crate::model::vocabulary::RULE_FINALIZER.into()]);
        let mut orphaning = deleting.clone();
        orphaning.metadata.name = Some("orphaning".into());
        orphaning.spec.deletion_policy = DeletionPolicy::Orphan;
        let mut foreign = deleting.clone();
        foreign.metadata.name = Some("foreign".into());
        foreign.metadata.finalizers = Some(vec!["someone-else".into()]);
        let live = rule("live", 1, named("b"));
        let (held, unheld) = hold_all([&deleting, &orphaning, &foreign, &live], "push-to-k8s");
        assert!(unheld.is_empty());
        let ingress = &held["ingress"];
        assert_eq!(
            ingress.keys().map(String::as_str).collect::<Vec<_>>(),
            ["deleting", "live"]
        );
        assert!(ingress["deleting"].deleting && !ingress["live"].deleting);
    }
}
