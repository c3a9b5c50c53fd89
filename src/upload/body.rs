//! The body buffers of the uploads in flight: one per upload slot, allocated and faulted in at
//! start, lent to an upload and given back when the store lets go of its payload.

use std::sync::{Arc, Mutex};

use object_store::PutPayload;

/// The body of a batch, made once and reused by every attempt.
pub struct Body {
    /// The object's bytes: the batch's PCM, encrypted for `enhanced`.
    pub payload: PutPayload,
    /// PCM bytes of the batch before encryption (the notification's `bytes`).
    pub audio_bytes: u64,
}

/// Body buffers, one per upload slot: allocated and faulted in at start, lent to an upload and
/// given back when the store has let go of its payload. A batch larger than a buffer (above
/// 16 kHz with the default size) grows it for that upload; it is replaced by a standard one
/// when given back.
///
/// Invariant: at most `upload_concurrency` buffers exist (one per permit), each of
/// `buffer_bytes` or, while it carries a larger batch, that batch.
pub struct BodyBuffers {
    free: Mutex<Vec<Vec<u8>>>,
    count: usize,
    buffer_bytes: usize,
}

impl BodyBuffers {
    /// `count` buffers of `buffer_bytes` (`upload_buffer_bytes`), faulted in here.
    pub fn new(count: usize, buffer_bytes: usize) -> Arc<BodyBuffers> {
        let free = (0..count)
            .map(|_| {
                let mut buffer = vec![0u8; buffer_bytes];
                crate::mapped::prefault(&mut buffer);
                buffer.clear();
                buffer
            })
            .collect();
        Arc::new(BodyBuffers {
            free: Mutex::new(free),
            count,
            buffer_bytes,
        })
    }

    /// A buffer for one upload. A permit normally guarantees one is free; if a store still
    /// holds a finished upload's payload, a fresh one is made (and dropped when given back
    /// beyond `count`).
    pub fn take(&self) -> Vec<u8> {
        self.free
            .lock()
            .expect("buffer lock")
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.buffer_bytes))
    }

    fn give_back(&self, mut buffer: Vec<u8>) {
        if buffer.capacity() > self.buffer_bytes {
            buffer = Vec::with_capacity(self.buffer_bytes);
        }
        buffer.clear();
        let mut free = self.free.lock().expect("buffer lock");
        if free.len() < self.count {
            free.push(buffer);
        }
    }
}

/// A lent buffer as an object payload; dropping the last reference gives it back.
pub struct LentBuffer {
    /// The body bytes.
    pub buffer: Vec<u8>,
    /// The pool the buffer goes back to.
    pub pool: Arc<BodyBuffers>,
}

impl AsRef<[u8]> for LentBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
    }
}

impl Drop for LentBuffer {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.buffer));
    }
}
