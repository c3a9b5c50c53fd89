//! Time as the durable path sees it: a monotonic millisecond clock (group commit, gauges) and
//! wall-clock milliseconds (batch ages). The writer and recovery take a [`Clock`], so the
//! simulation (`crate::sim`) runs them on simulated time.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The two clocks of the durable path: the system's ([`SystemClock`]) or the simulation's.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds on a monotonic clock (its origin is arbitrary).
    fn monotonic_ms(&self) -> u64;
    /// Milliseconds since the Unix epoch.
    fn unix_ms(&self) -> u64;
}

/// The machine's clocks.
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// The system clocks, the monotonic one starting at 0 now.
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> SystemClock {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn unix_ms(&self) -> u64 {
        wall_unix_ms()
    }
}

/// Milliseconds since the Unix epoch on the system clock (0 before it).
pub fn wall_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
