//! Lifecycle scenarios against the real control plane: type and immutability
//! changes (7), restarts (8), what happens while the controller is down or
//! pointed at a namespace that does not exist (9), and pacing (12).
//!
//! Scenario 10 (every invalid value of every variable exits 2 naming it) is
//! `tests/config_env.rs`.
//!
//! Every controller started here copies into *every* namespace of the
//! cluster, so secret names carry the test's unique id and assertions look at
//! the test's own namespaces (or filter cluster-wide lists by our source
//! annotation). Each test ends by removing the copies it left in namespaces
//! it does not own (e.g. `default`), then its namespaces.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};

const MANAGED_LABEL: (&str, &str) = ("push-to-k8s.io/managed-by", "push-to-k8s");
const BASIC_AUTH: &str = "kubernetes.io/basic-auth";

/// Start a controller for `env` and wait until `/readyz` says its caches synced.
async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Daemon {
    let mut vars = vec![("DEBUG", "true")];
    vars.extend_from_slice(extra);
    let mut daemon = Daemon::start(&env.source_ns, &vars);
    eprintln!("controller log: {}", daemon.log.display());
    daemon.await_ready().await;
    daemon
}

/// SIGTERM; the controller must exit 0 within a few seconds.
fn stop_cleanly(daemon: &mut Daemon) {
    let t = Instant::now();
    let status = daemon.stop();
    let took = t.elapsed();
    assert!(
        status.success(),
        "controller exited with {status} after SIGTERM; log:\n{}",
        tail(&daemon.logs())
    );
    assert!(
        took < Duration::from_secs(5),
        "controller took {took:?} to exit after SIGTERM"
    );
    eprintln!("controller exited 0, {took:?} after SIGTERM");
}

/// The last lines of a log, for assertion messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// A source (`push-to-k8s=source`) with the type, data and immutability of `want`.
fn source(name: &str, want: &Expect<'_>) -> Secret {
    let mut s = source_secret(name, want.data);
    s.type_ = Some(want.type_.to_string());
    s.immutable = want.immutable.then_some(true);
    s
}

/// A Secret carrying our managed-by label and a source annotation of our
/// choosing, made by hand (not by the controller under test).
fn marked(name: &str, source_annotation: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(map(&[MANAGED_LABEL])),
            annotations: Some(map(&[(SOURCE_ANNOTATION, source_annotation)])),
            ..Default::default()
        },
        data: Some(data_map(&[("k", "foreign")])),
        ..Default::default()
    }
}

/// Every active namespace a controller with default settings copies into.
async fn default_targets(env: &TestEnv) -> Vec<String> {
    env.targets_where(|_| true).await
}

/// Give source `name` the data `data` with an update (not a patch).
async fn replace_data(env: &TestEnv, name: &str, data: &[(&str, &str)]) {
    let mut s = env.sources().get(name).await.unwrap();
    s.data = Some(data_map(data));
    env.sources()
        .replace(name, &PostParams::default(), &s)
        .await
        .unwrap();
}

/// What a copy must hold.
struct Expect<'a> {
    type_: &'a str,
    data: &'a [(&'a str, &'a str)],
    immutable: bool,
}

/// Why `copy` is not the copy of `source_ns/name` that `want` describes, if
/// it is not.
fn copy_mismatch(
    copy: Option<&Secret>,
    source_ns: &str,
    name: &str,
    want: &Expect<'_>,
) -> Option<String> {
    let Expect {
        type_,
        data,
        immutable,
    } = *want;
    let Some(c) = copy else {
        return Some("no copy".into());
    };
    let mut why = Vec::new();
    if c.type_.as_deref().unwrap_or("Opaque") != type_ {
        why.push(format!("type {:?}", c.type_));
    }
    if c.data.clone().unwrap_or_default() != data_map(data) {
        let keys: Vec<_> = c.data.iter().flat_map(|d| d.keys()).collect();
        why.push(format!("other data (keys {keys:?})"));
    }
    if c.immutable.unwrap_or(false) != immutable {
        why.push(format!("immutable {:?}", c.immutable));
    }
    let labels = c.metadata.labels.clone().unwrap_or_default();
    if labels.get(MANAGED_LABEL.0).map(String::as_str) != Some(MANAGED_LABEL.1) {
        why.push("no managed-by label".into());
    }
    let annotations = c.metadata.annotations.clone().unwrap_or_default();
    let origin = format!("{source_ns}/{name}");
    if annotations.get(SOURCE_ANNOTATION) != Some(&origin) {
        why.push(format!(
            "source annotation {:?}",
            annotations.get(SOURCE_ANNOTATION)
        ));
    }
    (!why.is_empty()).then(|| why.join(", "))
}

/// Wait until every namespace in `namespaces` holds exactly that copy.
async fn await_exact(
    env: &TestEnv,
    daemon: &Daemon,
    namespaces: &[String],
    name: &str,
    want: &Expect<'_>,
) {
    let deadline = Instant::now() + Duration::from_secs(90);
    for ns in namespaces {
        loop {
            let copy = env.copy(ns, name).await;
            let Some(why) = copy_mismatch(copy.as_ref(), &env.source_ns, name, want) else {
                break;
            };
            assert!(
                Instant::now() < deadline,
                "{ns}/{name} did not become the {} copy (immutable: {}) within 90 s: {why}; \
                 controller log:\n{}",
                want.type_,
                want.immutable,
                tail(&daemon.logs())
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// `(uid, resourceVersion)` of `ns/name`, if it exists.
async fn identity(env: &TestEnv, ns: &str, name: &str) -> Option<(String, String)> {
    env.copy(ns, name).await.map(|s| {
        (
            s.metadata.uid.unwrap_or_default(),
            s.metadata.resource_version.unwrap_or_default(),
        )
    })
}

/// Sum of the controller's own write counter.
async fn own_writes(daemon: &Daemon, filters: &[&str]) -> f64 {
    daemon.metric_sum("push_to_k8s_writes_total", filters).await
}

/// Wait until the controller has flushed at least one batch (its first plan,
/// which covers everything, has run).
async fn await_first_flush(daemon: &Daemon) {
    eventually(
        "the controller's first batch (push_to_k8s_batch_size_count >= 1)",
        Duration::from_secs(60),
        || async {
            (daemon.metric_sum("push_to_k8s_batch_size_count", &[]).await >= 1.0).then_some(())
        },
    )
    .await;
}

/// Scenario 7: a source whose `type` changes (delete and recreate: `type` is
/// immutable in the API), and an immutable source replaced by one with new
/// data, both converge everywhere: every copy ends as the new source, and the
/// controller then stops writing (no replace loop).
#[tokio::test]
async fn type_change_and_replaced_immutable_source_converge_everywhere() {
    let _serial = serial();
    let env = TestEnv::new("lc-type", 4).await;
    let _on_panic = env.cleanup_on_panic();
    let typed = format!("{}-typed", env.id);
    let frozen = format!("{}-frozen", env.id);
    let typed_v1 = Expect {
        type_: "Opaque",
        data: &[("k", "opaque-v1")],
        immutable: false,
    };
    let typed_v2 = Expect {
        type_: BASIC_AUTH,
        data: &[("username", "admin"), ("password", "basic-v2")],
        immutable: false,
    };
    let frozen_v1 = Expect {
        type_: "Opaque",
        data: &[("k", "frozen-v1")],
        immutable: true,
    };
    let frozen_v2 = Expect {
        type_: "Opaque",
        data: &[("k", "frozen-v2"), ("extra", "x")],
        immutable: true,
    };
    for (name, want) in [(&typed, &typed_v1), (&frozen, &frozen_v1)] {
        env.add_source(&source(name, want)).await;
    }
    let mut daemon = start(&env, &[]).await;
    let everywhere = default_targets(&env).await;
    await_exact(&env, &daemon, &everywhere, &typed, &typed_v1).await;
    await_exact(&env, &daemon, &everywhere, &frozen, &frozen_v1).await;

    // Replace both sources at once (typically within one debounce window, so
    // the controller sees "same name, different type / immutable changed").
    let t = Instant::now();
    for name in [&typed, &frozen] {
        env.delete_source(name).await;
    }
    for (name, want) in [(&typed, &typed_v2), (&frozen, &frozen_v2)] {
        env.add_source(&source(name, want)).await;
    }
    await_exact(&env, &daemon, &everywhere, &typed, &typed_v2).await;
    await_exact(&env, &daemon, &everywhere, &frozen, &frozen_v2).await;
    eprintln!(
        "type change and immutable replacement converged in {} namespaces after {:?}",
        everywhere.len(),
        t.elapsed()
    );
    // Nothing else marked as a copy of those sources anywhere.
    let mut want = everywhere.clone();
    want.sort();
    for name in [&typed, &frozen] {
        let mut found = env.copies_anywhere(name).await;
        found.sort();
        assert_eq!(found, want, "namespaces holding copies of {name}");
    }

    // No replace loop: once converged, the controller stays quiet. 4 s is
    // four debounce windows (SECRET_SYNC_DEBOUNCE_SECONDS=1), so any re-plan
    // triggered by our own writes' watch events would have written by then.
    let settled = own_writes(&daemon, &[]).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        own_writes(&daemon, &[]).await,
        settled,
        "the controller kept writing after the copies converged; log:\n{}",
        tail(&daemon.logs())
    );
    await_exact(&env, &daemon, &everywhere, &typed, &typed_v2).await;
    await_exact(&env, &daemon, &everywhere, &frozen, &frozen_v2).await;

    stop_cleanly(&mut daemon);
    env.teardown().await;
}

/// Scenario 8: a restart with everything in sync makes zero write requests,
/// as counted by the API server itself and by the controller; and the witness
/// does count our writes once the source changes.
#[tokio::test]
async fn restart_in_sync_makes_zero_writes() {
    let _serial = serial();
    // Namespace deletions by earlier tests would show up as Secret writes.
    await_no_terminating_namespaces(&client().await).await;
    let env = TestEnv::new("lc-restart", 10).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    env.create_source(&name, &[("token", "v1")]).await;

    let mut first = start(&env, &[]).await;
    // In sync means everywhere, not just in our namespaces.
    let everywhere = default_targets(&env).await;
    assert!(everywhere.len() >= 10, "{everywhere:?}");
    env.await_copies(&everywhere, &name, &[("token", "v1")])
        .await;
    assert!(
        own_writes(&first, &["result=\"ok\""]).await >= everywhere.len() as f64,
        "the first controller's write counter does not count its creates"
    );
    stop_cleanly(&mut first);

    // The process is gone, so its requests are done; 2 s lets the API server
    // finish any request whose connection closed with the process.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = apiserver_secret_writes(&env.client).await;

    let mut second = start(&env, &[]).await;
    await_first_flush(&second).await;
    // The first plan covers everything and is executed right after it is
    // flushed; 3 s (three debounce windows) also covers any re-plan caused by
    // watch events. Nothing should be written in that time.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = apiserver_secret_writes(&env.client).await;
    assert_eq!(
        after - before,
        0.0,
        "the restarted controller made Secret write requests although everything was in sync; \
         log:\n{}",
        tail(&second.logs())
    );
    assert_eq!(
        own_writes(&second, &[]).await,
        0.0,
        "the restarted controller counts writes of its own"
    );

    // The witness is live: one change of the source costs our own update plus
    // one write per copy, and the API server and the controller see them.
    replace_data(&env, &name, &[("token", "v2")]).await;
    env.await_copies(&everywhere, &name, &[("token", "v2")])
        .await;
    let n = everywhere.len() as f64;
    eventually(
        "the controller to count one write per copy",
        Duration::from_secs(30),
        || async { (own_writes(&second, &["result=\"ok\""]).await >= n).then_some(()) },
    )
    .await;
    let changed = apiserver_secret_writes(&env.client).await;
    assert!(
        changed - after > n,
        "the API server counted {} Secret writes for one source change with {n} copies",
        changed - after
    );
    eprintln!(
        "restart: 0 writes for {n} copies in sync; {} writes after one change",
        changed - after
    );

    stop_cleanly(&mut second);
    env.teardown().await;
}

/// Scenario 9: a source deleted while the controller is down has its copies
/// collected at the next start; Secrets carrying our marker but naming
/// another source namespace are left alone.
#[tokio::test]
async fn source_deleted_while_down_is_collected_at_start_but_not_foreign_copies() {
    let _serial = serial();
    let env = TestEnv::new("lc-down", 4).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    let other = format!("{}-x", env.id);
    let [t0, t1, t2, t3] = [0, 1, 2, 3].map(|i| env.targets[i].clone());
    // Marked as ours, but by a controller of another namespace: under an
    // unrelated name, under our source's name, and under a namespace whose
    // name merely starts with ours.
    let foreign = [
        (t0.clone(), marked(&other, "some-other-ns/x")),
        (t1.clone(), marked(&name, &format!("some-other-ns/{name}"))),
        (
            t2.clone(),
            marked(&name, &format!("{}-2/{name}", env.source_ns)),
        ),
    ];
    let mut foreign_ids = Vec::new();
    for (ns, s) in &foreign {
        let made = env
            .secrets(ns)
            .create(&PostParams::default(), s)
            .await
            .unwrap();
        foreign_ids.push((ns.clone(), made.metadata.name.clone().unwrap(), made));
    }
    env.create_source(&name, &[("k", "v1")]).await;

    let mut first = start(&env, &[]).await;
    let everywhere: Vec<String> = default_targets(&env)
        .await
        .into_iter()
        .filter(|ns| *ns != t1 && *ns != t2)
        .collect();
    assert!(everywhere.contains(&t0) && everywhere.contains(&t3));
    env.await_copies(&everywhere, &name, &[("k", "v1")]).await;
    stop_cleanly(&mut first);

    env.delete_source(&name).await;
    let mut second = start(&env, &[]).await;
    env.await_no_copies(&[t0.clone(), t3.clone()], &name).await;
    env.await_no_copies_anywhere(&name).await;
    assert!(
        own_writes(&second, &["op=\"delete\"", "result=\"ok\""]).await >= everywhere.len() as f64,
        "the controller does not count the deletes it made"
    );
    // The deletes of one plan run concurrently (a few in flight); 2 s lets
    // any straggler of the same batch land before we look at the others.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (ns, name, made) in &foreign_ids {
        let now = env.copy(ns, name).await.unwrap_or_else(|| {
            panic!(
                "{ns}/{name} (marked for another source namespace) was deleted; log:\n{}",
                tail(&second.logs())
            )
        });
        assert_eq!(
            (&now.metadata.uid, &now.metadata.resource_version),
            (&made.metadata.uid, &made.metadata.resource_version),
            "{ns}/{name} (marked for another source namespace) was modified"
        );
    }

    stop_cleanly(&mut second);
    env.teardown().await;
}

/// Scenario 9 (second part): a `NAMESPACE` that does not exist stops the
/// program with status 2 and one line naming it, before anything is written:
/// existing copies of a real setup and an orphan naming the missing
/// namespace (which a running controller would collect) stay untouched.
#[tokio::test]
async fn missing_source_namespace_refuses_to_start_and_changes_nothing() {
    let _serial = serial();
    // Namespace deletions by earlier tests would show up as Secret writes.
    await_no_terminating_namespaces(&client().await).await;
    let env = TestEnv::new("lc-nons", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let mut real = start(&env, &[]).await;
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;
    stop_cleanly(&mut real);

    let missing = format!("{}-missing", env.id);
    let orphan = format!("{}-orphan", env.id);
    env.secrets(&env.targets[0])
        .create(
            &PostParams::default(),
            &marked(&orphan, &format!("{missing}/{orphan}")),
        )
        .await
        .unwrap();
    let mut watched = Vec::new();
    for ns in &env.targets {
        watched.push((ns.clone(), name.clone()));
    }
    watched.push((env.targets[0].clone(), orphan.clone()));
    let mut before = Vec::new();
    for (ns, n) in &watched {
        before.push(identity(&env, ns, n).await.expect("exists"));
    }
    // The first controller is gone, so its requests are done; 2 s lets the
    // API server finish any request whose connection closed with it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = apiserver_secret_writes(&env.client).await;

    let mut daemon = Daemon::start(&missing, &[]);
    let t = Instant::now();
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "still running 30 s after start with NAMESPACE={missing}; log:\n{}",
                tail(&daemon.logs())
            )
        });
    let took = t.elapsed();
    let log = daemon.logs();
    assert_eq!(status.code(), Some(2), "exit status {status}; log:\n{log}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want exactly one line, got:\n{log}");
    assert!(
        lines[0].contains("NAMESPACE") && lines[0].contains(&missing),
        "the line does not name NAMESPACE and its value: {}",
        lines[0]
    );
    eprintln!("NAMESPACE={missing}: exit 2 after {took:?}: {}", lines[0]);

    assert_eq!(
        apiserver_secret_writes(&env.client).await - writes_before,
        0.0,
        "Secret writes happened although the controller refused to start"
    );
    for ((ns, n), was) in watched.iter().zip(&before) {
        assert_eq!(
            identity(&env, ns, n).await.as_ref(),
            Some(was),
            "{ns}/{n} was changed or deleted"
        );
    }

    env.teardown().await;
}

/// Scenario 12: with SECRET_SYNC_RATE_LIMIT=5 and SECRET_SYNC_RATE_BURST=1 the
/// writes of one change to a source with 30 target namespaces are paced: the
/// copies in our 30 namespaces get the new data over 5.8 s or more (29
/// intervals of 200 ms), not all at once.
#[tokio::test]
async fn rate_limit_spreads_the_writes_of_one_change() {
    let _serial = serial();
    let env = TestEnv::new("lc-rate", 30).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let mut daemon = start(
        &env,
        &[
            ("SECRET_SYNC_RATE_LIMIT", "5"),
            ("SECRET_SYNC_RATE_BURST", "1"),
        ],
    )
    .await;
    let t = Instant::now();
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;
    eprintln!("rate: 30 initial copies after {:?}", t.elapsed());

    // Watch our copies and note when each of our namespaces first shows the
    // new data.
    let ours: HashSet<String> = env.targets.iter().cloned().collect();
    let want = data_map(&[("k", "v2")]);
    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let listed = Arc::new(AtomicBool::new(false));
    let watch = {
        let api: Api<Secret> = Api::all(env.client.clone());
        let (arrivals, listed, name) = (arrivals.clone(), listed.clone(), name.clone());
        tokio::spawn(async move {
            let stream = watcher::watcher(api, watcher::Config::default().labels(MANAGED_SELECTOR));
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                let s = match event {
                    Ok(Event::Apply(s)) | Ok(Event::InitApply(s)) => s,
                    Ok(Event::InitDone) => {
                        listed.store(true, Ordering::SeqCst);
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        eprintln!("test watch error (retrying): {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let at = Instant::now();
                let ns = s.metadata.namespace.clone().unwrap_or_default();
                if s.metadata.name.as_deref() == Some(name.as_str())
                    && ours.contains(&ns)
                    && s.data.as_ref() == Some(&want)
                {
                    arrivals.lock().unwrap().entry(ns).or_insert(at);
                }
            }
        })
    };
    eventually(
        "the test's own watch to list the copies",
        Duration::from_secs(30),
        || async { listed.load(Ordering::SeqCst).then_some(()) },
    )
    .await;

    replace_data(&env, &name, &[("k", "v2")]).await;
    let changed = Instant::now();
    eventually(
        "all 30 copies to show the new data",
        Duration::from_secs(90),
        || async { (arrivals.lock().unwrap().len() == 30).then_some(()) },
    )
    .await;
    watch.abort();

    let times: BTreeMap<String, Instant> = arrivals.lock().unwrap().clone().into_iter().collect();
    let first = *times.values().min().unwrap();
    let last = *times.values().max().unwrap();
    let span = last - first;
    eprintln!(
        "rate: 30 copies updated from {:?} to {:?} after the change: span {span:?}",
        first - changed,
        last - changed
    );
    assert!(
        span >= Duration::from_millis(4500),
        "30 updates at 5 writes/s (burst 1) should span about 5.8 s, not {span:?}; log:\n{}",
        tail(&daemon.logs())
    );

    stop_cleanly(&mut daemon);
    env.teardown().await;
}

/// Scenario 12 (second part): with ENABLE_SECRET_WATCHER=false the sources
/// come from the list at start (copies appear), and a source created later is
/// not copied within 10 s: there is no source watch, only the periodic sync
/// (SYNC_INTERVAL=1, i.e. a minute, far beyond the window).
#[tokio::test]
async fn without_source_watch_only_the_initial_list_is_copied() {
    let _serial = serial();
    let env = TestEnv::new("lc-nowatch", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let early = format!("{}-early", env.id);
    let late = format!("{}-late", env.id);
    env.create_source(&early, &[("k", "v1")]).await;
    // Before the process starts: its first periodic resync is a minute later.
    let started = Instant::now();
    let mut daemon = start(
        &env,
        &[("ENABLE_SECRET_WATCHER", "false"), ("SYNC_INTERVAL", "1")],
    )
    .await;
    env.await_copies(&env.targets, &early, &[("k", "v1")]).await;

    env.create_source(&late, &[("k", "v1")]).await;
    let created = Instant::now();
    while created.elapsed() < Duration::from_secs(10) {
        for ns in &env.targets {
            assert!(
                env.copy(ns, &late).await.is_none(),
                "{ns}/{late} was copied {:?} after the source was created, although the \
                 source watch is disabled; log:\n{}",
                created.elapsed(),
                tail(&daemon.logs())
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(55),
        "the window reached the first periodic resync; the check proves nothing"
    );
    // Still running and ready, not silently dead.
    assert!(
        !daemon.metrics().await.is_empty(),
        "controller no longer serves /metrics"
    );

    stop_cleanly(&mut daemon);
    env.teardown().await;
}

/// The replica watch carries metadata only; a copy whose data was changed
/// while the controller was down is still found at start (its managed fields
/// show another writer, or a key no longer ours) and repaired, with the
/// periodic resync out of the picture. An untouched copy is not written.
#[tokio::test]
async fn copies_tampered_while_down_are_repaired_at_start() {
    let _serial = serial();
    let env = TestEnv::new("lc-tamper", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    let data = [("a", "v1"), ("b", "v1")];
    env.create_source(&name, &data).await;
    let mut first = start(&env, &[]).await;
    env.await_copies(&env.targets, &name, &data).await;
    stop_cleanly(&mut first);

    // While it is down: a value edited, a key removed, a copy left alone.
    let patch = |ns: &str, body: serde_json::Value| {
        let api = env.secrets(ns);
        let name = name.clone();
        async move {
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .expect("edit the copy")
        }
    };
    let edited = patch(&env.targets[0], serde_json::json!({"data": {"a": "eA=="}})).await;
    assert_eq!(edited.data.unwrap()["a"].0, b"x");
    let removed = patch(&env.targets[1], serde_json::json!({"data": {"b": null}})).await;
    assert!(!removed.data.unwrap().contains_key("b"));
    let untouched = env.copy(&env.targets[2], &name).await.unwrap();

    let mut second = start(&env, &[("SYNC_INTERVAL", "1440")]).await;
    env.await_copies(&env.targets[..2], &name, &data).await;
    await_first_flush(&second).await;
    let now = env.copy(&env.targets[2], &name).await.unwrap();
    assert_eq!(
        now.metadata.resource_version, untouched.metadata.resource_version,
        "the copy in sync was written"
    );
    assert_eq!(
        second.metric_sum("push_to_k8s_resyncs_total", &[]).await,
        0.0,
        "a periodic resync ran although SYNC_INTERVAL=1440"
    );
    stop_cleanly(&mut second);
    env.teardown().await;
}

/// Issue 16, defect 12: deleting the source namespace at runtime deleted every
/// copy in the cluster (its deletion deletes every source, so every copy
/// looked orphaned; the guard existed only at start). While the source
/// namespace is being deleted or gone, nothing is deleted and `/readyz` is
/// unready with the reason. The namespace deletion is the real one
/// (kube-controller-manager's namespace controller deletes the sources).
#[tokio::test]
async fn defect12_deleting_the_source_namespace_deletes_no_copy_and_readyz_says_why() {
    let _serial = serial();
    let env = TestEnv::new("lc-srcdel", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let mut daemon = start(&env, &[]).await;
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;
    let mut before = Vec::new();
    for ns in &env.targets {
        before.push(identity(&env, ns, &name).await.expect("a copy"));
    }

    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(env.client.clone());
    namespaces
        .delete(&env.source_ns, &Default::default())
        .await
        .expect("delete the source namespace");
    eventually(
        "the source namespace to be gone (its sources deleted with it)",
        Duration::from_secs(120),
        || async {
            namespaces
                .get_opt(&env.source_ns)
                .await
                .expect("get namespace")
                .is_none()
                .then_some(())
        },
    )
    .await;
    let why = format!("source namespace {} does not exist", env.source_ns);
    let body = until(
        "/readyz unready, naming the lost source namespace",
        Duration::from_secs(30),
        || async {
            match daemon.readyz().await {
                Some((503, body)) if body.contains(&why) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    eprintln!("/readyz: {body}");
    // The sources went before the namespace did; give the (1 s) debounce and
    // the writer time to act on it several times over.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (ns, was) in env.targets.iter().zip(&before) {
        assert_eq!(
            identity(&env, ns, &name).await.as_ref(),
            Some(was),
            "{ns}/{name} was deleted or changed after its source namespace went; log:\n{}",
            tail(&daemon.logs())
        );
    }
    assert!(daemon.running(), "the controller keeps running");
    stop_cleanly(&mut daemon);
    env.teardown().await;
}
