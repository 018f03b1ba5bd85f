//! One source namespace that rules name: the same pipeline as the labelled
//! sources' — its own watches (the namespaces, the objects its rules pick,
//! their copies), caches, one batcher whose batches are told to its targets
//! (a writer and one lane serving this cluster; with Vault, its own Vault
//! worker for `spec.vault`) — with the rules deciding what is a source
//! ([`crate::observe::cache::Ruled`]).
//! Ownership between domains is what it is between two installations: a
//! copy whose source is in another namespace is not ours, so a rule and a
//! labelled source wanting one copy name each see the other's copy as a
//! conflict, and neither overwrites it.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use kube::runtime::events::Reporter;
use tokio::sync::{mpsc, watch as tokio_watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::model::kinds::Kind;
use crate::model::records::ReplicaRecord;
use crate::model::vocabulary::RULE_ANNOTATION;
use crate::observe::batch::Batcher;
use crate::observe::batch::DirtyKey;
use crate::observe::cache::{Caches, Ruled};
use crate::observe::watch;
use crate::operate::config::Config;
use crate::operate::http::Health;
use crate::operate::metrics::Metrics;
use crate::targets::FanOut;
use crate::targets::cluster::lane::{Inbox, Inputs, Lane, Told};
use crate::targets::cluster::writer::Writer;
use crate::targets::remote::{self, Sites};
use crate::targets::rules::held;
use crate::targets::vault::entry::Invalid;
use crate::targets::vault::entry::SourceId;
use crate::targets::vault::target::{Book, Sources, Target};
use crate::write::events::Events;
use crate::write::gate::WriteGate;
use crate::write::pace::Pacer;

/// What every domain shares with the controller.
#[derive(Clone)]
pub struct Parts {
    /// The controller's settings (each domain's own has its namespace).
    pub cfg: Config,
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
    pub gate: Arc<WriteGate>,
    pub leading: tokio_watch::Receiver<bool>,
    /// This cluster's one write limiter, shared with the labelled sources' lane.
    pub pacer: Arc<Pacer>,
    pub reporter: Reporter,
    pub shutdown: CancellationToken,
    /// With Vault configured: what each domain's Vault worker shares.
    pub vault: Option<DomainVault>,
    /// The source-cluster stamp copies in registered clusters carry.
    pub stamp: String,
}

/// Does a rule of `rules` name registered clusters (`spec.clusters`)? Then
/// the domain serves them, each with its own lane, as the controller does.
pub fn names_clusters(rules: &Rules) -> bool {
    rules.values().any(|h| {
        h.annotations
            .get(crate::model::vocabulary::CLUSTERS_ANNOTATION)
            .is_some_and(|c| !c.trim().is_empty())
    })
}

/// What a domain's Vault worker (a rule's `spec.vault`) shares with the
/// labelled sources': the cluster stamp, Vault's one request limiter, and
/// the process's health (Vault degraded).
#[derive(Clone)]
pub struct DomainVault {
    pub stamp: String,
    pub pacer: Arc<Pacer>,
    pub health: Arc<Health>,
}

/// A domain's Vault worker: told its sources' changes; the entries it knows.
struct VaultWorker {
    known: Arc<RwLock<BTreeSet<SourceId>>>,
    /// Sources of rules no longer held: their entries are forgotten.
    dropped: Arc<std::sync::Mutex<BTreeSet<SourceId>>>,
}

/// A domain's Vault book: its sources as labelled sources' are, except that
/// a source whose rule is no longer held (missing from a listing, or
/// orphaning) is forgotten, never deleted: while the cache still has it
/// (it names a rule not held), and after (it was recorded as dropped when
/// its rule went).
struct RuleSources {
    sources: Sources,
    rules: Arc<RwLock<Rules>>,
    dropped: Arc<std::sync::Mutex<BTreeSet<SourceId>>>,
}

impl Book for RuleSources {
    type Id = SourceId;

    fn wanting(&self) -> Vec<SourceId> {
        self.sources.wanting()
    }

    fn desired(
        &self,
        id: &SourceId,
    ) -> Result<Option<crate::targets::vault::entry::Desired>, (String, Invalid)> {
        self.sources.desired(id)
    }

    fn keep_entries(&self, id: &SourceId) -> Option<String> {
        self.sources.keep_entries(id)
    }

    fn event_ref(&self, id: &SourceId) -> Option<k8s_openapi::api::core::v1::ObjectReference> {
        self.sources.event_ref(id)
    }

    fn forgotten(&self, id: &SourceId) -> bool {
        let mut dropped = self.dropped.lock().expect("lock");
        let rule = self
            .sources
            .caches
            .of(id.kind)
            .sources
            .get(&id.name)
            .and_then(|s| s.annotations.get(RULE_ANNOTATION).cloned());
        match rule {
            Some(rule) if self.rules.read().expect("lock").contains_key(&rule) => {
                dropped.remove(id);
                false
            }
            Some(_) => true,
            None => dropped.contains(id),
        }
    }
}

pub use crate::targets::rules::held::Rules;

/// A running domain.
pub struct Domain {
    pub namespace: String,
    pub rules: Arc<RwLock<Rules>>,
    pub caches: Arc<Caches>,
    pub writer: Arc<Writer>,
    cfg: Config,
    health: Arc<Health>,
    dirty: mpsc::UnboundedSender<DirtyKey>,
    vault: Option<VaultWorker>,
    /// Serving registered clusters: each one's caches while served.
    sites: Option<Sites>,
    watchers: Vec<JoinHandle<()>>,
    lane: JoinHandle<()>,
    stop: CancellationToken,
}

impl Domain {
    /// Start serving the rules of `namespace`.
    pub fn spawn(parts: &Parts, namespace: &str, rules: Rules) -> Domain {
        let mut cfg = parts.cfg.clone();
        cfg.namespace = namespace.to_string();
        // The picked objects are watched (not left to the resync).
        cfg.enable_secret_watcher = true;
        let kinds = cfg.kinds();
        let rules = Arc::new(RwLock::new(rules));
        let caches = Arc::new(Caches::for_kinds(&kinds, &kinds).ruled_by(ruled(rules.clone())));
        let stop = parts.shutdown.child_token();
        let health = Arc::new(Health::new(cfg.ready_watch_failure));
        let (dirty, dirty_rx) = mpsc::unbounded_channel();
        let events = Arc::new(Events::new(
            parts.client.clone(),
            parts.reporter.clone(),
            namespace.to_string(),
            parts.gate.clone(),
        ));
        // As the controller's pipeline: the watches' keys and the lane's own
        // are batched once, and each batch is told to every target — the
        // lane, and with Vault the domain's Vault worker.
        let told = Arc::new(Told::default());
        let mut fan_out = FanOut::default().with(Inbox(told.clone()));
        let vault =
            spawn_vault(parts, &cfg, &rules, &caches, &events, &stop).map(|(worker, handle)| {
                fan_out = std::mem::take(&mut fan_out).with(handle);
                worker
            });
        // ... and, when a rule names clusters, the registered clusters
        // (registrations read from the controller's namespace only).
        let sites = names_clusters(&rules.read().expect("lock")).then(|| {
            let sites = Sites::default();
            let shared = remote::Shared {
                cfg: cfg.clone(),
                ctx: crate::write::Context {
                    caches: caches.clone(),
                    gate: parts.gate.clone(),
                    events: events.clone(),
                    metrics: parts.metrics.clone(),
                    health: health.clone(),
                },
                leading: parts.leading.clone(),
                stamp: parts.stamp.clone(),
                registrations: parts.cfg.namespace.clone(),
                sites: sites.clone(),
            };
            let handle = remote::spawn(shared, parts.client.clone(), stop.clone());
            fan_out = std::mem::take(&mut fan_out).with(handle);
            sites
        });
        tokio::spawn(crate::targets::batches(
            dirty_rx,
            Batcher::new(cfg.debounce, cfg.max_wait),
            fan_out,
            parts.gate.clone(),
            parts.metrics.clone(),
            stop.clone(),
        ));
        let writer = Arc::new(
            Writer::new(
                parts.client.clone(),
                namespace.to_string(),
                parts.pacer.clone(),
                events,
                parts.metrics.clone(),
                caches.clone(),
                parts.gate.clone(),
            )
            .sweeping_apart(),
        );
        let lane = Lane {
            cfg: cfg.clone(),
            kinds: kinds.clone(),
            source_kinds: kinds,
            remote: None,
            client: parts.client.clone(),
            caches: caches.clone(),
            writer: writer.clone(),
            metrics: parts.metrics.clone(),
            health: health.clone(),
            gate: parts.gate.clone(),
            pass: None,
            // Its own keys join the batch it is told.
            upstream: Some(dirty.clone()),
        };
        let (_, no_keys) = mpsc::unbounded_channel();
        let inputs = Inputs {
            dirty: no_keys,
            told,
            leading: parts.leading.clone(),
            back: None,
            stop: stop.clone(),
        };
        let lane = tokio::spawn(lane.run(inputs));
        let mut domain = Domain {
            namespace: namespace.to_string(),
            rules,
            caches,
            writer,
            cfg,
            health,
            dirty,
            vault,
            sites,
            watchers: Vec::new(),
            lane,
            stop,
        };
        domain.watch(parts);
        domain
    }

    /// (Re)start the watches: each lists first, so objects the rules pick now
    /// (or no longer pick) and copies of rules held now become dirty keys.
    fn watch(&mut self, parts: &Parts) {
        for w in self.watchers.drain(..) {
            w.abort();
        }
        let kinds = self.cfg.kinds();
        self.watchers = watch::spawn_all(
            parts.client.clone(),
            &watch::Watched {
                source_namespace: &self.namespace,
                stamp: None,
                kinds: &kinds,
                sources: &kinds,
            },
            self.caches.clone(),
            &watch::Context {
                dirty: self.dirty.clone(),
                metrics: parts.metrics.clone(),
                health: self.health.clone(),
                shutdown: self.stop.clone(),
            },
        );
    }

    /// The rules of this namespace changed: hold the new ones, and read the
    /// namespace again with them.
    pub fn set_rules(&mut self, parts: &Parts, rules: Rules) {
        if *self.rules.read().expect("lock") == rules {
            return;
        }
        // A rule no longer held (missing, orphaning): the Vault entries of
        // its sources are forgotten, never deleted ([`RuleSources`]).
        if let Some(v) = &self.vault {
            let mut dropped = v.dropped.lock().expect("lock");
            for kind in Kind::ALL {
                self.caches.of(kind).sources.read(|all| {
                    for (name, s) in all {
                        if s.annotations
                            .get(RULE_ANNOTATION)
                            .is_some_and(|r| !rules.contains_key(r))
                        {
                            dropped.insert(SourceId {
                                kind,
                                name: name.clone(),
                            });
                        }
                    }
                });
            }
        }
        // The copies of a rule no longer held here are forgotten at once,
        // before anything is planned: were they kept until the watches list
        // again, the plan could see them without a source and delete them
        // (absence, Orphan and a CRD going must never delete).
        for kind in Kind::ALL {
            let cache = &self.caches.of(kind).replicas;
            let gone: Vec<_> = cache.read(|all| {
                all.iter()
                    .filter(|(_, r)| {
                        r.annotations
                            .get(RULE_ANNOTATION)
                            .is_none_or(|rule| !rules.contains_key(rule))
                    })
                    .map(|(k, _)| k.clone())
                    .collect()
            });
            for k in gone {
                cache.set(k, None);
            }
        }
        *self.rules.write().expect("lock") = rules;
        self.watch(parts);
    }

    /// The copies the domain knows of `rule` (of every kind), here and in
    /// every registered cluster it serves.
    pub fn copies_of(&self, rule: &str) -> usize {
        let count = |caches: &Caches| -> usize {
            Kind::ALL
                .iter()
                .map(|&kind| {
                    caches.of(kind).replicas.read(|all| {
                        all.values()
                            .filter(|r: &&ReplicaRecord| {
                                r.annotations.get(RULE_ANNOTATION).map(String::as_str) == Some(rule)
                            })
                            .count()
                    })
                })
                .sum()
        };
        let remote: usize = self.sites.as_ref().map_or(0, |sites| {
            sites.lock().expect("lock").values().map(|c| count(c)).sum()
        });
        count(&self.caches) + remote
    }

    /// Must the domain start again to serve `rules`? When they name
    /// clusters and it serves none; and, serving clusters, when a rule it
    /// holds is no longer held: each cluster's caches would still hold that
    /// rule's copies there (only this cluster's are forgotten in place), and
    /// starting again lists them without (never deleting them).
    pub fn restart_for(&self, rules: &Rules) -> bool {
        if self.sites.is_none() {
            return names_clusters(rules);
        }
        self.rules
            .read()
            .expect("lock")
            .keys()
            .any(|name| !rules.contains_key(name))
    }

    /// Vault entries of `rule`'s sources not deleted yet: entries the
    /// domain's Vault worker knows whose source is gone or still picked by
    /// `rule` (being deleted, it picks nothing once the watches relist).
    pub fn vault_entries_of(&self, rule: &str) -> usize {
        let Some(v) = &self.vault else {
            return 0;
        };
        v.known
            .read()
            .expect("lock")
            .iter()
            .filter(|id| {
                self.caches
                    .of(id.kind)
                    .sources
                    .get(&id.name)
                    .is_none_or(|s| {
                        s.annotations.get(RULE_ANNOTATION).map(String::as_str) == Some(rule)
                    })
            })
            .count()
    }

    /// Its settings (its source namespace).
    pub fn cfg(&self) -> &Config {
        &self.cfg
    }

    /// Changes so far to what its rules' statuses are computed from (its
    /// caches and known conflicts): the same number means the same statuses.
    pub fn generation(&self) -> u64 {
        let kinds: u64 = Kind::ALL
            .iter()
            .map(|&k| {
                let of = self.caches.of(k);
                of.sources.generation() + of.replicas.generation()
            })
            .sum();
        let conflicts = self.writer.conflicts.lock().expect("lock").len() as u64;
        kinds + self.caches.namespaces.generation() + (conflicts << 40)
    }

    /// Whether its caches have listed (before, nothing is known of its copies).
    pub fn synced(&self) -> bool {
        self.caches.synced()
    }

    /// Stop its lane and watches (its copies are left as they are).
    pub fn stop(self) {
        self.stop.cancel();
        for w in self.watchers {
            w.abort();
        }
        drop(self.lane);
    }
}

/// How a domain reads its namespace: an object is a source as the rule that
/// picks it says; a copy is its own if it names a rule held here.
pub fn ruled(rules: Arc<RwLock<Rules>>) -> Ruled {
    let owns = rules.clone();
    Ruled {
        source: Box::new(move |kind, meta| {
            let rules = rules.read().expect("lock");
            held::picker(rules.values(), kind, meta).map(|h| held::as_source(h, meta))
        }),
        owns: Box::new(move |meta| {
            held::rule_of(meta).is_some_and(|r| owns.read().expect("lock").contains_key(r))
        }),
    }
}

/// The domain's Vault worker, when Vault is configured: its rules' sources
/// with `spec.vault` are written as labelled sources' are (the same
/// [`Sources`] book over the domain's caches, entries naming
/// `<namespace>/<name>`); never adopting.
fn spawn_vault(
    parts: &Parts,
    cfg: &Config,
    rules: &Arc<RwLock<Rules>>,
    caches: &Arc<Caches>,
    events: &Arc<Events>,
    stop: &CancellationToken,
) -> Option<(VaultWorker, crate::targets::vault::Handle)> {
    let (vault_cfg, shared) = (cfg.vault.as_ref()?, parts.vault.as_ref()?);
    let store = match crate::targets::vault::client_for(vault_cfg) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(namespace = %cfg.namespace, error = %e, "no Vault worker for this rule namespace");
            return None;
        }
    };
    let gate = parts.gate.clone();
    store.resend_only_while(move || gate.open());
    let dropped = Arc::default();
    let book = RuleSources {
        sources: Sources {
            caches: caches.clone(),
            events: events.clone(),
            source_namespace: cfg.namespace.clone(),
            kinds: cfg.kinds(),
            allow_adoption: false,
        },
        rules: rules.clone(),
        dropped: Arc::clone(&dropped),
    };
    let ctx = crate::write::Context {
        caches: caches.clone(),
        gate: parts.gate.clone(),
        events: events.clone(),
        metrics: parts.metrics.clone(),
        health: shared.health.clone(),
    };
    let settings = crate::targets::vault::settings(vault_cfg, cfg, &shared.stamp);
    let target = Target::new(store, settings, book, ctx).pacing_with(shared.pacer.clone());
    let known = target.known_ids();
    let (work, rx) = mpsc::unbounded_channel();
    tokio::spawn(target.run(rx, parts.leading.clone(), stop.clone()));
    let handle = crate::targets::vault::Handle::new(work, parts.gate.clone(), shared.pacer.clone());
    Some((VaultWorker { known, dropped }, handle))
}
