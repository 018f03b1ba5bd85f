//! Issue 3: end-to-end synchronisation against the real control plane.
//!
//! One test per scenario, each with its own namespaces ([`TestEnv`]) and its
//! own controller process ([`Daemon`]) at maximum verbosity (`DEBUG=true`,
//! `RUST_LOG=trace`). Every test ends by checking that the controller's log
//! holds none of the Secret values it used (scenario 11); one extra test runs
//! a condensed version of scenarios 1-5 in one daemon and checks that the log
//! really is verbose, so that check cannot pass vacuously.
//!
//! Every controller copies into *every* namespace of the cluster, other
//! tests' leftovers included, so assertions use this test's own Secret names
//! (derived from `env.id`) and namespaces, except where a scenario says
//! "every namespace".

mod common;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// Namespaces carrying this label key get nothing (`EXCLUDE_NAMESPACE_LABEL`).
const EXCLUDE_KEY: &str = "e2e.push-to-k8s.io/exclude";
const MANAGED_KEY: &str = "push-to-k8s.io/managed-by";
const MANAGED_VALUE: &str = "push-to-k8s";
const HASH_ANNOTATION: &str = "push-to-k8s.io/content-hash";
/// A non-default type, so "same type" is not satisfied by the `Opaque` default.
const CUSTOM_TYPE: &str = "e2e.push-to-k8s.io/custom";
const WAIT: Duration = Duration::from_secs(60);
/// Drift repair bound of scenario 5.
const REPAIR: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- helpers

/// A distinctive Secret value (`value-<random>`) that must never reach a log.
fn secret_value(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mixed = (nanos as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(std::process::id()) << 20)
        .wrapping_add(u64::from(N.fetch_add(1, Ordering::Relaxed)));
    format!("value-{tag}-{mixed:016x}")
}

/// Standard base64, as the API server and every JSON body carry Secret data.
fn b64(v: &str) -> String {
    let s = serde_json::to_string(&ByteString(v.as_bytes().to_vec())).unwrap();
    s.trim_matches('"').to_string()
}

/// Start the controller for `env` at maximum verbosity and wait until ready.
async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Daemon {
    let mut vars = vec![
        ("DEBUG", "true"),
        ("RUST_LOG", "trace"),
        ("EXCLUDE_NAMESPACE_LABEL", EXCLUDE_KEY),
    ];
    vars.extend_from_slice(extra);
    let mut daemon = Daemon::start(&env.source_ns, &vars);
    daemon.await_ready().await;
    daemon
}

/// Scenario 11 on one log: not empty, and none of `values` in any encoding
/// a careless log line could use (raw, base64, `Debug` of the bytes).
fn assert_no_values(log: &str, values: &[String]) {
    assert!(
        !log.trim().is_empty(),
        "the controller log is empty: the value check would be vacuous"
    );
    assert!(
        log.lines().any(|l| l.contains(" DEBUG ")),
        "no DEBUG line in the controller log although DEBUG=true and RUST_LOG=trace"
    );
    for v in values {
        let bytes = format!("{:?}", v.as_bytes());
        let bytes = bytes.trim_matches(|c| c == '[' || c == ']');
        for (encoding, needle) in [("raw", v.as_str()), ("base64", &b64(v)), ("bytes", bytes)] {
            let hits: Vec<&str> = log.lines().filter(|l| l.contains(needle)).collect();
            assert!(
                hits.is_empty(),
                "a Secret value ({encoding}) appears in {} controller log line(s), first: {}",
                hits.len(),
                hits[0]
            );
        }
    }
}

/// End of every test: SIGTERM the controller, remove what the test left in
/// the cluster (copies in namespaces it does not own, then its namespaces),
/// then check the exit status and the log.
async fn finish(env: TestEnv, mut daemon: Daemon, values: &[String]) -> String {
    let status = daemon.stop();
    let log = daemon.logs();
    env.teardown().await;
    assert_no_values(&log, values);
    assert!(
        status.success(),
        "controller exited with {status} after SIGTERM"
    );
    log
}

fn secret(
    name: &str,
    data: &[(&str, &str)],
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    type_: Option<&str>,
) -> Secret {
    let mut l = map(labels);
    l.insert(SOURCE_SELECTOR_KEY.into(), "source".into());
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(l),
            annotations: Some(map(annotations)),
            ..Default::default()
        },
        data: Some(data_map(data)),
        type_: type_.map(str::to_string),
        ..Default::default()
    }
}

/// An unmanaged Secret a user created by hand (no source label, no markers).
async fn create_unmanaged(env: &TestEnv, ns: &str, name: &str, value: &str) -> Secret {
    let s = Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(map(&[("owner", "someone-else")])),
            annotations: Some(map(&[("note", "hand-made")])),
            ..Default::default()
        },
        data: Some(data_map(&[("mine", value)])),
        ..Default::default()
    };
    env.secrets(ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create unmanaged secret")
}

/// The unmanaged Secret `before` is still exactly what it was.
async fn assert_untouched(env: &TestEnv, before: &Secret) {
    let ns = before.metadata.namespace.as_deref().unwrap();
    let name = before.metadata.name.as_deref().unwrap();
    let now = env
        .copy(ns, name)
        .await
        .unwrap_or_else(|| panic!("unmanaged {ns}/{name} was deleted"));
    assert_eq!(
        now.metadata.resource_version, before.metadata.resource_version,
        "unmanaged {ns}/{name} was written to"
    );
    assert!(
        now.data == before.data,
        "unmanaged {ns}/{name}: data changed"
    );
    assert_eq!(now.type_, before.type_, "unmanaged {ns}/{name}: type");
    assert_eq!(
        now.metadata.labels, before.metadata.labels,
        "unmanaged {ns}/{name}: labels"
    );
    assert_eq!(
        now.metadata.annotations, before.metadata.annotations,
        "unmanaged {ns}/{name}: annotations"
    );
    assert_eq!(now.metadata.uid, before.metadata.uid, "{ns}/{name}: uid");
}

async fn merge(api: &Api<Secret>, name: &str, patch: serde_json::Value) -> Secret {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("merge patch {name}: {e}"))
}

async fn label_namespace(env: &TestEnv, ns: &str, value: Option<&str>) {
    let api: Api<Namespace> = Api::all(env.client.clone());
    let patch = json!({"metadata": {"labels": {EXCLUDE_KEY: value}}});
    api.patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch namespace labels");
}

fn type_of(s: &Secret) -> &str {
    s.type_
        .as_deref()
        .filter(|t| !t.is_empty())
        .unwrap_or("Opaque")
}

fn data_keys(s: &Secret) -> Vec<String> {
    s.data.iter().flatten().map(|(k, _)| k.clone()).collect()
}

/// Is `copy` exactly the copy of `source` (DESIGN §4)? Reasons never show values.
fn check_copy(copy: &Secret, source: &Secret, source_ns: &str) -> Result<(), String> {
    let ns = copy.metadata.namespace.as_deref().unwrap_or("?");
    let name = source.metadata.name.as_deref().unwrap();
    if copy.data != source.data {
        return Err(format!(
            "{ns}/{name}: data differs (keys {:?}, source keys {:?})",
            data_keys(copy),
            data_keys(source)
        ));
    }
    if type_of(copy) != type_of(source) {
        return Err(format!(
            "{ns}/{name}: type {:?}, source {:?}",
            type_of(copy),
            type_of(source)
        ));
    }
    if copy.immutable.unwrap_or(false) != source.immutable.unwrap_or(false) {
        return Err(format!("{ns}/{name}: immutable differs"));
    }
    let mut want_labels = source.metadata.labels.clone().unwrap_or_default();
    want_labels.remove(SOURCE_SELECTOR_KEY);
    want_labels.insert(MANAGED_KEY.into(), MANAGED_VALUE.into());
    // Discovery labels (the test's names are valid label values as they are).
    want_labels.insert("push-to-k8s.io/source-name".into(), name.into());
    want_labels.insert("push-to-k8s.io/source-namespace".into(), source_ns.into());
    let labels = copy.metadata.labels.clone().unwrap_or_default();
    if labels != want_labels {
        return Err(format!(
            "{ns}/{name}: labels {labels:?}, want {want_labels:?}"
        ));
    }
    let mut annotations = copy.metadata.annotations.clone().unwrap_or_default();
    match annotations.remove(HASH_ANNOTATION) {
        Some(h) if !h.is_empty() => {}
        _ => return Err(format!("{ns}/{name}: no {HASH_ANNOTATION} annotation")),
    }
    let mut want_annotations: BTreeMap<String, String> = source
        .metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("push-to-k8s.io/"))
        .collect();
    want_annotations.insert(SOURCE_ANNOTATION.into(), format!("{source_ns}/{name}"));
    if annotations != want_annotations {
        return Err(format!(
            "{ns}/{name}: annotations {annotations:?}, want {want_annotations:?}"
        ));
    }
    Ok(())
}

/// Does each of `namespaces` hold exactly the current copy of `name`?
async fn exact_copies(env: &TestEnv, namespaces: &[String], name: &str) -> Result<(), String> {
    let source = env.sources().get(name).await.map_err(|e| e.to_string())?;
    for ns in namespaces {
        let copy = env
            .copy(ns, name)
            .await
            .ok_or_else(|| format!("no copy in {ns}"))?;
        check_copy(&copy, &source, &env.source_ns)?;
    }
    Ok(())
}

/// Wait until each of `namespaces` holds exactly the current copy of `name`.
async fn await_exact(env: &TestEnv, namespaces: &[String], name: &str, timeout: Duration) {
    until(
        &format!("exact copies of {name} in {namespaces:?}"),
        timeout,
        || exact_copies(env, namespaces, name),
    )
    .await
}

/// Which metadata of a copy an expectation of [`await_metadata`] is about.
#[derive(Clone, Copy)]
enum Meta {
    Label,
    Annotation,
}

/// Wait (up to `timeout`) until the copy of `name` in each of `namespaces`
/// meets every `(kind, key, value)` of `want`: a label or annotation `key`
/// with that value, or (`None`) no such key at all.
async fn await_metadata(
    env: &TestEnv,
    namespaces: &[String],
    name: &str,
    timeout: Duration,
    want: &[(Meta, &str, Option<&str>)],
) {
    let describe = |&(kind, key, value): &(Meta, &str, Option<&str>)| {
        let kind = match kind {
            Meta::Label => "label",
            Meta::Annotation => "annotation",
        };
        match value {
            Some(v) => format!("{kind} {key}={v}"),
            None => format!("no {kind} {key}"),
        }
    };
    let wanted: Vec<String> = want.iter().map(describe).collect();
    until(
        &format!(
            "copies of {name} in {namespaces:?} with {}",
            wanted.join(", ")
        ),
        timeout,
        || async {
            for ns in namespaces {
                let c = env.copy(ns, name).await.ok_or(format!("no copy in {ns}"))?;
                for &(kind, key, value) in want {
                    let map = match kind {
                        Meta::Label => &c.metadata.labels,
                        Meta::Annotation => &c.metadata.annotations,
                    };
                    let got = map.as_ref().and_then(|m| m.get(key)).map(String::as_str);
                    if got != value {
                        return Err(format!(
                            "{ns}: labels {:?} annotations {:?}",
                            c.metadata.labels, c.metadata.annotations
                        ));
                    }
                }
            }
            Ok(())
        },
    )
    .await
}

/// Every Active namespace that should get a copy (DESIGN §3, no narrowing).
async fn expected_targets(env: &TestEnv) -> Vec<String> {
    env.targets_where(|n| {
        n.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
            && !n
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(EXCLUDE_KEY))
    })
    .await
}

/// Warning `Conflict` Events on source `name`, as `(type, text)`.
async fn conflict_events(env: &TestEnv, name: &str) -> Vec<(String, String)> {
    env.events_on(name, "Conflict").await
}

// ---------------------------------------------------------------- scenarios

/// 1. A labelled Secret reaches every non-excluded namespace, identical, with
/// our markers; none in the source, protected or excluded namespaces.
#[tokio::test]
async fn s01_source_reaches_every_non_excluded_namespace() {
    let _serial = serial();
    let mut env = TestEnv::new("e2e-all", 21).await;
    let _on_panic = env.cleanup_on_panic();
    let excluded = format!("{}-excl", env.id);
    env.create_namespace(&excluded, &[(EXCLUDE_KEY, "true")])
        .await;
    let daemon = start(&env, &[]).await;

    let name = format!("{}-db", env.id);
    let (user, pass) = (secret_value("user"), secret_value("pass"));
    let started = Instant::now();
    env.add_source(&secret(
        &name,
        &[("username", &user), ("password", &pass)],
        &[("app", "e2e")],
        &[("e2e/note", "copied")],
        Some(CUSTOM_TYPE),
    ))
    .await;

    let reached = until(
        &format!("{name} in every Active, non-excluded namespace"),
        WAIT,
        || async {
            let source = env.sources().get(&name).await.map_err(|e| e.to_string())?;
            let expected = expected_targets(&env).await;
            for ns in &expected {
                match env.secrets(ns).get_opt(&name).await {
                    Ok(Some(copy)) => check_copy(&copy, &source, &env.source_ns)?,
                    Ok(None) => {
                        // A namespace that began terminating meanwhile is no target.
                        if expected_targets(&env).await.contains(ns) {
                            return Err(format!("no copy in {ns}"));
                        }
                    }
                    Err(e) => return Err(format!("{ns}: {e}")),
                }
            }
            Ok(expected)
        },
    )
    .await;
    println!(
        "s01: {} namespaces reached in {:?}",
        reached.len(),
        started.elapsed()
    );
    for t in &env.targets {
        assert!(reached.contains(t), "{t} was not an expected target");
    }
    assert!(reached.contains(&"default".to_string()));
    assert!(reached.len() > env.targets.len());

    // Nothing where nothing belongs. Everything above came from one plan, so
    // these are decided already.
    let source = env.sources().get(&name).await.unwrap();
    assert!(
        source
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| !l.contains_key(MANAGED_KEY)),
        "the source itself was overwritten with a copy"
    );
    assert!(
        source
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| !a.contains_key(SOURCE_ANNOTATION)),
        "the source itself carries a copy marker"
    );
    for ns in PROTECTED.iter().copied().chain([excluded.as_str()]) {
        assert!(
            env.copy(ns, &name).await.is_none(),
            "{ns} must not get a copy"
        );
    }
    // Cluster-wide, the copies are exactly the expected namespaces.
    let mut everywhere = env.copies_anywhere(&name).await;
    everywhere.sort();
    let mut want = expected_targets(&env).await;
    want.sort();
    assert_eq!(everywhere, want, "namespaces holding a copy");

    finish(env, daemon, &[user, pass]).await;
}

/// 2. Data, label-only and annotation-only changes on the source propagate.
#[tokio::test]
async fn s02_changes_on_the_source_propagate() {
    let _serial = serial();
    let env = TestEnv::new("e2e-upd", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let daemon = start(&env, &[]).await;
    let name = format!("{}-cfg", env.id);
    let (v1, v2) = (secret_value("v1"), secret_value("v2"));
    env.add_source(&secret(&name, &[("k", &v1)], &[("app", "e2e")], &[], None))
        .await;
    await_exact(&env, &env.targets, &name, WAIT).await;

    // Data.
    let t = Instant::now();
    merge(&env.sources(), &name, json!({"data": {"k": b64(&v2)}})).await;
    env.await_copies(&env.targets, &name, &[("k", &v2)]).await;
    await_exact(&env, &env.targets, &name, WAIT).await;
    println!("s02: data change propagated in {:?}", t.elapsed());

    // Label only.
    let t = Instant::now();
    merge(
        &env.sources(),
        &name,
        json!({"metadata": {"labels": {"tier": "gold"}}}),
    )
    .await;
    let tier = (Meta::Label, "tier", Some("gold"));
    await_metadata(&env, &env.targets, &name, WAIT, &[tier]).await;
    await_exact(&env, &env.targets, &name, WAIT).await;
    println!("s02: label change propagated in {:?}", t.elapsed());

    // Annotation only.
    let t = Instant::now();
    merge(
        &env.sources(),
        &name,
        json!({"metadata": {"annotations": {"e2e/owner": "team-a"}}}),
    )
    .await;
    let owner = (Meta::Annotation, "e2e/owner", Some("team-a"));
    await_metadata(&env, &env.targets, &name, WAIT, &[owner]).await;
    await_exact(&env, &env.targets, &name, WAIT).await;
    println!("s02: annotation change propagated in {:?}", t.elapsed());

    finish(env, daemon, &[v1, v2]).await;
}

/// 3. Deleting a source, or removing its label, removes all its copies and
/// never touches an unmanaged Secret of the same name.
#[tokio::test]
async fn s03_deleted_or_unlabelled_source_removes_its_copies_only() {
    let _serial = serial();
    let env = TestEnv::new("e2e-del", 4).await;
    let _on_panic = env.cleanup_on_panic();
    let (gone, unlabelled) = (format!("{}-gone", env.id), format!("{}-unl", env.id));
    let (va, vb, ua, ub) = (
        secret_value("a"),
        secret_value("b"),
        secret_value("user-a"),
        secret_value("user-b"),
    );
    // Hand-made Secrets with the sources' names, before the sources exist.
    let mine_a = create_unmanaged(&env, &env.targets[0], &gone, &ua).await;
    let mine_b = create_unmanaged(&env, &env.targets[1], &unlabelled, &ub).await;
    let daemon = start(&env, &[]).await;
    for (n, v) in [(&gone, &va), (&unlabelled, &vb)] {
        env.add_source(&secret(n, &[("k", v)], &[], &[], None))
            .await;
    }
    let others = |skip: usize| -> Vec<String> {
        env.targets
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, n)| n.clone())
            .collect()
    };
    await_exact(&env, &others(0), &gone, WAIT).await;
    await_exact(&env, &others(1), &unlabelled, WAIT).await;
    assert_untouched(&env, &mine_a).await;
    assert_untouched(&env, &mine_b).await;
    assert!(env.copies_anywhere(&gone).await.len() >= 3);

    // Delete the first source.
    let t = Instant::now();
    env.delete_source(&gone).await;
    env.await_no_copies_anywhere(&gone).await;
    env.await_no_copies(&others(0), &gone).await;
    println!("s03: copies of a deleted source gone in {:?}", t.elapsed());
    assert_untouched(&env, &mine_a).await;

    // Remove the second source's label: it stops being a source.
    let t = Instant::now();
    merge(
        &env.sources(),
        &unlabelled,
        json!({"metadata": {"labels": {SOURCE_SELECTOR_KEY: null}}}),
    )
    .await;
    env.await_no_copies_anywhere(&unlabelled).await;
    env.await_no_copies(&others(1), &unlabelled).await;
    println!(
        "s03: copies of an unlabelled source gone in {:?}",
        t.elapsed()
    );
    assert_untouched(&env, &mine_b).await;
    assert_untouched(&env, &mine_a).await;
    // The unlabelled Secret itself is the user's again, and stays.
    assert!(env.sources().get_opt(&unlabelled).await.unwrap().is_some());

    finish(env, daemon, &[va, vb, ua, ub]).await;
}

/// 4. A new namespace gets the copy within debounce + 5 s; a namespace that
/// gains the exclude label loses it, and gets it back when the label goes.
#[tokio::test]
async fn s04_namespace_arrivals_and_label_changes() {
    let _serial = serial();
    let mut env = TestEnv::new("e2e-ns", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let daemon = start(&env, &[]).await;
    let name = format!("{}-tok", env.id);
    let v = secret_value("tok");
    env.add_source(&secret(&name, &[("token", &v)], &[], &[], None))
        .await;
    await_exact(&env, &env.targets, &name, WAIT).await;

    // A namespace created after the copies exist: debounce (1 s) + 5 s,
    // measured from the create call.
    let late = format!("{}-late", env.id);
    let created = Instant::now();
    env.create_namespace(&late, &[]).await;
    let bound = Duration::from_secs(6);
    eventually(
        &format!("copy in new namespace {late} within {bound:?} of its creation"),
        bound.saturating_sub(created.elapsed()),
        || async { env.copy(&late, &name).await.map(|_| ()) },
    )
    .await;
    let took = created.elapsed();
    println!("s04: new namespace got its copy {took:?} after the create call");
    assert!(
        took <= bound,
        "new namespace got its copy after {took:?} (> {bound:?})"
    );
    await_exact(&env, std::slice::from_ref(&late), &name, WAIT).await;

    // Gains the exclude label: loses the copy.
    let opted = env.targets[0].clone();
    let t = Instant::now();
    label_namespace(&env, &opted, Some("yes")).await;
    env.await_no_copies(std::slice::from_ref(&opted), &name)
        .await;
    println!("s04: excluded namespace lost its copy in {:?}", t.elapsed());
    // The others keep theirs.
    await_exact(&env, &env.targets[1..], &name, WAIT).await;

    // Loses the label: gets the copy back.
    let t = Instant::now();
    label_namespace(&env, &opted, None).await;
    await_exact(&env, std::slice::from_ref(&opted), &name, WAIT).await;
    println!(
        "s04: re-included namespace got its copy back in {:?}",
        t.elapsed()
    );

    finish(env, daemon, &[v]).await;
}

/// 5. Drift repair with the periodic resync out of the picture: an edited
/// copy is reverted, a deleted copy recreated, an edited label restored.
#[tokio::test]
async fn s05_tampered_or_deleted_copies_are_repaired() {
    let _serial = serial();
    let env = TestEnv::new("e2e-drift", 4).await;
    let _on_panic = env.cleanup_on_panic();
    let daemon = start(&env, &[("SYNC_INTERVAL", "1440")]).await;
    let name = format!("{}-key", env.id);
    let (v, tampered, extra) = (
        secret_value("orig"),
        secret_value("tampered"),
        secret_value("extra"),
    );
    env.add_source(&secret(&name, &[("k", &v)], &[("team", "a")], &[], None))
        .await;
    await_exact(&env, &env.targets, &name, WAIT).await;
    let api = |i: usize| env.secrets(&env.targets[i]);

    // Edited data (a user's merge patch) is reverted.
    let t = Instant::now();
    let edited = merge(&api(0), &name, json!({"data": {"k": b64(&tampered)}})).await;
    assert_eq!(
        edited.data.unwrap()["k"],
        ByteString(tampered.as_bytes().to_vec()),
        "the edit did not land"
    );
    await_exact(&env, &env.targets[0..1], &name, REPAIR).await;
    println!("s05: edited data reverted in {:?}", t.elapsed());

    // A deleted copy is recreated (a new object, not a stale read).
    let old = api(1).get(&name).await.unwrap();
    let t = Instant::now();
    api(1)
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete copy");
    until("deleted copy to be recreated", REPAIR, || async {
        match env.copy(&env.targets[1], &name).await {
            Some(c) if c.metadata.uid != old.metadata.uid => Ok(()),
            Some(_) => Err("still the old object".into()),
            None => Err("no copy".into()),
        }
    })
    .await;
    await_exact(&env, &env.targets[1..2], &name, REPAIR).await;
    println!("s05: deleted copy recreated in {:?}", t.elapsed());

    // A label we copied from the source, changed on the copy, is restored.
    let t = Instant::now();
    let edited = merge(
        &api(2),
        &name,
        json!({"metadata": {"labels": {"team": "b"}}}),
    )
    .await;
    assert_eq!(edited.metadata.labels.unwrap()["team"], "b");
    let team = (Meta::Label, "team", Some("a"));
    await_metadata(&env, &env.targets[2..3], &name, REPAIR, &[team]).await;
    await_exact(&env, &env.targets[2..3], &name, REPAIR).await;
    println!("s05: edited label restored in {:?}", t.elapsed());

    // A data key added by hand is removed again (apply alone would keep it).
    let t = Instant::now();
    let edited = merge(&api(3), &name, json!({"data": {"added": b64(&extra)}})).await;
    assert!(edited.data.unwrap().contains_key("added"));
    await_exact(&env, &env.targets[3..4], &name, REPAIR).await;
    println!("s05: added data key removed in {:?}", t.elapsed());

    // No periodic resync happened: the watch did all of it.
    assert_eq!(
        daemon.metric_sum("push_to_k8s_resyncs_total", &[]).await,
        0.0,
        "a periodic resync ran although SYNC_INTERVAL=1440"
    );

    finish(env, daemon, &[v, tampered, extra]).await;
}

/// 5b. Issue 17: drift is repaired without waiting for the quiet window,
/// which exists to coalesce source changes (an edited or deleted copy has
/// nothing to coalesce). With a 5 s window, an edited copy and a deleted copy
/// are both repaired in well under 2 s (before: after the window, 5 s).
#[tokio::test]
async fn s05b_drift_is_repaired_without_waiting_for_the_quiet_window() {
    let _serial = serial();
    let env = TestEnv::new("e2e-drift-fast", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let quiet = Duration::from_secs(5);
    let daemon = start(
        &env,
        &[
            ("SECRET_SYNC_DEBOUNCE_SECONDS", "5"),
            ("SECRET_SYNC_MAX_WAIT_SECONDS", "30"),
            ("SYNC_INTERVAL", "1440"),
        ],
    )
    .await;
    let name = format!("{}-key", env.id);
    let (v, tampered) = (secret_value("orig"), secret_value("tampered"));
    env.add_source(&secret(&name, &[("k", &v)], &[], &[], None))
        .await;
    await_exact(&env, &env.targets, &name, WAIT).await;
    // The echo of our own creates was planned at once; a copy planned at once
    // is planned at once again only a quiet window later (the fight bound).
    tokio::time::sleep(quiet + Duration::from_secs(1)).await;
    let api = |i: usize| env.secrets(&env.targets[i]);
    let old = api(1).get(&name).await.unwrap();

    // Both at once: one copy edited, the other deleted.
    let t = Instant::now();
    merge(&api(0), &name, json!({"data": {"k": b64(&tampered)}})).await;
    api(1)
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete copy");
    let (edited_in, deleted_in) = (Cell::new(None), Cell::new(None));
    until(
        "the edited and the deleted copy repaired",
        REPAIR,
        || async {
            if edited_in.get().is_none()
                && exact_copies(&env, &env.targets[0..1], &name).await.is_ok()
            {
                edited_in.set(Some(t.elapsed()));
            }
            if deleted_in.get().is_none()
                && env
                    .copy(&env.targets[1], &name)
                    .await
                    .is_some_and(|c| c.metadata.uid != old.metadata.uid)
                && exact_copies(&env, &env.targets[1..2], &name).await.is_ok()
            {
                deleted_in.set(Some(t.elapsed()));
            }
            match (edited_in.get(), deleted_in.get()) {
                (Some(_), Some(_)) => Ok(()),
                (e, d) => Err(format!("edited: {e:?}, deleted: {d:?}")),
            }
        },
    )
    .await;
    let (edited_in, deleted_in) = (edited_in.get().unwrap(), deleted_in.get().unwrap());
    println!(
        "s05b: edited copy repaired in {edited_in:?}, deleted copy in {deleted_in:?} (quiet window {quiet:?})"
    );
    let bound = Duration::from_secs(2);
    assert!(
        edited_in < bound && deleted_in < bound,
        "drift waited for the quiet window ({quiet:?}): edited copy repaired in {edited_in:?}, deleted copy in {deleted_in:?}"
    );

    // A source change still waits for its quiet window (it is coalesced).
    // (Once the echoes of the repairs, held for a window, are planned.)
    tokio::time::sleep(quiet + Duration::from_secs(1)).await;
    let v2 = secret_value("v2");
    let t = Instant::now();
    merge(&env.sources(), &name, json!({"data": {"k": b64(&v2)}})).await;
    await_exact(&env, &env.targets, &name, WAIT).await;
    let propagated = t.elapsed();
    println!("s05b: source change propagated in {propagated:?}");
    assert!(
        propagated >= quiet - Duration::from_millis(500),
        "a source change did not wait for its quiet window: {propagated:?}"
    );

    finish(env, daemon, &[v, tampered, v2]).await;
}

/// 6. A pre-existing unmanaged Secret of the same name is left byte-identical;
/// the source gets a Warning `Conflict` Event naming that namespace; the
/// other namespaces get copies; the conflict metric counts it.
#[tokio::test]
async fn s06_unmanaged_same_name_is_never_overwritten() {
    let _serial = serial();
    let env = TestEnv::new("e2e-conf", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-shared", env.id);
    let (mine, v) = (secret_value("mine"), secret_value("src"));
    let blocked = env.targets[0].clone();
    let before = create_unmanaged(&env, &blocked, &name, &mine).await;
    let daemon = start(&env, &[]).await;
    env.add_source(&secret(&name, &[("k", &v)], &[], &[], None))
        .await;

    // Positive signals first: copies elsewhere, then the Event.
    await_exact(&env, &env.targets[1..], &name, WAIT).await;
    let events = until(
        &format!("a Warning Conflict Event on {name} naming {blocked}"),
        WAIT,
        || async {
            let all = conflict_events(&env, &name).await;
            if all
                .iter()
                .any(|(t, text)| t == "Warning" && text.contains(&blocked))
            {
                Ok(all)
            } else {
                Err(format!("conflict events so far: {all:?}"))
            }
        },
    )
    .await;
    println!("s06: conflict events: {events:?}");
    eventually("push_to_k8s_conflicts_total >= 1", WAIT, || async {
        (daemon.metric_sum("push_to_k8s_conflicts_total", &[]).await >= 1.0).then_some(())
    })
    .await;

    assert_untouched(&env, &before).await;
    // A source change is another chance to overwrite it; it must not.
    let v2 = secret_value("src2");
    merge(&env.sources(), &name, json!({"data": {"k": b64(&v2)}})).await;
    env.await_copies(&env.targets[1..], &name, &[("k", &v2)])
        .await;
    assert_untouched(&env, &before).await;
    assert!(
        !env.copies_anywhere(&name).await.contains(&blocked),
        "the unmanaged Secret became a managed copy"
    );

    finish(env, daemon, &[mine, v, v2]).await;
}

/// 6, with two blocked namespaces: each is named in a Warning Event, not
/// only the first one (DESIGN §5: "a Warning Event naming the namespace").
#[tokio::test]
async fn s06b_every_conflicting_namespace_is_named() {
    let _serial = serial();
    let env = TestEnv::new("e2e-conf2", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-shared", env.id);
    let (m0, m1, v) = (
        secret_value("mine0"),
        secret_value("mine1"),
        secret_value("src"),
    );
    let before = [
        create_unmanaged(&env, &env.targets[0], &name, &m0).await,
        create_unmanaged(&env, &env.targets[1], &name, &m1).await,
    ];
    let daemon = start(&env, &[]).await;
    env.add_source(&secret(&name, &[("k", &v)], &[], &[], None))
        .await;
    await_exact(&env, &env.targets[2..], &name, WAIT).await;
    eventually("push_to_k8s_conflicts_total >= 2", WAIT, || async {
        (daemon.metric_sum("push_to_k8s_conflicts_total", &[]).await >= 2.0).then_some(())
    })
    .await;
    let blocked = &env.targets[0..2];
    until(
        &format!("Warning Conflict Events on {name} naming each of {blocked:?}"),
        WAIT,
        || async {
            let all = conflict_events(&env, &name).await;
            let named = |ns: &String| {
                all.iter()
                    .any(|(t, text)| t == "Warning" && text.contains(ns.as_str()))
            };
            if blocked.iter().all(named) {
                Ok(())
            } else {
                Err(format!("conflict events so far: {all:?}"))
            }
        },
    )
    .await;
    for b in &before {
        assert_untouched(&env, b).await;
    }

    finish(env, daemon, &[m0, m1, v]).await;
}

/// Removing a label or an annotation from the source removes it from the
/// copies too (DESIGN §4: labels and annotations are copied from the source).
#[tokio::test]
async fn s02b_removed_label_and_annotation_propagate() {
    let _serial = serial();
    let env = TestEnv::new("e2e-rm", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let daemon = start(&env, &[]).await;
    let name = format!("{}-meta", env.id);
    let v = secret_value("meta");
    env.add_source(&secret(
        &name,
        &[("k", &v)],
        &[("tier", "gold")],
        &[("e2e/owner", "team-a")],
        None,
    ))
    .await;
    await_exact(&env, &env.targets, &name, WAIT).await;

    merge(
        &env.sources(),
        &name,
        json!({"metadata": {"labels": {"tier": null}, "annotations": {"e2e/owner": null}}}),
    )
    .await;
    let removed = [
        (Meta::Label, "tier", None),
        (Meta::Annotation, "e2e/owner", None),
    ];
    await_metadata(&env, &env.targets, &name, WAIT, &removed).await;
    await_exact(&env, &env.targets, &name, WAIT).await;

    finish(env, daemon, &[v]).await;
}

/// 11. No Secret value in any log line at any level: scenarios 1-5 condensed
/// into one daemon, whose log must be verbose enough for the check to mean
/// something.
#[tokio::test]
async fn s11_no_secret_value_in_the_log_at_any_level() {
    let _serial = serial();
    let mut env = TestEnv::new("e2e-log", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let excluded = format!("{}-excl", env.id);
    env.create_namespace(&excluded, &[(EXCLUDE_KEY, "")]).await;
    let daemon = start(&env, &[("SYNC_INTERVAL", "1440")]).await;
    let name = format!("{}-pw", env.id);
    let values: Vec<String> = ["v1", "v1b", "v2", "tampered"]
        .iter()
        .map(|t| secret_value(t))
        .collect();
    let (v1, v1b, v2, tampered) = (&values[0], &values[1], &values[2], &values[3]);

    // 1: reaches the targets, not the excluded namespace.
    env.add_source(&secret(
        &name,
        &[("password", v1), ("other", v1b)],
        &[("app", "e2e")],
        &[],
        Some(CUSTOM_TYPE),
    ))
    .await;
    await_exact(&env, &env.targets, &name, WAIT).await;
    assert!(env.copy(&excluded, &name).await.is_none());
    // 2: data and label changes.
    merge(
        &env.sources(),
        &name,
        json!({"data": {"password": b64(v2)}}),
    )
    .await;
    env.await_copies(&env.targets, &name, &[("password", v2), ("other", v1b)])
        .await;
    merge(
        &env.sources(),
        &name,
        json!({"metadata": {"labels": {"tier": "gold"}}}),
    )
    .await;
    until("label tier on the copies", WAIT, || {
        exact_copies(&env, &env.targets, &name)
    })
    .await;
    // 4: a new namespace.
    let late = format!("{}-late", env.id);
    env.create_namespace(&late, &[]).await;
    await_exact(&env, std::slice::from_ref(&late), &name, WAIT).await;
    // 5: drift repair.
    merge(
        &env.secrets(&env.targets[0]),
        &name,
        json!({"data": {"password": b64(tampered)}}),
    )
    .await;
    await_exact(&env, &env.targets[0..1], &name, REPAIR).await;
    env.secrets(&env.targets[1])
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete copy");
    await_exact(&env, &env.targets[1..2], &name, REPAIR).await;
    // 3: deletion.
    env.delete_source(&name).await;
    env.await_no_copies(&env.targets, &name).await;
    env.await_no_copies(std::slice::from_ref(&late), &name)
        .await;

    let log = finish(env, daemon, &values).await;
    // Not vacuous: the log is verbose and talks about this very Secret.
    let debug = log.lines().filter(|l| l.contains(" DEBUG ")).count();
    let trace = log.lines().filter(|l| l.contains(" TRACE ")).count();
    let about = log.lines().filter(|l| l.contains(&name)).count();
    println!(
        "s11: log has {} lines, {debug} DEBUG, {trace} TRACE, {about} naming {name}",
        log.lines().count()
    );
    assert!(debug >= 10, "only {debug} DEBUG lines");
    // RUST_LOG=trace took effect (today these come from kube-runtime).
    assert!(trace >= 1, "no TRACE line although RUST_LOG=trace");
    assert!(
        about >= 5,
        "only {about} log lines name the Secret: the log says nothing about the writes"
    );
}

/// DESIGN §3, beyond the numbered scenarios: a source narrows its targets with
/// names and globs, exclusions (which win) and a namespace label selector;
/// naming a protected namespace overrides its protection; a namespace whose
/// labels start or stop matching gains or loses the copy. An annotation that
/// does not parse affects only its own source: a Warning Event, the metric,
/// and its copies stay exactly as they were (its data change is held back)
/// while another source goes on; fixing the annotation resumes it.
#[tokio::test]
async fn s13_target_annotations_and_a_bad_one_affects_only_its_source() {
    const NAMESPACES: &str = "push-to-k8s.io/namespaces";
    const EXCLUDE: &str = "push-to-k8s.io/exclude-namespaces";
    const SELECTOR: &str = "push-to-k8s.io/namespace-selector";
    const TIER: &str = "e2e.push-to-k8s.io/tier";
    let _serial = serial();
    let mut env = TestEnv::new("e2e-tgt", 0).await;
    let _on_panic = env.cleanup_on_panic();
    let id = env.id.clone();
    let [team_a, team_b, other, gold] =
        ["team-a", "team-b", "other", "gold"].map(|n| format!("{id}-{n}"));
    for ns in [&team_a, &team_b, &other] {
        env.create_namespace(ns, &[]).await;
    }
    env.create_namespace(&gold, &[(TIER, "gold")]).await;
    let daemon = start(&env, &[]).await;
    let sources = env.sources();

    let globbed = format!("{id}-glob");
    let v1 = secret_value("glob");
    let include = format!("{id}-team-*, kube-public");
    env.add_source(&secret(
        &globbed,
        &[("k", &v1)],
        &[],
        &[(NAMESPACES, &include), (EXCLUDE, &team_b)],
        None,
    ))
    .await;
    let selected = format!("{id}-sel");
    let v2 = secret_value("sel");
    env.add_source(&secret(
        &selected,
        &[("k", &v2)],
        &[],
        &[(SELECTOR, &format!("{TIER} in (gold, silver)"))],
        None,
    ))
    .await;
    let globbed_targets = vec![team_a.clone(), "kube-public".to_string()];
    await_exact(&env, &globbed_targets, &globbed, WAIT).await;
    await_exact(&env, std::slice::from_ref(&gold), &selected, WAIT).await;

    // Labels that start to match bring the copy; labels that stop take it away.
    let namespaces: Api<Namespace> = Api::all(env.client.clone());
    let set_tier = |tier: Option<&'static str>| {
        let (api, ns) = (namespaces.clone(), other.clone());
        async move {
            let patch = json!({"metadata": {"labels": {TIER: tier}}});
            api.patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .expect("label namespace");
        }
    };
    set_tier(Some("silver")).await;
    await_exact(&env, std::slice::from_ref(&other), &selected, WAIT).await;
    set_tier(None).await;
    env.await_no_copies(std::slice::from_ref(&other), &selected)
        .await;

    // Several flushes later: nothing went anywhere else (team-b is both
    // globbed and excluded; kube-system is protected and not named).
    let mut anywhere = env.copies_anywhere(&globbed).await;
    anywhere.sort();
    assert_eq!(anywhere, globbed_targets, "copies of {globbed}");
    assert_eq!(env.copies_anywhere(&selected).await, vec![gold.clone()]);

    // A bad glob, together with a data change.
    let metric = "push_to_k8s_invalid_annotations_total";
    let before = daemon
        .metric_sum(metric, &["annotation=\"namespaces\""])
        .await;
    let v1b = secret_value("glob-b");
    merge(
        &sources,
        &globbed,
        json!({"metadata": {"annotations": {NAMESPACES: format!("{id}-team-[a]")}},
               "data": {"k": b64(&v1b)}}),
    )
    .await;
    let warning = eventually(
        "an InvalidAnnotation Warning Event on the source",
        WAIT,
        || async { env.events_on(&globbed, "InvalidAnnotation").await.pop() },
    )
    .await;
    assert_eq!(warning.0, "Warning");
    assert!(
        warning.1.contains(NAMESPACES),
        "the Event names the annotation: {}",
        warning.1
    );
    eventually(
        "the invalid-annotation metric to count it",
        WAIT,
        || async {
            (daemon
                .metric_sum(metric, &["annotation=\"namespaces\""])
                .await
                > before)
                .then_some(())
        },
    )
    .await;
    // The other source goes on (its change is flushed after the bad one)...
    let v2b = secret_value("sel-b");
    merge(&sources, &selected, json!({"data": {"k": b64(&v2b)}})).await;
    await_exact(&env, std::slice::from_ref(&gold), &selected, WAIT).await;
    // ... while the bad one's copies are exactly what they were.
    for ns in &globbed_targets {
        let copy = env.copy(ns, &globbed).await.expect("copy kept");
        assert!(
            copy.data == Some(data_map(&[("k", &v1)])),
            "{ns}/{globbed}: a source with a bad annotation must leave its copies alone"
        );
    }

    // Fixed (and narrowed: kube-public no longer named): it resumes.
    merge(
        &sources,
        &globbed,
        json!({"metadata": {"annotations": {NAMESPACES: format!("{id}-team-*")}}}),
    )
    .await;
    await_exact(&env, std::slice::from_ref(&team_a), &globbed, WAIT).await;
    env.await_no_copies(&["kube-public".to_string()], &globbed)
        .await;

    finish(env, daemon, &[v1, v1b, v2, v2b]).await;
}
