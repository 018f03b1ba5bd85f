//! The one write limiter. Every write request to the API server awaits
//! [`Pacer::ready`] first, whatever caused it (event flush, namespace arrival,
//! drift repair, resync), so the API load is bounded per *request*, not per
//! Secret.
//!
//! It is a governor GCRA limiter driven by tokio's clock rather than the
//! system clock, so its timing is tested deterministically under tokio's
//! paused clock.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Time since the pacer was made, read from tokio's clock.
#[derive(Clone, Debug)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

pub struct Pacer {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
    clock: TokioClock,
}

impl Pacer {
    /// `rate` requests per second, `burst` of them back to back.
    pub fn new(rate: NonZeroU32, burst: NonZeroU32) -> Pacer {
        let clock = TokioClock {
            start: tokio::time::Instant::now(),
        };
        let quota = Quota::per_second(rate).allow_burst(burst);
        Pacer {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Wait until one more request may be sent, and take its slot.
    pub async fn ready(&self) {
        loop {
            match self.limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await
                }
            }
        }
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
