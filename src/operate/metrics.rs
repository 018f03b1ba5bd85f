//! Prometheus metrics. Labels are bounded: operation, result and watch names
//! only, never a namespace or object name chosen by a user (DESIGN §5). The
//! one exception is `cluster`, the name of a registered remote cluster: there
//! is one value per registration Secret the operator made (a removed
//! registration's series are removed with it), so its cardinality is bounded
//! by the number of registrations, not by anything a source author chooses.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: &'static str,
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub watch: &'static str,
}

/// Why a cluster registration is refused (bounded: a fixed set of reasons).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistrationLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnnotationLabels {
    pub annotation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VaultLabels {
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterWriteLabels {
    pub cluster: String,
    pub kind: &'static str,
    pub op: &'static str,
    pub result: &'static str,
}

/// Where a copy was written: `home` (this cluster's namespaces), `remote`
/// (a registered cluster's), `vault` (Vault KV). Bounded: three values.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub target: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn propagation_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

pub struct Metrics {
    pub registry: Registry,
    pub writes: Family<WriteLabels, Counter>,
    pub watch_events: Family<WatchLabels, Counter>,
    pub watch_errors: Family<WatchLabels, Counter>,
    pub queue_depth: Gauge,
    pub batch_size: Histogram,
    /// By target (`home`, `remote`, `vault`): [`Metrics::observe_propagation`].
    pub propagation: HistogramFamily<TargetLabels>,
    /// The target this instance's writes land in (`home`; `remote` in a
    /// remote cluster's own metrics, which share the exported histogram).
    target: &'static str,
    pub managed_replicas: Gauge,
    pub conflicts: Counter,
    /// Copies not written now because an unmanaged object of their name is in
    /// the way (the conflicts known at this moment).
    pub conflicted_copies: Gauge,
    /// 1 while `/readyz` answers 200; set as `/metrics` is scraped.
    pub ready: Gauge,
    /// Seconds since the oldest copy still waiting in the retry queue first
    /// failed; 0 when none waits. Computed as it is scraped, from
    /// [`Metrics::set_out_of_sync_since`].
    pub oldest_out_of_sync: Gauge<f64, AtomicU64>,
    out_of_sync_since: Mutex<Option<std::time::Instant>>,
    /// `SECRET_SYNC_DEBOUNCE_SECONDS` and `SECRET_SYNC_RATE_LIMIT`, so a
    /// dashboard can draw the propagation bound D + N/R beside the latency.
    pub debounce_seconds: Gauge,
    pub write_rate_limit: Gauge,
    /// The process's resident memory (VmRSS of /proc/self/status), read as
    /// `/metrics` is scraped; 0 where /proc is not there.
    pub resident_memory: Gauge,
    pub adoptions: Counter,
    pub invalid_annotations: Family<AnnotationLabels, Counter>,
    pub resyncs: Family<ResultLabels, Counter>,
    pub resync_stale: Counter<u64, AtomicU64>,
    pub conflict_lists: Family<ResultLabels, Counter>,
    pub fights: Counter,
    pub retry_queue: Gauge,
    /// Objects that look like copies under a name no source asks (or asked
    /// for during this run): deleted apart from propagation, a bounded
    /// number at a time, at low priority.
    pub stray_copies: Gauge,
    pub refused_types: Counter,
    pub leader: Gauge,
    pub vault_requests: Family<VaultLabels, Counter>,
    pub vault_entries: Gauge,
    pub vault_conflicts: Gauge,
    pub vault_pending: Gauge,
    pub vault_up: Gauge,
    pub vault_logins: Counter,
    pub clusters: Gauge,
    pub cluster_up: Family<ClusterLabels, Gauge>,
    pub cluster_writes: Family<ClusterWriteLabels, Counter>,
    pub cluster_replicas: Family<ClusterLabels, Gauge>,
    pub registrations_refused: Family<RegistrationLabels, Counter>,
    /// In a remote cluster's own (unexported) metrics: where its writes are
    /// counted as well, in the exported `cluster_writes`.
    forward: Option<(String, Family<ClusterWriteLabels, Counter>)>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("push_to_k8s");
        let writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "writes",
            "Write requests to the API server by kind, operation and result",
            writes.clone(),
        );
        let watch_events = Family::<WatchLabels, Counter>::default();
        registry.register(
            "watch_events",
            "Watch events received",
            watch_events.clone(),
        );
        let watch_errors = Family::<WatchLabels, Counter>::default();
        registry.register(
            "watch_errors",
            "Watch stream errors (each is retried with backoff)",
            watch_errors.clone(),
        );
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Dirty keys waiting for the next batch",
            queue_depth.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        registry.register(
            "batch_size",
            "Dirty keys per flushed batch",
            batch_size.clone(),
        );
        let propagation: HistogramFamily<TargetLabels> =
            Family::new_with_constructor(propagation_histogram);
        registry.register(
            "propagation_seconds",
            "Time from the first change of a batch to each of its writes completing, by target (home: this cluster's namespaces, remote: a registered cluster's, vault: Vault KV, from the flush that handed the source over)",
            propagation.clone(),
        );
        let managed_replicas = Gauge::default();
        registry.register(
            "managed_replicas",
            "Replicas currently managed (from the cache)",
            managed_replicas.clone(),
        );
        let conflicts = Counter::default();
        registry.register(
            "conflicts",
            "Copies skipped because an unmanaged object of the same name exists",
            conflicts.clone(),
        );
        let conflicted_copies = Gauge::default();
        registry.register(
            "conflicted_copies",
            "Copies not written because an object of the same name that push-to-k8s does not manage is in the way (known now)",
            conflicted_copies.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 while /readyz answers 200 (caches synced, no watch failing for long, last resync succeeded), 0 otherwise",
            ready.clone(),
        );
        let oldest_out_of_sync = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "oldest_out_of_sync_seconds",
            "Age of the oldest copy waiting to be written again (first failed write or fight), 0 when none waits",
            oldest_out_of_sync.clone(),
        );
        let debounce_seconds = Gauge::default();
        registry.register(
            "debounce_seconds",
            "The quiet window D (SECRET_SYNC_DEBOUNCE_SECONDS)",
            debounce_seconds.clone(),
        );
        let write_rate_limit = Gauge::default();
        registry.register(
            "write_rate_limit",
            "Write requests per second R to the API server (SECRET_SYNC_RATE_LIMIT)",
            write_rate_limit.clone(),
        );
        let resident_memory = Gauge::default();
        registry.register_with_unit(
            "resident_memory",
            "Resident memory of this process (VmRSS), read at each scrape",
            prometheus_client::registry::Unit::Bytes,
            resident_memory.clone(),
        );
        let adoptions = Counter::default();
        registry.register(
            "adoptions",
            "Unmanaged objects taken over as copies, as their source asked (push-to-k8s.io/adopt) and ALLOW_ADOPTION allows",
            adoptions.clone(),
        );
        let invalid_annotations = Family::<AnnotationLabels, Counter>::default();
        registry.register(
            "invalid_annotations",
            "Sources skipped because a targeting annotation does not parse",
            invalid_annotations.clone(),
        );
        let resyncs = Family::<ResultLabels, Counter>::default();
        registry.register("resyncs", "Periodic full resyncs", resyncs.clone());
        let resync_stale = Counter::default();
        registry.register(
            "resync_cache_corrections",
            "Cache entries a resync found different from the API server",
            resync_stale.clone(),
        );
        let fights = Counter::default();
        registry.register(
            "copy_fights",
            "Copies found being changed back by another actor; their repairs are now held with exponential backoff",
            fights.clone(),
        );
        let retry_queue = Gauge::default();
        registry.register(
            "retry_queue_copies",
            "Copies waiting out a backoff (a failed write, or a fought-over copy)",
            retry_queue.clone(),
        );
        let stray_copies = Gauge::default();
        registry.register(
            "stray_copies",
            "Objects marked as copies under a name no source asks for (or asked for while this instance ran), waiting to be deleted in the low-priority lane",
            stray_copies.clone(),
        );
        let refused_types = Counter::default();
        registry.register(
            "refused_types",
            "Sources refused because their type grants an identity (service-account or bootstrap token); counted once per change",
            refused_types.clone(),
        );
        let conflict_lists = Family::<ResultLabels, Counter>::default();
        registry.register(
            "conflict_lists",
            "Metadata LISTs of same-named Secrets (one per name) that find or recheck conflicts",
            conflict_lists.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this instance holds the Lease and writes (always 1 without leader election), 0 on standby",
            leader.clone(),
        );
        leader.set(1);
        let vault_requests = Family::<VaultLabels, Counter>::default();
        registry.register(
            "vault_requests",
            "Requests to Vault by operation (read, write, metadata, delete) and result (ok, or a bounded reason)",
            vault_requests.clone(),
        );
        let vault_entries = Gauge::default();
        registry.register(
            "vault_entries",
            "Vault KV entries managed (written, or found in sync, by this instance)",
            vault_entries.clone(),
        );
        let vault_conflicts = Gauge::default();
        registry.register(
            "vault_conflicts",
            "Sources whose Vault path holds an entry push-to-k8s did not write for them (left as it is)",
            vault_conflicts.clone(),
        );
        let vault_pending = Gauge::default();
        registry.register(
            "vault_pending",
            "Sources waiting for a Vault write, delete or check, a retry backoff included",
            vault_pending.clone(),
        );
        let vault_up = Gauge::default();
        registry.register(
            "vault_up",
            "1 while the last Vault request was answered and the login holds, 0 otherwise (without a Vault target: 0)",
            vault_up.clone(),
        );
        let vault_logins = Counter::default();
        registry.register(
            "vault_logins",
            "Logins to Vault (the first, and each before a token expires)",
            vault_logins.clone(),
        );
        let clusters = Gauge::default();
        registry.register(
            "clusters",
            "Remote clusters registered (Secrets labelled push-to-k8s.io/cluster in the source namespace)",
            clusters.clone(),
        );
        let cluster_up = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_up",
            "Per registered remote cluster: 1 while its watches are listed and running, 0 while it is unreachable, unauthorised or its kubeconfig is refused",
            cluster_up.clone(),
        );
        let cluster_writes = Family::<ClusterWriteLabels, Counter>::default();
        registry.register(
            "cluster_writes",
            "Write requests to a remote cluster's API server by cluster, kind, operation and result",
            cluster_writes.clone(),
        );
        let cluster_replicas = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "cluster_replicas",
            "Copies managed in each remote cluster (from its cache)",
            cluster_replicas.clone(),
        );
        let registrations_refused = Family::<RegistrationLabels, Counter>::default();
        registry.register(
            "registrations_refused",
            "Cluster registrations refused, by reason (name, server, label, kubeconfig, source), counted once per change",
            registrations_refused.clone(),
        );
        Metrics {
            registry,
            writes,
            watch_events,
            watch_errors,
            queue_depth,
            batch_size,
            propagation,
            target: "home",
            managed_replicas,
            conflicts,
            conflicted_copies,
            ready,
            oldest_out_of_sync,
            out_of_sync_since: Mutex::new(None),
            debounce_seconds,
            write_rate_limit,
            resident_memory,
            adoptions,
            invalid_annotations,
            resyncs,
            resync_stale,
            conflict_lists,
            fights,
            retry_queue,
            stray_copies,
            refused_types,
            leader,
            vault_requests,
            vault_entries,
            vault_conflicts,
            vault_pending,
            vault_up,
            vault_logins,
            clusters,
            cluster_up,
            cluster_writes,
            cluster_replicas,
            registrations_refused,
            forward: None,
        }
    }

    /// The metrics of the remote cluster `cluster`'s own pieces (its watches,
    /// writer, resync): not exported themselves, but every write they count
    /// is also counted in `global`'s `cluster_writes` with the cluster's name.
    pub fn for_cluster(cluster: &str, global: &Metrics) -> Metrics {
        Metrics {
            forward: Some((cluster.to_string(), global.cluster_writes.clone())),
            propagation: global.propagation.clone(),
            target: "remote",
            ..Metrics::new()
        }
    }

    /// A write completed `secs` after the first change of its batch.
    pub fn observe_propagation(&self, secs: f64) {
        self.observe_propagation_to(self.target, secs);
    }

    /// A write to `target` (`home`, `remote`, `vault`) completed after `secs`.
    pub fn observe_propagation_to(&self, target: &'static str, secs: f64) {
        self.propagation
            .get_or_create(&TargetLabels { target })
            .observe(secs);
    }

    /// When the oldest copy in the retry queue first failed (`None`: none waits).
    pub fn set_out_of_sync_since(&self, since: Option<std::time::Instant>) {
        *self.out_of_sync_since.lock().expect("lock") = since;
    }

    /// Forget everything labelled with the remote cluster `cluster` (its
    /// registration was removed), so the series are bounded by registrations.
    pub fn forget_cluster(&self, cluster: &str) {
        let labels = ClusterLabels {
            cluster: cluster.to_string(),
        };
        self.cluster_up.remove(&labels);
        self.cluster_replicas.remove(&labels);
        // The write counters of a cluster are few (kind x op x result).
        for kind in crate::model::kinds::Kind::ALL {
            for op in ["create", "apply", "replace", "delete"] {
                for result in ["ok", "skipped", "conflict", "adopted", "error", "abandoned"] {
                    self.cluster_writes.remove(&ClusterWriteLabels {
                        cluster: cluster.to_string(),
                        kind: kind.label(),
                        op,
                        result,
                    });
                }
            }
        }
    }

    pub fn write(&self, kind: crate::model::kinds::Kind, op: &'static str, result: &'static str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.label(),
                op,
                result,
            })
            .inc();
        if let Some((cluster, writes)) = &self.forward {
            writes
                .get_or_create(&ClusterWriteLabels {
                    cluster: cluster.clone(),
                    kind: kind.label(),
                    op,
                    result,
                })
                .inc();
        }
    }

    pub fn encode(&self) -> String {
        let age = self
            .out_of_sync_since
            .lock()
            .expect("lock")
            .map_or(0.0, |t| t.elapsed().as_secs_f64());
        self.oldest_out_of_sync.set(age);
        self.resident_memory.set(resident_bytes().unwrap_or(0));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// VmRSS of /proc/self/status, in bytes.
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 20: what the alerts and the dashboard read.
    #[test]
    fn readiness_age_and_per_target_latency_are_exported() {
        let global = Metrics::new();
        let remote = Metrics::for_cluster("east", &global);
        global.observe_propagation(0.2);
        remote.observe_propagation(0.3);
        global.observe_propagation_to("vault", 0.4);
        global.ready.set(1);
        let text = global.encode();
        for target in ["home", "remote", "vault"] {
            assert!(
                text.contains(&format!(
                    "push_to_k8s_propagation_seconds_count{{target=\"{target}\"}} 1"
                )),
                "{text}"
            );
        }
        assert!(text.contains("push_to_k8s_ready 1"), "{text}");
        assert!(
            text.contains("push_to_k8s_oldest_out_of_sync_seconds 0.0"),
            "{text}"
        );
        assert!(text.contains("push_to_k8s_conflicted_copies 0"), "{text}");
        assert!(text.contains("push_to_k8s_debounce_seconds 0"), "{text}");
        assert!(text.contains("push_to_k8s_write_rate_limit 0"), "{text}");
        let rss: i64 = text
            .lines()
            .find_map(|l| l.strip_prefix("push_to_k8s_resident_memory_bytes "))
            .expect("resident memory is exported")
            .parse()
            .unwrap();
        assert!(rss > 1_000_000, "{rss}");
        let then = std::time::Instant::now() - std::time::Duration::from_secs(90);
        global.set_out_of_sync_since(Some(then));
        let age: f64 = global
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix("push_to_k8s_oldest_out_of_sync_seconds "))
            .expect("the age is exported")
            .parse()
            .unwrap();
        assert!((90.0..100.0).contains(&age), "{age}");
    }
}
