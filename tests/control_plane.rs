//! Issue 2: the project's own control plane is real and usable.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams};

#[tokio::test]
async fn lists_the_system_namespaces_and_reports_the_pinned_version() {
    let _serial = serial();
    let client = client().await;
    let api: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = api
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(
            names.contains(&ns.to_string()),
            "{ns} missing from {names:?}"
        );
    }
    let version = client.apiserver_version().await.unwrap();
    let script = std::fs::read_to_string(cp_script()).unwrap();
    let pinned = script
        .lines()
        .find_map(|l| l.strip_prefix("KUBE_VERSION="))
        .expect("KUBE_VERSION in cp.sh");
    assert_eq!(version.git_version, pinned);
}

#[tokio::test]
async fn a_deleted_namespace_really_goes_away() {
    let _serial = serial();
    let mut env = TestEnv::new("nsdel", 0).await;
    let name = format!("{}-gone", env.id);
    env.create_namespace(&name, &[]).await;
    // Something inside, so the namespace controller has work to do.
    env.secrets(&name)
        .create(&Default::default(), &source_secret("x", &[("k", "v")]))
        .await
        .unwrap();
    let api: Api<Namespace> = Api::all(env.client.clone());
    api.delete(&name, &DeleteParams::default()).await.unwrap();
    eventually(
        "namespace to disappear (not stuck in Terminating)",
        Duration::from_secs(90),
        || async { api.get_opt(&name).await.unwrap().is_none().then_some(()) },
    )
    .await;
    env.cleanup().await;
}
