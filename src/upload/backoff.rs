//! Capped exponential backoff with equal jitter, pure.
//!
//! The un-jittered delay of attempt `n` (0-based: the wait after the first failure is `n = 0`) is
//! `base(n) = min(max, min · 2^n)`. The delay is drawn uniformly from `[base(n)/2, base(n)]`
//! ("equal jitter"): retries of many uploads failing at once spread over half the window, yet a
//! retry never comes sooner than half the base, so a failing store is not hammered the way full
//! jitter (`[0, base]`) would allow. The delay never exceeds `max`.

use std::time::Duration;

/// The delays between upload attempts: from `min_ms` doubling to `max_ms`, with equal jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min_ms: u64,
    max_ms: u64,
}

impl Backoff {
    /// `min_ms` is raised to at least 1 and `max_ms` to at least `min_ms`.
    pub fn new(min_ms: u64, max_ms: u64) -> Backoff {
        let min_ms = min_ms.max(1);
        Backoff {
            min_ms,
            max_ms: max_ms.max(min_ms),
        }
    }

    /// `min(max, min · 2^attempt)` in milliseconds, without overflow for any `attempt`.
    pub fn base_ms(&self, attempt: u32) -> u64 {
        self.min_ms
            .checked_shl(attempt)
            .filter(|&d| d >> attempt == self.min_ms)
            .map_or(self.max_ms, |d| d.min(self.max_ms))
    }

    /// The delay before retry `attempt`, with `random` a uniformly random u64 (the injectable
    /// random source: callers pass `rand::random()`, tests pass fixed values).
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let base = self.base_ms(attempt);
        let low = base / 2;
        // span <= max_ms + 1, so the modulo bias is at most span / 2^64: negligible.
        let span = base - low + 1;
        Duration::from_millis(low + random % span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_doubles_from_min_to_max() {
        let b = Backoff::new(1000, 60_000);
        let bases: Vec<u64> = (0..9).map(|n| b.base_ms(n)).collect();
        assert_eq!(
            bases,
            [
                1000, 2000, 4000, 8000, 16_000, 32_000, 60_000, 60_000, 60_000
            ]
        );
        assert_eq!(b.base_ms(63), 60_000);
        assert_eq!(b.base_ms(64), 60_000);
        assert_eq!(b.base_ms(u32::MAX), 60_000);
    }

    #[test]
    fn never_exceeds_max_and_jitter_stays_within_bounds() {
        let b = Backoff::new(1000, 60_000);
        for attempt in [0, 1, 2, 5, 6, 7, 40, 63, 64, 1000, u32::MAX] {
            let base = b.base_ms(attempt);
            for random in [0, 1, 999, 30_000, u64::MAX / 2, u64::MAX - 1, u64::MAX] {
                let d = b.delay(attempt, random).as_millis() as u64;
                assert!(d <= 60_000, "attempt {attempt}: {d}");
                assert!(
                    d >= base / 2 && d <= base,
                    "attempt {attempt}: {d} vs {base}"
                );
            }
        }
        // Both ends of the window are reachable.
        assert_eq!(b.delay(0, 0), Duration::from_millis(500));
        assert_eq!(b.delay(0, 500), Duration::from_millis(1000));
        assert_eq!(b.delay(20, 0), Duration::from_millis(30_000));
        assert_eq!(b.delay(20, 30_000), Duration::from_millis(60_000));
    }

    #[test]
    fn grows_with_attempts() {
        let b = Backoff::new(1000, 60_000);
        // With the same random draw, the delay never shrinks as attempts grow.
        for random in [0, 123_456_789, u64::MAX] {
            let delays: Vec<Duration> = (0..12).map(|n| b.delay(n, random)).collect();
            assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        }
        // The smallest delay of attempt n+1 is at least the smallest of attempt n, and doubles
        // until the cap.
        assert!(b.delay(3, 0) == 2 * b.delay(2, 0));
    }

    #[test]
    fn degenerate_bounds_are_repaired() {
        let b = Backoff::new(0, 0);
        assert_eq!(b.base_ms(0), 1);
        assert_eq!(b.base_ms(10), 1);
        let b = Backoff::new(5000, 10);
        assert_eq!(b.base_ms(0), 5000);
        assert_eq!(b.base_ms(3), 5000);
    }
}
