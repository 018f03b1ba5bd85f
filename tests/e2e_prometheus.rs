//! Issue 20: the chart's alerts on a real Prometheus, scraping a controller run
//! out of cluster against the real control plane.
//!
//! Prometheus is Debian's package (`cp.sh prom-build`), on loopback, scraping the
//! controller every second as job `p2k` with `namespace="p2k-ns"` (what the chart's
//! rules select for release `p2k` in namespace `p2k-ns`), evaluating the chart's
//! PrometheusRule rendered by `helm template` every second. In this test's rendering
//! only, every `for:` is 5 s and every range window 1 m (so an alert resolves within
//! a minute of its condition going; a rate over a shorter window would flap between
//! the retries of a failing write, which back off to 32 s and more).
//!
//! Each condition is produced for real and each alert must reach `firing` on
//! Prometheus' `/api/v1/alerts`, then become inactive once the condition is gone:
//! - `PushToK8sWritesFailing` and `PushToK8sOutOfSync`: a namespace with a
//!   ResourceQuota of zero Secrets (every create refused); the quota removed;
//! - `PushToK8sConflicts`: an unmanaged Secret of the copy's name; deleted;
//! - `PushToK8sRemoteClusterDown`: remote control plane 1, registered, has its
//!   kube-apiserver killed; started again;
//! - `PushToK8sVaultDown`: the test Vault killed while a source's Vault entry
//!   waits to be written; started again;
//! - `PushToK8sNotReady`: the home kube-apiserver killed (the watches fail longer
//!   than `READY_WATCH_FAILURE_SECONDS`); started again;
//! - `PushToK8sDown`: the controller stopped; started again on its port.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::prometheus::{Prometheus, Target, chart_rule_groups, rules_file, shortened};
use common::remote::{RestoreRemote, remote};
use common::*;
use k8s_openapi::api::core::v1::{ResourceQuota, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const NAMESPACES: &str = "push-to-k8s.io/namespaces";
const VAULT_PATH: &str = "push-to-k8s.io/vault-path";
const FIRE: Duration = Duration::from_secs(150);
const RESOLVE: Duration = Duration::from_secs(240);

/// Starts the test Vault again (`cp.sh vault-up`: same address and root token)
/// however the test ends.
struct RestoreVault;

impl Drop for RestoreVault {
    fn drop(&mut self) {
        let out = std::process::Command::new("bash")
            .arg(cp_script())
            .arg("vault-up")
            .stdin(std::process::Stdio::null())
            .output();
        if !matches!(out, Ok(ref o) if o.status.success()) {
            eprintln!("could not start Vault again: {out:?}");
        }
    }
}

fn state_dir() -> PathBuf {
    control_plane().kubeconfig.parent().unwrap().to_path_buf()
}

fn vault_addr() -> String {
    std::fs::read_to_string(state_dir().join("vault.addr"))
        .expect("vault.addr")
        .trim()
        .to_string()
}

/// Wait until alert `name` is in `want` (`Some("firing")`, or `None`: inactive).
async fn await_alert(prom: &Prometheus, name: &str, want: Option<&str>, timeout: Duration) {
    let what = format!(
        "alert {name} {}",
        want.map_or("inactive".to_string(), |s| format!("in state {s}"))
    );
    let since = std::time::Instant::now();
    until(&what, timeout, || async {
        let state = prom.alert_state(name).await?;
        if state.as_deref() == want {
            Ok(())
        } else {
            Err(format!("{state:?}"))
        }
    })
    .await;
    eprintln!("{what}: after {:.1?}", since.elapsed());
}

/// The value of an instant query returning one sample (`None`: no sample).
async fn value(prom: &Prometheus, promql: &str) -> Option<f64> {
    let data = prom.query(promql).await.ok()?;
    data["result"][0]["value"][1].as_str()?.parse().ok()
}

fn source(env: &TestEnv, name: &str, annotations: &[(&str, &str)]) -> Secret {
    let mut s = source_secret(name, &[("v", "1")]);
    let mut a = BTreeMap::from([(NAMESPACES.to_string(), format!("{}-t*", env.id))]);
    a.extend(map(annotations));
    s.metadata.annotations = Some(a);
    s
}

struct Controller {
    daemon: Daemon,
}

impl Controller {
    async fn start(env: &TestEnv, port: u16, token_file: &str) -> Controller {
        let (port, addr) = (port.to_string(), vault_addr());
        let mut daemon = Daemon::start(
            &env.source_ns,
            &[
                ("METRICS_PORT", &port),
                ("CLUSTER_NAME", &format!("{}-home", env.id)),
                ("VAULT_ADDR", &addr),
                ("VAULT_AUTH_METHOD", "token"),
                ("VAULT_TOKEN_FILE", token_file),
                ("VAULT_CHECK_INTERVAL_SECONDS", "5"),
                ("READY_WATCH_FAILURE_SECONDS", "3"),
            ],
        );
        daemon.await_ready().await;
        Controller { daemon }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_alert_fires_on_its_real_condition_and_resolves() {
    let _serial = serial();
    cp(&["vault-up"]);
    let mut env = TestEnv::new("prom-alerts", 0).await;
    let _cleanup = env.cleanup_on_panic();
    for t in ["t-quota", "t-conflict", "t-ok"] {
        let ns = format!("{}-{t}", env.id);
        env.create_namespace(&ns, &[]).await;
    }
    let (quota_ns, conflict_ns) = (
        format!("{}-t-quota", env.id),
        format!("{}-t-conflict", env.id),
    );

    // The rules as the chart renders them, `for:` and windows shortened.
    let groups = shortened(&chart_rule_groups("p2k", "p2k-ns", &[]), "5s", "1m");
    let dir = std::env::temp_dir().join(unique("push-to-k8s-e2e-rules"));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = rules_file(&groups, &dir);
    let port = free_port();
    let prom = Prometheus::start(
        &[Target {
            job: "p2k",
            port,
            labels: &[("namespace", "p2k-ns")],
        }],
        Some(&rules),
        "1s",
    )
    .await;
    let rules_loaded = prom.api("rules").await.unwrap();
    assert_eq!(
        rules_loaded["groups"][0]["rules"].as_array().map(Vec::len),
        Some(7),
        "{rules_loaded}"
    );

    let token_file = state_dir().join("vault.token").display().to_string();
    let mut ctl = Controller::start(&env, port, &token_file).await;
    until("Prometheus scrapes the controller", FIRE, || async {
        match value(&prom, r#"up{job="p2k",namespace="p2k-ns"}"#).await {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Nothing fires while all is well (given time to go pending and fire).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let alerts = prom.alerts().await.unwrap();
    assert!(alerts.is_empty(), "alerts while all is well: {alerts:?}");

    // ---- writes failing and out of sync: a quota of zero Secrets.
    quota_without_secrets(&env.client, &quota_ns).await;
    env.add_source(&source(&env, "db", &[])).await;
    await_alert(&prom, "PushToK8sWritesFailing", Some("firing"), FIRE).await;
    await_alert(&prom, "PushToK8sOutOfSync", Some("firing"), FIRE).await;
    let age = value(&prom, "max(push_to_k8s_oldest_out_of_sync_seconds)").await;
    assert!(
        age.is_some_and(|a| a > 0.0),
        "oldest out-of-sync age: {age:?}"
    );
    Api::<ResourceQuota>::namespaced(env.client.clone(), &quota_ns)
        .delete("no-secrets", &DeleteParams::default())
        .await
        .expect("delete the quota");
    env.await_copies(std::slice::from_ref(&quota_ns), "db", &[("v", "1")])
        .await;
    await_alert(&prom, "PushToK8sOutOfSync", None, RESOLVE).await;
    await_alert(&prom, "PushToK8sWritesFailing", None, RESOLVE).await;

    // ---- conflicts: an unmanaged Secret of the copy's name.
    let theirs = Secret {
        metadata: ObjectMeta {
            name: Some("app".into()),
            ..Default::default()
        },
        data: Some(data_map(&[("theirs", "1")])),
        ..Default::default()
    };
    env.secrets(&conflict_ns)
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create the unmanaged Secret");
    env.add_source(&source(&env, "app", &[])).await;
    await_alert(&prom, "PushToK8sConflicts", Some("firing"), FIRE).await;
    assert_eq!(
        value(&prom, "max(push_to_k8s_conflicted_copies)").await,
        Some(1.0)
    );
    env.secrets(&conflict_ns)
        .delete("app", &DeleteParams::default())
        .await
        .expect("delete the unmanaged Secret");
    env.await_copies(std::slice::from_ref(&conflict_ns), "app", &[("v", "1")])
        .await;
    await_alert(&prom, "PushToK8sConflicts", None, RESOLVE).await;

    // ---- a remote cluster down: remote 1's kube-apiserver killed.
    let r1 = remote(1);
    let cluster = format!("{}-r1", env.id);
    let token = r1.identity_token();
    common::remote::register(
        &env.client,
        &env.source_ns,
        "cluster-r1",
        &cluster,
        &r1.kubeconfig_text(&token),
    )
    .await;
    let up = format!(r#"push_to_k8s_cluster_up{{cluster="{cluster}"}}"#);
    until("the remote cluster is up", FIRE, || async {
        match value(&prom, &up).await {
            Some(1.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    {
        let _restore = RestoreRemote(r1);
        r1.kill_apiserver();
        await_alert(&prom, "PushToK8sRemoteClusterDown", Some("firing"), FIRE).await;
        r1.start_apiserver();
    }
    await_alert(&prom, "PushToK8sRemoteClusterDown", None, RESOLVE).await;
    common::remote::unregister(&env.client, &env.source_ns, "cluster-r1").await;

    // ---- Vault down while a source's entry waits to be written.
    let vault_path = format!("push-to-k8s/{}/kv", env.id);
    env.add_source(&source(&env, "kv", &[(VAULT_PATH, &vault_path)]))
        .await;
    until("the Vault entry is written", FIRE, || async {
        match value(&prom, "max(push_to_k8s_vault_entries)").await {
            Some(v) if v >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    {
        let _restore = RestoreVault;
        cp(&["vault-kill"]);
        env.sources()
            .patch(
                "kv",
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"v": "2"}})),
            )
            .await
            .expect("update the Vault source");
        await_alert(&prom, "PushToK8sVaultDown", Some("firing"), FIRE).await;
    }
    // RestoreVault started it again (dev mode: empty, same root token).
    await_alert(&prom, "PushToK8sVaultDown", None, RESOLVE).await;
    let delete = env.sources().delete("kv", &DeleteParams::default()).await;
    delete.expect("delete the Vault source");

    // ---- not ready: the home kube-apiserver killed, the watches fail.
    {
        let _restore = restore_control_plane_on_drop();
        cp_kill("kube-apiserver");
        await_alert(&prom, "PushToK8sNotReady", Some("firing"), FIRE).await;
        cp_start("kube-apiserver");
    }
    until("the controller is ready again", RESOLVE, || async {
        match ctl.daemon.readyz().await {
            Some((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    await_alert(&prom, "PushToK8sNotReady", None, RESOLVE).await;

    // ---- down: the controller stopped, then started again on its port.
    ctl.daemon.stop();
    await_alert(&prom, "PushToK8sDown", Some("firing"), FIRE).await;
    let ctl = Controller::start(&env, port, &token_file).await;
    await_alert(&prom, "PushToK8sDown", None, RESOLVE).await;

    // A fresh instance is unready until its caches sync (NotReady may go
    // pending for a scrape or two); then nothing is left pending or firing.
    until("no alert left", RESOLVE, || async {
        let left = prom.alerts().await?;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await;
    drop(ctl);
    let _ = std::fs::remove_dir_all(&dir);
    env.teardown().await;
}

/// Issue 20: every query of the Grafana dashboard (panels and variables), with
/// Grafana's variables replaced, parses and returns data on the real Prometheus
/// while the controller works: copies here, in a remote cluster and in Vault, a
/// write refused by a quota, a conflict, a source with a bad annotation, one of a
/// refused type, and a registration with a bad kubeconfig, so that every family a
/// panel reads has series. No panel is silently empty because a name drifted.
#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_query_returns_data_from_a_working_controller() {
    use common::prometheus::{concrete, dashboard, dashboard_queries};
    use common::remote::RemoteNamespaces;

    let _serial = serial();
    cp(&["vault-up"]);
    let mut env = TestEnv::new("prom-dash", 0).await;
    let _cleanup = env.cleanup_on_panic();
    for t in ["t-a", "t-b", "t-quota", "t-conflict"] {
        let ns = format!("{}-{t}", env.id);
        env.create_namespace(&ns, &[]).await;
    }
    let quota_ns = format!("{}-t-quota", env.id);
    quota_without_secrets(&env.client, &quota_ns).await;
    let theirs = Secret {
        metadata: ObjectMeta {
            name: Some("app".into()),
            ..Default::default()
        },
        data: Some(data_map(&[("theirs", "1")])),
        ..Default::default()
    };
    env.secrets(&format!("{}-t-conflict", env.id))
        .create(&PostParams::default(), &theirs)
        .await
        .expect("create the unmanaged Secret");

    // A remote cluster with a namespace for the copies, and a refused registration.
    let r1 = remote(1);
    let remote_ns = RemoteNamespaces::new(&env.id);
    remote_ns
        .create(r1, &format!("{}-t-remote", env.id), &[])
        .await;
    let cluster = format!("{}-r1", env.id);
    common::remote::register(
        &env.client,
        &env.source_ns,
        "cluster-r1",
        &cluster,
        &r1.kubeconfig_text(&r1.identity_token()),
    )
    .await;
    common::remote::register(
        &env.client,
        &env.source_ns,
        "cluster-bad",
        &format!("{}-bad", env.id),
        "this is not a kubeconfig",
    )
    .await;

    let port = free_port();
    let recording_since = std::time::Instant::now();
    let prom = Prometheus::start(
        &[Target {
            job: "p2k",
            port,
            labels: &[("namespace", "p2k-ns")],
        }],
        None,
        "1s",
    )
    .await;
    let token_file = state_dir().join("vault.token").display().to_string();
    let ctl = Controller::start(&env, port, &token_file).await;

    // Sources: to every test namespace and the remote cluster, to Vault, one in
    // conflict, one with a bad annotation, one of a refused type.
    let vault_path = format!("push-to-k8s/{}/kv", env.id);
    env.add_source(&source(
        &env,
        "app",
        &[
            (common::remote::CLUSTERS_ANNOTATION, &cluster),
            (VAULT_PATH, &vault_path),
        ],
    ))
    .await;
    env.add_source(&source(
        &env,
        "bad",
        &[("push-to-k8s.io/namespace-selector", "in (")],
    ))
    .await;
    let mut token = source(&env, "bootstrap-token-abcdef", &[]);
    token.type_ = Some("bootstrap.kubernetes.io/token".into());
    env.add_source(&token).await;
    let ok_targets = vec![format!("{}-t-a", env.id), format!("{}-t-b", env.id)];
    env.await_copies(&ok_targets, "app", &[("v", "1")]).await;
    // Keep the controller writing for a while: an update every few seconds
    // (longer when recording the data for the dashboard's picture).
    let record = std::env::var_os("DASHBOARD_RECORD").map(PathBuf::from);
    let updates = if record.is_some() { 40 } else { 4 };
    for v in 2..=updates {
        tokio::time::sleep(Duration::from_secs(3)).await;
        env.sources()
            .patch(
                "app",
                &PatchParams::default(),
                &Patch::Merge(json!({"stringData": {"v": v.to_string()}})),
            )
            .await
            .expect("update the source");
        let v = v.to_string();
        env.await_copies(&ok_targets, "app", &[("v", &v)]).await;
    }

    let d = dashboard();
    let queries = dashboard_queries(&d);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let vars = [
        ("job", "p2k"),
        ("namespace", "p2k-ns"),
        ("datasource", "unused"),
    ];
    until("every dashboard query returns data", FIRE, || async {
        let mut empty = Vec::new();
        for (at, expr) in &queries {
            let promql = concrete(expr, "1m", &vars);
            // Grafana runs range queries; each must parse (an error fails at once).
            let data = match prom.query_range(&promql, 300, 2).await {
                Ok(d) => d,
                Err(e) if e.contains("bad_data") => panic!("{at}: {promql}: {e}"),
                Err(e) => return Err(format!("{at}: {e}")),
            };
            let has_data = data["result"].as_array().is_some_and(|r| {
                r.iter().any(|s| {
                    s["values"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|p| p[1] != "NaN"))
                })
            });
            if !has_data {
                empty.push(format!("{at}: {promql}"));
            }
        }
        if empty.is_empty() {
            Ok(())
        } else {
            Err(format!("no data yet for:\n{}", empty.join("\n")))
        }
    })
    .await;
    // The latency the panel draws is from the first change of a batch: no copy,
    // here, in the remote cluster or in Vault, is written before the batch's
    // quiet window D is over, so no observation of a target lies in a bucket
    // below D.
    let quiet = value(&prom, "max(push_to_k8s_debounce_seconds)").await;
    let quiet = quiet.expect("push_to_k8s_debounce_seconds");
    for target in ["home", "remote", "vault"] {
        let q =
            format!(r#"sum by (le) (push_to_k8s_propagation_seconds_bucket{{target="{target}"}})"#);
        let buckets = prom.query(&q).await.unwrap();
        let mut total = 0.0;
        let mut early = Vec::new();
        for b in buckets["result"].as_array().unwrap() {
            let le = b["metric"]["le"].as_str().unwrap();
            let n: f64 = b["value"][1].as_str().unwrap().parse().unwrap();
            if le == "+Inf" {
                total = n;
            } else if le.parse::<f64>().unwrap() < quiet && n > 0.0 {
                early.push(format!("{n} within {le} s"));
            }
        }
        assert!(total > 0.0, "no {target} propagation observed: {buckets}");
        assert!(
            early.is_empty(),
            "{target} copies counted as propagated before D = {quiet} s: {early:?} of {total}"
        );
    }
    // DASHBOARD_RECORD=FILE: every panel's series over the whole run, for
    // docs/operations/plot_dashboard.py (the picture in docs/operations.md).
    if let Some(path) = record {
        let seconds = recording_since.elapsed().as_secs() + 1;
        let mut out = Vec::new();
        for p in common::prometheus::panels(&d) {
            let mut targets = Vec::new();
            for t in p["targets"].as_array().unwrap() {
                let promql = concrete(t["expr"].as_str().unwrap(), "20s", &vars);
                let data = prom.query_range(&promql, seconds, 2).await.unwrap();
                targets.push(json!({"legend": t["legendFormat"], "result": data["result"]}));
            }
            out.push(json!({
                "title": p["title"], "type": p["type"], "gridPos": p["gridPos"],
                "unit": p["fieldConfig"]["defaults"]["unit"], "targets": targets,
            }));
        }
        std::fs::write(
            &path,
            serde_json::to_string(&json!({"panels": out})).unwrap(),
        )
        .unwrap();
    }
    drop(ctl);
    drop(remote_ns);
    env.teardown().await;
}
