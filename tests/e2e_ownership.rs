//! Issue 7: ownership defects, end to end against the real control plane.
//! Each test is named after the defect it guards against and fails on the
//! code before its fix (commit 5f166df).

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

const MANAGED_KEY: &str = "push-to-k8s.io/managed-by";
const WAIT: Duration = Duration::from_secs(60);

async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Daemon {
    let mut daemon = Daemon::start(&env.source_ns, extra);
    daemon.await_ready().await;
    daemon
}

/// Wait until the controller has flushed at least `n` batches.
async fn await_flushes(daemon: &Daemon, n: f64) {
    eventually(&format!("{n} batches flushed"), WAIT, || async {
        (daemon.metric_sum("push_to_k8s_batch_size_count", &[]).await >= n).then_some(())
    })
    .await;
}

/// A copy of `copy` as a user would save it under another name or restore
/// it elsewhere: everything but the server-set fields.
fn exported(copy: &Secret, name: &str) -> Secret {
    let mut s = copy.clone();
    s.metadata.name = Some(name.into());
    s.metadata.namespace = None;
    s.metadata.uid = None;
    s.metadata.resource_version = None;
    s.metadata.managed_fields = None;
    s.metadata.creation_timestamp = None;
    s
}

async fn merge(api: &Api<Secret>, name: &str, patch: serde_json::Value) {
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("merge patch");
}

/// Defect 1: a source restored from an exported copy (so it carries our
/// markers as well as the source label), and a marked backup parked in the
/// source namespace, are never taken for copies: neither is deleted, and the
/// source is copied as usual.
#[tokio::test]
async fn source_restored_from_an_exported_copy_is_never_deleted() {
    let _serial = serial();
    let env = TestEnv::new("own-restore", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-db", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let mut daemon = start(&env, &[]).await;
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;
    let copy = env.copy(&env.targets[0], &name).await.unwrap();
    daemon.stop();

    // The operator restores the source from the copy (markers and all, the
    // source label added back), and parks a marked backup beside it.
    env.delete_source(&name).await;
    let mut restored = exported(&copy, &name);
    restored
        .metadata
        .labels
        .get_or_insert_default()
        .insert(SOURCE_SELECTOR_KEY.into(), "source".into());
    let restored = env.add_source(&restored).await;
    let backup = env
        .add_source(&exported(&copy, &format!("{name}-backup")))
        .await;

    let daemon = start(&env, &[]).await;
    await_flushes(&daemon, 1.0).await;
    // Change it, so a flush plans this source (its copies follow).
    merge(&env.sources(), &name, json!({"stringData": {"k": "v2"}})).await;
    env.await_copies(&env.targets, &name, &[("k", "v2")]).await;
    await_flushes(&daemon, 2.0).await;
    let now = env.sources().get_opt(&name).await.unwrap();
    assert_eq!(
        now.and_then(|s| s.metadata.uid),
        restored.metadata.uid,
        "the restored source must survive"
    );
    let kept = env
        .sources()
        .get_opt(&format!("{name}-backup"))
        .await
        .unwrap();
    assert_eq!(
        kept.and_then(|s| s.metadata.resource_version),
        backup.metadata.resource_version,
        "the parked backup must be untouched"
    );
    assert_eq!(
        daemon
            .metric_sum("push_to_k8s_writes_total", &["op=\"delete\""])
            .await,
        0.0
    );
    drop(daemon);
    env.teardown().await;
}

/// Defect 2: renamed backups of a copy (`db-old`, markers and all) are not
/// copies: the real copy is updated and deleted exactly, the backups are
/// never written.
#[tokio::test]
async fn renamed_backup_of_a_copy_is_not_a_copy() {
    let _serial = serial();
    let env = TestEnv::new("own-backup", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-db", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let daemon = start(&env, &[]).await;
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;
    let t0 = env.targets[0].clone();
    let copy = env.copy(&t0, &name).await.unwrap();
    // Several backups, so that whichever order a map keeps them in, one of
    // them would win over the real copy if names did not matter.
    let mut backups = Vec::new();
    for suffix in ["old", "bak", "2", "prev"] {
        let b = env
            .secrets(&t0)
            .create(
                &PostParams::default(),
                &exported(&copy, &format!("{name}-{suffix}")),
            )
            .await
            .unwrap();
        backups.push(b);
    }
    merge(&env.sources(), &name, json!({"stringData": {"k": "v2"}})).await;
    env.await_copies(&env.targets, &name, &[("k", "v2")]).await;
    env.delete_source(&name).await;
    env.await_no_copies(&env.targets, &name).await;
    for b in &backups {
        let b_name = b.metadata.name.clone().unwrap();
        let now = env.copy(&t0, &b_name).await;
        assert_eq!(
            now.and_then(|s| s.metadata.resource_version),
            b.metadata.resource_version,
            "backup {b_name} must be untouched"
        );
    }
    drop(daemon);
    env.teardown().await;
}

/// Defect 7: an annotation that does not parse is reported once per change,
/// not once per flush.
#[tokio::test]
async fn invalid_annotation_warning_is_one_event_per_change() {
    let _serial = serial();
    let mut env = TestEnv::new("own-invalid", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let bad = format!("{}-bad", env.id);
    let good = format!("{}-good", env.id);
    let mut source = source_secret(&bad, &[("k", "v1")]);
    source
        .metadata
        .annotations
        .get_or_insert_default()
        .insert("push-to-k8s.io/namespaces".into(), "team-[".into());
    env.add_source(&source).await;
    env.create_source(&good, &[("k", "v1")]).await;
    let daemon = start(&env, &[]).await;
    eventually("an InvalidAnnotation Event", WAIT, || async {
        env.events_on(&bad, "InvalidAnnotation").await.pop()
    })
    .await;
    // Flushes that plan the bad source again: new namespaces, a label change.
    for i in 0..3 {
        let ns = format!("{}-n{i}", env.id);
        env.create_namespace(&ns, &[]).await;
        env.await_copies(std::slice::from_ref(&ns), &good, &[("k", "v1")])
            .await;
    }
    merge(
        &env.sources(),
        &bad,
        json!({"metadata": {"labels": {"x": "y"}}}),
    )
    .await;
    merge(&env.sources(), &good, json!({"stringData": {"k": "v2"}})).await;
    env.await_copies(&env.targets, &good, &[("k", "v2")]).await;
    // A flush reports refusals before it writes: the v2 copies mean the
    // last flush has published whatever it would.
    let events = env.events_on(&bad, "InvalidAnnotation").await;
    assert_eq!(
        events.len(),
        1,
        "one Event for one bad annotation: {events:?}"
    );
    // The annotation changes (still bad): one more.
    merge(
        &env.sources(),
        &bad,
        json!({"metadata": {"annotations": {"push-to-k8s.io/namespaces": "Team_A"}}}),
    )
    .await;
    eventually("a second InvalidAnnotation Event", WAIT, || async {
        (env.events_on(&bad, "InvalidAnnotation").await.len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        daemon
            .metric_sum("push_to_k8s_invalid_annotations_total", &[])
            .await,
        2.0,
        "the metric counts changes too"
    );
    drop(daemon);
    env.teardown().await;
}

/// Defect 12: Secrets of types that grant an identity where they land are
/// never copied, even into a namespace named explicitly; a Warning Event on
/// the source says why.
#[tokio::test]
async fn identity_granting_secret_types_are_never_copied() {
    let _serial = serial();
    let env = TestEnv::new("own-identity", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let t0 = env.targets[0].clone();
    let sa_token = format!("{}-sa", env.id);
    let bootstrap = "bootstrap-token-abcdef".to_string();
    let good = format!("{}-good", env.id);
    let targets = format!("kube-system,{t0}");
    // kube-controller-manager deletes a token Secret whose ServiceAccount
    // does not exist; the source namespace is new, so its `default` account
    // may not be there yet (CI saw the Secret vanish before the controller
    // planned it).
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.source_ns);
    eventually(
        "the source namespace's default ServiceAccount",
        WAIT,
        || async { accounts.get_opt("default").await.ok().flatten() },
    )
    .await;
    let mut s = source_secret(&sa_token, &[]);
    s.type_ = Some("kubernetes.io/service-account-token".into());
    let ann = s.metadata.annotations.get_or_insert_default();
    ann.insert(
        "kubernetes.io/service-account.name".into(),
        "default".into(),
    );
    ann.insert("push-to-k8s.io/namespaces".into(), targets.clone());
    env.add_source(&s).await;
    let mut s = source_secret(
        &bootstrap,
        &[("token-id", "abcdef"), ("token-secret", "0123456789abcdef")],
    );
    s.type_ = Some("bootstrap.kubernetes.io/token".into());
    s.metadata
        .annotations
        .get_or_insert_default()
        .insert("push-to-k8s.io/namespaces".into(), targets.clone());
    env.add_source(&s).await;
    let mut s = source_secret(&good, &[("k", "v1")]);
    s.metadata
        .annotations
        .get_or_insert_default()
        .insert("push-to-k8s.io/namespaces".into(), t0.clone());
    env.add_source(&s).await;

    let daemon = start(&env, &[]).await;
    env.await_copies(std::slice::from_ref(&t0), &good, &[("k", "v1")])
        .await;
    for name in [&sa_token, &bootstrap] {
        eventually(
            &format!("a TypeNotCopied Event on {name}"),
            WAIT,
            || async {
                env.events_on(name, "TypeNotCopied")
                    .await
                    .into_iter()
                    .find(|(t, _)| t == "Warning")
            },
        )
        .await;
        for ns in [t0.as_str(), "kube-system"] {
            assert!(
                env.copy(ns, name).await.is_none(),
                "{name} must never be copied into {ns}"
            );
        }
    }
    assert_eq!(
        daemon
            .metric_sum("push_to_k8s_refused_types_total", &[])
            .await,
        2.0
    );
    drop(daemon);
    env.teardown().await;
}

/// Defect 4: a copy that another actor keeps changing back is not rewritten
/// forever: after a few repairs the controller holds off (exponential
/// backoff), says so once in a Warning Event naming the namespace, and
/// counts it; the other copies are unaffected.
#[tokio::test]
async fn a_copy_something_keeps_changing_is_not_rewritten_forever() {
    let _serial = serial();
    let env = TestEnv::new("own-fight", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-db", env.id);
    let mut s = source_secret(&name, &[("k", "v1")]);
    s.metadata
        .labels
        .get_or_insert_default()
        .insert("team".into(), "a".into());
    env.add_source(&s).await;
    let daemon = start(&env, &[]).await;
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;
    let t0 = env.targets[0].clone();
    let applies = || daemon.metric_sum("push_to_k8s_writes_total", &["op=\"apply\""]);
    let before = applies().await;

    // Another controller insists on team=b in t0, reverting within ~0.2 s.
    let api = env.secrets(&t0);
    let fight_for = Duration::from_secs(30);
    let start_at = std::time::Instant::now();
    let mut reverts = 0;
    while start_at.elapsed() < fight_for {
        let copy = api.get(&name).await.unwrap();
        let team = copy.metadata.labels.as_ref().and_then(|l| l.get("team"));
        if team.map(String::as_str) != Some("b") {
            merge(&api, &name, json!({"metadata": {"labels": {"team": "b"}}})).await;
            reverts += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let repairs = applies().await - before;
    assert!(reverts >= 1, "the reverter never ran");
    assert!(
        repairs <= 4.0,
        "{repairs} repairs of a fought-over copy in {fight_for:?} (reverts: {reverts})"
    );
    let fought = eventually("a CopyFought Event naming the namespace", WAIT, || async {
        env.events_on(&name, "CopyFought")
            .await
            .into_iter()
            .find(|(t, note)| t == "Warning" && note.contains(&t0))
    })
    .await;
    assert!(!fought.1.is_empty());
    assert_eq!(
        env.events_on(&name, "CopyFought").await.len(),
        1,
        "said once"
    );
    assert_eq!(
        daemon
            .metric_sum("push_to_k8s_copy_fights_total", &[])
            .await,
        1.0
    );
    // The other copy still follows the source.
    merge(&env.sources(), &name, json!({"stringData": {"k": "v2"}})).await;
    env.await_copies(&env.targets[1..], &name, &[("k", "v2")])
        .await;
    let managed = env.copy(&t0, &name).await.unwrap();
    assert!(managed.metadata.labels.unwrap().contains_key(MANAGED_KEY));
    drop(daemon);
    env.teardown().await;
}

/// Defect 8: a copy that fails waits out its own backoff (2, 4, 8 … s),
/// also when its source keeps changing; the other copies follow every change.
#[tokio::test]
async fn per_copy_backoff_holds_while_the_source_keeps_changing() {
    let _serial = serial();
    let env = TestEnv::new("own-backoff", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let (t0, full) = (env.targets[0].clone(), env.targets[1].clone());
    quota_without_secrets(&env.client, &full).await;
    let name = format!("{}-db", env.id);
    env.create_source(&name, &[("k", "v0")]).await;
    let daemon = start(&env, &[]).await;
    env.await_copies(std::slice::from_ref(&t0), &name, &[("k", "v0")])
        .await;
    let failed = || {
        daemon.metric_sum(
            "push_to_k8s_writes_total",
            &["op=\"create\"", "result=\"error\""],
        )
    };
    eventually("the first refused create", WAIT, || async {
        (failed().await >= 1.0).then_some(())
    })
    .await;
    let before = failed().await;
    // Eight changes, 1.5 s apart (each its own flush at debounce 1 s): the
    // other copy follows every one; the refused one is tried only when its
    // backoff (2, 4, 8 s) is over: at most 3 more attempts in these 12 s.
    for i in 1..=8 {
        let v = format!("v{i}");
        merge(&env.sources(), &name, json!({"stringData": {"k": v}})).await;
        env.await_copies(std::slice::from_ref(&t0), &name, &[("k", &v)])
            .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let attempts = failed().await - before;
    assert!(
        attempts <= 3.0,
        "{attempts} refused creates in 12 s of changes: the backoff does not hold"
    );
    assert!(env.copy(&full, &name).await.is_none());
    drop(daemon);
    env.teardown().await;
}
