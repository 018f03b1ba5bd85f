//! The command line: sizes (quick by default, `--full` for the issue's),
//! which scenarios run, and where results go.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub full: bool,
    /// Scenario 1: target namespace counts, runs per count.
    pub prop_ns: Vec<usize>,
    pub prop_runs: usize,
    /// Scenario 5: sources changed at once, target namespaces, limiter burst.
    pub burst_sources: usize,
    pub burst_ns: usize,
    pub burst_b: u32,
    /// Scenarios 2-4: namespaces x sources, and unrelated Secrets added; the
    /// kinds scenario (8) has the same shape per kind, and adds as many
    /// unrelated ConfigMaps.
    pub mem_ns: usize,
    pub mem_sources: usize,
    pub unrelated: usize,
    /// Scenario 9: target namespace counts, measured in ascending order (each
    /// size adds namespaces and copies to the last), and sources.
    pub scale_ns: Vec<usize>,
    pub scale_sources: usize,
    /// Scenario 10 (Vault): target namespaces of the one source (part A),
    /// sources each with its own Vault path (part B), VAULT_RATE_LIMIT.
    pub vault_ns: usize,
    pub vault_sources: usize,
    pub vault_rate: u32,
    /// Scenario 11 (remote clusters): target namespaces in each of the three
    /// clusters (the local one and two remote ones).
    pub remote_ns: usize,
    /// The chaos scenario (issue 16): how long faults are injected, the
    /// seed of its random choices, target namespaces in each of its two
    /// clusters, Secret sources (and a quarter as many ConfigMaps).
    /// PushRules (issue 19): rules, and the target namespaces each copies to.
    pub rules_count: usize,
    pub rules_ns: usize,
    pub chaos_minutes: f64,
    pub chaos_seed: u64,
    pub chaos_ns: usize,
    pub chaos_sources: usize,
    pub scenarios: Vec<String>,
    pub keep_cp: bool,
    pub plot: bool,
    pub docs: Option<PathBuf>,
    /// Another controller binary to measure (e.g. an older build).
    pub bin: Option<PathBuf>,
}

/// In the order they run; `scale` last, as it leaves the most namespaces behind.
pub const SCENARIOS: &[&str] = &[
    "burst",
    "propagation",
    "drift",
    "memory",
    "kinds",
    "vault",
    "remote",
    "scale",
    "chaos",
    "rules",
];

/// Run only when asked for (`--only chaos`): it takes 20 minutes by default.
/// `rules` seeds R x N copies of its own (100,000 at the full size).
const NOT_BY_DEFAULT: &[&str] = &["chaos", "rules"];

const USAGE: &str = "\
usage: cargo bench --bench scale -- [options]

  --full                 the issues' sizes: N in {100,500,1000} x 5 runs, burst 100
                         sources x 100 namespaces, memory and kinds 1000 namespaces x 20
                         sources, scale {1000,2500,5000} namespaces x 20 sources,
                         vault 1 source x 1000 namespaces and 100 sources, remote
                         3 clusters x 300 namespaces
  --prop-n A,B,..        propagation target namespace counts (quick: 50,100)
  --runs K               propagation runs per N, vault part A and remote updates,
                         drift's edited and deleted copies; median reported
                         (quick: 3, full: 5)
  --burst-sources S      sources changed within 2 s (quick: 20, full: 100)
  --burst-n N            target namespaces of the burst (quick: 50, full: 100)
  --burst-b B            SECRET_SYNC_RATE_BURST of the burst scenario (default 10)
  --mem-ns N             memory/steady/restart and kinds namespaces (quick: 100, full: 1000)
  --mem-sources S        memory/steady/restart sources, and kinds sources per kind
                         (quick: 5, full: 20)
  --unrelated U          unrelated Secrets added by memory, unrelated ConfigMaps added
                         by kinds (default: mem-ns x mem-sources)
  --scale-n A,B,..       scale: target namespace counts, measured in ascending order,
                         copies seeded once and added to (quick: 200, full: 1000,2500,5000)
  --scale-sources S      scale: sources (quick: 5, full: 20)
  --vault-n N            vault part A: target namespaces of the one source (quick: 100,
                         full: 1000)
  --vault-sources S      vault part B: sources, each with its own Vault path (quick: 20,
                         full: 100)
  --vault-rate V         VAULT_RATE_LIMIT of the vault scenario (default 100, 1-100)
  --remote-n N           remote: target namespaces in each of the 3 clusters (local and
                         2 remote control planes started for it; quick: 100, full: 300)
  --chaos-minutes M      chaos: how long faults are injected (default 20, or the
                         environment's CHAOS_MINUTES; e.g. 3 for a smoke run)
  --chaos-seed X         chaos: seed of the random faults and updates (default 16)
  --chaos-n N            chaos: target namespaces in each of its 2 clusters (quick: 10,
                         full: 30)
  --chaos-sources S      chaos: Secret sources, plus S/4 ConfigMaps (quick: 8, full: 16)
  --rules R              rules (only with --only rules): PushRules, one source each
                         (quick: 100, full: 1000)
  --rules-n N            rules: target namespaces of every rule (quick: 20, full: 100)
  --only a,b             run only these of: burst, propagation, drift, memory, kinds,
                         vault, remote, scale, chaos
                         (memory also measures steady state, CPU and restart; drift
                         times the repair of K edited and K deleted copies and counts
                         the writes to a copy another writer rewrites every 100 ms
                         for 20 s; chaos runs only when named here)
  --keep-cp              leave the bench control plane up at the end
  --no-plot              do not draw the PNG plots (no Python venv needed)
  --docs DIR             also copy the plots and results.json into DIR (e.g. docs/benchmarks)
  --bin PATH             measure this controller binary instead of the release build
";

fn list(v: &str) -> Result<Vec<usize>> {
    v.split(',')
        .map(|x| x.trim().parse::<usize>().map_err(|e| anyhow!("{x:?}: {e}")))
        .collect()
}

impl Params {
    pub fn parse(args: Vec<String>) -> Result<Params> {
        let full = args.iter().any(|a| a == "--full");
        // The quick size; `--full` sets the issue's.
        let mut p = Params {
            full,
            prop_ns: vec![50, 100],
            prop_runs: 3,
            burst_sources: 20,
            burst_ns: 50,
            burst_b: 10,
            mem_ns: 100,
            mem_sources: 5,
            unrelated: 0,
            scale_ns: vec![200],
            scale_sources: 5,
            vault_ns: 100,
            vault_sources: 20,
            vault_rate: 100,
            remote_ns: 100,
            rules_count: 100,
            rules_ns: 20,
            chaos_minutes: 20.0,
            chaos_seed: 16,
            chaos_ns: 10,
            chaos_sources: 8,
            scenarios: SCENARIOS
                .iter()
                .filter(|s| !NOT_BY_DEFAULT.contains(s))
                .map(|s| s.to_string())
                .collect(),
            keep_cp: false,
            plot: true,
            docs: None,
            bin: None,
        };
        if full {
            p.prop_ns = vec![100, 500, 1000];
            p.prop_runs = 5;
            p.burst_sources = 100;
            p.burst_ns = 100;
            p.mem_ns = 1000;
            p.mem_sources = 20;
            p.scale_ns = vec![1000, 2500, 5000];
            p.scale_sources = 20;
            p.vault_ns = 1000;
            p.vault_sources = 100;
            p.remote_ns = 300;
            p.chaos_ns = 30;
            p.rules_count = 1000;
            p.rules_ns = 100;
            p.chaos_sources = 16;
        }
        if let Ok(m) = std::env::var("CHAOS_MINUTES") {
            p.chaos_minutes = m.parse().map_err(|e| anyhow!("CHAOS_MINUTES={m:?}: {e}"))?;
        }
        let mut unrelated = None;
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let mut value = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
            match a.as_str() {
                // `cargo bench` passes `--bench` to every bench executable.
                "--bench" | "--full" => {}
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                "--prop-n" => p.prop_ns = list(&value()?)?,
                "--runs" => p.prop_runs = value()?.parse()?,
                "--burst-sources" => p.burst_sources = value()?.parse()?,
                "--burst-n" => p.burst_ns = value()?.parse()?,
                "--burst-b" => p.burst_b = value()?.parse()?,
                "--mem-ns" => p.mem_ns = value()?.parse()?,
                "--mem-sources" => p.mem_sources = value()?.parse()?,
                "--unrelated" => unrelated = Some(value()?.parse()?),
                "--scale-n" => p.scale_ns = list(&value()?)?,
                "--scale-sources" => p.scale_sources = value()?.parse()?,
                "--vault-n" => p.vault_ns = value()?.parse()?,
                "--vault-sources" => p.vault_sources = value()?.parse()?,
                "--vault-rate" => p.vault_rate = value()?.parse()?,
                "--remote-n" => p.remote_ns = value()?.parse()?,
                "--rules" => p.rules_count = value()?.parse()?,
                "--rules-n" => p.rules_ns = value()?.parse()?,
                "--chaos-minutes" => p.chaos_minutes = value()?.parse()?,
                "--chaos-seed" => p.chaos_seed = value()?.parse()?,
                "--chaos-n" => p.chaos_ns = value()?.parse()?,
                "--chaos-sources" => p.chaos_sources = value()?.parse()?,
                "--only" => {
                    p.scenarios = value()?.split(',').map(|s| s.trim().to_string()).collect();
                    if let Some(bad) = p
                        .scenarios
                        .iter()
                        .find(|s| !SCENARIOS.contains(&s.as_str()))
                    {
                        bail!("unknown scenario {bad:?} (known: {SCENARIOS:?})");
                    }
                }
                "--keep-cp" => p.keep_cp = true,
                "--no-plot" => p.plot = false,
                "--docs" => p.docs = Some(PathBuf::from(value()?)),
                "--bin" => p.bin = Some(PathBuf::from(value()?)),
                // Filters that cargo may forward; a harness = false bench ignores them.
                other if !other.starts_with('-') => {}
                other => bail!("unknown option {other:?}\n{USAGE}"),
            }
        }
        p.prop_ns.sort_unstable();
        p.prop_ns.dedup();
        p.scale_ns.sort_unstable();
        p.scale_ns.dedup();
        p.unrelated = unrelated.unwrap_or(p.mem_ns * p.mem_sources);
        if p.prop_runs == 0
            || p.prop_ns.contains(&0)
            || p.burst_ns == 0
            || p.mem_ns == 0
            || p.scale_ns.is_empty()
            || p.scale_ns.contains(&0)
            || p.scale_sources == 0
            || p.vault_ns == 0
            || p.vault_sources == 0
            || p.remote_ns == 0
            || p.chaos_ns == 0
            || p.chaos_sources == 0
            || p.rules_count == 0
            || p.rules_ns == 0
        {
            bail!("counts must be at least 1");
        }
        if !(1..=100).contains(&p.burst_b) {
            bail!("--burst-b must be from 1 to 100 (SECRET_SYNC_RATE_BURST)");
        }
        if !(p.chaos_minutes > 0.0 && p.chaos_minutes <= 24.0 * 60.0) {
            bail!("--chaos-minutes must be above 0 and at most 1440");
        }
        if !(1..=100).contains(&p.vault_rate) {
            bail!("--vault-rate must be from 1 to 100 (VAULT_RATE_LIMIT)");
        }
        Ok(p)
    }

    pub fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}
