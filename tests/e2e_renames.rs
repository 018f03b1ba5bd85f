//! Issue 8: renamed copies (`push-to-k8s.io/copy-name`), against the real
//! control plane: created under the asked name, updated, healed, moved when
//! the annotation changes, cleaned up with the source; a collision with an
//! unmanaged object is reported, never overwritten.

mod common;

use std::time::Duration;

use common::*;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const COPY_NAME: &str = "push-to-k8s.io/copy-name";
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_renamed_copy_is_created_updated_healed_moved_and_cleaned_up() {
    let _serial = serial();
    let env = TestEnv::new("rename", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-db", env.id);
    let first = format!("{}-first", env.id);
    let second = format!("{}-second", env.id);
    let (t0, t1, taken) = (
        env.targets[0].clone(),
        env.targets[1].clone(),
        env.targets[2].clone(),
    );
    let wanted = vec![t0.clone(), t1.clone()];
    // The second name is taken in one namespace by an unmanaged Secret.
    let mine = env
        .secrets(&taken)
        .create(
            &PostParams::default(),
            &secret_named(&second, &[("mine", "x")]),
        )
        .await
        .unwrap();

    let mut source = source_secret(&name, &[("k", "v1")]);
    source
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(COPY_NAME.into(), first.clone());
    env.add_source(&source).await;
    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    env.await_copies(&env.targets, &first, &[("k", "v1")]).await;
    for ns in &env.targets {
        assert!(
            env.copy(ns, &name).await.is_none(),
            "no copy under the source's own name"
        );
    }

    // Update and heal, under the new name.
    merge(&env, &name, json!({"stringData": {"k": "v2"}})).await;
    env.await_copies(&env.targets, &first, &[("k", "v2")]).await;
    env.secrets(&t0)
        .patch(
            &first,
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"k": "tampered"}})),
        )
        .await
        .unwrap();
    env.secrets(&t1)
        .delete(&first, &DeleteParams::default())
        .await
        .unwrap();
    env.await_copies(&env.targets, &first, &[("k", "v2")]).await;

    // Move: the new name is created, the old one deleted; where the new name
    // is taken, the unmanaged Secret stays and the old copy goes.
    merge(
        &env,
        &name,
        json!({"metadata": {"annotations": {COPY_NAME: second}}}),
    )
    .await;
    env.await_copies(&wanted, &second, &[("k", "v2")]).await;
    env.await_no_copies(&env.targets, &first).await;
    eventually(
        "a Conflict Event naming the taken namespace",
        WAIT,
        || async {
            env.events_on(&name, "Conflict")
                .await
                .into_iter()
                .find(|(_, note)| note.contains(&taken) && note.contains(&second))
        },
    )
    .await;
    let now = env.copy(&taken, &second).await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        mine.metadata.resource_version
    );

    // Cleaned up with its source; the unmanaged one stays.
    env.delete_source(&name).await;
    env.await_no_copies(&wanted, &second).await;
    let now = env.copy(&taken, &second).await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        mine.metadata.resource_version
    );
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    env.teardown().await;
}

/// Issue 16, defect 9: a conflict is keyed by the copy's name, and when the
/// recheck (once a minute) found it resolved, it re-planned a *source* of
/// that name: a renamed copy waited for the next resync (here an hour)
/// instead of about a minute.
#[tokio::test]
async fn defect9_a_resolved_conflict_of_a_renamed_copy_is_made_within_the_recheck() {
    let _serial = serial();
    let env = TestEnv::new("rename-recheck", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-db", env.id);
    let renamed = format!("{}-renamed", env.id);
    let (free, taken) = (env.targets[0].clone(), env.targets[1].clone());
    env.secrets(&taken)
        .create(
            &PostParams::default(),
            &secret_named(&renamed, &[("mine", "x")]),
        )
        .await
        .unwrap();
    let mut source = source_secret(&name, &[("k", "v1")]);
    source
        .metadata
        .annotations
        .get_or_insert_default()
        .insert(COPY_NAME.into(), renamed.clone());
    env.add_source(&source).await;
    // No resync within the test: only the conflict recheck can make the copy.
    let mut daemon = Daemon::start(&env.source_ns, &[("SYNC_INTERVAL", "60")]);
    daemon.await_ready().await;
    env.await_copies(std::slice::from_ref(&free), &renamed, &[("k", "v1")])
        .await;
    eventually(
        "a Conflict Event naming the taken namespace",
        WAIT,
        || async {
            env.events_on(&name, "Conflict")
                .await
                .into_iter()
                .find(|(_, note)| note.contains(&taken))
        },
    )
    .await;

    // The unmanaged Secret goes: the next recheck (within a minute) sees it
    // gone, and the copy is made.
    env.secrets(&taken)
        .delete(&renamed, &DeleteParams::default())
        .await
        .unwrap();
    let t = std::time::Instant::now();
    eventually(
        "the renamed copy where the conflict was resolved",
        Duration::from_secs(100),
        || async {
            env.copy(&taken, &renamed)
                .await
                .filter(|c| c.data.clone().unwrap_or_default() == data_map(&[("k", "v1")]))
        },
    )
    .await;
    eprintln!(
        "copy made {:?} after the conflict was resolved",
        t.elapsed()
    );
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    env.teardown().await;
}

/// Issue 16, defect 11: two sources asking for the same copy name were never
/// reported: both were planned, each create met the other's copy (a POST, a
/// GET and an Event per namespace at every start and resync), and `status`
/// showed the copies missing. The older source keeps the name (here the one
/// that sorts *last*, so name order would pick the other); the newer is
/// refused with an `InvalidAnnotation` Event naming the older, counted, and
/// `status` says so.
#[tokio::test]
async fn defect11_of_two_sources_asking_for_one_copy_name_the_older_keeps_it() {
    let _serial = serial();
    let env = TestEnv::new("rename-clash", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let shared = format!("{}-shared", env.id);
    let (older, newer) = (format!("{}-b", env.id), format!("{}-a", env.id));
    let asking = |name: &str, value: &str| {
        let mut s = source_secret(name, &[("k", value)]);
        s.metadata
            .annotations
            .get_or_insert_default()
            .insert(COPY_NAME.into(), shared.clone());
        s
    };
    env.add_source(&asking(&older, "older")).await;
    // creationTimestamp has one-second resolution: make the order certain.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.add_source(&asking(&newer, "newer")).await;

    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    env.await_copies(&env.targets, &shared, &[("k", "older")])
        .await;
    let (_, note) = eventually(
        "an InvalidAnnotation Event on the newer source naming the older",
        WAIT,
        || async {
            env.events_on(&newer, "InvalidAnnotation")
                .await
                .into_iter()
                .find(|(_, note)| note.contains(&older) && note.contains(&shared))
        },
    )
    .await;
    eprintln!("Event: {note}");
    let counted = daemon
        .metric_sum(
            "push_to_k8s_invalid_annotations_total",
            &["annotation=\"copy_name_taken\""],
        )
        .await;
    assert_eq!(counted, 1.0, "counted once");
    assert!(
        env.events_on(&newer, "Conflict").await.is_empty(),
        "no Conflict: the newer source never tried"
    );

    // `status` says so, with the same reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_push-to-k8s"))
        .args(["status", "-o", "json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env("NAMESPACE", &env.source_ns)
        .output()
        .expect("run status");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let of = |name: &str| {
        json["sources"]
            .as_array()
            .expect("sources")
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {json}"))
    };
    let refused = of(&newer);
    assert_eq!(refused["state"], "refused", "{refused}");
    assert_eq!(
        refused["refusal"]["reason"], "InvalidAnnotation",
        "{refused}"
    );
    assert!(
        refused["refusal"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&older)),
        "{refused}"
    );
    assert_eq!(of(&older)["state"], "pushed");
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    env.teardown().await;
}

/// A plain Secret named `name` (no source label, no markers).
fn secret_named(name: &str, data: &[(&str, &str)]) -> k8s_openapi::api::core::v1::Secret {
    let mut s = source_secret(name, data);
    s.metadata.labels = None;
    s
}

async fn merge(env: &TestEnv, name: &str, patch: serde_json::Value) {
    env.sources()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("merge patch");
}
