//! The open private-cloud batch, as state only: the session emits the matching effects.
//!
//! Invariant: an open batch holds fewer than `bytes_max` bytes between calls (reaching it closes
//! the batch), and its deadline is its opening time plus `age_ms_max`.

use super::millis::Millis;

#[derive(Debug, Clone, Copy)]
struct OpenBatch {
    opened_at: Millis,
    bytes: u64,
}

#[derive(Debug)]
pub(super) struct Batch {
    open: Option<OpenBatch>,
    bytes_max: u64,
    age_ms_max: u64,
}

impl Batch {
    pub(super) fn new(bytes_max: u64, age_ms_max: u64) -> Batch {
        assert!(bytes_max > 0, "a batch must hold some audio");
        assert!(age_ms_max > 0, "a batch must live some time");
        Batch {
            open: None,
            bytes_max,
            age_ms_max,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.open.is_some()
    }

    pub(super) fn open(&mut self, now: Millis) {
        debug_assert!(self.open.is_none(), "a batch is already open");
        self.open = Some(OpenBatch {
            opened_at: now,
            bytes: 0,
        });
    }

    /// Counts `len` appended bytes; `true` when the batch has reached `bytes_max` and must close.
    pub(super) fn append(&mut self, len: usize) -> bool {
        let batch = self.open.as_mut().expect("append needs an open batch");
        debug_assert!(batch.bytes < self.bytes_max);
        batch.bytes += len as u64;
        batch.bytes >= self.bytes_max
    }

    /// Closes the batch; `false` when none was open.
    pub(super) fn close(&mut self) -> bool {
        self.open.take().is_some()
    }

    /// When the open batch turns `age_ms_max` old.
    pub(super) fn deadline(&self) -> Option<Millis> {
        let batch = self.open?;
        Some(batch.opened_at.saturating_add_ms(self.age_ms_max))
    }

    pub(super) fn is_due(&self, now: Millis) -> bool {
        self.deadline().is_some_and(|deadline| now >= deadline)
    }
}
