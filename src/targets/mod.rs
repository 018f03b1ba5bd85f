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
pub mod rules;
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
                // Copy keys leave early: source keys may still wait.
                metrics.queue_depth.set(batcher.pending() as i64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kinds::Kind;
    use crate::model::records::ObjectKey;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A target that keeps what it is told.
    struct Record(Arc<Mutex<Vec<Batch>>>);

    impl Target for Record {
        fn tell(&self, batch: &Batch) {
            self.0.lock().unwrap().push(batch.clone());
        }
    }

    // A copy's key leaves ahead of the quiet window; the queue depth then
    // still counts the source key that waits (it was set to 0).
    #[tokio::test(start_paused = true)]
    async fn the_queue_depth_counts_what_still_waits_after_a_copy_batch() {
        let (tx, rx) = mpsc::unbounded_channel();
        let told = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(Metrics::new());
        let stop = CancellationToken::new();
        let task = tokio::spawn(batches(
            rx,
            Batcher::new(Duration::from_secs(5), Duration::from_secs(15)),
            FanOut::default().with(Record(told.clone())),
            Arc::new(WriteGate::single(stop.clone())),
            metrics.clone(),
            stop.clone(),
        ));
        tx.send(DirtyKey::Source(Kind::Secret, "db".into()))
            .unwrap();
        tx.send(DirtyKey::Copy(ObjectKey::new(Kind::Secret, "team-a", "db")))
            .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(told.lock().unwrap().len(), 1, "the copy key went ahead");
        assert_eq!(metrics.queue_depth.get(), 1, "the source key waits");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(told.lock().unwrap().len(), 2);
        assert_eq!(metrics.queue_depth.get(), 0);
        stop.cancel();
        task.await.unwrap();
    }
}
