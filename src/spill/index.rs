//! The batch index: what the spill log holds, rebuilt from records in log order (by the writer
//! as it appends, and by recovery as it scans).
//!
//! A batch is a chain of records in the log (`prev` links each record to the previous one of the
//! same batch), so its index entry has a fixed size however much audio it holds: per-session
//! memory does not grow with pending audio.
//!
//! Invariants: at most `batches_max` entries; a batch's records are applied in log order, so
//! `last` only moves forward; an entry leaves the index only when its upload is confirmed.
//!
//! Memory: the structures are sized for `batches_max` at start, and the pages a running server
//! touches do not creep towards that size as batches come and go. Entries live in a slab that
//! reuses the most recently freed slot, so its touched pages are those of the most batches ever
//! indexed at once. The key map (small buckets, written at random places) and the closed queue
//! (a ring whose head walks its whole capacity) are written through once at start.

use std::collections::{HashMap, VecDeque};

use slab::Slab;

use super::record::{BatchOpen, Header, Kind, Location, RecordError, decode_batch_open};

/// A batch's identity: the run that wrote it and the batch id within that run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchKey {
    /// The run id of the process that wrote the batch.
    pub run: u64,
    /// The batch id, unique within that run.
    pub batch: u64,
}

/// Where a batch is on its way from its session to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Its session may still append.
    Open,
    /// Closed by the record at `at`; uploadable once `at` is durable.
    Closed {
        /// Where the batch-close record is.
        at: Location,
    },
    /// Handed to the uploader.
    Uploading,
}

/// One indexed batch: fixed size, however much audio it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchEntry {
    /// The batch's identity.
    pub key: BatchKey,
    /// What its batch-open record says (uid, conversation, first timestamp, rate, level).
    pub open: BatchOpen,
    /// Segment of the batch-open record: every record of the batch is in this segment or later.
    pub first_segment: u64,
    /// The batch's latest record: the head of its chain.
    pub last: Location,
    /// PCM bytes in its audio records so far.
    pub audio_bytes: u64,
    /// Audio records in its chain so far.
    pub audio_records: u32,
    /// Open, closed or uploading.
    pub state: BatchState,
    /// Wall-clock milliseconds when the batch opened (for the oldest-pending-age metric).
    pub opened_at_unix_ms: u64,
    /// Places where recovery found records of the batch missing (damage in the log): such a
    /// batch is uploaded as what it is, a partial object (`docs/0005-durability-policy.md`).
    pub holes: u32,
}

/// Why a record does not fit the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexError {
    /// `batches_max` entries are live.
    Full,
    /// A batch-open for a batch already in the index.
    DuplicateOpen,
    /// An audio or close record for a batch that is not open.
    NotOpen,
    /// A batch-open payload that does not parse.
    Payload(RecordError),
    /// An uploaded record: it names a batch, it is not one of its records.
    NotABatchRecord,
}

/// Memory one indexed batch costs: its slab slot (the entry and the slab's tag), its key and
/// slot number in the hash map (with the map's control byte and load-factor slack, rounded up)
/// and its slot in the closed queue.
pub const ENTRY_BYTES: usize = std::mem::size_of::<BatchEntry>()
    + std::mem::size_of::<usize>()
    + (std::mem::size_of::<(BatchKey, u32)>() + 1) * 8 / 7
    + 1
    + std::mem::size_of::<BatchKey>();

/// The batch index: at most `batches_max` batches (open, closed or uploading), keyed by
/// [`BatchKey`].
pub struct Index {
    /// Key → slot in `entries`.
    slots: HashMap<BatchKey, u32>,
    entries: Slab<BatchEntry>,
    /// Closed batches in close order, waiting for their close to be durable.
    closed: VecDeque<BatchKey>,
    batches_max: usize,
    /// Sum of `audio_bytes` over every entry.
    pending_audio_bytes: u64,
    /// Whether a batch-close enters the closed queue at once. Off while recovery replays the
    /// log (batches closed there may be dropped by a later uploaded record, and the queue is
    /// bounded by `batches_max`); [`Index::requeue_closed`] fills the queue afterwards.
    queue_closes: bool,
}

impl Index {
    /// An empty index for `batches_max` batches (`1 ..= u32::MAX`), its structures allocated and
    /// written through once here.
    pub fn new(batches_max: usize) -> Index {
        assert!(batches_max > 0 && batches_max <= u32::MAX as usize);
        let mut index = Index {
            slots: HashMap::with_capacity(batches_max),
            entries: Slab::with_capacity(batches_max),
            closed: VecDeque::with_capacity(batches_max),
            batches_max,
            pending_audio_bytes: 0,
            queue_closes: true,
        };
        index.write_through();
        index
    }

    /// Writes every bucket of the key map and every slot of the closed queue once, so that the
    /// pages they will touch are resident from the start (see the module comment).
    fn write_through(&mut self) {
        let (slots_capacity, closed_capacity) = (self.slots.capacity(), self.closed.capacity());
        for batch in 0..self.batches_max as u64 {
            let key = BatchKey {
                run: u64::MAX,
                batch,
            };
            self.slots.insert(key, 0);
            self.closed.push_back(key);
        }
        self.slots.clear();
        self.closed.clear();
        debug_assert_eq!(self.slots.capacity(), slots_capacity);
        debug_assert_eq!(self.closed.capacity(), closed_capacity);
    }

    /// Batches indexed (open, closed or uploading).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no batch is indexed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when `batches_max` batches are indexed: no batch may open.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.batches_max
    }

    /// The entry of `key`, if indexed.
    pub fn get(&self, key: &BatchKey) -> Option<&BatchEntry> {
        let slot = *self.slots.get(key)?;
        Some(&self.entries[slot as usize])
    }

    fn get_mut(&mut self, key: &BatchKey) -> Option<&mut BatchEntry> {
        let slot = *self.slots.get(key)?;
        Some(&mut self.entries[slot as usize])
    }

    fn remove(&mut self, key: &BatchKey) -> Option<BatchEntry> {
        let slot = self.slots.remove(key)?;
        Some(self.entries.remove(slot as usize))
    }

    /// Every indexed batch, in slot order (not log order).
    pub fn entries(&self) -> impl Iterator<Item = &BatchEntry> {
        self.entries.iter().map(|(_, entry)| entry)
    }

    /// What [`Index::apply`] would return for this record, without applying it: the writer
    /// needs `prev` before the write and applies the record only once the write succeeded.
    pub fn prev_for(&self, run: u64, header: &Header) -> Result<Location, IndexError> {
        let key = BatchKey {
            run,
            batch: header.batch,
        };
        match (header.kind, self.get(&key)) {
            (Kind::BatchOpen, Some(_)) => Err(IndexError::DuplicateOpen),
            (Kind::BatchOpen, None) if self.is_full() => Err(IndexError::Full),
            (Kind::BatchOpen, None) => Ok(Location::NONE),
            (Kind::Uploaded, _) => Err(IndexError::NotABatchRecord),
            (_, Some(entry)) if entry.state == BatchState::Open => Ok(entry.last),
            (_, _) => Err(IndexError::NotOpen),
        }
    }

    /// Applies the record at `at` (in log order); returns the location its `prev` field must
    /// hold: the batch's previous record, or [`Location::NONE`] for a batch-open.
    pub fn apply(
        &mut self,
        run: u64,
        header: &Header,
        payload: &[u8],
        at: Location,
        now_unix_ms: u64,
    ) -> Result<Location, IndexError> {
        let key = BatchKey {
            run,
            batch: header.batch,
        };
        match header.kind {
            Kind::BatchOpen => self.open(key, payload, at, now_unix_ms),
            Kind::Audio => {
                let entry = self.open_entry(&key)?;
                let prev = entry.last;
                entry.last = at;
                entry.audio_bytes += payload.len() as u64;
                entry.audio_records += 1;
                self.pending_audio_bytes += payload.len() as u64;
                Ok(prev)
            }
            Kind::BatchClose => {
                let entry = self.open_entry(&key)?;
                let prev = entry.last;
                entry.last = at;
                entry.state = BatchState::Closed { at };
                if self.queue_closes {
                    self.closed.push_back(key);
                    debug_assert!(self.closed.len() <= self.batches_max);
                }
                Ok(prev)
            }
            Kind::Uploaded => Err(IndexError::NotABatchRecord),
        }
    }

    fn open(
        &mut self,
        key: BatchKey,
        payload: &[u8],
        at: Location,
        now_unix_ms: u64,
    ) -> Result<Location, IndexError> {
        if self.slots.contains_key(&key) {
            return Err(IndexError::DuplicateOpen);
        }
        if self.is_full() {
            return Err(IndexError::Full);
        }
        let open = decode_batch_open(payload).map_err(IndexError::Payload)?;
        let slot = self.entries.insert(BatchEntry {
            key,
            open,
            first_segment: at.segment(),
            last: at,
            audio_bytes: 0,
            audio_records: 0,
            state: BatchState::Open,
            opened_at_unix_ms: now_unix_ms,
            holes: 0,
        });
        debug_assert!(
            slot < self.batches_max,
            "the slab holds at most batches_max"
        );
        self.slots.insert(key, slot as u32);
        Ok(Location::NONE)
    }

    fn open_entry(&mut self, key: &BatchKey) -> Result<&mut BatchEntry, IndexError> {
        match self.get_mut(key) {
            Some(entry) if entry.state == BatchState::Open => Ok(entry),
            _ => Err(IndexError::NotOpen),
        }
    }

    /// Closes every open batch at its last record (recovery: their sessions are gone); returns
    /// how many were closed.
    pub fn close_open(&mut self) -> usize {
        let mut closed = 0;
        for (_, entry) in self.entries.iter_mut() {
            if entry.state == BatchState::Open {
                entry.state = BatchState::Closed { at: entry.last };
                if self.queue_closes {
                    self.closed.push_back(entry.key);
                }
                closed += 1;
            }
        }
        closed
    }

    /// Recovery: stop queueing closes until [`Index::requeue_closed`].
    pub fn defer_closed_queue(&mut self) {
        self.queue_closes = false;
    }

    /// Recovery is over: the closed queue holds every closed batch, in close order.
    pub fn requeue_closed(&mut self) {
        let mut closed: Vec<(Location, BatchKey)> = self
            .entries()
            .filter_map(|entry| match entry.state {
                BatchState::Closed { at } => Some((at, entry.key)),
                _ => None,
            })
            .collect();
        closed.sort_unstable();
        self.closed.clear();
        self.closed.extend(closed.into_iter().map(|(_, key)| key));
        self.queue_closes = true;
    }

    /// A record of the batch is missing (recovery found damage): counted on its entry.
    pub fn mark_hole(&mut self, key: &BatchKey) -> bool {
        match self.get_mut(key) {
            Some(entry) => {
                entry.holes = entry.holes.saturating_add(1);
                true
            }
            None => false,
        }
    }

    /// Recovery met the batch's uploaded record: it leaves the index whatever its state.
    pub fn forget(&mut self, key: &BatchKey) -> Option<BatchEntry> {
        debug_assert!(!self.queue_closes, "only while recovery replays the log");
        let entry = self.remove(key)?;
        self.pending_audio_bytes -= entry.audio_bytes;
        Some(entry)
    }

    /// Moves up to `limit` closed batches whose close record starts before `durable` (the end of
    /// the synced bytes: a record that starts there is not written yet) to `Uploading`,
    /// appending their keys to `out`. Batches without audio are dropped at once (nothing to
    /// upload) and counted in the return value.
    pub fn take_ready(
        &mut self,
        durable: Location,
        limit: usize,
        out: &mut Vec<BatchKey>,
    ) -> usize {
        let mut dropped_empty = 0;
        let mut taken = 0;
        while taken < limit {
            let Some(key) = self.closed.front().copied() else {
                break;
            };
            let entry = self.get_mut(&key).expect("closed batches are indexed");
            let BatchState::Closed { at } = entry.state else {
                unreachable!("the closed queue holds closed batches only");
            };
            if at >= durable {
                break;
            }
            if entry.audio_bytes == 0 {
                self.closed.pop_front();
                self.remove(&key);
                dropped_empty += 1;
                continue;
            }
            entry.state = BatchState::Uploading;
            self.closed.pop_front();
            out.push(key);
            taken += 1;
        }
        dropped_empty
    }

    /// The store confirmed the batch: it leaves the index.
    pub fn uploaded(&mut self, key: &BatchKey) -> Option<BatchEntry> {
        let entry = self.remove(key)?;
        self.pending_audio_bytes -= entry.audio_bytes;
        debug_assert_eq!(entry.state, BatchState::Uploading);
        Some(entry)
    }

    /// The oldest segment any indexed batch may have records in; segments before it hold only
    /// uploaded batches.
    pub fn oldest_segment(&self) -> Option<u64> {
        self.entries().map(|e| e.first_segment).min()
    }

    /// (batches, audio bytes) not yet uploaded; kept as the index changes, so reading it is O(1).
    pub fn pending(&self) -> (usize, u64) {
        debug_assert_eq!(
            self.pending_audio_bytes,
            self.entries().map(|e| e.audio_bytes).sum::<u64>()
        );
        (self.entries.len(), self.pending_audio_bytes)
    }

    /// When the oldest batch not yet uploaded opened (scans every entry).
    pub fn oldest_opened_unix_ms(&self) -> Option<u64> {
        self.entries().map(|e| e.opened_at_unix_ms).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Id;
    use crate::settings::DataProtectionLevel;
    use crate::spill::record::{BATCH_OPEN_PAYLOAD_BYTES_MAX, encode_batch_open};

    fn header(kind: Kind, batch: u64, len: usize) -> Header {
        Header {
            crc: 0,
            len: len as u32,
            kind,
            batch,
            prev: Location::NONE,
        }
    }

    fn open_payload() -> Vec<u8> {
        let open = BatchOpen {
            uid: Id::parse(b"u").unwrap(),
            conversation: Id::parse(b"c").unwrap(),
            timestamp: 1.5,
            sample_rate_hz: 16_000,
            level: DataProtectionLevel::Enhanced,
        };
        let mut out = [0u8; BATCH_OPEN_PAYLOAD_BYTES_MAX];
        let len = encode_batch_open(&mut out, &open);
        out[..len].to_vec()
    }

    #[test]
    fn records_chain_and_close() {
        let mut index = Index::new(4);
        let open = open_payload();
        let at = |offset| Location::new(1, offset);
        assert_eq!(
            index.apply(7, &header(Kind::BatchOpen, 1, open.len()), &open, at(24), 0),
            Ok(Location::NONE)
        );
        assert_eq!(
            index.apply(7, &header(Kind::Audio, 1, 3), b"abc", at(100), 0),
            Ok(at(24))
        );
        assert_eq!(
            index.apply(7, &header(Kind::Audio, 1, 2), b"de", at(200), 0),
            Ok(at(100))
        );
        assert_eq!(
            index.apply(7, &header(Kind::BatchClose, 1, 1), &[4], at(300), 0),
            Ok(at(200))
        );
        let key = BatchKey { run: 7, batch: 1 };
        let entry = index.get(&key).unwrap();
        assert_eq!(entry.audio_bytes, 5);
        assert_eq!(entry.audio_records, 2);
        assert_eq!(entry.state, BatchState::Closed { at: at(300) });
        assert_eq!(
            index.apply(7, &header(Kind::Audio, 1, 1), b"x", at(400), 0),
            Err(IndexError::NotOpen),
            "a closed batch takes no more audio"
        );
    }

    #[test]
    fn ready_only_once_the_close_is_durable() {
        let mut index = Index::new(4);
        let open = open_payload();
        index
            .apply(
                1,
                &header(Kind::BatchOpen, 1, open.len()),
                &open,
                Location::new(1, 24),
                0,
            )
            .unwrap();
        index
            .apply(1, &header(Kind::Audio, 1, 1), b"a", Location::new(1, 80), 0)
            .unwrap();
        index
            .apply(
                1,
                &header(Kind::BatchClose, 1, 1),
                &[1],
                Location::new(2, 24),
                0,
            )
            .unwrap();
        let mut out = Vec::new();
        index.take_ready(Location::new(1, 1000), 10, &mut out);
        assert!(out.is_empty());
        index.take_ready(Location::new(2, 24), 10, &mut out);
        assert!(
            out.is_empty(),
            "a close that starts at the synced end is not written yet"
        );
        index.take_ready(Location::new(2, 57), 10, &mut out);
        assert_eq!(out, vec![BatchKey { run: 1, batch: 1 }]);
        assert_eq!(index.oldest_segment(), Some(1));
        assert!(index.uploaded(&out[0]).is_some());
        assert_eq!(index.oldest_segment(), None);
    }

    #[test]
    fn empty_batches_are_dropped_not_uploaded() {
        let mut index = Index::new(4);
        let open = open_payload();
        index
            .apply(
                1,
                &header(Kind::BatchOpen, 9, open.len()),
                &open,
                Location::new(1, 24),
                0,
            )
            .unwrap();
        assert_eq!(index.close_open(), 1);
        let mut out = Vec::new();
        assert_eq!(index.take_ready(Location::new(1, 64), 10, &mut out), 1);
        assert!(out.is_empty() && index.is_empty());
    }

    #[test]
    fn bounded_and_rejects_duplicates() {
        let mut index = Index::new(1);
        let open = open_payload();
        let h = header(Kind::BatchOpen, 1, open.len());
        index.apply(1, &h, &open, Location::new(1, 24), 0).unwrap();
        assert_eq!(
            index.apply(1, &h, &open, Location::new(1, 99), 0),
            Err(IndexError::DuplicateOpen)
        );
        let h2 = header(Kind::BatchOpen, 2, open.len());
        assert_eq!(
            index.apply(1, &h2, &open, Location::new(1, 199), 0),
            Err(IndexError::Full)
        );
    }

    #[test]
    fn take_ready_respects_the_limit_and_order() {
        let mut index = Index::new(8);
        let open = open_payload();
        for batch in 1..=3u64 {
            let base = (batch as u32) * 1000;
            index
                .apply(
                    1,
                    &header(Kind::BatchOpen, batch, open.len()),
                    &open,
                    Location::new(1, base),
                    0,
                )
                .unwrap();
            index
                .apply(
                    1,
                    &header(Kind::Audio, batch, 1),
                    b"a",
                    Location::new(1, base + 100),
                    0,
                )
                .unwrap();
            index
                .apply(
                    1,
                    &header(Kind::BatchClose, batch, 1),
                    &[1],
                    Location::new(1, base + 200),
                    0,
                )
                .unwrap();
        }
        let mut out = Vec::new();
        index.take_ready(Location::new(1, u32::MAX), 2, &mut out);
        assert_eq!(out.iter().map(|k| k.batch).collect::<Vec<_>>(), vec![1, 2]);
        out.clear();
        index.take_ready(Location::new(1, u32::MAX), 2, &mut out);
        assert_eq!(out.iter().map(|k| k.batch).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn slots_are_reused_without_mixing_up_entries() {
        let mut index = Index::new(2);
        let open = open_payload();
        let mut out = Vec::new();
        // Batches come and go, two at a time, far more of them than the index holds: each key
        // must keep finding its own entry in the reused slots.
        for batch in 1..=50u64 {
            let at = |offset: u32| Location::new(batch, offset);
            index
                .apply(
                    3,
                    &header(Kind::BatchOpen, batch, open.len()),
                    &open,
                    at(0),
                    batch,
                )
                .unwrap();
            let audio = vec![7u8; batch as usize];
            index
                .apply(
                    3,
                    &header(Kind::Audio, batch, audio.len()),
                    &audio,
                    at(100),
                    0,
                )
                .unwrap();
            index
                .apply(3, &header(Kind::BatchClose, batch, 1), &[1], at(200), 0)
                .unwrap();
            if batch > 1 {
                let older = BatchKey {
                    run: 3,
                    batch: batch - 1,
                };
                let entry = index.uploaded(&older).expect("the older batch is indexed");
                assert_eq!((entry.key, entry.audio_bytes), (older, batch - 1));
            }
            assert_eq!(index.take_ready(at(233), 1, &mut out), 0);
            let key = BatchKey { run: 3, batch };
            let entry = index.get(&key).unwrap();
            assert_eq!(entry.opened_at_unix_ms, batch);
            assert_eq!(entry.audio_bytes, batch);
            assert_eq!(index.pending(), (1, batch));
        }
        assert_eq!(out.len(), 50);
        assert_eq!(index.oldest_segment(), Some(50));
    }
}
