//! The clock every sans-I/O state machine runs on: milliseconds the caller reads and passes in
//! (the session, the connection, the drain, the simulation), so that tests drive time.

/// Monotonic time in milliseconds, as the caller's clock reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    /// `ms` milliseconds later, saturating at `u64::MAX`.
    pub fn saturating_add_ms(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
}
