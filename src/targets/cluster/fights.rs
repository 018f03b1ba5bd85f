//! Copies that something else keeps changing (issue 7, defect 4).
//!
//! A repair is a write to a copy whose source did not change since our last
//! write to it: somebody edited or reverted the copy. A human edit now and
//! then is repaired at once. A copy repaired more than [`FREE_REPAIRS`] times
//! for the same source content within [`WINDOW`] is being fought over (another
//! controller, a policy engine reverting a label): from then on each repair
//! waits twice as long as the last, from [`FIRST_HOLD`] up to [`MAX_HOLD`], so
//! the writes per copy per hour are bounded (about 10 in the first hour, then
//! one an hour) instead of two per debounce window forever. The caller says
//! so once in a Warning Event and counts it in a metric. A change of the
//! source starts over.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::records::ObjectKey;

pub const FREE_REPAIRS: u32 = 3;
pub const FIRST_HOLD: Duration = Duration::from_secs(60);
pub const MAX_HOLD: Duration = Duration::from_secs(3600);
/// Repairs count towards a fight while the last one is younger than this.
pub const WINDOW: Duration = Duration::from_secs(2 * 3600);

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write now.
    Repair,
    /// Wait this long first; `first` is true when the fight was just noticed.
    Hold { delay: Duration, first: bool },
}

struct Repairs {
    /// The content hash our repairs restore: a new source content starts over.
    hash: String,
    count: u32,
    holds: u32,
    last: Instant,
    /// While held: when the next repair may be written.
    until: Option<Instant>,
}

impl Repairs {
    fn new(hash: &str, now: Instant) -> Repairs {
        Repairs {
            hash: hash.to_string(),
            count: 0,
            holds: 0,
            last: now,
            until: None,
        }
    }
}

#[derive(Default)]
pub struct Fights {
    copies: HashMap<ObjectKey, Repairs>,
}

impl Fights {
    pub fn new() -> Fights {
        Fights::default()
    }

    /// A repair of `key` back to content `hash` is planned: write now, or hold?
    pub fn repair(&mut self, key: &ObjectKey, hash: &str) -> Decision {
        let now = Instant::now();
        let r = self
            .copies
            .entry(key.clone())
            .or_insert_with(|| Repairs::new(hash, now));
        if r.hash != hash || now.duration_since(r.last) > WINDOW {
            *r = Repairs::new(hash, now);
        }
        if let Some(until) = r.until {
            if now < until {
                return Decision::Hold {
                    delay: until - now,
                    first: false,
                };
            }
            r.until = None;
        } else if r.count >= FREE_REPAIRS {
            let delay = FIRST_HOLD
                .saturating_mul(1u32 << r.holds.min(16))
                .min(MAX_HOLD);
            r.holds += 1;
            r.until = Some(now + delay);
            r.last = now;
            return Decision::Hold {
                delay,
                first: r.holds == 1,
            };
        }
        r.count += 1;
        r.last = now;
        Decision::Repair
    }

    /// Whether `key` is currently fought over.
    pub fn fought(&self, key: &ObjectKey) -> bool {
        self.copies.get(key).is_some_and(|r| r.holds > 0)
    }

    /// Forget copies whose last repair is older than [`WINDOW`], and those
    /// for which `keep` is false (gone).
    pub fn retain(&mut self, keep: impl Fn(&ObjectKey) -> bool) {
        let now = Instant::now();
        self.copies
            .retain(|k, r| keep(k) && now.duration_since(r.last) <= WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::model::kinds::Kind;

    fn key() -> ObjectKey {
        ObjectKey {
            kind: Kind::Secret,
            namespace: "a".into(),
            name: "db".into(),
        }
    }

    // Issue 7, defect 4: a copy that something keeps reverting is repaired
    // with exponential backoff, with a bounded number of writes per hour.
    #[tokio::test(start_paused = true)]
    async fn a_copy_something_keeps_changing_is_not_rewritten_forever() {
        let mut f = Fights::new();
        for _ in 0..FREE_REPAIRS {
            assert_eq!(f.repair(&key(), "h1"), Decision::Repair);
        }
        assert_eq!(
            f.repair(&key(), "h1"),
            Decision::Hold {
                delay: FIRST_HOLD,
                first: true
            }
        );
        assert!(f.fought(&key()));
        // A reverter undoes every repair at once, for 5 hours: each repair
        // waits out a hold twice as long as the last.
        let mut repairs_per_hour = [0u32; 5];
        let start = Instant::now();
        let mut delay = FIRST_HOLD;
        loop {
            tokio::time::advance(delay).await;
            let hour = (Instant::now() - start).as_secs() / 3600;
            if hour >= 5 {
                break;
            }
            assert_eq!(
                f.repair(&key(), "h1"),
                Decision::Repair,
                "written when the hold is over"
            );
            repairs_per_hour[hour as usize] += 1;
            match f.repair(&key(), "h1") {
                Decision::Hold { delay: d, first } => {
                    assert!(!first, "the fight is reported once");
                    delay = d;
                }
                Decision::Repair => panic!("a fought copy is never repaired at once"),
            }
        }
        // 3 free repairs before, then holds of 1, 2, 4, 8, 16, 32 min, then 1 h.
        assert!(repairs_per_hour[0] <= 6, "{repairs_per_hour:?}");
        assert!(
            repairs_per_hour[1..].iter().all(|&n| n <= 2),
            "{repairs_per_hour:?}"
        );
        // The source changed: a new content is written at once.
        assert_eq!(f.repair(&key(), "h2"), Decision::Repair);
        // Quiet for longer than the window: forgotten.
        tokio::time::advance(WINDOW + Duration::from_secs(1)).await;
        f.retain(|_| true);
        assert!(!f.fought(&key()));
    }
}
