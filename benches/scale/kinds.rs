//! Scenario 8 (issue 8), memory with both kinds: the memory scenario's shape
//! (namespaces x sources) once as Secret copies and once as ConfigMap copies,
//! seeded in sync through the project's own renderer; a controller started
//! over them must write nothing, a resync must cost no write and no GET, and
//! RSS must stay under 96 MiB with both kinds (the Secrets alone are the
//! memory scenario's 64 MiB). Then unrelated ConfigMaps are added, which
//! must not make a running or a freshly started controller grow.

use anyhow::Result;
use push_to_k8s::model::kinds::Kind;

use crate::Bench;
use crate::controller::Settings;
use crate::memory::Unrelated;
use crate::report::{RssPoint, Target};
use crate::steady::Resync;

/// The RSS bound with both kinds (issue 8).
const RSS_BOTH_MIB: f64 = 96.0;

impl Bench<'_> {
    pub async fn kinds(&mut self) -> Result<()> {
        let sc = "kinds";
        let (n, s_count) = (self.p.mem_ns, self.p.mem_sources);
        let per_kind = n * s_count;
        let copies = 2 * per_kind;
        let both = [Kind::Secret, Kind::ConfigMap];
        println!(
            "\n== kinds: {n} namespaces x {s_count} sources x (Secret, ConfigMap) = {copies} copies, seeded in sync"
        );
        self.cluster.set_targets(n).await?;
        let mut replicas = Vec::new();
        for (kind, prefix) in [(Kind::Secret, "kinds-s"), (Kind::ConfigMap, "kinds-c")] {
            let names: Vec<String> = (0..s_count).map(|i| format!("{prefix}-{i:02}")).collect();
            replicas.extend(self.cluster.create_rendered_sources(kind, &names).await?);
        }
        self.seed(&replicas, 0..n).await?;
        let settings = Settings {
            burst: 1,
            sync_interval_min: 1,
        };

        // A start over copies in sync of both kinds.
        let s = self.start_over("kinds", &settings, &both).await?;
        self.report.api.insert("kinds start".into(), s.api.table());
        self.report.add_note(
            sc,
            &format!("write requests after a start over {copies} copies"),
            s.writes,
            "",
            Target::Exactly(0.0),
            &format!(
                "secrets and configmaps (API server); controller counted {}; {} LISTs; ready after {:.2} s",
                s.writes_daemon,
                s.lists(&both),
                s.ready.as_secs_f64()
            ),
        );
        self.report.add_note(
            sc,
            &format!("RSS after a start over {copies} copies"),
            s.rss,
            "MiB",
            Target::Below(RSS_BOTH_MIB),
            "5 s after the first flush",
        );
        self.report.kinds_points.push(RssPoint {
            label: "both kinds: after a start".into(),
            copies,
            rss_mib: s.rss,
        });

        let u = Unrelated {
            scenario: sc,
            kind: Kind::ConfigMap,
            count: self.p.unrelated,
            namespaces: n,
            copy_kinds: both.to_vec(),
            copies,
            points: |r| &mut r.kinds_points,
        };
        let (c, fresh_before) = self.fresh_starts(s.c, s.rss, &settings, &u).await?;

        // Steady state over both kinds: the first resync of the third start.
        let resync = Resync {
            scenario: sc,
            label: String::new(),
            namespaces: self.cluster.namespace_count().await?,
            kinds: vec![
                (Kind::Secret, s_count, per_kind),
                (Kind::ConfigMap, s_count, per_kind),
            ],
        };
        self.steady(&c, &resync).await?;
        let rss = c.rss_mib();
        self.report.add_note(
            sc,
            &format!("RSS with {per_kind} Secret + {per_kind} ConfigMap copies, after a resync"),
            rss,
            "MiB",
            Target::Below(RSS_BOTH_MIB),
            "the Secrets alone: the memory scenario (< 64 MiB)",
        );
        self.report.kinds_points.push(RssPoint {
            label: "both kinds: in sync, after a resync".into(),
            copies,
            rss_mib: rss,
        });

        self.unrelated(c, fresh_before, &settings, &u).await?;
        self.cluster.reset(&self.watch).await
    }
}
