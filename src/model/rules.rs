//! Which namespaces should hold a copy of a source (DESIGN.md §3).
//!
//! A pure decision: cluster-wide [`Scope`] (source namespace, exclude label,
//! protected namespaces, consent mode), the namespace owner's own labels (opt-out,
//! consent) and a source's own [`TargetRules`], parsed from its annotations, answer
//! "does namespace X want a copy of source S?". No I/O, so the planner can call it
//! for every (source, namespace) pair on every flush.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::model::names;
use crate::model::vocabulary::{
    ACCEPT_ALL, ACCEPT_LABEL, ACCEPT_SOURCE_PREFIX, ACCEPT_SOURCE_VALUE, CLUSTERS_ANNOTATION,
    EXCLUDE_KEYS_ANNOTATION, EXCLUDE_NAMESPACES_ANNOTATION, INCLUDE_KEYS_ANNOTATION,
    NAMESPACE_SELECTOR_ANNOTATION, NAMESPACES_ANNOTATION, OPT_OUT_LABEL, OPT_OUT_SOURCE_PREFIX,
};

/// Longest namespace name, hence the longest useful entry.
const MAX_ENTRY_LEN: usize = names::DNS1123_LABEL_MAX_LEN;
/// Longest Secret or ConfigMap data key (Kubernetes' `IsConfigMapKey`).
const MAX_KEY_LEN: usize = names::DNS1123_SUBDOMAIN_MAX_LEN;

/// What the planner knows about a namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceInfo {
    pub labels: BTreeMap<String, String>,
    pub terminating: bool,
}

/// Cluster-wide settings (from config).
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    pub source_namespace: &'a str,
    pub exclude_label: Option<&'a str>,
    pub protected: &'a [String],
    /// `REQUIRE_NAMESPACE_CONSENT`: only namespaces that accept a source (with
    /// [`ACCEPT_LABEL`] or an [`ACCEPT_SOURCE_PREFIX`] label) get its copies.
    pub require_consent: bool,
    /// The registered remote cluster being planned (its registration name),
    /// or `None` for this cluster. Only sources whose
    /// [`CLUSTERS_ANNOTATION`] selects it have copies there.
    pub cluster: Option<&'a str>,
    /// The source-cluster stamp of our copies there (`CLUSTER_NAME`, see
    /// [`crate::model::records::owned_source_in`]); `None` in this cluster.
    pub stamp: Option<&'a str>,
}

impl NamespaceInfo {
    /// The namespace's owner refuses copies of `source`: [`OPT_OUT_LABEL`] or the
    /// source's [`OPT_OUT_SOURCE_PREFIX`] label, whatever its value (a doubtful
    /// opt-out means no copy).
    pub fn opts_out_of(&self, source: &str) -> bool {
        self.labels.contains_key(OPT_OUT_LABEL)
            || self.per_source(OPT_OUT_SOURCE_PREFIX, source).is_some()
    }

    /// The namespace's owner accepts copies of `source`: [`ACCEPT_LABEL`]`=all` or
    /// the source's [`ACCEPT_SOURCE_PREFIX`] label `=true`, exactly (a doubtful
    /// consent means no copy).
    pub fn accepts(&self, source: &str) -> bool {
        self.labels.get(ACCEPT_LABEL).map(String::as_str) == Some(ACCEPT_ALL)
            || self.per_source(ACCEPT_SOURCE_PREFIX, source) == Some(ACCEPT_SOURCE_VALUE)
    }

    /// The value of the label `<prefix><source>`, found without building the key:
    /// this runs for every (source, namespace) pair of a flush.
    fn per_source(&self, prefix: &str, source: &str) -> Option<&str> {
        self.labels
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .find(|(key, _)| &key[prefix.len()..] == source)
            .map(|(_, value)| value.as_str())
    }
}

/// A source's own narrowing, parsed from its annotations.
///
/// `Default` narrows nothing: every namespace allowed by the [`Scope`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetRules {
    /// Empty means "all namespaces".
    include: Vec<String>,
    exclude: Vec<String>,
    /// AND-ed; empty matches everything.
    selector: Vec<Requirement>,
    /// Remote clusters (names and globs); empty means none.
    clusters: Vec<String>,
}

/// A source annotation that does not parse. Affects only that source (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AnnotationError {
    /// An entry of [`NAMESPACES_ANNOTATION`] or [`EXCLUDE_NAMESPACES_ANNOTATION`].
    #[error("annotation {key}: {entry:?} {problem}")]
    Entry {
        key: &'static str,
        entry: String,
        problem: EntryProblem,
    },
    /// A requirement of [`NAMESPACE_SELECTOR_ANNOTATION`] (the whole selector when
    /// its parentheses do not balance).
    #[error("annotation {NAMESPACE_SELECTOR_ANNOTATION}: {entry:?} {problem}")]
    Selector {
        entry: String,
        problem: SelectorProblem,
    },
    /// An entry of [`INCLUDE_KEYS_ANNOTATION`] or [`EXCLUDE_KEYS_ANNOTATION`].
    #[error("annotation {key}: {entry:?} {problem}")]
    KeyEntry {
        key: &'static str,
        entry: String,
        problem: KeyEntryProblem,
    },
    /// [`crate::model::vocabulary::COPY_NAME_ANNOTATION`] is not a valid object name.
    #[error(
        "annotation {}: {value:?} is not a valid object name ({reason})",
        crate::model::vocabulary::COPY_NAME_ANNOTATION
    )]
    CopyName { value: String, reason: String },
    /// Another source asks for the same copy name and keeps it (the older
    /// one; of two created in the same second, the first by name).
    #[error(
        "copy name {value:?} (the source's name, or its {} annotation) is also asked for by source {by}, which keeps it (the older source keeps a copy name); this source is not pushed",
        crate::model::vocabulary::COPY_NAME_ANNOTATION
    )]
    CopyNameTaken { value: String, by: String },
    /// [`crate::model::vocabulary::ADOPT_ANNOTATION`] is neither `true` nor `false`.
    #[error(
        "annotation {}: {value:?} must be true or false",
        crate::model::vocabulary::ADOPT_ANNOTATION
    )]
    Adopt { value: String },
}

/// Why a namespace name or glob was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryProblem {
    #[error("is longer than 63 characters")]
    TooLong,
    #[error("is not a valid name or glob (allowed: a-z, 0-9, '-', '*', '?')")]
    InvalidChar,
}

/// Why a data key or key glob was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyEntryProblem {
    #[error("is longer than 253 characters")]
    TooLong,
    #[error("is not a valid data key or glob (allowed: A-Z, a-z, 0-9, '-', '_', '.', '*', '?')")]
    InvalidChar,
}

/// Why a label selector was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SelectorProblem {
    #[error("has unbalanced parentheses")]
    UnbalancedParens,
    #[error("contains an empty requirement (check for doubled or trailing commas)")]
    EmptyRequirement,
    #[error(
        "does not start with a valid label key (optional DNS prefix and '/', then 1-63 of \
         A-Z, a-z, 0-9, '.', '_', '-', starting and ending alphanumeric)"
    )]
    InvalidKey,
    #[error(
        "has an invalid label value (at most 63 of A-Z, a-z, 0-9, '.', '_', '-', \
         starting and ending alphanumeric)"
    )]
    InvalidValue,
    #[error("is not a requirement (expected k=v, k==v, k!=v, k in (a,b), k notin (a,b), k or !k)")]
    UnknownOperator,
    #[error("needs a parenthesised value list after 'in' or 'notin', e.g. k in (a,b)")]
    MissingValueList,
    #[error("has an empty value list")]
    EmptyValueList,
}

impl AnnotationError {
    /// Bounded metric label naming the annotation, never its user-chosen content.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Entry { key, .. } if *key == EXCLUDE_NAMESPACES_ANNOTATION => {
                "exclude_namespaces"
            }
            Self::Entry { key, .. } if *key == CLUSTERS_ANNOTATION => "clusters",
            Self::Entry { .. } => "namespaces",
            Self::Selector { .. } => "namespace_selector",
            Self::KeyEntry { key, .. } if *key == EXCLUDE_KEYS_ANNOTATION => "exclude_keys",
            Self::KeyEntry { .. } => "include_keys",
            Self::CopyName { .. } => "copy_name",
            Self::CopyNameTaken { .. } => "copy_name_taken",
            Self::Adopt { .. } => "adopt",
        }
    }
}

impl TargetRules {
    /// Parses the source's annotations; absent annotations narrow nothing.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<TargetRules, AnnotationError> {
        let get = |key| annotations.get(key).map_or("", String::as_str);
        Ok(TargetRules {
            include: parse_entries(NAMESPACES_ANNOTATION, get(NAMESPACES_ANNOTATION))?,
            exclude: parse_entries(
                EXCLUDE_NAMESPACES_ANNOTATION,
                get(EXCLUDE_NAMESPACES_ANNOTATION),
            )?,
            selector: parse_selector(get(NAMESPACE_SELECTOR_ANNOTATION))?,
            clusters: parse_entries(CLUSTERS_ANNOTATION, get(CLUSTERS_ANNOTATION))?,
        })
    }

    /// Does the source want copies in the remote cluster registered as `cluster`?
    pub fn selects_cluster(&self, cluster: &str) -> bool {
        self.clusters.iter().any(|glob| glob_match(glob, cluster))
    }

    /// The source names at least one remote cluster.
    pub fn any_cluster(&self) -> bool {
        !self.clusters.is_empty()
    }

    /// The entries of the source's [`CLUSTERS_ANNOTATION`] that are plain
    /// names (no glob), for reports on clusters that are not registered.
    pub fn named_clusters(&self) -> impl Iterator<Item = &str> {
        self.clusters
            .iter()
            .filter(|c| !c.contains(['*', '?']))
            .map(String::as_str)
    }

    /// Should namespace `name` (with `info`) hold a copy of the source named
    /// `source` (these are its rules)?
    ///
    /// The namespace owner's word comes first: an opt-out beats everything, and
    /// in consent mode nothing arrives without consent. Consent only lifts that
    /// requirement; the source's own rules and the protected namespaces still apply.
    pub fn wants(&self, scope: &Scope<'_>, source: &str, name: &str, info: &NamespaceInfo) -> bool {
        if name == scope.source_namespace || info.terminating {
            return false;
        }
        if scope.cluster.is_some_and(|c| !self.selects_cluster(c)) {
            return false;
        }
        if info.opts_out_of(source) {
            return false;
        }
        // The cluster operator's opt-out, also beyond anything a source asks for.
        if scope
            .exclude_label
            .is_some_and(|key| info.labels.contains_key(key))
        {
            return false;
        }
        if scope.require_consent && !info.accepts(source) {
            return false;
        }
        if self.exclude.iter().any(|glob| glob_match(glob, name)) {
            return false;
        }
        // A broad glob like `kube-*` must not reach system namespaces by accident;
        // only spelling the name out counts as deliberate.
        let named_exactly = self.include.iter().any(|entry| entry == name);
        if scope.protected.iter().any(|p| p == name) && !named_exactly {
            return false;
        }
        if !self.include.is_empty() && !self.include.iter().any(|glob| glob_match(glob, name)) {
            return false;
        }
        self.selector.iter().all(|req| req.matches(&info.labels))
    }
}

/// Splits a comma-separated list of names and globs, skipping empty entries.
fn parse_entries(key: &'static str, value: &str) -> Result<Vec<String>, AnnotationError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let problem = if entry.len() > MAX_ENTRY_LEN {
                Some(EntryProblem::TooLong)
            } else if !entry
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'*' | b'?'))
            {
                Some(EntryProblem::InvalidChar)
            } else {
                None
            };
            match problem {
                None => Ok(entry.to_owned()),
                Some(problem) => Err(AnnotationError::Entry {
                    key,
                    entry: entry.to_owned(),
                    problem,
                }),
            }
        })
        .collect()
}

/// Which data keys a copy holds: a source's own key filter, parsed from its
/// annotations. `Default` keeps every key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyFilter {
    /// Empty means "every key".
    include: Vec<String>,
    exclude: Vec<String>,
}

impl KeyFilter {
    /// Parses the source's annotations; absent annotations keep every key.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<KeyFilter, AnnotationError> {
        let get = |key| annotations.get(key).map_or("", String::as_str);
        Ok(KeyFilter {
            include: parse_key_entries(INCLUDE_KEYS_ANNOTATION, get(INCLUDE_KEYS_ANNOTATION))?,
            exclude: parse_key_entries(EXCLUDE_KEYS_ANNOTATION, get(EXCLUDE_KEYS_ANNOTATION))?,
        })
    }

    /// Does a copy hold the data key `key`? Exclusions win.
    pub fn keeps(&self, key: &str) -> bool {
        !self.exclude.iter().any(|glob| glob_match(glob, key))
            && (self.include.is_empty() || self.include.iter().any(|glob| glob_match(glob, key)))
    }
}

/// Splits a comma-separated list of data keys and globs, skipping empty
/// entries. Keys are `[-._a-zA-Z0-9]+` (Kubernetes' `IsConfigMapKey`, for
/// Secrets too); globs add `*` and `?`.
fn parse_key_entries(key: &'static str, value: &str) -> Result<Vec<String>, AnnotationError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let problem = if entry.len() > MAX_KEY_LEN {
                KeyEntryProblem::TooLong
            } else if !entry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*' | b'?'))
            {
                KeyEntryProblem::InvalidChar
            } else {
                return Ok(entry.to_owned());
            };
            Err(AnnotationError::KeyEntry {
                key,
                entry: entry.to_owned(),
                problem,
            })
        })
        .collect()
}

/// Glob match: `*` matches any run (including empty), `?` exactly one character.
///
/// Iterative with single-star backtracking, so it is linear-ish and cannot blow the
/// stack. Works on bytes: entries are ASCII by validation, namespace names are
/// RFC 1123 labels and data keys `[-._a-zA-Z0-9]+`. Case-sensitive, as both are.
pub fn glob_match(glob: &str, name: &str) -> bool {
    let (glob, name) = (glob.as_bytes(), name.as_bytes());
    let (mut g, mut n) = (0, 0);
    // Position after the last `*` seen, and the name position that star resumes from.
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        match glob.get(g) {
            Some(b'*') => {
                g += 1;
                backtrack = Some((g, n));
            }
            Some(&c) if c == b'?' || c == name[n] => {
                g += 1;
                n += 1;
            }
            // Mismatch: let the last star swallow one more character and retry.
            _ => match backtrack {
                Some((star_g, star_n)) => {
                    g = star_g;
                    n = star_n + 1;
                    backtrack = Some((star_g, n));
                }
                None => return false,
            },
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

/// A label selector in kubectl's syntax, parsed once: what a PushRule's
/// `spec.source.selector` picks in its namespace (the same parser and
/// matching as [`NAMESPACE_SELECTOR_ANNOTATION`]'s).
#[derive(Clone, Debug, PartialEq)]
pub struct LabelQuery(Vec<Requirement>);

impl LabelQuery {
    pub fn parse(selector: &str) -> Result<LabelQuery, AnnotationError> {
        parse_selector(selector).map(LabelQuery)
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|req| req.matches(labels))
    }
}

/// One AND-ed term of a label selector. `k=v` is stored as `k in (v)` and
/// `k!=v` as `k notin (v)`: the semantics are identical.
#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    In(BTreeSet<String>),
    /// Also matches namespaces without the key, as in Kubernetes.
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::In(values) => value.is_some_and(|v| values.contains(v)),
            Op::NotIn(values) => !value.is_some_and(|v| values.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

/// Parses a kubectl-style label selector; an empty string selects everything.
fn parse_selector(selector: &str) -> Result<Vec<Requirement>, AnnotationError> {
    let selector = selector.trim();
    if selector.is_empty() {
        return Ok(Vec::new());
    }
    let error = |entry: &str, problem| AnnotationError::Selector {
        entry: entry.to_owned(),
        problem,
    };
    split_requirements(selector)
        .ok_or_else(|| error(selector, SelectorProblem::UnbalancedParens))?
        .into_iter()
        .map(|text| {
            // An empty piece has no text of its own to show; name the whole selector.
            if text.is_empty() {
                return Err(error(selector, SelectorProblem::EmptyRequirement));
            }
            parse_requirement(text).map_err(|problem| error(text, problem))
        })
        .collect()
}

/// Splits at commas outside parentheses; `None` if the parentheses do not balance.
fn split_requirements(selector: &str) -> Option<Vec<&str>> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1)?,
            ',' if depth == 0 => {
                parts.push(selector[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    (depth == 0).then(|| {
        parts.push(selector[start..].trim());
        parts
    })
}

fn parse_requirement(text: &str) -> Result<Requirement, SelectorProblem> {
    if let Some(key) = text.strip_prefix('!') {
        return requirement(key.trim(), Op::DoesNotExist);
    }
    // The key runs up to the first character that starts an operator or a gap.
    let key_end = text
        .find(|c: char| c.is_whitespace() || "=!(),".contains(c))
        .unwrap_or(text.len());
    let (key, rest) = (&text[..key_end], text[key_end..].trim_start());

    let single = |value: &str| -> Result<BTreeSet<String>, SelectorProblem> {
        let value = value.trim();
        check_value(value)?;
        Ok(BTreeSet::from([value.to_owned()]))
    };
    let op = if rest.is_empty() {
        Op::Exists
    } else if let Some(value) = rest.strip_prefix("!=") {
        Op::NotIn(single(value)?)
    } else if let Some(value) = rest.strip_prefix("==").or_else(|| rest.strip_prefix('=')) {
        Op::In(single(value)?)
    } else if let Some(list) = rest.strip_prefix("notin") {
        Op::NotIn(parse_value_list(list)?)
    } else if let Some(list) = rest.strip_prefix("in") {
        Op::In(parse_value_list(list)?)
    } else {
        // Report a broken key before a confusing "unknown operator".
        check_key(key)?;
        return Err(SelectorProblem::UnknownOperator);
    };
    requirement(key, op)
}

fn requirement(key: &str, op: Op) -> Result<Requirement, SelectorProblem> {
    check_key(key)?;
    Ok(Requirement {
        key: key.to_owned(),
        op,
    })
}

/// Parses what follows `in`/`notin`: `(a, b, ...)`.
fn parse_value_list(after_op: &str) -> Result<BTreeSet<String>, SelectorProblem> {
    // `inx (a)` is not `in`: the operator must end at a gap or the parenthesis.
    if !after_op.starts_with(|c: char| c.is_whitespace() || c == '(') {
        return Err(SelectorProblem::UnknownOperator);
    }
    let inner = after_op
        .trim()
        .strip_prefix('(')
        .and_then(|list| list.strip_suffix(')'))
        .ok_or(SelectorProblem::MissingValueList)?;
    if inner.trim().is_empty() {
        return Err(SelectorProblem::EmptyValueList);
    }
    inner
        .split(',')
        .map(|value| {
            let value = value.trim();
            check_value(value).map(|()| value.to_owned())
        })
        .collect()
}

fn check_key(key: &str) -> Result<(), SelectorProblem> {
    names::label_key(key).map_err(|_| SelectorProblem::InvalidKey)
}

fn check_value(value: &str) -> Result<(), SelectorProblem> {
    names::label_value(value).map_err(|_| SelectorProblem::InvalidValue)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn map(pairs: Pairs<'_>) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn rules(pairs: Pairs<'_>) -> TargetRules {
        TargetRules::parse(&map(pairs)).expect("annotations parse")
    }

    fn ns(labels: Pairs<'_>) -> NamespaceInfo {
        NamespaceInfo {
            labels: map(labels),
            terminating: false,
        }
    }

    fn selector_matches(selector: &str, labels: Pairs<'_>) -> bool {
        parse_selector(selector)
            .unwrap_or_else(|e| panic!("{selector:?}: {e}"))
            .iter()
            .all(|req| req.matches(&map(labels)))
    }

    #[test]
    fn glob_matching() {
        let cases = [
            ("team-*", "team-a", true), // prefix
            ("team-*", "team-", true),  // star matches empty
            ("team-*", "teams", false),
            ("*-prod", "billing-prod", true), // suffix
            ("*-prod", "prod", false),
            ("a*b*c", "a-x-b-y-c", true), // middle, needs backtracking
            ("a*b*c", "a-x-c-y-b", false),
            ("*a*", "bab", true),
            ("team-?", "team-a", true),
            ("team-?", "team-", false),
            ("team-?", "team-ab", false),
            ("??", "ab", true),
            ("*", "", true),
            ("*", "anything", true),
            ("team-a", "team-a", true), // exact
            ("team-a", "team-ab", false),
            ("team-ab", "team-a", false),
            ("", "", true),
            ("", "a", false),
        ];
        for (glob, name, want) in cases {
            assert_eq!(glob_match(glob, name), want, "{glob:?} vs {name:?}");
        }
    }

    #[test]
    fn entries_trimmed_and_empties_ignored() {
        let r = rules(&[
            (NAMESPACES_ANNOTATION, " a , ,b,, team-* ,"),
            (EXCLUDE_NAMESPACES_ANNOTATION, " , "),
            (NAMESPACE_SELECTOR_ANNOTATION, "  "),
        ]);
        assert_eq!(r.include, ["a", "b", "team-*"]);
        assert!(r.exclude.is_empty());
        assert!(r.selector.is_empty());
        assert_eq!(rules(&[]), TargetRules::default());
    }

    #[test]
    fn entry_errors() {
        let long = "a".repeat(64);
        let cases = [
            ("team-[", EntryProblem::InvalidChar),
            ("Team-a", EntryProblem::InvalidChar),
            ("team_a", EntryProblem::InvalidChar),
            ("team a", EntryProblem::InvalidChar),
            ("tëam", EntryProblem::InvalidChar),
            (long.as_str(), EntryProblem::TooLong),
        ];
        for (key, label) in [
            (NAMESPACES_ANNOTATION, "namespaces"),
            (EXCLUDE_NAMESPACES_ANNOTATION, "exclude_namespaces"),
        ] {
            for (entry, problem) in cases {
                let value = format!("ok, {entry} ,other");
                let err = TargetRules::parse(&map(&[(key, &value)])).unwrap_err();
                let expected = AnnotationError::Entry {
                    key,
                    entry: entry.to_owned(),
                    problem,
                };
                assert_eq!(err, expected, "{key}: {entry:?}");
                assert_eq!(err.metric_label(), label);
            }
        }
        // 63 characters is the limit, not an error.
        assert!(TargetRules::parse(&map(&[(NAMESPACES_ANNOTATION, &"a".repeat(63))])).is_ok());
    }

    #[test]
    fn error_messages_are_one_sentence() {
        let err = TargetRules::parse(&map(&[(NAMESPACES_ANNOTATION, "team-[")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"annotation push-to-k8s.io/namespaces: "team-[" is not a valid name or glob (allowed: a-z, 0-9, '-', '*', '?')"#
        );
        let err = TargetRules::parse(&map(&[(NAMESPACE_SELECTOR_ANNOTATION, "env=prod, k in a")]))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"annotation push-to-k8s.io/namespace-selector: "k in a" needs a parenthesised value list after 'in' or 'notin', e.g. k in (a,b)"#
        );
    }

    #[test]
    fn selector_errors() {
        use SelectorProblem::*;
        let long = format!("k={}", "v".repeat(64));
        let cases = [
            ("k in (a,b", "k in (a,b", UnbalancedParens),
            ("k in a,b)", "k in a,b)", UnbalancedParens),
            ("a=b,,c=d", "a=b,,c=d", EmptyRequirement),
            (" a=b, ", "a=b,", EmptyRequirement),
            ("=v", "=v", InvalidKey),
            ("!", "!", InvalidKey),
            ("!k=v", "!k=v", InvalidKey),
            ("-k=v", "-k=v", InvalidKey),
            ("k@x=v", "k@x=v", InvalidKey),
            ("Example.com/k=v", "Example.com/k=v", InvalidKey),
            ("example.com/=v", "example.com/=v", InvalidKey),
            ("a/b/c=v", "a/b/c=v", InvalidKey),
            ("k=v=w", "k=v=w", InvalidValue),
            ("k===v", "k===v", InvalidValue),
            ("k=-v", "k=-v", InvalidValue),
            ("k in (a,b c)", "k in (a,b c)", InvalidValue),
            (long.as_str(), long.as_str(), InvalidValue),
            ("k in a", "k in a", MissingValueList),
            ("k notin a", "k notin a", MissingValueList),
            ("k in (a) b", "k in (a) b", MissingValueList),
            ("k in ()", "k in ()", EmptyValueList),
            ("k notin ( )", "k notin ( )", EmptyValueList),
            ("k inside (a)", "k inside (a)", UnknownOperator),
            ("a b c", "a b c", UnknownOperator),
            ("k!", "k!", UnknownOperator),
            ("k < 3", "k < 3", UnknownOperator),
        ];
        for (selector, entry, problem) in cases {
            let err =
                TargetRules::parse(&map(&[(NAMESPACE_SELECTOR_ANNOTATION, selector)])).unwrap_err();
            let expected = AnnotationError::Selector {
                entry: entry.to_owned(),
                problem,
            };
            assert_eq!(err, expected, "{selector:?}");
            assert_eq!(err.metric_label(), "namespace_selector");
        }
    }

    #[test]
    fn selector_keys_follow_kubernetes_rules() {
        // Kubernetes limits a key's prefix as a whole (253), not each of its labels.
        let long_label = format!("{}.example.com/k", "p".repeat(64));
        let key = long_label.as_str();
        assert!(selector_matches(&format!("{key}=v"), &[(key, "v")]));
        let prefix253 = format!("{}/k", "p".repeat(253));
        let key = prefix253.as_str();
        assert!(selector_matches(&format!("{key}=v"), &[(key, "v")]));
        let prefix254 = format!("{}/k=v", "p".repeat(254));
        let err = TargetRules::parse(&map(&[(NAMESPACE_SELECTOR_ANNOTATION, &prefix254)]));
        assert_eq!(
            err,
            Err(AnnotationError::Selector {
                entry: prefix254.clone(),
                problem: SelectorProblem::InvalidKey,
            })
        );
    }

    #[test]
    fn selector_matching() {
        let prod = [("env", "prod"), ("team", "a")];
        let cases: &[(&str, Pairs<'_>, bool)] = &[
            ("", &[], true),
            ("env=prod", &prod, true),
            ("env=dev", &prod, false),
            ("env=prod", &[], false),
            ("env==prod", &prod, true),
            ("env!=dev", &prod, true),
            ("env!=prod", &prod, false),
            ("env!=prod", &[], true), // missing key matches !=
            ("env in (dev,prod)", &prod, true),
            ("env in (dev,qa)", &prod, false),
            ("env in (prod)", &[], false),
            ("env notin (dev,qa)", &prod, true),
            ("env notin (dev,prod)", &prod, false),
            ("env notin (dev)", &[], true), // missing key matches notin
            ("env", &prod, true),
            ("env", &[], false),
            ("!env", &prod, false),
            ("!env", &[], true),
            ("env=", &[("env", "")], true), // empty value allowed
            ("env=", &prod, false),
            ("env in (,prod)", &prod, true),
            (
                "example.com/tier.x_y=a",
                &[("example.com/tier.x_y", "a")],
                true,
            ),
            // Multiple requirements are AND-ed.
            ("env=prod,team=a", &prod, true),
            ("env=prod,team=b", &prod, false),
            ("env in (prod,dev),!legacy,team", &prod, true),
            ("env in (prod,dev),legacy", &prod, false),
            // Whitespace variants.
            ("  env = prod  ,  team  ", &prod, true),
            ("env != dev", &prod, true),
            ("env  ==  prod", &prod, true),
            ("env in(prod)", &prod, true),
            ("env notin(dev)", &prod, true),
            ("env in ( dev , prod )", &prod, true),
            ("env\tin\t(prod)", &prod, true),
            ("! env", &[], true),
        ];
        for &(selector, labels, want) in cases {
            assert_eq!(
                selector_matches(selector, labels),
                want,
                "{selector:?} on {labels:?}"
            );
        }
    }

    #[test]
    fn wants_follows_rules_in_order() {
        let protected = ["kube-system".to_string(), "kube-public".to_string()];
        let scope = Scope {
            source_namespace: "push-to-k8s",
            exclude_label: Some("push-to-k8s/ignore"),
            protected: &protected,
            require_consent: false,
            cluster: None,
            stamp: None,
        };
        let everything = rules(&[]);
        let opted_out = ns(&[("push-to-k8s/ignore", "")]);
        let terminating = NamespaceInfo {
            terminating: true,
            ..ns(&[])
        };
        let prod = ns(&[("env", "prod")]);
        let cases: &[(&str, TargetRules, &str, &NamespaceInfo, bool)] = &[
            (
                "default: any namespace",
                everything.clone(),
                "team-a",
                &ns(&[]),
                true,
            ),
            // Rule 1.
            (
                "never the source namespace",
                everything.clone(),
                "push-to-k8s",
                &ns(&[]),
                false,
            ),
            (
                "never the source namespace, even named",
                rules(&[(NAMESPACES_ANNOTATION, "push-to-k8s")]),
                "push-to-k8s",
                &ns(&[]),
                false,
            ),
            (
                "never terminating",
                everything.clone(),
                "team-a",
                &terminating,
                false,
            ),
            // Rule 2.
            (
                "exclude label, any value",
                everything.clone(),
                "team-a",
                &opted_out,
                false,
            ),
            (
                "exclude label beats explicit naming",
                rules(&[(NAMESPACES_ANNOTATION, "team-a")]),
                "team-a",
                &opted_out,
                false,
            ),
            // Rule 3.
            (
                "exclusion beats inclusion",
                rules(&[
                    (NAMESPACES_ANNOTATION, "team-a"),
                    (EXCLUDE_NAMESPACES_ANNOTATION, "team-*"),
                ]),
                "team-a",
                &ns(&[]),
                false,
            ),
            (
                "exclusion glob does not hit others",
                rules(&[(EXCLUDE_NAMESPACES_ANNOTATION, "team-?")]),
                "team-ab",
                &ns(&[]),
                true,
            ),
            // Rule 4.
            (
                "protected by default",
                everything.clone(),
                "kube-system",
                &ns(&[]),
                false,
            ),
            (
                "protected reached by exact name",
                rules(&[(NAMESPACES_ANNOTATION, "team-*, kube-system")]),
                "kube-system",
                &ns(&[]),
                true,
            ),
            (
                "protected not reached by glob",
                rules(&[(NAMESPACES_ANNOTATION, "kube-*")]),
                "kube-system",
                &ns(&[]),
                false,
            ),
            (
                "glob still reaches unprotected kube-*",
                rules(&[(NAMESPACES_ANNOTATION, "kube-*")]),
                "kube-apps",
                &ns(&[]),
                true,
            ),
            (
                "exclusion beats naming a protected namespace",
                rules(&[
                    (NAMESPACES_ANNOTATION, "kube-system"),
                    (EXCLUDE_NAMESPACES_ANNOTATION, "kube-system"),
                ]),
                "kube-system",
                &ns(&[]),
                false,
            ),
            // Rule 5.
            (
                "included by glob",
                rules(&[(NAMESPACES_ANNOTATION, "team-*")]),
                "team-a",
                &ns(&[]),
                true,
            ),
            (
                "not in the list",
                rules(&[(NAMESPACES_ANNOTATION, "team-*,billing")]),
                "other",
                &ns(&[]),
                false,
            ),
            // Rule 6.
            (
                "selector matches",
                rules(&[(NAMESPACE_SELECTOR_ANNOTATION, "env=prod")]),
                "team-a",
                &prod,
                true,
            ),
            (
                "selector does not match",
                rules(&[(NAMESPACE_SELECTOR_ANNOTATION, "env=prod")]),
                "team-a",
                &ns(&[]),
                false,
            ),
            (
                "list and selector are AND-ed",
                rules(&[
                    (NAMESPACES_ANNOTATION, "team-*"),
                    (NAMESPACE_SELECTOR_ANNOTATION, "env=prod"),
                ]),
                "billing",
                &prod,
                false,
            ),
            (
                "selector also applies to a named protected namespace",
                rules(&[
                    (NAMESPACES_ANNOTATION, "kube-system"),
                    (NAMESPACE_SELECTOR_ANNOTATION, "env=prod"),
                ]),
                "kube-system",
                &ns(&[]),
                false,
            ),
        ];
        for (what, rules, name, info, want) in cases {
            assert_eq!(rules.wants(&scope, "db", name, info), *want, "{what}");
        }
    }

    fn key_filter(pairs: Pairs<'_>) -> KeyFilter {
        KeyFilter::parse(&map(pairs)).expect("key filter parses")
    }

    #[test]
    fn key_filter_keeps_included_keys_and_exclusions_win() {
        let keys = [
            "tls.crt",
            "tls.key",
            "ca.crt",
            "password",
            "DB_URL",
            "app-config.yaml",
            "tls",
        ];
        let cases: &[(&str, Pairs<'_>, &[&str])] = &[
            ("no annotation: every key", &[], &keys),
            (
                "empty annotations: every key",
                &[
                    (INCLUDE_KEYS_ANNOTATION, " , "),
                    (EXCLUDE_KEYS_ANNOTATION, ""),
                ],
                &keys,
            ),
            (
                "names",
                &[(INCLUDE_KEYS_ANNOTATION, "password, DB_URL")],
                &["password", "DB_URL"],
            ),
            (
                "prefix glob: '.' is an ordinary character",
                &[(INCLUDE_KEYS_ANNOTATION, "tls.*")],
                &["tls.crt", "tls.key"],
            ),
            (
                "suffix glob",
                &[(INCLUDE_KEYS_ANNOTATION, "*.crt")],
                &["tls.crt", "ca.crt"],
            ),
            (
                "'?' is one character",
                &[(INCLUDE_KEYS_ANNOTATION, "???.crt,t?s")],
                &["tls.crt", "tls"],
            ),
            (
                "case-sensitive",
                &[(INCLUDE_KEYS_ANNOTATION, "db_url,Password")],
                &[],
            ),
            (
                "exclusion only",
                &[(EXCLUDE_KEYS_ANNOTATION, "*.key,password")],
                &["tls.crt", "ca.crt", "DB_URL", "app-config.yaml", "tls"],
            ),
            (
                "exclusions win over names",
                &[
                    (INCLUDE_KEYS_ANNOTATION, "tls.*,password"),
                    (EXCLUDE_KEYS_ANNOTATION, "tls.key,password"),
                ],
                &["tls.crt"],
            ),
            (
                "exclusions win over globs",
                &[
                    (INCLUDE_KEYS_ANNOTATION, "*"),
                    (EXCLUDE_KEYS_ANNOTATION, "*.key"),
                ],
                &[
                    "tls.crt",
                    "ca.crt",
                    "password",
                    "DB_URL",
                    "app-config.yaml",
                    "tls",
                ],
            ),
            (
                "an include that matches nothing keeps nothing",
                &[(INCLUDE_KEYS_ANNOTATION, "nothing-*")],
                &[],
            ),
        ];
        for (what, annotations, want) in cases {
            let f = key_filter(annotations);
            let kept: Vec<&str> = keys.iter().copied().filter(|k| f.keeps(k)).collect();
            assert_eq!(kept, *want, "{what}");
        }
    }

    #[test]
    fn key_filter_errors() {
        let long = "k".repeat(254);
        let cases = [
            ("tls.[ck]*", KeyEntryProblem::InvalidChar),
            ("tls/crt", KeyEntryProblem::InvalidChar),
            ("my key", KeyEntryProblem::InvalidChar),
            ("käse", KeyEntryProblem::InvalidChar),
            ("a:b", KeyEntryProblem::InvalidChar),
            (long.as_str(), KeyEntryProblem::TooLong),
        ];
        for (key, label) in [
            (INCLUDE_KEYS_ANNOTATION, "include_keys"),
            (EXCLUDE_KEYS_ANNOTATION, "exclude_keys"),
        ] {
            for (entry, problem) in cases {
                let value = format!("ok.crt, {entry} ,other");
                let err = KeyFilter::parse(&map(&[(key, &value)])).unwrap_err();
                let expected = AnnotationError::KeyEntry {
                    key,
                    entry: entry.to_owned(),
                    problem,
                };
                assert_eq!(err, expected, "{key}: {entry:?}");
                assert_eq!(err.metric_label(), label);
            }
        }
        // 253 characters and every allowed character are fine.
        let fine = format!("{},A-Z_a.z-0?9*", "k".repeat(253));
        assert!(KeyFilter::parse(&map(&[(INCLUDE_KEYS_ANNOTATION, &fine)])).is_ok());
        let err = KeyFilter::parse(&map(&[(EXCLUDE_KEYS_ANNOTATION, "tls.[ck]*")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"annotation push-to-k8s.io/exclude-keys: "tls.[ck]*" is not a valid data key or glob (allowed: A-Z, a-z, 0-9, '-', '_', '.', '*', '?')"#
        );
        // The key filter is not a target rule: target rules ignore it.
        assert!(TargetRules::parse(&map(&[(INCLUDE_KEYS_ANNOTATION, "tls.[")])).is_ok());
    }

    #[test]
    fn wants_without_exclude_label() {
        let scope = Scope {
            source_namespace: "src",
            exclude_label: None,
            protected: &[],
            require_consent: false,
            cluster: None,
            stamp: None,
        };
        let info = ns(&[("push-to-k8s/ignore", "true")]);
        assert!(TargetRules::default().wants(&scope, "db", "kube-system", &info));
    }

    #[test]
    fn consent_and_opt_out() {
        const ACCEPT_DB: &str = "accept.push-to-k8s.io/db";
        const OPT_OUT_DB: &str = "opt-out.push-to-k8s.io/db";
        let protected = ["kube-system".to_string()];
        let everything = rules(&[]);
        let named = |list: &str| rules(&[(NAMESPACES_ANNOTATION, list)]);
        // (what, consent mode, source, rules, namespace, its labels, want)
        type Case<'a> = (
            &'a str,
            bool,
            &'a str,
            TargetRules,
            &'a str,
            Pairs<'a>,
            bool,
        );
        let cases: &[Case<'_>] = &[
            // Consent mode off: consent labels change nothing, opt-outs apply.
            (
                "off: no labels",
                false,
                "db",
                everything.clone(),
                "team-a",
                &[],
                true,
            ),
            (
                "off: a consent for another source is no restriction",
                false,
                "db",
                everything.clone(),
                "team-a",
                &[("accept.push-to-k8s.io/other", "true")],
                true,
            ),
            (
                "off: opt-out of everything",
                false,
                "db",
                everything.clone(),
                "team-a",
                &[(OPT_OUT_LABEL, "all")],
                false,
            ),
            (
                "off: opt-out counts whatever its value",
                false,
                "db",
                everything.clone(),
                "team-a",
                &[(OPT_OUT_LABEL, "false")],
                false,
            ),
            (
                "off: opt-out of this source",
                false,
                "db",
                everything.clone(),
                "team-a",
                &[(OPT_OUT_DB, "true")],
                false,
            ),
            (
                "off: opt-out of another source only",
                false,
                "db",
                everything.clone(),
                "team-a",
                &[("opt-out.push-to-k8s.io/db-old", "true")],
                true,
            ),
            (
                "off: opt-out beats a source naming the namespace",
                false,
                "db",
                named("team-a"),
                "team-a",
                &[(OPT_OUT_LABEL, "true")],
                false,
            ),
            (
                "off: opt-out beats naming a protected namespace",
                false,
                "db",
                named("kube-system"),
                "kube-system",
                &[(OPT_OUT_DB, "")],
                false,
            ),
            (
                "off: opt-out beats an opt-in",
                false,
                "db",
                everything.clone(),
                "team-a",
                &[(ACCEPT_LABEL, "all"), (OPT_OUT_LABEL, "all")],
                false,
            ),
            // Consent mode on: nothing without consent.
            (
                "on: no labels",
                true,
                "db",
                everything.clone(),
                "team-a",
                &[],
                false,
            ),
            (
                "on: no consent, though the source names the namespace",
                true,
                "db",
                named("team-a"),
                "team-a",
                &[],
                false,
            ),
            (
                "on: accepts all",
                true,
                "db",
                everything.clone(),
                "team-a",
                &[(ACCEPT_LABEL, "all")],
                true,
            ),
            (
                "on: only `all` accepts all",
                true,
                "db",
                everything.clone(),
                "team-a",
                &[(ACCEPT_LABEL, "true")],
                false,
            ),
            (
                "on: a source name as the value is not a consent",
                true,
                "db",
                everything.clone(),
                "team-a",
                &[(ACCEPT_LABEL, "db")],
                false,
            ),
            (
                "on: accepts this source",
                true,
                "db",
                everything.clone(),
                "team-a",
                &[(ACCEPT_DB, "true")],
                true,
            ),
            (
                "on: only `true` accepts a source",
                true,
                "db",
                everything.clone(),
                "team-a",
                &[(ACCEPT_DB, "yes")],
                false,
            ),
            (
                "on: names are matched exactly, not as prefixes",
                true,
                "db",
                everything.clone(),
                "team-a",
                &[
                    ("accept.push-to-k8s.io/d", "true"),
                    ("accept.push-to-k8s.io/db-old", "true"),
                    ("accept.push-to-k8s.io/db.x", "true"),
                    ("accept.push-to-k8s.io/dc", "true"),
                    ("x.accept.push-to-k8s.io/db", "true"),
                    ("push-to-k8s.io/db", "true"),
                ],
                false,
            ),
            (
                "on: a source name with dots",
                true,
                "tls.example.com",
                everything.clone(),
                "team-a",
                &[("accept.push-to-k8s.io/tls.example.com", "true")],
                true,
            ),
            (
                "on: accepts another source only",
                true,
                "db",
                everything.clone(),
                "team-a",
                &[("accept.push-to-k8s.io/other", "true")],
                false,
            ),
            (
                "on: per-source opt-out beats accepting all",
                true,
                "db",
                everything.clone(),
                "team-a",
                &[(ACCEPT_LABEL, "all"), (OPT_OUT_DB, "true")],
                false,
            ),
            (
                "on: opt-out beats accepting this source",
                true,
                "db",
                everything.clone(),
                "team-a",
                &[(ACCEPT_DB, "true"), (OPT_OUT_LABEL, "all")],
                false,
            ),
            // Consent lifts only its own requirement; every other rule holds.
            (
                "on: consent does not beat the exclude label",
                true,
                "db",
                everything.clone(),
                "team-a",
                &[(ACCEPT_LABEL, "all"), ("skip", "")],
                false,
            ),
            (
                "on: consent does not beat the source's exclusions",
                true,
                "db",
                rules(&[(EXCLUDE_NAMESPACES_ANNOTATION, "team-*")]),
                "team-a",
                &[(ACCEPT_LABEL, "all")],
                false,
            ),
            (
                "on: consent does not reach outside the source's list",
                true,
                "db",
                named("billing"),
                "team-a",
                &[(ACCEPT_DB, "true")],
                false,
            ),
            (
                "on: consent does not open a protected namespace",
                true,
                "db",
                everything.clone(),
                "kube-system",
                &[(ACCEPT_LABEL, "all")],
                false,
            ),
            (
                "on: a protected namespace named exactly, with consent",
                true,
                "db",
                named("kube-system"),
                "kube-system",
                &[(ACCEPT_DB, "true")],
                true,
            ),
            (
                "on: a protected namespace named exactly, without consent",
                true,
                "db",
                named("kube-system"),
                "kube-system",
                &[],
                false,
            ),
            (
                "on: consent does not beat the selector",
                true,
                "db",
                rules(&[(NAMESPACE_SELECTOR_ANNOTATION, "env=prod")]),
                "team-a",
                &[(ACCEPT_LABEL, "all")],
                false,
            ),
            (
                "on: the consent label can be selected on",
                true,
                "db",
                rules(&[(NAMESPACE_SELECTOR_ANNOTATION, "push-to-k8s.io/accept=all")]),
                "team-a",
                &[(ACCEPT_LABEL, "all")],
                true,
            ),
            (
                "on: never the source namespace",
                true,
                "db",
                everything.clone(),
                "push-to-k8s",
                &[(ACCEPT_LABEL, "all")],
                false,
            ),
        ];
        for (what, require_consent, source, rules, name, labels, want) in cases {
            let scope = Scope {
                source_namespace: "push-to-k8s",
                exclude_label: Some("skip"),
                protected: &protected,
                require_consent: *require_consent,
                cluster: None,
                stamp: None,
            };
            let info = ns(labels);
            assert_eq!(rules.wants(&scope, source, name, &info), *want, "{what}");
            // A terminating namespace never gets a copy, whatever it accepts.
            let terminating = NamespaceInfo {
                terminating: true,
                ..info
            };
            assert!(
                !rules.wants(&scope, source, name, &terminating),
                "{what}, terminating"
            );
        }
    }

    #[test]
    fn consent_and_opt_out_label_keys_are_valid_for_any_short_source_name() {
        // The per-source labels put the source's name in the key's name part:
        // valid for every object name of up to 63 characters (DNS-1123
        // subdomains are a subset of label key names), too long beyond.
        for source in ["db", "tls.example.com", "a-b.c-d", &"a".repeat(63)] {
            for prefix in [ACCEPT_SOURCE_PREFIX, OPT_OUT_SOURCE_PREFIX] {
                let key = format!("{prefix}{source}");
                assert_eq!(names::label_key(&key), Ok(()), "{key}");
            }
        }
        let key = format!("{ACCEPT_SOURCE_PREFIX}{}", "a".repeat(64));
        assert!(names::label_key(&key).is_err());
        for key in [ACCEPT_LABEL, OPT_OUT_LABEL] {
            assert_eq!(names::label_key(key), Ok(()), "{key}");
        }
        assert_eq!(names::label_value(ACCEPT_ALL), Ok(()));
    }
}
