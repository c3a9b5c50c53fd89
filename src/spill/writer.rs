//! The spill writer: one dedicated thread that drains every core's hand-off ring into the active
//! segment file, with group commit, and hands durable closed batches to the uploader.
//!
//! Never on a connection thread: under monoio's epoll driver file I/O would run inline and stall
//! every socket of the core.
//!
//! Group commit: one `fdatasync` per `spill_sync_interval_ms` or `spill_sync_bytes` of appended
//! records, whichever comes first. A record is durable when the sync that covers it completes;
//! only then does the writer publish each ring's durable position (the sessions' close
//! acknowledgement waits on it) and release closed batches to the uploader.
//!
//! Upload confirmations come back to the writer ([`SpillShared::confirm_uploaded`]): it appends
//! an uploaded record per batch, and only once a sync covers it does the batch leave the index
//! and its confirmation complete (the uploader then sends the chunk notification). A restart
//! finds the record and neither uploads nor notifies the batch again (issue 11, defect 4).
//!
//! Errors (`docs/0010-fsync-errors-are-fatal.md`): a failed `fdatasync` is never retried — the
//! kernel may have dropped the unsynced pages and a second sync would succeed without them
//! (PostgreSQL's fsyncgate). The writer stops: no durable position advances again, nothing more
//! is acknowledged, and the process exits non-zero so that recovery decides at the next start.
//! A write that fails for lack of space (ENOSPC, EDQUOT) is cut back and retried later, its
//! records staying in their ring (backpressure), while the writer goes on deleting uploaded
//! segments — which is what frees the space; any other write error is fatal like a sync error.
//!
//! Invariants: records reach the file in each ring's order and at the locations the index gave
//! them; a ring's durable position and a batch's close are published only after a successful
//! sync that covers them, and never after a failed one; a segment is deleted only when every
//! batch that may have records in it is confirmed; the disk budget flag is raised when the live
//! segments reach `spill_bytes_max`.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use super::clock::Clock;
use super::disk::{AppendFile, Disk};
use super::handoff::Handoff;
use super::index::{BatchEntry, BatchKey, Index, IndexError};
use super::metrics::SpillMetrics;
use super::record::{
    Location, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, UPLOADED_RECORD_BYTES, decode_header,
    encode_segment_header, encode_uploaded, seal, set_prev,
};
use super::scan::segment_file_name;

/// What became of one record offered to the index.
enum Applied {
    Yes,
    /// Malformed or inconsistent (a bug, counted); not written.
    Skipped,
    /// The index holds `spill_batches_max` batches: the record waits in its ring.
    IndexFull,
}

/// Bytes taken from one ring per pass before the writer visits the next ring (fairness).
const RING_BYTES_PER_PASS_MAX: usize = 4 << 20;
/// Longest time between refreshes of the oldest-pending-batch age (each scans the index).
const OLDEST_AGE_INTERVAL_MS: u64 = 100;
/// Records gathered into one vectored write (below the kernel's IOV_MAX of 1024).
const WRITE_RECORDS_MAX: usize = 256;
/// Bytes gathered into one vectored write.
const WRITE_BYTES_MAX: u64 = 2 << 20;
/// Park time when there is nothing to write and nothing to sync.
const IDLE_PARK: Duration = Duration::from_millis(100);
/// Pause after a write that failed for lack of space before trying it again.
const IO_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Upload confirmations waiting for the writer; the uploader has at most `upload_concurrency`
/// (≤ 256) waiting, `pusher spill drain` the same.
pub const CONFIRMATIONS_MAX: usize = 256;
/// Bytes the writer holds per confirmation slot: the queue's, taken and written entries, and
/// the encoded uploaded record (for the budget).
pub const CONFIRMATION_BYTES: usize =
    3 * std::mem::size_of::<Confirmation>() + UPLOADED_RECORD_BYTES;

/// Limits of the writer, from the config.
#[derive(Debug, Clone)]
pub struct WriterLimits {
    /// Bytes a segment may reach before the next one starts (`spill_segment_bytes`); a single
    /// record larger than that still goes into a fresh segment.
    pub segment_bytes_max: u64,
    /// Longest time in milliseconds between an append and its fdatasync (`spill_sync_interval_ms`).
    pub sync_interval_ms: u64,
    /// Appended bytes that trigger an fdatasync before the interval ends (`spill_sync_bytes`).
    pub sync_bytes: u64,
    /// The disk budget in bytes (`spill_max_bytes`): at it, [`SpillShared::full`] is raised.
    pub max_bytes: u64,
}

/// Called once the batch's uploaded record is durable.
pub type Confirmed = Box<dyn FnOnce() + Send>;

/// A batch the store confirmed, on its way into the log.
pub struct Confirmation {
    /// The confirmed batch.
    pub key: BatchKey,
    /// Runs once the batch's uploaded record is durable.
    pub done: Confirmed,
}

/// State shared between the writer, the cores and the uploader.
pub struct SpillShared {
    /// The segments' directory, `<data_dir>/spill`.
    pub dir: PathBuf,
    /// This process's run id (written in every segment header and every batch key).
    pub run_id: u64,
    /// The file operations (the real disk, or the simulation's).
    pub disk: Arc<dyn Disk>,
    /// The clocks (the system's, or the simulation's).
    pub clock: Arc<dyn Clock>,
    /// The batch index, shared by the writer (records in log order) and the uploader's side.
    pub index: Mutex<Index>,
    /// The live segments reached `spill_bytes_max`: cores take no more audio until uploads free
    /// space (backpressure; nothing is dropped).
    pub full: AtomicBool,
    /// Bytes of the segment files on disk, kept by the writer.
    pub live_bytes: AtomicU64,
    /// An upload was confirmed since the writer last looked for segments to delete.
    uploads_confirmed: AtomicBool,
    /// Confirmations the writer has not taken yet (at most [`CONFIRMATIONS_MAX`]).
    confirmations: Mutex<Vec<Confirmation>>,
    /// The writer stopped on an I/O error (fsyncgate): nothing more becomes durable.
    failed: AtomicBool,
    /// The writer's thread, to wake it (none in the simulation).
    writer_thread: OnceLock<std::thread::Thread>,
    /// The `pusher_spill_*` metrics.
    pub metrics: SpillMetrics,
}

impl SpillShared {
    /// The state of a log in `dir` for run `run_id`, starting from a recovered `index`; not full,
    /// not failed, no writer thread yet.
    pub fn new(
        dir: PathBuf,
        run_id: u64,
        index: Index,
        metrics: SpillMetrics,
        disk: Arc<dyn Disk>,
        clock: Arc<dyn Clock>,
    ) -> SpillShared {
        SpillShared {
            dir,
            run_id,
            disk,
            clock,
            index: Mutex::new(index),
            full: AtomicBool::new(false),
            live_bytes: AtomicU64::new(0),
            uploads_confirmed: AtomicBool::new(false),
            confirmations: Mutex::new(Vec::with_capacity(CONFIRMATIONS_MAX)),
            failed: AtomicBool::new(false),
            writer_thread: OnceLock::new(),
            metrics,
        }
    }

    /// True while the disk budget is reached (see [`SpillShared::full`]).
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// True once the writer stopped on an I/O error.
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// The writer thread to wake when there is work for it.
    pub fn set_writer_thread(&self, thread: std::thread::Thread) {
        let _ = self.writer_thread.set(thread);
    }

    /// The store confirmed `key`: the writer appends its uploaded record, and `done` runs once
    /// that record is durable (never, if the writer fails first).
    pub fn confirm_uploaded(&self, key: BatchKey, done: Confirmed) {
        let mut confirmations = self.confirmations.lock().expect("confirmations lock");
        debug_assert!(
            confirmations.len() < CONFIRMATIONS_MAX,
            "at most upload_concurrency confirmations wait"
        );
        confirmations.push(Confirmation { key, done });
        drop(confirmations);
        if let Some(thread) = self.writer_thread.get() {
            thread.unpark();
        }
    }

    /// Batches in the index: open, closed and uploading ones.
    pub fn pending_batches(&self) -> usize {
        self.index.lock().expect("index lock").len()
    }
}

/// Hands a durable closed batch to the uploader. The uploader's queue holds as many jobs as the
/// index holds batches, so this never has to refuse.
pub type Submit = Box<dyn FnMut(&BatchEntry) + Send>;

/// The writer stopped: an I/O error it must not retry (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterFailed(pub String);

impl std::fmt::Display for WriterFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Records taken from a ring, applied to the index and sealed, whose write failed for lack of
/// space: written again, at the same place, before anything else.
struct PendingRing {
    ring_index: usize,
    /// Ring positions of the records to write, in order.
    positions: Vec<u64>,
    /// The ring position after the last record taken (skipped ones included).
    cursor: u64,
    bytes: u64,
    /// Offset in the active segment the records were located at (the index has them there).
    offset: u64,
}

/// The spill writer: drains the hand-off rings into the active segment, group-commits, and hands
/// durable closed batches on (see the module doc).
pub struct Writer {
    shared: Arc<SpillShared>,
    rings: Vec<Arc<Handoff>>,
    limits: WriterLimits,
    /// Live segments, oldest first: (sequence, bytes). The last one is active.
    segments: VecDeque<(u64, u64)>,
    active: Box<dyn AppendFile>,
    active_offset: u64,
    unsynced_bytes: u64,
    last_sync_ms: u64,
    /// When the oldest-pending-batch age was last refreshed.
    oldest_published_ms: Option<u64>,
    /// Per ring: the position consumed (written) so far.
    consumed: Vec<u64>,
    submit: Submit,
    ready: Vec<BatchKey>,
    io_failing: bool,
    /// A ring write that failed for lack of space.
    pending: Option<PendingRing>,
    /// The active segment is full: start the next one before writing more.
    rotate_due: bool,
    /// Encoded uploaded records not yet written, and their confirmations.
    uploaded_records: Vec<u8>,
    taken_confirmations: Vec<Confirmation>,
    /// Confirmations whose records are written, completed by the next sync.
    written_confirmations: Vec<Confirmation>,
    failed: Option<WriterFailed>,
}

impl Writer {
    /// Opens a new active segment `next_sequence` after the `existing` ones (recovered, oldest
    /// first) and releases every recovered closed batch to the uploader.
    pub fn open(
        shared: Arc<SpillShared>,
        rings: Vec<Arc<Handoff>>,
        limits: WriterLimits,
        existing: Vec<(u64, u64)>,
        next_sequence: u64,
        submit: Submit,
    ) -> Result<Writer, WriterFailed> {
        let active = create_segment(&shared, next_sequence)
            .map_err(|e| WriterFailed(format!("cannot open a new segment: {e}")))?;
        let mut segments: VecDeque<(u64, u64)> = existing.into();
        segments.push_back((next_sequence, SEGMENT_HEADER_BYTES as u64));
        let consumed = vec![0; rings.len()];
        let now_ms = shared.clock.monotonic_ms();
        let mut writer = Writer {
            shared,
            rings,
            limits,
            segments,
            active,
            active_offset: SEGMENT_HEADER_BYTES as u64,
            unsynced_bytes: 0,
            last_sync_ms: now_ms,
            oldest_published_ms: None,
            consumed,
            submit,
            ready: Vec::new(),
            io_failing: false,
            pending: None,
            rotate_due: false,
            uploaded_records: Vec::with_capacity(CONFIRMATIONS_MAX * UPLOADED_RECORD_BYTES),
            taken_confirmations: Vec::with_capacity(CONFIRMATIONS_MAX),
            written_confirmations: Vec::with_capacity(CONFIRMATIONS_MAX),
            failed: None,
        };
        writer.account_live_bytes();
        writer.release_durable(Location(u64::MAX));
        // Recovered segments whose batches were all uploaded by the previous run go at once.
        writer.delete_uploaded_segments();
        Ok(writer)
    }

    /// Runs on the calling thread until an I/O error it must not retry; then the process exits
    /// with code 1 (recovery decides at the next start).
    pub fn run(mut self) {
        self.shared.set_writer_thread(std::thread::current());
        loop {
            match self.step() {
                Ok(true) => {}
                Ok(false) if self.pending.is_some() || self.rotate_due => {
                    std::thread::sleep(IO_ERROR_PAUSE);
                }
                Ok(false) => self.park(),
                Err(failed) => {
                    tracing::error!(
                        "spill log stopped: {failed}; nothing more is acknowledged; exiting so \
                         that recovery decides at the next start"
                    );
                    std::process::exit(1);
                }
            }
        }
    }

    /// One pass: retry a write that lacked space, rotate, drain the rings, write upload
    /// confirmations, sync when due, delete uploaded segments, refresh the gauges. True when it
    /// moved anything.
    pub fn step(&mut self) -> Result<bool, WriterFailed> {
        if let Some(failed) = &self.failed {
            return Err(failed.clone());
        }
        let mut moved = false;
        if self.pending.is_some() {
            moved = self.retry_pending()?;
        }
        if self.pending.is_none() && self.rotate_due {
            moved |= self.rotate()?;
        }
        if self.pending.is_none() && !self.rotate_due {
            moved |= self.drain_rings()?;
        }
        if self.pending.is_none() && !self.rotate_due {
            moved |= self.write_confirmations()?;
        }
        if self.sync_due() {
            self.sync()?;
            moved = true;
        }
        if self.shared.uploads_confirmed.swap(false, Ordering::AcqRel) {
            self.delete_uploaded_segments();
        }
        self.publish_gauges();
        Ok(moved)
    }

    /// Writes everything taken so far and syncs it (the simulation's end of a run, and
    /// `pusher spill drain` before it exits).
    pub fn flush(&mut self) -> Result<(), WriterFailed> {
        self.step()?;
        if self.unsynced_bytes > 0 {
            self.sync()?;
        }
        Ok(())
    }

    /// True while a write waits for space or rotation.
    pub fn is_stalled(&self) -> bool {
        self.pending.is_some() || self.rotate_due
    }

    fn drain_rings(&mut self) -> Result<bool, WriterFailed> {
        let mut moved = false;
        for ring_index in 0..self.rings.len() {
            let mut taken = 0;
            while taken < RING_BYTES_PER_PASS_MAX && self.pending.is_none() && !self.rotate_due {
                match self.write_batch(ring_index)? {
                    0 => break,
                    bytes => {
                        taken += bytes;
                        moved = true;
                    }
                }
            }
        }
        Ok(moved)
    }

    /// Takes up to [`WRITE_RECORDS_MAX`] records from one ring, fills in their `prev` and CRC,
    /// applies them to the index and writes them with one vectored write; returns the ring bytes
    /// taken (0 when there was nothing to do or the index is full).
    fn write_batch(&mut self, ring_index: usize) -> Result<usize, WriterFailed> {
        let ring = Arc::clone(&self.rings[ring_index]);
        let start = ring.released();
        let mut cursor = start;
        let mut positions = Vec::with_capacity(WRITE_RECORDS_MAX);
        let mut bytes = 0u64;
        {
            let mut index = self.shared.index.lock().expect("index lock");
            while positions.len() < WRITE_RECORDS_MAX && bytes < WRITE_BYTES_MAX {
                let Some((record, after)) = ring.peek_from(cursor) else {
                    break;
                };
                let offset = self.active_offset + bytes;
                if offset + record.len() as u64 > self.limits.segment_bytes_max
                    && offset > SEGMENT_HEADER_BYTES as u64
                {
                    self.rotate_due = true;
                    break;
                }
                let at = Location::new(self.active_sequence(), offset as u32);
                match self.apply(&mut index, record, at) {
                    Applied::Yes => {
                        bytes += record.len() as u64;
                        positions.push(cursor);
                    }
                    Applied::Skipped => {}
                    Applied::IndexFull => break,
                }
                cursor = after;
            }
        }
        let taken = (cursor - start) as usize + usize::from(self.rotate_due);
        if cursor == start {
            return Ok(taken);
        }
        self.pending = Some(PendingRing {
            ring_index,
            positions,
            cursor,
            bytes,
            offset: self.active_offset,
        });
        self.retry_pending()?;
        Ok(taken)
    }

    /// Writes the pending ring records; true when they are written (then their ring space is
    /// released), false when the disk still lacks space.
    fn retry_pending(&mut self) -> Result<bool, WriterFailed> {
        let pending = self.pending.take().expect("a pending write");
        debug_assert_eq!(
            self.active_offset, pending.offset,
            "records are written at the locations the index gave them"
        );
        let ring = Arc::clone(&self.rings[pending.ring_index]);
        let records: Vec<&[u8]> = pending
            .positions
            .iter()
            .map(|&position| &*ring.peek_from(position).expect("a taken record").0)
            .collect();
        let written = self.write_all(&records)?;
        drop(records);
        if !written {
            self.pending = Some(pending);
            return Ok(false);
        }
        self.appended(pending.bytes);
        let metrics = &self.shared.metrics;
        metrics
            .appended_records
            .inc_by(pending.positions.len() as u64);
        metrics.appended_bytes.inc_by(pending.bytes);
        ring.release(pending.cursor);
        self.consumed[pending.ring_index] = pending.cursor;
        Ok(true)
    }

    /// Counts `bytes` appended to the active segment.
    fn appended(&mut self, bytes: u64) {
        self.active_offset += bytes;
        self.unsynced_bytes += bytes;
        self.segments.back_mut().expect("an active segment").1 = self.active_offset;
        self.shared.live_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Fills in the record's `prev` and CRC and applies it to the index at `at`.
    fn apply(&self, index: &mut Index, record: &mut [u8], at: Location) -> Applied {
        let header = match decode_header(record) {
            Ok(header) => header,
            Err(err) => {
                tracing::error!(?err, "a core handed over a malformed spill record; skipped");
                self.shared.metrics.records_rejected.inc();
                return Applied::Skipped;
            }
        };
        let payload = &record[RECORD_HEADER_BYTES..];
        let now_unix_ms = self.shared.clock.unix_ms();
        match index.apply(self.shared.run_id, &header, payload, at, now_unix_ms) {
            Ok(prev) => {
                set_prev(record, prev);
                seal(record);
                Applied::Yes
            }
            // Not skipped: the record waits in its ring until uploads free index entries.
            Err(IndexError::Full) => Applied::IndexFull,
            Err(err) => {
                tracing::error!(
                    ?err,
                    batch = header.batch,
                    "spill record does not fit the index; skipped"
                );
                self.shared.metrics.records_rejected.inc();
                Applied::Skipped
            }
        }
    }

    /// Takes the upload confirmations waiting and appends their uploaded records.
    fn write_confirmations(&mut self) -> Result<bool, WriterFailed> {
        if self.taken_confirmations.is_empty() {
            let mut waiting = self
                .shared
                .confirmations
                .lock()
                .expect("confirmations lock");
            if waiting.is_empty() {
                return Ok(false);
            }
            self.taken_confirmations.append(&mut waiting);
            drop(waiting);
            self.uploaded_records.clear();
            for confirmation in &self.taken_confirmations {
                let mut record = [0u8; UPLOADED_RECORD_BYTES];
                encode_uploaded(&mut record, confirmation.key.run, confirmation.key.batch);
                self.uploaded_records.extend_from_slice(&record);
            }
        }
        let bytes = self.uploaded_records.len() as u64;
        if self.active_offset + bytes > self.limits.segment_bytes_max
            && self.active_offset > SEGMENT_HEADER_BYTES as u64
        {
            self.rotate_due = true;
            return Ok(false);
        }
        let records = std::mem::take(&mut self.uploaded_records);
        let written = self.write_all(&[&records]);
        self.uploaded_records = records;
        if !written? {
            return Ok(false);
        }
        let count = self.taken_confirmations.len() as u64;
        self.appended(bytes);
        self.shared.metrics.uploaded_records.inc_by(count);
        self.written_confirmations
            .append(&mut self.taken_confirmations);
        Ok(true)
    }

    /// One attempt to append `records` at the end of the active segment. A write that fails for
    /// lack of space is cut back to the segment's end (Ok(false): try again later); any other
    /// error stops the writer.
    fn write_all(&mut self, records: &[&[u8]]) -> Result<bool, WriterFailed> {
        let mut slices: Vec<IoSlice<'_>> = records.iter().map(|r| IoSlice::new(r)).collect();
        let mut remaining: &mut [IoSlice<'_>] = &mut slices;
        let result = loop {
            if remaining.is_empty() {
                break Ok(());
            }
            match self.active.write_vectored(remaining) {
                Ok(0) => break Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                Ok(n) => IoSlice::advance_slices(&mut remaining, n),
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => break Err(err),
            }
        };
        let err = match result {
            Ok(()) => {
                self.on_io_ok();
                return Ok(true);
            }
            Err(err) => err,
        };
        if !lacks_space(&err) {
            return Err(self.fail("write", &err));
        }
        self.on_io_error("write", &err);
        if let Err(err) = self.active.set_len(self.active_offset) {
            return Err(self.fail("truncate after a failed write", &err));
        }
        Ok(false)
    }

    fn active_sequence(&self) -> u64 {
        self.segments.back().expect("an active segment").0
    }

    fn sync_due(&self) -> bool {
        self.unsynced_bytes > 0
            && (self.unsynced_bytes >= self.limits.sync_bytes
                || self
                    .shared
                    .clock
                    .monotonic_ms()
                    .saturating_sub(self.last_sync_ms)
                    >= self.limits.sync_interval_ms)
    }

    /// fdatasync, then publish durability, release closed batches and complete confirmations.
    /// A failed sync stops the writer (never retried: fsyncgate).
    fn sync(&mut self) -> Result<(), WriterFailed> {
        debug_assert!(self.failed.is_none(), "nothing is synced after a failure");
        let started_ms = self.shared.clock.monotonic_ms();
        if let Err(err) = self.active.sync_data() {
            return Err(self.fail("fdatasync", &err));
        }
        let now_ms = self.shared.clock.monotonic_ms();
        self.shared
            .metrics
            .sync_seconds
            .observe(now_ms.saturating_sub(started_ms) as f64 / 1000.0);
        self.unsynced_bytes = 0;
        self.last_sync_ms = now_ms;
        for (ring, &position) in self.rings.iter().zip(&self.consumed) {
            debug_assert_eq!(
                position,
                ring.released(),
                "only written records become durable"
            );
            ring.set_durable(position);
        }
        let durable = Location::new(self.active_sequence(), self.active_offset as u32);
        self.release_durable(durable);
        self.complete_confirmations();
        Ok(())
    }

    /// The uploaded records written before the last sync are durable: their batches leave the
    /// index and their confirmations complete.
    fn complete_confirmations(&mut self) {
        if self.written_confirmations.is_empty() {
            return;
        }
        let mut index = self.shared.index.lock().expect("index lock");
        for confirmation in &self.written_confirmations {
            if index.uploaded(&confirmation.key).is_some() {
                self.shared.metrics.batches_uploaded.inc();
            }
        }
        drop(index);
        self.shared.uploads_confirmed.store(true, Ordering::Release);
        for confirmation in self.written_confirmations.drain(..) {
            (confirmation.done)();
        }
    }

    fn release_durable(&mut self, durable: Location) {
        self.ready.clear();
        let dropped_empty = {
            let mut index = self.shared.index.lock().expect("index lock");
            let dropped = index.take_ready(durable, usize::MAX, &mut self.ready);
            for key in &self.ready {
                let entry = index.get(key).expect("taken batches stay indexed");
                debug_assert!(
                    entry.last <= durable,
                    "a batch reaches the uploader only once its close is durable"
                );
                (self.submit)(entry);
            }
            dropped
        };
        self.shared
            .metrics
            .batches_closed
            .inc_by(self.ready.len() as u64);
        if dropped_empty > 0 {
            self.shared.uploads_confirmed.store(true, Ordering::Release);
        }
    }

    /// Syncs the active segment and starts the next one; false when the disk lacks the space
    /// for the new segment (tried again later).
    fn rotate(&mut self) -> Result<bool, WriterFailed> {
        if self.unsynced_bytes > 0 {
            self.sync()?;
        }
        let next = self.active_sequence() + 1;
        match create_segment(&self.shared, next) {
            Ok(file) => {
                self.on_io_ok();
                self.active = file;
            }
            Err(SegmentError::Space(err)) => {
                self.on_io_error("create segment", &err);
                return Ok(false);
            }
            Err(SegmentError::Fatal(what, err)) => return Err(self.fail(what, &err)),
        }
        self.rotate_due = false;
        self.segments.push_back((next, SEGMENT_HEADER_BYTES as u64));
        self.active_offset = SEGMENT_HEADER_BYTES as u64;
        self.shared
            .live_bytes
            .fetch_add(SEGMENT_HEADER_BYTES as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Deletes the segments older than the oldest segment any indexed batch may use.
    fn delete_uploaded_segments(&mut self) {
        let oldest_needed = self
            .shared
            .index
            .lock()
            .expect("index lock")
            .oldest_segment();
        let active = self.active_sequence();
        let keep_from = oldest_needed.unwrap_or(active).min(active);
        while let Some(&(sequence, bytes)) = self.segments.front() {
            if sequence >= keep_from {
                break;
            }
            debug_assert!(sequence < active, "the active segment is never deleted");
            let path = self.shared.dir.join(segment_file_name(sequence));
            if let Err(err) = self.shared.disk.remove_file(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::error!(path = %path.display(), "cannot delete an uploaded segment: {err}");
                break;
            }
            self.segments.pop_front();
            self.shared.live_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.shared.metrics.segments_deleted.inc();
        }
    }

    /// Segments on disk (live and active), oldest first: (sequence, bytes).
    pub fn segments(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.segments.iter().copied()
    }

    fn account_live_bytes(&self) {
        let live: u64 = self.segments.iter().map(|&(_, bytes)| bytes).sum();
        self.shared.live_bytes.store(live, Ordering::Relaxed);
    }

    /// Raises or lowers the disk-budget flag (every pass: the cores act on it) and refreshes the
    /// gauges. The oldest pending batch's age scans the whole index under its lock, so it is
    /// refreshed at most every [`OLDEST_AGE_INTERVAL_MS`] (the gauge is in whole seconds).
    fn publish_gauges(&mut self) {
        let live = self.shared.live_bytes.load(Ordering::Relaxed);
        let full = live >= self.limits.max_bytes;
        if full != self.shared.full.swap(full, Ordering::Relaxed) {
            if full {
                tracing::warn!(
                    live_bytes = live,
                    "spill log full: sessions that write audio are not read until uploads free space"
                );
            } else {
                tracing::info!(live_bytes = live, "spill log below its budget again");
            }
        }
        let metrics = &self.shared.metrics;
        metrics.full.set(i64::from(full));
        metrics.live_bytes.set(live as i64);
        metrics.segments_live.set(self.segments.len() as i64);
        let index = self.shared.index.lock().expect("index lock");
        let (batches, bytes) = index.pending();
        metrics.pending_batches.set(batches as i64);
        metrics.pending_bytes.set(bytes as i64);
        let now_ms = self.shared.clock.monotonic_ms();
        if self
            .oldest_published_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < OLDEST_AGE_INTERVAL_MS)
        {
            return;
        }
        self.oldest_published_ms = Some(now_ms);
        let oldest = index.oldest_opened_unix_ms();
        drop(index);
        let age_s = oldest.map_or(0, |opened| {
            self.shared.clock.unix_ms().saturating_sub(opened) / 1000
        });
        metrics.oldest_pending_age_seconds.set(age_s as i64);
    }

    fn park(&self) {
        let timeout = if self.unsynced_bytes > 0 {
            let since = self
                .shared
                .clock
                .monotonic_ms()
                .saturating_sub(self.last_sync_ms);
            Duration::from_millis(self.limits.sync_interval_ms.saturating_sub(since))
        } else {
            IDLE_PARK
        };
        let confirmations = !self
            .shared
            .confirmations
            .lock()
            .expect("confirmations lock")
            .is_empty();
        if !confirmations && self.rings.iter().all(|ring| ring.prepare_park()) {
            std::thread::park_timeout(timeout);
        }
    }

    /// Stops the writer: nothing more becomes durable.
    fn fail(&mut self, what: &str, err: &std::io::Error) -> WriterFailed {
        self.shared.metrics.io_errors.inc();
        self.shared.failed.store(true, Ordering::Release);
        let failed = WriterFailed(format!("spill log {what} failed: {err}"));
        tracing::error!("{failed}; the writer stops (fsync errors are not retried)");
        self.failed = Some(failed.clone());
        failed
    }

    fn on_io_error(&mut self, what: &str, err: &std::io::Error) {
        self.shared.metrics.io_errors.inc();
        if !self.io_failing {
            self.io_failing = true;
            tracing::error!("spill log {what} failed (records stay queued; retrying): {err}");
        }
    }

    fn on_io_ok(&mut self) {
        if self.io_failing {
            self.io_failing = false;
            tracing::info!("spill log writes succeed again");
        }
    }
}

/// A write error that more space would cure (retried; anything else stops the writer).
fn lacks_space(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
        || err.kind() == std::io::ErrorKind::StorageFull
}

/// Why a new segment could not be started.
enum SegmentError {
    /// No space: tried again later.
    Space(std::io::Error),
    /// Anything else, or a failed sync: the writer stops.
    Fatal(&'static str, std::io::Error),
}

/// Creates segment `sequence` with its header, synced, and syncs the directory entry.
fn create_segment(
    shared: &SpillShared,
    sequence: u64,
) -> Result<Box<dyn AppendFile>, SegmentError> {
    let path = shared.dir.join(segment_file_name(sequence));
    let classify = |what, err: std::io::Error| {
        if lacks_space(&err) {
            SegmentError::Space(err)
        } else {
            SegmentError::Fatal(what, err)
        }
    };
    let mut file = shared
        .disk
        .create_new(&path)
        .map_err(|e| classify("create segment", e))?;
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    encode_segment_header(&mut header, sequence, shared.run_id);
    let mut written = 0;
    while written < header.len() {
        match file.write_vectored(&[IoSlice::new(&header[written..])]) {
            Ok(0) => {
                let err = std::io::Error::from(std::io::ErrorKind::WriteZero);
                return Err(SegmentError::Fatal("segment header", err));
            }
            Ok(n) => written += n,
            Err(err) => {
                // The new file stays empty or torn at offset 0; recovery ignores it.
                let _ = shared.disk.remove_file(&path);
                return Err(classify("segment header", err));
            }
        }
    }
    file.sync_data()
        .map_err(|e| SegmentError::Fatal("fdatasync of a new segment", e))?;
    shared
        .disk
        .sync_dir(&shared.dir)
        .map_err(|e| SegmentError::Fatal("directory sync", e))?;
    Ok(file)
}

impl std::fmt::Display for SegmentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SegmentError::Space(err) => write!(f, "{err}"),
            SegmentError::Fatal(what, err) => write!(f, "{what}: {err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimClock;
    use crate::sim::disk::{DiskFaults, SimDisk};
    use crate::spill::record::Kind;
    use prometheus_client::registry::Registry;

    fn push(ring: &Handoff, kind: Kind, batch: u64, payload: &[u8]) -> u64 {
        ring.push_record(kind, batch, &[payload]).unwrap()
    }

    /// fsyncgate: after a failed fdatasync the writer never publishes durability again (a
    /// retried sync may "succeed" without the lost pages), it stops, and a crash then shows the
    /// audio was indeed not durable — so nothing was acknowledged that is not on disk.
    #[test]
    fn a_failed_sync_is_never_retried_and_nothing_more_is_acknowledged() {
        let faultless = DiskFaults {
            capacity_bytes: u64::MAX,
            ..DiskFaults::default()
        };
        let disk = SimDisk::new(1, faultless);
        let clock = Arc::new(SimClock::default());
        let dir = PathBuf::from("/sim/spill");
        let metrics = SpillMetrics::register(&mut Registry::default());
        let shared = Arc::new(SpillShared::new(
            dir,
            7,
            Index::new(16),
            metrics,
            Arc::new(disk.clone()),
            clock.clone(),
        ));
        let ring = Arc::new(Handoff::new(4096));
        let limits = WriterLimits {
            segment_bytes_max: 1 << 20,
            sync_interval_ms: 10,
            sync_bytes: 1 << 20,
            max_bytes: 1 << 30,
        };
        let mut writer = Writer::open(
            Arc::clone(&shared),
            vec![Arc::clone(&ring)],
            limits,
            Vec::new(),
            1,
            Box::new(|_| {}),
        )
        .unwrap();
        let mut open = [0u8; crate::spill::record::BATCH_OPEN_PAYLOAD_BYTES_MAX];
        let len = crate::spill::record::encode_batch_open(
            &mut open,
            &crate::spill::test_log::batch_open("u", "c", 1.0),
        );
        push(&ring, Kind::BatchOpen, 1, &open[..len]);
        push(&ring, Kind::Audio, 1, b"audio");
        let close = push(&ring, Kind::BatchClose, 1, &[4]);
        writer.step().unwrap();
        assert!(!ring.is_durable(close), "written, not yet synced");
        disk.set_faults(DiskFaults {
            sync_eio_ppm: 1_000_000,
            ..faultless
        });
        clock.advance(10);
        assert!(writer.step().is_err(), "a failed sync stops the writer");
        assert!(shared.has_failed());
        disk.set_faults(faultless);
        for _ in 0..3 {
            clock.advance(10);
            assert!(writer.step().is_err(), "and it stays stopped");
        }
        assert!(!ring.is_durable(close), "the close is never acknowledged");
        disk.crash();
        let recovered =
            crate::spill::recovery::recover(&disk, std::path::Path::new("/sim/spill"), 16, 0)
                .unwrap();
        assert!(
            recovered.index.is_empty(),
            "the unsynced records were indeed lost: acknowledging them would have lost audio"
        );
    }
}
