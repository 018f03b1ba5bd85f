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
