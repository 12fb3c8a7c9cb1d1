//! [`Backoff`]: exponential retry delays with seeded jitter, for every retry
//! loop that waits on something unreachable (the metadata store, a leader,
//! a peer).
//!
//! Contract: the n-th delay after a [`Backoff::reset`] is drawn uniformly
//! from `[d/2, d]` where `d = min(min * 2^n, max)`; it never exceeds `max`
//! and never falls below `min / 2`. The jitter comes from a seeded generator
//! (no wall clock, no global randomness), so the simulator replays it
//! exactly, while callers seeded differently (by node id and purpose) do not
//! retry in lockstep. [`Backoff::wait`] sleeps through the runtime.

use std::time::Duration;

use openraft::AsyncRuntime;

/// Exponential backoff with jitter (see the module contract).
#[derive(Clone, Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// The ceiling of the next delay, in `min..=max`.
    ceiling: Duration,
    /// splitmix64 state.
    rng: u64,
}

impl Backoff {
    /// A backoff from `min` up to `max`, its jitter seeded by `seed` (give
    /// each retrying party its own, e.g. its node id mixed with a purpose).
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        assert!(!min.is_zero(), "a backoff needs a positive minimum");
        assert!(
            min <= max,
            "backoff minimum {min:?} above its maximum {max:?}"
        );
        Self {
            min,
            max,
            ceiling: min,
            rng: seed ^ 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// Starts again from the minimum (after a success).
    pub fn reset(&mut self) {
        self.ceiling = self.min;
    }

    /// The next delay, and doubles the ceiling for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        assert!(
            ceiling >= self.min && ceiling <= self.max,
            "ceiling out of bounds"
        );
        let half = ceiling / 2;
        let span = (ceiling - half).as_nanos() as u64;
        let jitter = if span == 0 {
            0
        } else {
            self.next_u64() % (span + 1)
        };
        let delay = half + Duration::from_nanos(jitter);
        assert!(delay <= self.max, "a delay never exceeds the maximum");
        self.ceiling = ceiling.saturating_mul(2).min(self.max);
        delay
    }

    /// Sleeps for [`Backoff::next_delay`] on the runtime's clock.
    pub async fn wait<RT: AsyncRuntime>(&mut self) {
        RT::sleep(self.next_delay()).await;
    }

    /// splitmix64: small, fast, and good enough to spread retries.
    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    #[test]
    fn delays_double_within_jitter_and_stop_at_the_maximum() {
        let mut backoff = Backoff::new(MIN, MAX, 7);
        let mut ceiling = MIN;
        for _ in 0..20 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(MAX);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= MIN, "reset starts from the minimum");
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let run = |seed| {
            let mut backoff = Backoff::new(MIN, MAX, seed);
            (0..8).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1), "deterministic for the simulator");
        assert_ne!(
            run(1),
            run(2),
            "parties seeded apart do not retry in lockstep"
        );
    }
}
