//! Deterministic simulation of the durable audio path, in the manner of TigerBeetle's VOPR:
//! the real spill writer, index, recovery, reader and upload confirmation run on a simulated
//! disk ([`disk`]), against a simulated object store ([`store`]), on simulated time, with every
//! random choice — workload, faults, crashes — drawn from one seed ([`rng`]). [`run`] plays one
//! seed and checks the oracle; `make sim` plays many (`docs/0011-simulation.md`).

pub mod disk;
pub mod rng;
#[cfg(feature = "server")]
pub mod run;
pub mod store;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::spill::clock::Clock;

/// Simulated time: both clocks advance only when the simulation says so.
#[derive(Debug, Default)]
pub struct SimClock {
    ms: AtomicU64,
}

/// The simulated wall clock starts here (2023-11-14), so ages and timestamps look real.
const UNIX_EPOCH_OFFSET_MS: u64 = 1_700_000_000_000;

impl SimClock {
    /// Moves both clocks `ms` milliseconds forward.
    pub fn advance(&self, ms: u64) {
        self.ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// Milliseconds since the simulation began (the monotonic clock).
    pub fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::Relaxed)
    }
}

impl Clock for SimClock {
    fn monotonic_ms(&self) -> u64 {
        self.now_ms()
    }

    fn unix_ms(&self) -> u64 {
        UNIX_EPOCH_OFFSET_MS + self.now_ms()
    }
}
