//! Issue 8: explicit adoption, end to end against the real control plane.
//!
//! An unmanaged object with a copy's name is taken over only when its source
//! asks for it (`push-to-k8s.io/adopt: "true"`) *and* the controller runs
//! with `ALLOW_ADOPTION=true`. It then becomes an exact copy in place (same
//! uid: never deleted), the source gets a Normal `Adopted` Event naming the
//! namespace, and `push_to_k8s_adoptions_total` counts it. Without either
//! switch it stays byte-identical (same resourceVersion, same content) and
//! the source gets a Warning `Conflict` Event.
//!
//! Every source here targets only this test's namespaces
//! (`push-to-k8s.io/namespaces: <id>-t*`), so no copy lands elsewhere.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const ADOPT: &str = "push-to-k8s.io/adopt";
const MANAGED_KEY: &str = "push-to-k8s.io/managed-by";
const WAIT: Duration = Duration::from_secs(60);

/// Labels, annotations and content (a Secret's `type` and `data`; a
/// ConfigMap's `data` and `binaryData`): everything but server-set fields.
type Content = (
    BTreeMap<String, String>,
    BTreeMap<String, String>,
    String,
    BTreeMap<String, ByteString>,
);

fn secret_content(s: &Secret) -> Content {
    (
        s.metadata.labels.clone().unwrap_or_default(),
        s.metadata.annotations.clone().unwrap_or_default(),
        s.type_.clone().unwrap_or_default(),
        s.data.clone().unwrap_or_default(),
    )
}

fn config_map_content(c: &ConfigMap) -> Content {
    let mut content = c.binary_data.clone().unwrap_or_default();
    for (k, v) in c.data.iter().flatten() {
        content.insert(format!("text:{k}"), ByteString(v.clone().into_bytes()));
    }
    (
        c.metadata.labels.clone().unwrap_or_default(),
        c.metadata.annotations.clone().unwrap_or_default(),
        String::new(),
        content,
    )
}

fn config_maps(env: &TestEnv, ns: &str) -> Api<ConfigMap> {
    Api::namespaced(env.client.clone(), ns)
}

/// Annotations of a source of this test: only its target namespaces, and
/// `push-to-k8s.io/adopt` as `adopt` (absent if `None`).
fn source_annotations(env: &TestEnv, adopt: Option<&str>) -> BTreeMap<String, String> {
    let mut a = map(&[("push-to-k8s.io/namespaces", &format!("{}-t*", env.id))]);
    if let Some(v) = adopt {
        a.insert(ADOPT.into(), v.into());
    }
    a
}

fn secret_source(env: &TestEnv, name: &str, data: &[(&str, &str)], adopt: Option<&str>) -> Secret {
    let mut s = source_secret(name, data);
    s.metadata.annotations = Some(source_annotations(env, adopt));
    s
}

fn config_map_source(
    env: &TestEnv,
    name: &str,
    data: &[(&str, &str)],
    adopt: Option<&str>,
) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(map(&[(SOURCE_SELECTOR_KEY, "source")])),
            annotations: Some(source_annotations(env, adopt)),
            ..Default::default()
        },
        data: Some(map(data)),
        ..Default::default()
    }
}

/// What a user or another tool left: a label, a Helm ownership annotation.
fn strangers_meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(map(&[("app", "legacy")])),
        annotations: Some(map(&[("meta.helm.sh/release-name", "legacy")])),
        ..Default::default()
    }
}

/// An unmanaged Secret `name` in `ns`: a key the source has (another
/// value), one it does not, a label and a Helm annotation.
async fn unmanaged_secret(env: &TestEnv, ns: &str, name: &str) -> Secret {
    let s = Secret {
        metadata: strangers_meta(name),
        data: Some(data_map(&[("k", "theirs"), ("extra", "x")])),
        ..Default::default()
    };
    env.secrets(ns)
        .create(&PostParams::default(), &s)
        .await
        .expect("create the unmanaged Secret")
}

async fn unmanaged_config_map(env: &TestEnv, ns: &str, name: &str) -> ConfigMap {
    let c = ConfigMap {
        metadata: strangers_meta(name),
        data: Some(map(&[("ca.crt", "theirs"), ("extra", "x")])),
        ..Default::default()
    };
    config_maps(env, ns)
        .create(&PostParams::default(), &c)
        .await
        .expect("create the unmanaged ConfigMap")
}

/// Wait for an Event `reason` of `type_` on source `name` naming `ns`; its note.
async fn await_event(env: &TestEnv, name: &str, reason: &str, type_: &str, ns: &str) -> String {
    eventually(
        &format!("a {type_} {reason} Event on {name} naming {ns}"),
        WAIT,
        || async {
            env.events_on(name, reason)
                .await
                .into_iter()
                .find(|(t, note)| t == type_ && note.contains(ns))
                .map(|(_, note)| note)
        },
    )
    .await
}

/// Wait until `current()` (the object in the adopted namespace) equals
/// `model()` (the controller's own copy elsewhere), asserting all along
/// that it is still the object `uid`: adopted in place, never replaced.
async fn await_exact_copy<F, Fut>(what: &str, uid: &Option<String>, mut both: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (Option<(Option<String>, Content)>, Option<Content>)>,
{
    until(what, WAIT, || {
        let fut = both();
        async move {
            let (now, model) = fut.await;
            let (now_uid, now) = now.ok_or_else(|| "the object is gone".to_string())?;
            assert_eq!(&now_uid, uid, "{what}: replaced, not adopted in place");
            let model = model.ok_or_else(|| "no copy to compare with yet".to_string())?;
            if now == model {
                Ok(())
            } else {
                Err(format!("{now:?}\n  differs from the copy {model:?}"))
            }
        }
    })
    .await;
}

async fn await_adopted_secret(
    env: &TestEnv,
    ns: &str,
    model_ns: &str,
    name: &str,
    uid: &Option<String>,
) {
    await_exact_copy(
        &format!("Secret {ns}/{name} an exact copy"),
        uid,
        || async {
            let now = env.copy(ns, name).await;
            let model = env.copy(model_ns, name).await;
            (
                now.map(|s| (s.metadata.uid.clone(), secret_content(&s))),
                model.map(|s| secret_content(&s)),
            )
        },
    )
    .await;
    let now = env.copy(ns, name).await.unwrap();
    let labels = now.metadata.labels.unwrap_or_default();
    let annotations = now.metadata.annotations.unwrap_or_default();
    assert_eq!(
        labels.get(MANAGED_KEY).map(String::as_str),
        Some("push-to-k8s")
    );
    assert_eq!(
        annotations.get(SOURCE_ANNOTATION),
        Some(&format!("{}/{name}", env.source_ns))
    );
    assert!(!labels.contains_key("app") && !annotations.contains_key("meta.helm.sh/release-name"));
}

async fn await_adopted_config_map(
    env: &TestEnv,
    ns: &str,
    model_ns: &str,
    name: &str,
    uid: &Option<String>,
) {
    await_exact_copy(
        &format!("ConfigMap {ns}/{name} an exact copy"),
        uid,
        || async {
            let now = config_maps(env, ns).get_opt(name).await.unwrap();
            let model = config_maps(env, model_ns).get_opt(name).await.unwrap();
            (
                now.map(|c| (c.metadata.uid.clone(), config_map_content(&c))),
                model.map(|c| config_map_content(&c)),
            )
        },
    )
    .await;
}

async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Daemon {
    let mut daemon = Daemon::start(&env.source_ns, extra);
    daemon.await_ready().await;
    daemon
}

/// Both switches, objects in the way before the controller starts: the
/// Secret and the ConfigMap become exact copies in place (the same uid;
/// labels, annotations and data as the copy made in the other namespace;
/// our markers, nothing of the former owner), with an `Adopted` Event each
/// naming the namespace. From then on they are copies: they follow the
/// source and go with it.
#[tokio::test]
async fn with_both_switches_an_unmanaged_object_becomes_an_exact_copy() {
    let _serial = serial();
    let env = TestEnv::new("adopt", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let (t0, t1) = (env.targets[0].clone(), env.targets[1].clone());
    let name = format!("{}-db", env.id);
    let ca = format!("{}-ca", env.id);
    let secret = unmanaged_secret(&env, &t0, &name).await;
    let config_map = unmanaged_config_map(&env, &t0, &ca).await;
    env.add_source(&secret_source(&env, &name, &[("k", "v1")], Some("true")))
        .await;
    config_maps(&env, &env.source_ns)
        .create(
            &PostParams::default(),
            &config_map_source(&env, &ca, &[("ca.crt", "v1")], Some("true")),
        )
        .await
        .unwrap();

    let mut daemon = start(&env, &[("ALLOW_ADOPTION", "true")]).await;
    await_adopted_secret(&env, &t0, &t1, &name, &secret.metadata.uid).await;
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;
    await_adopted_config_map(&env, &t0, &t1, &ca, &config_map.metadata.uid).await;
    for source in [&name, &ca] {
        let note = await_event(&env, source, "Adopted", "Normal", &t0).await;
        assert!(note.contains(&format!("namespace {t0} ")), "{note}");
        assert!(
            env.events_on(source, "Conflict").await.is_empty(),
            "adopted, so no conflict"
        );
    }
    assert_eq!(
        daemon.metric_sum("push_to_k8s_adoptions_total", &[]).await,
        2.0
    );
    assert_eq!(
        daemon
            .metric_sum("push_to_k8s_writes_total", &["op=\"delete\""])
            .await,
        0.0,
        "never deleted to be adopted"
    );

    // It is a copy now: it follows the source, and goes with it.
    env.sources()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"k": "v2"}})),
        )
        .await
        .unwrap();
    env.await_copies(&env.targets, &name, &[("k", "v2")]).await;
    await_adopted_secret(&env, &t0, &t1, &name, &secret.metadata.uid).await;
    env.delete_source(&name).await;
    env.await_no_copies(&env.targets, &name).await;
    config_maps(&env, &env.source_ns)
        .delete(&ca, &DeleteParams::default())
        .await
        .unwrap();
    for ns in [&t0, &t1] {
        eventually(&format!("no ConfigMap {ns}/{ca}"), WAIT, || async {
            config_maps(&env, ns)
                .get_opt(&ca)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }
    assert_eq!(
        daemon.metric_sum("push_to_k8s_adoptions_total", &[]).await,
        2.0
    );
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    env.teardown().await;
}

/// The usual way to get there: a Conflict is reported, the operator asks for
/// adoption on the source (with the controller allowing it), and the object
/// reported is adopted in place.
#[tokio::test]
async fn asking_for_adoption_after_a_conflict_adopts_the_object() {
    let _serial = serial();
    let env = TestEnv::new("adopt-later", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let (t0, t1) = (env.targets[0].clone(), env.targets[1].clone());
    let name = format!("{}-db", env.id);
    let daemon = start(&env, &[("ALLOW_ADOPTION", "true")]).await;
    let theirs = unmanaged_secret(&env, &t0, &name).await;
    env.add_source(&secret_source(&env, &name, &[("k", "v1")], None))
        .await;
    env.await_copies(std::slice::from_ref(&t1), &name, &[("k", "v1")])
        .await;
    await_event(&env, &name, "Conflict", "Warning", &t0).await;
    let now = env.copy(&t0, &name).await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        theirs.metadata.resource_version
    );

    env.sources()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"metadata": {"annotations": {ADOPT: "true"}}})),
        )
        .await
        .unwrap();
    await_adopted_secret(&env, &t0, &t1, &name, &theirs.metadata.uid).await;
    await_event(&env, &name, "Adopted", "Normal", &t0).await;
    assert_eq!(
        daemon.metric_sum("push_to_k8s_adoptions_total", &[]).await,
        1.0
    );
    drop(daemon);
    env.teardown().await;
}

/// Without both switches nothing is adopted: objects in the way at start
/// (found by the start-up LIST) and met later (found by a refused create),
/// Secrets and ConfigMaps, stay byte-identical through flushes that plan
/// their sources, and each is reported with a Conflict Event naming its
/// namespace. `extra` is the controller's environment; `asks` what the
/// sources' `push-to-k8s.io/adopt` says (the one met later, `asks_later`).
async fn nothing_is_adopted(
    test: &str,
    extra: &[(&str, &str)],
    asks: Option<&str>,
    asks_later: Option<&str>,
) {
    let _serial = serial();
    let env = TestEnv::new(test, 2).await;
    let _on_panic = env.cleanup_on_panic();
    let (t0, t1) = (env.targets[0].clone(), env.targets[1].clone());
    let (db, api, ca) = (
        format!("{}-db", env.id),
        format!("{}-api", env.id),
        format!("{}-ca", env.id),
    );
    let in_db = unmanaged_secret(&env, &t0, &db).await;
    let in_ca = unmanaged_config_map(&env, &t0, &ca).await;
    env.add_source(&secret_source(&env, &db, &[("k", "v1")], asks))
        .await;
    config_maps(&env, &env.source_ns)
        .create(
            &PostParams::default(),
            &config_map_source(&env, &ca, &[("ca.crt", "v1")], asks),
        )
        .await
        .unwrap();
    let daemon = start(&env, extra).await;
    // Met later: in the way before its source appears.
    let in_api = unmanaged_secret(&env, &t1, &api).await;
    env.add_source(&secret_source(&env, &api, &[("k", "v1")], asks_later))
        .await;

    env.await_copies(std::slice::from_ref(&t1), &db, &[("k", "v1")])
        .await;
    env.await_copies(std::slice::from_ref(&t0), &api, &[("k", "v1")])
        .await;
    await_event(&env, &db, "Conflict", "Warning", &t0).await;
    await_event(&env, &ca, "Conflict", "Warning", &t0).await;
    await_event(&env, &api, "Conflict", "Warning", &t1).await;
    eventually("the ConfigMap copy in t1", WAIT, || async {
        config_maps(&env, &t1)
            .get_opt(&ca)
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
    // Flushes that plan these sources again (as asking for adoption would).
    for source in [&db, &api] {
        env.sources()
            .patch(
                source,
                &PatchParams::default(),
                &Patch::Merge(&json!({"stringData": {"k": "v2"}})),
            )
            .await
            .unwrap();
    }
    env.await_copies(std::slice::from_ref(&t1), &db, &[("k", "v2")])
        .await;
    env.await_copies(std::slice::from_ref(&t0), &api, &[("k", "v2")])
        .await;

    for (ns, before) in [(&t0, &in_db), (&t1, &in_api)] {
        let name = before.metadata.name.clone().unwrap();
        let now = env.copy(ns, &name).await.expect("still there");
        assert_eq!(
            now.metadata.resource_version, before.metadata.resource_version,
            "Secret {ns}/{name} must be byte-identical"
        );
        assert_eq!(secret_content(&now), secret_content(before));
    }
    let now = config_maps(&env, &t0).get(&ca).await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        in_ca.metadata.resource_version
    );
    assert_eq!(config_map_content(&now), config_map_content(&in_ca));
    for source in [&db, &api, &ca] {
        assert!(env.events_on(source, "Adopted").await.is_empty());
    }
    assert_eq!(
        daemon.metric_sum("push_to_k8s_adoptions_total", &[]).await,
        0.0
    );
    assert!(daemon.metric_sum("push_to_k8s_conflicts_total", &[]).await >= 3.0);
    drop(daemon);
    env.teardown().await;
}

/// The source asks, the controller does not allow it (`ALLOW_ADOPTION`
/// unset: off by default).
#[tokio::test]
async fn a_source_asking_without_allow_adoption_adopts_nothing() {
    nothing_is_adopted("adopt-off", &[], Some("true"), Some("true")).await;
}

/// The controller allows it, the sources do not ask (no annotation, or
/// `"false"`).
#[tokio::test]
async fn allow_adoption_without_a_source_asking_adopts_nothing() {
    nothing_is_adopted(
        "adopt-unasked",
        &[("ALLOW_ADOPTION", "true")],
        None,
        Some("false"),
    )
    .await;
}

/// Issue 16, item 8: adoption never takes another cluster's copy. Objects
/// stamped with a source cluster (`push-to-k8s.io/source-cluster`) were
/// pushed here by another cluster's push-to-k8s; in this cluster a copy
/// carries no stamp, so any stamp means "not ours", even on an object that
/// otherwise looks exactly like one of our copies (our managed-by label, a
/// source annotation naming our source namespace and this very source).
/// With both switches on, each stays byte-identical (stamp included), and
/// the source gets a Warning `Conflict` Event naming the namespace and why.
#[tokio::test]
async fn another_clusters_copy_is_never_adopted_and_keeps_its_stamp() {
    const STAMP: &str = "push-to-k8s.io/source-cluster";
    let _serial = serial();
    let env = TestEnv::new("adopt-stamped", 3).await;
    let _on_panic = env.cleanup_on_panic();
    let (t0, t1, t2) = (
        env.targets[0].clone(),
        env.targets[1].clone(),
        env.targets[2].clone(),
    );
    let name = format!("{}-db", env.id);
    let origin = format!("{}/{name}", env.source_ns);
    // In t0: looks exactly like our copy of this source, but stamped by the
    // cluster "west". In t1: only the stamp (no managed-by label).
    let stamped = |labels: &[(&str, &str)], annotations: &[(&str, &str)]| Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(map(labels)),
            annotations: Some(map(annotations)),
            ..Default::default()
        },
        data: Some(data_map(&[("k", "west")])),
        ..Default::default()
    };
    let mut in_the_way = Vec::new();
    for (ns, s) in [
        (
            &t0,
            stamped(
                &[(MANAGED_KEY, "push-to-k8s")],
                &[("push-to-k8s.io/source", &origin), (STAMP, "west")],
            ),
        ),
        (&t1, stamped(&[("app", "x")], &[(STAMP, "west")])),
    ] {
        let created = env
            .secrets(ns)
            .create(&PostParams::default(), &s)
            .await
            .expect("create the stamped Secret");
        in_the_way.push((ns.clone(), created));
    }
    env.add_source(&secret_source(&env, &name, &[("k", "v1")], Some("true")))
        .await;
    let daemon = start(&env, &[("ALLOW_ADOPTION", "true")]).await;
    env.await_copies(std::slice::from_ref(&t2), &name, &[("k", "v1")])
        .await;
    for ns in [&t0, &t1] {
        let note = await_event(&env, &name, "Conflict", "Warning", ns).await;
        assert!(note.contains("another cluster"), "{note}");
    }
    // A flush that plans the source again.
    env.sources()
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"k": "v2"}})),
        )
        .await
        .unwrap();
    env.await_copies(std::slice::from_ref(&t2), &name, &[("k", "v2")])
        .await;
    for (ns, before) in &in_the_way {
        let now = env.copy(ns, &name).await.expect("still there");
        assert_eq!(
            now.metadata.resource_version, before.metadata.resource_version,
            "Secret {ns}/{name} (another cluster's) must be byte-identical"
        );
        assert_eq!(secret_content(&now), secret_content(before));
        assert_eq!(
            now.metadata.annotations.unwrap_or_default().get(STAMP),
            Some(&"west".to_string()),
            "its stamp is kept"
        );
    }
    assert!(env.events_on(&name, "Adopted").await.is_empty());
    assert_eq!(
        daemon.metric_sum("push_to_k8s_adoptions_total", &[]).await,
        0.0
    );
    drop(daemon);
    env.teardown().await;
}
