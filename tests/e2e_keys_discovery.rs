//! Issue 8: key filters and discovery labels, against the real control plane.
//!
//! - `push-to-k8s.io/include-keys` / `exclude-keys` give exactly the selected
//!   keys in every copy (a Secret's `data`, a ConfigMap's `data` and
//!   `binaryData`), changing them adds and removes keys in the copies, and a
//!   glob that does not parse refuses only that source (Warning Event,
//!   metric, copies untouched).
//! - The labels `push-to-k8s.io/source-name` and `push-to-k8s.io/source-namespace`
//!   select exactly the copies of one source, also for a name longer than a
//!   label value may be (then a hash: `h_` + 20 hex digits of its SHA-256).
//!
//! Every source here narrows its targets to this test's namespaces
//! (`push-to-k8s.io/namespaces`), so all copies live in namespaces the test
//! deletes, and "exactly these copies" is a statement about the whole cluster.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use sha2::{Digest, Sha256};

const WAIT: Duration = Duration::from_secs(60);
const NAMESPACES: &str = "push-to-k8s.io/namespaces";
const INCLUDE_KEYS: &str = "push-to-k8s.io/include-keys";
const EXCLUDE_KEYS: &str = "push-to-k8s.io/exclude-keys";
const SOURCE_NAME_LABEL: &str = "push-to-k8s.io/source-name";
const SOURCE_NAMESPACE_LABEL: &str = "push-to-k8s.io/source-namespace";

fn value_of(key: &str) -> String {
    format!("value of {key}")
}

/// A source's metadata: labelled, with `annotations` plus one that narrows
/// its targets to this test's namespaces.
fn meta(env: &TestEnv, name: &str, annotations: &[(&str, &str)]) -> ObjectMeta {
    let mut all = map(annotations);
    all.insert(NAMESPACES.into(), format!("{}-t*", env.id));
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(map(&[(SOURCE_SELECTOR_KEY, "source")])),
        annotations: Some(all),
        ..Default::default()
    }
}

fn secret(env: &TestEnv, name: &str, keys: &[&str], annotations: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: meta(env, name, annotations),
        data: Some(
            keys.iter()
                .map(|k| (k.to_string(), ByteString(value_of(k).into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn config_map(
    env: &TestEnv,
    name: &str,
    text: &[&str],
    binary: &[&str],
    annotations: &[(&str, &str)],
) -> ConfigMap {
    ConfigMap {
        metadata: meta(env, name, annotations),
        data: Some(text.iter().map(|k| (k.to_string(), value_of(k))).collect()),
        binary_data: Some(
            binary
                .iter()
                .map(|k| (k.to_string(), ByteString(value_of(k).into_bytes())))
                .collect(),
        ),
        immutable: None,
    }
}

/// The `data` a Secret copy must hold: exactly `keys`, with the source's values.
fn secret_data(keys: &[&str]) -> BTreeMap<String, ByteString> {
    keys.iter()
        .map(|k| (k.to_string(), ByteString(value_of(k).into_bytes())))
        .collect()
}

type CmContent = (BTreeMap<String, String>, BTreeMap<String, ByteString>);

/// The `data` and `binaryData` a ConfigMap copy must hold.
fn cm_content(text: &[&str], binary: &[&str]) -> CmContent {
    (
        text.iter().map(|k| (k.to_string(), value_of(k))).collect(),
        secret_data(binary),
    )
}

async fn await_secret_copies(env: &TestEnv, name: &str, keys: &[&str]) {
    let want = secret_data(keys);
    for ns in &env.targets {
        until(
            &format!("Secret {ns}/{name} with exactly the keys {keys:?}"),
            WAIT,
            || async {
                let got = env.copy(ns, name).await.ok_or("no copy")?;
                let data = got.data.unwrap_or_default();
                if data == want {
                    Ok(())
                } else {
                    Err(format!("keys {:?}", data.keys().collect::<Vec<_>>()))
                }
            },
        )
        .await;
    }
}

async fn await_config_map_copies(env: &TestEnv, name: &str, text: &[&str], binary: &[&str]) {
    let want = cm_content(text, binary);
    for ns in &env.targets {
        let api: Api<ConfigMap> = Api::namespaced(env.client.clone(), ns);
        until(
            &format!("ConfigMap {ns}/{name} with data {text:?} and binaryData {binary:?}"),
            WAIT,
            || async {
                let got = api.get_opt(name).await.unwrap().ok_or("no copy")?;
                let have = (
                    got.data.unwrap_or_default(),
                    got.binary_data.unwrap_or_default(),
                );
                if have == want {
                    Ok(())
                } else {
                    Err(format!(
                        "data {:?}, binaryData {:?}",
                        have.0.keys().collect::<Vec<_>>(),
                        have.1.keys().collect::<Vec<_>>()
                    ))
                }
            },
        )
        .await;
    }
}

async fn merge<K>(api: &Api<K>, name: &str, patch: serde_json::Value)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("merge patch");
}

/// The resourceVersion of each Secret copy of `name`.
async fn versions(env: &TestEnv, name: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for ns in &env.targets {
        out.push(
            env.copy(ns, name)
                .await
                .and_then(|c| c.metadata.resource_version),
        );
    }
    out
}

#[tokio::test]
async fn key_filters_give_exactly_the_selected_keys_and_follow_changes() {
    let _serial = serial();
    let env = TestEnv::new("keys", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let tls = format!("{}-tls", env.id);
    let cfg = format!("{}-cfg", env.id);
    env.add_source(&secret(
        &env,
        &tls,
        &["tls.crt", "tls.key", "ca.crt", "password", "DB_URL"],
        &[(INCLUDE_KEYS, "tls.*, ca.crt"), (EXCLUDE_KEYS, "tls.key")],
    ))
    .await;
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.source_ns);
    config_maps
        .create(
            &PostParams::default(),
            &config_map(
                &env,
                &cfg,
                &["app.yaml", "app.env", "README"],
                &["ca.crt", "logo.png"],
                &[
                    (INCLUDE_KEYS, "app.*,*.crt,logo.png"),
                    (EXCLUDE_KEYS, "*.env"),
                ],
            ),
        )
        .await
        .unwrap();
    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    // Included by name and glob, the excluded one left out although the
    // glob includes it.
    await_secret_copies(&env, &tls, &["ca.crt", "tls.crt"]).await;
    // For a ConfigMap, in `data` and `binaryData` alike.
    await_config_map_copies(&env, &cfg, &["app.yaml"], &["ca.crt", "logo.png"]).await;

    // Changing the annotations adds keys (tls.key, password) and removes
    // one (ca.crt) in every copy.
    merge(
        &env.sources(),
        &tls,
        json!({"metadata": {"annotations": {INCLUDE_KEYS: "tls.*,password", EXCLUDE_KEYS: null}}}),
    )
    .await;
    await_secret_copies(&env, &tls, &["password", "tls.crt", "tls.key"]).await;
    merge(
        &config_maps,
        &cfg,
        json!({"metadata": {"annotations": {INCLUDE_KEYS: "README,*.png", EXCLUDE_KEYS: ""}}}),
    )
    .await;
    await_config_map_copies(&env, &cfg, &["README"], &["logo.png"]).await;
    // Annotations gone: every key.
    merge(
        &config_maps,
        &cfg,
        json!({"metadata": {"annotations": {INCLUDE_KEYS: null, EXCLUDE_KEYS: null}}}),
    )
    .await;
    await_config_map_copies(
        &env,
        &cfg,
        &["README", "app.env", "app.yaml"],
        &["ca.crt", "logo.png"],
    )
    .await;

    // A glob that does not parse refuses that source: a Warning Event, the
    // metric, and its copies stay exactly as they are, although its data
    // changed too.
    let before = versions(&env, &tls).await;
    merge(
        &env.sources(),
        &tls,
        json!({"metadata": {"annotations": {EXCLUDE_KEYS: "tls.[ck]ey"}},
               "stringData": {"password": "changed"}}),
    )
    .await;
    let warning = eventually(
        "an InvalidAnnotation Warning Event on the Secret source",
        WAIT,
        || async { env.events_on(&tls, "InvalidAnnotation").await.pop() },
    )
    .await;
    assert_eq!(warning.0, "Warning");
    assert!(warning.1.contains(EXCLUDE_KEYS), "{}", warning.1);
    eventually("the invalid-annotation metric counts it", WAIT, || async {
        (daemon
            .metric_sum(
                "push_to_k8s_invalid_annotations_total",
                &["annotation=\"exclude_keys\""],
            )
            .await
            >= 1.0)
            .then_some(())
    })
    .await;
    // Other sources go on (a later flush than the refusal)...
    merge(
        &config_maps,
        &cfg,
        json!({"metadata": {"annotations": {INCLUDE_KEYS: "README"}}}),
    )
    .await;
    await_config_map_copies(&env, &cfg, &["README"], &[]).await;
    // ... and the refused one's copies are untouched.
    assert_eq!(versions(&env, &tls).await, before);
    await_secret_copies(&env, &tls, &["password", "tls.crt", "tls.key"]).await;

    let status = daemon.stop();
    assert!(status.success(), "{status}");
    env.teardown().await;
}

/// `h_` and the first 20 hex digits of the SHA-256 of `name`, as the README
/// says (`printf %s NAME | sha256sum | cut -c1-20`).
fn hashed(name: &str) -> String {
    let hex: String = Sha256::digest(name.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("h_{}", &hex[..20])
}

/// `(namespace, name)` of every object of kind `K` in the cluster matching `selector`.
async fn listed<K>(env: &TestEnv, selector: &str) -> BTreeSet<(String, String)>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(env.client.clone());
    api.list_metadata(&ListParams::default().labels(selector))
        .await
        .expect("list with the discovery selector")
        .items
        .into_iter()
        .map(|m| (m.metadata.namespace.unwrap(), m.metadata.name.unwrap()))
        .collect()
}

#[tokio::test]
async fn discovery_labels_select_exactly_the_copies_of_one_source() {
    let _serial = serial();
    let env = TestEnv::new("disc", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let app = format!("{}-app", env.id);
    let similar = format!("{}-app-2", env.id);
    // Two 70-character names that differ only at the end: too long for a
    // label value, so both are hashed, to different values.
    let long = |end: char| {
        let stem = format!("{}-", env.id);
        format!("{stem}{}{end}", "x".repeat(69 - stem.len()))
    };
    let (long_a, long_b) = (long('a'), long('b'));
    assert_eq!(long_a.len(), 70);
    for name in [&app, &similar, &long_a, &long_b] {
        env.add_source(&secret(&env, name, &["k"], &[])).await;
    }
    // A ConfigMap source of the same name as a Secret source.
    let config_maps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.source_ns);
    config_maps
        .create(
            &PostParams::default(),
            &config_map(&env, &app, &["k"], &[], &[]),
        )
        .await
        .unwrap();
    let mut daemon = Daemon::start(&env.source_ns, &[]);
    daemon.await_ready().await;
    for name in [&app, &similar, &long_a, &long_b] {
        await_secret_copies(&env, name, &["k"]).await;
    }
    await_config_map_copies(&env, &app, &["k"], &[]).await;

    let everywhere = |name: &str| -> BTreeSet<(String, String)> {
        env.targets
            .iter()
            .map(|ns| (ns.clone(), name.to_string()))
            .collect()
    };
    let selector = |value: &str| {
        format!(
            "{SOURCE_NAME_LABEL}={value},{SOURCE_NAMESPACE_LABEL}={}",
            env.source_ns
        )
    };
    // (source name, label value): the name itself where it is a valid
    // label value, else its hash.
    let cases = [
        (&app, app.clone()),
        (&similar, similar.clone()),
        (&long_a, hashed(&long_a)),
        (&long_b, hashed(&long_b)),
    ];
    assert_ne!(hashed(&long_a), hashed(&long_b));
    for (name, value) in &cases {
        // The value can be read off any copy.
        let copy = env.copy(&env.targets[0], name).await.unwrap();
        let labels = copy.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get(SOURCE_NAME_LABEL), Some(value), "{name}");
        assert_eq!(
            labels.get(SOURCE_NAMESPACE_LABEL),
            Some(&env.source_ns),
            "{name}"
        );
        assert!(!labels.contains_key(SOURCE_SELECTOR_KEY), "{labels:?}");
        // `kubectl get secrets,configmaps -A -l <selector>`: exactly this
        // source's copies, of each kind.
        assert_eq!(
            listed::<Secret>(&env, &selector(value)).await,
            everywhere(name),
            "Secrets listed for {name}"
        );
        let config_map_copies = if *name == &app {
            everywhere(name)
        } else {
            BTreeSet::new()
        };
        assert_eq!(
            listed::<ConfigMap>(&env, &selector(value)).await,
            config_map_copies,
            "ConfigMaps listed for {name}"
        );
    }
    // The source name alone finds the copies too, and never the source.
    let by_name = format!("{SOURCE_NAME_LABEL}={app}");
    assert_eq!(listed::<Secret>(&env, &by_name).await, everywhere(&app));

    let status = daemon.stop();
    assert!(status.success(), "{status}");
    env.teardown().await;
}
