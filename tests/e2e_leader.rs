//! Issue 9: two instances with leader election on a Lease, against the real
//! control plane. The witness that only the leader writes is the API
//! server's audit log (each instance runs under its own ServiceAccount), not
//! the controller's word.
//!
//! Settings: lease duration 6 s, renew deadline 4 s, retry period 1 s,
//! debounce 1 s.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const DURATION: u64 = 6;
const RENEW_DEADLINE: u64 = 4;
const DEBOUNCE: u64 = 1;
const WAIT: Duration = Duration::from_secs(60);

/// An instance as ServiceAccount `sa`, electing on this test's Lease.
fn instance(env: &TestEnv, sa: &str, server: Option<&str>) -> Daemon {
    instance_with(env, sa, server, &[])
}

/// [`instance`] with more (or overriding) settings.
fn instance_with(env: &TestEnv, sa: &str, server: Option<&str>, more: &[(&str, &str)]) -> Daemon {
    let kubeconfig = service_account_kubeconfig_via(&env.source_ns, sa, server);
    let mut settings = vec![
        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
        ("POD_NAME", sa),
        ("LEADER_ELECTION", "true"),
        ("LEASE_NAMESPACE", &env.source_ns),
        ("LEASE_DURATION_SECONDS", "6"),
        ("LEASE_RENEW_DEADLINE_SECONDS", "4"),
        ("LEASE_RETRY_PERIOD_SECONDS", "1"),
    ];
    settings.extend_from_slice(more);
    Daemon::start(&env.source_ns, &settings)
}

/// Wait until `/readyz` is 200 and says `role`.
async fn await_role(daemon: &Daemon, role: &str, timeout: Duration) {
    eventually(&format!("/readyz says {role}"), timeout, || async {
        match daemon.readyz().await {
            Some((200, body)) if body.contains(role) => Some(()),
            _ => None,
        }
    })
    .await;
}

/// Writes (create/update/patch/delete) to Secrets in `namespaces` recorded in
/// the audit log after byte `from`, as `(user, verb, namespace)`.
fn audited_writes(from: u64, namespaces: &[String]) -> Vec<(String, String, String)> {
    let text = std::fs::read(audit_log()).expect("the audit log");
    let text = String::from_utf8_lossy(&text[from as usize..]).to_string();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter(|e| e["objectRef"]["resource"] == "secrets")
        .filter_map(|e| {
            let ns = e["objectRef"]["namespace"].as_str()?.to_string();
            namespaces.contains(&ns).then(|| {
                (
                    e["user"]["username"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    e["verb"].as_str().unwrap_or_default().to_string(),
                    ns,
                )
            })
        })
        .collect()
}

fn audit_offset() -> u64 {
    std::fs::metadata(audit_log()).map(|m| m.len()).unwrap_or(0)
}

fn user(env: &TestEnv, sa: &str) -> String {
    format!("system:serviceaccount:{}:{sa}", env.source_ns)
}

async fn change(env: &TestEnv, name: &str, value: &str) {
    env.sources()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"stringData": {"k": value}})),
        )
        .await
        .expect("patch the source");
}

/// 1. Only the leader writes (the audit log says so), and the standby's
/// `/readyz` and metrics say standby.
#[tokio::test]
async fn only_the_leader_writes_and_the_standby_says_so() {
    let _serial = serial();
    assert!(
        audit_log().exists(),
        "the control plane has no audit log: cp.sh down && cp.sh up"
    );
    let env = TestEnv::new("lead-one", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let _role = DeleteRole(grant_instances(&env, &["leader-a", "leader-b"], ""));
    let name = format!("{}-db", env.id);
    env.create_source(&name, &[("k", "v1")]).await;

    let mut a = instance(&env, "leader-a", None);
    a.await_ready().await;
    await_role(&a, "leader", WAIT).await;
    let mut b = instance(&env, "leader-b", None);
    b.await_ready().await;
    await_role(&b, "standby", WAIT).await;
    assert_eq!(b.metric_sum("push_to_k8s_leader", &[]).await, 0.0);
    assert_eq!(a.metric_sum("push_to_k8s_leader", &[]).await, 1.0);

    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;
    let from = audit_offset();
    change(&env, &name, "v2").await;
    env.await_copies(&env.targets, &name, &[("k", "v2")]).await;
    // Give a late write from the standby every chance to show up.
    tokio::time::sleep(Duration::from_secs(DEBOUNCE + 2)).await;
    let writes = audited_writes(from, &env.targets);
    assert!(
        writes.len() >= env.targets.len(),
        "the audit log shows the update: {writes:?}"
    );
    assert!(
        writes.iter().all(|(u, _, _)| *u == user(&env, "leader-a")),
        "only the leader writes: {writes:?}"
    );
    assert_eq!(
        b.metric_sum("push_to_k8s_writes_total", &[]).await,
        0.0,
        "and the standby counts none"
    );
    a.stop();
    b.stop();
    env.teardown().await;
}

/// 2. The leader killed with SIGKILL: the standby converges a change made
/// meanwhile within lease duration + debounce + 5 s. The leader stopped with
/// SIGTERM: takeover within debounce + 5 s. No conflicts left behind.
#[tokio::test]
async fn the_standby_takes_over_when_the_leader_dies_or_stops() {
    let _serial = serial();
    let env = TestEnv::new("lead-two", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let _role = DeleteRole(grant_instances(&env, &["leader-a", "leader-b"], ""));
    let name = format!("{}-db", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let mut a = instance(&env, "leader-a", None);
    a.await_ready().await;
    await_role(&a, "leader", WAIT).await;
    let mut b = instance(&env, "leader-b", None);
    b.await_ready().await;
    await_role(&b, "standby", WAIT).await;
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;

    // SIGKILL: the Lease is not released; the standby waits it out.
    a.kill();
    let t0 = Instant::now();
    change(&env, &name, "v2").await;
    env.await_copies(&env.targets, &name, &[("k", "v2")]).await;
    let took = t0.elapsed();
    let bound = Duration::from_secs(DURATION + DEBOUNCE + 5);
    assert!(
        took <= bound,
        "after SIGKILL: converged in {took:?}, bound {bound:?}"
    );
    await_role(&b, "leader", WAIT).await;

    // SIGTERM: the leader releases the Lease; the standby takes it at once.
    let mut a = instance(&env, "leader-a", None);
    a.await_ready().await;
    await_role(&a, "standby", WAIT).await;
    let status = b.stop();
    assert!(status.success(), "{status}");
    let t1 = Instant::now();
    change(&env, &name, "v3").await;
    env.await_copies(&env.targets, &name, &[("k", "v3")]).await;
    let took = t1.elapsed();
    let bound = Duration::from_secs(DEBOUNCE + 5);
    assert!(
        took <= bound,
        "after SIGTERM: converged in {took:?}, bound {bound:?}"
    );
    await_role(&a, "leader", WAIT).await;
    assert_eq!(a.metric_sum("push_to_k8s_conflicts_total", &[]).await, 0.0);
    assert_eq!(
        a.metric_sum("push_to_k8s_writes_total", &["result=\"error\""])
            .await,
        0.0,
        "no write conflicts left behind"
    );
    a.stop();
    env.teardown().await;
}

/// A TCP proxy in front of the API server for one instance: `cut` drops
/// every connection and refuses new ones until `restore`.
struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                c.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                }));
            }
        });
        Proxy {
            port,
            open,
            conns,
            accept,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// 3. A leader that loses the API server long enough to miss its renewal
/// stops writing: it stands down before its Lease can expire elsewhere, and
/// when it is back it writes nothing (the audit log).
#[tokio::test]
async fn a_leader_that_cannot_renew_stops_writing() {
    let _serial = serial();
    let env = TestEnv::new("lead-cut", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let _role = DeleteRole(grant_instances(&env, &["leader-a", "leader-b"], ""));
    let name = format!("{}-db", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let apiserver: u16 = std::fs::read_to_string(
        control_plane()
            .kubeconfig
            .parent()
            .unwrap()
            .join("apiserver.port"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let proxy = Proxy::start(apiserver).await;
    let via = format!("https://127.0.0.1:{}", proxy.port);
    let mut a = instance(&env, "leader-a", Some(&via));
    a.await_ready().await;
    await_role(&a, "leader", WAIT).await;
    let mut b = instance(&env, "leader-b", None);
    b.await_ready().await;
    await_role(&b, "standby", WAIT).await;
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;

    // Cut the leader off. It must stand down within its renew deadline (its
    // own endpoints still answer), before the standby may take over.
    proxy.cut();
    let cut = Instant::now();
    eventually("the cut-off leader stands down", WAIT, || async {
        (a.metric_sum("push_to_k8s_leader", &[]).await == 0.0).then_some(())
    })
    .await;
    let stood_down = cut.elapsed();
    assert!(
        stood_down <= Duration::from_secs(RENEW_DEADLINE + 2),
        "stood down {stood_down:?} after the cut (renew deadline {RENEW_DEADLINE} s)"
    );
    await_role(&b, "leader", WAIT).await;
    let took_over = cut.elapsed();
    assert!(
        stood_down < took_over,
        "the old leader stopped ({stood_down:?}) before the new one started ({took_over:?})"
    );

    // From here on, any write by the old leader would be a split brain.
    let from = audit_offset();
    change(&env, &name, "v2").await;
    env.await_copies(&env.targets, &name, &[("k", "v2")]).await;
    proxy.restore();
    await_role(&a, "standby", WAIT).await;
    change(&env, &name, "v3").await;
    env.await_copies(&env.targets, &name, &[("k", "v3")]).await;
    tokio::time::sleep(Duration::from_secs(DEBOUNCE + 2)).await;
    let writes = audited_writes(from, &env.targets);
    assert!(
        !writes.is_empty(),
        "the new leader's writes are in the audit log"
    );
    let stale: Vec<_> = writes
        .iter()
        .filter(|(u, _, _)| *u == user(&env, "leader-a"))
        .collect();
    assert!(
        stale.is_empty(),
        "the old leader wrote after its deadline: {stale:?}"
    );
    a.stop();
    b.stop();
    drop(proxy);
    env.teardown().await;
}

/// An HTTP proxy in front of the API server for one instance, which talks
/// plain HTTP to it (loopback); the proxy forwards every request over TLS
/// with the instance's own credentials (its `Authorization` header, no
/// identity of the proxy's), so the audit log names the instance. Told to
/// `hold`, it leaves every Lease request unanswered and passes everything
/// else (watches stream through).
struct LeaseHold {
    port: u16,
    shared: Arc<HoldState>,
    serve: JoinHandle<()>,
}

#[derive(Default)]
struct HoldState {
    hold: AtomicBool,
    held: std::sync::atomic::AtomicUsize,
    /// When the last Lease write that succeeded reached the proxy: the
    /// instance sent it before, and the Lease changed after.
    last_renew: std::sync::Mutex<Option<(Instant, Timestamp)>>,
}

struct Upstream {
    client: kube::Client,
    state: Arc<HoldState>,
}

impl LeaseHold {
    async fn start() -> LeaseHold {
        let admin = kube::config::Kubeconfig::read_from(&control_plane().kubeconfig).unwrap();
        let mut cfg = kube::Config::from_custom_kubeconfig(admin, &Default::default())
            .await
            .unwrap();
        // The server and its CA only: no credentials of the proxy's own.
        cfg.auth_info = Default::default();
        cfg.default_retry = false;
        let client = kube::Client::try_from(cfg).unwrap();
        let state = Arc::new(HoldState::default());
        let upstream = Arc::new(Upstream {
            client,
            state: state.clone(),
        });
        let app = axum::Router::new().fallback(forward).with_state(upstream);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let serve = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        LeaseHold {
            port,
            shared: state,
            serve,
        }
    }

    fn hold(&self) {
        self.shared.hold.store(true, Ordering::SeqCst);
    }

    fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    fn last_renew(&self) -> Option<(Instant, Timestamp)> {
        *self.shared.last_renew.lock().unwrap()
    }
}

impl Drop for LeaseHold {
    fn drop(&mut self) {
        self.serve.abort();
    }
}

async fn forward(
    axum::extract::State(up): axum::extract::State<Arc<Upstream>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let lease = request.uri().path().contains("/leases");
    if lease && up.state.hold.load(Ordering::SeqCst) {
        up.state.held.fetch_add(1, Ordering::SeqCst);
        // Never answered: the instance gives up on its own clock (and
        // drops the connection, which drops this).
        std::future::pending::<()>().await;
    }
    let arrived = (Instant::now(), Timestamp::now());
    let renew = lease && matches!(request.method().as_str(), "PUT" | "POST");
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return axum::http::StatusCode::BAD_REQUEST.into_response();
    };
    let mut out = http::Request::builder()
        .method(parts.method)
        .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "host" | "connection" | "content-length" | "transfer-encoding" | "keep-alive"
        ) {
            out = out.header(name, value);
        }
    }
    let out = out.body(kube::client::Body::from(bytes.to_vec())).unwrap();
    match up.client.send(out).await {
        Ok(response) => {
            if renew && response.status().is_success() {
                *up.state.last_renew.lock().unwrap() = Some(arrived);
            }
            let (parts, body) = response.into_parts();
            let mut answer = axum::response::Response::new(axum::body::Body::new(body));
            *answer.status_mut() = parts.status;
            for (name, value) in &parts.headers {
                if !matches!(
                    name.as_str(),
                    "connection" | "content-length" | "transfer-encoding" | "keep-alive"
                ) {
                    answer.headers_mut().append(name, value.clone());
                }
            }
            answer
        }
        Err(_) => axum::http::StatusCode::BAD_GATEWAY.into_response(),
    }
}

/// Writes to Secrets in `namespaces` recorded after byte `from` of the audit
/// log: `(user, verb, namespace, when the API server received it)`.
fn audited_writes_at(from: u64, namespaces: &[String]) -> Vec<(String, String, String, Timestamp)> {
    let text = std::fs::read(audit_log()).expect("the audit log");
    let text = String::from_utf8_lossy(&text[from as usize..]).to_string();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| {
            matches!(
                e["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete")
            )
        })
        .filter(|e| e["objectRef"]["resource"] == "secrets")
        .filter_map(|e| {
            let ns = e["objectRef"]["namespace"].as_str()?.to_string();
            let at: Timestamp = e["requestReceivedTimestamp"].as_str()?.parse().ok()?;
            namespaces.contains(&ns).then(|| {
                (
                    e["user"]["username"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    e["verb"].as_str().unwrap_or_default().to_string(),
                    ns,
                    at,
                )
            })
        })
        .collect()
}

/// 4. Issue 16, item 1: a leader whose Lease requests hang (a proxy holds
/// them unanswered, everything else passes) stops writing by its renew
/// deadline on its own clock, before its Lease can expire for the standby;
/// the standby takes over; and a source changed after the old leader's
/// deadline reaches the namespaces only through the new leader (the audit
/// log: no write by the old leader's identity after its deadline).
///
/// Lease duration 10 s, renew deadline 4 s: the change is made 5 s after
/// the last renewal, when the old leader must already have stopped and the
/// standby may not yet take over.
#[tokio::test]
async fn a_leader_whose_lease_requests_hang_stops_writing_by_its_deadline() {
    const HANG_DURATION: u64 = 10;
    let _serial = serial();
    assert!(
        audit_log().exists(),
        "the control plane has no audit log: cp.sh down && cp.sh up"
    );
    let env = TestEnv::new("lead-hang", 2).await;
    let _on_panic = env.cleanup_on_panic();
    let _role = DeleteRole(grant_instances(&env, &["leader-a", "leader-b"], ""));
    let name = format!("{}-db", env.id);
    env.create_source(&name, &[("k", "v1")]).await;
    let proxy = LeaseHold::start().await;
    let via = format!("http://127.0.0.1:{}", proxy.port);
    let settings = [("LEASE_DURATION_SECONDS", "10")];
    let mut a = instance_with(&env, "leader-a", Some(&via), &settings);
    a.await_ready().await;
    await_role(&a, "leader", WAIT).await;
    let mut b = instance_with(&env, "leader-b", None, &settings);
    b.await_ready().await;
    await_role(&b, "standby", WAIT).await;
    env.await_copies(&env.targets, &name, &[("k", "v1")]).await;
    assert!(
        proxy.last_renew().is_some(),
        "the leader renews through the proxy"
    );

    let from = audit_offset();
    proxy.hold();
    // The held request may be the next one: wait for the first renewal that
    // does not come through.
    eventually("a Lease request of the leader is held", WAIT, || async {
        (proxy.held() > 0).then_some(())
    })
    .await;
    let (renewed, renewed_at) = proxy.last_renew().expect("a renewal");
    let change_at = renewed + Duration::from_secs(RENEW_DEADLINE + 1);
    let give_up = renewed + Duration::from_secs(HANG_DURATION + 20);
    // Poll the old leader's own word (its metric) while making the change
    // once its deadline is past.
    let mut stood_down: Option<Duration> = None;
    let mut changed = false;
    while Instant::now() < give_up && !(changed && stood_down.is_some()) {
        let metrics = a.metrics().await;
        if stood_down.is_none()
            && !metrics.is_empty()
            && sum_metric(&metrics, "push_to_k8s_leader", &[]) == 0.0
        {
            stood_down = Some(renewed.elapsed());
        }
        if !changed && Instant::now() >= change_at {
            change(&env, &name, "v2").await;
            changed = true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(changed, "the source was changed");
    // (b) The standby takes over, and the change reaches every namespace.
    await_role(&b, "leader", WAIT).await;
    env.await_copies(&env.targets, &name, &[("k", "v2")]).await;
    tokio::time::sleep(Duration::from_secs(DEBOUNCE + 2)).await;

    // (c) The API server's word: no write by the old leader after its
    // deadline (half a second allowed for a write sent just before it to
    // arrive), and the new leader's writes are there.
    let deadline = renewed_at + Duration::from_millis(RENEW_DEADLINE * 1000 + 500);
    let writes = audited_writes_at(from, &env.targets);
    let stale: Vec<_> = writes
        .iter()
        .filter(|(u, _, _, at)| *u == user(&env, "leader-a") && *at > deadline)
        .collect();
    let by_new: Vec<_> = writes
        .iter()
        .filter(|(u, _, _, _)| *u == user(&env, "leader-b"))
        .collect();
    eprintln!(
        "held leader stood down {stood_down:?} after its last renewal; {} writes audited since the hold, {} by the old leader after its deadline",
        writes.len(),
        stale.len()
    );
    // (a) The old leader stood down by its deadline, before the Lease's
    // duration was over (the standby could not take over before).
    let logs = a.logs();
    assert!(
        stood_down.is_some_and(|d| d < Duration::from_secs(HANG_DURATION)) && stale.is_empty(),
        "the held leader stood down {stood_down:?} after its last renewal (renew deadline \
         {RENEW_DEADLINE} s, Lease {HANG_DURATION} s) and wrote after its deadline: {stale:?}"
    );
    assert!(
        logs.contains("could not renew the Lease within the renew deadline"),
        "its log says why:\n{logs}"
    );
    assert!(
        by_new.len() >= env.targets.len(),
        "the new leader wrote the change: {writes:?}"
    );
    assert_eq!(
        a.metric_sum("push_to_k8s_leader", &[]).await,
        0.0,
        "still standing by while its Lease requests hang"
    );
    a.stop();
    b.stop();
    drop(proxy);
    env.teardown().await;
}
