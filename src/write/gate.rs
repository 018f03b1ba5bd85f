//! The write gate: every write request (and every Event) of every target
//! asks [`WriteGate`] right before it is sent; it is open only while this
//! instance leads (holds the Lease, [`crate::operate::lease`]) and the
//! process is not shutting down. Per copy, whether a planned write may go in
//! this flush is the cluster lane's admission
//! (`crate::targets::cluster::admit`).

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Open only while this instance leads and is not shutting down.
pub struct WriteGate {
    leading: watch::Receiver<bool>,
    shutdown: CancellationToken,
}

impl WriteGate {
    pub fn new(leading: watch::Receiver<bool>, shutdown: CancellationToken) -> WriteGate {
        WriteGate { leading, shutdown }
    }

    /// A gate for a single instance without leader election: open until shutdown.
    pub fn single(shutdown: CancellationToken) -> WriteGate {
        let (tx, rx) = watch::channel(true);
        // The receiver keeps the last value after the sender is gone.
        drop(tx);
        WriteGate::new(rx, shutdown)
    }

    pub fn open(&self) -> bool {
        *self.leading.borrow() && !self.shutdown.is_cancelled()
    }

    pub fn leading(&self) -> bool {
        *self.leading.borrow()
    }
}
