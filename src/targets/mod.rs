//! Where copies go: this cluster's namespaces and each registered cluster
//! (`cluster`, `remote`), and Vault (`vault`).
//!
//! The seam: every target implements [`Target`] and is told each batch of
//! the sources' cluster ([`Batch`]: its keys, and when its first change was
//! seen, so propagation latency counts from the event for every target).
//! [`FanOut`] tells them all; [`batches`] makes the batches. A target keeps
//! what concerns it (a remote cluster and Vault: the sources and
//! "everything"; this cluster's lane: every key) and never waits on
//! another. A fourth target is a folder with a `Target` and one
//! [`FanOut::with`] in the controller.

pub mod cluster;
pub mod remote;
pub mod vault;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::observe::batch::{Batcher, DirtyKey};
use crate::operate::metrics::Metrics;
use crate::write::gate::WriteGate;

/// A batch of dirty keys, and when the first of them was seen.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub keys: Vec<DirtyKey>,
    pub since: Instant,
}

impl Batch {
    /// Only the keys that concern every cluster and Vault: sources and
    /// "everything" (namespace and copy keys belong to one cluster).
    pub fn sources(&self) -> Batch {
        Batch {
            keys: self
                .keys
                .iter()
                .filter(|k| matches!(k, DirtyKey::All | DirtyKey::Source(..)))
                .cloned()
                .collect(),
            since: self.since,
        }
    }
}

/// Where copies go. `tell` never waits: a target takes the batch into its
/// own queue and works on it beside the others.
pub trait Target: Send + Sync {
    fn tell(&self, batch: &Batch);
}

/// Every target, told each batch.
#[derive(Default)]
pub struct FanOut {
    targets: Vec<Box<dyn Target>>,
}

impl FanOut {
    pub fn with(mut self, target: impl Target + 'static) -> FanOut {
        self.targets.push(Box::new(target));
        self
    }

    pub fn tell(&self, batch: &Batch) {
        for target in &self.targets {
            target.tell(batch);
        }
    }
}

/// The sources' cluster's dirty keys (its watches', and its lane's own)
/// batched (quiet window, maximum wait) and each batch handed to `fan_out`,
/// until `stop` fires.
pub async fn batches(
    mut dirty: mpsc::UnboundedReceiver<DirtyKey>,
    mut batcher: Batcher,
    fan_out: FanOut,
    gate: Arc<WriteGate>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut since = Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            // A due batch goes before new keys, so a flood of events cannot
            // push a batch past its maximum wait.
            keys = batcher.ready() => {
                metrics.queue_depth.set(0);
                if gate.leading() {
                    metrics.batch_size.observe(keys.len() as f64);
                }
                fan_out.tell(&Batch { keys, since });
            }
            Some(key) = dirty.recv() => {
                if batcher.pending() == 0 {
                    since = Instant::now();
                }
                batcher.add(key);
                metrics.queue_depth.set(batcher.pending() as i64);
            }
        }
    }
    if batcher.pending() > 0 {
        tracing::info!(
            pending = batcher.pending(),
            "shutting down; pending keys are re-planned at the next start"
        );
    }
}
