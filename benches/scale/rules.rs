//! Issue 19, PushRules at scale (only with `--only rules`): R rules, each
//! naming its own Secret in namespace `bench-rules` and copying it into the N
//! bench targets (R x N copies: 1,000 x 100 at the full size), the copies
//! seeded in sync through the project's own renderer and the rule's
//! annotations, as the controller would write them. Then, for a controller
//! started over them:
//!
//! - start-up: time to ready, and until every rule's status says `Ready`;
//!   the writes that took (copies: none; rules: a finalizer and a status each);
//! - at rest: a minute without a single write (copies, rules, statuses), and
//!   the CPU it costs;
//! - propagation: one source changed, the time to the last of its N copies
//!   against D + N/R;
//! - RSS after the start and after the changes.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use push_to_k8s::model::pushrule::{PushRule, PushRuleSpec, RuleSource, SourceKind};
use push_to_k8s::model::replica::Replica;
use push_to_k8s::targets::rules::held::{self, Held};

use crate::cluster::source_secret;
use crate::controller::{READY_POLL, STOP_TIMEOUT, Settings};
use crate::report::{RssPoint, Target, median};
use crate::{Bench, DEBOUNCE, RATE, SEED_CONCURRENCY, SOURCE_NS, TARGET_PREFIX};

/// Where the rules' sources live.
const RULES_NS: &str = "bench-rules";
/// The CRD, as the chart ships it.
const CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/helm/push-to-k8s/files/pushrule-crd.yaml"
);
/// A minute at rest.
const REST: Duration = Duration::from_secs(60);

fn source_name(i: usize) -> String {
    format!("rule-src-{i:04}")
}

fn rule(i: usize) -> PushRule {
    PushRule {
        metadata: ObjectMeta {
            name: Some(format!("bench-rule-{i:04}")),
            ..Default::default()
        },
        spec: PushRuleSpec {
            source: RuleSource {
                kind: SourceKind::Secret,
                namespace: RULES_NS.into(),
                name: Some(source_name(i)),
                selector: None,
            },
            namespaces: vec![format!("{TARGET_PREFIX}*")],
            ..Default::default()
        },
        status: None,
    }
}

/// The copy a rule's source renders to: the source with the rule's
/// annotations, through the project's renderer (what the controller writes).
fn rendered(rule: &PushRule, source: &Secret) -> Result<Replica> {
    let h = Held::from_rule(rule, SOURCE_NS).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let mut s = source.clone();
    s.metadata = held::as_source(&h, &source.metadata);
    Ok(Replica::render(&s, RULES_NS))
}

impl Bench<'_> {
    fn kubectl(&self, args: &[&str]) -> Result<()> {
        let out = std::process::Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .context("run kubectl")?;
        if !out.status.success() {
            bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// How many rules' statuses say `Ready=True`.
    async fn rules_ready(&self) -> Result<usize> {
        let api: Api<PushRule> = Api::all(self.cluster.client.clone());
        let list = api.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .filter(|r| {
                r.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count())
    }

    pub async fn rules(&mut self) -> Result<()> {
        let sc = "rules";
        let (r_count, n) = (self.p.rules_count, self.p.rules_ns);
        let copies = r_count * n;
        println!(
            "\n== rules: {r_count} rules x {n} namespaces = {copies} copies, seeded in sync; D = {} s, R = {RATE}/s",
            DEBOUNCE.as_secs()
        );
        self.kubectl(&["apply", "-f", CRD])?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/pushrules.push-to-k8s.io",
        ])?;
        let namespaces: Api<Namespace> = Api::all(self.cluster.client.clone());
        if namespaces.get_opt(RULES_NS).await?.is_none() {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(RULES_NS.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            namespaces.create(&PostParams::default(), &ns).await?;
        }
        self.cluster.set_targets(n).await?;

        // The sources and the rules, then their copies, in sync.
        let t = Instant::now();
        let secrets: Api<Secret> = Api::namespaced(self.cluster.client.clone(), RULES_NS);
        let rules_api: Api<PushRule> = Api::all(self.cluster.client.clone());
        let rule_resource = ApiResource::erase::<PushRule>(&());
        let made: Vec<(PushRule, Secret)> = futures::stream::iter(0..r_count)
            .map(|i| {
                let (secrets, rules_api, client) = (&secrets, &rule_resource, &self.cluster.client);
                async move {
                    let pp = PostParams::default();
                    let s = secrets
                        .create(&pp, &source_secret(&source_name(i), 0))
                        .await?;
                    // The API server wants apiVersion and kind, which PushRule
                    // (the controller only reads and patches rules) leaves out.
                    let r = rule(i);
                    let name = r.metadata.name.clone().unwrap_or_default();
                    let body = DynamicObject::new(&name, rules_api)
                        .data(serde_json::json!({ "spec": r.spec }));
                    let created = Api::<DynamicObject>::all_with(client.clone(), rules_api)
                        .create(&pp, &body)
                        .await?;
                    let r: PushRule = serde_json::from_value(
                        serde_json::to_value(created).expect("an object serializes"),
                    )
                    .map_err(kube::Error::SerdeError)?;
                    Ok::<_, kube::Error>((r, s))
                }
            })
            .buffer_unordered(SEED_CONCURRENCY)
            .try_collect()
            .await
            .context("create the rules and their sources")?;
        let replicas = made
            .iter()
            .map(|(r, s)| rendered(r, s))
            .collect::<Result<Vec<_>>>()?;
        println!(
            "bench: {r_count} sources and rules created in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let (seed_s, seeded) = self.seed(&replicas, 0..n).await?;
        self.report.add_note(
            sc,
            "seeding (bench client)",
            seed_s,
            "s",
            Target::Info,
            &format!("{seeded} copies"),
        );

        // Start over them: ready, then every rule Ready, with no copy written.
        let api0 = self.counts().await?;
        let settings = Settings {
            burst: 1,
            sync_interval_min: 1440,
        };
        let started = Instant::now();
        let mut c = self.controller("rules", &settings)?;
        c.wait_ready(Duration::from_secs(120), READY_POLL).await?;
        let ready_s = started.elapsed().as_secs_f64();
        let deadline = Instant::now() + Duration::from_secs(120 + 3 * r_count as u64 / RATE as u64);
        loop {
            let ready = self.rules_ready().await?;
            if ready == r_count {
                break;
            }
            if Instant::now() > deadline {
                bail!("{ready} of {r_count} rules Ready; log: {}", c.logs());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let all_ready_s = started.elapsed().as_secs_f64();
        // Whatever the start still writes (nothing, if in sync) settles.
        tokio::time::sleep(DEBOUNCE + Duration::from_secs(5)).await;
        let api1 = self.counts().await?;
        let start = api1.minus(&api0);
        self.report.api.insert("rules start".into(), start.table());
        self.report.add(
            sc,
            &format!("time to ready (/readyz 200), {copies} rule copies"),
            ready_s,
            "s",
            Target::Info,
        );
        self.report.add_note(
            sc,
            &format!("time until all {r_count} rules say Ready"),
            all_ready_s,
            "s",
            Target::Info,
            &format!(
                "each rule's finalizer and status written at R = {RATE}/s: 2 x {r_count} / {RATE} = {:.0} s of pacing",
                2.0 * r_count as f64 / f64::from(RATE)
            ),
        );
        self.report.add_note(
            sc,
            "copy writes at the start",
            start.writes("secrets"),
            "",
            Target::Exactly(0.0),
            "the seeded copies are in sync",
        );
        self.report.add_note(
            sc,
            "rule writes at the start (finalizers and statuses)",
            start.writes("pushrules"),
            "",
            Target::AtMost(2.0 * r_count as f64),
            "one finalizer and one status per rule",
        );
        let rss_start = c.rss_mib();
        self.report.add(
            sc,
            &format!("RSS after the start, {copies} copies"),
            rss_start,
            "MiB",
            Target::Info,
        );
        self.report.rss_points.push(RssPoint {
            label: format!("rules: {r_count} rules x {n}"),
            copies,
            rss_mib: rss_start,
        });

        // At rest: a minute without a write, statuses included.
        let (api2, cpu2) = (self.counts().await?, c.cpu_s());
        tokio::time::sleep(REST).await;
        let (api3, cpu3) = (self.counts().await?, c.cpu_s());
        let rest = api3.minus(&api2);
        self.report.api.insert("rules at rest".into(), rest.table());
        self.report.add_note(
            sc,
            &format!("writes in {} s at rest", REST.as_secs()),
            rest.writes("secrets") + rest.writes("pushrules") + rest.writes("events"),
            "",
            Target::Exactly(0.0),
            "copies, rules (statuses included) and Events",
        );
        self.report.add_note(
            sc,
            "CPU at rest",
            (cpu3 - cpu2) / REST.as_secs_f64() * 100.0,
            "% of a core",
            Target::Info,
            "statuses are computed every 3 s (and written only when changed)",
        );

        // Propagation of one source's change to its N copies.
        let bound = DEBOUNCE.as_secs_f64() + n as f64 / f64::from(RATE);
        let mut runs = Vec::new();
        let name = source_name(0);
        let (probe_rule, _) = made
            .iter()
            .find(|(r, _)| r.spec.source.name.as_deref() == Some(name.as_str()))
            .context("the rule of the first source")?;
        for version in 1..=self.p.prop_runs as u64 {
            let data = source_secret(&name, version).data.unwrap_or_default();
            let from = self.watch.log_len();
            let t0 = Instant::now();
            let s = secrets
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(&serde_json::json!({"data": {"password": data["password"]}})),
                )
                .await?;
            let hash = rendered(probe_rule, &s)?.hash;
            let hs = HashSet::from([hash.clone()]);
            self.wait_in_sync(&hs, n, Duration::from_secs_f64(bound * 5.0 + 30.0))
                .await?;
            let mut first: HashMap<(String, String), Instant> = HashMap::new();
            for e in self.watch.log_since(from) {
                if e.hash == hash {
                    first.entry(e.key).or_insert(e.at);
                }
            }
            let last = first.values().max().copied().unwrap_or(t0);
            let took = last.duration_since(t0).as_secs_f64();
            println!("bench:   rules: run {version}: last copy after {took:.3} s");
            runs.push(took);
        }
        self.report.add_note(
            sc,
            &format!(
                "one source's change to its {n} copies, {r_count} rules held: median of {}",
                runs.len()
            ),
            median(&runs),
            "s",
            Target::AtMost(bound * 1.1),
            &format!(
                "bound D + N/R = {bound:.2} s; runs {}",
                runs.iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        let rss = c.rss_mib();
        self.report.add(
            sc,
            &format!("RSS after the changes, {copies} copies"),
            rss,
            "MiB",
            Target::Info,
        );
        self.report
            .add(sc, "peak RSS (VmHWM)", c.hwm_mib(), "MiB", Target::Info);
        let status = c.terminate(STOP_TIMEOUT)?;
        self.report.add(
            sc,
            "exit status after SIGTERM",
            f64::from(status.code().unwrap_or(-1)),
            "",
            Target::Exactly(0.0),
        );

        // Clear: the rules without their finalizers (no controller runs),
        // their sources, then the copies (the reset).
        let unfinalize = serde_json::json!({"metadata": {"finalizers": null}});
        futures::stream::iter(
            made.iter()
                .map(|(r, _)| r.metadata.name.clone().unwrap_or_default()),
        )
        .map(|name| {
            let (rules_api, unfinalize) = (&rules_api, &unfinalize);
            async move {
                rules_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(unfinalize))
                    .await?;
                rules_api.delete(&name, &DeleteParams::default()).await?;
                Ok::<_, kube::Error>(())
            }
        })
        .buffer_unordered(SEED_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await
        .context("delete the rules")?;
        secrets
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await?;
        self.cluster.reset(&self.watch).await
    }
}
