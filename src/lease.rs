//! Leader election on a `coordination.k8s.io/v1` Lease, for two or more
//! replicas: only the holder writes (the write gate, [`crate::gate::WriteGate`],
//! reads the one value this publishes).
//!
//! The rules are client-go's, on the monotonic clock:
//! - A standby takes the Lease when it has no holder, or when its
//!   resourceVersion has not changed for the Lease's duration *as observed
//!   locally* (so clock skew between nodes never matters).
//! - The holder renews every retry period. If it has not renewed for the
//!   renew deadline (shorter than the duration), it stops leading at once,
//!   so it stops writing before any standby can see the Lease expire.
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

use crate::watch::describe_error;

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
}

impl Elector {
    pub fn new(client: kube::Client, settings: Settings) -> Elector {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    /// Run until `shutdown`: publish `true` on `leading` while we hold the
    /// Lease, `false` otherwise; release it at the end if we held it.
    pub async fn run(mut self, leading: watch::Sender<bool>, shutdown: CancellationToken) {
        let mut last_renew: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let round = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.round() => r,
            };
            match round {
                Ok(Round::Leading) => {
                    // Counted from when the request began: conservative.
                    last_renew = Some(started);
                    if !*leading.borrow() {
                        tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "leading: this instance holds the Lease and writes");
                        let _ = leading.send(true);
                    }
                }
                Ok(Round::Standby) => {
                    last_renew = None;
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
            if *leading.borrow()
                && last_renew.is_none_or(|t| t.elapsed() >= self.settings.renew_deadline)
            {
                tracing::warn!(lease = %self.settings.name, "could not renew the Lease within the renew deadline; standing by (no writes)");
                last_renew = None;
                let _ = leading.send(false);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.settings.retry_period) => {}
            }
        }
        if *leading.borrow() {
            let _ = leading.send(false);
            match self.release().await {
                Ok(()) => tracing::info!(lease = %self.settings.name, "released the Lease"),
                Err(reason) => {
                    tracing::warn!(lease = %self.settings.name, error = %reason, "could not release the Lease; a standby takes over when it expires")
                }
            }
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
