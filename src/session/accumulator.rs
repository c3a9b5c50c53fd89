//! An audio accumulator for the app-audio trigger and the developer audio webhook.
//!
//! Invariant: the buffer is allocated once with room for the threshold plus one whole message,
//! and never reallocates; between calls it holds at most `threshold_bytes`.

pub(super) struct Accumulator {
    buffer: Vec<u8>,
    threshold_bytes: usize,
}

impl Accumulator {
    /// An accumulator that emits once it holds more than `threshold_bytes`; no appended slice may
    /// exceed `message_bytes_max`.
    pub(super) fn new(threshold_bytes: usize, message_bytes_max: usize) -> Accumulator {
        Accumulator {
            buffer: Vec::with_capacity(threshold_bytes + message_bytes_max),
            threshold_bytes,
        }
    }

    /// Appends `pcm`; when the buffer then holds more than the threshold, hands all of it to
    /// `emit` and empties it.
    pub(super) fn append(&mut self, pcm: &[u8], emit: impl FnOnce(&[u8])) {
        assert!(
            self.buffer.len() + pcm.len() <= self.buffer.capacity(),
            "audio larger than message_bytes_max would grow the accumulator"
        );
        self.buffer.extend_from_slice(pcm);
        if self.buffer.len() > self.threshold_bytes {
            emit(&self.buffer);
            self.buffer.clear();
        }
        debug_assert!(self.buffer.len() <= self.threshold_bytes);
    }
}
