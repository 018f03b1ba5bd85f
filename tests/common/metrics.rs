//! Reading Prometheus text: the controller's own `/metrics` and the API
//! server's request counters, the independent witness of what was written.
//! Shared by the end-to-end kit and the benchmark (included by `#[path]`).

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};

/// Sum the samples of metric `name` (exact family name, e.g.
/// `apiserver_request_total`) on lines containing every `filter`.
pub fn sum_metric(text: &str, name: &str, filters: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>()
        + 0.0 // an empty sum is -0.0
}

/// The verbs under which the API server files a write. A server-side apply
/// PATCH is `APPLY`, not `PATCH`, and a collection delete `DELETECOLLECTION`.
pub const WRITE_VERBS: &[&str] = &[
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "DELETECOLLECTION",
    "APPLY",
];

/// `apiserver_request_total`, summed by (verb, resource).
#[derive(Clone, Debug, Default)]
pub struct Counts(HashMap<(String, String), f64>);

/// The value of label `key` in `a="x",b="y"` (empty if absent).
fn label<'a>(labels: &'a str, key: &str) -> &'a str {
    let pat = format!("{key}=\"");
    labels
        .split("\",")
        .find_map(|kv| kv.strip_prefix(&pat))
        .map(|v| v.trim_end_matches('"'))
        .unwrap_or("")
}

impl Counts {
    pub fn parse(text: &str) -> Counts {
        let mut m = HashMap::new();
        for l in text.lines() {
            let Some(rest) = l.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            let key = (
                label(labels, "verb").to_string(),
                label(labels, "resource").to_string(),
            );
            *m.entry(key).or_insert(0.0) += v;
        }
        Counts(m)
    }

    /// The API server's counters now.
    pub async fn fetch(client: &kube::Client) -> Result<Counts> {
        let req = http::Request::get("/metrics").body(Vec::new())?;
        let text = client
            .request_text(req)
            .await
            .context("apiserver /metrics")?;
        Ok(Counts::parse(&text))
    }

    pub fn get(&self, verb: &str, resource: &str) -> f64 {
        self.0
            .get(&(verb.to_string(), resource.to_string()))
            .copied()
            .unwrap_or(0.0)
    }

    /// Write requests ([`WRITE_VERBS`]) to `resource`.
    pub fn writes(&self, resource: &str) -> f64 {
        WRITE_VERBS.iter().map(|v| self.get(v, resource)).sum()
    }

    /// What was counted since `before`.
    pub fn minus(&self, before: &Counts) -> Counts {
        let mut m = HashMap::new();
        for (k, v) in &self.0 {
            let d = v - before.0.get(k).copied().unwrap_or(0.0);
            if d != 0.0 {
                m.insert(k.clone(), d);
            }
        }
        Counts(m)
    }

    /// `"VERB resource" -> count`, for a report.
    pub fn table(&self) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .filter(|((_, r), _)| !r.is_empty())
            .map(|((v, r), n)| (format!("{v} {r}"), *n))
            .collect()
    }
}
