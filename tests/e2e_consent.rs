//! Issue 8, tenant consent: against the real control plane, with Secret and
//! ConfigMap sources alike.
//!
//! - Consent mode (`REQUIRE_NAMESPACE_CONSENT=true`): a namespace without an
//!   opt-in gets nothing; opting in (all sources, or by name) brings copies;
//!   withdrawing consent or opting out takes them away.
//! - Consent mode off: an opt-out (of everything, or of one source) takes the
//!   copies away, beats a source naming the namespace and a protected
//!   namespace named exactly; removing it brings them back.
//!
//! Every source here is limited to this test's namespaces (a glob or a list),
//! so even a broken build writes nowhere else and the copies go with the
//! namespaces at teardown; the assertions look at every copy of these sources
//! in the whole cluster, so a copy where none belongs is seen wherever it
//! lands. The labels are spelled out: they are the contract.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const NAMESPACES_ANNOTATION: &str = "push-to-k8s.io/namespaces";
const ACCEPT: &str = "push-to-k8s.io/accept";
const OPT_OUT: &str = "push-to-k8s.io/opt-out";

/// `accept.push-to-k8s.io/<source>`: this namespace accepts that source.
fn accept(source: &str) -> String {
    format!("accept.push-to-k8s.io/{source}")
}

/// `opt-out.push-to-k8s.io/<source>`: this namespace refuses that source.
fn opt_out(source: &str) -> String {
    format!("opt-out.push-to-k8s.io/{source}")
}

/// One copy: (namespace, kind, name).
type Copy = (String, &'static str, String);

fn secret(ns: &str, name: &str) -> Copy {
    (ns.to_string(), "Secret", name.to_string())
}

fn config_map(ns: &str, name: &str) -> Copy {
    (ns.to_string(), "ConfigMap", name.to_string())
}

/// A Secret and a ConfigMap source, both named `name`, both limited to
/// `namespaces` (names and globs).
async fn create_sources(env: &TestEnv, name: &str, namespaces: &str) {
    let annotations = Some(map(&[(NAMESPACES_ANNOTATION, namespaces)]));
    let mut s = source_secret(name, &[("k", "v")]);
    s.metadata.annotations = annotations.clone();
    env.add_source(&s).await;
    let c = ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(map(&[(SOURCE_SELECTOR_KEY, "source")])),
            annotations,
            ..Default::default()
        },
        data: Some(map(&[("k", "v")])),
        ..Default::default()
    };
    let api: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.source_ns);
    api.create(&PostParams::default(), &c)
        .await
        .expect("create ConfigMap source");
}

/// Set (`Some`) or remove (`None`) one label of namespace `ns`.
async fn label(env: &TestEnv, ns: &str, key: &str, value: Option<&str>) {
    let api: Api<Namespace> = Api::all(env.client.clone());
    let patch = json!({"metadata": {"labels": {key: value}}});
    api.patch(ns, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label namespace");
}

/// Every copy of this test's sources, cluster-wide, both kinds.
async fn copies(env: &TestEnv) -> BTreeSet<Copy> {
    let ours = |annotations: Option<&std::collections::BTreeMap<String, String>>| {
        annotations
            .and_then(|a| a.get(SOURCE_ANNOTATION))
            .is_some_and(|s| s.starts_with(&format!("{}/", env.source_ns)))
    };
    let lp = ListParams::default().labels(MANAGED_SELECTOR);
    let mut out = BTreeSet::new();
    let secrets: Api<Secret> = Api::all(env.client.clone());
    for m in secrets.list_metadata(&lp).await.expect("list").items {
        if ours(m.metadata.annotations.as_ref()) {
            let (ns, name) = (m.metadata.namespace.unwrap(), m.metadata.name.unwrap());
            out.insert(secret(&ns, &name));
        }
    }
    let config_maps: Api<ConfigMap> = Api::all(env.client.clone());
    for m in config_maps.list_metadata(&lp).await.expect("list").items {
        if ours(m.metadata.annotations.as_ref()) {
            let (ns, name) = (m.metadata.namespace.unwrap(), m.metadata.name.unwrap());
            out.insert(config_map(&ns, &name));
        }
    }
    out
}

/// Wait until the copies of this test's sources are exactly `want`, then until
/// the controller has stopped writing, and check they still are: a copy where
/// none belongs must not merely be late.
async fn await_exactly(env: &TestEnv, daemon: &Daemon, what: &str, want: &[Copy]) {
    let want: BTreeSet<Copy> = want.iter().cloned().collect();
    let describe = |have: &BTreeSet<Copy>| {
        format!(
            "missing {:?}, unexpected {:?}",
            want.difference(have).collect::<Vec<_>>(),
            have.difference(&want).collect::<Vec<_>>()
        )
    };
    until(what, WAIT, || async {
        let have = copies(env).await;
        if have == want {
            Ok(())
        } else {
            Err(describe(&have))
        }
    })
    .await;
    await_no_writes_for(daemon, Duration::from_secs(3)).await;
    let have = copies(env).await;
    assert_eq!(have, want, "{what}, once settled: {}", describe(&have));
}

/// Wait until the controller's write count has not moved for `quiet`.
async fn await_no_writes_for(daemon: &Daemon, quiet: Duration) {
    let deadline = Instant::now() + WAIT;
    let writes = || daemon.metric_sum("push_to_k8s_writes_total", &[]);
    let mut last = writes().await;
    loop {
        tokio::time::sleep(quiet).await;
        let now = writes().await;
        if now == last {
            return;
        }
        assert!(Instant::now() < deadline, "the controller kept writing");
        last = now;
    }
}

async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Daemon {
    let mut daemon = Daemon::start(&env.source_ns, extra);
    daemon.await_ready().await;
    daemon
}

/// Consent mode: nothing without an opt-in; `accept=all` and
/// `accept.push-to-k8s.io/<source>=true` bring exactly what they accept;
/// withdrawing consent or opting out takes copies away.
#[tokio::test]
async fn consent_mode_copies_only_what_a_namespace_accepts() {
    let _serial = serial();
    let mut env = TestEnv::new("consent", 0).await;
    let _on_panic = env.cleanup_on_panic();
    let id = env.id.clone();
    let (db, api) = (format!("{id}-db"), format!("{id}-api"));
    let ns = |n: &str| format!("{id}-{n}");
    let (none, all, by_name, other) = (ns("none"), ns("all"), ns("by-name"), ns("other"));
    env.create_namespace(&none, &[]).await;
    env.create_namespace(&all, &[(ACCEPT, "all")]).await;
    env.create_namespace(&by_name, &[(&accept(&db), "true")])
        .await;
    env.create_namespace(&other, &[(&accept(&api), "true")])
        .await;
    let mine = format!("{id}-*");
    create_sources(&env, &db, &mine).await;
    create_sources(&env, &api, &mine).await;
    let daemon = start(&env, &[("REQUIRE_NAMESPACE_CONSENT", "true")]).await;

    let both = |ns: &str, name: &str| [secret(ns, name), config_map(ns, name)];
    let mut want: Vec<Copy> = [
        both(&all, &db),
        both(&all, &api),
        both(&by_name, &db),
        both(&other, &api),
    ]
    .concat();
    await_exactly(
        &env,
        &daemon,
        "copies only where accepted (none in the namespace without an opt-in)",
        &want,
    )
    .await;

    // Opting in brings copies: one source by name, and everything.
    label(&env, &none, &accept(&api), Some("true")).await;
    label(&env, &other, ACCEPT, Some("all")).await;
    want.extend(both(&none, &api));
    want.extend(both(&other, &db));
    await_exactly(&env, &daemon, "copies after opting in", &want).await;

    // Withdrawing consent takes the copies it allowed away.
    label(&env, &other, ACCEPT, None).await;
    want.retain(|c| *c != secret(&other, &db) && *c != config_map(&other, &db));
    await_exactly(&env, &daemon, "copies after withdrawing consent", &want).await;

    // Opting out beats consent: of one source, and of everything.
    label(&env, &all, &opt_out(&db), Some("true")).await;
    label(&env, &by_name, OPT_OUT, Some("all")).await;
    want.retain(|c| !(c.0 == all && c.2 == db) && c.0 != by_name);
    await_exactly(&env, &daemon, "copies after opting out", &want).await;

    drop(daemon);
    env.teardown().await;
}

/// Consent mode off: every namespace gets copies, except that an opt-out (of
/// everything, or of one source) takes them away, even from a namespace the
/// source names, and from a protected namespace it names exactly; removing the
/// opt-out brings them back.
#[tokio::test]
async fn opt_out_takes_copies_away_without_consent_mode() {
    let _serial = serial();
    let mut env = TestEnv::new("optout", 0).await;
    let _on_panic = env.cleanup_on_panic();
    let id = env.id.clone();
    let (db, api) = (format!("{id}-db"), format!("{id}-api"));
    let ns = |n: &str| format!("{id}-{n}");
    let (t0, t1, t2, refuses, guarded) = (ns("t0"), ns("t1"), ns("t2"), ns("refuses"), ns("prot"));
    for n in [&t0, &t1, &t2, &guarded] {
        env.create_namespace(n, &[]).await;
    }
    env.create_namespace(&refuses, &[(OPT_OUT, "true")]).await;
    // `db` names every namespace exactly (the protected one too); `api` reaches
    // them by a glob, which does not reach a protected namespace.
    let listed = [&t0, &t1, &t2, &refuses, &guarded]
        .map(String::as_str)
        .join(",");
    create_sources(&env, &db, &listed).await;
    create_sources(&env, &api, &format!("{id}-*")).await;
    let daemon = start(&env, &[("PROTECTED_NAMESPACES", guarded.as_str())]).await;

    let both = |ns: &str, name: &str| [secret(ns, name), config_map(ns, name)];
    let mut want: Vec<Copy> = [&t0, &t1, &t2]
        .into_iter()
        .flat_map(|n| [both(n, &db), both(n, &api)].concat())
        .chain(both(&guarded, &db))
        .collect();
    await_exactly(
        &env,
        &daemon,
        "copies everywhere but in the namespace that opted out",
        &want,
    )
    .await;

    // Opting out of everything, of one source, and out of a protected
    // namespace the source names exactly.
    label(&env, &t0, OPT_OUT, Some("all")).await;
    label(&env, &t1, &opt_out(&db), Some("true")).await;
    label(&env, &guarded, OPT_OUT, Some("true")).await;
    let before = want.clone();
    want.retain(|c| c.0 != t0 && !(c.0 == t1 && c.2 == db) && c.0 != guarded);
    await_exactly(&env, &daemon, "copies after opting out", &want).await;

    // Removing the opt-outs brings the copies back.
    label(&env, &t0, OPT_OUT, None).await;
    label(&env, &t1, &opt_out(&db), None).await;
    label(&env, &guarded, OPT_OUT, None).await;
    await_exactly(
        &env,
        &daemon,
        "copies after the opt-outs are removed",
        &before,
    )
    .await;

    drop(daemon);
    env.teardown().await;
}
