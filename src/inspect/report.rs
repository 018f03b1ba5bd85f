//! What `push-to-k8s status` and `push-to-k8s plan` report, decided from the
//! daemon's own plan (pure; the cluster is read in [`crate::inspect`]).
//!
//! There is no second definition of "in sync" here: the planner is asked for
//! everything ([`crate::observe::batch::DirtyKey::All`], as at the daemon's start),
//! and each namespace a source wants ([`plan::wanted_namespaces`], the
//! planner's own target rules) is classified by what the plan does there:
//! a create means the copy is missing, an apply or replace that it is stale,
//! nothing with a known conflict that an unmanaged object is in the way, and
//! nothing else that it is in sync. A delete is a copy that should not exist
//! (its source is gone, it is no longer targeted there, or it has an old
//! name): orphaned. A source the planner refuses is reported with its reason.
//! So `status` says "in sync" exactly when `plan` lists no write and nothing
//! is blocked or refused.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::decide::plan::{Action, Plan, World};
pub use crate::decide::standing::{Counts, SourceStatus, State, classify};
use crate::model::rules::Scope;

/// Everything `status` and `plan` print: per kind, the plan for everything
/// and where each source stands.
#[derive(Debug, Default)]
pub struct Report {
    /// The source namespace.
    pub namespace: String,
    /// Every planned write, per kind in plan order.
    pub actions: Vec<Action>,
    pub sources: Vec<SourceStatus>,
    /// With a Vault target: where each source with a Vault path stands.
    pub vault: Vec<VaultStatus>,
    /// Remote clusters: each registered one, and each a source names that
    /// is not registered.
    pub clusters: Vec<ClusterStatus>,
    /// PushRules: per source namespace rules name, where their sources stand
    /// in this cluster and what would be written (the same report, nested).
    pub rules: Vec<Report>,
}

/// A remote cluster, as `status` sees it (read in `inspect`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    /// Its registration name.
    pub name: String,
    /// `served` (looked at: `sources` says where each stands),
    /// `unreachable` (its API could not be listed), `refused` (its
    /// registration is not used) or `not-registered` (a source names it, no
    /// Secret registers it: copies there are no longer managed).
    pub state: &'static str,
    pub note: String,
    /// The sources with copies wanted or found there.
    pub sources: Vec<SourceStatus>,
    /// What the daemon would write there.
    pub actions: Vec<Action>,
}

impl ClusterStatus {
    pub fn in_sync(&self) -> bool {
        self.state == "served" && self.sources.iter().all(SourceStatus::is_in_sync)
    }

    pub fn totals(&self) -> Counts {
        let mut t = Counts::default();
        for s in &self.sources {
            t += s.counts();
        }
        t
    }

    /// A served cluster's status from its world and the plan for `All`:
    /// only the sources that want copies there or have some.
    pub fn served(name: &str) -> ClusterStatus {
        ClusterStatus {
            name: name.to_string(),
            state: "served",
            note: String::new(),
            sources: Vec::new(),
            actions: Vec::new(),
        }
    }

    pub fn add(&mut self, world: &World<'_>, scope: &Scope<'_>, plan: Plan) {
        self.sources.extend(
            classify(world, scope, &plan)
                .into_iter()
                .filter(|s| !matches!(s.state, State::Refused { .. }))
                .filter(|s| s.counts() != Counts::default()),
        );
        self.actions.extend(plan.actions);
    }
}

/// One source's Vault entry, as `status` sees it (read in `inspect`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VaultStatus {
    pub kind: &'static str,
    pub source: String,
    /// `<mount>/<path>`, or the annotation's value when it does not parse.
    pub path: String,
    /// `in-sync`, `missing`, `stale`, `conflict`, `adopt` (would be adopted),
    /// `unfinished` (our data without our metadata: the daemon finishes
    /// it), `refused` (a bad annotation or value) or `unreadable` (Vault
    /// did not answer).
    pub state: &'static str,
    pub note: String,
}

impl VaultStatus {
    /// The state `step` stands for.
    pub fn state_of(step: &crate::targets::vault::entry::Step) -> (&'static str, String) {
        use crate::targets::vault::entry::Step;
        match step {
            Step::Nothing => ("in-sync", String::new()),
            Step::Create => ("missing", String::new()),
            Step::Write { .. } => ("stale", "changed, deleted or edited in Vault".into()),
            Step::Adopt { .. } => ("adopt", "not ours; the source asks for adoption".into()),
            Step::Verify { .. } => (
                "unfinished",
                "our create, cut short after its data write perhaps".into(),
            ),
            Step::Conflict { owner } => ("conflict", owner.whose()),
        }
    }

    /// A write the daemon would make for it.
    fn writes(&self) -> bool {
        matches!(self.state, "missing" | "stale" | "adopt" | "unfinished")
    }
}

impl Report {
    pub fn new(namespace: &str) -> Report {
        Report {
            namespace: namespace.to_string(),
            ..Report::default()
        }
    }

    /// Add one kind: its world and the planner's plan of it for `All`.
    pub fn add(&mut self, world: &World<'_>, scope: &Scope<'_>, plan: Plan) {
        self.sources.extend(classify(world, scope, &plan));
        self.actions.extend(plan.actions);
    }

    pub fn in_sync(&self) -> bool {
        self.sources.iter().all(SourceStatus::is_in_sync)
            && self.vault.iter().all(|v| v.state == "in-sync")
            && self.clusters.iter().all(ClusterStatus::in_sync)
            && self.rules.iter().all(Report::in_sync)
    }

    /// The remote clusters' table of `status`; with `verbose` every
    /// namespace there by state.
    fn clusters_text(&self, verbose: bool) -> String {
        if self.clusters.is_empty() {
            return String::new();
        }
        let mut rows = vec![
            [
                "CLUSTER", "STATE", "WANTED", "IN-SYNC", "MISSING", "STALE", "CONFLICT",
                "ORPHANED", "",
            ]
            .map(String::from)
            .to_vec(),
        ];
        let mut details = String::new();
        for c in &self.clusters {
            let mut row = vec![c.name.clone(), c.state.to_string()];
            if c.state == "served" {
                let t = c.totals();
                let numbers = [
                    t.wanted, t.in_sync, t.missing, t.stale, t.conflict, t.orphaned,
                ];
                row.extend(numbers.iter().map(usize::to_string));
            } else {
                row.extend(["-"; 6].map(String::from));
            }
            row.push(c.note.clone());
            rows.push(row);
            if !verbose {
                continue;
            }
            for s in &c.sources {
                let heading = format!("\n{} {} in cluster {}:\n", s.kind, s.source, c.name);
                details.push_str(&heading);
                details.push_str(&s.namespace_lines());
            }
        }
        let registered = self.clusters.iter().filter(|c| c.state != "not-registered");
        let in_sync = registered.clone().filter(|c| c.in_sync()).count();
        let summary = match registered.count() {
            0 => String::new(),
            n => format!("clusters: {in_sync} of {n} registered clusters in sync\n"),
        };
        format!("\nRemote clusters:\n{}{details}{summary}", table(&rows))
    }

    /// The Vault table of `status`, and its summary.
    fn vault_text(&self) -> String {
        if self.vault.is_empty() {
            return String::new();
        }
        let mut rows = vec![
            ["KIND", "SOURCE", "VAULT ENTRY", "STATE", ""]
                .map(String::from)
                .to_vec(),
        ];
        for v in &self.vault {
            rows.push(vec![
                v.kind.to_string(),
                v.source.clone(),
                v.path.clone(),
                v.state.to_string(),
                v.note.clone(),
            ]);
        }
        let in_sync = self.vault.iter().filter(|v| v.state == "in-sync").count();
        format!(
            "\nVault entries:\n{}vault: {in_sync} of {} entries in sync\n",
            table(&rows),
            self.vault.len()
        )
    }

    /// Every copy: here and in the remote clusters looked at.
    pub fn totals(&self) -> Counts {
        let mut t = Counts::default();
        for s in &self.sources {
            t += s.counts();
        }
        for c in &self.clusters {
            t += c.totals();
        }
        for r in &self.rules {
            t += r.totals();
        }
        t
    }

    fn refused(&self) -> usize {
        self.sources
            .iter()
            .filter(|s| matches!(s.state, State::Refused { .. }))
            .count()
            + self.rules.iter().map(Report::refused).sum::<usize>()
    }

    /// `status` for people: a table, with `verbose` every namespace by state,
    /// and a summary line.
    pub fn status_text(&self, verbose: bool) -> String {
        let mut out = self.sources_text(verbose, "Sources");
        out.push_str(&self.vault_text());
        out.push_str(&self.clusters_text(verbose));
        for r in &self.rules {
            out.push('\n');
            out.push_str(&r.sources_text(verbose, "PushRule sources"));
            out.push_str(&r.vault_text());
        }
        let t = self.totals();
        let copies = if t.wanted == 1 { "copy" } else { "copies" };
        self.summary(&mut out, t, copies);
        out
    }

    /// The sources' table of `status` (`what` in namespace ...), with
    /// `verbose` every namespace by state.
    fn sources_text(&self, verbose: bool, what: &str) -> String {
        let mut rows = vec![
            [
                "KIND", "SOURCE", "WANTED", "IN-SYNC", "MISSING", "STALE", "CONFLICT", "ORPHANED",
                "",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for s in &self.sources {
            let c = s.counts();
            let mut row = vec![s.kind.name().to_string(), s.source.clone()];
            let note = match (&s.state, &s.copy) {
                (State::Refused { reason, message }, _) => {
                    row.extend(["-"; 6].map(String::from));
                    row.push(format!("refused ({reason}): {message}"));
                    rows.push(row);
                    continue;
                }
                (State::Gone, _) => "source gone: its copies are deleted".to_string(),
                (State::Pushed, Some(copy)) if *copy != s.source => format!("copies named {copy}"),
                (State::Pushed, _) => String::new(),
            };
            let numbers = [
                c.wanted, c.in_sync, c.missing, c.stale, c.conflict, c.orphaned,
            ];
            row.extend(numbers.iter().map(usize::to_string));
            row.push(note);
            rows.push(row);
        }
        let mut out = if self.sources.is_empty() {
            format!(
                "No {} in namespace {}.\n",
                what.to_lowercase(),
                self.namespace
            )
        } else {
            format!("{what} in namespace {}:\n{}", self.namespace, table(&rows))
        };
        if verbose {
            // One line per namespace: `grep missing` finds them all.
            for s in &self.sources {
                out.push_str(&format!("\n{} {}:\n", s.kind, s.source));
                out.push_str(&s.namespace_lines());
                match &s.state {
                    State::Refused { message, .. } => {
                        out.push_str(&format!("  {:<8}  {message}\n", "refused"))
                    }
                    _ if s.counts() == Counts::default() => {
                        out.push_str("  (no namespace should hold a copy)\n")
                    }
                    _ => {}
                }
            }
            out.push('\n');
        }
        out
    }

    /// The summary line of `status`.
    fn summary(&self, out: &mut String, t: Counts, copies: &str) {
        if self.in_sync() {
            out.push_str(&format!(
                "in sync: {} of {} {copies}\n",
                t.in_sync, t.wanted
            ));
        } else if self
            .sources
            .iter()
            .chain(self.clusters.iter().flat_map(|c| &c.sources))
            .chain(self.rules.iter().flat_map(|r| &r.sources))
            .all(SourceStatus::is_in_sync)
        {
            // Then what is not in sync is a Vault entry or a cluster not served.
            let vault = !self.vault.iter().all(|v| v.state == "in-sync");
            let what = match (vault, self.clusters.iter().any(|c| c.state != "served")) {
                (true, true) => "every Vault entry nor every remote cluster",
                (true, false) => "every Vault entry",
                _ => "every remote cluster",
            };
            out.push_str(&format!(
                "not in sync: {} of {} {copies} in sync, but not {what}\n",
                t.in_sync, t.wanted
            ));
        } else {
            out.push_str(&format!(
                "not in sync: {} of {} {copies} in sync; {} missing, {} stale, {} in conflict, {} orphaned, {} refused source{}\n",
                t.in_sync,
                t.wanted,
                t.missing,
                t.stale,
                t.conflict,
                t.orphaned,
                self.refused(),
                if self.refused() == 1 { "" } else { "s" }
            ));
        }
    }

    /// `status -o json`: counts per source and in total; with `verbose` the
    /// namespaces too.
    pub fn status_json<'a>(&'a self, verbose: bool) -> String {
        #[derive(Serialize)]
        struct Names<'a> {
            in_sync: &'a [String],
            missing: &'a [String],
            stale: &'a [String],
            conflict: &'a [String],
            orphaned: &'a [String],
        }
        #[derive(Serialize)]
        struct Refusal<'a> {
            reason: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct Source<'a> {
            kind: &'static str,
            name: &'a str,
            /// `pushed`, `refused` or `gone`.
            state: &'static str,
            copy_name: Option<&'a str>,
            in_sync: bool,
            counts: Counts,
            #[serde(skip_serializing_if = "Option::is_none")]
            refusal: Option<Refusal<'a>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            namespaces: Option<Names<'a>>,
        }
        #[derive(Serialize)]
        struct Totals {
            sources: usize,
            refused: usize,
            #[serde(flatten)]
            counts: Counts,
        }
        #[derive(Serialize)]
        struct Cluster<'a> {
            name: &'a str,
            /// `served`, `unreachable`, `refused` or `not-registered`.
            state: &'static str,
            note: &'a str,
            in_sync: bool,
            counts: Counts,
            sources: Vec<Source<'a>>,
        }
        #[derive(Serialize)]
        struct Status<'a> {
            namespace: &'a str,
            in_sync: bool,
            totals: Totals,
            sources: Vec<Source<'a>>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            vault: &'a [VaultStatus],
            #[serde(skip_serializing_if = "Vec::is_empty")]
            clusters: Vec<Cluster<'a>>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            rules: Vec<RuleSources<'a>>,
        }
        /// The sources PushRules pick in one namespace.
        #[derive(Serialize)]
        struct RuleSources<'a> {
            namespace: &'a str,
            in_sync: bool,
            counts: Counts,
            sources: Vec<Source<'a>>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            vault: &'a [VaultStatus],
        }
        let source = |s: &'a SourceStatus| Source {
            kind: s.kind.name(),
            name: &s.source,
            state: match s.state {
                State::Pushed => "pushed",
                State::Refused { .. } => "refused",
                State::Gone => "gone",
            },
            copy_name: s.copy.as_deref(),
            in_sync: s.is_in_sync(),
            counts: s.counts(),
            refusal: match &s.state {
                State::Refused { reason, message } => Some(Refusal { reason, message }),
                _ => None,
            },
            namespaces: verbose.then_some(Names {
                in_sync: &s.in_sync,
                missing: &s.missing,
                stale: &s.stale,
                conflict: &s.conflict,
                orphaned: &s.orphaned,
            }),
        };
        let sources = self.sources.iter().map(source).collect();
        let clusters = self
            .clusters
            .iter()
            .map(|c| Cluster {
                name: &c.name,
                state: c.state,
                note: &c.note,
                in_sync: c.in_sync(),
                counts: c.totals(),
                sources: c.sources.iter().map(source).collect(),
            })
            .collect();
        let status = Status {
            namespace: &self.namespace,
            in_sync: self.in_sync(),
            totals: Totals {
                sources: self.sources.len(),
                refused: self.refused(),
                counts: self.totals(),
            },
            sources,
            vault: &self.vault,
            clusters,
            rules: self
                .rules
                .iter()
                .map(|r| RuleSources {
                    namespace: &r.namespace,
                    in_sync: r.in_sync(),
                    counts: r.totals(),
                    sources: r.sources.iter().map(source).collect(),
                    vault: &r.vault,
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&status).expect("status serializes");
        text.push('\n');
        text
    }

    /// Writes by op, in the order create, apply, replace, delete.
    fn ops(&self) -> [(&'static str, usize); 4] {
        ["create", "apply", "replace", "delete"].map(|op| {
            (
                op,
                self.all_actions().filter(|(_, _, a)| a.op() == op).count(),
            )
        })
    }

    /// Every planned write, with the remote cluster it goes to (`None`:
    /// here) and its source's namespace: here, per remote cluster, then the
    /// PushRules' sources.
    fn all_actions(&self) -> impl Iterator<Item = (Option<&str>, &str, &Action)> {
        let ns = self.namespace.as_str();
        let here = self.actions.iter().map(move |a| (None, ns, a));
        let remote = self.clusters.iter().flat_map(move |c| {
            c.actions
                .iter()
                .map(move |a| (Some(c.name.as_str()), ns, a))
        });
        let rules = self.rules.iter().flat_map(|r| {
            r.actions
                .iter()
                .map(move |a| (None, r.namespace.as_str(), a))
        });
        here.chain(remote).chain(rules)
    }

    /// `plan` for people: one line per write, then a summary.
    pub fn plan_text(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .all_actions()
            .map(|(cluster, from, a)| {
                let key = a.key();
                let mut row = vec![
                    a.op().to_string(),
                    a.kind().name().to_string(),
                    format!("{}/{}", key.namespace, key.name),
                    format!("from {from}/{}", a.source()),
                ];
                if let Some(c) = cluster {
                    row.push(format!("in cluster {c}"));
                }
                row
            })
            .collect();
        let mut out = table(&rows);
        let n = rows.len();
        if n == 0 {
            out.push_str("no writes: the controller would change nothing");
        } else {
            let by_op: Vec<String> = self
                .ops()
                .iter()
                .filter(|(_, k)| *k > 0)
                .map(|(op, k)| format!("{k} {op}"))
                .collect();
            out.push_str(&format!(
                "{n} write{} ({})",
                if n == 1 { "" } else { "s" },
                by_op.join(", ")
            ));
        }
        out.push_str("; nothing was written\n");
        for r in std::iter::once(self).chain(&self.rules) {
            for v in r.vault.iter().filter(|v| v.writes()) {
                out.push_str(&format!(
                    "vault write {} from {}/{} ({})\n",
                    v.path, r.namespace, v.source, v.state
                ));
            }
        }
        let t = self.totals();
        let refused = self.refused();
        if t.conflict > 0 || refused > 0 {
            out.push_str(&format!(
                "not written: {} cop{} blocked by an object push-to-k8s does not manage, {} refused source{} (push-to-k8s status --verbose names them)\n",
                t.conflict,
                if t.conflict == 1 { "y" } else { "ies" },
                refused,
                if refused == 1 { "" } else { "s" }
            ));
        }
        out
    }

    /// `plan -o json`: every write, the counts by op, and what is not written.
    pub fn plan_json(&self) -> String {
        #[derive(Serialize)]
        struct Write<'a> {
            op: &'static str,
            kind: &'static str,
            namespace: String,
            name: String,
            source: &'a str,
            /// A remote cluster's registration name; absent here.
            #[serde(skip_serializing_if = "Option::is_none")]
            cluster: Option<&'a str>,
            /// A PushRule's source's namespace; absent for a labelled source.
            #[serde(skip_serializing_if = "Option::is_none")]
            source_namespace: Option<&'a str>,
        }
        #[derive(Serialize)]
        struct Blocked<'a> {
            kind: &'static str,
            namespace: &'a str,
            name: &'a str,
            source: &'a str,
        }
        #[derive(Serialize)]
        struct Refused<'a> {
            kind: &'static str,
            source: &'a str,
            reason: &'a str,
            message: &'a str,
        }
        #[derive(Serialize)]
        struct PlanJson<'a> {
            namespace: &'a str,
            writes: Vec<Write<'a>>,
            summary: BTreeMap<&'static str, usize>,
            conflicts: Vec<Blocked<'a>>,
            refused: Vec<Refused<'a>>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            vault_writes: Vec<&'a VaultStatus>,
        }
        let writes: Vec<Write<'_>> = self
            .all_actions()
            .map(|(cluster, from, a)| {
                let key = a.key();
                Write {
                    op: a.op(),
                    kind: a.kind().name(),
                    namespace: key.namespace,
                    name: key.name,
                    source: a.source(),
                    cluster,
                    source_namespace: (from != self.namespace).then_some(from),
                }
            })
            .collect();
        let mut summary: BTreeMap<&'static str, usize> = self.ops().into_iter().collect();
        summary.insert("total", writes.len());
        let mut conflicts = Vec::new();
        let mut refused = Vec::new();
        for s in self
            .sources
            .iter()
            .chain(self.rules.iter().flat_map(|r| &r.sources))
        {
            let copy = s.copy.as_deref().unwrap_or(&s.source);
            conflicts.extend(s.conflict.iter().map(|ns| Blocked {
                kind: s.kind.name(),
                namespace: ns,
                name: copy,
                source: &s.source,
            }));
            if let State::Refused { reason, message } = &s.state {
                refused.push(Refused {
                    kind: s.kind.name(),
                    source: &s.source,
                    reason,
                    message,
                });
            }
        }
        let plan = PlanJson {
            namespace: &self.namespace,
            writes,
            summary,
            conflicts,
            refused,
            // Its own sources' and the rule namespaces' (the path tells them apart).
            vault_writes: std::iter::once(self)
                .chain(&self.rules)
                .flat_map(|r| r.vault.iter().filter(|v| v.writes()))
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&plan).expect("plan serializes");
        text.push('\n');
        text
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::plan;
    use crate::model::kinds::Kind;
    use crate::model::records::{ObjectKey, ReplicaRecord, SourceRecord};
    use crate::model::rules::NamespaceInfo;
    use crate::observe::batch::DirtyKey;
    use k8s_openapi::api::core::v1::Secret;
    use std::collections::{HashMap, HashSet};

    const SRC: &str = "src";

    fn secret(name: &str, value: &str, annotations: &[(&str, &str)]) -> Secret {
        crate::fixtures::source_secret(SRC, name, value, annotations)
    }

    /// The record of a copy of `s` in `ns` exactly as we would write it.
    fn copy(ns: &str, s: &Secret) -> (ObjectKey, ReplicaRecord) {
        crate::fixtures::copy_record(SRC, ns, s)
    }

    /// A cluster: namespaces (plus the source namespace and kube-system),
    /// sources, copies and known conflicts.
    struct Cluster {
        sources: HashMap<String, SourceRecord>,
        namespaces: HashMap<String, NamespaceInfo>,
        replicas: HashMap<ObjectKey, ReplicaRecord>,
        conflicts: HashSet<ObjectKey>,
    }

    impl Cluster {
        fn new(namespaces: &[&str]) -> Cluster {
            let mut n: HashMap<String, NamespaceInfo> = namespaces
                .iter()
                .map(|n| (n.to_string(), NamespaceInfo::default()))
                .collect();
            for always in [SRC, "kube-system"] {
                n.insert(always.into(), NamespaceInfo::default());
            }
            Cluster {
                sources: HashMap::new(),
                namespaces: n,
                replicas: HashMap::new(),
                conflicts: HashSet::new(),
            }
        }

        fn source(&mut self, s: &Secret) {
            self.sources
                .extend([SourceRecord::from_secret(s, SRC).unwrap()]);
        }

        /// The daemon's plan for everything, and the report made from it.
        fn report(&self) -> (Plan, Report) {
            let protected = vec!["kube-system".to_string()];
            let scope = Scope {
                source_namespace: SRC,
                exclude_label: Some("skip"),
                protected: &protected,
                require_consent: false,
                cluster: None,
                stamp: None,
            };
            let accepted = HashMap::new();
            let world = World {
                kind: Kind::Secret,
                sources: &self.sources,
                namespaces: &self.namespaces,
                replicas: &self.replicas,
                conflicts: &self.conflicts,
                accepted: &accepted,
            };
            let p = plan::plan(&world, &scope, &[DirtyKey::All]);
            let mut report = Report::new(SRC);
            // The planner is pure: the same plan again.
            report.add(&world, &scope, plan::plan(&world, &scope, &[DirtyKey::All]));
            (p, report)
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Every state at once, as the e2e test sets it up: in sync, stale
    /// (edited), missing (deleted), conflict (unmanaged object), excluded,
    /// orphaned (gone source; copy outside a narrowed source's targets).
    fn mixed() -> Cluster {
        let mut c = Cluster::new(&["a", "b", "c", "d", "e", "skipped"]);
        c.namespaces.insert(
            "skipped".into(),
            NamespaceInfo {
                labels: BTreeMap::from([("skip".into(), String::new())]),
                terminating: false,
            },
        );
        let db = secret("db", "v2", &[]);
        c.source(&db);
        let old = secret("db", "v1", &[]);
        c.replicas
            .extend([copy("a", &db), copy("b", &old), copy("e", &db)]);
        // c: deleted; d: an unmanaged Secret named db, found at start.
        c.conflicts.insert(ObjectKey::new(Kind::Secret, "d", "db"));
        // A source gone while the controller was down: its copy is orphaned.
        c.replicas.extend([copy("a", &secret("gone", "v1", &[]))]);
        // A source narrowed to namespace a: its copy in b is orphaned.
        let narrow = secret("narrow", "v1", &[("push-to-k8s.io/namespaces", "a")]);
        c.source(&narrow);
        c.replicas.extend([copy("a", &narrow), copy("b", &narrow)]);
        c
    }

    #[test]
    fn every_namespace_is_classified_by_what_the_plan_does_there() {
        let (p, report) = mixed().report();
        let ops: Vec<_> = p
            .actions
            .iter()
            .map(|a| (a.op(), a.key().to_string()))
            .collect();
        assert_eq!(
            ops,
            vec![
                ("create", "Secret c/db".to_string()),
                ("apply", "Secret b/db".to_string()),
                ("delete", "Secret a/gone".to_string()),
                ("delete", "Secret b/narrow".to_string()),
            ]
        );
        let db = SourceStatus {
            kind: Kind::Secret,
            source: "db".into(),
            copy: Some("db".into()),
            state: State::Pushed,
            in_sync: strings(&["a", "e"]),
            missing: strings(&["c"]),
            stale: strings(&["b"]),
            conflict: strings(&["d"]),
            orphaned: vec![],
        };
        let gone = SourceStatus {
            copy: None,
            state: State::Gone,
            orphaned: strings(&["a/gone"]),
            ..SourceStatus::new(Kind::Secret, "gone")
        };
        let narrow = SourceStatus {
            copy: Some("narrow".into()),
            state: State::Pushed,
            in_sync: strings(&["a"]),
            orphaned: strings(&["b/narrow"]),
            ..SourceStatus::new(Kind::Secret, "narrow")
        };
        assert_eq!(report.sources, vec![db, gone, narrow]);
        assert_eq!(
            report.totals(),
            Counts {
                wanted: 6,
                in_sync: 3,
                missing: 1,
                stale: 1,
                conflict: 1,
                orphaned: 2
            }
        );
        assert!(!report.in_sync());
        // Every planned write is reported exactly once.
        let reported: usize = report
            .sources
            .iter()
            .map(|s| s.missing.len() + s.stale.len() + s.orphaned.len())
            .sum();
        assert_eq!(reported, p.actions.len());
    }

    #[test]
    fn in_sync_exactly_when_the_plan_is_empty_and_nothing_is_blocked_or_refused() {
        // Converged: every wanted namespace holds our copy.
        let mut c = Cluster::new(&["a", "b"]);
        let db = secret("db", "v1", &[]);
        c.source(&db);
        c.replicas.extend([copy("a", &db), copy("b", &db)]);
        let (p, report) = c.report();
        assert_eq!(p, Plan::default());
        assert!(report.in_sync());
        assert_eq!(report.totals().in_sync, 2);

        // A known conflict plans no write, but is not in sync.
        c.replicas.remove(&ObjectKey::new(Kind::Secret, "b", "db"));
        c.conflicts.insert(ObjectKey::new(Kind::Secret, "b", "db"));
        let (p, report) = c.report();
        assert!(p.actions.is_empty());
        assert!(!report.in_sync());
        assert_eq!(report.sources[0].conflict, strings(&["b"]));

        // Nor is a refused source (its copies are left as they are).
        let mut c = Cluster::new(&["a"]);
        c.source(&secret(
            "bad",
            "v1",
            &[("push-to-k8s.io/namespaces", "Bad_[")],
        ));
        let (p, report) = c.report();
        assert!(p.actions.is_empty());
        assert_eq!(p.refused.len(), 1);
        assert!(!report.in_sync());
        let State::Refused { reason, message } = &report.sources[0].state else {
            panic!("{:?}", report.sources[0]);
        };
        assert_eq!(*reason, "InvalidAnnotation");
        assert!(message.contains("push-to-k8s.io/namespaces"), "{message}");
        assert_eq!(report.sources[0].counts(), Counts::default());

        // No sources and no copies: in sync.
        let (_, report) = Cluster::new(&["a"]).report();
        assert!(report.in_sync());
    }

    #[test]
    fn an_immutable_stale_copy_is_stale_and_a_renamed_copy_is_named() {
        let mut c = Cluster::new(&["a", "b"]);
        let mut v1 = secret("db", "v1", &[]);
        v1.immutable = Some(true);
        c.replicas.extend([copy("a", &v1)]);
        let renamed = secret(
            "db",
            "v2",
            &[(crate::model::vocabulary::COPY_NAME_ANNOTATION, "db-copy")],
        );
        c.source(&renamed);
        let (p, report) = c.report();
        let ops: Vec<_> = p
            .actions
            .iter()
            .map(|a| (a.op(), a.key().to_string()))
            .collect();
        assert_eq!(
            ops,
            vec![
                ("create", "Secret a/db-copy".to_string()),
                ("create", "Secret b/db-copy".to_string()),
                ("delete", "Secret a/db".to_string()),
            ]
        );
        let s = &report.sources[0];
        assert_eq!(s.copy.as_deref(), Some("db-copy"));
        assert_eq!(s.missing, strings(&["a", "b"]));
        assert_eq!(s.orphaned, strings(&["a/db"]));

        // Same name, new content, immutable: a replace, reported as stale.
        let mut c = Cluster::new(&["a"]);
        c.replicas.extend([copy("a", &v1)]);
        c.source(&secret("db", "v2", &[]));
        let (p, report) = c.report();
        assert_eq!(p.actions[0].op(), "replace");
        assert_eq!(report.sources[0].stale, strings(&["a"]));
    }

    #[test]
    fn remote_clusters_are_counted_and_an_unregistered_one_is_no_longer_managed() {
        // One cluster served with a copy missing there, one named by a
        // source and registered by nothing.
        let mut east = Cluster::new(&["a"]);
        east.source(&secret(
            "db",
            "v1",
            &[("push-to-k8s.io/clusters", "east,west")],
        ));
        let protected = vec!["kube-system".to_string()];
        let scope = Scope {
            source_namespace: SRC,
            exclude_label: None,
            protected: &protected,
            require_consent: false,
            cluster: Some("east"),
            stamp: Some("home"),
        };
        let accepted = HashMap::new();
        let world = World {
            kind: Kind::Secret,
            sources: &east.sources,
            namespaces: &east.namespaces,
            replicas: &east.replicas,
            conflicts: &east.conflicts,
            accepted: &accepted,
        };
        let mut served = ClusterStatus::served("east");
        served.add(&world, &scope, plan::plan(&world, &scope, &[DirtyKey::All]));
        let mut unregistered = ClusterStatus::served("west");
        unregistered.state = "not-registered";
        unregistered.note =
            "cluster west is not registered: its copies there, if any, are no longer managed"
                .into();
        let mut report = Report::new(SRC);
        report.clusters = vec![served, unregistered];

        assert!(!report.in_sync());
        assert_eq!(report.totals().missing, 1);
        let text = report.status_text(true);
        assert!(
            text.contains("east     served          1       0        1"),
            "{text}"
        );
        assert!(text.contains("no longer managed"), "{text}");
        assert!(
            text.contains("Secret db in cluster east:\n  missing   a\n"),
            "{text}"
        );
        assert!(
            text.contains("clusters: 0 of 1 registered clusters in sync"),
            "{text}"
        );
        assert!(
            report
                .plan_text()
                .starts_with("create  Secret  a/db  from src/db  in cluster east\n"),
            "{}",
            report.plan_text()
        );
        let v: serde_json::Value = serde_json::from_str(&report.status_json(false)).unwrap();
        assert_eq!(v["clusters"][1]["state"], "not-registered");
        assert_eq!(v["clusters"][0]["counts"]["missing"], 1);
        let p: serde_json::Value = serde_json::from_str(&report.plan_json()).unwrap();
        assert_eq!(p["writes"][0]["cluster"], "east");

        // Only the unregistered cluster left: nothing counts it as registered.
        report.clusters.remove(0);
        let text = report.status_text(false);
        assert!(!text.contains("registered clusters in sync"), "{text}");
        assert!(text.ends_with("but not every remote cluster\n"), "{text}");
    }

    #[test]
    fn status_text_counts_and_with_verbose_names() {
        let (_, report) = mixed().report();
        let text = report.status_text(false);
        assert_eq!(
            text,
            "\
Sources in namespace src:
KIND    SOURCE  WANTED  IN-SYNC  MISSING  STALE  CONFLICT  ORPHANED
Secret  db      5       2        1        1      1         0
Secret  gone    0       0        0        0      0         1         source gone: its copies are deleted
Secret  narrow  1       1        0        0      0         1
not in sync: 3 of 6 copies in sync; 1 missing, 1 stale, 1 in conflict, 2 orphaned, 0 refused sources
"
        );
        let verbose = report.status_text(true);
        for line in [
            "Secret db:\n  in-sync   a\n  in-sync   e\n  missing   c\n  stale     b\n  conflict  d\n",
            "Secret gone:\n  orphaned  a/gone\n",
            "Secret narrow:\n  in-sync   a\n  orphaned  b/narrow\n",
        ] {
            assert!(verbose.contains(line), "{line:?} in\n{verbose}");
        }
    }

    #[test]
    fn status_json_has_counts_and_with_verbose_names() {
        let (_, report) = mixed().report();
        let v: serde_json::Value = serde_json::from_str(&report.status_json(false)).unwrap();
        assert_eq!(v["in_sync"], false);
        assert_eq!(
            v["totals"],
            serde_json::json!({"sources": 3, "refused": 0, "wanted": 6, "in_sync": 3,
                               "missing": 1, "stale": 1, "conflict": 1, "orphaned": 2})
        );
        assert_eq!(
            v["sources"][0],
            serde_json::json!({"kind": "Secret", "name": "db", "state": "pushed",
                "copy_name": "db", "in_sync": false,
                "counts": {"wanted": 5, "in_sync": 2, "missing": 1, "stale": 1,
                           "conflict": 1, "orphaned": 0}})
        );
        assert_eq!(v["sources"][1]["state"], "gone");
        let v: serde_json::Value = serde_json::from_str(&report.status_json(true)).unwrap();
        assert_eq!(
            v["sources"][0]["namespaces"],
            serde_json::json!({"in_sync": ["a", "e"], "missing": ["c"], "stale": ["b"],
                               "conflict": ["d"], "orphaned": []})
        );
    }

    #[test]
    fn plan_lists_each_write_and_what_is_not_written() {
        let (_, report) = mixed().report();
        assert_eq!(
            report.plan_text(),
            "\
create  Secret  c/db      from src/db
apply   Secret  b/db      from src/db
delete  Secret  a/gone    from src/gone
delete  Secret  b/narrow  from src/narrow
4 writes (1 create, 1 apply, 2 delete); nothing was written
not written: 1 copy blocked by an object push-to-k8s does not manage, 0 refused sources (push-to-k8s status --verbose names them)
"
        );
        let v: serde_json::Value = serde_json::from_str(&report.plan_json()).unwrap();
        assert_eq!(
            v["writes"][0],
            serde_json::json!({"op": "create", "kind": "Secret", "namespace": "c",
                               "name": "db", "source": "db"})
        );
        assert_eq!(
            v["summary"],
            serde_json::json!({"total": 4, "create": 1, "apply": 1, "replace": 0, "delete": 2})
        );
        assert_eq!(
            v["conflicts"],
            serde_json::json!([{"kind": "Secret", "namespace": "d", "name": "db", "source": "db"}])
        );

        let mut c = Cluster::new(&["a"]);
        let db = secret("db", "v1", &[]);
        c.source(&db);
        c.replicas.extend([copy("a", &db)]);
        let (_, report) = c.report();
        assert_eq!(
            report.plan_text(),
            "no writes: the controller would change nothing; nothing was written\n"
        );
        assert_eq!(
            report.status_text(false).lines().last(),
            Some("in sync: 1 of 1 copy")
        );
    }

    #[test]
    fn vault_entries_count_towards_in_sync_and_their_writes_are_planned() {
        let mut report = Report::new("src");
        let entry = |source: &str, state| VaultStatus {
            kind: "Secret",
            source: source.into(),
            path: format!("secret/apps/{source}"),
            state,
            note: String::new(),
        };
        report.vault = vec![entry("db", "in-sync")];
        assert!(report.in_sync());
        assert!(
            report
                .status_text(false)
                .contains("vault: 1 of 1 entries in sync")
        );
        report.vault.push(entry("api", "stale"));
        report.vault.push(entry("old", "conflict"));
        assert!(!report.in_sync());
        let text = report.status_text(false);
        assert!(text.contains("but not every Vault entry"), "{text}");
        let plan = report.plan_text();
        assert!(
            plan.contains("vault write secret/apps/api from src/api (stale)"),
            "{plan}"
        );
        assert!(
            !plan.contains("apps/old"),
            "a conflict is not written: {plan}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.status_json(false)).unwrap();
        assert_eq!(json["vault"][1]["state"], "stale");

        // A PushRule's source with `spec.vault`: in its namespace's section.
        let mut ingress = Report::new("ingress");
        ingress.vault = vec![entry("cert", "missing")];
        report.vault.clear();
        report.rules.push(ingress);
        assert!(!report.in_sync());
        assert!(
            report
                .status_text(false)
                .contains("vault: 0 of 1 entries in sync")
        );
        let plan = report.plan_text();
        assert!(
            plan.contains("vault write secret/apps/cert from ingress/cert (missing)"),
            "{plan}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.status_json(false)).unwrap();
        assert_eq!(json["rules"][0]["vault"][0]["state"], "missing");
        let json: serde_json::Value = serde_json::from_str(&report.plan_json()).unwrap();
        assert_eq!(json["vault_writes"][0]["path"], "secret/apps/cert");
    }
}
