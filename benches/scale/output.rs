//! Where a run's output goes: `target/bench/scale/` (`results.{json,csv}`,
//! the PNGs drawn by `benches/plot.py`, one log per controller process), and
//! with `--docs` a copy of the plots and data for `docs/benchmarks.md`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use crate::report::Report;

pub struct Paths {
    pub repo: PathBuf,
    /// `target/bench/scale`, with `logs/` in it.
    pub out: PathBuf,
}

impl Paths {
    pub fn new() -> Result<Paths> {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|p| if p.is_absolute() { p } else { repo.join(p) })
            .unwrap_or_else(|| repo.join("target"));
        let out = target.join("bench/scale");
        std::fs::create_dir_all(out.join("logs"))?;
        Ok(Paths { repo, out })
    }
}

/// `results.json` and `results.csv` in `out`.
pub fn write_results(paths: &Paths, report: &Report) -> Result<()> {
    let json = paths.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(report)?)?;
    let mut csv = String::from("scenario,figure,value,unit,target,verdict,note\n");
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    for f in &report.figures {
        csv.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            q(&f.scenario),
            q(&f.figure),
            f.value,
            q(&f.unit),
            q(&f.target),
            f.verdict,
            q(&f.note)
        ));
    }
    std::fs::write(paths.out.join("results.csv"), csv)?;
    println!("bench: results in {} and results.csv", json.display());
    Ok(())
}

/// Draw the PNGs with matplotlib from a venv under target/ (created once).
pub fn plot(paths: &Paths, docs: Option<&Path>) -> Result<()> {
    let venv = paths.repo.join("target/bench-venv");
    let python = venv.join("bin/python");
    let has_mpl = |py: &Path| {
        Command::new(py)
            .args(["-c", "import matplotlib"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_mpl(&python) {
        println!("bench: creating {} with matplotlib (once)", venv.display());
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "matplotlib"])
                .status()
                .is_ok_and(|s| s.success());
        if !ok || !has_mpl(&python) {
            bail!(
                "could not set up matplotlib; run `python3 -m venv target/bench-venv && \
                 target/bench-venv/bin/pip install matplotlib`, or pass --no-plot"
            );
        }
    }
    let status = Command::new(&python)
        .arg(paths.repo.join("benches/plot.py"))
        .arg(paths.out.join("results.json"))
        .arg(&paths.out)
        .status()?;
    if !status.success() {
        bail!("benches/plot.py failed ({status})");
    }
    if let Some(dir) = docs {
        std::fs::create_dir_all(dir)?;
        for f in [
            "propagation.png",
            "rss.png",
            "scale.png",
            "burst.png",
            "results.json",
        ] {
            let from = paths.out.join(f);
            if from.exists() {
                std::fs::copy(&from, dir.join(f))?;
            }
        }
        println!("bench: plots and results.json copied to {}", dir.display());
    }
    Ok(())
}
