//! Debounce of dirty keys (DESIGN §1 "Debounce").
//!
//! Watchers only mark keys dirty; the planner later reads the caches and
//! computes what to write (level-triggered). The [`Batcher`] sits in between: it
//! collects keys until the stream has been quiet for `quiet`, but never longer
//! than `max_wait` after the first key of the batch, so a key that changes
//! forever cannot starve the others (a lesson from peers, DESIGN §8).
//!
//! The quiet window exists to coalesce source changes. A copy that someone
//! else edited or deleted ([`DirtyKey::Copy`], see [`DirtyKey::urgent`]) has
//! nothing to coalesce: such keys are due at once, in a batch of their own
//! ([`DRAIN`] after the first of them, time to take in what is already
//! queued), ahead of the window. They never touch its clocks: the source keys
//! pending meanwhile keep their quiet window and their max wait, and a tenant
//! busy in its own namespace cannot keep the batcher from going quiet. A copy
//! key handed out less than `quiet` ago (a writer fighting us, or the echo of
//! our own repair) waits until `quiet` after that, so a fought copy is planned
//! at most once per quiet window, as before; the writes it costs are bounded
//! by that and, on top, by the fight tracker
//! ([`crate::targets::cluster::fights`]).
//!
//! Keys are deduplicated in a `BTreeSet`: a replayed or repeated event costs
//! nothing, and batches come out sorted, which keeps the planner's work order
//! and its logs deterministic.
//!
//! All timing uses `tokio::time`, so tests run on the paused clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};

/// An urgent key is due this long after the first urgent key of its batch:
/// long enough for the loop to take in the keys already queued behind it (a
/// namespace deleted with a thousand copies is one batch, not a thousand),
/// short against any quiet window. Never restarted by later keys.
pub const DRAIN: Duration = Duration::from_millis(10);

/// Something that changed and must be re-planned.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DirtyKey {
    /// A source object, by kind and name (in the source namespace).
    Source(crate::model::kinds::Kind, String),
    /// A namespace, by name (appeared, relabelled, deleted, or a replica in it changed).
    Namespace(String),
    /// The copies of one source in one namespace: `(kind, namespace, source
    /// name)`. A copy someone else changed or deleted (the copy watch), and
    /// a retry, re-plan only that copy. Urgent: see [`DirtyKey::urgent`].
    Copy(crate::model::records::ObjectKey),
    /// Everything (e.g. periodic resync). Kept alongside other keys; what it
    /// implies is the planner's decision.
    All,
}

impl DirtyKey {
    /// Due at once rather than after the quiet window: a copy's key. A
    /// copy's drift, or its retry once its backoff is over, has nothing to
    /// coalesce with; writing it still goes through pacing, the retry
    /// backoff and the fight tracker
    /// ([`crate::targets::cluster::admit::Admission`]).
    pub fn urgent(&self) -> bool {
        matches!(self, DirtyKey::Copy(_))
    }
}

/// Collects [`DirtyKey`]s into batches. See the module docs.
#[derive(Debug)]
pub struct Batcher {
    quiet: Duration,
    max_wait: Duration,
    keys: BTreeSet<DirtyKey>,
    /// When the first key of the current batch arrived (starts the max-wait clock).
    first_at: Option<Instant>,
    /// When the latest key arrived (restarts the quiet clock).
    last_at: Option<Instant>,
    /// Urgent keys waiting (see [`DirtyKey::urgent`]): due [`DRAIN`] after
    /// `urgent_at`, the first of them.
    urgent: BTreeSet<DirtyKey>,
    urgent_at: Option<Instant>,
    /// Urgent keys that changed again within `quiet` of being handed out,
    /// each due `quiet` after that.
    held: BTreeMap<DirtyKey, Instant>,
    /// When each urgent key was last handed out (kept for `quiet`).
    handed_out: HashMap<DirtyKey, Instant>,
}

impl Batcher {
    /// A batch is due when no key was added for `quiet`, or `max_wait` after
    /// its first key, whichever comes first; urgent keys are due at once (see
    /// the module docs).
    pub fn new(quiet: Duration, max_wait: Duration) -> Self {
        Batcher {
            quiet,
            max_wait,
            keys: BTreeSet::new(),
            first_at: None,
            last_at: None,
            urgent: BTreeSet::new(),
            urgent_at: None,
            held: BTreeMap::new(),
            handed_out: HashMap::new(),
        }
    }

    /// Marks `key` dirty. An urgent key goes into the next urgent batch, or,
    /// if it was handed out less than `quiet` ago, waits until `quiet` after
    /// that; either way the clocks of the other keys stay as they are. Any
    /// other key: the first key of a batch starts the max-wait clock; every
    /// key (even a duplicate: the object changed again) restarts the quiet
    /// clock.
    pub fn add(&mut self, key: DirtyKey) {
        let now = Instant::now();
        if key.urgent() {
            if self.urgent.contains(&key) || self.held.contains_key(&key) {
                return;
            }
            match self.handed_out.get(&key) {
                Some(&at) if now < add_saturating(at, self.quiet) => {
                    self.held.insert(key, add_saturating(at, self.quiet));
                }
                _ => {
                    self.urgent_at.get_or_insert(now);
                    self.urgent.insert(key);
                }
            }
            return;
        }
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
        self.keys.insert(key);
    }

    /// Number of distinct keys waiting.
    pub fn pending(&self) -> usize {
        self.keys.len() + self.urgent.len() + self.held.len()
    }

    /// When the quiet batch is due, or `None` while it is empty.
    fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first_at?, self.last_at?);
        Some(std::cmp::min(
            add_saturating(last, self.quiet),
            add_saturating(first, self.max_wait),
        ))
    }

    /// When the next batch is due: the quiet batch, the urgent keys or the
    /// first held key, whichever comes first; `None` while empty.
    fn next_due(&self) -> Option<Instant> {
        let urgent = self.urgent_at.map(|at| add_saturating(at, DRAIN));
        let held = self.held.values().min().copied();
        [self.deadline(), urgent, held].into_iter().flatten().min()
    }

    /// Takes what is due at `now`: the quiet batch if due (and resets its
    /// clocks, so the next batch's max wait counts from its own first key),
    /// the urgent keys (due at once), and the held keys whose time has come.
    /// Notes when each urgent key was handed out.
    fn take_due(&mut self, now: Instant) -> Vec<DirtyKey> {
        let mut out = BTreeSet::new();
        if self.deadline().is_some_and(|d| d <= now) {
            self.first_at = None;
            self.last_at = None;
            out = std::mem::take(&mut self.keys);
        }
        self.urgent_at = None;
        out.append(&mut self.urgent);
        let held = std::mem::take(&mut self.held);
        for (key, due) in held {
            if due <= now {
                out.insert(key);
            } else {
                self.held.insert(key, due);
            }
        }
        let quiet = self.quiet;
        self.handed_out
            .retain(|_, &mut at| now < add_saturating(at, quiet));
        for key in out.iter().filter(|k| k.urgent()) {
            self.handed_out.insert(key.clone(), now);
        }
        out.into_iter().collect()
    }

    /// Empties the batcher (shutdown), returning every key sorted.
    fn take(&mut self) -> Vec<DirtyKey> {
        self.first_at = None;
        self.last_at = None;
        self.urgent_at = None;
        let mut keys = std::mem::take(&mut self.keys);
        keys.append(&mut self.urgent);
        keys.extend(std::mem::take(&mut self.held).into_keys());
        keys.into_iter().collect()
    }

    /// Resolves when a batch is due, returning its deduplicated keys sorted:
    /// the quiet batch when it is due (quiet for `quiet`, or `max_wait` since
    /// its first key), and the urgent keys: [`DRAIN`] after the first of them,
    /// ahead of the quiet batch, or along with it. Pending forever while empty.
    ///
    /// Cancel-safe: nothing changes until a deadline has passed, and then the
    /// batch is taken without another `.await`, so dropping this future (e.g.
    /// when another `select!` branch wins) loses no keys.
    pub async fn ready(&mut self) -> Vec<DirtyKey> {
        match self.next_due() {
            // `&mut self` is borrowed for as long as this future lives, so no key
            // can arrive while we wait here: pending forever is exact.
            None => std::future::pending().await,
            Some(due) => {
                sleep_until(due).await;
                // At least what was due at `due`: timers fire late, never early.
                self.take_due(std::cmp::max(due, Instant::now()))
            }
        }
    }
}

/// `Instant + Duration` that cannot panic on absurd durations (tokio itself
/// treats ~30 years as "never").
fn add_saturating(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365 * 30))
}

/// Convenience loop: receives keys from `rx`, emits batches on `tx`; when `rx`
/// closes, flushes what is pending (no lost keys on shutdown) and returns.
/// Also returns when `tx`'s receiver is gone, as nobody would act on batches.
pub async fn run(
    mut rx: mpsc::Receiver<DirtyKey>,
    tx: mpsc::Sender<Vec<DirtyKey>>,
    quiet: Duration,
    max_wait: Duration,
) {
    let mut batcher = Batcher::new(quiet, max_wait);
    loop {
        tokio::select! {
            // A due batch goes first: a producer that never lets `rx` run dry
            // must not postpone the max wait.
            biased;
            batch = batcher.ready() => {
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
            key = rx.recv() => match key {
                Some(key) => batcher.add(key),
                None => {
                    // Input closed (shutdown): flush now rather than after the
                    // quiet window, the caller is waiting for us to finish.
                    if batcher.pending() > 0 {
                        let _ = tx.send(batcher.take()).await;
                    }
                    return;
                }
            },
            () = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{advance, timeout};

    const QUIET: Duration = Duration::from_secs(5);
    const MAX_WAIT: Duration = Duration::from_secs(15);
    /// Resolution of tokio's timer wheel.
    const TICK: Duration = Duration::from_millis(1);

    fn src(name: &str) -> DirtyKey {
        DirtyKey::Source(crate::model::kinds::Kind::Secret, name.to_owned())
    }

    fn ns(name: &str) -> DirtyKey {
        DirtyKey::Namespace(name.to_owned())
    }

    /// The key the copy watch makes dirty for source `source`'s copy in `namespace`.
    fn copy(namespace: &str, source: &str) -> DirtyKey {
        DirtyKey::Copy(crate::model::records::ObjectKey::new(
            crate::model::kinds::Kind::Secret,
            namespace,
            source,
        ))
    }

    /// `at` is `expected` within one timer tick, and never before it.
    fn assert_at(at: Instant, expected: Instant) {
        assert!(
            at >= expected && at <= expected + TICK,
            "fired {:?} after expected time (negative = early: {})",
            at.saturating_duration_since(expected),
            at < expected
        );
    }

    /// Waits (on the paused clock) at most `limit` for a batch.
    async fn flush_within(b: &mut Batcher, limit: Duration) -> Option<Vec<DirtyKey>> {
        timeout(limit, b.ready()).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn burst_of_50_changes_to_10_sources_flushes_once_after_quiet_window() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        let start = Instant::now();
        // 50 changes, 50 ms apart (2.45 s in total), cycling over 10 sources.
        for i in 0..50 {
            if i > 0 {
                advance(Duration::from_millis(50)).await;
            }
            b.add(src(&format!("s{}", i % 10)));
        }
        let last_change = Instant::now();
        assert_eq!(last_change - start, Duration::from_millis(2450));
        assert_eq!(b.pending(), 10);

        // Nothing just before the quiet window since the last change has passed.
        assert_eq!(flush_within(&mut b, QUIET - TICK).await, None);
        assert_eq!(b.pending(), 10, "a cancelled ready() must not lose keys");

        let batch = b.ready().await;
        assert_at(Instant::now(), last_change + QUIET);
        let expected: Vec<DirtyKey> = (0..10).map(|i| src(&format!("s{i}"))).collect();
        assert_eq!(batch, expected);
        assert_eq!(b.pending(), 0);

        // Exactly one flush: nothing else comes, however long we wait.
        assert_eq!(flush_within(&mut b, Duration::from_secs(3600)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn key_changing_every_half_second_flushes_at_max_wait() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        let first = Instant::now();
        b.add(src("hot"));
        // Keep changing the key every 0.5 s (offset by 0.3 s so a change never
        // coincides with the deadline) until a batch comes out.
        let mut next_change = first + Duration::from_millis(300);
        let batch = loop {
            assert!(Instant::now() - first < MAX_WAIT * 2, "starved: no flush");
            tokio::select! {
                biased;
                batch = b.ready() => break batch,
                () = sleep_until(next_change) => {
                    b.add(src("hot"));
                    next_change += Duration::from_millis(500);
                }
            }
        };
        assert_at(Instant::now(), first + MAX_WAIT);
        assert_eq!(batch, vec![src("hot")]);
    }

    #[tokio::test(start_paused = true)]
    async fn next_batch_max_wait_starts_from_its_own_first_key() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        let mut flushes = Vec::new(); // (first key of the batch, flush time)
        let mut batch_first: Option<Instant> = None;
        let start = Instant::now();
        // A key changing every 0.5 s (first change at 0.3 s), without end:
        // every flush is forced by the max wait.
        let mut next_change = start;
        while flushes.len() < 3 {
            assert!(
                Instant::now() - start < MAX_WAIT * 4,
                "starved: only {} flushes",
                flushes.len()
            );
            tokio::select! {
                biased;
                _ = b.ready() => flushes.push((batch_first.take().unwrap(), Instant::now())),
                () = sleep_until(next_change) => {
                    batch_first.get_or_insert(Instant::now());
                    b.add(src("hot"));
                    next_change = if next_change == start {
                        start + Duration::from_millis(300)
                    } else {
                        next_change + Duration::from_millis(500)
                    };
                }
            }
        }
        for (first, flushed) in &flushes {
            assert_at(*flushed, *first + MAX_WAIT);
        }
        // The second batch starts with the first change after the first flush
        // (15.3 s), not at the flush itself (15.0 s): its max wait runs from there.
        assert_eq!(flushes[1].0 - start, Duration::from_millis(15_300));
        assert_at(flushes[1].1, start + Duration::from_millis(30_300));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_gap_then_new_batch_uses_its_own_clocks() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        let start = Instant::now();
        b.add(src("a"));
        assert_eq!(b.ready().await, vec![src("a")]);
        assert_at(Instant::now(), start + QUIET);

        // Long idle period, far beyond the first batch's max wait.
        advance(Duration::from_secs(100)).await;
        let second = Instant::now();
        b.add(src("b"));
        // Not flushed at once just because the old batch's clocks are long past.
        assert_eq!(flush_within(&mut b, QUIET - TICK).await, None);
        assert_eq!(b.ready().await, vec![src("b")]);
        assert_at(Instant::now(), second + QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn duplicates_collapse_and_output_is_sorted() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        for key in [
            src("b"),
            ns("x"),
            src("a"),
            src("b"),
            ns("x"),
            src("a"),
            src("b"),
        ] {
            b.add(key);
        }
        assert_eq!(b.pending(), 3);
        assert_eq!(b.ready().await, vec![src("a"), src("b"), ns("x")]);
    }

    #[tokio::test(start_paused = true)]
    async fn all_is_kept_alongside_other_keys() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        b.add(ns("team-a"));
        b.add(DirtyKey::All);
        b.add(src("tls"));
        b.add(DirtyKey::All);
        assert_eq!(
            b.ready().await,
            vec![src("tls"), ns("team-a"), DirtyKey::All]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn empty_batcher_never_flushes() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        assert_eq!(b.pending(), 0);
        assert_eq!(
            flush_within(&mut b, Duration::from_secs(86_400)).await,
            None
        );
        // Also after a flush has emptied it.
        b.add(src("a"));
        assert_eq!(b.ready().await, vec![src("a")]);
        assert_eq!(
            flush_within(&mut b, Duration::from_secs(86_400)).await,
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_ready_keeps_keys_and_deadline() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        let start = Instant::now();
        b.add(src("a"));
        // Cancel ready() several times, as a select! loop would.
        for _ in 0..4 {
            assert_eq!(flush_within(&mut b, Duration::from_secs(1)).await, None);
        }
        assert_eq!(b.pending(), 1);
        assert_eq!(b.ready().await, vec![src("a")]);
        assert_at(Instant::now(), start + QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_longer_than_max_wait_is_bounded_by_max_wait() {
        let mut b = Batcher::new(Duration::from_secs(10), Duration::from_secs(3));
        let start = Instant::now();
        b.add(src("a"));
        assert_eq!(b.ready().await, vec![src("a")]);
        assert_at(Instant::now(), start + Duration::from_secs(3));
    }

    // Issue 17: a copy someone edited or deleted has nothing to coalesce:
    // its key is due at once (within DRAIN), not after the quiet window.
    #[tokio::test(start_paused = true)]
    async fn copy_key_is_due_at_once_not_after_the_quiet_window() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        let start = Instant::now();
        b.add(copy("team-a", "db"));
        assert_eq!(b.pending(), 1);
        assert_eq!(b.ready().await, vec![copy("team-a", "db")]);
        assert_at(Instant::now(), start + DRAIN);
        assert_eq!(b.pending(), 0);
        assert_eq!(flush_within(&mut b, Duration::from_secs(3600)).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn copy_keys_queued_together_are_one_batch() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        let start = Instant::now();
        for i in (0..100).rev() {
            b.add(copy(&format!("ns-{i:03}"), "db"));
        }
        advance(DRAIN / 2).await;
        b.add(copy("ns-000", "tls"));
        let batch = b.ready().await;
        // Due DRAIN after the first, not restarted by the later one.
        assert_at(Instant::now(), start + DRAIN);
        assert_eq!(batch.len(), 101);
        assert!(batch.is_sorted());
        assert_eq!(b.pending(), 0);
    }

    // A copy key neither flushes the pending source keys early nor moves
    // their quiet window or their max wait.
    #[tokio::test(start_paused = true)]
    async fn copy_key_leaves_pending_source_keys_to_their_quiet_window() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        let start = Instant::now();
        b.add(src("a"));
        advance(Duration::from_secs(2)).await;
        let drift = Instant::now();
        b.add(copy("team-a", "db"));
        assert_eq!(b.pending(), 2);
        assert_eq!(b.ready().await, vec![copy("team-a", "db")]);
        assert_at(Instant::now(), drift + DRAIN);
        assert_eq!(b.pending(), 1, "the source key still waits");
        // Its window counts from its own last change, not from the copy key.
        assert_eq!(b.ready().await, vec![src("a")]);
        assert_at(Instant::now(), start + QUIET);
    }

    #[tokio::test(start_paused = true)]
    async fn max_wait_of_source_keys_holds_while_copy_keys_stream_in() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        let first = Instant::now();
        b.add(src("hot"));
        // The source changes every 0.5 s, and every 0.7 s another copy drifts.
        let mut next_change = first + Duration::from_millis(300);
        let mut next_drift = first + Duration::from_millis(100);
        let mut drifts = 0;
        let mut urgent_batches = 0;
        let batch = loop {
            assert!(Instant::now() - first < MAX_WAIT * 2, "starved: no flush");
            tokio::select! {
                biased;
                batch = b.ready() => {
                    if batch.contains(&src("hot")) {
                        break batch;
                    }
                    assert!(batch.iter().all(DirtyKey::urgent), "{batch:?}");
                    urgent_batches += 1;
                }
                () = sleep_until(next_change) => {
                    b.add(src("hot"));
                    next_change += Duration::from_millis(500);
                }
                () = sleep_until(next_drift) => {
                    b.add(copy(&format!("ns-{drifts}"), "db"));
                    drifts += 1;
                    next_drift += Duration::from_millis(700);
                }
            }
        };
        assert_at(Instant::now(), first + MAX_WAIT);
        assert!(batch.contains(&src("hot")));
        // Every drift before the max wait went out on its own, at once.
        assert!(urgent_batches >= 20, "{urgent_batches} urgent batches");
    }

    // The quiet batch due: urgent keys waiting go along, in one batch.
    #[tokio::test(start_paused = true)]
    async fn due_quiet_batch_takes_waiting_copy_keys_along() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        let start = Instant::now();
        b.add(src("a"));
        advance(QUIET - DRAIN / 2).await;
        b.add(copy("team-a", "db"));
        assert_eq!(b.ready().await, vec![src("a"), copy("team-a", "db")]);
        assert_at(Instant::now(), start + QUIET);
        assert_eq!(b.pending(), 0);
    }

    // A copy fought over by another writer (and the echo of our own repair)
    // is handed out at once only once per quiet window: it costs no more
    // batches, so no more writes, than before the copy keys were urgent.
    #[tokio::test(start_paused = true)]
    async fn fought_copy_is_handed_out_at_most_once_per_quiet_window() {
        let mut b = Batcher::new(QUIET, MAX_WAIT);
        let start = Instant::now();
        let fight = Duration::from_secs(60);
        let mut batches = Vec::new();
        b.add(copy("team-a", "db"));
        // A source changes 1 s in, then never again.
        let mut source_change = Some(start + Duration::from_secs(1));
        let mut source_flushed = None;
        while Instant::now() - start < fight {
            let batch = tokio::select! {
                batch = b.ready() => batch,
                () = sleep_until(source_change.unwrap_or(start + fight * 10)), if source_change.is_some() => {
                    source_change = None;
                    b.add(src("a"));
                    continue;
                }
            };
            if batch.contains(&src("a")) {
                source_flushed = Some(Instant::now() - start);
            }
            if batch.contains(&copy("team-a", "db")) {
                batches.push(Instant::now() - start);
                // The other writer changes it back 0.2 s after each of our batches.
                advance(Duration::from_millis(200)).await;
                b.add(copy("team-a", "db"));
            }
        }
        // The first at once, then one per quiet window.
        assert!(batches[0] <= DRAIN + TICK, "{batches:?}");
        assert!(
            batches.len() <= 1 + 60 / 5,
            "{} batches: {batches:?}",
            batches.len()
        );
        for pair in batches.windows(2) {
            assert!(pair[1] - pair[0] >= QUIET, "{batches:?}");
        }
        // The fight never moved the source's quiet window.
        let flushed = source_flushed.expect("the source key was flushed");
        assert!(
            flushed >= Duration::from_secs(1) + QUIET
                && flushed <= Duration::from_secs(1) + QUIET + TICK,
            "source flushed at {flushed:?}"
        );
        // Left alone for a quiet window, the next change is urgent again.
        let _ = b.ready().await;
        advance(QUIET).await;
        let again = Instant::now();
        b.add(copy("team-a", "db"));
        assert_eq!(b.ready().await, vec![copy("team-a", "db")]);
        assert_at(Instant::now(), again + DRAIN);
    }

    #[tokio::test(start_paused = true)]
    async fn run_emits_copy_keys_at_once() {
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let task = tokio::spawn(run(in_rx, out_tx, QUIET, MAX_WAIT));
        let start = Instant::now();
        in_tx.send(src("a")).await.unwrap();
        in_tx.send(copy("team-a", "db")).await.unwrap();
        assert_eq!(out_rx.recv().await, Some(vec![copy("team-a", "db")]));
        assert!(Instant::now() - start <= DRAIN + TICK);
        assert_eq!(out_rx.recv().await, Some(vec![src("a")]));
        assert_at(Instant::now(), start + QUIET);
        drop(in_tx);
        assert_eq!(out_rx.recv().await, None);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_emits_batches_after_quiet_window() {
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let task = tokio::spawn(run(in_rx, out_tx, QUIET, MAX_WAIT));
        let start = Instant::now();
        in_tx.send(src("a")).await.unwrap();
        in_tx.send(src("a")).await.unwrap();
        in_tx.send(ns("n")).await.unwrap();
        assert_eq!(out_rx.recv().await, Some(vec![src("a"), ns("n")]));
        assert_at(Instant::now(), start + QUIET);

        drop(in_tx);
        assert_eq!(out_rx.recv().await, None, "nothing pending, nothing sent");
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_flushes_pending_keys_when_input_closes() {
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, mut out_rx) = mpsc::channel(16);
        let task = tokio::spawn(run(in_rx, out_tx, QUIET, MAX_WAIT));
        let start = Instant::now();
        in_tx.send(src("b")).await.unwrap();
        in_tx.send(DirtyKey::All).await.unwrap();
        in_tx.send(src("a")).await.unwrap();
        drop(in_tx);
        assert_eq!(
            out_rx.recv().await,
            Some(vec![src("a"), src("b"), DirtyKey::All])
        );
        // Flushed at shutdown, not after the quiet window.
        assert!(Instant::now() - start < QUIET);
        assert_eq!(out_rx.recv().await, None);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn run_returns_when_output_is_dropped() {
        let (in_tx, in_rx) = mpsc::channel(16);
        let (out_tx, out_rx) = mpsc::channel(16);
        let task = tokio::spawn(run(in_rx, out_tx, QUIET, MAX_WAIT));
        drop(out_rx);
        task.await.unwrap();
        assert!(in_tx.is_closed());
    }
}
