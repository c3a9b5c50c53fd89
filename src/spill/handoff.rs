//! The bounded hand-off from one core to the spill writer: a single-producer single-consumer
//! byte ring of records.
//!
//! The core (producer) appends whole records (header with `crc` = 0 and `prev` = 0, then the
//! payload); the writer (consumer) takes them in order, fills in `prev` and the CRC in place,
//! writes them to the segment file and releases the space. When the ring has no room the core
//! stops reading from the sessions that would write (TCP backpressure): nothing is dropped.
//!
//! Layout: positions are monotonic byte counts; a record occupies its length rounded up to 8
//! bytes at `position % capacity`. A record never wraps: when it would not fit before the end, the
//! producer writes a pad marker (`u32::MAX`, then the pad length) and starts at offset 0. Real
//! records start with a zero CRC field, so they are never mistaken for a pad.
//!
//! Invariants: `tail <= head <= tail + capacity`; bytes in `[tail, head)` belong to the consumer,
//! the rest to the producer; `durable <= head`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use super::record::{
    BATCH_OPEN_PAYLOAD_BYTES_MAX, BatchOpen, Kind, Location, RECORD_HEADER_BYTES,
    close_reason_byte, encode_batch_open, encode_header,
};
use crate::mapped::MappedRegion;
use crate::session::BatchCloseReason;

const ALIGN_BYTES: usize = 8;
const PAD_MARKER: u32 = u32::MAX;
/// Payload bytes of a batch-close record (its reason).
const BATCH_CLOSE_PAYLOAD_BYTES: usize = 1;
/// Hand-off bytes a batch-close record may need: its aligned length, and a pad as long as
/// itself when it would cross the end.
const BATCH_CLOSE_BYTES_MAX: usize =
    2 * (RECORD_HEADER_BYTES + BATCH_CLOSE_PAYLOAD_BYTES).next_multiple_of(ALIGN_BYTES);

/// Hand-off bytes one message of up to `message_bytes_max` may need: its audio record, a
/// batch-open and two batch-closes, each possibly preceded by a pad as long as itself.
/// (Four record headers; 32 bytes cover the close payloads and the alignment of all four.)
pub fn bytes_per_message_max(message_bytes_max: usize) -> usize {
    2 * (message_bytes_max + 4 * RECORD_HEADER_BYTES + BATCH_OPEN_PAYLOAD_BYTES_MAX + 32)
}

/// One core's SPSC byte ring of spill records to the writer, in one resident mapping; records are
/// 8-byte aligned and never wrap (a pad marker fills the end instead).
pub struct Handoff {
    region: MappedRegion,
    /// Bytes produced (monotonic); written by the core only.
    head: CachePadded<AtomicU64>,
    /// Bytes released (monotonic); written by the writer only.
    tail: CachePadded<AtomicU64>,
    /// Producer position up to which every record is on disk and synced.
    durable: CachePadded<AtomicU64>,
    /// Set by the writer before it parks; the producer wakes it only then.
    writer_parked: AtomicBool,
}

// SAFETY: the producer only writes bytes outside `[tail, head)` and publishes them with a release
// store of `head`; the consumer only touches `[tail, head)` after an acquire load of `head` and
// gives them back with a release store of `tail`. Exactly one producer and one consumer exist
// (the owning core and the writer thread).
unsafe impl Sync for Handoff {}

impl Handoff {
    /// A ring of `capacity_bytes` (a multiple of 8, at least two record headers; each push
    /// asserts its record is at most half the ring; `config` keeps
    /// `spill_handoff_bytes_per_core` at least three times the largest record).
    pub fn new(capacity_bytes: usize) -> Handoff {
        assert!(
            capacity_bytes.is_multiple_of(ALIGN_BYTES) && capacity_bytes >= 2 * RECORD_HEADER_BYTES
        );
        Handoff {
            region: MappedRegion::new_resident(capacity_bytes),
            head: CachePadded::new(AtomicU64::new(0)),
            tail: CachePadded::new(AtomicU64::new(0)),
            durable: CachePadded::new(AtomicU64::new(0)),
            writer_parked: AtomicBool::new(false),
        }
    }

    /// The ring's size in bytes.
    pub fn capacity_bytes(&self) -> usize {
        self.region.len()
    }

    /// Bytes the producer may still use (a record needs its aligned length, plus a pad when it
    /// would cross the end).
    pub fn free_bytes(&self) -> usize {
        let used = self.head.load(Ordering::Relaxed) - self.tail.load(Ordering::Acquire);
        self.capacity_bytes() - used as usize
    }

    /// Producer: true when a batch-close record fits now (a session's end needs one).
    pub fn has_room_for_batch_close(&self) -> bool {
        self.free_bytes() >= BATCH_CLOSE_BYTES_MAX
    }

    /// Producer: appends the batch-open record of `batch`; the producer position just past it,
    /// or None when the ring has no room (nothing is written then).
    pub fn push_batch_open(&self, batch: u64, open: &BatchOpen) -> Option<u64> {
        let mut payload = [0u8; BATCH_OPEN_PAYLOAD_BYTES_MAX];
        let len = encode_batch_open(&mut payload, open);
        self.push_record(Kind::BatchOpen, batch, &[&payload[..len]])
    }

    /// Producer: appends an audio record of `batch` holding `pcm`.
    pub fn push_audio(&self, batch: u64, pcm: &[u8]) -> Option<u64> {
        self.push_record(Kind::Audio, batch, &[pcm])
    }

    /// Producer: appends the batch-close record of `batch`.
    pub fn push_batch_close(&self, batch: u64, reason: BatchCloseReason) -> Option<u64> {
        let payload = [close_reason_byte(reason)];
        debug_assert_eq!(payload.len(), BATCH_CLOSE_PAYLOAD_BYTES);
        self.push_record(Kind::BatchClose, batch, &[&payload])
    }

    /// Producer: appends one record of `kind` in `batch` whose payload is `parts` in order
    /// (`prev` and the CRC are the writer's to fill in).
    pub fn push_record(&self, kind: Kind, batch: u64, parts: &[&[u8]]) -> Option<u64> {
        let payload_len: usize = parts.iter().map(|p| p.len()).sum();
        self.push(RECORD_HEADER_BYTES + payload_len, |out| {
            encode_header(out, kind, payload_len, batch, Location::NONE);
            let mut at = RECORD_HEADER_BYTES;
            for part in parts {
                out[at..at + part.len()].copy_from_slice(part);
                at += part.len();
            }
            debug_assert_eq!(at, out.len());
        })
    }

    /// Producer: appends a record of `len` bytes written by `fill`; returns the producer position
    /// just past it, or None when the ring has no room (nothing is written then).
    fn push(&self, len: usize, fill: impl FnOnce(&mut [u8])) -> Option<u64> {
        assert!(len >= RECORD_HEADER_BYTES);
        let aligned = len.next_multiple_of(ALIGN_BYTES);
        let capacity = self.capacity_bytes();
        assert!(
            2 * aligned <= capacity,
            "record larger than half the hand-off ring"
        );
        let head = self.head.load(Ordering::Relaxed);
        let offset = (head % capacity as u64) as usize;
        let to_end = capacity - offset;
        let pad = if to_end < aligned { to_end } else { 0 };
        if self.free_bytes() < pad + aligned {
            return None;
        }
        if pad > 0 {
            // SAFETY: `[offset, capacity)` is free (checked above) and owned by the producer.
            let marker = unsafe { self.bytes_mut(offset, ALIGN_BYTES) };
            marker[..4].copy_from_slice(&PAD_MARKER.to_le_bytes());
            marker[4..8].copy_from_slice(&(pad as u32).to_le_bytes());
        }
        let start = (offset + pad) % capacity;
        // SAFETY: `[start, start + len)` is free (checked above) and owned by the producer.
        fill(unsafe { self.bytes_mut(start, len) });
        let new_head = head + (pad + aligned) as u64;
        self.head.store(new_head, Ordering::Release);
        Some(new_head)
    }

    /// Bytes produced so far (the producer position).
    pub fn produced(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Producer: true when the record pushed up to `position` is durable.
    pub fn is_durable(&self, position: u64) -> bool {
        self.durable.load(Ordering::Acquire) >= position
    }

    /// Producer: wakes the writer if it is parked. `writer` is the writer's thread handle.
    pub fn wake(&self, writer: &std::thread::Thread) {
        if self.writer_parked.swap(false, Ordering::AcqRel) {
            writer.unpark();
        }
    }

    /// Consumer: the next record and the position just past it, skipping pads. The slice is the
    /// consumer's until [`Handoff::release`] passes its position.
    #[allow(clippy::mut_from_ref)]
    pub fn peek(&self) -> Option<(&mut [u8], u64)> {
        self.peek_from(self.tail.load(Ordering::Relaxed))
    }

    /// Consumer: the record at `position` (a record boundary at or after the released tail, as
    /// returned by an earlier peek), skipping pads. Slices from successive calls are disjoint,
    /// so the consumer may hold several (for one vectored write) until it releases them.
    #[allow(clippy::mut_from_ref)]
    pub fn peek_from(&self, mut position: u64) -> Option<(&mut [u8], u64)> {
        let capacity = self.capacity_bytes();
        let head = self.head.load(Ordering::Acquire);
        debug_assert!(position >= self.tail.load(Ordering::Relaxed));
        loop {
            if position == head {
                return None;
            }
            let offset = (position % capacity as u64) as usize;
            // SAFETY: `[tail, head)` is published by the producer and owned by the consumer.
            let head_bytes =
                unsafe { self.bytes_mut(offset, RECORD_HEADER_BYTES.min(capacity - offset)) };
            let first = u32::from_le_bytes(head_bytes[..4].try_into().expect("4 bytes"));
            if first == PAD_MARKER {
                let pad = u32::from_le_bytes(head_bytes[4..8].try_into().expect("4 bytes"));
                position += u64::from(pad);
                continue;
            }
            let payload =
                u32::from_le_bytes(head_bytes[4..8].try_into().expect("4 bytes")) as usize;
            let len = RECORD_HEADER_BYTES + payload;
            let after = position + len.next_multiple_of(ALIGN_BYTES) as u64;
            debug_assert!(after <= head, "a published record is whole");
            // SAFETY: as above; the record lies within `[tail, head)` and does not wrap.
            return Some((unsafe { self.bytes_mut(offset, len) }, after));
        }
    }

    /// Consumer: the released position (everything before it is given back).
    pub fn released(&self) -> u64 {
        self.tail.load(Ordering::Relaxed)
    }

    /// Consumer: gives back every byte before `position`.
    pub fn release(&self, position: u64) {
        debug_assert!(position <= self.head.load(Ordering::Acquire));
        self.tail.store(position, Ordering::Release);
    }

    /// Consumer: every record before `position` is durable.
    pub fn set_durable(&self, position: u64) {
        debug_assert!(position >= self.durable.load(Ordering::Relaxed));
        self.durable.store(position, Ordering::Release);
    }

    /// Consumer: the writer is about to park; returns false if records arrived meanwhile.
    pub fn prepare_park(&self) -> bool {
        self.writer_parked.store(true, Ordering::SeqCst);
        self.head.load(Ordering::SeqCst) == self.tail.load(Ordering::Relaxed)
    }

    /// # Safety
    /// `[offset, offset + len)` must be inside the region and owned by the caller's side.
    #[allow(clippy::mut_from_ref)]
    unsafe fn bytes_mut(&self, offset: usize, len: usize) -> &mut [u8] {
        debug_assert!(offset + len <= self.capacity_bytes());
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts_mut(self.region.as_ptr().add(offset), len) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push_record(ring: &Handoff, batch: u64, payload: &[u8]) -> Option<u64> {
        ring.push_audio(batch, payload)
    }

    fn take(ring: &Handoff) -> Option<(u64, Vec<u8>)> {
        let (record, after) = ring.peek()?;
        let batch = u64::from_le_bytes(record[16..24].try_into().unwrap());
        let payload = record[RECORD_HEADER_BYTES..].to_vec();
        ring.release(after);
        Some((batch, payload))
    }

    #[test]
    fn records_come_out_in_order_across_the_wrap() {
        let ring = Handoff::new(256);
        for round in 0..50u64 {
            let payload = vec![round as u8; (round % 40) as usize];
            assert!(push_record(&ring, round, &payload).is_some());
            let (batch, got) = take(&ring).unwrap();
            assert_eq!((batch, got), (round, payload));
        }
        assert!(ring.peek().is_none());
    }

    #[test]
    fn full_ring_refuses_then_accepts_after_release() {
        let ring = Handoff::new(256);
        let mut pushed = 0;
        while push_record(&ring, pushed, &[7; 24]).is_some() {
            pushed += 1;
        }
        assert_eq!(pushed, 256 / 56);
        assert!(take(&ring).is_some());
        assert!(push_record(&ring, 99, &[7; 24]).is_some());
    }

    #[test]
    fn durable_position_is_published() {
        let ring = Handoff::new(256);
        let at = push_record(&ring, 1, b"x").unwrap();
        assert!(!ring.is_durable(at));
        let (_, after) = ring.peek().unwrap();
        ring.release(after);
        ring.set_durable(after);
        assert!(ring.is_durable(at));
    }

    #[test]
    fn producer_and_consumer_threads_agree() {
        let ring = std::sync::Arc::new(Handoff::new(4096));
        let producer = {
            let ring = ring.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u64 {
                    let payload = i.to_le_bytes();
                    while push_record(&ring, i, &payload[..(i % 8) as usize]).is_none() {
                        std::hint::spin_loop();
                    }
                }
            })
        };
        let mut expected = 0u64;
        while expected < 20_000 {
            if let Some((batch, payload)) = take(&ring) {
                assert_eq!(batch, expected);
                assert_eq!(payload, &expected.to_le_bytes()[..(expected % 8) as usize]);
                expected += 1;
            }
        }
        producer.join().unwrap();
    }
}
