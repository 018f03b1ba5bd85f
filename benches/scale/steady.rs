//! Scenario 2, steady state: with every copy in sync, the API server's
//! counters across one full periodic resync: no writes, no per-object GETs,
//! only paginated LISTs. Also run by the kinds scenario (both kinds) and the
//! scale scenario (each size).

use anyhow::Result;
use push_to_k8s::model::kinds::Kind;

use crate::daemon::Daemon;
use crate::metrics::Counts;
use crate::report::Target;
use crate::{Bench, LIST_PAGE};

/// What one full resync has to list, and where its figures go.
pub struct Resync {
    pub scenario: &'static str,
    /// Appended to every figure's name (which size), and names the request
    /// table in the report; may be empty.
    pub label: String,
    /// Every namespace in the cluster (parked ones too: all are listed).
    pub namespaces: usize,
    /// Per kind judged: its sources and its copies.
    pub kinds: Vec<(Kind, usize, usize)>,
}

impl Resync {
    /// The resources judged: each kind's, then namespaces.
    fn resources(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .kinds
            .iter()
            .map(|(k, _, _)| k.api_resource().plural)
            .collect();
        r.push("namespaces".into());
        r
    }

    /// The most LIST requests a resync may take in pages of [`LIST_PAGE`],
    /// and how they add up. A list of n objects takes n / 500 + 1 requests at
    /// most: the API server may answer a last page of exactly 500 with a
    /// continue token, and the request after it comes back empty (measured:
    /// 500 ConfigMap copies took 2 requests in one run, 500 Secret copies 1).
    fn pages(&self) -> (usize, String) {
        let pages = |n: usize| n / LIST_PAGE + 1;
        let mut total = pages(self.namespaces);
        let mut parts = vec![format!("{} namespaces", self.namespaces)];
        for (kind, sources, copies) in &self.kinds {
            total += pages(*sources) + pages(*copies);
            parts.push(format!("{sources} {kind} sources + {copies} copies"));
        }
        (
            total,
            format!("n/{LIST_PAGE} + 1 pages per list: {}", parts.join(", ")),
        )
    }
}

impl Bench<'_> {
    /// `c` runs over the copies `r` describes, all in sync: judge one full
    /// resync. Returns the API server's requests during it.
    pub async fn steady(&mut self, c: &Daemon, r: &Resync) -> Result<Counts> {
        let sc = r.scenario;
        let writes_daemon0 = c.metric_sum("push_to_k8s_writes_total", &[]).await;
        let api0 = self.counts().await?;
        c.wait_resync("a full resync with everything in sync")
            .await?;
        let api1 = self.counts().await?;
        let writes_daemon = c.metric_sum("push_to_k8s_writes_total", &[]).await - writes_daemon0;
        let d = api1.minus(&api0);
        let table = match r.label.as_str() {
            "" => format!("{sc} resync"),
            label => format!("{sc} resync {label}"),
        };
        self.report.api.insert(table, d.table());
        let resources = r.resources();
        let sum = |verb: &str| -> f64 { resources.iter().map(|res| d.get(verb, res)).sum() };
        let (gets, lists) = (sum("GET"), sum("LIST"));
        let written = r.kinds.iter().map(|(k, _, _)| k.api_resource().plural);
        let writes: f64 = written
            .clone()
            .chain(["events".to_string()])
            .map(|res| d.writes(&res))
            .sum();
        let written: Vec<String> = written.collect();
        let (pages, how) = r.pages();
        let shown = resources.join(", ");
        let label = |s: &str| match r.label.as_str() {
            "" => s.to_string(),
            l => format!("{s} {l}"),
        };
        self.report.add_note(
            sc,
            &label("write requests during a full resync (API server)"),
            writes,
            "",
            Target::Exactly(0.0),
            &format!(
                "{} and events; controller counted {writes_daemon}",
                written.join(", ")
            ),
        );
        self.report.add(
            sc,
            &label(&format!("GET requests ({shown})")),
            gets,
            "",
            Target::Exactly(0.0),
        );
        self.report.add_note(
            sc,
            &label(&format!("LIST requests ({shown})")),
            lists,
            "",
            Target::AtMost(pages as f64),
            &how,
        );
        Ok(d)
    }
}
