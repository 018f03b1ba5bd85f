//! Per-copy retries with exponential backoff (the shape of kubert's
//! `requeue.rs`: a `DelayQueue` plus a key map, so a repeated key moves its
//! deadline instead of queueing twice).
//!
//! A copy whose write failed waits here; while it waits, flushes leave it
//! alone (the backoff holds); when it is due, only that copy is re-planned
//! ([`crate::observe::batch::DirtyKey::Copy`]). A success forgets the copy, and so does
//! [`RetryQueue::retain`] when the copy or its source goes away.

use std::collections::HashMap;
use std::future::poll_fn;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::time::{DelayQueue, delay_queue};

use crate::model::records::ObjectKey;

pub const FIRST_DELAY: Duration = Duration::from_secs(2);
pub const MAX_DELAY: Duration = Duration::from_secs(300);

struct Entry {
    queued: Option<delay_queue::Key>,
    attempts: u32,
    due: Instant,
    /// When it first failed (kept across attempts, for its age).
    since: Instant,
}

/// Keyed by a copy ([`ObjectKey`]) for namespaces, by a source for Vault.
pub struct RetryQueue<K = ObjectKey> {
    queue: DelayQueue<K>,
    entries: HashMap<K, Entry>,
}

impl<K> Default for RetryQueue<K> {
    fn default() -> Self {
        RetryQueue {
            queue: DelayQueue::new(),
            entries: HashMap::new(),
        }
    }
}

/// 2 s, 4 s, 8 s ... at most [`MAX_DELAY`].
pub fn backoff(attempts: u32) -> Duration {
    FIRST_DELAY
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(MAX_DELAY)
}

impl<K: Clone + Eq + std::hash::Hash> RetryQueue<K> {
    pub fn new() -> RetryQueue<K> {
        RetryQueue::default()
    }

    /// The write of `key` failed: wait longer than last time. Returns the delay.
    pub fn failed(&mut self, key: K) -> Duration {
        let attempts = self.entries.get(&key).map_or(0, |e| e.attempts) + 1;
        let delay = backoff(attempts);
        self.hold(key, attempts, delay);
        delay
    }

    /// Hold `key` for `delay` (a fight backoff sets its own delays), keeping
    /// its attempt count at `attempts`.
    pub fn hold(&mut self, key: K, attempts: u32, delay: Duration) {
        let due = Instant::now() + delay;
        match self.entries.get_mut(&key) {
            Some(e) => {
                match &e.queued {
                    Some(q) => self.queue.reset_at(q, due),
                    None => e.queued = Some(self.queue.insert_at(key.clone(), due)),
                }
                e.attempts = attempts;
                e.due = due;
            }
            None => {
                let queued = Some(self.queue.insert_at(key.clone(), due));
                self.entries.insert(
                    key,
                    Entry {
                        queued,
                        attempts,
                        due,
                        since: Instant::now(),
                    },
                );
            }
        }
    }

    /// The write of `key` succeeded (or is no longer needed): forget it.
    pub fn succeeded(&mut self, key: &K) {
        if let Some(e) = self.entries.remove(key)
            && let Some(q) = e.queued
        {
            self.queue.remove(&q);
        }
    }

    /// Whether `key` is waiting out its backoff now (a flush must not write it).
    pub fn holds(&self, key: &K) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| e.due > Instant::now())
    }

    pub fn attempts(&self, key: &K) -> u32 {
        self.entries.get(key).map_or(0, |e| e.attempts)
    }

    /// When the longest-waiting entry first failed, if any waits.
    pub fn oldest(&self) -> Option<Instant> {
        self.entries.values().map(|e| e.since).min()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forget every copy for which `keep` is false (its source or its
    /// namespace is gone).
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        let gone: Vec<K> = self.entries.keys().filter(|k| !keep(k)).cloned().collect();
        for k in gone {
            self.succeeded(&k);
        }
    }

    /// The next copy whose backoff is over. Pending forever while nothing
    /// waits, so it can sit in a `select!`. The attempt count stays until
    /// the copy succeeds, so the next failure waits longer.
    pub async fn next(&mut self) -> K {
        loop {
            let expired = poll_fn(|cx| match self.queue.poll_expired(cx) {
                std::task::Poll::Ready(None) => std::task::Poll::Pending,
                other => other,
            })
            .await;
            if let Some(expired) = expired {
                let key = expired.into_inner();
                if let Some(e) = self.entries.get_mut(&key) {
                    e.queued = None;
                    return key;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::model::kinds::Kind;
    use futures::FutureExt;

    fn key(ns: &str) -> ObjectKey {
        ObjectKey {
            kind: Kind::Secret,
            namespace: ns.into(),
            name: "db".into(),
        }
    }

    // Issue 7, defect 8: the backoff is per copy, holds, grows, and shrinks
    // (is forgotten) on success or when the copy goes away.
    #[tokio::test(start_paused = true)]
    async fn per_copy_backoff_holds_and_is_forgotten() {
        let mut q = RetryQueue::new();
        assert_eq!(q.failed(key("a")), Duration::from_secs(2));
        assert!(q.holds(&key("a")));
        assert!(
            !q.holds(&key("b")),
            "another copy of the same source is free"
        );
        assert!(q.next().now_or_never().is_none());
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(q.next().now_or_never().is_none());
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(q.next().await, key("a"));
        assert!(!q.holds(&key("a")));
        // It failed again: twice as long; and again: four times.
        assert_eq!(q.failed(key("a")), Duration::from_secs(4));
        assert_eq!(q.failed(key("a")), Duration::from_secs(8));
        assert_eq!(q.len(), 1, "one entry per copy, however often it fails");
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(q.next().now_or_never().is_none());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(q.next().await, key("a"));
        // Success forgets the count: the next failure starts over.
        q.succeeded(&key("a"));
        assert_eq!(q.attempts(&key("a")), 0);
        assert_eq!(q.failed(key("a")), Duration::from_secs(2));
        // Pruned when its copy or source goes away.
        q.failed(key("b"));
        q.retain(|k| k.namespace != "a");
        assert_eq!(q.len(), 1);
        assert!(!q.holds(&key("a")));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(q.next().await, key("b"));
        assert!(q.next().now_or_never().is_none());
    }

    #[test]
    fn backoff_grows_to_a_cap() {
        let secs: Vec<u64> = (1..=10).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn oldest_is_the_first_failure_of_the_longest_waiting_copy() {
        let mut q = RetryQueue::new();
        assert_eq!(q.oldest(), None);
        let t0 = Instant::now();
        q.failed(key("a"));
        tokio::time::advance(Duration::from_secs(10)).await;
        q.failed(key("b"));
        // A repeated failure keeps its first time.
        q.failed(key("a"));
        assert_eq!(q.oldest(), Some(t0));
        q.succeeded(&key("a"));
        assert_eq!(q.oldest(), Some(t0 + Duration::from_secs(10)));
        q.succeeded(&key("b"));
        assert_eq!(q.oldest(), None);
    }
}
