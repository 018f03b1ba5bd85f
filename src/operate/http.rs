//! `/metrics`, `/healthz` and `/readyz`, and the [`Health`] they report.
//!
//! - `/healthz` answers 200 while the control loop is alive: the loop beats at
//!   least every 5 s (and the writer after every write), and a loop silent for
//!   60 s is dead. Time is measured on the monotonic clock, so a clock step can
//!   neither fake nor kill it; and nothing slow runs on the loop (the periodic
//!   resync and the conflict rechecks are spawned tasks), so a long resync
//!   cannot trip it.
//! - `/readyz` answers 200 only once the caches have synced, while no watch
//!   has been failing for longer than `READY_WATCH_FAILURE_SECONDS`, and while
//!   the last resync succeeded. Otherwise 503, and the body says why, e.g.
//!   `not ready: watch replicas failing for 14s: list failed: 403 Forbidden`.
//!
//! Bodies carry names of watches, durations and API error codes and reasons,
//! never an object's content.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::time::Instant;

use crate::operate::metrics::Metrics;

/// A loop that has not beaten for this long is considered dead.
const STALE: Duration = Duration::from_secs(60);

/// A failed watch is restarted with a fresh list; the watch request follows
/// the list at once, and a refused one (RBAC `watch` revoked, `list` not)
/// fails within a request's time. So a relist after an error proves the
/// watch works again only once this long has passed without a new error.
pub const RELIST_GRACE: Duration = Duration::from_secs(5);

/// Default of `READY_WATCH_FAILURE_SECONDS`.
pub const DEFAULT_WATCH_FAILURE_BOUND: Duration = Duration::from_secs(10);

/// What the health endpoints report: the control loop's heartbeat, whether
/// the caches synced, every watch's failures, and the last resync.
pub struct Health {
    watch_failure_bound: Duration,
    state: Mutex<HealthState>,
}

#[derive(Default)]
struct HealthState {
    last_beat: Option<Instant>,
    synced: bool,
    watches: BTreeMap<&'static str, WatchHealth>,
    /// When the last resync failed, and why; `None` once one succeeds.
    resync_failed: Option<(Instant, String)>,
    /// With leader election: `leader` or `standby` (said in `/readyz`).
    role: Option<&'static str>,
    /// The Vault target cannot write now, and why (said in `/readyz`, which
    /// stays about the controller: Vault never makes it unready).
    vault_degraded: Option<String>,
    /// Registered remote clusters that cannot be served now, and why (said
    /// in `/readyz`; like Vault, a remote cluster never makes it unready).
    clusters_degraded: BTreeMap<String, String>,
    /// The source namespace is being deleted or is gone: nothing is deleted
    /// meanwhile, and `/readyz` is unready with this reason.
    source_namespace_lost: Option<String>,
    /// Why PushRules are not served now (their CRD removed or being
    /// deleted): their copies are left as they are.
    rules_held: Option<String>,
}

#[derive(Default)]
struct WatchHealth {
    /// The first error since the watch last worked.
    failing_since: Option<Instant>,
    /// The last error: code and reason, never an object's content.
    error: String,
    /// A list completed after the error (see [`RELIST_GRACE`]).
    relisted_at: Option<Instant>,
    /// The watch loop ended (it never does while the process runs).
    stopped: bool,
}

impl WatchHealth {
    /// How long it has been failing, or `None` if it works.
    fn failing_for(&self, now: Instant) -> Option<Duration> {
        let since = self.failing_since?;
        match self.relisted_at {
            Some(t) if now.duration_since(t) >= RELIST_GRACE => None,
            _ => Some(now.duration_since(since)),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new(DEFAULT_WATCH_FAILURE_BOUND)
    }
}

impl Health {
    /// `watch_failure_bound`: how long a watch may fail before `/readyz` says so.
    pub fn new(watch_failure_bound: Duration) -> Health {
        Health {
            watch_failure_bound,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().expect("health lock")
    }

    /// With leader election, this instance's role: `leader` or `standby`.
    /// A standby is ready (its caches are warm); `/readyz` says which it is.
    pub fn set_role(&self, role: &'static str) {
        self.state().role = Some(role);
    }

    pub fn role(&self) -> Option<&'static str> {
        self.state().role
    }

    /// The Vault target's state: `Some(why)` while it cannot write (value-free).
    pub fn set_vault_degraded(&self, why: Option<String>) {
        self.state().vault_degraded = why;
    }

    /// The remote cluster `cluster`: `Some(why)` while it cannot be served
    /// (value-free: an API code and reason, a transport error), `None` when
    /// it works again or is no longer registered.
    pub fn set_cluster_degraded(&self, cluster: &str, why: Option<String>) {
        let mut state = self.state();
        match why {
            Some(why) => state.clusters_degraded.insert(cluster.to_string(), why),
            None => state.clusters_degraded.remove(cluster),
        };
    }

    /// What `/readyz` adds to `ok`: the role, a degraded Vault target, and
    /// the remote clusters that cannot be served.
    fn notes(&self) -> String {
        let state = self.state();
        let mut notes = Vec::new();
        if let Some(role) = state.role {
            notes.push(role.to_string());
        }
        if let Some(why) = &state.vault_degraded {
            notes.push(format!("vault degraded: {why}"));
        }
        for (cluster, why) in &state.clusters_degraded {
            notes.push(format!("cluster {cluster} degraded: {why}"));
        }
        notes.join("; ")
    }

    /// The source namespace's state: `Some(why)` while it is being deleted or
    /// gone (no copy is deleted meanwhile; `/readyz` says so).
    pub fn set_rules_held(&self, why: Option<String>) {
        self.state().rules_held = why;
    }

    pub fn set_source_namespace_lost(&self, why: Option<String>) {
        self.state().source_namespace_lost = why;
    }

    /// The control loop is alive (monotonic clock).
    pub fn beat(&self) {
        self.state().last_beat = Some(Instant::now());
    }

    /// Every cache has completed its first list.
    pub fn set_synced(&self, synced: bool) {
        self.state().synced = synced;
    }

    /// Watch `what` failed with `error` (short, value-free). A failure lasts
    /// from the first error until the watch delivers an event again, or a
    /// relist is followed by [`RELIST_GRACE`] without an error.
    pub fn watch_failed(&self, what: &'static str, error: String) {
        let now = Instant::now();
        let mut state = self.state();
        let w = state.watches.entry(what).or_default();
        if w.failing_for(now).is_none() {
            w.failing_since = Some(now);
        }
        w.relisted_at = None;
        w.error = error;
    }

    /// Watch `what` completed a (re)list.
    pub fn watch_listed(&self, what: &'static str) {
        let mut state = self.state();
        let w = state.watches.entry(what).or_default();
        if w.failing_since.is_some() && w.relisted_at.is_none() {
            w.relisted_at = Some(Instant::now());
        }
    }

    /// Watch `what` delivered a change: it works.
    pub fn watch_event(&self, what: &'static str) {
        let mut state = self.state();
        let w = state.watches.entry(what).or_default();
        w.failing_since = None;
        w.relisted_at = None;
    }

    /// The loop of watch `what` ended.
    pub fn watch_stopped(&self, what: &'static str) {
        self.state().watches.entry(what).or_default().stopped = true;
    }

    /// The outcome of a resync: `Err` carries a short, value-free reason.
    pub fn resync_result(&self, result: Result<(), String>) {
        self.state().resync_failed = result.err().map(|e| (Instant::now(), e));
    }

    /// `Ok` while the control loop beats; otherwise why not.
    pub fn liveness(&self) -> Result<(), String> {
        match self.state().last_beat {
            None => Err("not alive: the control loop has not started".into()),
            Some(t) => {
                let silent = t.elapsed();
                if silent < STALE {
                    Ok(())
                } else {
                    Err(format!(
                        "not alive: control loop silent for {}s",
                        silent.as_secs()
                    ))
                }
            }
        }
    }

    pub fn alive(&self) -> bool {
        self.liveness().is_ok()
    }

    /// `Ok` when ready; otherwise every reason why not, on one line.
    pub fn readiness(&self) -> Result<(), String> {
        let mut why = Vec::new();
        if let Err(e) = self.liveness() {
            why.push(e.trim_start_matches("not alive: ").to_string());
        }
        let now = Instant::now();
        let state = self.state();
        if !state.synced {
            why.push("caches not synced yet".into());
        }
        for (what, w) in &state.watches {
            if w.stopped {
                why.push(format!("watch {what} stopped"));
            } else if let Some(d) = w.failing_for(now)
                && d > self.watch_failure_bound
            {
                why.push(format!(
                    "watch {what} failing for {}s: {}",
                    d.as_secs(),
                    w.error
                ));
            }
        }
        if let Some(lost) = &state.source_namespace_lost {
            why.push(lost.clone());
        }
        if let Some(held) = &state.rules_held {
            why.push(held.clone());
        }
        if let Some((at, e)) = &state.resync_failed {
            why.push(format!(
                "last resync failed ({}s ago): {e}",
                now.duration_since(*at).as_secs()
            ));
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(format!("not ready: {}", why.join("; ")))
        }
    }

    pub fn ready(&self) -> bool {
        self.readiness().is_ok()
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

fn answer(result: Result<(), String>) -> (StatusCode, String) {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    answer(s.health.liveness())
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    match s.health.readiness() {
        Ok(()) => match s.health.notes() {
            notes if notes.is_empty() => answer(Ok(())),
            notes => (StatusCode::OK, format!("ok: {notes}\n")),
        },
        result => answer(result),
    }
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    s.metrics.ready.set(i64::from(s.health.ready()));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Bind port `port` on every address, IPv4 and IPv6 (before anything else runs, so a taken port stops
/// the program instead of leaving it without health endpoints).
pub async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    // `[::]` takes IPv4 as well (IPv4-mapped) where the system allows it,
    // the Linux default; where IPv6 is unavailable, IPv4 alone.
    match tokio::net::TcpListener::bind(("::", port)).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(e),
        Err(_) => tokio::net::TcpListener::bind(("0.0.0.0", port)).await,
    }
}

/// Serve until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { health, metrics });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    // Issue 7, defect 10: the health port answers on IPv6 as well as IPv4
    // (a dual-stack or IPv6-only cluster probes the pod's IPv6 address).
    #[tokio::test]
    async fn health_port_answers_on_ipv4_and_ipv6() {
        let listener = bind(0).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            for _ in 0..2 {
                listener.accept().await.unwrap();
            }
        });
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("IPv4");
        tokio::net::TcpStream::connect(("::1", port))
            .await
            .expect("IPv6");
        accept.await.unwrap();
    }

    use super::*;
    use tokio::time::advance;

    const S: fn(u64) -> Duration = Duration::from_secs;

    /// Synced and beating: ready.
    fn healthy() -> Health {
        let h = Health::new(S(10));
        h.set_synced(true);
        h.beat();
        h
    }

    /// Advance the paused clock with the loop beating all along.
    async fn pass(h: &Health, d: Duration) {
        advance(d).await;
        h.beat();
    }

    // Issue 7, defect 5: /readyz said ok once the caches synced, whatever
    // the watches did since.
    #[tokio::test(start_paused = true)]
    async fn defect5_readyz_unready_while_a_watch_fails_longer_than_the_bound() {
        let h = healthy();
        assert_eq!(h.readiness(), Ok(()));
        h.watch_failed("replicas", "list failed: 403 Forbidden".into());
        pass(&h, S(9)).await;
        h.watch_failed("replicas", "list failed: 403 Forbidden".into());
        assert_eq!(h.readiness(), Ok(()), "a failure shorter than the bound");
        pass(&h, S(5)).await;
        assert_eq!(
            h.readiness(),
            Err("not ready: watch replicas failing for 14s: list failed: 403 Forbidden".into())
        );
        // Another watch working does not make this one work.
        h.watch_event("namespaces");
        assert!(!h.ready());
        // A change delivered: it works again.
        h.watch_event("replicas");
        assert_eq!(h.readiness(), Ok(()));
        // A later failure is measured from its own start.
        pass(&h, S(100)).await;
        h.watch_failed("replicas", "watch failed to start: 403 Forbidden".into());
        pass(&h, S(10)).await;
        assert_eq!(h.readiness(), Ok(()), "exactly the bound is still ready");
        pass(&h, S(1)).await;
        let why = h.readiness().unwrap_err();
        assert!(why.contains("failing for 11s"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn defect5_a_relist_recovers_a_watch_only_if_no_error_follows() {
        let h = healthy();
        h.watch_failed(
            "sources",
            "list failed: HyperError: connection refused".into(),
        );
        pass(&h, S(30)).await;
        // List allowed, watch refused: the list is followed by an error at once.
        for _ in 0..5 {
            h.watch_listed("sources");
            pass(&h, Duration::from_millis(20)).await;
            h.watch_failed("sources", "watch failed to start: 403 Forbidden".into());
            pass(&h, S(8)).await;
        }
        let why = h.readiness().unwrap_err();
        assert!(
            why.contains("watch sources failing for 70s: watch failed to start: 403 Forbidden"),
            "one failure all along, not a new one per relist: {why}"
        );
        // The apiserver lets it watch again: the relist is not contradicted.
        h.watch_listed("sources");
        pass(&h, RELIST_GRACE - Duration::from_millis(1)).await;
        assert!(!h.ready(), "not before the grace has passed");
        pass(&h, Duration::from_millis(1)).await;
        assert_eq!(h.readiness(), Ok(()));
        // An error long after is a new failure, not the old one resumed.
        pass(&h, S(60)).await;
        h.watch_failed("sources", "watch stream failed: 500 InternalError".into());
        assert_eq!(h.readiness(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn defect5_readyz_unready_after_a_failed_resync_until_one_succeeds() {
        let h = healthy();
        h.resync_result(Err("403 Forbidden".into()));
        pass(&h, S(3)).await;
        assert_eq!(
            h.readiness(),
            Err("not ready: last resync failed (3s ago): 403 Forbidden".into())
        );
        h.resync_result(Ok(()));
        assert_eq!(h.readiness(), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn defect5_readyz_needs_synced_caches_and_a_running_watch_loop() {
        let h = Health::new(S(10));
        h.beat();
        assert_eq!(
            h.readiness(),
            Err("not ready: caches not synced yet".into())
        );
        h.set_synced(true);
        assert!(h.ready());
        h.watch_stopped("namespaces");
        assert_eq!(
            h.readiness(),
            Err("not ready: watch namespaces stopped".into())
        );
    }

    // Issue 7, defect 5: the one generic watch loop reports every failure,
    // and a relist after it (which only a restarted watch delivers) brings
    // readiness back; however the loop ends, readiness hears of it.
    #[tokio::test(start_paused = true)]
    async fn defect5_the_watch_loop_reports_failures_and_recovery_to_readyz() {
        use crate::observe::cache::Cache;
        use crate::observe::watch;
        use futures::StreamExt;
        use futures::stream::BoxStream;
        use kube::runtime::watcher::{self as kw, Event};
        use std::sync::atomic::{AtomicUsize, Ordering};

        type Item = Result<Event<String>, kw::Error>;
        let forbidden = || -> Item {
            Err(kw::Error::InitialListFailed(kube::Error::Api(Box::new(
                kube::core::Status::failure("secrets is forbidden: User cannot list", "Forbidden")
                    .with_code(403),
            ))))
        };
        let listed = |names: &[&str]| -> Vec<Item> {
            let mut v = vec![Ok(Event::Init)];
            v.extend(names.iter().map(|n| Ok(Event::InitApply(n.to_string()))));
            v.push(Ok(Event::InitDone));
            v
        };
        // Each call is one (re)start of the watch: a list, then watching.
        let mut first = listed(&["a"]);
        first.push(forbidden());
        let starts = std::sync::Mutex::new(std::collections::VecDeque::from(vec![
            first,
            vec![forbidden()],
            vec![forbidden()],
            vec![forbidden()],
            listed(&["a", "b"]),
        ]));
        let calls = Arc::new(AtomicUsize::new(0));
        let factory = {
            let calls = calls.clone();
            move || -> BoxStream<'static, Item> {
                calls.fetch_add(1, Ordering::SeqCst);
                let items = starts.lock().unwrap().pop_front().unwrap_or_default();
                futures::stream::iter(items)
                    .chain(futures::stream::pending())
                    .boxed()
            }
        };
        let health = Arc::new(healthy());
        let cache: Arc<Cache<String, ()>> = Arc::default();
        let metrics = Arc::new(Metrics::new());
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (dirty, _keep) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let task = tokio::spawn(watch::run(
            "replicas",
            factory,
            cache.clone(),
            |s: &String| Some((s.clone(), ())),
            |s: &String| Some(s.clone()),
            |_: &String, _: Option<&()>, _: Option<&()>| None,
            watch::Context {
                dirty,
                metrics: metrics.clone(),
                health: health.clone(),
                shutdown: shutdown.clone(),
            },
        ));
        // Listed at 0 s, then refused at 0, 1, 3 and 7 s (backoff 1, 2, 4 s);
        // the fifth start, at 15 s, lists again and is not contradicted.
        let at = |secs: u64| tokio::time::sleep_until(start + S(secs));
        at(12).await;
        health.beat();
        assert_eq!(
            health.readiness(),
            Err("not ready: watch replicas failing for 12s: list failed: 403 Forbidden".into())
        );
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        at(16).await;
        health.beat();
        assert_eq!(calls.load(Ordering::SeqCst), 5, "restarted with a list");
        assert!(!health.ready(), "listed 1 s ago: not yet proven");
        assert_eq!(cache.len(), 2, "the relist reached the cache");
        at(21).await;
        health.beat();
        assert_eq!(health.readiness(), Ok(()));
        assert!(
            metrics
                .encode()
                .contains("push_to_k8s_watch_errors_total{watch=\"replicas\"} 4"),
            "{}",
            metrics.encode()
        );
        shutdown.cancel();
        task.await.unwrap();
        assert_eq!(
            health.readiness(),
            Err("not ready: watch replicas stopped".into())
        );
    }

    // What /readyz and the log say of a watch error: the API's code and
    // reason, never its message, which may quote an object.
    #[test]
    fn defect5_watch_errors_are_reported_without_the_server_message() {
        use kube::runtime::watcher::Error as W;
        let status = kube::core::Status::failure(
            "Secret \"db\" is invalid: data[password]: hunter2",
            "Invalid",
        )
        .with_code(422);
        let e = W::WatchStartFailed(kube::Error::Api(Box::new(status.clone())));
        assert_eq!(
            crate::operate::api_errors::describe_watch(&e),
            "watch failed to start: 422 Invalid"
        );
        let e = W::WatchError(Box::new(status));
        assert_eq!(
            crate::operate::api_errors::describe_watch(&e),
            "watch error: 422 Invalid"
        );
    }

    // Issue 7, defect 5: /healthz was a wall-clock heartbeat. On the
    // monotonic (here: paused tokio) clock, 60 s without a beat is dead.
    #[tokio::test(start_paused = true)]
    async fn defect5_healthz_is_a_monotonic_heartbeat() {
        let h = Health::new(S(10));
        assert!(h.liveness().is_err(), "never beaten");
        h.beat();
        advance(S(59)).await;
        assert_eq!(h.liveness(), Ok(()));
        advance(S(2)).await;
        assert_eq!(
            h.liveness(),
            Err("not alive: control loop silent for 61s".into())
        );
        h.set_synced(true);
        assert_eq!(
            h.readiness(),
            Err("not ready: control loop silent for 61s".into())
        );
        h.beat();
        assert!(h.alive() && h.ready());
    }
}
