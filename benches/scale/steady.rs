//! Scenario 2, steady state: with every copy in sync, the API server's
//! counters across one full periodic resync: no writes, no per-object GETs,
//! only paginated LISTs.

use anyhow::Result;

use crate::daemon::Daemon;
use crate::report::Target;
use crate::{Bench, LIST_PAGE};

impl Bench<'_> {
    /// `c` runs over `want` copies in `n` namespaces, all in sync.
    pub async fn steady(&mut self, c: &Daemon, n: usize, want: usize) -> Result<()> {
        let sc = "steady";
        let writes_daemon0 = c.metric_sum("push_to_k8s_writes_total", &[]).await;
        let api0 = self.counts().await?;
        c.wait_resync("a full resync with everything in sync")
            .await?;
        let api1 = self.counts().await?;
        let writes_daemon = c.metric_sum("push_to_k8s_writes_total", &[]).await - writes_daemon0;
        let d = api1.minus(&api0);
        self.report.api.insert("steady resync".into(), d.table());
        let gets: f64 = ["secrets", "namespaces"]
            .iter()
            .map(|r| d.get("GET", r))
            .sum();
        let lists: f64 = ["secrets", "namespaces"]
            .iter()
            .map(|r| d.get("LIST", r))
            .sum();
        let pages = 1 + (n + 5).div_ceil(LIST_PAGE) + want.div_ceil(LIST_PAGE);
        self.report.add_note(
            sc,
            "write requests during a full resync (API server)",
            d.writes("secrets") + d.writes("events"),
            "",
            Target::Exactly(0.0),
            &format!("secrets and events; controller counted {writes_daemon}"),
        );
        self.report.add(
            sc,
            "GET requests (secrets, namespaces)",
            gets,
            "",
            Target::Exactly(0.0),
        );
        self.report.add_note(
            sc,
            "LIST requests (secrets, namespaces)",
            lists,
            "",
            Target::AtMost(pages as f64),
            &format!("pages of {LIST_PAGE}: 1 sources + namespaces + {want} copies"),
        );
        Ok(())
    }
}
