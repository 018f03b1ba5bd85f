//! The Vault KV v2 target (DESIGN §7, docs/vault.md): sources annotated
//! with a Vault path are also written to Vault, with the ownership rules of
//! a namespace copy. `entry` holds the pure rules, `client` the requests,
//! `target` the worker that runs beside the namespace control loop.

pub mod client;
pub mod entry;
pub mod target;
pub mod workloads;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::observe::batch::DirtyKey;
use crate::operate::config::{Config, VaultAuth, VaultConfig};
use crate::write::Context;
use crate::write::gate::WriteGate;
use entry::SourceId;
use target::{Target, Work};

/// The fan-out's handle on the Vault worker.
pub struct Handle {
    work: mpsc::UnboundedSender<Work>,
    gate: Arc<WriteGate>,
    /// The worker's request limiter, shared with the workloads' worker.
    pub pacer: Arc<crate::write::pace::Pacer>,
}

impl Handle {
    /// The handle on a worker fed by `work` (a rule namespace's own).
    pub fn new(
        work: mpsc::UnboundedSender<Work>,
        gate: Arc<WriteGate>,
        pacer: Arc<crate::write::pace::Pacer>,
    ) -> Handle {
        Handle { work, gate, pacer }
    }
}

impl crate::targets::Target for Handle {
    /// Forward a batch: its sources (and "everything") concern Vault;
    /// namespace and copy keys do not. A standby forwards nothing (the
    /// worker plans everything when this instance leads).
    fn tell(&self, batch: &crate::targets::Batch) {
        if !self.gate.leading() {
            return;
        }
        let mut ids = Vec::new();
        for key in &batch.keys {
            match key {
                DirtyKey::All => {
                    let _ = self.work.send(Work::All);
                }
                DirtyKey::Source(kind, name) => ids.push(SourceId {
                    kind: *kind,
                    name: name.clone(),
                }),
                _ => {}
            }
        }
        if !ids.is_empty() {
            let _ = self.work.send(Work::Sources(ids, batch.since.into_std()));
        }
    }
}

/// Start the Vault worker, stamping its entries with `cluster` (the
/// source-cluster stamp: `CLUSTER_NAME`, or the source namespace's uid).
/// It logs in lazily: a Vault that is down at start
/// delays nothing else.
pub fn spawn(
    vault: &VaultConfig,
    cfg: &Config,
    cluster: &str,
    ctx: &Context,
    leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
) -> Result<Handle, client::Error> {
    let store = client_for(vault)?;
    let resend_gate = ctx.gate.clone();
    store.resend_only_while(move || resend_gate.open());
    let (tx, rx) = mpsc::unbounded_channel();
    let settings = settings(vault, cfg, cluster);
    tracing::info!(addr = %vault.addr, mount = %vault.kv_mount, "Vault target on");
    let book = target::Sources {
        caches: ctx.caches.clone(),
        events: ctx.events.clone(),
        source_namespace: cfg.namespace.clone(),
        kinds: cfg.source_kinds(),
        allow_adoption: cfg.allow_adoption,
    };
    let worker = Target::new(store, settings, book, ctx.clone());
    let pacer = worker.pacer();
    tokio::spawn(worker.run(rx, leading, shutdown));
    Ok(Handle {
        work: tx,
        gate: ctx.gate.clone(),
        pacer,
    })
}

/// A worker's settings: entries stamped with `cluster`.
pub fn settings(vault: &VaultConfig, cfg: &Config, cluster: &str) -> target::Settings {
    target::Settings {
        source_namespace: cfg.namespace.clone(),
        cluster: cluster.to_owned(),
        kv_mount: vault.kv_mount.clone(),
        rate: vault.rate_limit,
        check_interval: vault.check_interval,
    }
}

/// The client for `vault`'s settings (no I/O; a CA file that does not parse
/// is an error).
pub fn client_for(vault: &VaultConfig) -> Result<client::VaultClient, client::Error> {
    let auth = match &vault.auth {
        VaultAuth::Kubernetes {
            mount,
            role,
            jwt_path,
        } => client::Auth::Kubernetes {
            mount: mount.clone(),
            role: role.clone(),
            jwt_path: jwt_path.clone(),
        },
        VaultAuth::TokenFile(path) => client::Auth::TokenFile(path.clone()),
    };
    client::VaultClient::new(client::Settings {
        addr: vault.addr.clone(),
        auth,
        ca_cert: vault.ca_cert.clone(),
        kv_mount: vault.kv_mount.clone(),
        timeout: REQUEST_TIMEOUT,
    })
}

/// Longest a single Vault request may take.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl From<client::Metadata> for entry::Observed {
    fn from(m: client::Metadata) -> entry::Observed {
        entry::Observed {
            current_version: m.current_version,
            custom: m.custom,
            current_deleted: m.current_deleted,
        }
    }
}

/// The real Vault behind the worker.
impl target::Store for client::VaultClient {
    type Error = client::Error;

    async fn read_metadata(&self, path: &str) -> Result<Option<entry::Observed>, client::Error> {
        Ok(client::VaultClient::read_metadata(self, path)
            .await?
            .map(entry::Observed::from))
    }

    async fn write_metadata(
        &self,
        path: &str,
        custom: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), client::Error> {
        client::VaultClient::write_metadata(self, path, custom).await
    }

    async fn write_data(
        &self,
        path: &str,
        data: &std::collections::BTreeMap<String, String>,
        cas: u64,
    ) -> Result<u64, client::Error> {
        client::VaultClient::write_data(self, path, data, cas).await
    }

    async fn read_data(
        &self,
        path: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, client::Error> {
        Ok(client::VaultClient::read_data(self, path)
            .await?
            .map(|(data, _)| data))
    }

    async fn delete_all(&self, path: &str) -> Result<(), client::Error> {
        client::VaultClient::delete_all(self, path).await
    }

    async fn ensure_login(&self) -> Result<(), client::Error> {
        client::VaultClient::ensure_login(self).await
    }

    fn classify(error: &client::Error) -> target::Failure {
        match error {
            client::Error::CasMismatch => target::Failure::CasMismatch,
            client::Error::Login(_) => target::Failure::Login,
            client::Error::GateClosed => target::Failure::Gate,
            e if e.is_retryable() => target::Failure::Unreachable,
            _ => target::Failure::Refused,
        }
    }

    fn reason(error: &client::Error) -> &'static str {
        error.reason()
    }

    fn logins(&self) -> u64 {
        client::VaultClient::logins(self)
    }
}
