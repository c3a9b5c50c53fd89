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
//! Invariants: records reach the file in each ring's order; a record is applied to the index
//! only after its bytes are written whole (a failed write is cut back and retried, the record
//! staying in its ring); a segment is deleted only when every batch that may have records in it
//! is uploaded; the disk budget flag is raised when the live segments reach `spill_max_bytes`.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::handoff::Handoff;
use super::index::{BatchEntry, BatchKey, Index, IndexError};
use super::metrics::SpillMetrics;
use super::record::{
    Location, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, decode_header, encode_segment_header,
    seal, set_prev,
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
const OLDEST_AGE_INTERVAL: Duration = Duration::from_millis(100);
/// Records gathered into one vectored write (below the kernel's IOV_MAX of 1024).
const WRITE_RECORDS_MAX: usize = 256;
/// Bytes gathered into one vectored write.
const WRITE_BYTES_MAX: u64 = 2 << 20;
/// Park time when there is nothing to write and nothing to sync.
const IDLE_PARK: Duration = Duration::from_millis(100);
/// Pause after a failed write or sync before trying again (the records stay in their rings).
const IO_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Limits of the writer, from the config.
#[derive(Debug, Clone)]
pub struct WriterLimits {
    pub segment_bytes_max: u64,
    pub sync_interval: Duration,
    pub sync_bytes: u64,
    pub max_bytes: u64,
}

/// State shared between the writer, the cores and the uploader.
pub struct SpillShared {
    pub dir: PathBuf,
    pub run_id: u64,
    pub index: Mutex<Index>,
    /// The live segments reached `spill_max_bytes`: cores take no more audio until uploads free
    /// space (backpressure; nothing is dropped).
    pub full: AtomicBool,
    pub live_bytes: AtomicU64,
    /// An upload was confirmed since the writer last looked for segments to delete.
    uploads_confirmed: AtomicBool,
    pub metrics: SpillMetrics,
}

impl SpillShared {
    pub fn new(dir: PathBuf, run_id: u64, index: Index, metrics: SpillMetrics) -> SpillShared {
        SpillShared {
            dir,
            run_id,
            index: Mutex::new(index),
            full: AtomicBool::new(false),
            live_bytes: AtomicU64::new(0),
            uploads_confirmed: AtomicBool::new(false),
            metrics,
        }
    }

    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// The store confirmed `key`: it leaves the index; its segments may go.
    pub fn uploaded(&self, key: &BatchKey) {
        let removed = self.index.lock().expect("index lock").uploaded(key);
        if removed.is_some() {
            self.metrics.batches_uploaded.inc();
            self.uploads_confirmed.store(true, Ordering::Release);
        }
    }
}

/// Hands a durable closed batch to the uploader. The uploader's queue holds as many jobs as the
/// index holds batches, so this never has to refuse.
pub type Submit = Box<dyn FnMut(&BatchEntry) + Send>;

pub struct Writer {
    shared: Arc<SpillShared>,
    rings: Vec<Arc<Handoff>>,
    limits: WriterLimits,
    /// Live segments, oldest first: (sequence, bytes). The last one is active.
    segments: VecDeque<(u64, u64)>,
    active: File,
    active_offset: u64,
    unsynced_bytes: u64,
    last_sync: Instant,
    /// When the oldest-pending-batch age was last refreshed.
    oldest_published: Option<Instant>,
    /// Per ring: the position consumed before the latest write.
    consumed: Vec<u64>,
    submit: Submit,
    ready: Vec<BatchKey>,
    io_failing: bool,
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
    ) -> std::io::Result<Writer> {
        let active = create_segment(&shared.dir, next_sequence, shared.run_id)?;
        let mut segments: VecDeque<(u64, u64)> = existing.into();
        segments.push_back((next_sequence, SEGMENT_HEADER_BYTES as u64));
        let consumed = vec![0; rings.len()];
        let mut writer = Writer {
            shared,
            rings,
            limits,
            segments,
            active,
            active_offset: SEGMENT_HEADER_BYTES as u64,
            unsynced_bytes: 0,
            last_sync: Instant::now(),
            oldest_published: None,
            consumed,
            submit,
            ready: Vec::new(),
            io_failing: false,
        };
        writer.account_live_bytes();
        writer.release_durable(Location(u64::MAX));
        // Recovered segments whose batches were all uploaded by the previous run go at once.
        writer.delete_uploaded_segments();
        Ok(writer)
    }

    /// Runs forever on the calling thread.
    pub fn run(mut self) {
        loop {
            let moved = self.drain_rings();
            if self.sync_due() {
                self.sync();
            }
            if self.shared.uploads_confirmed.swap(false, Ordering::AcqRel) {
                self.delete_uploaded_segments();
            }
            self.publish_gauges();
            if !moved {
                self.park();
            }
        }
    }

    fn drain_rings(&mut self) -> bool {
        let mut moved = false;
        for ring_index in 0..self.rings.len() {
            let mut taken = 0;
            while taken < RING_BYTES_PER_PASS_MAX {
                match self.write_batch(ring_index) {
                    0 => break,
                    bytes => {
                        taken += bytes;
                        moved = true;
                    }
                }
            }
        }
        moved
    }

    /// Takes up to [`WRITE_RECORDS_MAX`] records from one ring, fills in their `prev` and CRC,
    /// applies them to the index and writes them with one vectored write; returns the ring bytes
    /// consumed (0 when there was nothing to do or the index is full).
    fn write_batch(&mut self, ring_index: usize) -> usize {
        let ring = Arc::clone(&self.rings[ring_index]);
        let start = ring.released();
        let mut cursor = start;
        let mut records: Vec<&[u8]> = Vec::with_capacity(WRITE_RECORDS_MAX);
        let mut bytes = 0u64;
        let mut rotate = false;
        {
            let mut index = self.shared.index.lock().expect("index lock");
            while records.len() < WRITE_RECORDS_MAX && bytes < WRITE_BYTES_MAX {
                let Some((record, after)) = ring.peek_from(cursor) else {
                    break;
                };
                let offset = self.active_offset + bytes;
                if offset + record.len() as u64 > self.limits.segment_bytes_max
                    && offset > SEGMENT_HEADER_BYTES as u64
                {
                    rotate = true;
                    break;
                }
                let at = Location::new(self.active_sequence(), offset as u32);
                match self.apply(&mut index, record, at) {
                    Applied::Yes => {
                        bytes += record.len() as u64;
                        records.push(record);
                    }
                    Applied::Skipped => {}
                    Applied::IndexFull => break,
                }
                cursor = after;
            }
        }
        if !records.is_empty() {
            self.write_all(&records);
            self.active_offset += bytes;
            self.unsynced_bytes += bytes;
            self.segments.back_mut().expect("an active segment").1 = self.active_offset;
            self.shared.live_bytes.fetch_add(bytes, Ordering::Relaxed);
            self.shared
                .metrics
                .appended_records
                .inc_by(records.len() as u64);
            self.shared.metrics.appended_bytes.inc_by(bytes);
        }
        drop(records);
        if cursor > start {
            ring.release(cursor);
            self.consumed[ring_index] = cursor;
        }
        if rotate {
            self.rotate();
        }
        (cursor - start) as usize + usize::from(rotate)
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
        match index.apply(self.shared.run_id, &header, payload, at, unix_ms()) {
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

    /// Writes `records` at the end of the active segment, retrying until the disk takes them:
    /// a failed or partial write is cut back to the segment's end and written again, so the
    /// records land exactly where the index placed them. Meanwhile the rings fill and the cores
    /// stop reading the sessions that write (backpressure); nothing is dropped.
    fn write_all(&mut self, records: &[&[u8]]) {
        loop {
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
            match result {
                Ok(()) => {
                    self.on_io_ok();
                    return;
                }
                Err(err) => {
                    self.on_io_error("write", &err);
                    if let Err(err) = self.active.set_len(self.active_offset) {
                        self.on_io_error("truncate", &err);
                    }
                    std::thread::sleep(IO_ERROR_PAUSE);
                }
            }
        }
    }

    fn active_sequence(&self) -> u64 {
        self.segments.back().expect("an active segment").0
    }

    fn sync_due(&self) -> bool {
        self.unsynced_bytes > 0
            && (self.unsynced_bytes >= self.limits.sync_bytes
                || self.last_sync.elapsed() >= self.limits.sync_interval)
    }

    /// fdatasync, then publish durability and release closed batches.
    fn sync(&mut self) {
        let started = Instant::now();
        if let Err(err) = self.active.sync_data() {
            self.on_io_error("fdatasync", &err);
            std::thread::sleep(IO_ERROR_PAUSE);
            return;
        }
        self.shared
            .metrics
            .sync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.unsynced_bytes = 0;
        self.last_sync = Instant::now();
        for (ring, &position) in self.rings.iter().zip(&self.consumed) {
            ring.set_durable(position);
        }
        let durable = Location::new(self.active_sequence(), self.active_offset as u32);
        self.release_durable(durable);
    }

    fn release_durable(&mut self, durable: Location) {
        self.ready.clear();
        let dropped_empty = {
            let mut index = self.shared.index.lock().expect("index lock");
            let dropped = index.take_ready(durable, usize::MAX, &mut self.ready);
            for key in &self.ready {
                (self.submit)(index.get(key).expect("taken batches stay indexed"));
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

    /// Closes the active segment (synced) and starts the next one, retrying until both work.
    fn rotate(&mut self) {
        while self.unsynced_bytes > 0 {
            self.sync();
        }
        let next = self.active_sequence() + 1;
        loop {
            match create_segment(&self.shared.dir, next, self.shared.run_id) {
                Ok(file) => {
                    self.on_io_ok();
                    self.active = file;
                    break;
                }
                Err(err) => {
                    self.on_io_error("create segment", &err);
                    std::thread::sleep(IO_ERROR_PAUSE);
                }
            }
        }
        self.segments.push_back((next, SEGMENT_HEADER_BYTES as u64));
        self.active_offset = SEGMENT_HEADER_BYTES as u64;
        self.shared
            .live_bytes
            .fetch_add(SEGMENT_HEADER_BYTES as u64, Ordering::Relaxed);
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
            let path = self.shared.dir.join(segment_file_name(sequence));
            if let Err(err) = std::fs::remove_file(&path) {
                tracing::error!(path = %path.display(), "cannot delete an uploaded segment: {err}");
                break;
            }
            self.segments.pop_front();
            self.shared.live_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.shared.metrics.segments_deleted.inc();
        }
    }

    fn account_live_bytes(&self) {
        let live: u64 = self.segments.iter().map(|&(_, bytes)| bytes).sum();
        self.shared.live_bytes.store(live, Ordering::Relaxed);
    }

    /// Raises or lowers the disk-budget flag (every pass: the cores act on it) and refreshes the
    /// gauges. The oldest pending batch's age scans the whole index under its lock, so it is
    /// refreshed at most every [`OLDEST_AGE_INTERVAL`] (the gauge is in whole seconds).
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
        if self
            .oldest_published
            .is_some_and(|at| at.elapsed() < OLDEST_AGE_INTERVAL)
        {
            return;
        }
        self.oldest_published = Some(Instant::now());
        let oldest = index.oldest_opened_unix_ms();
        drop(index);
        let age_s = oldest.map_or(0, |opened| unix_ms().saturating_sub(opened) / 1000);
        metrics.oldest_pending_age_seconds.set(age_s as i64);
    }

    fn park(&self) {
        let timeout = if self.unsynced_bytes > 0 {
            self.limits
                .sync_interval
                .saturating_sub(self.last_sync.elapsed())
        } else {
            IDLE_PARK
        };
        if self.rings.iter().all(|ring| ring.prepare_park()) {
            std::thread::park_timeout(timeout);
        }
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

/// Creates segment `sequence` with its header, synced, and syncs the directory entry.
fn create_segment(dir: &Path, sequence: u64, run_id: u64) -> std::io::Result<File> {
    let path = dir.join(segment_file_name(sequence));
    let mut file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    encode_segment_header(&mut header, sequence, run_id);
    file.write_all(&header)?;
    file.sync_all()?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
