//! `/metrics`, `/healthz` and `/readyz`.
//!
//! `/healthz` answers ok only while the control loop is alive (it beats at
//! least every few seconds, also during long pushes); `/readyz` only once every
//! cache has synced. Neither always says OK.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// A loop that has not beaten for this long is considered dead.
const STALE: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Health {
    last_beat_ms: AtomicU64,
    ready: AtomicBool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Health {
    pub fn beat(&self) {
        self.last_beat_ms.store(now_ms(), Ordering::Relaxed);
    }
    pub fn alive(&self) -> bool {
        let last = self.last_beat_ms.load(Ordering::Relaxed);
        last != 0 && now_ms().saturating_sub(last) < STALE.as_millis() as u64
    }
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.alive()
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

fn answer(ok: bool) -> (StatusCode, &'static str) {
    if ok {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ok\n")
    }
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    answer(s.health.alive())
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    answer(s.health.ready())
}

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// Bind `0.0.0.0:port` (before anything else runs, so a taken port stops
/// the program instead of leaving it without health endpoints).
pub async fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(("0.0.0.0", port)).await
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
