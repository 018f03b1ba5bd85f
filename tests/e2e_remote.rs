//! Issue 11: remote clusters as targets, end to end.
//!
//! Three real control planes on loopback, all started by the project's
//! script: the local one (the controller's own cluster, where the sources and
//! the registrations live) and two remote ones in their own state directories
//! (`common::remote`). Every remote cluster is registered with a kubeconfig
//! for the shipped remote identity (`deploy/remote-cluster-rbac.yaml`: a
//! ServiceAccount bound to nothing but its ClusterRole), so items 1-4 also
//! prove that identity is enough (item 5): every controller log is checked
//! for a `Forbidden` (except where item 3 registers an identity on purpose
//! that the cluster refuses, and while item 4's kube-apiserver starts again:
//! it refuses everyone until its authorizer has synced), and for the
//! registration tokens, which must never be logged.
//!
//! 1. A source with the clusters annotation reaches every eligible namespace
//!    of each cluster it names (names, globs, `*`; namespace targeting,
//!    exclusions, the exclude label and key filters in each cluster); one
//!    without it stays local.
//! 2. Update, delete, drift repair (edited and deleted copies), a new
//!    namespace, an opt-out label and a same-named object we did not create,
//!    in a remote cluster as at home.
//! 3. A cluster registered at runtime (first with an identity it refuses,
//!    reported as such, then with the right one) gets copies; removing the
//!    registration leaves them exactly as they are, later changes no longer
//!    reach it, and `status` reports the cluster as no longer managed.
//! 4. A remote kube-apiserver stopped mid-propagation: the local cluster and
//!    the other remote converge, `/readyz` stays 200 and names the cluster,
//!    `push_to_k8s_cluster_up` is 0, an Event and `status` report it; once
//!    it is back it converges too.
//! 5. `kubectl auth can-i --list` as the shipped identity shows exactly the
//!    ClusterRole's rules beyond what every authenticated user may do.
//!
//! The tests of this binary share the two remote control planes; each uses
//! namespaces named after its id there too. They hold [`serial`]: each runs
//! its own controller against the local cluster, and item 4 stops a remote
//! kube-apiserver.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::remote::*;
use common::*;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
/// A remote kube-apiserver back after an outage: the controller's watch and
/// write retries back off meanwhile, so this is longer.
const RETURN: Duration = Duration::from_secs(180);
/// Namespaces carrying this label key get nothing (`EXCLUDE_NAMESPACE_LABEL`).
const EXCLUDE_KEY: &str = "e2e.push-to-k8s.io/exclude";
const NAMESPACES: &str = "push-to-k8s.io/namespaces";
const EXCLUDE_NAMESPACES: &str = "push-to-k8s.io/exclude-namespaces";
const EXCLUDE_KEYS: &str = "push-to-k8s.io/exclude-keys";
const OPT_OUT: &str = "push-to-k8s.io/opt-out";
const MANAGED_KEY: &str = "push-to-k8s.io/managed-by";
const MANAGED_VALUE: &str = "push-to-k8s";
const CLUSTER_UP: &str = "push_to_k8s_cluster_up";
const CLUSTER_WRITES: &str = "push_to_k8s_cluster_writes_total";

// ---------------------------------------------------------------- helpers

/// `CLUSTER_NAME` of this test's controller: what its remote copies name.
fn home(env: &TestEnv) -> String {
    format!("{}-home", env.id)
}

/// A registered cluster of one test: a remote control plane under a name.
struct Cluster {
    remote: &'static Remote,
    name: String,
    client: kube::Client,
}

impl Cluster {
    async fn new(n: u8, name: String) -> Cluster {
        let remote = remote(n);
        Cluster {
            remote,
            name,
            client: remote.client().await,
        }
    }

    fn secrets(&self, ns: &str) -> Api<Secret> {
        Api::namespaced(self.client.clone(), ns)
    }

    fn what(&self) -> String {
        format!("cluster {} (remote {})", self.name, self.remote.n)
    }

    /// Register it in `env`'s source namespace as Secret `cluster-<name>`
    /// with a fresh token of the shipped identity; the token, which must
    /// never reach the controller's log.
    async fn register(&self, env: &TestEnv) -> String {
        let token = self.remote.identity_token();
        register(
            &env.client,
            &env.source_ns,
            &self.registration(),
            &self.name,
            &self.remote.kubeconfig_text(&token),
        )
        .await;
        token
    }

    fn registration(&self) -> String {
        format!("cluster-{}", self.name)
    }

    /// `cluster="<name>"`: the metric filter for this cluster.
    fn label(&self) -> String {
        format!("cluster=\"{}\"", self.name)
    }
}

/// Source Secret `name` targeting `<id>-t*` (minus `<id>-t9`), with `extra`
/// annotations.
fn source(env: &TestEnv, name: &str, data: &[(&str, &str)], extra: &[(&str, &str)]) -> Secret {
    let mut s = source_secret(name, data);
    s.metadata.annotations = Some(annotations(env, extra));
    s
}

fn annotations(env: &TestEnv, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut a = map(&[
        (NAMESPACES, &format!("{}-t*", env.id)),
        (EXCLUDE_NAMESPACES, &format!("{}-t9", env.id)),
    ]);
    a.extend(map(extra));
    a
}

/// Merge `data` into source `name`'s data (`stringData`).
async fn set_values(env: &TestEnv, name: &str, data: &[(&str, &str)]) {
    let patch = json!({"stringData": map(data)});
    env.sources()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap_or_else(|e| panic!("update source {name}: {e}"));
}

/// What is wrong with `meta` as the marks of a remote copy of `env`'s
/// source `name`, if anything.
fn check_marks(meta: &ObjectMeta, env: &TestEnv, name: &str) -> Result<(), String> {
    let label = meta.labels.as_ref().and_then(|l| l.get(MANAGED_KEY));
    if label.map(String::as_str) != Some(MANAGED_VALUE) {
        return Err(format!("label {MANAGED_KEY}: {label:?}"));
    }
    let a = meta.annotations.clone().unwrap_or_default();
    let want = format!("{}/{name}", env.source_ns);
    if a.get(SOURCE_ANNOTATION) != Some(&want) {
        return Err(format!(
            "annotation {SOURCE_ANNOTATION}: {:?}, want {want}",
            a.get(SOURCE_ANNOTATION)
        ));
    }
    if a.get(SOURCE_CLUSTER_ANNOTATION) != Some(&home(env)) {
        return Err(format!(
            "annotation {SOURCE_CLUSTER_ANNOTATION}: {:?}, want {}",
            a.get(SOURCE_CLUSTER_ANNOTATION),
            home(env)
        ));
    }
    Ok(())
}

/// Wait until Secret `ns/name` in `c` is a copy of source `name` holding
/// exactly `data`, with the marks of a remote copy; the copy.
async fn await_remote(
    c: &Cluster,
    env: &TestEnv,
    ns: &str,
    name: &str,
    data: &[(&str, &str)],
    timeout: Duration,
) -> Secret {
    let want = data_map(data);
    let api = c.secrets(ns);
    until(
        &format!("{}: copy {ns}/{name} holding {data:?}", c.what()),
        timeout,
        || async {
            let s = api
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no copy")?;
            let got = s.data.clone().unwrap_or_default();
            if got != want {
                let text: BTreeMap<_, _> = got
                    .iter()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                    .collect();
                return Err(format!("data {text:?}"));
            }
            check_marks(&s.metadata, env, name)?;
            Ok(s)
        },
    )
    .await
}

/// [`await_remote`] in each of `namespaces`.
async fn await_remote_all(
    c: &Cluster,
    env: &TestEnv,
    namespaces: &[String],
    name: &str,
    data: &[(&str, &str)],
    timeout: Duration,
) -> Vec<Secret> {
    let mut out = Vec::new();
    for ns in namespaces {
        out.push(await_remote(c, env, ns, name, data, timeout).await);
    }
    out
}

/// Every copy of one of `env`'s sources in `client`'s cluster, Secrets and
/// ConfigMaps, as `(kind, namespace, name)`.
async fn copies_of(client: &kube::Client, env: &TestEnv) -> BTreeSet<(String, String, String)> {
    let prefix = format!("{}/", env.source_ns);
    let lp = ListParams::default().labels(MANAGED_SELECTOR);
    let mut metas = Vec::new();
    for m in Api::<Secret>::all(client.clone())
        .list_metadata(&lp)
        .await
        .expect("list Secret copies")
        .items
    {
        metas.push(("Secret", m.metadata));
    }
    for m in Api::<ConfigMap>::all(client.clone())
        .list_metadata(&lp)
        .await
        .expect("list ConfigMap copies")
        .items
    {
        metas.push(("ConfigMap", m.metadata));
    }
    metas
        .into_iter()
        .filter(|(_, m)| {
            m.annotations
                .as_ref()
                .and_then(|a| a.get(SOURCE_ANNOTATION))
                .is_some_and(|s| s.starts_with(&prefix))
        })
        .map(|(kind, m)| {
            (
                kind.to_string(),
                m.namespace.unwrap_or_default(),
                m.name.unwrap_or_default(),
            )
        })
        .collect()
}

/// `(kind, ns, name)` for every namespace × name.
fn expect(kind: &str, namespaces: &[String], names: &[&str]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for ns in namespaces {
        for name in names {
            out.insert((kind.to_string(), ns.clone(), name.to_string()));
        }
    }
    out
}

/// Wait until the copies of `env`'s sources in `client`'s cluster are
/// exactly `want` (nothing missing, nothing more).
async fn await_exactly(
    what: &str,
    client: &kube::Client,
    env: &TestEnv,
    want: &BTreeSet<(String, String, String)>,
) {
    until(&format!("{what}: exactly {want:?}"), WAIT, || async {
        let got = copies_of(client, env).await;
        if &got == want {
            Ok(())
        } else {
            Err(format!(
                "missing {:?}, more {:?}",
                want.difference(&got).collect::<Vec<_>>(),
                got.difference(want).collect::<Vec<_>>()
            ))
        }
    })
    .await;
}

/// `(uid, resourceVersion)`: a copy nobody wrote to since keeps both.
fn version(s: &Secret) -> (Option<String>, Option<String>) {
    (s.metadata.uid.clone(), s.metadata.resource_version.clone())
}

/// The settings this file's controllers run with, `status` included:
/// `CLUSTER_NAME=<id>-home` and `EXCLUDE_NAMESPACE_LABEL`.
fn settings(env: &TestEnv) -> [(&'static str, String); 2] {
    [
        ("CLUSTER_NAME", home(env)),
        ("EXCLUDE_NAMESPACE_LABEL", EXCLUDE_KEY.to_string()),
    ]
}

/// Start the controller for `env` ([`settings`], debug logs) with `extra`,
/// and wait until ready.
async fn start(env: &TestEnv, extra: &[(&str, &str)]) -> Daemon {
    let settings = settings(env);
    let mut vars: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    vars.push(("DEBUG", "true"));
    vars.extend_from_slice(extra);
    let mut daemon = Daemon::start(&env.source_ns, &vars);
    daemon.keep_log = std::env::var_os("E2E_REMOTE_KEEP_LOGS").is_some();
    if daemon.keep_log {
        eprintln!("controller log: {}", daemon.log.display());
    }
    daemon.await_ready().await;
    daemon
}

/// Prints the end of a controller's log when the test fails. Declare it
/// after the [`Daemon`] (it then drops first, while the log is still there).
struct LogOnPanic(PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!(
                "---- controller log {} (last 200 lines):\n{}",
                self.0.display(),
                tail(&log, 200)
            );
        }
    }
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The whole log, for [`stop`]'s `Forbidden` check.
const WHOLE_LOG: std::ops::Range<usize> = 0..usize::MAX;

/// SIGTERM: exit 0; no registration token in the log; and no `Forbidden` in
/// the parts of the log (byte ranges) in `rbac_checked`: the shipped
/// identity was enough. (Left out: where a test registers an identity a
/// cluster refuses, and a kube-apiserver's own start, when its authorizer
/// refuses everyone until its caches have synced.)
fn stop(daemon: &mut Daemon, tokens: &[String], rbac_checked: &[std::ops::Range<usize>]) {
    let status = daemon.stop();
    let log = daemon.logs();
    assert!(
        status.success(),
        "controller exited with {status}; log:\n{}",
        tail(&log, 200)
    );
    for t in tokens {
        assert!(
            !log.contains(t.as_str()),
            "a registration's token appears in the controller log"
        );
    }
    for range in rbac_checked {
        let part = &log[range.start.min(log.len())..range.end.min(log.len())];
        let denied: Vec<&str> = part.lines().filter(|l| l.contains("Forbidden")).collect();
        assert!(
            denied.is_empty(),
            "the remote identity was refused something:\n{}",
            denied.join("\n")
        );
    }
}

/// Wait until `/readyz` answers 200 with a body that does (`present`) or
/// does not mention `text`; the body.
async fn await_readyz(daemon: &Daemon, text: &str, present: bool) -> String {
    until(
        &format!(
            "/readyz 200, body with{} {text:?}",
            if present { "" } else { "out" }
        ),
        WAIT,
        || async {
            match daemon.readyz().await {
                Some((200, body)) if body.contains(text) == present => Ok(body),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Wait until `/readyz` answers 200 with a body containing every one of
/// `parts`; the body.
async fn await_readyz_all(daemon: &Daemon, parts: &[&str]) -> String {
    until(
        &format!("/readyz 200, body with {parts:?}"),
        WAIT,
        || async {
            match daemon.readyz().await {
                Some((200, body)) if parts.iter().all(|p| body.contains(p)) => Ok(body),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// Wait until metric `name` with `filters` sums to `want`.
async fn await_metric(daemon: &Daemon, name: &str, filters: &[&str], want: f64) {
    until(&format!("{name}{filters:?} = {want}"), WAIT, || async {
        let text = daemon.metrics().await;
        let got = sum_metric(&text, name, filters);
        if got == want {
            Ok(())
        } else {
            let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
            Err(format!("{got}; samples: {lines:?}"))
        }
    })
    .await;
}

/// Run `push-to-k8s ARGS` with the environment of a Deployment of the
/// controller (NAMESPACE, the local KUBECONFIG and the same [`settings`]:
/// without them `status` would judge the remote copies by another stamp and
/// other namespaces): exit code and stdout + stderr.
fn cli(args: &[&str], env: &TestEnv) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_push-to-k8s"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("KUBECONFIG", &control_plane().kubeconfig)
        .env("NAMESPACE", &env.source_ns)
        .envs(settings(env))
        .stdin(Stdio::null())
        .output()
        .expect("run push-to-k8s");
    (
        out.status.code().expect("an exit status, not a signal"),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Wait until `name` in the source namespace has an Event `reason` of
/// `type_` whose text contains every one of `parts`; its text.
async fn await_event(
    env: &TestEnv,
    name: &str,
    reason: &str,
    type_: &str,
    parts: &[&str],
) -> String {
    until(
        &format!("a {type_} Event {reason} on {name} saying {parts:?}"),
        WAIT,
        || async {
            let events = env.events_on(name, reason).await;
            events
                .iter()
                .find(|(t, text)| t == type_ && parts.iter().all(|p| text.contains(p)))
                .map(|(_, text)| text.clone())
                .ok_or(format!("{events:?}"))
        },
    )
    .await
}

/// Wait until `push-to-k8s status` exits `code` and prints a line
/// containing every one of `parts` (none: any output); its output.
async fn await_status(env: &TestEnv, code: i32, parts: &[&str]) -> String {
    until(
        &format!("`push-to-k8s status` exiting {code} with a line saying {parts:?}"),
        WAIT,
        || async {
            let (got, out) = cli(&["status"], env);
            let line = parts.is_empty() || out.lines().any(|l| parts.iter().all(|p| l.contains(p)));
            if got == code && line {
                Ok(out)
            } else {
                Err(format!("exit {got}:\n{out}"))
            }
        },
    )
    .await
}

/// `<id>-<suffix>` for each suffix.
fn names(env: &TestEnv, suffixes: &[&str]) -> Vec<String> {
    suffixes.iter().map(|s| format!("{}-{s}", env.id)).collect()
}

// ---------------------------------------------------------------- item 1

/// Two registered clusters, `<id>-a` (remote 1) and `<id>-b` (remote 2).
/// Every source targets `<id>-t*` minus `<id>-t9` in every cluster it
/// reaches. `all` (`*`, minus key `skip`), `one` (`<id>-a` by name), `glob`
/// (`*-b`), `both` (`<id>-b,<id>-a`) and the ConfigMap `cm` (`*`) reach
/// exactly the eligible namespaces of the clusters they choose: not
/// `<id>-t2` (exclude label), `<id>-x0` (not targeted) or `<id>-t9`
/// (excluded by annotation). `local` (no annotation) stays in the local
/// cluster, where every source is copied as ever. Both clusters are up,
/// their writes counted per cluster, and `status` finds all in sync.
#[tokio::test]
async fn a_source_reaches_the_clusters_it_names_and_one_without_the_annotation_stays_local() {
    let _serial = serial();
    let env = TestEnv::new("rc-reach", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let remote_ns = RemoteNamespaces::new(&env.id);
    let a = Cluster::new(1, format!("{}-a", env.id)).await;
    let b = Cluster::new(2, format!("{}-b", env.id)).await;
    for ns in names(&env, &["t0", "t1", "x0", "t9"]) {
        remote_ns.create(a.remote, &ns, &[]).await;
    }
    remote_ns
        .create(a.remote, &format!("{}-t2", env.id), &[(EXCLUDE_KEY, "yes")])
        .await;
    for ns in names(&env, &["t0", "t5", "t9"]) {
        remote_ns.create(b.remote, &ns, &[]).await;
    }
    let tokens = vec![a.register(&env).await, b.register(&env).await];

    let [all, one, glob, both, local, cm] =
        ["all", "one", "glob", "both", "local", "cm"].map(|s| format!("{}-{s}", env.id));
    let data = [("a", "1"), ("b", "2")];
    env.add_source(&source(
        &env,
        &all,
        &[("a", "1"), ("b", "2"), ("skip", "3")],
        &[(CLUSTERS_ANNOTATION, "*"), (EXCLUDE_KEYS, "skip")],
    ))
    .await;
    env.add_source(&source(
        &env,
        &one,
        &data,
        &[(CLUSTERS_ANNOTATION, &a.name)],
    ))
    .await;
    env.add_source(&source(&env, &glob, &data, &[(CLUSTERS_ANNOTATION, "*-b")]))
        .await;
    let both_clusters = format!("{},{}", b.name, a.name);
    env.add_source(&source(
        &env,
        &both,
        &data,
        &[(CLUSTERS_ANNOTATION, &both_clusters)],
    ))
    .await;
    env.add_source(&source(&env, &local, &data, &[])).await;
    let config_map = ConfigMap {
        metadata: ObjectMeta {
            name: Some(cm.clone()),
            labels: Some(map(&[(SOURCE_SELECTOR_KEY, "source")])),
            annotations: Some(annotations(&env, &[(CLUSTERS_ANNOTATION, "*")])),
            ..Default::default()
        },
        data: Some(map(&[("setting", "on")])),
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(env.client.clone(), &env.source_ns)
        .create(&PostParams::default(), &config_map)
        .await
        .expect("create the ConfigMap source");

    let mut daemon = start(&env, &[]).await;
    let _log = LogOnPanic(daemon.log.clone());

    // Local: every source, as ever.
    let secrets = [&all, &one, &glob, &both, &local].map(String::as_str);
    let mut want = expect("Secret", &env.targets, &secrets);
    want.extend(expect("ConfigMap", &env.targets, &[&cm]));
    await_exactly("local cluster", &env.client, &env, &want).await;
    env.await_copies(&env.targets, &all, &data).await;

    // Remote 1 (`<id>-a`): all, one, both and cm in t0 and t1 only.
    let a_ns = names(&env, &["t0", "t1"]);
    let mut want = expect("Secret", &a_ns, &[&all, &one, &both]);
    want.extend(expect("ConfigMap", &a_ns, &[&cm]));
    await_exactly(&a.what(), &a.client, &env, &want).await;
    // Remote 2 (`<id>-b`): all, glob, both and cm in t0 and t5 only.
    let b_ns = names(&env, &["t0", "t5"]);
    let mut want = expect("Secret", &b_ns, &[&all, &glob, &both]);
    want.extend(expect("ConfigMap", &b_ns, &[&cm]));
    await_exactly(&b.what(), &b.client, &env, &want).await;

    // Each remote copy is the local copy plus the source cluster's name.
    for (c, namespaces, mine) in [(&a, &a_ns, &one), (&b, &b_ns, &glob)] {
        await_remote_all(c, &env, namespaces, &all, &data, WAIT).await;
        await_remote_all(c, &env, namespaces, mine, &data, WAIT).await;
        await_remote_all(c, &env, namespaces, &both, &data, WAIT).await;
        for ns in namespaces.iter() {
            let here = env.copy(&env.targets[0], &all).await.expect("local copy");
            let there = c.secrets(ns).get(&all).await.expect("remote copy");
            assert_eq!(there.type_, here.type_, "{}: type of {ns}/{all}", c.what());
            assert_eq!(
                there.metadata.labels,
                here.metadata.labels,
                "{}: labels of {ns}/{all}",
                c.what()
            );
            let mut local_annotations = here.metadata.annotations.clone().unwrap_or_default();
            local_annotations.insert(SOURCE_CLUSTER_ANNOTATION.into(), home(&env));
            assert_eq!(
                there.metadata.annotations.clone().unwrap_or_default(),
                local_annotations,
                "{}: annotations of {ns}/{all}",
                c.what()
            );
            let copy = Api::<ConfigMap>::namespaced(c.client.clone(), ns)
                .get(&cm)
                .await
                .expect("remote ConfigMap copy");
            check_marks(&copy.metadata, &env, &cm)
                .unwrap_or_else(|e| panic!("{}: ConfigMap {ns}/{cm}: {e}", c.what()));
            assert_eq!(copy.data, Some(map(&[("setting", "on")])));
        }
    }

    // Both clusters are up, and writes to them are counted per cluster.
    for c in [&a, &b] {
        await_metric(&daemon, CLUSTER_UP, &[&c.label()], 1.0).await;
        let text = daemon.metrics().await;
        let writes: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(CLUSTER_WRITES) && l.contains(&c.label()))
            .collect();
        // 4 copies per namespace, 2 namespaces, at least one write each.
        assert!(
            sum_metric(&text, CLUSTER_WRITES, &[&c.label()]) >= 8.0,
            "{}: {CLUSTER_WRITES}: {writes:?}",
            c.what()
        );
        for l in &writes {
            for label in ["kind=\"", "op=\"", "result=\""] {
                assert!(l.contains(label), "{l}: no {label}");
            }
        }
    }
    assert!(
        !daemon
            .metrics()
            .await
            .contains(&format!("cluster=\"{}\"", home(&env))),
        "the local cluster counts as a remote one"
    );
    // `status` reads both clusters and finds them in sync.
    let out = await_status(&env, 0, &[]).await;
    for c in [&a, &b] {
        assert!(
            out.contains(&c.name),
            "`status` does not name {}:\n{out}",
            c.what()
        );
    }

    stop(&mut daemon, &tokens, &[WHOLE_LOG]);
    env.teardown().await;
}

// ---------------------------------------------------------------- item 2

/// One registered cluster (remote 1). Source `db` (`*`) reaches `<id>-t0`
/// and `<id>-t1` there; `<id>-t3` holds a same-named Secret we did not
/// create, which is never touched. An update propagates; an edited copy and
/// a deleted copy come back; a new namespace gets a copy; a namespace that
/// opts out loses it; deleting the source deletes every copy but leaves the
/// unmanaged Secret as it was.
#[tokio::test]
async fn update_delete_drift_and_new_namespaces_work_in_a_remote_cluster() {
    let _serial = serial();
    let env = TestEnv::new("rc-life", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let remote_ns = RemoteNamespaces::new(&env.id);
    let a = Cluster::new(1, format!("{}-a", env.id)).await;
    let [t0, t1, t2, t3] = ["t0", "t1", "t2", "t3"].map(|s| format!("{}-{s}", env.id));
    for ns in [&t0, &t1, &t3] {
        remote_ns.create(a.remote, ns, &[]).await;
    }
    let db = format!("{}-db", env.id);
    let theirs = a
        .secrets(&t3)
        .create(
            &PostParams::default(),
            &Secret {
                metadata: ObjectMeta {
                    name: Some(db.clone()),
                    labels: Some(map(&[("owner", "someone-else")])),
                    ..Default::default()
                },
                data: Some(data_map(&[("mine", "theirs")])),
                ..Default::default()
            },
        )
        .await
        .expect("create the unmanaged Secret");
    let tokens = vec![a.register(&env).await];
    env.add_source(&source(
        &env,
        &db,
        &[("v", "1")],
        &[(CLUSTERS_ANNOTATION, "*")],
    ))
    .await;
    let mut daemon = start(&env, &[]).await;
    let _log = LogOnPanic(daemon.log.clone());
    let targets = vec![t0.clone(), t1.clone()];

    await_remote_all(&a, &env, &targets, &db, &[("v", "1")], WAIT).await;
    env.await_copies(&env.targets, &db, &[("v", "1")]).await;
    // The unmanaged Secret, found at the cluster's start, is named with its cluster.
    let in_cluster = format!("in cluster {}:", a.name);
    await_event(&env, &db, "Conflict", "Warning", &[&in_cluster, &t3]).await;

    // Update.
    set_values(&env, &db, &[("v", "2")]).await;
    await_remote_all(&a, &env, &targets, &db, &[("v", "2")], WAIT).await;
    env.await_copies(&env.targets, &db, &[("v", "2")]).await;

    // Drift: an edited copy is repaired ...
    let patch = json!({"stringData": {"v": "tampered", "extra": "x"}});
    a.secrets(&t0)
        .patch(&db, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("edit the remote copy");
    await_remote(&a, &env, &t0, &db, &[("v", "2")], WAIT).await;
    // ... and a deleted one comes back.
    let before = a.secrets(&t1).get(&db).await.expect("remote copy");
    a.secrets(&t1)
        .delete(&db, &DeleteParams::default())
        .await
        .expect("delete the remote copy");
    let again = await_remote(&a, &env, &t1, &db, &[("v", "2")], WAIT).await;
    assert_ne!(
        again.metadata.uid, before.metadata.uid,
        "the copy in {t1} was not deleted and created again"
    );

    // A new namespace gets a copy; one that opts out loses it.
    remote_ns.create(a.remote, &t2, &[]).await;
    await_remote(&a, &env, &t2, &db, &[("v", "2")], WAIT).await;
    let patch = json!({"metadata": {"labels": {OPT_OUT: "all"}}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(a.client.clone())
        .patch(&t2, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label the remote namespace");
    eventually(
        &format!("{}: the copy in {t2} to go after its opt-out", a.what()),
        WAIT,
        || async {
            a.secrets(&t2)
                .get_opt(&db)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;

    // Delete: every copy goes, in both clusters.
    env.delete_source(&db).await;
    await_exactly(&a.what(), &a.client, &env, &BTreeSet::new()).await;
    env.await_no_copies(&env.targets, &db).await;

    // The Secret we did not create was never written to.
    let now = a
        .secrets(&t3)
        .get(&db)
        .await
        .expect("the unmanaged Secret is still there");
    assert_eq!(
        version(&now),
        version(&theirs),
        "{}: the unmanaged {t3}/{db} was written to",
        a.what()
    );
    assert_eq!(now.data, theirs.data);

    stop(&mut daemon, &tokens, &[WHOLE_LOG]);
    env.teardown().await;
}

// ---------------------------------------------------------------- item 3

/// The controller starts with no registration: source `db` (naming cluster
/// `<id>-late`) is copied locally only. Registered at runtime with an
/// identity that cluster refuses (a ServiceAccount bound to nothing), the
/// cluster is reported as refusing (`/readyz` 200 naming it and saying
/// Forbidden, `push_to_k8s_cluster_up` 0, a `ClusterUnreachable` Warning on
/// the registration saying Forbidden) and the local copies still follow the
/// source. The registration changed to the shipped identity brings the
/// copies. Removing it leaves them exactly as they are (a `ClusterRemoved`
/// Event says so): later updates (and the source's deletion) no longer
/// reach that cluster, and `status` says the cluster is no longer managed.
#[tokio::test]
async fn a_cluster_registered_at_runtime_gets_copies_and_unregistered_keeps_them_unmanaged() {
    let _serial = serial();
    let env = TestEnv::new("rc-reg", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let remote_ns = RemoteNamespaces::new(&env.id);
    let late = Cluster::new(2, format!("{}-late", env.id)).await;
    let targets = names(&env, &["t0", "t1"]);
    for ns in &targets {
        remote_ns.create(late.remote, ns, &[]).await;
    }
    let db = format!("{}-db", env.id);
    env.add_source(&source(
        &env,
        &db,
        &[("v", "1")],
        &[(CLUSTERS_ANNOTATION, &late.name)],
    ))
    .await;
    let mut daemon = start(&env, &[]).await;
    let _log = LogOnPanic(daemon.log.clone());
    env.await_copies(&env.targets, &db, &[("v", "1")]).await;
    assert_eq!(
        copies_of(&late.client, &env).await,
        BTreeSet::new(),
        "copies in a cluster nobody registered"
    );

    // Registered with an identity the cluster refuses.
    let nobody_ns = format!("{}-nobody", env.id);
    remote_ns.create(late.remote, &nobody_ns, &[]).await;
    let nobody = service_account(late.remote, &nobody_ns, "nobody").await;
    let mut tokens = vec![nobody.clone()];
    register(
        &env.client,
        &env.source_ns,
        &late.registration(),
        &late.name,
        &late.remote.kubeconfig_text(&nobody),
    )
    .await;
    await_metric(&daemon, CLUSTER_UP, &[&late.label()], 0.0).await;
    // Reported as refused, not merely as not listed yet: an operator must
    // tell a missing permission from a network problem.
    let body = await_readyz_all(&daemon, &[&format!("cluster {}", late.name), "Forbidden"]).await;
    eprintln!("/readyz with a refused registration: {}", body.trim());
    let text = await_event(
        &env,
        &late.registration(),
        "ClusterUnreachable",
        "Warning",
        &[&late.name, "Forbidden"],
    )
    .await;
    eprintln!("Event on the refused registration: {text}");
    set_values(&env, &db, &[("v", "2")]).await;
    env.await_copies(&env.targets, &db, &[("v", "2")]).await;

    // The registration changed to the shipped identity: the copies come.
    let token = late.remote.identity_token();
    tokens.push(token.clone());
    set_registration_kubeconfig(
        &env.client,
        &env.source_ns,
        &late.registration(),
        &late.remote.kubeconfig_text(&token),
    )
    .await;
    await_remote_all(&late, &env, &targets, &db, &[("v", "2")], WAIT).await;
    // From here on the shipped identity is the only one in use.
    let identity_only = daemon.logs().len()..usize::MAX;
    await_metric(&daemon, CLUSTER_UP, &[&late.label()], 1.0).await;
    await_readyz(&daemon, &format!("cluster {}", late.name), false).await;

    // Unregistered: the copies stay exactly as they are.
    let kept = await_remote_all(&late, &env, &targets, &db, &[("v", "2")], WAIT).await;
    unregister(&env.client, &env.source_ns, &late.registration()).await;
    await_event(
        &env,
        &late.registration(),
        "ClusterRemoved",
        "Normal",
        &[&late.name, "no longer managed"],
    )
    .await;
    set_values(&env, &db, &[("v", "3")]).await;
    env.await_copies(&env.targets, &db, &[("v", "3")]).await;
    let unchanged = || async {
        for old in &kept {
            let ns = old.metadata.namespace.as_deref().unwrap();
            let now = late
                .secrets(ns)
                .get_opt(&db)
                .await
                .expect("read the remote copy")
                .unwrap_or_else(|| panic!("{}: {ns}/{db} was deleted", late.what()));
            assert_eq!(
                version(&now),
                version(old),
                "{}: {ns}/{db} was written to after its registration was removed",
                late.what()
            );
            assert_eq!(now.data, old.data);
        }
    };
    // The local copies hold v3: the flush that wrote them is over. Watch a
    // while longer for a late write to the unregistered cluster.
    let watch_until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < watch_until {
        unchanged().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // `status` reports the cluster as no longer managed.
    let (code, out) = cli(&["status"], &env);
    let wanted = format!("cluster {}", late.name);
    assert!(
        out.lines()
            .any(|l| l.contains(&wanted) && l.contains("no longer managed")),
        "`push-to-k8s status` (exit {code}) has no line with {wanted:?} and \"no longer managed\":\n{out}"
    );
    eprintln!("`push-to-k8s status` (exit {code}):\n{out}");

    // Deleting the source removes the local copies only.
    env.delete_source(&db).await;
    env.await_no_copies(&env.targets, &db).await;
    let watch_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < watch_until {
        unchanged().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    stop(&mut daemon, &tokens, &[identity_only]);
    env.teardown().await;
}

/// ServiceAccount `ns/name` in `remote`, bound to nothing; a token of it.
async fn service_account(remote: &Remote, ns: &str, name: &str) -> String {
    Api::<ServiceAccount>::namespaced(remote.client().await, ns)
        .create(
            &PostParams::default(),
            &ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create ServiceAccount {ns}/{name}: {e}"));
    remote.token(ns, name)
}

// ---------------------------------------------------------------- item 4

/// Clusters `<id>-a` (remote 1, twelve target namespaces) and `<id>-b`
/// (remote 2), writes paced at 4 per second per API server so a
/// propagation to `<id>-a` takes about three seconds. An update, and
/// remote 1's kube-apiserver killed as soon as its first copy is written:
/// the local cluster and `<id>-b` converge, then converge again on the next
/// update and on a source created meanwhile; `/readyz` stays 200 and names
/// `<id>-a`; `push_to_k8s_cluster_up` is 0 for it and 1 for `<id>-b`; a
/// `ClusterUnreachable` Warning on its registration; `status` exits 1 and
/// calls it unreachable. Once the kube-apiserver is back, `<id>-a`
/// converges to the latest values and is up again (`ClusterReachable`), a
/// later update reaches all three clusters, and `status` exits 0.
#[tokio::test]
async fn a_stopped_remote_control_plane_holds_back_no_other_cluster_and_converges_when_back() {
    let _serial = serial();
    let env = TestEnv::new("rc-down", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let remote_ns = RemoteNamespaces::new(&env.id);
    let a = Cluster::new(1, format!("{}-a", env.id)).await;
    let b = Cluster::new(2, format!("{}-b", env.id)).await;
    // `<id>-t10` ... `<id>-t21`: targeted, and none is the excluded `<id>-t9`.
    let a_ns: Vec<String> = (10..22).map(|i| format!("{}-t{i}", env.id)).collect();
    for ns in &a_ns {
        remote_ns.create(a.remote, ns, &[]).await;
    }
    let b_ns = names(&env, &["t0", "t1"]);
    for ns in &b_ns {
        remote_ns.create(b.remote, ns, &[]).await;
    }
    let tokens = vec![a.register(&env).await, b.register(&env).await];
    let (db, late) = (format!("{}-db", env.id), format!("{}-late", env.id));
    env.add_source(&source(
        &env,
        &db,
        &[("v", "1")],
        &[(CLUSTERS_ANNOTATION, "*")],
    ))
    .await;
    let mut daemon = start(
        &env,
        &[
            ("SECRET_SYNC_RATE_LIMIT", "4"),
            ("SECRET_SYNC_RATE_BURST", "1"),
        ],
    )
    .await;
    let _log = LogOnPanic(daemon.log.clone());
    await_remote_all(&a, &env, &a_ns, &db, &[("v", "1")], WAIT).await;
    await_remote_all(&b, &env, &b_ns, &db, &[("v", "1")], WAIT).await;
    env.await_copies(&env.targets, &db, &[("v", "1")]).await;
    await_metric(&daemon, CLUSTER_UP, &[&a.label()], 1.0).await;
    await_metric(&daemon, CLUSTER_UP, &[&b.label()], 1.0).await;

    // Mid-propagation: kill remote 1's kube-apiserver at its first v2 copy.
    let _restore = RestoreRemote(a.remote);
    set_values(&env, &db, &[("v", "2")]).await;
    let written = until(
        &format!("{}: a first copy holding v2", a.what()),
        WAIT,
        || async {
            let mut n = 0;
            for ns in &a_ns {
                let s = a.secrets(ns).get(&db).await.map_err(|e| e.to_string())?;
                let v = s.data.unwrap_or_default().get("v").map(|v| v.0.clone());
                n += usize::from(v.as_deref() == Some(b"2".as_slice()));
            }
            if n > 0 { Ok(n) } else { Err("none yet".into()) }
        },
    )
    .await;
    let before_kill = daemon.logs().len();
    a.remote.kill_apiserver();
    eprintln!(
        "killed remote 1's kube-apiserver with {written} of {} copies at v2",
        a_ns.len()
    );
    let down = Instant::now();
    env.await_copies(&env.targets, &db, &[("v", "2")]).await;
    await_remote_all(&b, &env, &b_ns, &db, &[("v", "2")], WAIT).await;
    eprintln!(
        "local and {} hold v2 {:?} after {} went down",
        b.name,
        down.elapsed(),
        a.name
    );
    let body = await_readyz(&daemon, &format!("cluster {}", a.name), true).await;
    eprintln!("/readyz while {} is down: {}", a.name, body.trim());
    await_metric(&daemon, CLUSTER_UP, &[&a.label()], 0.0).await;
    await_event(
        &env,
        &a.registration(),
        "ClusterUnreachable",
        "Warning",
        &[&format!("cluster {}", a.name)],
    )
    .await;
    let out = await_status(&env, 1, &[&a.name, "unreachable"]).await;
    eprintln!("`push-to-k8s status` while {} is down:\n{out}", a.name);
    assert_eq!(
        daemon.metric_sum(CLUSTER_UP, &[&b.label()]).await,
        1.0,
        "{} is reported down with {}",
        b.what(),
        a.what()
    );

    // Still converging elsewhere: another update and a new source.
    set_values(&env, &db, &[("v", "3")]).await;
    env.add_source(&source(
        &env,
        &late,
        &[("v", "late")],
        &[(CLUSTERS_ANNOTATION, "*")],
    ))
    .await;
    env.await_copies(&env.targets, &db, &[("v", "3")]).await;
    env.await_copies(&env.targets, &late, &[("v", "late")])
        .await;
    await_remote_all(&b, &env, &b_ns, &db, &[("v", "3")], WAIT).await;
    await_remote_all(&b, &env, &b_ns, &late, &[("v", "late")], WAIT).await;
    assert!(matches!(daemon.readyz().await, Some((200, _))));
    assert!(matches!(daemon.healthz().await, Some((200, _))));

    // Back: it converges to the latest values.
    a.remote.start_apiserver();
    let up = Instant::now();
    await_remote_all(&a, &env, &a_ns, &db, &[("v", "3")], RETURN).await;
    await_remote_all(&a, &env, &a_ns, &late, &[("v", "late")], RETURN).await;
    eprintln!("{} converged {:?} after it returned", a.name, up.elapsed());
    await_metric(&daemon, CLUSTER_UP, &[&a.label()], 1.0).await;
    await_readyz(&daemon, &format!("cluster {}", a.name), false).await;
    await_event(
        &env,
        &a.registration(),
        "ClusterReachable",
        "Normal",
        &[&format!("cluster {}", a.name)],
    )
    .await;
    // A kube-apiserver refuses everyone while its authorizer's caches sync
    // at start, and the controller reports that until the cluster is served
    // again: from here on, a Forbidden is the identity's.
    let ready_again = daemon.logs().len();

    // And keeps following.
    set_values(&env, &db, &[("v", "4")]).await;
    await_remote_all(&a, &env, &a_ns, &db, &[("v", "4")], WAIT).await;
    await_remote_all(&b, &env, &b_ns, &db, &[("v", "4")], WAIT).await;
    env.await_copies(&env.targets, &db, &[("v", "4")]).await;
    assert!(
        daemon.metric_sum(CLUSTER_WRITES, &[&a.label()]).await > 0.0,
        "{CLUSTER_WRITES} counts no write to {}",
        a.name
    );
    await_status(&env, 0, &[]).await;

    stop(
        &mut daemon,
        &tokens,
        &[0..before_kill, ready_again..usize::MAX],
    );
    env.teardown().await;
}

// ---------------------------------------------------------------- item 5

/// One line of `kubectl auth can-i --list`: (resources, non-resource URLs,
/// resource names) and its verbs.
type Rules = BTreeMap<(String, String, String), BTreeSet<String>>;

/// Parse `kubectl auth can-i --list`'s table: a header, then per line a
/// resource (blank for non-resource URLs) and three bracketed lists
/// (non-resource URLs, resource names, verbs).
fn parse_can_i(table: &str) -> Rules {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.starts_with("Resources") && header.contains("Verbs"),
        "not a `kubectl auth can-i --list` table:\n{table}"
    );
    let mut rules = Rules::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let (resource, mut rest) = line
            .split_once('[')
            .map(|(r, rest)| (r.trim().to_string(), format!("[{rest}")))
            .unwrap_or_else(|| panic!("unexpected line: {line:?}"));
        let mut lists = Vec::new();
        while let Some(open) = rest.find('[') {
            let close = rest[open..]
                .find(']')
                .unwrap_or_else(|| panic!("unbalanced line: {line:?}"));
            lists.push(rest[open + 1..open + close].trim().to_string());
            rest = rest[open + close + 1..].to_string();
        }
        let [urls, names, verbs] = <[String; 3]>::try_from(lists)
            .unwrap_or_else(|l| panic!("not three lists ({l:?}) in {line:?}"));
        rules
            .entry((resource, urls, names))
            .or_default()
            .extend(verbs.split_whitespace().map(str::to_string));
    }
    rules
}

/// `kubectl auth can-i ARGS` in namespace `ns` as the identity of
/// `kubeconfig` (a file with it inline); stdout and whether it succeeded.
fn can_i(kubeconfig: &str, ns: &str, args: &[&str]) -> (bool, String) {
    let file = std::env::temp_dir().join(format!("{}.kubeconfig", unique("push-to-k8s-can-i")));
    std::fs::write(&file, kubeconfig).expect("write the kubeconfig");
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&file)
        .args(["auth", "can-i", "-n", ns])
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run kubectl auth can-i");
    let _ = std::fs::remove_file(&file);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// What the shipped ClusterRole grants, in `can-i --list`'s terms.
fn shipped() -> Rules {
    let all = [
        "create", "delete", "get", "list", "patch", "update", "watch",
    ];
    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let key = |r: &str| (r.to_string(), String::new(), String::new());
    Rules::from([
        (key("namespaces"), set(&["get", "list", "watch"])),
        (key("secrets"), set(&all)),
        (key("configmaps"), set(&all)),
    ])
}

/// The manifest holds exactly the identity and nothing else (no Role, no
/// other binding); the ClusterRole in each remote cluster is exactly the
/// shipped rules. `kubectl auth can-i --list` as the shipped identity, less
/// the same listing as a ServiceAccount bound to nothing (what every
/// authenticated user may do), is exactly those rules: nothing more, in
/// particular no Events and no Leases. Spot checks with single `can-i`
/// questions say the same, and the manifest's optional long-lived token is
/// the same identity.
#[tokio::test]
async fn the_remote_identity_can_do_exactly_what_the_shipped_cluster_role_grants() {
    let _serial = serial();
    let id = unique("rc-rbac");
    let remote_ns = RemoteNamespaces::new(&id);

    // The manifest: these five objects, nothing else.
    let r1 = remote(1);
    let json = r1.kubectl(&[
        "create",
        "--dry-run=client",
        "-o",
        "json",
        "-f",
        RBAC_MANIFEST,
    ]);
    let mut objects = BTreeSet::new();
    for doc in serde_json::Deserializer::from_str(&json).into_iter::<Value>() {
        let doc = doc.expect("kubectl's JSON");
        objects.insert((
            doc["kind"].as_str().unwrap_or_default().to_string(),
            doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            doc["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ));
    }
    let ns = REMOTE_IDENTITY.to_string();
    let want: BTreeSet<(String, String, String)> = [
        ("Namespace", "", REMOTE_IDENTITY),
        ("ServiceAccount", REMOTE_IDENTITY, REMOTE_IDENTITY),
        ("ClusterRole", "", REMOTE_IDENTITY),
        ("ClusterRoleBinding", "", REMOTE_IDENTITY),
        ("Secret", REMOTE_IDENTITY, "push-to-k8s-remote-token"),
        ("ValidatingAdmissionPolicy", "", REMOTE_IDENTITY),
        ("ValidatingAdmissionPolicyBinding", "", REMOTE_IDENTITY),
    ]
    .into_iter()
    .map(|(k, n, name)| (k.to_string(), n.to_string(), name.to_string()))
    .collect();
    assert_eq!(objects, want, "the objects of {RBAC_MANIFEST}");

    for n in [1, 2] {
        let r = remote(n);
        let client = r.client().await;

        // As applied: the ClusterRole's rules and the binding's subject.
        let role = Api::<ClusterRole>::all(client.clone())
            .get(REMOTE_IDENTITY)
            .await
            .expect("the shipped ClusterRole");
        let mut granted = Rules::new();
        for rule in role.rules.unwrap_or_default() {
            assert_eq!(
                rule.api_groups,
                Some(vec![String::new()]),
                "core group only"
            );
            assert!(
                rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
                "{rule:?}"
            );
            for res in rule.resources.unwrap_or_default() {
                granted
                    .entry((res, String::new(), String::new()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
        assert_eq!(granted, shipped(), "remote {n}: the ClusterRole's rules");
        let binding = Api::<ClusterRoleBinding>::all(client.clone())
            .get(REMOTE_IDENTITY)
            .await
            .expect("the shipped ClusterRoleBinding");
        assert_eq!(binding.role_ref.kind, "ClusterRole");
        assert_eq!(binding.role_ref.name, REMOTE_IDENTITY);
        let subjects: Vec<_> = binding
            .subjects
            .unwrap_or_default()
            .into_iter()
            .map(|s| (s.kind, s.namespace.unwrap_or_default(), s.name))
            .collect();
        assert_eq!(
            subjects,
            vec![("ServiceAccount".to_string(), ns.clone(), ns.clone())]
        );
        // The optional long-lived token, filled in by the token controller.
        let secrets = Api::<Secret>::namespaced(client.clone(), REMOTE_IDENTITY);
        let long_lived = until(
            "the token controller to fill in push-to-k8s-remote-token",
            WAIT,
            || async {
                let s = secrets
                    .get("push-to-k8s-remote-token")
                    .await
                    .map_err(|e| e.to_string())?;
                if s.type_.as_deref() != Some("kubernetes.io/service-account-token") {
                    return Err(format!("type {:?}", s.type_));
                }
                let token = s.data.unwrap_or_default().remove("token");
                let token = token.ok_or("no token yet")?;
                String::from_utf8(token.0).map_err(|e| e.to_string())
            },
        )
        .await;

        // The listings: as the shipped identity, and as nobody.
        let here = format!("{id}-r{n}");
        remote_ns.create(r, &here, &[]).await;
        let nobody = service_account(r, &here, "nobody").await;
        let identity = r.kubeconfig_text(&r.identity_token());
        let (ok, whoami) = {
            let file = std::env::temp_dir().join(format!("{}.kubeconfig", unique("p2k-whoami")));
            std::fs::write(&file, &identity).unwrap();
            let out = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&file)
                .args([
                    "auth",
                    "whoami",
                    "-o",
                    "jsonpath={.status.userInfo.username}",
                ])
                .stdin(Stdio::null())
                .output()
                .expect("kubectl auth whoami");
            let _ = std::fs::remove_file(&file);
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        assert!(ok, "kubectl auth whoami with the remote identity failed");
        assert_eq!(
            whoami,
            format!("system:serviceaccount:{REMOTE_IDENTITY}:{REMOTE_IDENTITY}"),
            "the inline kubeconfig authenticates as the shipped ServiceAccount"
        );
        let (ok, listing) = can_i(&identity, &here, &["--list"]);
        assert!(ok, "can-i --list as the shipped identity:\n{listing}");
        let (ok, baseline) = can_i(&r.kubeconfig_text(&nobody), &here, &["--list"]);
        assert!(ok, "can-i --list as nobody:\n{baseline}");
        eprintln!("remote {n}: `kubectl auth can-i --list` as {REMOTE_IDENTITY}:\n{listing}");
        let (mine, base) = (parse_can_i(&listing), parse_can_i(&baseline));
        assert!(
            base.keys().any(|(r, _, _)| r.starts_with("selfsubject")),
            "the baseline lists no selfsubject*review: is it a listing at all?\n{baseline}"
        );
        let mut beyond = Rules::new();
        for (key, verbs) in &mine {
            let extra: BTreeSet<String> = verbs
                .difference(base.get(key).unwrap_or(&BTreeSet::new()))
                .cloned()
                .collect();
            if !extra.is_empty() {
                beyond.insert(key.clone(), extra);
            }
        }
        for (key, verbs) in &base {
            assert!(
                mine.get(key).is_some_and(|m| m.is_superset(verbs)),
                "remote {n}: the identity may not do what everybody may: {key:?} {verbs:?}"
            );
        }
        assert_eq!(
            beyond,
            shipped(),
            "remote {n}: what the identity may do beyond every authenticated user"
        );
        // The long-lived token is the same identity.
        let (ok, long_listing) = can_i(&r.kubeconfig_text(&long_lived), &here, &["--list"]);
        assert!(
            ok,
            "can-i --list with the long-lived token:\n{long_listing}"
        );
        assert_eq!(
            parse_can_i(&long_listing),
            mine,
            "remote {n}: the long-lived token's rules"
        );

        // Issue 16, item 6: with RBAC alone the identity could create a
        // service-account-token Secret for any ServiceAccount (in
        // kube-system: cluster-admin). The shipped admission policy refuses
        // that, and any write in the cluster's own namespaces, to this
        // identity only; an ordinary copy is still accepted.
        let as_identity = {
            let kc = kube::config::Kubeconfig::from_yaml(&identity).expect("the kubeconfig");
            let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .expect("a config");
            kube::Client::try_from(cfg).expect("a client")
        };
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let secret = |name: &str, type_: &str, annotations: &[(&str, &str)]| Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(map(annotations)),
                ..Default::default()
            },
            type_: Some(type_.into()),
            ..Default::default()
        };
        let attempts = [
            (
                here.as_str(),
                secret(
                    "minted",
                    "kubernetes.io/service-account-token",
                    &[("kubernetes.io/service-account.name", "nobody")],
                ),
                Some("grants an identity"),
            ),
            (
                "kube-system",
                secret(
                    "minted",
                    "kubernetes.io/service-account-token",
                    &[("kubernetes.io/service-account.name", "namespace-controller")],
                ),
                Some("kube-system"),
            ),
            (
                "kube-system",
                secret(
                    "bootstrap-token-abcdef",
                    "bootstrap.kubernetes.io/token",
                    &[],
                ),
                Some("kube-system"),
            ),
            (
                "kube-system",
                secret("plain", "Opaque", &[]),
                Some("kube-system"),
            ),
            (here.as_str(), secret("plain", "Opaque", &[]), None),
        ];
        for (ns, s, refused) in attempts {
            let what = format!(
                "remote {n}: create {:?} Secret {ns}/{} as the identity",
                s.type_,
                s.metadata.name.as_deref().unwrap_or_default()
            );
            let api = Api::<Secret>::namespaced(as_identity.clone(), ns);
            let Some(fragment) = refused else {
                api.create(&dry_run, &s)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: refused: {e}"));
                continue;
            };
            // A policy just applied takes effect within seconds.
            let note = until(&format!("{what}: refused by the policy"), WAIT, || async {
                match api.create(&dry_run, &s).await {
                    Ok(_) => Err("accepted".to_string()),
                    Err(kube::Error::Api(e))
                        if e.message.contains(fragment)
                            && e.message.contains("push-to-k8s-remote") =>
                    {
                        Ok(e.message)
                    }
                    Err(e) => Err(format!("refused, but not by the shipped policy: {e}")),
                }
            })
            .await;
            eprintln!("{what}: {note}");
        }

        // Spot checks, both ways.
        for (args, want) in [
            (&["list", "secrets", "-A"][..], true),
            (&["patch", "configmaps"][..], true),
            (&["watch", "namespaces"][..], true),
            (&["create", "namespaces"][..], false),
            (&["delete", "namespaces"][..], false),
            (&["create", "events"][..], false),
            (&["create", "events.events.k8s.io"][..], false),
            (&["get", "leases.coordination.k8s.io"][..], false),
            (&["create", "leases.coordination.k8s.io"][..], false),
            (&["list", "pods"][..], false),
            (&["create", "serviceaccounts/token"][..], false),
            (&["deletecollection", "secrets"][..], false),
            (&["escalate", "clusterroles"][..], false),
        ] {
            let (yes, out) = can_i(&identity, &here, args);
            assert_eq!(
                yes,
                want,
                "remote {n}: `kubectl auth can-i {}` answered {}",
                args.join(" "),
                out.trim()
            );
        }
    }
}

// ---------------------------------------------------------------- secrecy

/// No Secret value, registration token or kubeconfig content reaches the
/// controller's log at trace level, or an Event: a value travels to a
/// registered cluster, a registration whose kubeconfig does not parse holds
/// a marker where the YAML library would quote it, and a registration whose
/// token the cluster refuses is reported.
#[tokio::test]
async fn no_value_token_or_kubeconfig_reaches_the_log_or_an_event_at_trace_level() {
    let _serial = serial();
    let env = TestEnv::new("rc-quiet", 1).await;
    let _cleanup = env.cleanup_on_panic();
    let remote_ns = RemoteNamespaces::new(&env.id);
    let a = Cluster::new(1, format!("{}-a", env.id)).await;
    let t0 = format!("{}-t0", env.id);
    remote_ns.create(a.remote, &t0, &[]).await;
    let token = a.register(&env).await;
    let marker = format!("k3y-{}-marker", env.id);
    let broken = format!("apiVersion: v1\nkind: Config\ncurrent-context: [{marker}]\n");
    let broken_name = format!("{}-broken", env.id);
    register(
        &env.client,
        &env.source_ns,
        "cluster-broken",
        &broken_name,
        &broken,
    )
    .await;
    let fake = format!("f4ke-{}-token", env.id);
    let refused_name = format!("{}-refused", env.id);
    // Another API server than `a`'s: one API server has one owner (issue 16
    // item 5), so a second registration of `a`'s would be refused before its
    // token is ever tried.
    let refused_kubeconfig = remote(2).kubeconfig_text(&fake);
    register(
        &env.client,
        &env.source_ns,
        "cluster-refused",
        &refused_name,
        &refused_kubeconfig,
    )
    .await;
    let value = format!("v4lue-{}-secret", env.id);
    let db = format!("{}-db", env.id);
    env.add_source(&source(
        &env,
        &db,
        &[("password", &value)],
        &[(CLUSTERS_ANNOTATION, "*")],
    ))
    .await;

    let mut daemon = start(&env, &[("RUST_LOG", "trace")]).await;
    let _log = LogOnPanic(daemon.log.clone());
    await_remote_all(
        &a,
        &env,
        std::slice::from_ref(&t0),
        &db,
        &[("password", &value)],
        WAIT,
    )
    .await;
    await_event(
        &env,
        "cluster-broken",
        "InvalidCluster",
        "Warning",
        &[&broken_name, "does not parse"],
    )
    .await;
    await_event(
        &env,
        "cluster-refused",
        "ClusterUnreachable",
        "Warning",
        &[&refused_name, "401"],
    )
    .await;
    let body = await_readyz(&daemon, &format!("cluster {refused_name} degraded"), true).await;

    let log = {
        stop(&mut daemon, &[token.clone(), fake.clone()], &[]);
        daemon.logs()
    };
    assert!(log.contains("TRACE"), "the log is at trace level");
    use k8s_openapi::api::events::v1::Event;
    let events: Vec<String> = Api::<Event>::namespaced(env.client.clone(), &env.source_ns)
        .list(&ListParams::default())
        .await
        .expect("list Events")
        .items
        .into_iter()
        .map(|e| {
            format!(
                "{} {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect();
    assert!(
        events.iter().any(|e| e.starts_with("InvalidCluster")),
        "{events:?}"
    );
    let said = format!("{log}\n{body}\n{}", events.join("\n"));
    let encoded = base64(value.as_bytes());
    for secret in [&value, &encoded, &token, &fake, &marker] {
        assert!(
            !said.contains(secret.as_str()),
            "a value, token or kubeconfig content was said: {}",
            &secret[..8.min(secret.len())]
        );
    }
}

// ---------------------------------------------------------------- issue 16

/// `n` seconds during which every copy in `kept` stays exactly as it was
/// (same uid, resourceVersion and data): nothing wrote to or deleted it.
async fn stays_unchanged(c: &Cluster, kept: &[Secret], secs: u64, why: &str) {
    let watch_until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < watch_until {
        for old in kept {
            let ns = old.metadata.namespace.as_deref().unwrap();
            let name = old.metadata.name.as_deref().unwrap();
            let now = c
                .secrets(ns)
                .get_opt(name)
                .await
                .expect("read the remote copy")
                .unwrap_or_else(|| panic!("{}: {ns}/{name} was deleted ({why})", c.what()));
            assert_eq!(
                version(&now),
                version(old),
                "{}: {ns}/{name} was written to ({why})",
                c.what()
            );
            assert_eq!(now.data, old.data);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Issue 16, item 5: one remote API server registered under two names
/// (`<id>-a` with its URL, `<id>-b` by `localhost` instead of `127.0.0.1`,
/// so the URLs differ and only the server's own identity, the uid of its
/// kube-system namespace, tells them apart) would give it two owners, each
/// deleting the other's copies as strays. The second is refused (Warning
/// `InvalidCluster` naming the first, `cluster_up` 0, a `/readyz` note, the
/// refusal counted) and writes nothing; a third with the very same URL is
/// refused at once. Removing the first registration hands the server to the
/// second: it is served from then on.
#[tokio::test]
async fn one_api_server_registered_under_two_names_is_served_once() {
    let _serial = serial();
    let env = TestEnv::new("rc-twice", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let remote_ns = RemoteNamespaces::new(&env.id);
    let a = Cluster::new(1, format!("{}-a", env.id)).await;
    let b = Cluster::new(1, format!("{}-b", env.id)).await;
    let c = Cluster::new(1, format!("{}-c", env.id)).await;
    let t0 = format!("{}-t0", env.id);
    remote_ns.create(a.remote, &t0, &[]).await;
    let (one, two) = (format!("{}-one", env.id), format!("{}-two", env.id));
    env.add_source(&source(
        &env,
        &one,
        &[("v", "1")],
        &[(CLUSTERS_ANNOTATION, &a.name)],
    ))
    .await;
    env.add_source(&source(
        &env,
        &two,
        &[("v", "1")],
        &[(CLUSTERS_ANNOTATION, &b.name)],
    ))
    .await;
    let mut tokens = vec![a.register(&env).await];
    let mut daemon = start(&env, &[]).await;
    let _log = LogOnPanic(daemon.log.clone());
    let kept = vec![await_remote(&a, &env, &t0, &one, &[("v", "1")], WAIT).await];
    await_metric(&daemon, CLUSTER_UP, &[&a.label()], 1.0).await;

    // The same server under another name and another URL.
    let token = b.remote.identity_token();
    tokens.push(token.clone());
    let by_localhost = b
        .remote
        .kubeconfig_text(&token)
        .replace("https://127.0.0.1:", "https://localhost:");
    assert!(
        by_localhost.contains("https://localhost:"),
        "{by_localhost}"
    );
    register(
        &env.client,
        &env.source_ns,
        &b.registration(),
        &b.name,
        &by_localhost,
    )
    .await;
    let text = await_event(
        &env,
        &b.registration(),
        "InvalidCluster",
        "Warning",
        &[&b.name, &format!("already served as cluster {}", a.name)],
    )
    .await;
    eprintln!("Event on the second registration: {text}");
    await_metric(&daemon, CLUSTER_UP, &[&b.label()], 0.0).await;
    await_readyz_all(
        &daemon,
        &[&format!("cluster {} degraded: not served", b.name)],
    )
    .await;
    // And the very same URL under a third name: refused at once.
    let token = c.remote.identity_token();
    tokens.push(token.clone());
    let same_url = c
        .remote
        .kubeconfig_text(&token)
        .replace(&c.remote.server, &format!("{}/", c.remote.server));
    register(
        &env.client,
        &env.source_ns,
        &c.registration(),
        &c.name,
        &same_url,
    )
    .await;
    await_event(
        &env,
        &c.registration(),
        "InvalidCluster",
        "Warning",
        &[
            &c.name,
            &format!("already registered as cluster {}", a.name),
        ],
    )
    .await;
    assert!(
        daemon
            .metric_sum("push_to_k8s_registrations_refused_total", &[])
            .await
            >= 2.0
    );
    // One owner: the first's copy stays as it is, the second's source
    // (which names only the refused name) gets nothing there.
    stays_unchanged(&a, &kept, 15, "a second registration of its server").await;
    assert!(
        a.secrets(&t0).get_opt(&two).await.unwrap().is_none(),
        "the refused registration wrote {t0}/{two}"
    );

    // The first goes: the server is the second's from now on.
    unregister(&env.client, &env.source_ns, &a.registration()).await;
    unregister(&env.client, &env.source_ns, &c.registration()).await;
    await_metric(&daemon, CLUSTER_UP, &[&b.label()], 1.0).await;
    await_remote(&b, &env, &t0, &two, &[("v", "1")], WAIT).await;

    stop(&mut daemon, &tokens, &[WHOLE_LOG]);
    env.teardown().await;
}

/// Issue 16, item 6: registration is no lever.
/// - A Secret that sorts first and registers a name already served (to
///   another API server, remote 2) does not take it over: it is refused
///   (Warning `InvalidCluster`), the running registration stays, and what
///   sources send to that name (`*` here) never reaches remote 2.
/// - A registration Secret that also carries the source label is never a
///   source: not copied into any namespace, and a Warning
///   `RegistrationNotSource` says so.
#[tokio::test]
async fn a_newcomer_cannot_take_a_cluster_name_and_a_registration_is_never_copied() {
    let _serial = serial();
    let env = TestEnv::new("rc-lever", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let remote_ns = RemoteNamespaces::new(&env.id);
    let a = Cluster::new(1, format!("{}-a", env.id)).await;
    let other = remote(2);
    let other_client = other.client().await;
    let t0 = format!("{}-t0", env.id);
    remote_ns.create(a.remote, &t0, &[]).await;
    remote_ns.create(other, &t0, &[]).await;
    let db = format!("{}-db", env.id);
    env.add_source(&source(
        &env,
        &db,
        &[("v", "1")],
        &[(CLUSTERS_ANNOTATION, "*")],
    ))
    .await;
    // The real registration sorts last.
    let token = a.remote.identity_token();
    let mut tokens = vec![token.clone()];
    register(
        &env.client,
        &env.source_ns,
        "zz-cluster",
        &a.name,
        &a.remote.kubeconfig_text(&token),
    )
    .await;
    let mut daemon = start(&env, &[]).await;
    let _log = LogOnPanic(daemon.log.clone());
    await_remote(&a, &env, &t0, &db, &[("v", "1")], WAIT).await;

    // A newcomer, first by name, for the same cluster name, to remote 2.
    let token = other.identity_token();
    tokens.push(token.clone());
    register(
        &env.client,
        &env.source_ns,
        "aa-cluster",
        &a.name,
        &other.kubeconfig_text(&token),
    )
    .await;
    await_event(
        &env,
        "aa-cluster",
        "InvalidCluster",
        "Warning",
        &[&a.name, "already registered by Secret zz-cluster"],
    )
    .await;
    set_values(&env, &db, &[("v", "2")]).await;
    await_remote(&a, &env, &t0, &db, &[("v", "2")], WAIT).await;
    env.await_copies(&env.targets, &db, &[("v", "2")]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        assert_eq!(
            copies_of(&other_client, &env).await,
            BTreeSet::new(),
            "the newcomer's API server received copies"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    await_metric(&daemon, CLUSTER_UP, &[&a.label()], 1.0).await;

    // A registration that also carries the source label (and targets this
    // test's namespaces, so a copy would land there).
    let token = other.identity_token();
    tokens.push(token.clone());
    let mut both = registration(
        "reg-source",
        &format!("{}-r", env.id),
        &other.kubeconfig_text(&token),
    );
    both.metadata
        .labels
        .get_or_insert_default()
        .insert(SOURCE_SELECTOR_KEY.into(), "source".into());
    both.metadata.annotations = Some(annotations(&env, &[]));
    env.sources()
        .create(&PostParams::default(), &both)
        .await
        .expect("create the registration with the source label");
    await_event(
        &env,
        "reg-source",
        "RegistrationNotSource",
        "Warning",
        &["never a source"],
    )
    .await;
    // A later source reaches the targets: the flush that would have copied
    // the registration is over.
    let after = format!("{}-after", env.id);
    env.add_source(&source(&env, &after, &[("v", "1")], &[]))
        .await;
    env.await_copies(&env.targets, &after, &[("v", "1")]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        for ns in &env.targets {
            assert!(
                env.copy(ns, "reg-source").await.is_none(),
                "the registration was copied into {ns}"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    stop(&mut daemon, &tokens, &[WHOLE_LOG]);
    env.teardown().await;
}

/// Issue 16, item 10: a remote API server that hangs (its kube-apiserver
/// SIGSTOPped: connections are accepted, nothing is answered) is reported
/// down within a bounded time (`cluster_up` 0, a `/readyz` note saying it
/// does not answer, a Warning `ClusterUnreachable`) while the local cluster
/// keeps converging; removing its registration while it hangs stops its
/// writes at once: after it thaws, the update made while it hung never
/// reaches it.
#[tokio::test]
async fn a_hung_remote_api_server_is_reported_down_and_unregistering_it_stops_its_writes() {
    let _serial = serial();
    let env = TestEnv::new("rc-hung", 1).await;
    let _on_panic = env.cleanup_on_panic();
    let remote_ns = RemoteNamespaces::new(&env.id);
    let a = Cluster::new(1, format!("{}-a", env.id)).await;
    let t0 = format!("{}-t0", env.id);
    remote_ns.create(a.remote, &t0, &[]).await;
    let db = format!("{}-db", env.id);
    env.add_source(&source(
        &env,
        &db,
        &[("v", "1")],
        &[(CLUSTERS_ANNOTATION, &a.name)],
    ))
    .await;
    let tokens = vec![a.register(&env).await];
    let mut daemon = start(&env, &[]).await;
    let _log = LogOnPanic(daemon.log.clone());
    let kept = vec![await_remote(&a, &env, &t0, &db, &[("v", "1")], WAIT).await];
    await_metric(&daemon, CLUSTER_UP, &[&a.label()], 1.0).await;

    let mut frozen = a.remote.freeze_apiserver();
    let hung = Instant::now();
    // Reported down within a bound: the probe's period and timeout (7 s)
    // and generous slack; not the minutes a watch or a request could wait.
    until(
        &format!("{CLUSTER_UP}{{{}}} 0 while its API server hangs", a.label()),
        Duration::from_secs(45),
        || async {
            let got = daemon.metric_sum(CLUSTER_UP, &[&a.label()]).await;
            if got == 0.0 {
                Ok(())
            } else {
                Err(format!("{got}"))
            }
        },
    )
    .await;
    eprintln!(
        "{} reported down {:?} after it hung",
        a.name,
        hung.elapsed()
    );
    let body = await_readyz_all(
        &daemon,
        &[&format!("cluster {} degraded", a.name), "did not answer"],
    )
    .await;
    eprintln!("/readyz while {} hangs: {}", a.name, body.trim());
    await_event(
        &env,
        &a.registration(),
        "ClusterUnreachable",
        "Warning",
        &[&a.name, "did not answer"],
    )
    .await;

    // An update while it hangs: the local cluster converges; then the
    // registration goes, still hung.
    for v in ["2", "3", "4"] {
        set_values(&env, &db, &[("v", v)]).await;
        env.await_copies(&env.targets, &db, &[("v", v)]).await;
    }
    assert!(matches!(daemon.readyz().await, Some((200, _))));
    unregister(&env.client, &env.source_ns, &a.registration()).await;
    await_event(
        &env,
        &a.registration(),
        "ClusterRemoved",
        "Normal",
        &[&a.name],
    )
    .await;
    await_metric(&daemon, "push_to_k8s_clusters", &[], 0.0).await;

    // Thawed: it answers again, and nothing of ours is written there.
    frozen.thaw();
    until("remote 1 answering again", WAIT, || async {
        a.secrets(&t0).get_opt(&db).await.map_err(|e| e.to_string())
    })
    .await;
    stays_unchanged(&a, &kept, 20, "its registration was removed while it hung").await;

    stop(&mut daemon, &tokens, &[WHOLE_LOG]);
    env.teardown().await;
}

/// Wait until `c` holds copy `ns/name` of rule `rule` with exactly `data`.
async fn await_rule_copy(c: &Cluster, ns: &str, name: &str, rule: &str, data: &[(&str, &str)]) {
    let want = data_map(data);
    let api = c.secrets(ns);
    until(
        &format!(
            "{}: copy {ns}/{name} of rule {rule} holding {:?}",
            c.what(),
            want.keys()
        ),
        WAIT,
        || async {
            let s = api
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("no copy")?;
            let marks = s.metadata.annotations.clone().unwrap_or_default();
            if marks.get("push-to-k8s.io/rule").map(String::as_str) != Some(rule) {
                return Err(format!("annotations {marks:?}"));
            }
            if s.data.clone().unwrap_or_default() != want {
                return Err("other data".into());
            }
            Ok(())
        },
    )
    .await
}

/// Issue 19: a PushRule's `spec.clusters`. The rule's source (in a
/// namespace of the local cluster other than the controller's) reaches the
/// namespaces it names in the registered cluster it names (registered in
/// the controller's namespace, as for labelled sources), as well as at
/// home; an update follows; deleting the rule deletes its copies in the
/// remote cluster too before its finalizer lets it go.
#[tokio::test]
async fn a_rules_source_reaches_the_clusters_it_names_and_its_deletion_deletes_them_there() {
    let _serial = serial();
    rules::install_crd();
    let env = TestEnv::new("rc-rule", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let remote_ns = RemoteNamespaces::new(&env.id);
    let a = Cluster::new(1, format!("{}-a", env.id)).await;
    let [t0, t1] = [0, 1].map(|i| env.targets[i].clone());
    for ns in [&t0, &t1] {
        remote_ns.create(a.remote, ns, &[]).await;
    }
    let tokens = vec![a.register(&env).await];
    let rule = format!("{}-rule", env.id);
    let _rules = rules::Rules(vec![rule.clone()]);
    let cert = Secret {
        metadata: ObjectMeta {
            name: Some("cert".into()),
            ..Default::default()
        },
        string_data: Some(map(&[("tls.crt", "one")])),
        ..Default::default()
    };
    env.secrets(&t1)
        .create(&PostParams::default(), &cert)
        .await
        .expect("create the rule's source");
    rules::apply_rule(
        &rule,
        json!({
            "source": {"kind": "Secret", "namespace": t1, "name": "cert"},
            "namespaces": [t0],
            "clusters": [a.name],
        }),
    );
    let mut daemon = start(&env, &[]).await;
    let _log = LogOnPanic(daemon.log.clone());

    await_rule_copy(&a, &t0, "cert", &rule, &[("tls.crt", "one")]).await;
    env.await_copies(std::slice::from_ref(&t0), "cert", &[("tls.crt", "one")])
        .await;
    rules::await_ready(&rule, "True", "Ready").await;

    env.secrets(&t1)
        .patch(
            "cert",
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"tls.crt": "two"}})),
        )
        .await
        .expect("update the rule's source");
    await_rule_copy(&a, &t0, "cert", &rule, &[("tls.crt", "two")]).await;

    // Deleting the rule deletes its copies, here and there, then the rule goes.
    rules::kubectl(&["delete", "pushrule", &rule, "--wait=false"], None);
    eventually("the rule's remote copy deleted", WAIT, || async {
        a.secrets(&t0)
            .get_opt("cert")
            .await
            .expect("read the remote copy")
            .is_none()
            .then_some(())
    })
    .await;
    eventually("the rule gone", WAIT, || async {
        rules::get_rule(&rule).is_none().then_some(())
    })
    .await;
    assert!(
        env.copy(&t0, "cert").await.is_none(),
        "the local copy deleted"
    );
    // The remote identity was refused nothing, all along.
    let whole_log = 0..usize::MAX;
    stop(&mut daemon, &tokens, std::slice::from_ref(&whole_log));
    env.teardown().await;
}
