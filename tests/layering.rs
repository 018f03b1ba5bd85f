//! The tree is the flow (issue 17): no import cycle between the modules of
//! `src/`, and no module importing one of a later stage's.
//!
//! The stages, top to bottom (a module may import its own stage's modules and
//! those below it, never one above):
//!
//! `main` → `inspect` → `controller` → `targets` → `decide` → `write` →
//! `observe` → `operate` → `model`
//!
//! How it reads the code: every `.rs` file under `src/` is a module (`mod.rs`
//! is its folder's); the product part of a file is everything before its
//! first `#[cfg(test)]` (unit tests may reach anywhere). A module depends on
//! another when its product code names it by a `crate::` path, a `super::`
//! path, a `self::` path or by the name of one of its own child modules; the
//! longest existing module a path names is the one it depends on. Declaring
//! a child (`pub mod site;`) is no dependency; naming an item of it is, and so
//! is a child naming its parent's. Comments are ignored.
//!
//! The two tests at the end show the check can fail: a cycle and an upward
//! import, each in a made-up tree.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

mod source_tree;

/// The stages from the bottom up: a top-level module's rank.
const STAGES: &[&str] = &[
    "model",
    "operate",
    "observe",
    "decide",
    "write",
    "targets",
    "controller",
    "inspect",
    "lib",
    "main",
    // Test builds only (`#[cfg(test)]` in lib.rs): the mock API server.
    "fixtures",
];

/// Module path (`targets::remote::site`) → product source text.
fn modules(src: &Path) -> BTreeMap<String, String> {
    source_tree::files(src)
        .into_iter()
        .map(|(path, text)| {
            let rel = path.strip_prefix(src).expect("under src");
            let mut parts: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            (parts.join("::"), product(&text))
        })
        .collect()
}

/// The product part of a file: up to its first `#[cfg(test)]`, comments out.
fn product(text: &str) -> String {
    text.lines()
        .take_while(|l| l.trim() != "#[cfg(test)]")
        .map(|l| match l.find("//") {
            // A `//` inside a string literal ("http://") keeps the line.
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths `text` names: `crate::a::b`, `super::a`, `self::a`, and `use`
/// groups (`crate::{a, b::c}`) expanded, each as written (segments).
fn paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_');
        if starts_word && bytes[i].is_alphabetic() {
            let (path, end) = read_path(&bytes, i);
            if path.len() > 1 || path.last().is_some_and(|p| p.starts_with('{')) {
                expand(&path, &mut out);
            }
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

/// Reads `a::b::{c, d::e}` from `at`; a `{...}` group is kept as one segment.
fn read_path(chars: &[char], at: usize) -> (Vec<String>, usize) {
    let mut segs = Vec::new();
    let mut i = at;
    loop {
        if chars.get(i) == Some(&'{') {
            let mut depth = 0;
            let start = i;
            while i < chars.len() {
                match chars[i] {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            segs.push(chars[start..i].iter().collect());
            return (segs, i);
        }
        let start = i;
        while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        if i == start {
            return (segs, i);
        }
        segs.push(chars[start..i].iter().collect());
        if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
            i += 2;
        } else {
            return (segs, i);
        }
    }
}

/// Expands a trailing `{...}` group into one path per item.
fn expand(path: &[String], out: &mut Vec<Vec<String>>) {
    match path.last() {
        Some(last) if last.starts_with('{') => {
            let prefix = &path[..path.len() - 1];
            let inner: Vec<char> = last[1..last.len() - 1].chars().collect();
            let mut depth = 0;
            let mut item = String::new();
            let mut items = Vec::new();
            for c in inner {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        items.push(std::mem::take(&mut item));
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            items.push(item);
            for item in items {
                let chars: Vec<char> = item.trim().chars().collect();
                if chars.is_empty() {
                    continue;
                }
                let (rest, _) = read_path(&chars, 0);
                let mut full = prefix.to_vec();
                full.extend(rest);
                expand(&full, out);
            }
        }
        _ => out.push(path.to_vec()),
    }
}

/// The module `path` (named from inside `from`) depends on, if it names one.
fn target(path: &[String], from: &str, known: &BTreeSet<String>) -> Option<String> {
    let here: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    let (mut base, rest): (Vec<String>, &[String]) = match path[0].as_str() {
        "crate" => (Vec::new(), &path[1..]),
        "self" => (here.iter().map(|s| s.to_string()).collect(), &path[1..]),
        "super" => {
            let mut b: Vec<String> = here.iter().map(|s| s.to_string()).collect();
            let mut rest = path;
            while rest.first().is_some_and(|s| s == "super") {
                b.pop();
                rest = &rest[1..];
            }
            // `super::` alone names the parent itself.
            if rest.is_empty() || !known.contains(&join(&b, &rest[..1])) {
                return (!b.is_empty()).then(|| b.join("::")).filter(|m| m != from);
            }
            (b, rest)
        }
        // A child module named by its bare name.
        child if known.contains(&join(&here_owned(&here), &[child.to_string()])) => {
            (here_owned(&here), path)
        }
        _ => return None,
    };
    let mut found = None;
    for seg in rest {
        base.push(seg.clone());
        let name = base.join("::");
        if known.contains(&name) {
            found = Some(name);
        } else {
            break;
        }
    }
    // A module containing `from` (its parent or above) named with `crate::`.
    found.filter(|m| m != from)
}

fn here_owned(here: &[&str]) -> Vec<String> {
    here.iter().map(|s| s.to_string()).collect()
}

fn join(base: &[String], more: &[String]) -> String {
    base.iter()
        .chain(more)
        .cloned()
        .collect::<Vec<_>>()
        .join("::")
}

/// Module → the modules it depends on.
fn graph(mods: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    mods.iter()
        .map(|(m, text)| {
            let deps = paths(text)
                .iter()
                .filter_map(|p| target(p, m, &known))
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

/// The cycles of `g` (each strongly connected set of more than one module).
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: order by finish time, then walk the reversed graph.
    fn visit(
        v: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) {
        if !seen.insert(v.to_string()) {
            return;
        }
        for w in g.get(v).into_iter().flatten() {
            visit(w, g, seen, order);
        }
        order.push(v.to_string());
    }
    let mut seen = BTreeSet::new();
    let mut order = Vec::new();
    for v in g.keys() {
        visit(v, g, &mut seen, &mut order);
    }
    let mut rev: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (v, ws) in g {
        for w in ws {
            rev.entry(w.clone()).or_default().insert(v.clone());
        }
    }
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for v in order.iter().rev() {
        if done.contains(v) {
            continue;
        }
        let mut comp = Vec::new();
        let mut stack = vec![v.clone()];
        while let Some(x) = stack.pop() {
            if !done.insert(x.clone()) {
                continue;
            }
            comp.push(x.clone());
            for w in rev.get(&x).into_iter().flatten() {
                stack.push(w.clone());
            }
        }
        if comp.len() > 1 {
            comp.sort();
            out.push(comp);
        }
    }
    out
}

fn rank(module: &str) -> usize {
    let top = module.split("::").next().unwrap_or("lib");
    let top = if top.is_empty() { "lib" } else { top };
    STAGES
        .iter()
        .position(|s| *s == top)
        .unwrap_or_else(|| panic!("src/{top}: not a stage of STAGES in tests/layering.rs"))
}

/// Every import of a module of a later stage, as "from -> to".
fn upward(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (m, deps) in g {
        for d in deps {
            if rank(d) > rank(m) {
                out.push(format!("{m} -> {d}"));
            }
        }
    }
    out
}

/// Checks a tree: the cycles and upward imports, worded.
fn problems(mods: &BTreeMap<String, String>) -> Vec<String> {
    let g = graph(mods);
    let mut found = cycles(&g);
    found.sort();
    let mut out: Vec<String> = found
        .into_iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|a| {
                    g[a].iter()
                        .filter(|b| c.contains(b))
                        .map(move |b| format!("{a} -> {b}"))
                })
                .collect();
            format!("import cycle: {}", edges.join(", "))
        })
        .collect();
    out.extend(
        upward(&g)
            .into_iter()
            .map(|e| format!("import of a later stage: {e}")),
    );
    out
}

#[test]
fn src_has_no_import_cycle_and_no_upward_import() {
    let mods = modules(&source_tree::src());
    assert!(mods.len() > 30, "read only {} modules", mods.len());
    // The reader sees real dependencies (so an empty graph cannot pass).
    let g = graph(&mods);
    assert!(
        g["controller"].contains("targets::cluster::writer"),
        "{:?}",
        g["controller"]
    );
    assert!(
        g["targets::remote"].contains("targets::remote::site")
            || g["targets::remote::site"].contains("targets::cluster::writer")
    );
    let problems = problems(&mods);
    assert!(
        problems.is_empty(),
        "stages: {}\n  {}",
        STAGES.join(" < "),
        problems.join("\n  ")
    );
}

fn tree(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(m, t)| (m.to_string(), product(t)))
        .collect()
}

#[test]
fn a_cycle_through_a_use_group_and_a_child_module_is_found() {
    let mods = tree(&[
        ("", "pub mod model; pub mod targets;"),
        ("model", "pub mod a; pub mod b;"),
        ("model::a", "use crate::model::{b::Thing, kinds};"),
        ("model::b", "pub struct Thing; fn f() { super::a::g() }"),
        ("targets", "pub mod remote;"),
        ("targets::remote", "pub mod site; use site::Pass;"),
        (
            "targets::remote::site",
            "use crate::targets::remote::CLUSTER; // crate::model::a in a comment",
        ),
    ]);
    let problems = problems(&mods);
    assert_eq!(
        problems,
        vec![
            "import cycle: model::a -> model::b, model::b -> model::a".to_string(),
            "import cycle: targets::remote -> targets::remote::site, targets::remote::site -> targets::remote".to_string(),
        ]
    );
}

#[test]
fn an_import_of_a_later_stage_is_found() {
    let mods = tree(&[
        ("", ""),
        ("model", "pub mod records;"),
        (
            "model::records",
            "use crate::targets::remote::CLUSTER_LABEL;",
        ),
        ("targets", "pub mod remote;"),
        ("targets::remote", "use crate::model::records::Record;"),
    ]);
    assert_eq!(
        problems(&mods),
        vec![
            "import cycle: model::records -> targets::remote, targets::remote -> model::records"
                .to_string(),
            "import of a later stage: model::records -> targets::remote".to_string(),
        ]
    );
}
