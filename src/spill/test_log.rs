//! Test helpers: unique temporary directories and a builder that writes segment files the way the
//! spill writer does (segment header, then records whose `prev` chains each batch).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::id::Id;
use crate::settings::DataProtectionLevel;

use super::record::{
    BATCH_OPEN_PAYLOAD_BYTES_MAX, BatchOpen, Kind, Location, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES, encode_batch_open, encode_header, encode_segment_header, seal,
};
use super::scan::segment_file_name;

/// A directory under `std::env::temp_dir()` with a name unique to this process and call,
/// removed with everything in it when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates an empty directory whose name holds `tag`, the process id and a counter.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "pusher-spill-{tag}-{}-{unique}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The batch-open every test batch uses, with its own uid and conversation.
pub fn batch_open(uid: &str, conversation: &str, timestamp: f64) -> BatchOpen {
    BatchOpen {
        uid: Id::parse(uid.as_bytes()).expect("valid uid"),
        conversation: Id::parse(conversation.as_bytes()).expect("valid conversation"),
        timestamp,
        sample_rate_hz: 16_000,
        level: DataProtectionLevel::Enhanced,
    }
}

/// Writes segments record by record. Each batch's `prev` is the location of its previous record,
/// across segments of the same run; a new run forgets the previous run's batches.
pub struct LogBuilder {
    dir: PathBuf,
    /// The segment being built: its sequence and bytes (written to disk by `finish`).
    segment: Option<(u64, Vec<u8>)>,
    run: u64,
    heads: HashMap<u64, Location>,
}

impl LogBuilder {
    /// A builder that writes its segment files into `dir`.
    pub fn new(dir: &Path) -> LogBuilder {
        LogBuilder {
            dir: dir.to_path_buf(),
            segment: None,
            run: 0,
            heads: HashMap::new(),
        }
    }

    /// Writes the current segment, if any, and starts segment `sequence` of `run`.
    pub fn start_segment(&mut self, sequence: u64, run: u64) {
        self.write_current();
        if run != self.run {
            self.heads.clear();
            self.run = run;
        }
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        encode_segment_header(&mut header, sequence, run);
        self.segment = Some((sequence, header.to_vec()));
    }

    /// Appends a batch-open record of `batch`; returns where it is.
    pub fn open(&mut self, batch: u64, open: &BatchOpen) -> Location {
        let mut payload = [0u8; BATCH_OPEN_PAYLOAD_BYTES_MAX];
        let len = encode_batch_open(&mut payload, open);
        self.record(Kind::BatchOpen, batch, &payload[..len])
    }

    /// Appends an audio record of `batch` carrying `audio`; returns where it is.
    pub fn audio(&mut self, batch: u64, audio: &[u8]) -> Location {
        self.record(Kind::Audio, batch, audio)
    }

    /// Appends a batch-close record of `batch` (reason byte 1, full); returns where it is.
    pub fn close(&mut self, batch: u64) -> Location {
        self.record(Kind::BatchClose, batch, &[1])
    }

    /// Appends an uploaded record: the store confirmed batch `batch` of run `run`.
    pub fn uploaded(&mut self, run: u64, batch: u64) -> Location {
        let mut record = [0u8; super::record::UPLOADED_RECORD_BYTES];
        super::record::encode_uploaded(&mut record, run, batch);
        let (sequence, bytes) = self.segment.as_mut().expect("a segment is started");
        let at = Location::new(*sequence, bytes.len() as u32);
        bytes.extend_from_slice(&record);
        at
    }

    /// Appends a record of `batch` chained to the batch's previous record.
    pub fn record(&mut self, kind: Kind, batch: u64, payload: &[u8]) -> Location {
        let (sequence, bytes) = self.segment.as_mut().expect("a segment is started");
        let at = Location::new(*sequence, bytes.len() as u32);
        let prev = match kind {
            Kind::BatchOpen | Kind::Uploaded => Location::NONE,
            Kind::Audio | Kind::BatchClose => self.heads.get(&batch).copied().unwrap_or_default(),
        };
        let start = bytes.len();
        bytes.resize(start + RECORD_HEADER_BYTES + payload.len(), 0);
        encode_header(&mut bytes[start..], kind, payload.len(), batch, prev);
        bytes[start + RECORD_HEADER_BYTES..].copy_from_slice(payload);
        seal(&mut bytes[start..]);
        self.heads.insert(batch, at);
        at
    }

    /// Writes the current segment to disk.
    pub fn finish(mut self) {
        self.write_current();
    }

    fn write_current(&mut self) {
        if let Some((sequence, bytes)) = self.segment.take() {
            fs::write(self.dir.join(segment_file_name(sequence)), bytes).expect("write segment");
        }
    }
}
