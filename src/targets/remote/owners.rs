//! One API server, one owner: which registered cluster serves which remote
//! API server ([`Owners`], by the server's own identity), and each remote
//! cluster's own gate ([`Pass`]: still registered, answering, owned), asked
//! with the write gate before each request there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// Which registered cluster serves which remote API server, by the
/// server's own identity: the uid of its `kube-system` namespace, read at
/// connect. Two registrations of one server (two names, two URLs) would each
/// take the other's copies for strays and delete them; so the first to own
/// it keeps it and the other is refused (not served, said so). Of two that
/// connect together, before either wrote, the older registration wins.
#[derive(Default)]
pub struct Owners {
    claims: Mutex<HashMap<String, Claim>>,
}

struct Claim {
    cluster: String,
    rank: (i64, String),
    /// It has been asked to write: it keeps the server from now on.
    serving: bool,
}

impl Owners {
    /// Claim the API server `identity` for `cluster`: `Ok`, or the name of
    /// the cluster that owns it.
    pub fn claim(&self, identity: &str, cluster: &str, rank: &(i64, String)) -> Result<(), String> {
        let mut claims = self.claims.lock().expect("lock");
        match claims.get(identity) {
            Some(c) if c.cluster == cluster => Ok(()),
            Some(c) if c.serving || c.rank <= *rank => Err(c.cluster.clone()),
            _ => {
                claims.insert(
                    identity.to_string(),
                    Claim {
                        cluster: cluster.to_string(),
                        rank: rank.clone(),
                        serving: false,
                    },
                );
                Ok(())
            }
        }
    }

    /// May `cluster` write to the API server `identity` now (it owns it)?
    /// From the first yes on, it keeps it against any newcomer.
    pub fn serve(&self, identity: &str, cluster: &str) -> bool {
        match self.claims.lock().expect("lock").get_mut(identity) {
            Some(c) if c.cluster == cluster => {
                c.serving = true;
                true
            }
            _ => false,
        }
    }

    /// `cluster` no longer serves anything (its task ended).
    pub fn release(&self, cluster: &str) {
        self.claims
            .lock()
            .expect("lock")
            .retain(|_, c| c.cluster != cluster);
    }
}

/// A remote cluster's own gate, asked (with the write gate) before each
/// write request there.
pub struct Pass {
    pub(super) cluster: String,
    pub(super) owners: Arc<Owners>,
    /// Fired when the registration is removed or changed.
    stop: CancellationToken,
    /// The API server answered the last probe.
    pub(super) up: AtomicBool,
    /// The API server's identity, once read.
    pub(super) identity: Mutex<Option<String>>,
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("cluster", &self.cluster)
            .field("up", &self.up.load(Ordering::SeqCst))
            .field("stopped", &self.stop.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Pass {
    pub fn new(cluster: &str, owners: Arc<Owners>, stop: CancellationToken) -> Pass {
        Pass {
            cluster: cluster.to_string(),
            owners,
            stop,
            up: AtomicBool::new(false),
            identity: Mutex::new(None),
        }
    }

    /// Open: still registered, the server answers, and we own it.
    pub fn open(&self) -> bool {
        !self.stop.is_cancelled()
            && self.up.load(Ordering::SeqCst)
            && self
                .identity
                .lock()
                .expect("lock")
                .as_deref()
                .is_some_and(|id| self.owners.serve(id, &self.cluster))
    }
}

impl crate::targets::cluster::writer::ClusterPass for Pass {
    fn open(&self) -> bool {
        Pass::open(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Issue 16, item 5: one API server (by its identity) has one owner; a
    // serving owner is never displaced; of two claiming before either
    // served, the older registration wins; a release frees it.
    #[test]
    fn one_api_server_has_one_owner() {
        let owners = Owners::default();
        let (old, new) = ((1, "cluster-a".to_string()), (2, "cluster-b".to_string()));
        assert_eq!(owners.claim("uid-1", "a", &old), Ok(()));
        assert_eq!(owners.claim("uid-1", "a", &old), Ok(()));
        assert_eq!(owners.claim("uid-1", "b", &new), Err("a".into()));
        assert!(!owners.serve("uid-1", "b"));
        assert!(owners.serve("uid-1", "a"));
        // Serving: even an older registration is refused now.
        assert_eq!(
            owners.claim("uid-1", "z", &(0, "x".into())),
            Err("a".into())
        );
        // Another server is another claim.
        assert_eq!(owners.claim("uid-2", "b", &new), Ok(()));
        // Not serving yet: an older registration takes it over, and the
        // younger may not write.
        assert_eq!(owners.claim("uid-2", "c", &old), Ok(()));
        assert!(!owners.serve("uid-2", "b"));
        assert_eq!(owners.claim("uid-2", "b", &new), Err("c".into()));
        owners.release("a");
        assert_eq!(owners.claim("uid-1", "b", &new), Ok(()));
        assert!(owners.serve("uid-1", "b"));
    }

    // Issue 16, item 10: the cluster's gate closes at once when the
    // registration goes, while the server does not answer, and without
    // ownership.
    #[test]
    fn the_pass_is_open_only_while_registered_answering_and_owner() {
        let owners = Arc::new(Owners::default());
        let stop = CancellationToken::new();
        let pass = Pass::new("a", owners.clone(), stop.clone());
        assert!(!pass.open(), "nothing known yet");
        *pass.identity.lock().unwrap() = Some("uid".into());
        pass.up.store(true, Ordering::SeqCst);
        assert!(!pass.open(), "not claimed");
        owners.claim("uid", "a", &(1, "s".into())).unwrap();
        assert!(pass.open());
        pass.up.store(false, Ordering::SeqCst);
        assert!(!pass.open(), "down");
        pass.up.store(true, Ordering::SeqCst);
        assert!(pass.open());
        stop.cancel();
        assert!(!pass.open(), "removed");
    }
}
