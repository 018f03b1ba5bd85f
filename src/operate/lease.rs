//! Leader election on a `coordination.k8s.io/v1` Lease, for two or more
//! replicas: only the holder writes (the write gate, [`crate::write::gate::WriteGate`],
//! reads the one value this publishes).
//!
//! The rules are client-go's, on the monotonic clock:
//! - A standby takes the Lease when it has no holder, or when its
//!   resourceVersion has not changed for the Lease's duration *as observed
//!   locally* (so clock skew between nodes never matters).
//! - The holder renews every retry period. If it has not renewed for the
//!   renew deadline (shorter than the duration), it stops leading at once,
//!   so it stops writing before any standby can see the Lease expire. The
//!   deadline is kept on our own clock, not by a reply: a round may take
//!   only the time left before it, and it cuts the pause between rounds
//!   short, so a request that hangs cannot keep the gate open. A renewal
//!   counts from when its write was sent, never from its answer.
//! - The invariants that make this safe (checked by the configuration):
//!   retry period < renew deadline < duration. The margin between the last
//!   two is what the two clocks may drift apart and what a write already
//!   sent may take to land.
//! - On shutdown the holder releases the Lease (no holder, duration 1 s),
//!   so a standby takes over at its next retry, not a whole duration later.
//!
//! We do this ourselves (about 200 lines) rather than with a crate: the
//! semantics above are exactly what the gate needs, the tests pin them, and
//! the dependency tree stays as it is.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::operate::api_errors::describe as describe_error;

/// Where the Lease is and how it is held.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub name: String,
    pub namespace: String,
    /// Who we are in the Lease (`POD_NAME`, else host name and pid).
    pub identity: String,
    pub duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

/// What a round of the election concluded.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    Leading,
    Standby,
}

/// Local view of the Lease: the resourceVersion last seen and when.
struct Observed {
    resource_version: String,
    at: Instant,
}

pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    observed: Option<Observed>,
    /// When the last create or replace of the Lease was sent: a renewal
    /// counts from then (a standby can only see it after).
    written: Instant,
}

impl Elector {
    pub fn new(client: kube::Client, settings: Settings) -> Elector {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            written: Instant::now(),
        }
    }

    /// Run until `shutdown`: publish `true` on `leading` while we hold the
    /// Lease, `false` otherwise; release it at the end if we held it.
    ///
    /// The renew deadline is enforced on our own (monotonic) clock, whatever
    /// a request does: while we lead, a round may take only the time left
    /// before the deadline, and the pause between rounds is cut short by it
    /// too. When it passes without a successful renew, `false` is published
    /// at once (the write gate closes) although a request may still hang.
    pub async fn run(mut self, leading: watch::Sender<bool>, shutdown: CancellationToken) {
        // When the last successful renew began: `Some` only while leading.
        let mut renewed: Option<Instant> = None;
        loop {
            let started = Instant::now();
            // A leader's round ends by its renew deadline; a standby's round is
            // bounded by the same length, so a hung request never stops it
            // from trying again.
            let limit = renewed.unwrap_or(started) + self.settings.renew_deadline;
            let round = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = tokio::time::timeout_at(limit, self.round()) => r.unwrap_or_else(|_| {
                    Err(format!(
                        "no answer within {}s",
                        limit.saturating_duration_since(started).as_secs()
                    ))
                }),
            };
            match round {
                Ok(Round::Leading) => {
                    // Counted from when the write was sent: conservative (a
                    // standby sees the renewal only after it was written).
                    renewed = Some(self.written);
                    let in_time = Instant::now() < self.written + self.settings.renew_deadline;
                    if !*leading.borrow() && in_time {
                        tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "leading: this instance holds the Lease and writes");
                        let _ = leading.send(true);
                    }
                }
                Ok(Round::Standby) => {
                    renewed = None;
                    if *leading.borrow() {
                        tracing::warn!(lease = %self.settings.name, "lost the Lease to another instance; standing by (no writes)");
                        let _ = leading.send(false);
                    }
                }
                Err(reason) => {
                    tracing::warn!(lease = %self.settings.name, error = %reason, "could not read or renew the Lease");
                }
            }
            // A holder that could not renew in time stops before anyone else
            // can take over (renew deadline < duration).
            let deadline = renewed.map(|t| t + self.settings.renew_deadline);
            if deadline.is_none_or(|d| Instant::now() >= d) {
                renewed = None;
                self.stand_down(&leading);
            }
            let deadline = renewed.map(|t| t + self.settings.renew_deadline);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.settings.retry_period) => {}
                // The deadline may fall in the pause (a slow round): stand
                // down then, not at the next round.
                _ = until(deadline) => {
                    renewed = None;
                    self.stand_down(&leading);
                }
            }
        }
        if *leading.borrow() {
            let _ = leading.send(false);
            // Bounded like a round: a hung API server must not hold up shutdown.
            let release = tokio::time::timeout(self.settings.renew_deadline, self.release());
            match release
                .await
                .unwrap_or_else(|_| Err("no answer in time".into()))
            {
                Ok(()) => tracing::info!(lease = %self.settings.name, "released the Lease"),
                Err(reason) => {
                    tracing::warn!(lease = %self.settings.name, error = %reason, "could not release the Lease; a standby takes over when it expires")
                }
            }
        }
    }

    /// The renew deadline passed without a successful renew: stop leading
    /// now (the write gate closes), if we were.
    fn stand_down(&self, leading: &watch::Sender<bool>) {
        if *leading.borrow() {
            tracing::warn!(lease = %self.settings.name, renew_deadline_s = self.settings.renew_deadline.as_secs(), "could not renew the Lease within the renew deadline; standing by (no writes)");
            let _ = leading.send(false);
        }
    }

    /// One attempt to acquire or renew.
    async fn round(&mut self) -> Result<Round, String> {
        let now = Instant::now();
        let current = self
            .api
            .get_opt(&self.settings.name)
            .await
            .map_err(|e| describe_error(&e))?;
        let Some(lease) = current else {
            let fresh = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(Timestamp::now(), 0)),
            };
            self.written = Instant::now();
            return match self.api.create(&PostParams::default(), &fresh).await {
                Ok(_) => Ok(Round::Leading),
                Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(Round::Standby),
                Err(e) => Err(describe_error(&e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let rv = lease.metadata.resource_version.clone().unwrap_or_default();
        let ours = holder.as_deref() == Some(self.settings.identity.as_str());
        if !ours {
            let changed = self
                .observed
                .as_ref()
                .is_none_or(|o| o.resource_version != rv);
            if changed {
                self.observed = Some(Observed {
                    resource_version: rv.clone(),
                    at: now,
                });
            }
            let duration = spec
                .lease_duration_seconds
                .map_or(self.settings.duration, |s| {
                    Duration::from_secs(s.max(1) as u64)
                });
            let seen = self.observed.as_ref().map_or(now, |o| o.at);
            let expired = now.duration_since(seen) >= duration;
            if holder.is_some() && !expired {
                return Ok(Round::Standby);
            }
        }
        // Ours to renew, or free to take: replace, guarded by the
        // resourceVersion we read (two standbys never both win).
        let acquire = if ours {
            spec.acquire_time
                .clone()
                .map_or_else(Timestamp::now, |t| t.0)
        } else {
            Timestamp::now()
        };
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let mut next = lease;
        let mut new_spec = self.spec(acquire, transitions);
        new_spec.renew_time = Some(MicroTime(Timestamp::now()));
        next.spec = Some(new_spec);
        self.written = Instant::now();
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(Round::Leading),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Round::Standby),
            Err(e) => Err(describe_error(&e)),
        }
    }

    fn spec(&self, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(Timestamp::now())),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Give the Lease up: no holder, so a standby takes it at once.
    async fn release(&self) -> Result<(), String> {
        let mut lease = self
            .api
            .get(&self.settings.name)
            .await
            .map_err(|e| describe_error(&e))?;
        let spec = lease.spec.get_or_insert_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
            .map_err(|e| describe_error(&e))
    }
}

/// Sleep until `deadline`; never, without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Method, StatusCode};

    use crate::fixtures::{self, ApiServer as ApiHandle, Reply, reply};
    use serde_json::{Value, json};

    fn elector() -> (Elector, ApiHandle) {
        let (client, handle) = fixtures::client();
        let settings = Settings {
            name: "lease".into(),
            namespace: "ns".into(),
            identity: "me".into(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        (Elector::new(client, settings), handle)
    }

    fn lease(holder: Option<&str>, rv: &str) -> Value {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "lease", "namespace": "ns", "resourceVersion": rv},
               "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15}})
    }

    async fn next(h: &mut ApiHandle) -> (Method, Value, Reply) {
        let (method, _, body, send) = fixtures::next(h).await;
        (method, body, send)
    }

    #[tokio::test]
    async fn no_lease_is_created_and_held() {
        let (mut e, mut h) = elector();
        let server = async {
            let (m, _, send) = next(&mut h).await;
            assert_eq!(m, Method::GET);
            reply(
                send,
                StatusCode::NOT_FOUND,
                fixtures::failure(404, "NotFound"),
            );
            let (m, body, send) = next(&mut h).await;
            assert_eq!(m, Method::POST);
            assert_eq!(body["spec"]["holderIdentity"], "me");
            assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
            reply(send, StatusCode::CREATED, body);
        };
        let (round, ()) = tokio::join!(e.round(), server);
        assert_eq!(round, Ok(Round::Leading));
    }

    // A standby takes over only after the Lease has not changed for its
    // duration, on its own clock; a change of the Lease restarts the wait.
    #[tokio::test(start_paused = true)]
    async fn a_standby_waits_out_a_silent_holder_on_its_own_clock() {
        let (mut e, mut h) = elector();
        let get = async |h: &mut ApiHandle, rv: &str| {
            let (m, _, send) = next(h).await;
            assert_eq!(m, Method::GET);
            reply(send, StatusCode::OK, lease(Some("other"), rv));
        };
        let (r, ()) = tokio::join!(e.round(), get(&mut h, "1"));
        assert_eq!(r, Ok(Round::Standby));
        tokio::time::advance(Duration::from_secs(14)).await;
        let (r, ()) = tokio::join!(e.round(), get(&mut h, "1"));
        assert_eq!(r, Ok(Round::Standby), "not yet expired");
        // The holder renewed: the wait starts over.
        let (r, ()) = tokio::join!(e.round(), get(&mut h, "2"));
        assert_eq!(r, Ok(Round::Standby));
        tokio::time::advance(Duration::from_secs(14)).await;
        let (r, ()) = tokio::join!(e.round(), get(&mut h, "2"));
        assert_eq!(r, Ok(Round::Standby));
        tokio::time::advance(Duration::from_secs(1)).await;
        let server = async {
            get(&mut h, "2").await;
            let (m, body, send) = next(&mut h).await;
            assert_eq!(m, Method::PUT, "take over");
            assert_eq!(
                body["metadata"]["resourceVersion"], "2",
                "guarded by what we read"
            );
            assert_eq!(body["spec"]["holderIdentity"], "me");
            assert_eq!(body["spec"]["leaseTransitions"], 1);
            reply(send, StatusCode::OK, body);
        };
        let (r, ()) = tokio::join!(e.round(), server);
        assert_eq!(r, Ok(Round::Leading));
    }

    #[tokio::test]
    async fn a_released_lease_is_taken_at_once_and_a_lost_race_is_standby() {
        let (mut e, mut h) = elector();
        let server = async {
            let (_, _, send) = next(&mut h).await;
            reply(send, StatusCode::OK, lease(None, "5"));
            let (m, _, send) = next(&mut h).await;
            assert_eq!(m, Method::PUT);
            // Another standby got there first.
            reply(
                send,
                StatusCode::CONFLICT,
                fixtures::failure(409, "Conflict"),
            );
        };
        let (r, ()) = tokio::join!(e.round(), server);
        assert_eq!(r, Ok(Round::Standby));
    }

    // A leader that cannot renew stops leading once its renew deadline has
    // passed, before the Lease's duration (what a standby waits) is over.
    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_stands_down_before_the_lease_expires() {
        let (e, mut h) = elector();
        let (tx, mut rx) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(e.run(tx, shutdown.clone()));
        // Held and renewed once.
        let (_, _, send) = next(&mut h).await;
        reply(send, StatusCode::OK, lease(Some("me"), "1"));
        let (m, body, send) = next(&mut h).await;
        assert_eq!(m, Method::PUT);
        reply(send, StatusCode::OK, body);
        rx.changed().await.unwrap();
        assert!(*rx.borrow_and_update());
        let renewed = Instant::now();
        // From now on every request fails.
        let fail = tokio::spawn(async move {
            while let Some((_, send)) = h.next_request().await {
                reply(
                    send,
                    StatusCode::SERVICE_UNAVAILABLE,
                    fixtures::failure(503, "ServiceUnavailable"),
                );
            }
        });
        rx.changed().await.unwrap();
        assert!(!*rx.borrow());
        let after = renewed.elapsed();
        assert!(after >= Duration::from_secs(10), "{after:?}");
        assert!(
            after < Duration::from_secs(15),
            "before the Lease expires: {after:?}"
        );
        shutdown.cancel();
        task.await.unwrap();
        fail.abort();
    }

    /// Leading after one GET and one PUT, both answered; returns when the
    /// PUT was answered (the paused clock does not move meanwhile).
    async fn lead(h: &mut ApiHandle, rx: &mut watch::Receiver<bool>) -> Instant {
        let (m, _, send) = next(h).await;
        assert_eq!(m, Method::GET);
        reply(send, StatusCode::OK, lease(Some("me"), "1"));
        let (m, body, send) = next(h).await;
        assert_eq!(m, Method::PUT);
        let renewed = Instant::now();
        reply(send, StatusCode::OK, body);
        rx.changed().await.unwrap();
        assert!(*rx.borrow_and_update());
        renewed
    }

    /// How long after `renewed` the elector stopped leading (at most 600 s of
    /// the paused clock: it never did).
    async fn stood_down(rx: &mut watch::Receiver<bool>, renewed: Instant) -> Duration {
        tokio::time::timeout(Duration::from_secs(600), rx.changed())
            .await
            .expect("the leader never stood down while its Lease request hung")
            .unwrap();
        assert!(!*rx.borrow());
        renewed.elapsed()
    }

    // Issue 16, item 1: a Lease request that never answers (the GET of the
    // next round, or its PUT) must not keep the gate open. The leader stands
    // down by its renew deadline (10 s), on its own clock, while the request
    // still hangs, well before the Lease (15 s) can expire for a standby.
    #[tokio::test(start_paused = true)]
    async fn a_hung_lease_request_closes_the_gate_by_the_renew_deadline() {
        for hang in [Method::GET, Method::PUT] {
            let (e, mut h) = elector();
            let (tx, mut rx) = watch::channel(false);
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(e.run(tx, shutdown.clone()));
            let renewed = lead(&mut h, &mut rx).await;
            // The next round: the request `hang` is never answered (its
            // reply handle is kept, so it does not fail either).
            let method = hang.clone();
            let server = tokio::spawn(async move {
                let mut held = Vec::new();
                loop {
                    let Some((req, send)) = h.next_request().await else {
                        return held.len();
                    };
                    if *req.method() == method {
                        held.push(send);
                    } else {
                        reply(send, StatusCode::OK, lease(Some("me"), "1"));
                    }
                }
            });
            let after = stood_down(&mut rx, renewed).await;
            assert!(
                after <= Duration::from_secs(10),
                "{hang}: stood down {after:?} after the last renewal, renew deadline 10 s"
            );
            shutdown.cancel();
            task.await.unwrap();
            server.abort();
        }
    }

    // A renewal counts from when it was sent, not from its answer: when an
    // acquisition is answered late (9 s), the deadline falls in the pause
    // after it, and the leader stands down then, not at its next round.
    #[tokio::test(start_paused = true)]
    async fn a_deadline_in_the_pause_closes_the_gate_on_time() {
        let (e, mut h) = elector();
        let (tx, mut rx) = watch::channel(false);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(e.run(tx, shutdown.clone()));
        let (m, _, send) = next(&mut h).await;
        assert_eq!(m, Method::GET);
        reply(send, StatusCode::OK, lease(None, "1"));
        let (m, body, send) = next(&mut h).await;
        assert_eq!(m, Method::PUT);
        let sent = Instant::now();
        tokio::time::sleep(Duration::from_secs(9)).await;
        reply(send, StatusCode::OK, body);
        rx.changed().await.unwrap();
        assert!(*rx.borrow_and_update());
        // Then nothing answers.
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some((_, send)) = h.next_request().await {
                held.push(send);
            }
        });
        let after = stood_down(&mut rx, sent).await;
        assert!(
            after <= Duration::from_secs(10),
            "stood down {after:?} after the renewal was sent, renew deadline 10 s"
        );
        shutdown.cancel();
        task.await.unwrap();
        server.abort();
    }
}
