//! Beside each remote cluster's lane, whatever it is doing: ask its API
//! server for its identity, claim it, open or close the cluster's [`Pass`],
//! and report the cluster's state (`/readyz` notes, metrics, an Event on the
//! registration).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::api::Api;
use kube::runtime::events::EventType;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::owners::Pass;
use crate::observe::cache::Caches;
use crate::operate::http::Health;
use crate::operate::metrics::{ClusterLabels, Metrics, RegistrationLabels};
use crate::write::events::Events;

/// How often the cluster's API server is asked and its state reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How long the probe waits for the API server's answer: a server that
/// does not answer within this is reported down (so within about
/// `REPORT_EVERY + PROBE_TIMEOUT` of hanging).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// The namespace whose uid identifies an API server (every cluster has it;
/// the remote identity may `get` namespaces).
const IDENTITY_NAMESPACE: &str = "kube-system";

/// Beside the cluster's task, whatever it is doing: every [`REPORT_EVERY`]
/// ask the API server for its identity (answer within [`PROBE_TIMEOUT`]),
/// claim it ([`Owners`](super::owners::Owners)), open or close the [`Pass`], and report. Wakes the
/// task (`back`) when the cluster may be served again after it could not.
pub async fn probe(
    client: kube::Client,
    mut report: Report,
    pass: Arc<Pass>,
    rank: (i64, String),
    back: Arc<Notify>,
    stop: CancellationToken,
) {
    let api: Api<Namespace> = Api::all(client);
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_open = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let asked = tokio::time::timeout(PROBE_TIMEOUT, api.get_metadata(IDENTITY_NAMESPACE));
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            answer = asked => answer,
        };
        let probed = match answer {
            Err(_) => Err(format!(
                "its API server did not answer within {}s",
                PROBE_TIMEOUT.as_secs()
            )),
            Ok(Err(e)) => Err(format!(
                "its API server cannot be asked: {}",
                crate::operate::api_errors::describe(&e)
            )),
            Ok(Ok(ns)) => ns
                .metadata
                .uid
                .ok_or_else(|| format!("its namespace {IDENTITY_NAMESPACE} has no uid")),
        };
        let state = match probed {
            Err(why) => State::Down(why),
            Ok(identity) => {
                let owner = pass.owners.claim(&identity, &pass.cluster, &rank);
                *pass.identity.lock().expect("lock") = Some(identity);
                match owner {
                    Ok(()) => State::Up,
                    Err(other) => State::Refused(other),
                }
            }
        };
        pass.up
            .store(!matches!(state, State::Down(_)), Ordering::SeqCst);
        if stop.is_cancelled() {
            return;
        }
        // Served again (or for the first time): what was not planned while
        // the pass was closed is planned now.
        let open = matches!(state, State::Up);
        let opened = open && !was_open;
        was_open = open;
        if report.update(&state).await || opened {
            back.notify_one();
        }
    }
}

/// What the last probe found.
enum State {
    Up,
    /// Not answering (the reason).
    Down(String),
    /// Answering, but the API server is served as the cluster named.
    Refused(String),
}

/// The cluster's state as the rest of the controller shows it: `/readyz`
/// notes, `push_to_k8s_cluster_up` and `_replicas`, an Event on the
/// registration when it goes down, is refused, or comes back.
pub struct Report {
    cluster: String,
    labels: ClusterLabels,
    /// The registration Secret (the Events go there).
    registration: ObjectReference,
    /// This cluster's health (the process's `/readyz` gets a note).
    own: Arc<Health>,
    caches: Arc<Caches>,
    /// The process's metrics, health and Events.
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    events: Arc<Events>,
    /// What was last said: `None` up, `Some(why)` down or refused.
    said: Option<Option<String>>,
}

impl Report {
    /// What is said of `cluster`, registered by `registration`, whose own
    /// health and caches are `own` and `caches`, in the process's
    /// `(metrics, health, events)`.
    pub fn new(
        (cluster, registration): (&str, &ObjectReference),
        (own, caches): (Arc<Health>, Arc<Caches>),
        (metrics, health, events): (Arc<Metrics>, Arc<Health>, Arc<Events>),
    ) -> Report {
        Report {
            cluster: cluster.to_string(),
            labels: ClusterLabels {
                cluster: cluster.to_string(),
            },
            registration: registration.clone(),
            own,
            caches,
            metrics,
            health,
            events,
            said: None,
        }
    }

    /// Look and report; `true` when the cluster may be served again after
    /// it was reported down or refused.
    async fn update(&mut self, state: &State) -> bool {
        let refused = match state {
            State::Refused(owner) => Some(format!(
                "not served: its API server (the same kube-system namespace uid) is already served as cluster {owner}; one API server has one owner (to rename a cluster, see docs/remote-clusters.md)"
            )),
            _ => None,
        };
        let down = match (state, self.own.readiness()) {
            (State::Refused(_), _) => refused.clone(),
            (State::Down(why), _) => Some(why.clone()),
            (State::Up, Ok(())) => None,
            (State::Up, Err(why)) => Some(why.trim_start_matches("not ready: ").to_string()),
        };
        let (metrics, health) = (&self.metrics, &self.health);
        metrics
            .cluster_up
            .get_or_create(&self.labels)
            .set(i64::from(down.is_none()));
        metrics
            .cluster_replicas
            .get_or_create(&self.labels)
            .set(self.caches.replica_count() as i64);
        health.set_cluster_degraded(&self.cluster, down.clone());
        // Say it once per change, and "listing" only once it is really late.
        let first_listing = self.said.is_none() && down.as_deref() == Some("caches not synced yet");
        if self.said.as_ref() == Some(&down) || first_listing {
            return false;
        }
        let previous = self.said.replace(down.clone());
        let back = down.is_none() && matches!(previous, Some(Some(_)));
        let (kind, reason, note) = match &down {
            Some(why) if refused.is_some() => {
                tracing::warn!(why = %why, "remote cluster registration refused");
                metrics
                    .registrations_refused
                    .get_or_create(&RegistrationLabels { reason: "server" })
                    .inc();
                (
                    EventType::Warning,
                    "InvalidCluster",
                    format!("cluster {} is {why}", self.cluster),
                )
            }
            Some(why) => {
                tracing::warn!(why = %why, "remote cluster cannot be served; retrying");
                (
                    EventType::Warning,
                    "ClusterUnreachable",
                    format!(
                        "cluster {} cannot be served: {why}; its copies are retried with backoff, other clusters go on",
                        self.cluster
                    ),
                )
            }
            None if matches!(previous, Some(Some(_))) => {
                tracing::info!("remote cluster reachable again; converging");
                (
                    EventType::Normal,
                    "ClusterReachable",
                    format!(
                        "cluster {} is reachable again; its copies converge",
                        self.cluster
                    ),
                )
            }
            None => (
                EventType::Normal,
                "ClusterRegistered",
                format!(
                    "cluster {} is served: {} namespaces, {} copies of ours there",
                    self.cluster,
                    self.caches.namespaces.len(),
                    self.caches.replica_count()
                ),
            ),
        };
        let events = &self.events;
        events
            .publish(&self.registration, kind, reason, "Register", note)
            .await;
        back
    }
}
