//! [`SimRng`]: the simulation's one stream of randomness.
//!
//! Every random choice the simulator itself makes (latencies, losses, fault
//! schedule, workload) draws from one [`SplitMix64`] seeded from the run's
//! seed. All draws happen on the single executor thread in a deterministic
//! order, so sharing the generator keeps runs reproducible. (openraft's own
//! randomness, e.g. election timeouts, comes from the runtime's seeded
//! `thread_rng`.)

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metro_kvstore::SplitMix64;

/// Parts per million: the unit of every probability in the simulator.
pub const PPM: u64 = 1_000_000;

/// A cloneable handle on the simulation's generator.
#[derive(Clone, Debug)]
pub struct SimRng {
    inner: Arc<Mutex<SplitMix64>>,
}

impl SimRng {
    /// A generator whose whole output is fixed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(SplitMix64::new(seed))),
        }
    }

    /// The next 64 random bits.
    pub fn next_u64(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_u64()
    }

    /// A value in `0..bound` (`bound` > 0).
    pub fn below(&self, bound: u64) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .below(bound)
    }

    /// A value in `lo..=hi`.
    pub fn range(&self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "empty range {lo}..={hi}");
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `ppm` per million.
    pub fn chance(&self, ppm: u64) -> bool {
        ppm > 0 && self.below(PPM) < ppm
    }

    /// A duration in `lo_ms..=hi_ms` milliseconds, at microsecond resolution.
    pub fn millis(&self, lo_ms: u64, hi_ms: u64) -> Duration {
        Duration::from_micros(self.range(lo_ms * 1_000, hi_ms * 1_000))
    }

    /// One element of `items` (non-empty).
    pub fn pick<T: Copy>(&self, items: &[T]) -> T {
        assert!(!items.is_empty(), "pick from nothing");
        items[self.below(items.len() as u64) as usize]
    }
}
