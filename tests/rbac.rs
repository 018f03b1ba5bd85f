//! The RBAC in deploy.yaml (same rules as the Helm chart) is enough: the
//! controller runs as the chart's ServiceAccount, with a token the API server
//! authenticates, and creates, updates and deletes copies and publishes Events
//! without a single Forbidden.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::Kubeconfig;

const NS: &str = "push-to-k8s";

fn kubectl(args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A kubeconfig that authenticates as the ServiceAccount with a bound token.
fn service_account_kubeconfig() -> std::path::PathBuf {
    let admin = Kubeconfig::read_from(&control_plane().kubeconfig).unwrap();
    let cluster = admin.clusters[0].cluster.clone().unwrap();
    let token = kubectl(&["create", "token", "push-to-k8s", "-n", NS, "--duration=1h"]);
    let path = std::env::temp_dir().join(format!("{}.kubeconfig", unique("push-to-k8s-sa")));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: sa\n  user:\n    token: {}\ncontexts:\n- name: sa\n  context: {{cluster: local, user: sa}}\ncurrent-context: sa\n",
        cluster.server.unwrap(),
        cluster.certificate_authority.unwrap(),
        token.trim()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn runs_as_the_deploy_yaml_service_account() {
    let _serial = serial();
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy.yaml");
    kubectl(&["apply", "-f", manifest]);
    let env = TestEnv::new("rbac", 3).await;
    let name = format!("{}-s", env.id);
    let taken = env.targets[2].clone();
    // An unmanaged Secret of the same name: the conflict Event needs the events Role.
    env.secrets(&taken)
        .create(
            &PostParams::default(),
            &source_secret(&name, &[("mine", "x")]),
        )
        .await
        .unwrap();
    let sources: Api<Secret> = Api::namespaced(env.client.clone(), NS);
    sources
        .create(
            &PostParams::default(),
            &source_secret(&name, &[("k", "v1")]),
        )
        .await
        .unwrap();

    let kubeconfig = service_account_kubeconfig();
    let mut daemon = Daemon::start(NS, &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);
    daemon.await_ready().await;
    let wanted = env.targets[..2].to_vec();
    env.await_copies(&wanted, &name, &[("k", "v1")]).await;

    // update (apply) ...
    let patch = serde_json::json!({"stringData": {"k": "v2"}});
    sources
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    env.await_copies(&wanted, &name, &[("k", "v2")]).await;

    // ... the conflict Event on the source ...
    let events: Api<Event> = Api::namespaced(env.client.clone(), NS);
    eventually(
        "a Conflict Event on the source",
        Duration::from_secs(60),
        || async {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("Conflict")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref())
                            == Some(name.as_str())
                        && e.note.as_deref().unwrap_or_default().contains(&taken)
                })
        },
    )
    .await;

    // ... and delete.
    sources
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    env.await_no_copies(&wanted, &name).await;
    assert!(
        env.copy(&taken, &name).await.is_some(),
        "unmanaged Secret must stay"
    );

    let status = daemon.stop();
    let logs = daemon.logs();
    assert!(status.success(), "exit status {status}; log:\n{logs}");
    assert!(
        !logs.contains("Forbidden") && !logs.contains(" 403 "),
        "RBAC denied something:\n{logs}"
    );
    let _ = std::fs::remove_file(kubeconfig);
    env.cleanup().await;
}
