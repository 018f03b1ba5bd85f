//! The product's source as the tests that read `src/` see it
//! (`tests/layering.rs`, `tests/vocabulary.rs`): every `.rs` file under
//! `src/`, in a stable order, each cut at its unit tests (the first
//! `#[cfg(test)]` line: what follows is test code).

use std::path::{Path, PathBuf};

/// `src/` of this crate.
pub fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir` (sorted, depth first) with its product text.
pub fn files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read source");
            let product: String = text
                .lines()
                .take_while(|l| l.trim() != "#[cfg(test)]")
                .map(|l| format!("{l}\n"))
                .collect();
            out.push((path, product));
        }
    }
}
