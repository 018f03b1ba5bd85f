//! `push-to-k8s status` and `push-to-k8s plan`: one read-only look at the
//! configured cluster through the daemon's own start-up, then its planner.
//!
//! The same steps as a starting controller, minus every write: the source
//! namespace must exist ([`controller::preflight`]); one
//! [`resync::relist`] fills fresh caches (the tracked descriptions the
//! watches use); the start-up conflict LISTs ([`conflicts::at_start`]) find
//! unmanaged objects in the way; then [`plan::plan`] plans everything
//! ([`DirtyKey::All`], as at start) per kind, and [`crate::inspect::report`]
//! classifies its actions. No watch, no write, no Event: it needs `get` and
//! `list` on namespaces, Secrets and ConfigMaps, and `list` on PushRules
//! where their CRD is installed, nothing else.
//!
//! Not taken into account, because only a running controller knows them:
//! copies held back by a retry backoff or a fight (they are planned here as
//! at a restart), and copies a webhook changed as we wrote them (shown as
//! stale, as a restarted controller would repair them once).

pub mod report;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams};

use crate::controller;
use crate::decide::plan::{self, World};
use crate::inspect::report::{ClusterStatus, Report, VaultStatus};
use crate::model::records::ObjectKey;
use crate::model::rules::Scope;
use crate::observe::batch::DirtyKey;
use crate::observe::cache::{Caches, KindCaches};
use crate::observe::resync;
use crate::operate::api_errors::describe as describe_error;
use crate::operate::cli::{Command, Output};
use crate::operate::config::Config;
use crate::operate::demo;
use crate::operate::metrics::Metrics;
use crate::targets::cluster::conflicts;

/// Exit status of `status` when something is not in sync.
pub const NOT_IN_SYNC: u8 = 1;
/// Exit status for a bad setting (as the controller's) or bad usage.
pub const BAD_SETTING: u8 = 2;
/// Exit status when the cluster could not be read: nothing is known.
pub const UNREADABLE: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Client(#[from] demo::Error),
    #[error("{0}")]
    Start(#[from] controller::Error),
    #[error("cannot list namespaces, Secrets and ConfigMaps (needs get and list on them): {0}")]
    List(String),
    /// The PushRule CRD is installed and its rules cannot be listed.
    #[error(
        "cannot list PushRules (needs list on pushrules.push-to-k8s.io; ENABLE_PUSH_RULES=false leaves them out): {0}"
    )]
    Rules(String),
}

impl Error {
    /// 2 for a setting the user must fix (as the controller), 3 otherwise.
    pub fn exit_code(&self) -> u8 {
        let setting = match self {
            Error::Client(e) => e.exit_code() == 2,
            Error::Start(e) => e.exit_code() == 2,
            Error::List(_) | Error::Rules(_) => false,
        };
        if setting { BAD_SETTING } else { UNREADABLE }
    }
}

/// Run `status` or `plan` against the configured cluster; the exit status.
pub async fn run(cfg: &Config, command: &Command) -> u8 {
    let report = match look(cfg).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("push-to-k8s: {e}");
            return e.exit_code();
        }
    };
    let (text, code) = match *command {
        Command::Status { verbose, output } => {
            let text = match output {
                Output::Text => report.status_text(verbose),
                Output::Json => report.status_json(verbose),
            };
            (text, if report.in_sync() { 0 } else { NOT_IN_SYNC })
        }
        Command::Plan { output } => {
            let text = match output {
                Output::Text => report.plan_text(),
                Output::Json => report.plan_json(),
            };
            (text, 0)
        }
        Command::Daemon | Command::Help => unreachable!("not an inspection: {command:?}"),
    };
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
    code
}

/// Read the cluster (read only) and plan everything, per enabled kind.
pub async fn look(cfg: &Config) -> Result<Report, Error> {
    let client = demo::configured_client(cfg).await?;
    inspect(&client, cfg).await
}

/// [`look`] with a given client.
pub async fn inspect(client: &kube::Client, cfg: &Config) -> Result<Report, Error> {
    let namespace_uid = controller::preflight(client, cfg).await?;
    let (kinds, source_kinds) = (cfg.kinds(), cfg.source_kinds());
    let caches = Caches::for_kinds(&kinds, &source_kinds);
    // Not exported anywhere: the daemon's pieces count into it.
    let metrics = Metrics::new();
    resync::relist(
        client,
        (&cfg.namespace, None),
        &kinds,
        &source_kinds,
        &caches,
        &metrics,
    )
    .await
    .map_err(|e| Error::List(describe_error(&e)))?;
    let scope = Scope {
        source_namespace: &cfg.namespace,
        exclude_label: cfg.exclude_namespace_label.as_deref(),
        protected: &cfg.protected_namespaces,
        require_consent: cfg.require_namespace_consent,
        cluster: None,
        stamp: None,
    };
    let mut report = Report::new(&cfg.namespace);
    let found = (client, cfg.allow_adoption, &metrics);
    plan_kinds(&caches, &kinds, &scope, found, |world, plan| {
        report.add(world, &scope, plan)
    })
    .await;
    let stamp = cfg.cluster_name.clone().unwrap_or(namespace_uid);
    if let Some(vault) = &cfg.vault {
        report.vault = look_at_vault(vault, cfg, &caches, &stamp).await?;
    }
    report.clusters = look_at_clusters(client, cfg, &caches, &stamp, &metrics).await?;
    report.rules = look_at_rules(client, cfg, &stamp, &metrics).await?;
    Ok(report)
}

/// Each source namespace PushRules name, read and planned as the daemon's
/// pipeline for it would at its start (the rules held alike,
/// [`crate::targets::rules::held::hold_all`]), with the Vault entries of
/// sources whose rule has `spec.vault`. Without the CRD: none.
async fn look_at_rules(
    client: &kube::Client,
    cfg: &Config,
    stamp: &str,
    metrics: &Metrics,
) -> Result<Vec<Report>, Error> {
    use crate::model::pushrule::PushRule;
    use crate::targets::rules::{domain, held};
    if !cfg.enable_push_rules {
        return Ok(Vec::new());
    }
    let api: Api<PushRule> = Api::all(client.clone());
    let rules = match api.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Vec::new()),
        Err(e) => return Err(Error::Rules(describe_error(&e))),
    };
    let (per_namespace, _) = held::hold_all(&rules, &cfg.namespace);
    let kinds = cfg.kinds();
    let mut out = Vec::new();
    for (ns, held) in per_namespace {
        let mut there = cfg.clone();
        there.namespace = ns.clone();
        // Rules never adopt (their copies, or Vault entries).
        there.allow_adoption = false;
        let ruled = domain::ruled(std::sync::Arc::new(std::sync::RwLock::new(held)));
        let caches = Caches::for_kinds(&kinds, &kinds).ruled_by(ruled);
        resync::relist(client, (&ns, None), &kinds, &kinds, &caches, metrics)
            .await
            .map_err(|e| Error::List(describe_error(&e)))?;
        let scope = crate::targets::cluster::lane::scope(&there, None);
        let mut report = Report::new(&ns);
        plan_kinds(
            &caches,
            &kinds,
            &scope,
            (client, false, metrics),
            |world, plan| report.add(world, &scope, plan),
        )
        .await;
        if let Some(vault) = &cfg.vault {
            report.vault = look_at_vault(vault, &there, &caches, stamp).await?;
        }
        out.push(report);
    }
    Ok(out)
}

/// Each registered remote cluster, read and planned as the daemon's task
/// for it would at its start; and each cluster a source names that no
/// Secret registers (its copies, if any, are no longer managed).
async fn look_at_clusters(
    client: &kube::Client,
    cfg: &Config,
    caches: &Caches,
    stamp: &str,
    metrics: &Metrics,
) -> Result<Vec<ClusterStatus>, Error> {
    use crate::model::vocabulary::CLUSTER_LABEL;
    use crate::targets::remote::{self, Registration};
    let api: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let listed = api
        .list(&ListParams::default().labels(CLUSTER_LABEL))
        .await
        .map_err(|e| Error::List(describe_error(&e)))?;
    let listed: BTreeMap<String, Registration> = listed
        .items
        .iter()
        .filter_map(Registration::read)
        .map(|r| (r.secret.clone(), r))
        .collect();
    let (registered, _) = remote::choose(&listed, &std::collections::BTreeMap::new());
    let kinds = cfg.kinds();
    let mut out = Vec::new();
    for (name, registration) in &registered {
        let mut status = ClusterStatus::served(name);
        let remote_client = match &registration.kubeconfig {
            Ok(k) => remote::kubeconfig::client(k.clone()).await,
            Err(refused) => Err(refused.clone()),
        };
        let remote_client = match remote_client {
            Ok(c) => c,
            Err(refused) => {
                status.state = "refused";
                status.note = refused.to_string();
                out.push(status);
                continue;
            }
        };
        let there = caches.sharing_sources(&kinds);
        let listed = resync::relist(
            &remote_client,
            (&cfg.namespace, Some(stamp)),
            &kinds,
            &[],
            &there,
            metrics,
        )
        .await;
        if let Err(e) = listed {
            status.state = "unreachable";
            status.note = describe_error(&e);
            out.push(status);
            continue;
        }
        let scope = Scope {
            source_namespace: &cfg.namespace,
            exclude_label: cfg.exclude_namespace_label.as_deref(),
            protected: &cfg.protected_namespaces,
            require_consent: cfg.require_namespace_consent,
            cluster: Some(name),
            stamp: Some(stamp),
        };
        let found = (&remote_client, false, metrics);
        plan_kinds(&there, &kinds, &scope, found, |world, plan| {
            status.add(world, &scope, plan)
        })
        .await;
        out.push(status);
    }
    // Named by a source, registered by nothing.
    let mut unregistered: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for kind in cfg.source_kinds() {
        caches.of(kind).sources.read(|sources| {
            for (source, rec) in sources {
                let Ok(rules) = plan::rules(rec) else {
                    continue;
                };
                for cluster in rules.named_clusters() {
                    if !registered.contains_key(cluster) {
                        let by = unregistered.entry(cluster.to_string()).or_default();
                        by.push(format!("{} {source}", kind.name()));
                    }
                }
            }
        });
    }
    for (cluster, by) in unregistered {
        let mut status = ClusterStatus::served(&cluster);
        status.state = "not-registered";
        status.note = format!(
            "cluster {cluster} is not registered: its copies there, if any, are no longer managed (named by {})",
            by.join(", ")
        );
        out.push(status);
    }
    Ok(out)
}

/// Read the metadata of each source's Vault entry (read only) and classify
/// it by the worker's own step ([`entry::step`]).
async fn look_at_vault(
    vault: &crate::operate::config::VaultConfig,
    cfg: &Config,
    caches: &Caches,
    cluster: &str,
) -> Result<Vec<VaultStatus>, Error> {
    use crate::targets::vault::entry::{self, SourceId, Us};
    let client = crate::targets::vault::client_for(vault)
        .map_err(|e| Error::Start(controller::Error::Vault(e.to_string())))?;
    let mut out = Vec::new();
    for kind in cfg.source_kinds() {
        // Only the sources with a Vault path (the others hold no entry).
        let sources: Vec<(String, crate::model::records::SourceRecord)> =
            caches.of(kind).sources.read(|s| {
                s.iter()
                    .filter(|(_, r)| {
                        r.annotations
                            .contains_key(crate::model::vocabulary::PATH_ANNOTATION)
                    })
                    .map(|(n, r)| (n.clone(), r.clone()))
                    .collect()
            });
        for (name, rec) in sources {
            let annotated = &rec.annotations[crate::model::vocabulary::PATH_ANNOTATION];
            let mut status = VaultStatus {
                kind: kind.name(),
                source: name.clone(),
                path: format!("{}/{}", vault.kv_mount, annotated.trim()),
                state: "refused",
                note: String::new(),
            };
            match entry::desired(&rec, cfg.allow_adoption) {
                Err(invalid) => status.note = invalid.to_string(),
                Ok(None) => continue,
                Ok(Some(desired)) => match client.read_metadata(&desired.path).await {
                    Err(e) => {
                        status.state = "unreadable";
                        status.note = e.to_string();
                    }
                    Ok(meta) => {
                        let observed = meta.map(entry::Observed::from);
                        let id = SourceId { kind, name };
                        let us = Us {
                            namespace: &cfg.namespace,
                            cluster,
                        };
                        let step = entry::step(&desired, observed.as_ref(), us, &id);
                        (status.state, status.note) = VaultStatus::state_of(&step);
                    }
                },
            }
            out.push(status);
        }
    }
    Ok(out)
}

/// Plan everything of `kind` in `caches` (as at a start) and hand the
/// world and the plan to `take`.
/// Plan every kind of `caches` as a lane's start would: the start-up
/// conflict scan (`found`: the client it lists with, whether adoption is
/// allowed, the metrics it counts into), then the plan, handed to `take`.
async fn plan_kinds(
    caches: &Caches,
    kinds: &[crate::model::kinds::Kind],
    scope: &Scope<'_>,
    (client, allow_adoption, metrics): (&kube::Client, bool, &Metrics),
    mut take: impl FnMut(&World<'_>, plan::Plan),
) {
    for &kind in kinds {
        let of = caches.of(kind);
        let found = conflicts::at_start(
            client,
            of,
            &caches.namespaces,
            scope,
            allow_adoption,
            metrics,
        )
        .await;
        let known = conflict_keys(of, &found);
        World::of(caches, kind, &known, &HashMap::new(), |world| {
            let plan = plan::plan(world, scope, &[DirtyKey::All]);
            take(world, plan)
        });
    }
}

/// The copies the start-up LISTs found blocked (source → namespaces), as
/// the daemon records them: by the copy's name.
fn conflict_keys(of: &KindCaches, found: &BTreeMap<String, Vec<String>>) -> HashSet<ObjectKey> {
    let mut keys = HashSet::new();
    for (source, namespaces) in found {
        if let Some(rec) = of.sources.get(source) {
            keys.extend(
                namespaces
                    .iter()
                    .map(|ns| ObjectKey::new(of.kind, ns, &rec.replica.name)),
            );
        }
    }
    keys
}
