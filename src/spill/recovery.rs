//! Recovery: rebuilding the batch index from the segments on disk at start.
//!
//! Segments are scanned in sequence order and their valid records fed to [`Index::apply`] in log
//! order, keyed by the run id of the segment that holds them. A torn or corrupt tail ends its
//! segment (counted, logged); the next segment is scanned as usual. Records the index cannot take
//! — audio for a batch whose open was lost, a record whose `prev` is not its batch's previous
//! record (the records between were lost), a duplicate open — are skipped and counted, so every
//! indexed batch is a consistent chain that [`super::reader`] can read back. Then the batches
//! still open are closed: the sessions that wrote them belonged to a previous run.
//!
//! Invariants: recovery never writes to a segment; the rebuilt index holds at most `batches_max`
//! batches, and a log holding more is an error (skipping a batch would lose its audio).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::index::{BatchKey, BatchState, Index, IndexError};
use super::record::{Header, Kind, Location};
use super::scan::{SEGMENT_SEQUENCE_MAX, SegmentScanner, Tail, list_segments};

/// What recovery found in one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub sequence: u64,
    pub path: PathBuf,
    /// The file's length on disk.
    pub bytes: u64,
    /// From the segment header; 0 if the header is torn or corrupt.
    pub run_id: u64,
    /// Valid records in the segment (including skipped ones).
    pub records: u64,
    pub tail: Tail,
}

/// The spill log as found on disk.
pub struct Recovered {
    pub index: Index,
    /// Every segment file, in sequence order.
    pub segments: Vec<SegmentInfo>,
    /// Segments whose tail is torn or corrupt.
    pub corrupt_tails: u64,
    /// Valid records the index could not take (see the module doc).
    pub skipped_records: u64,
    /// Open batches closed because their sessions are gone (0 from [`rebuild`]).
    pub closed_at_recovery: usize,
    /// The sequence for the next segment: one past the largest on disk, or 1.
    pub next_sequence: u64,
}

/// Rebuilds the index from the log in `dir` (created if missing) and closes the batches left
/// open by the previous run.
pub fn recover(dir: &Path, batches_max: usize, now_unix_ms: u64) -> io::Result<Recovered> {
    fs::create_dir_all(dir)?;
    let mut recovered = rebuild(dir, batches_max, now_unix_ms)?;
    recovered.closed_at_recovery = recovered.index.close_open();
    let (batches, bytes) = recovered.index.pending();
    tracing::info!(
        dir = %dir.display(),
        segments = recovered.segments.len(),
        batches,
        bytes,
        closed_at_recovery = recovered.closed_at_recovery,
        corrupt_tails = recovered.corrupt_tails,
        skipped_records = recovered.skipped_records,
        next_sequence = recovered.next_sequence,
        "spill log recovered"
    );
    Ok(recovered)
}

/// Rebuilds the index from the log in `dir` without changing anything: open batches stay open.
pub fn rebuild(dir: &Path, batches_max: usize, now_unix_ms: u64) -> io::Result<Recovered> {
    let listed = list_segments(dir)?;
    let mut recovered = Recovered {
        index: Index::new(batches_max),
        segments: Vec::with_capacity(listed.len()),
        corrupt_tails: 0,
        skipped_records: 0,
        closed_at_recovery: 0,
        next_sequence: listed.last().map_or(1, |&(sequence, _)| sequence + 1),
    };
    if recovered.next_sequence > SEGMENT_SEQUENCE_MAX {
        return Err(io::Error::other(format!(
            "spill log in {}: segment sequences are exhausted",
            dir.display()
        )));
    }
    for (sequence, path) in listed {
        let segment = replay_segment(&mut recovered, path, now_unix_ms)?;
        debug_assert_eq!(segment.sequence, sequence);
        if !segment.tail.is_clean() {
            recovered.corrupt_tails += 1;
            log_tail(&segment);
        }
        recovered.segments.push(segment);
    }
    Ok(recovered)
}

/// Why a valid record was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Audio or close for a batch that is not open (its open was lost, or it closed already).
    NotOpen,
    /// `prev` is not the batch's previous record: records of the batch were lost between.
    BrokenChain,
    /// The index refused it (a duplicate open, an open payload that does not parse).
    Refused(IndexError),
}

/// The first record a segment's replay skipped, for the log line.
struct FirstSkip {
    at: Location,
    why: Skip,
}

/// Scans one segment into the index.
fn replay_segment(
    recovered: &mut Recovered,
    path: PathBuf,
    now_unix_ms: u64,
) -> io::Result<SegmentInfo> {
    let scanner = SegmentScanner::open(&path)?;
    let run = scanner.run_id().unwrap_or_default();
    let index = &mut recovered.index;
    let mut skipped = 0u64;
    let mut first_skip = None;
    let mut full_at = None;
    let scan = scanner.scan(|header, payload, at| {
        if full_at.is_some() {
            return;
        }
        match replay_record(index, run, header, payload, at, now_unix_ms) {
            Ok(()) => {}
            Err(Skip::Refused(IndexError::Full)) => full_at = Some(at),
            Err(why) => {
                skipped += 1;
                first_skip.get_or_insert(FirstSkip { at, why });
            }
        }
    })?;
    if let Some(at) = full_at {
        return Err(io::Error::other(format!(
            "spill log in {}: more than {} pending batches (the batch opened at {at} does not \
             fit); raise spill_batches_max",
            path.parent().unwrap_or(&path).display(),
            index.len(),
        )));
    }
    if let Some(first) = first_skip {
        tracing::warn!(
            segment = scan.sequence,
            skipped,
            first_at = %first.at,
            first_reason = ?first.why,
            "spill recovery: skipped records whose batch is not recoverable"
        );
    }
    recovered.skipped_records += skipped;
    Ok(SegmentInfo {
        sequence: scan.sequence,
        path,
        bytes: scan.file_bytes,
        run_id: scan.run_id,
        records: scan.records,
        tail: scan.tail,
    })
}

/// Applies one record if it continues its batch's chain.
fn replay_record(
    index: &mut Index,
    run: u64,
    header: &Header,
    payload: &[u8],
    at: Location,
    now_unix_ms: u64,
) -> Result<(), Skip> {
    let key = BatchKey {
        run,
        batch: header.batch,
    };
    let expected_prev = match header.kind {
        Kind::BatchOpen => Location::NONE,
        Kind::Audio | Kind::BatchClose => match index.get(&key) {
            Some(entry) if entry.state == BatchState::Open => entry.last,
            _ => return Err(Skip::NotOpen),
        },
    };
    if header.prev != expected_prev {
        return Err(Skip::BrokenChain);
    }
    let prev = index
        .apply(run, header, payload, at, now_unix_ms)
        .map_err(Skip::Refused)?;
    debug_assert_eq!(prev, header.prev);
    Ok(())
}

fn log_tail(segment: &SegmentInfo) {
    let (state, offset) = match segment.tail {
        Tail::Clean => unreachable!("only torn or corrupt tails are logged"),
        Tail::Torn { offset } => ("torn", offset),
        Tail::Corrupt { offset } => ("corrupt", offset),
    };
    tracing::warn!(
        segment = segment.sequence,
        path = %segment.path.display(),
        offset,
        records = segment.records,
        "spill recovery: {state} record ends the segment; the bytes after it are ignored"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::record::RECORD_HEADER_BYTES;
    use crate::spill::scan::segment_file_name;
    use crate::spill::test_log::{LogBuilder, TempDir, batch_open};

    const RUN_A: u64 = 0xa;
    const RUN_B: u64 = 0xb;

    fn key(run: u64, batch: u64) -> BatchKey {
        BatchKey { run, batch }
    }

    #[test]
    fn rebuilds_batches_across_segments_and_runs_and_closes_open_ones() {
        let dir = TempDir::new("recover");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, RUN_A);
        log.open(1, &batch_open("u1", "c1", 10.0));
        log.audio(1, b"a1");
        log.open(2, &batch_open("u2", "c2", 11.0));
        log.audio(2, b"b1");
        log.audio(1, b"a2");
        let close_1 = log.close(1);
        log.audio(2, b"b2");
        // The writer rotated: the same run goes on in segment 2, batch 2 spans both.
        log.start_segment(2, RUN_A);
        log.audio(2, b"b3");
        let close_2 = log.close(2);
        log.open(3, &batch_open("u3", "c3", 12.0));
        let last_3 = log.audio(3, b"c1");
        // A new run (the previous one crashed with batch 3 open) reuses batch id 1.
        log.start_segment(3, RUN_B);
        log.open(1, &batch_open("u1", "c9", 13.0));
        let last_b1 = log.audio(1, b"d1");
        log.finish();

        let recovered = recover(dir.path(), 16, 5_000).unwrap();
        assert_eq!(recovered.next_sequence, 4);
        assert_eq!(recovered.closed_at_recovery, 2);
        assert_eq!((recovered.corrupt_tails, recovered.skipped_records), (0, 0));
        let runs: Vec<(u64, u64, u64)> = recovered
            .segments
            .iter()
            .map(|s| (s.sequence, s.run_id, s.records))
            .collect();
        assert_eq!(runs, vec![(1, RUN_A, 7), (2, RUN_A, 4), (3, RUN_B, 2)]);
        assert!(recovered.segments.iter().all(|s| s.tail == Tail::Clean));
        let index = &recovered.index;
        assert_eq!(index.len(), 4);
        let batch = |run, batch| *index.get(&key(run, batch)).unwrap();
        let a1 = batch(RUN_A, 1);
        assert_eq!((a1.audio_bytes, a1.audio_records), (4, 2));
        assert_eq!(a1.state, BatchState::Closed { at: close_1 });
        let a2 = batch(RUN_A, 2);
        assert_eq!((a2.audio_bytes, a2.audio_records), (6, 3));
        assert_eq!((a2.first_segment, a2.last), (1, close_2));
        assert_eq!(a2.state, BatchState::Closed { at: close_2 });
        assert_eq!(a2.open, batch_open("u2", "c2", 11.0));
        let a3 = batch(RUN_A, 3);
        assert_eq!(a3.state, BatchState::Closed { at: last_3 });
        let b1 = batch(RUN_B, 1);
        assert_eq!(b1.state, BatchState::Closed { at: last_b1 });
        assert_eq!(
            b1.open.conversation,
            batch_open("u", "c9", 0.0).conversation
        );
        assert_eq!(b1.opened_at_unix_ms, 5_000);
        assert_eq!(index.pending().1, 4 + 6 + 2 + 2);
    }

    #[test]
    fn records_of_unrecoverable_batches_are_skipped_and_counted() {
        let dir = TempDir::new("skip");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, RUN_A);
        log.open(4, &batch_open("u", "c4", 1.0));
        let x1 = log.audio(4, b"x1");
        let open_5 = log.open(5, &batch_open("u", "c5", 2.0));
        log.audio(4, b"x2");
        log.start_segment(2, RUN_A);
        log.audio(5, b"y1"); // its open is lost
        log.audio(4, b"x3"); // its previous record (x2) is lost
        log.close(4);
        log.open(6, &batch_open("u", "c6", 3.0));
        log.audio(6, b"z1");
        let close_6 = log.close(6);
        log.finish();
        let path = dir.path().join(segment_file_name(1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[open_5.offset() as usize + RECORD_HEADER_BYTES] ^= 1;
        fs::write(&path, &bytes).unwrap();

        let recovered = recover(dir.path(), 16, 0).unwrap();
        assert_eq!(recovered.corrupt_tails, 1);
        assert_eq!(
            recovered.segments[0].tail,
            Tail::Corrupt {
                offset: u64::from(open_5.offset())
            }
        );
        assert_eq!(recovered.segments[0].records, 2);
        assert_eq!(recovered.skipped_records, 3);
        assert_eq!(recovered.index.len(), 2);
        let b4 = *recovered.index.get(&key(RUN_A, 4)).unwrap();
        assert_eq!((b4.audio_bytes, b4.audio_records), (2, 1));
        assert_eq!(b4.state, BatchState::Closed { at: x1 });
        let b6 = *recovered.index.get(&key(RUN_A, 6)).unwrap();
        assert_eq!(b6.state, BatchState::Closed { at: close_6 });
        assert_eq!(recovered.closed_at_recovery, 1);
    }

    #[test]
    fn rebuild_leaves_open_batches_open() {
        let dir = TempDir::new("rebuild");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, RUN_A);
        log.open(1, &batch_open("u", "c", 1.0));
        log.audio(1, b"a");
        log.finish();
        let rebuilt = rebuild(dir.path(), 4, 0).unwrap();
        assert_eq!(rebuilt.closed_at_recovery, 0);
        let entry = rebuilt.index.get(&key(RUN_A, 1)).unwrap();
        assert_eq!(entry.state, BatchState::Open);
    }

    #[test]
    fn next_sequence_follows_the_largest_segment() {
        let dir = TempDir::new("sequence");
        let spill = dir.path().join("spill");
        let recovered = recover(&spill, 4, 0).unwrap();
        assert!(spill.is_dir(), "recovery creates the directory");
        assert_eq!(recovered.next_sequence, 1);
        assert!(recovered.segments.is_empty() && recovered.index.is_empty());

        let mut log = LogBuilder::new(&spill);
        log.start_segment(2, RUN_A);
        log.start_segment(5, RUN_B);
        log.finish();
        // A segment created by a run that crashed before writing its header.
        fs::write(spill.join(segment_file_name(9)), b"PUSH").unwrap();
        fs::write(spill.join("segment-unrelated.log"), b"").unwrap();
        let recovered = recover(&spill, 4, 0).unwrap();
        assert_eq!(recovered.next_sequence, 10);
        let sequences: Vec<u64> = recovered.segments.iter().map(|s| s.sequence).collect();
        assert_eq!(sequences, vec![2, 5, 9]);
        assert_eq!(recovered.segments[2].tail, Tail::Torn { offset: 0 });
        assert_eq!(recovered.segments[2].bytes, 4);
        assert_eq!(recovered.corrupt_tails, 1);
    }

    #[test]
    fn more_batches_than_the_bound_is_an_error() {
        let dir = TempDir::new("full");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, RUN_A);
        log.open(1, &batch_open("u", "c", 1.0));
        log.open(2, &batch_open("u", "c", 2.0));
        log.finish();
        let error = recover(dir.path(), 1, 0).err().expect("too many batches");
        assert!(
            error.to_string().contains("more than 1 pending batches"),
            "{error}"
        );
    }
}
