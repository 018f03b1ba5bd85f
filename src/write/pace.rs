//! The one write limiter. Every write request to the API server awaits
//! [`Pacer::ready`] first, whatever caused it (event flush, namespace arrival,
//! drift repair, resync), so the API load is bounded per *request*, not per
//! Secret.
//!
//! It is GCRA (the algorithm of the governor crate) in its reservation form:
//! each caller takes the next slot under a lock, then sleeps until it. The
//! schedule advances from the slot times, never from when a sleeper actually
//! wakes up, so timer lateness does not accumulate. (governor's check-then-
//! sleep loop loses it: tokio rounds every sleep up to the next millisecond,
//! and with a burst of 1 the limiter restarts from the late wake-up, which
//! capped `SECRET_SYNC_RATE_LIMIT=100` at about 89 writes/s in
//! `benches/scale/`.) Driven by tokio's clock, so its timing is tested
//! deterministically under tokio's paused clock.
//!
//! GCRA bounds: requests are spaced `1/rate` apart, `burst` may go back to
//! back, so no one-second window holds more than `rate + burst` of them.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub struct Pacer {
    /// Emission interval: one request per `interval`.
    interval: Duration,
    /// How far ahead of the schedule a request may go: `(burst - 1) x interval`.
    tolerance: Duration,
    /// Theoretical arrival time of the next request; `None` before the first.
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    /// `rate` requests per second, `burst` of them back to back.
    pub fn new(rate: NonZeroU32, burst: NonZeroU32) -> Pacer {
        let interval = Duration::from_secs(1) / rate.get();
        Pacer {
            interval,
            tolerance: interval * (burst.get() - 1),
            next: Mutex::new(None),
        }
    }

    /// Wait until one more request may be sent, and take its slot. A caller
    /// that is cancelled while waiting leaves its slot unused (slower, never
    /// faster).
    pub async fn ready(&self) {
        let slot = {
            let mut next = self.next.lock().expect("pacer lock");
            let now = Instant::now();
            let tat = next.map_or(now, |t| t.max(now));
            *next = Some(tat + self.interval);
            tat.checked_sub(self.tolerance).map_or(now, |s| s.max(now))
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::Instant;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    /// Times (since start) at which `n` callers, all waiting at once, get their slot.
    async fn grants(p: Arc<Pacer>, n: usize, concurrent: usize) -> Vec<Duration> {
        let start = Instant::now();
        let times = Arc::new(std::sync::Mutex::new(Vec::new()));
        let per = n / concurrent;
        let mut tasks = Vec::new();
        for _ in 0..concurrent {
            let (p, times) = (p.clone(), times.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..per {
                    p.ready().await;
                    times.lock().unwrap().push(start.elapsed());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut v = times.lock().unwrap().clone();
        v.sort();
        v
    }

    #[tokio::test(start_paused = true)]
    async fn thirty_writes_at_five_per_second_take_about_six_seconds() {
        let t = grants(Arc::new(Pacer::new(nz(5), nz(1))), 30, 1).await;
        assert_eq!(t.len(), 30);
        assert_eq!(t[0], Duration::ZERO);
        // 29 gaps of 200 ms.
        assert_eq!(*t.last().unwrap(), Duration::from_millis(5800));
        for w in t.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_millis(200));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn many_concurrent_waiters_share_one_rate() {
        // Four writers in flight must not get four times the rate.
        let t = grants(Arc::new(Pacer::new(nz(10), nz(1))), 40, 4).await;
        assert_eq!(t.len(), 40);
        assert!(*t.last().unwrap() >= Duration::from_millis(3900), "{t:?}");
        assert_at_most_per_window(&t, 10 + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_pace_and_never_more_than_rate_plus_burst_per_second() {
        let t = grants(Arc::new(Pacer::new(nz(10), nz(5))), 50, 2).await;
        // The burst goes at once...
        assert_eq!(t.iter().filter(|d| d.is_zero()).count(), 5);
        // ...then 45 more at 10/s.
        assert_eq!(*t.last().unwrap(), Duration::from_millis(4500));
        assert_at_most_per_window(&t, 10 + 5);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_refills_the_burst_only_up_to_its_size() {
        let p = Pacer::new(nz(2), nz(2));
        p.ready().await;
        p.ready().await;
        tokio::time::advance(Duration::from_secs(60)).await;
        let start = Instant::now();
        for _ in 0..4 {
            p.ready().await;
        }
        // Two from the refilled burst, then 2 more at 2/s.
        assert_eq!(start.elapsed(), Duration::from_millis(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_wake_up_does_not_push_the_schedule_back() {
        let p = Arc::new(Pacer::new(nz(100), nz(1)));
        let start = Instant::now();
        p.ready().await;
        let p2 = p.clone();
        let late = tokio::spawn(async move { p2.ready().await });
        tokio::task::yield_now().await; // it takes the 10 ms slot and sleeps
        // The timer wakes it 5 ms late (tokio rounds every sleep up to the
        // next millisecond, so real wake-ups are always a little late).
        tokio::time::advance(Duration::from_millis(15)).await;
        late.await.unwrap();
        p.ready().await;
        // The next slot is still 20 ms: the lateness was not carried over.
        assert_eq!(start.elapsed(), Duration::from_millis(20));
    }

    /// No one-second window [t, t+1s) holds more than `max` grants.
    fn assert_at_most_per_window(t: &[Duration], max: usize) {
        for (i, start) in t.iter().enumerate() {
            let n = t[i..]
                .iter()
                .take_while(|d| **d < *start + Duration::from_secs(1))
                .count();
            assert!(n <= max, "{n} grants in the second from {start:?}: {t:?}");
        }
    }
}
