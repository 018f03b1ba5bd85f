//! Where each source stands (pure): every namespace a source wants, classified
//! by what the planner's plan for everything does there (a create: missing;
//! an apply or replace: stale; nothing with a known conflict: in conflict;
//! nothing else: in sync; a delete: orphaned). `push-to-k8s status` and
//! `plan` ([`crate::inspect::report`]) and a PushRule's status
//! ([`crate::targets::rules`]) read it, so they can never disagree.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use crate::decide::plan::{self, Action, Plan, World};
use crate::model::kinds::Kind;
use crate::model::records::ObjectKey;
use crate::model::rules::Scope;

/// Whether a source is pushed at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Pushed,
    /// Not pushed (its copies are left as they are): the planner's reason.
    Refused {
        reason: &'static str,
        message: String,
    },
    /// No such source (deleted or unlabelled); copies of it are left.
    Gone,
}

/// One source of one kind, and where its copies stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStatus {
    pub kind: Kind,
    /// The source's name (in the source namespace).
    pub source: String,
    /// The name its copies have; `None` for a gone source.
    pub copy: Option<String>,
    pub state: State,
    /// Namespaces that should hold a copy, by what the plan does there.
    pub in_sync: Vec<String>,
    pub missing: Vec<String>,
    pub stale: Vec<String>,
    pub conflict: Vec<String>,
    /// Copies (`namespace/name`) that should not exist: the plan deletes them.
    pub orphaned: Vec<String>,
}

impl SourceStatus {
    pub fn new(kind: Kind, source: &str) -> SourceStatus {
        SourceStatus {
            kind,
            source: source.to_string(),
            copy: None,
            state: State::Gone,
            in_sync: Vec::new(),
            missing: Vec::new(),
            stale: Vec::new(),
            conflict: Vec::new(),
            orphaned: Vec::new(),
        }
    }

    pub fn counts(&self) -> Counts {
        Counts {
            wanted: self.in_sync.len()
                + self.missing.len()
                + self.stale.len()
                + self.conflict.len(),
            in_sync: self.in_sync.len(),
            missing: self.missing.len(),
            stale: self.stale.len(),
            conflict: self.conflict.len(),
            orphaned: self.orphaned.len(),
        }
    }

    /// One line per namespace, by state (`  missing   team-a`): `grep`
    /// finds them all.
    pub fn namespace_lines(&self) -> String {
        let lists = [
            ("in-sync", &self.in_sync),
            ("missing", &self.missing),
            ("stale", &self.stale),
            ("conflict", &self.conflict),
            ("orphaned", &self.orphaned),
        ];
        let mut out = String::new();
        for (state, names) in lists {
            for n in names {
                out.push_str(&format!("  {state:<8}  {n}\n"));
            }
        }
        out
    }

    /// Nothing to write, nothing in the way, and pushed (or gone with no copy left).
    pub fn is_in_sync(&self) -> bool {
        let c = self.counts();
        c.wanted == c.in_sync && c.orphaned == 0 && !matches!(self.state, State::Refused { .. })
    }
}

/// How many namespaces are in each state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Namespaces that should hold a copy: `in_sync + missing + stale + conflict`.
    pub wanted: usize,
    pub in_sync: usize,
    pub missing: usize,
    pub stale: usize,
    pub conflict: usize,
    pub orphaned: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.wanted += o.wanted;
        self.in_sync += o.in_sync;
        self.missing += o.missing;
        self.stale += o.stale;
        self.conflict += o.conflict;
        self.orphaned += o.orphaned;
    }
}

/// Where every source of `world` stands, from `plan`: the planner's plan of
/// `world` for [`crate::observe::batch::DirtyKey::All`]. One entry per source, and one
/// per gone source whose copies the plan deletes, in name order.
pub fn classify(world: &World<'_>, scope: &Scope<'_>, plan: &Plan) -> Vec<SourceStatus> {
    let mut actions: BTreeMap<&str, Vec<&Action>> = BTreeMap::new();
    for a in &plan.actions {
        actions.entry(a.source()).or_default().push(a);
    }
    let mut names: BTreeSet<&str> = world.sources.keys().map(String::as_str).collect();
    names.extend(actions.keys().copied());
    let mut out = Vec::new();
    for name in names {
        let mut s = SourceStatus::new(world.kind, name);
        let mut written = HashSet::new();
        for a in actions.get(name).into_iter().flatten() {
            let key = a.key();
            match a {
                Action::Create { .. } => s.missing.push(key.namespace.clone()),
                Action::Update { .. } | Action::Replace { .. } => {
                    s.stale.push(key.namespace.clone())
                }
                Action::Delete { .. } => {
                    s.orphaned.push(format!("{}/{}", key.namespace, key.name));
                    continue;
                }
            }
            written.insert(key.namespace);
        }
        if let Some(source) = world.sources.get(name) {
            let copy = source.replica.name.as_str();
            s.copy = Some(copy.to_string());
            // The plan refuses exactly the sources whose rules do not parse.
            let rules = plan::rules(source);
            let refusal = plan
                .refused
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, r)| r)
                .or(rules.as_ref().err());
            if let Some(r) = refusal {
                s.state = State::Refused {
                    reason: r.reason(),
                    message: r.to_string(),
                };
            } else if let Ok(rules) = &rules {
                s.state = State::Pushed;
                for ns in plan::wanted_namespaces(rules, scope, name, world.namespaces) {
                    if written.contains(ns) {
                        continue;
                    }
                    if world
                        .conflicts
                        .contains(&ObjectKey::new(world.kind, ns, copy))
                    {
                        s.conflict.push(ns.to_string());
                    } else {
                        s.in_sync.push(ns.to_string());
                    }
                }
            }
        }
        for v in [&mut s.missing, &mut s.stale, &mut s.orphaned] {
            v.sort();
        }
        out.push(s);
    }
    out
}
