//! Issue 7, defects 5 and 6, against the real control plane:
//! - `/readyz` tells the truth: unready, with the reason, while a watch keeps
//!   failing (here: its ServiceAccount may not list namespaces) or after a
//!   resync failed (here: it lost `list` on Secrets), and ready again once it
//!   works; `/healthz` stays 200 all along.
//! - Unmanaged same-named Secrets that exist at start are known from one LIST
//!   per source: no create is tried over them (no POST answered "already
//!   exists"), one Warning Event per source names them, and the conflict
//!   metric counts them; once one is gone, the copy arrives (a recheck is one
//!   LIST per name, once a minute).

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

const SA: &str = "p2k-health";

fn meta(name: &str, ns: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ns.map(str::to_string),
        ..Default::default()
    }
}

fn rule(resources: &str, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resources.to_string()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        ..Default::default()
    }
}

/// The controller's ClusterRole with `secrets` and `namespaces` verbs as
/// given (and every verb on ConfigMaps, the other kind it replicates).
fn cluster_role(name: &str, secrets: &[&str], namespaces: &[&str]) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, None),
        rules: Some(vec![
            rule("secrets", secrets),
            rule("configmaps", &ALL_SECRET_VERBS),
            rule("namespaces", namespaces),
        ]),
        ..Default::default()
    }
}

const ALL_SECRET_VERBS: [&str; 7] = [
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// A ServiceAccount `SA` in `ns` bound to ClusterRole `role` (as given) and
/// allowed to publish Events in `ns`: the controller's identity in this test.
async fn service_account(env: &TestEnv, role: &ClusterRole) {
    let c = &env.client;
    let ns = env.source_ns.as_str();
    let name = role.metadata.name.clone().unwrap();
    let pp = PostParams::default();
    Api::<ServiceAccount>::namespaced(c.clone(), ns)
        .create(
            &pp,
            &ServiceAccount {
                metadata: meta(SA, Some(ns)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    Api::<ClusterRole>::all(c.clone())
        .create(&pp, role)
        .await
        .unwrap();
    let subject = Subject {
        kind: "ServiceAccount".into(),
        name: SA.into(),
        namespace: Some(ns.into()),
        ..Default::default()
    };
    Api::<ClusterRoleBinding>::all(c.clone())
        .create(
            &pp,
            &ClusterRoleBinding {
                metadata: meta(&name, None),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "ClusterRole".into(),
                    name: name.clone(),
                },
                subjects: Some(vec![subject.clone()]),
            },
        )
        .await
        .unwrap();
    Api::<Role>::namespaced(c.clone(), ns)
        .create(
            &pp,
            &Role {
                metadata: meta("events", Some(ns)),
                rules: Some(vec![PolicyRule {
                    api_groups: Some(vec!["events.k8s.io".into()]),
                    resources: Some(vec!["events".into()]),
                    verbs: vec!["create".into(), "patch".into()],
                    ..Default::default()
                }]),
            },
        )
        .await
        .unwrap();
    Api::<RoleBinding>::namespaced(c.clone(), ns)
        .create(
            &pp,
            &RoleBinding {
                metadata: meta("events", Some(ns)),
                role_ref: RoleRef {
                    api_group: "rbac.authorization.k8s.io".into(),
                    kind: "Role".into(),
                    name: "events".into(),
                },
                subjects: Some(vec![subject]),
            },
        )
        .await
        .unwrap();
}

/// Replace the rules of ClusterRole `role`.
async fn set_role(env: &TestEnv, role: ClusterRole) {
    let name = role.metadata.name.clone().unwrap();
    let patch = serde_json::json!({"rules": role.rules});
    Api::<ClusterRole>::all(env.client.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// The last lines of a log, for assertion messages.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Wait until `/readyz` answers `code` with a body containing every one of
/// `parts`; checks `/healthz` is 200 on the way. Returns the body.
async fn await_readyz(daemon: &Daemon, code: u16, parts: &[&str], timeout: Duration) -> String {
    let what = format!("/readyz {code} with {parts:?}");
    until(&what, timeout, || async {
        let health = daemon.healthz().await;
        if let Some((c, body)) = &health
            && *c != 200
        {
            panic!("/healthz {c}: {body}; log:\n{}", tail(&daemon.logs()));
        }
        match daemon.readyz().await {
            Some((c, body)) if c == code && parts.iter().all(|p| body.contains(p)) => Ok(body),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

// Issue 7, defect 5: /readyz said ok once the caches had synced, whatever
// happened next. Run as a ServiceAccount whose ClusterRole first lacks
// namespaces list/watch (the namespace watch cannot list), then gets them,
// then loses list on Secrets (the resync cannot list), then gets it back.
#[tokio::test]
async fn defect5_readyz_reports_failing_watches_and_resyncs_and_recovers() {
    let _serial = serial();
    let env = TestEnv::new("health", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let role = format!("{}-role", env.id);
    let _rbac = DeleteClusterRbac(role.clone());
    service_account(&env, &cluster_role(&role, &ALL_SECRET_VERBS, &["get"])).await;
    let kubeconfig = service_account_kubeconfig(&env.source_ns, SA);
    let name = format!("{}-s", env.id);
    let value = format!("{}-not-in-any-body", env.id);
    env.create_source(&name, &[("k", &value)]).await;

    let mut daemon = Daemon::start(
        &env.source_ns,
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("READY_WATCH_FAILURE_SECONDS", "2"),
            ("SYNC_INTERVAL", "1"),
        ],
    );
    eprintln!("controller log: {}", daemon.log.display());
    let mut bodies = Vec::new();

    // The namespace watch cannot list: unready, and the body says why.
    let body = await_readyz(
        &daemon,
        503,
        &[
            "watch namespaces failing for",
            "403 Forbidden",
            "caches not synced",
        ],
        Duration::from_secs(60),
    )
    .await;
    eprintln!("without namespaces list: {body:?}");
    bodies.push(body);

    // Allowed: the watch lists again, the caches sync, ready.
    let t = Instant::now();
    set_role(
        &env,
        cluster_role(&role, &ALL_SECRET_VERBS, &["get", "list", "watch"]),
    )
    .await;
    await_readyz(&daemon, 200, &["ok"], Duration::from_secs(90)).await;
    eprintln!(
        "ready {:?} after namespaces list/watch were granted",
        t.elapsed()
    );
    env.await_copies(&env.targets, &name, &[("k", &value)])
        .await;

    // Secrets can no longer be listed: the next resync (SYNC_INTERVAL 1 min)
    // fails, and /readyz says so.
    let t = Instant::now();
    set_role(
        &env,
        cluster_role(
            &role,
            &["get", "create", "update", "patch", "delete"],
            &["get", "list", "watch"],
        ),
    )
    .await;
    let body = await_readyz(
        &daemon,
        503,
        &["last resync failed", "403 Forbidden"],
        Duration::from_secs(150),
    )
    .await;
    eprintln!("{:?} after Secrets list was revoked: {body:?}", t.elapsed());
    bodies.push(body);

    // Back: the failed resync is retried within 30 s, and it is ready again.
    let t = Instant::now();
    set_role(
        &env,
        cluster_role(&role, &ALL_SECRET_VERBS, &["get", "list", "watch"]),
    )
    .await;
    await_readyz(&daemon, 200, &["ok"], Duration::from_secs(90)).await;
    eprintln!("ready {:?} after Secrets list came back", t.elapsed());

    for body in &bodies {
        assert!(!body.contains(&value), "a Secret value in /readyz: {body}");
    }
    let status = daemon.stop();
    assert!(status.success(), "exit status {status}");
    let _ = std::fs::remove_file(kubeconfig);
    env.teardown().await;
}

/// An unmanaged Secret named `name` in `ns`.
async fn unmanaged(env: &TestEnv, ns: &str, name: &str) -> Secret {
    env.secrets(ns)
        .create(&PostParams::default(), &source_secret_unlabelled(name))
        .await
        .expect("create an unmanaged Secret")
}

fn source_secret_unlabelled(name: &str) -> Secret {
    let mut s = source_secret(name, &[("mine", "not-yours")]);
    s.metadata.labels = None;
    s
}

// Issue 7, defect 6: conflicts that exist at start were found by a create
// (POST refused with AlreadyExists), a GET and an Event per namespace. Now
// they come from one LIST per source before the first plan.
#[tokio::test]
async fn defect6_conflicts_at_start_come_from_a_list_not_from_failed_creates() {
    let _serial = serial();
    let env = TestEnv::new("conflicts", 5).await;
    let _on_panic = env.cleanup_on_panic();
    let name = format!("{}-s", env.id);
    let (taken, free) = env.targets.split_at(3);
    let mut before = Vec::new();
    for ns in taken {
        before.push(unmanaged(&env, ns, &name).await);
    }
    env.create_source(&name, &[("k", "v1")]).await;

    let mut daemon = Daemon::start(&env.source_ns, &[("DEBUG", "true")]);
    eprintln!("controller log: {}", daemon.log.display());
    daemon.await_ready().await;
    env.await_copies(free, &name, &[("k", "v1")]).await;
    eventually(
        "push_to_k8s_conflicts_total == 3",
        Duration::from_secs(30),
        || async {
            (daemon.metric_sum("push_to_k8s_conflicts_total", &[]).await == 3.0).then_some(())
        },
    )
    .await;
    let creates_refused = daemon
        .metric_sum(
            "push_to_k8s_writes_total",
            &["op=\"create\"", "result=\"conflict\""],
        )
        .await;
    assert_eq!(
        creates_refused,
        0.0,
        "a create was tried over an unmanaged Secret; log:\n{}",
        tail(&daemon.logs())
    );
    assert!(
        daemon
            .metric_sum("push_to_k8s_conflict_lists_total", &["result=\"ok\""])
            .await
            >= 1.0
    );
    // One Warning Event for the source, naming every taken namespace.
    let events = until(
        "one Conflict Event on the source",
        Duration::from_secs(30),
        || async {
            let events = env.events_on(&name, "Conflict").await;
            match events.as_slice() {
                [(t, note)] if t == "Warning" => Ok(note.clone()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(events.contains("3 namespaces"), "{events}");
    for ns in taken {
        assert!(events.contains(ns.as_str()), "{events} does not name {ns}");
    }
    // Left untouched.
    for b in &before {
        let ns = b.metadata.namespace.as_deref().unwrap();
        let now = env.copy(ns, &name).await.expect("still there");
        assert_eq!(
            now.metadata.resource_version, b.metadata.resource_version,
            "{ns}/{name} was written"
        );
    }

    // One of them goes: the recheck (a LIST per name, once a minute) finds
    // out, and the copy is made, still with no create refused.
    env.secrets(&taken[1])
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    let freed = taken[1].clone();
    eventually(
        &format!("our copy in {freed} once its blocker is gone"),
        Duration::from_secs(100),
        || async {
            let copy = env.copy(&freed, &name).await?;
            let ours = copy
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SOURCE_ANNOTATION))
                .is_some();
            (ours && copy.data == Some(data_map(&[("k", "v1")]))).then_some(())
        },
    )
    .await;
    assert_eq!(
        daemon
            .metric_sum(
                "push_to_k8s_writes_total",
                &["op=\"create\"", "result=\"conflict\""],
            )
            .await,
        0.0
    );
    assert!(env.copy(&taken[0], &name).await.is_some());
    assert_eq!(env.events_on(&name, "Conflict").await.len(), 1);

    let status = daemon.stop();
    assert!(status.success(), "exit status {status}");
    env.teardown().await;
}
