//! Every label and annotation key the product reads or writes is documented in
//! the README's "Labels and annotations" tables, with an example (issue 16 item
//! 15: `push-to-k8s.io/copy-name` was read by the code and named nowhere).
//!
//! The keys are taken from the string literals of `src/` outside its unit
//! tests (`#[cfg(test)]` onwards): every `push-to-k8s.io/<key>` and every
//! `<prefix>.push-to-k8s.io/` label prefix. A key the code adds and the README
//! does not name fails this test, and so does a README row without an example.

use std::collections::BTreeSet;
use std::path::Path;

mod source_tree;

const DOMAIN: &str = "push-to-k8s.io/";

/// The string literals of `text` (plain `"..."` ones; the product has no raw
/// string holding a key).
fn literals(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = match line.find("//") {
            // A comment start inside a literal ("http://") is rare in keys; keep
            // the whole line then.
            Some(i) if line[..i].matches('"').count() % 2 == 0 => &line[..i],
            _ => line,
        };
        let mut parts = code.split('"');
        parts.next();
        while let Some(lit) = parts.next() {
            out.push(lit.to_string());
            parts.next();
        }
    }
    out
}

/// The keys a literal holds: `push-to-k8s.io/<key>` (the key a run of
/// `[a-z0-9.-]`), or a `<prefix>.push-to-k8s.io/` prefix written as
/// `<prefix>.push-to-k8s.io/<source>`. The bare control prefix
/// (`push-to-k8s.io/`) names no key.
fn keys_in(lit: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = lit[from..].find(DOMAIN) {
        let at = from + i;
        let before = &lit[..at];
        let prefix_start = before
            .rfind(|c: char| {
                !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            })
            .map_or(0, |p| p + 1);
        let prefix = &before[prefix_start..];
        let rest = &lit[at + DOMAIN.len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.')
            .collect();
        if !prefix.is_empty() {
            out.push(format!("{prefix}{DOMAIN}<source>"));
        } else if !name.is_empty() {
            out.push(format!("{DOMAIN}{name}"));
        }
        from = at + DOMAIN.len();
    }
    out
}

fn code_keys() -> BTreeSet<String> {
    let files = source_tree::files(&source_tree::src());
    let mut keys = BTreeSet::new();
    for (_, text) in &files {
        for lit in literals(text) {
            keys.extend(keys_in(&lit));
        }
    }
    keys
}

/// The rows of the README's "Labels and annotations" section: (key, example).
fn readme_rows() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let start = readme
        .find("\n## Labels and annotations\n")
        .expect("the README has a 'Labels and annotations' section");
    let section = &readme[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |e| e + 3);
    section[..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            // "", key, kind, example, meaning, ""
            assert!(
                cells.len() >= 6,
                "a row with key, kind, example and meaning: {l}"
            );
            (cells[1].trim_matches('`').to_string(), cells[3].to_string())
        })
        .collect()
}

#[test]
fn every_key_the_code_uses_is_in_the_readme_with_an_example() {
    let keys = code_keys();
    // The scan itself works: the keys of issue 16's report are found.
    for known in [
        "push-to-k8s.io/copy-name",
        "push-to-k8s.io/source",
        "push-to-k8s.io/cluster",
        "accept.push-to-k8s.io/<source>",
    ] {
        assert!(
            keys.contains(known),
            "the scan of src/ finds {known}: {keys:?}"
        );
    }
    let rows = readme_rows();
    let documented: BTreeSet<&str> = rows.iter().map(|(k, _)| k.as_str()).collect();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !documented.contains(k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "keys the code reads or writes that README.md's 'Labels and annotations' tables do not name: {missing:?}"
    );
    for (key, example) in &rows {
        assert!(
            !example.is_empty() && example != "-",
            "README row for {key} has no example"
        );
    }
}

#[test]
fn the_readme_names_no_key_the_code_does_not_know() {
    let keys = code_keys();
    let stale: Vec<String> = readme_rows()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.contains(DOMAIN) && !keys.contains(k))
        .collect();
    assert!(
        stale.is_empty(),
        "README.md documents keys no code reads or writes: {stale:?}"
    );
}

#[test]
fn the_source_label_and_field_manager_are_documented() {
    let rows = readme_rows();
    assert!(
        rows.iter()
            .any(|(k, e)| k == "push-to-k8s" && e.contains("push-to-k8s: source")),
        "the source label row"
    );
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let files = source_tree::files(&source_tree::src());
    let managers: BTreeSet<String> = files
        .iter()
        .flat_map(|(_, text)| text.lines())
        .filter_map(|l| l.split_once("FIELD_MANAGER: &str = \""))
        .map(|(_, v)| v.trim_end_matches("\";").to_string())
        .collect();
    assert!(
        !managers.is_empty(),
        "the field manager constant is found in src/"
    );
    for m in managers {
        assert!(
            readme.contains(&format!("field manager `{m}`")),
            "README.md names the field manager {m}"
        );
    }
}

/// Issue 17: one vocabulary module. Outside `src/model/vocabulary.rs` no
/// product code spells a `push-to-k8s.io` key, prefix or selector; it names
/// the constant.
#[test]
fn every_key_is_spelled_only_in_the_vocabulary_module() {
    let files = source_tree::files(&source_tree::src());
    let home = source_tree::src().join("model/vocabulary.rs");
    let mut found_home = false;
    let mut elsewhere = Vec::new();
    for (path, text) in &files {
        let lits: Vec<String> = literals(text)
            .into_iter()
            // A key, prefix or selector (prose that mentions one, a help
            // text or a message, has spaces).
            .filter(|l| (l.contains(DOMAIN) || l.starts_with("push-to-k8s=")) && !l.contains(' '))
            .collect();
        if *path == home {
            found_home = !lits.is_empty();
        } else {
            elsewhere.extend(
                lits.into_iter()
                    .map(|l| format!("{}: \"{l}\"", path.display())),
            );
        }
    }
    assert!(found_home, "the vocabulary module is read");
    // The scan finds a spelled key: this line of text stands for a file.
    let probe = "const X: &str = \"push-to-k8s.io/vault-path\";";
    assert_eq!(literals(probe), ["push-to-k8s.io/vault-path"]);
    assert!(
        elsewhere.is_empty(),
        "keys spelled outside src/model/vocabulary.rs (name its constant):\n  {}",
        elsewhere.join("\n  ")
    );
}
