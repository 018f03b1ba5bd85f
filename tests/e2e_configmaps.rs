//! Issue 8: ConfigMaps are sources like Secrets, against the real control
//! plane: `data` and `binaryData` propagate, update, heal and are deleted
//! with their source; an unmanaged same-named ConfigMap is never touched;
//! `ENABLE_CONFIGMAPS=false` watches and writes no ConfigMap at all.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn config_maps(env: &TestEnv, ns: &str) -> Api<ConfigMap> {
    Api::namespaced(env.client.clone(), ns)
}

fn source(name: &str, text: &[(&str, &str)], binary: &[(&str, &[u8])]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(map(&[(SOURCE_SELECTOR_KEY, "source"), ("team", "a")])),
            ..Default::default()
        },
        data: Some(map(text)),
        binary_data: Some(
            binary
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                .collect(),
        ),
        immutable: None,
    }
}

type Content = (BTreeMap<String, String>, BTreeMap<String, ByteString>);

fn content(c: &ConfigMap) -> Content {
    (
        c.data.clone().unwrap_or_default(),
        c.binary_data.clone().unwrap_or_default(),
    )
}

/// Wait until every namespace in `namespaces` holds a copy of `name` with
/// exactly `want`, marked as ours.
async fn await_copies(env: &TestEnv, namespaces: &[String], name: &str, want: &Content) {
    for ns in namespaces {
        eventually(
            &format!("ConfigMap {ns}/{name} as the source"),
            WAIT,
            || async {
                let c = config_maps(env, ns).get_opt(name).await.unwrap()?;
                let labels = c.metadata.labels.clone().unwrap_or_default();
                let ours = labels.get("push-to-k8s.io/managed-by").map(String::as_str)
                    == Some("push-to-k8s");
                (ours
                    && labels.get("team").map(String::as_str) == Some("a")
                    && &content(&c) == want)
                    .then_some(())
            },
        )
        .await;
    }
}

async fn await_gone(env: &TestEnv, namespaces: &[String], name: &str) {
    for ns in namespaces {
        eventually(&format!("no ConfigMap {ns}/{name}"), WAIT, || async {
            config_maps(env, ns)
                .get_opt(name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }
}

/// Remove the ConfigMap copies of this test's sources in every namespace
/// (a controller copies into every namespace of the cluster).
async fn purge_config_map_copies(env: &TestEnv) {
    let all: Api<ConfigMap> = Api::all(env.client.clone());
    let marked = all
        .list(&kube::api::ListParams::default().labels("push-to-k8s.io/managed-by=push-to-k8s"))
        .await
        .unwrap();
    for c in marked.items {
        let origin = c
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("push-to-k8s.io/source"))
            .cloned()
            .unwrap_or_default();
        if origin.starts_with(&format!("{}/", env.source_ns)) {
            let ns = c.metadata.namespace.clone().unwrap();
            let _ = config_maps(env, &ns)
                .delete(&c.metadata.name.unwrap(), &DeleteParams::default())
                .await;
        }
    }
}

#[tokio::test]
async fn configmap_propagates_updates_heals_and_is_deleted_like_a_secret() {
    let _serial = serial();
    let env = TestEnv::new("cm", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-ca", env.id);
    let (t0, t1, taken) = (
        env.targets[0].clone(),
        env.targets[1].clone(),
        env.targets[2].clone(),
    );
    // An unmanaged same-named ConfigMap in one namespace.
    let mine = config_maps(&env, &taken)
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                data: Some(map(&[("mine", "x")])),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let sources = config_maps(&env, &env.source_ns);
    sources
        .create(
            &PostParams::default(),
            &source(&name, &[("ca.crt", "v1")], &[("blob", &[0, 159, 146, 150])]),
        )
        .await
        .unwrap();
    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    let wanted = vec![t0.clone(), t1.clone()];
    let v1 = content(&source(
        &name,
        &[("ca.crt", "v1")],
        &[("blob", &[0, 159, 146, 150])],
    ));
    await_copies(&env, &wanted, &name, &v1).await;

    // Update: a text key changes, a binary key is added, one text key added.
    let patch = json!({"data": {"ca.crt": "v2", "extra": "e"}, "binaryData": {"blob2": "AQI="}});
    sources
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let mut v2 = v1.clone();
    v2.0.insert("ca.crt".into(), "v2".into());
    v2.0.insert("extra".into(), "e".into());
    v2.1.insert("blob2".into(), ByteString(vec![1, 2]));
    await_copies(&env, &wanted, &name, &v2).await;

    // Heal: an edited copy and a deleted copy come back.
    config_maps(&env, &t0)
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"ca.crt": "tampered"}})),
        )
        .await
        .unwrap();
    config_maps(&env, &t1)
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    await_copies(&env, &wanted, &name, &v2).await;

    // The unmanaged one is byte-identical, and was reported.
    let now = config_maps(&env, &taken).get(&name).await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        mine.metadata.resource_version
    );
    eventually("a Conflict Event on the ConfigMap source", WAIT, || async {
        env.events_on(&name, "Conflict")
            .await
            .into_iter()
            .find(|(_, note)| note.contains(&taken) && note.contains("ConfigMap"))
    })
    .await;
    assert!(
        daemon
            .metric_sum("push_to_k8s_writes_total", &["kind=\"configmap\""])
            .await
            >= 4.0
    );

    // Deleted with its source; the unmanaged one stays.
    sources
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    await_gone(&env, &wanted, &name).await;
    let now = config_maps(&env, &taken).get(&name).await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        mine.metadata.resource_version
    );
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    purge_config_map_copies(&env).await;
    env.teardown().await;
}

#[tokio::test]
async fn configmaps_switched_off_are_neither_watched_nor_written() {
    let _serial = serial();
    let env = TestEnv::new("cm-off", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let t0 = env.targets[0].clone();
    let kept = format!("{}-kept", env.id);
    let fresh = format!("{}-fresh", env.id);
    let sources = config_maps(&env, &env.source_ns);
    sources
        .create(&PostParams::default(), &source(&kept, &[("k", "v1")], &[]))
        .await
        .unwrap();
    // With ConfigMaps on, a copy is made (and the log names the watch).
    let mut daemon = Daemon::start(&env.source_ns, &[("DEBUG", "true")]);
    daemon.await_ready().await;
    let v1 = content(&source(&kept, &[("k", "v1")], &[]));
    await_copies(&env, std::slice::from_ref(&t0), &kept, &v1).await;
    daemon.stop();
    assert!(
        daemon.logs().contains("configmap-replicas"),
        "the log names the ConfigMap watches"
    );

    // Off: the source changes, another appears, and one is deleted while
    // the copy stays as it was (documented: switching off leaves copies).
    let mut daemon = Daemon::start(
        &env.source_ns,
        &[("ENABLE_CONFIGMAPS", "false"), ("DEBUG", "true")],
    );
    daemon.await_ready().await;
    sources
        .create(&PostParams::default(), &source(&fresh, &[("k", "v1")], &[]))
        .await
        .unwrap();
    sources
        .patch(
            &kept,
            &PatchParams::default(),
            &Patch::Merge(&json!({"data": {"k": "v2"}})),
        )
        .await
        .unwrap();
    // A Secret source still flows: the controller is working.
    let secret = format!("{}-s", env.id);
    env.create_source(&secret, &[("k", "v")]).await;
    env.await_copies(std::slice::from_ref(&t0), &secret, &[("k", "v")])
        .await;
    let metrics = daemon.metrics().await;
    assert_eq!(
        sum_metric(
            &metrics,
            "push_to_k8s_writes_total",
            &["kind=\"configmap\""]
        ),
        0.0
    );
    assert!(
        config_maps(&env, &t0)
            .get_opt(&fresh)
            .await
            .unwrap()
            .is_none()
    );
    let copy = config_maps(&env, &t0).get(&kept).await.unwrap();
    assert_eq!(content(&copy), v1, "an existing copy is left as it was");
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    let log = daemon.logs();
    assert!(
        !log.contains("configmap-"),
        "no ConfigMap watch when switched off:\n{log}"
    );

    // Cleanup asked for: every ConfigMap copy of this source namespace goes;
    // the sources and Secret copies stay.
    let mut daemon = Daemon::start(&env.source_ns, &[("ENABLE_CONFIGMAPS", "cleanup")]);
    daemon.await_ready().await;
    await_gone(&env, std::slice::from_ref(&t0), &kept).await;
    assert!(
        sources.get_opt(&kept).await.unwrap().is_some(),
        "the source stays"
    );
    env.await_copies(std::slice::from_ref(&t0), &secret, &[("k", "v")])
        .await;
    // The counter moves when the flush that deleted the copy ends, which
    // can be a moment after the copy is gone: poll it.
    until("the ConfigMap delete counted", WAIT, || async {
        let deletes = daemon
            .metric_sum(
                "push_to_k8s_writes_total",
                &["kind=\"configmap\"", "op=\"delete\""],
            )
            .await;
        if deletes >= 1.0 {
            Ok(())
        } else {
            Err(format!("{deletes} deletes counted"))
        }
    })
    .await;
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    purge_config_map_copies(&env).await;
    env.teardown().await;
}
