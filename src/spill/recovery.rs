//! Recovery: rebuilding the batch index from the segments on disk at start.
//!
//! Segments are scanned in sequence order and their valid records fed to [`Index::apply`] in log
//! order, keyed by the run id of the segment that holds them. An uploaded record drops the batch
//! it names (the store confirmed it; a restart neither uploads nor notifies it again).
//!
//! Damage (issue 11, defect 2) costs at most the damaged record's batch: the scan resumes at
//! the next valid record ([`super::scan`]); a batch whose chain goes on past records it lost (a
//! record's `prev` points past the batch's last known record), or whose record header names it
//! at the start of the damage, is marked with a hole and is uploaded as a partial object; a
//! batch whose batch-open was lost cannot be named and its records are skipped. Bytes that are
//! not a valid record at the end of the last segment of a run are that run's torn last write (a
//! crash), not damage. A segment with damage is linked into `damaged/` next to the segments,
//! where it stays until an operator removes it; the log never deletes that name.
//!
//! Records the index cannot take — audio for a batch whose open was lost, a record whose `prev`
//! points behind its batch's last record, a duplicate open — are skipped and counted, so every
//! indexed batch is a consistent chain (with its holes counted). Then the batches still open are
//! closed: the sessions that wrote them belonged to a previous run.
//!
//! Invariants: recovery never writes to a segment; the rebuilt index holds at most
//! `batches_max` batches, and a log holding more is an error (skipping a batch would lose its
//! audio).

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

use super::disk::Disk;
use super::index::{BatchEntry, BatchKey, BatchState, Index, IndexError};
use super::record::{Header, Kind, Location, decode_uploaded};
use super::scan::{SEGMENT_SEQUENCE_MAX, SegmentScanner, Tail, list_segments};

/// The directory, next to the segments, where segments with damage are kept for an operator.
pub const DAMAGED_DIR_NAME: &str = "damaged";

/// What recovery found in one segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    /// The segment's sequence, from its file name.
    pub sequence: u64,
    /// The segment file.
    pub path: PathBuf,
    /// The file's length on disk.
    pub bytes: u64,
    /// From the segment header; 0 if the header is torn or corrupt.
    pub run_id: u64,
    /// Valid records in the segment (including skipped ones).
    pub records: u64,
    /// How its valid records end.
    pub tail: Tail,
    /// Bytes that are not valid records and are not a crash's torn last write.
    pub damaged_bytes: u64,
    /// The segment has damage: it is kept in `damaged/` for an operator.
    pub damaged: bool,
}

/// The spill log as found on disk.
pub struct Recovered {
    /// The rebuilt batch index.
    pub index: Index,
    /// Every segment file, in sequence order.
    pub segments: Vec<SegmentInfo>,
    /// Segments whose tail is torn or corrupt.
    pub corrupt_tails: u64,
    /// Segments with damage (kept in `damaged/`).
    pub damaged_segments: u64,
    /// Indexed batches with at least one hole (uploaded as partial objects).
    pub holed_batches: u64,
    /// Batches dropped by their uploaded record.
    pub confirmed_batches: u64,
    /// The first `uploaded_max` of those batches as they were before their uploaded record
    /// (only [`rebuild_keeping_uploaded`] keeps them: `pusher spill inspect`).
    pub uploaded: Vec<BatchEntry>,
    uploaded_max: usize,
    /// Valid records the index could not take (see the module doc).
    pub skipped_records: u64,
    /// Open batches closed because their sessions are gone (0 from [`rebuild`]).
    pub closed_at_recovery: usize,
    /// The sequence for the next segment: one past the largest on disk, or 1.
    pub next_sequence: u64,
}

/// Rebuilds the index from the log in `dir` (created if missing), closes the batches left open
/// by the previous run and keeps segments with damage in `damaged/`.
pub fn recover(
    disk: &dyn Disk,
    dir: &Path,
    batches_max: usize,
    now_unix_ms: u64,
) -> io::Result<Recovered> {
    disk.create_dir_all(dir)?;
    let mut recovered = rebuild(disk, dir, batches_max, now_unix_ms)?;
    recovered.closed_at_recovery = recovered.index.close_open();
    recovered.index.requeue_closed();
    keep_damaged(disk, dir, &recovered.segments)?;
    let (batches, bytes) = recovered.index.pending();
    tracing::info!(
        dir = %dir.display(),
        segments = recovered.segments.len(),
        batches,
        bytes,
        closed_at_recovery = recovered.closed_at_recovery,
        corrupt_tails = recovered.corrupt_tails,
        damaged_segments = recovered.damaged_segments,
        holed_batches = recovered.holed_batches,
        confirmed_batches = recovered.confirmed_batches,
        skipped_records = recovered.skipped_records,
        next_sequence = recovered.next_sequence,
        "spill log recovered"
    );
    Ok(recovered)
}

/// Links every damaged segment into `dir/damaged/` (once): the log may delete its own name when
/// its batches are uploaded; this one stays until an operator removes it.
fn keep_damaged(disk: &dyn Disk, dir: &Path, segments: &[SegmentInfo]) -> io::Result<()> {
    let damaged_dir = dir.join(DAMAGED_DIR_NAME);
    for segment in segments.iter().filter(|s| s.damaged) {
        disk.create_dir_all(&damaged_dir)?;
        let name = segment.path.file_name().expect("a segment file name");
        let kept = damaged_dir.join(name);
        if !disk.exists(&kept) {
            disk.hard_link(&segment.path, &kept)?;
            disk.sync_dir(&damaged_dir)?;
        }
        tracing::error!(
            segment = segment.sequence,
            kept = %kept.display(),
            damaged_bytes = segment.damaged_bytes,
            "spill recovery: damage in a segment; a copy is kept for an operator to inspect and \
             remove"
        );
    }
    Ok(())
}

/// Rebuilds the index from the log in `dir` without changing anything: open batches stay open.
pub fn rebuild(
    disk: &dyn Disk,
    dir: &Path,
    batches_max: usize,
    now_unix_ms: u64,
) -> io::Result<Recovered> {
    rebuild_keeping_uploaded(disk, dir, batches_max, now_unix_ms, 0)
}

/// [`rebuild`], also keeping the first `uploaded_max` batches that an uploaded record dropped
/// (their segments wait for deletion) in [`Recovered::uploaded`]: bounded, for inspection.
pub fn rebuild_keeping_uploaded(
    disk: &dyn Disk,
    dir: &Path,
    batches_max: usize,
    now_unix_ms: u64,
    uploaded_max: usize,
) -> io::Result<Recovered> {
    let listed = list_segments(disk, dir)?;
    let mut index = Index::new(batches_max);
    index.defer_closed_queue();
    let mut recovered = Recovered {
        index,
        segments: Vec::with_capacity(listed.len()),
        corrupt_tails: 0,
        damaged_segments: 0,
        holed_batches: 0,
        confirmed_batches: 0,
        uploaded: Vec::with_capacity(uploaded_max),
        uploaded_max,
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
    let mut scanners = Vec::with_capacity(listed.len());
    for (_, path) in &listed {
        let scanner = SegmentScanner::open(disk, path)?;
        scanners.push(scanner);
    }
    // A run's last segment is the one before a segment of another run (or the last one).
    let runs: Vec<Option<u64>> = scanners.iter().map(SegmentScanner::run_id).collect();
    for (at, ((sequence, path), scanner)) in listed.into_iter().zip(scanners).enumerate() {
        let last_of_run = runs.get(at + 1).is_none_or(|next| *next != runs[at]);
        let segment = replay_segment(&mut recovered, scanner, path, last_of_run, now_unix_ms)?;
        debug_assert_eq!(segment.sequence, sequence);
        if !segment.tail.is_clean() {
            recovered.corrupt_tails += 1;
            log_tail(&segment);
        }
        recovered.damaged_segments += u64::from(segment.damaged);
        recovered.segments.push(segment);
    }
    recovered.holed_batches = recovered
        .index
        .entries()
        .filter(|entry| entry.holes > 0)
        .count() as u64;
    Ok(recovered)
}

/// Why a valid record was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// Audio or close for a batch that is not open (its open was lost, or it closed already).
    NotOpen,
    /// `prev` points behind the batch's last record: not a continuation of its chain.
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
    scanner: SegmentScanner,
    path: PathBuf,
    last_of_run: bool,
    now_unix_ms: u64,
) -> io::Result<SegmentInfo> {
    let run = scanner.run_id().unwrap_or_default();
    let header_damaged = scanner.run_id().is_none();
    let uploaded_max = recovered.uploaded_max;
    let uploaded = &mut recovered.uploaded;
    // Both callbacks touch the index; the scan calls them one at a time.
    let index = RefCell::new(&mut recovered.index);
    let mut skipped = 0u64;
    let mut confirmed = 0u64;
    let mut first_skip = None;
    let mut full_at = None;
    let (mut damaged_regions, mut damaged_bytes) = (0u64, 0u64);
    let scan = scanner.scan_with_damage(
        |header, payload, at| {
            if full_at.is_some() {
                return;
            }
            let mut index = index.borrow_mut();
            match replay_record(&mut index, run, header, payload, at, now_unix_ms) {
                Ok(Replayed::Applied) => {}
                Ok(Replayed::Confirmed(entry)) => {
                    confirmed += 1;
                    if uploaded.len() < uploaded_max {
                        uploaded.push(entry);
                    }
                }
                Err(Skip::Refused(IndexError::Full)) => full_at = Some(at),
                Err(why) => {
                    skipped += 1;
                    first_skip.get_or_insert(FirstSkip { at, why });
                }
            }
        },
        |found| {
            if found.at_end && last_of_run {
                return; // the run's torn last write: not damage
            }
            if let Some(batch) = found.suspect_batch {
                index.borrow_mut().mark_hole(&BatchKey { run, batch });
            }
            damaged_regions += 1;
            damaged_bytes += found.end - found.start;
        },
    )?;
    let index = index.into_inner();
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
    recovered.confirmed_batches += confirmed;
    // A bad segment header (not the crash of a run that was creating it) hides the segment.
    let header_is_damage =
        header_damaged && !(last_of_run && scan.tail == Tail::Torn { offset: 0 });
    Ok(SegmentInfo {
        sequence: scan.sequence,
        path,
        bytes: scan.file_bytes,
        run_id: scan.run_id,
        records: scan.records,
        tail: scan.tail,
        damaged_bytes,
        damaged: damaged_regions > 0 || header_is_damage,
    })
}

/// What one record did to the index. Returned by value and consumed at once, never stored: the
/// size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
enum Replayed {
    Applied,
    /// An uploaded record dropped its batch (as it was).
    Confirmed(BatchEntry),
}

/// Applies one record if it continues its batch's chain (across a hole if records were lost).
fn replay_record(
    index: &mut Index,
    run: u64,
    header: &Header,
    payload: &[u8],
    at: Location,
    now_unix_ms: u64,
) -> Result<Replayed, Skip> {
    if header.kind == Kind::Uploaded {
        let (run, batch) =
            decode_uploaded(payload).map_err(|error| Skip::Refused(IndexError::Payload(error)))?;
        return Ok(match index.forget(&BatchKey { run, batch }) {
            Some(entry) => Replayed::Confirmed(entry),
            None => Replayed::Applied,
        });
    }
    let key = BatchKey {
        run,
        batch: header.batch,
    };
    let expected_prev = match header.kind {
        Kind::BatchOpen | Kind::Uploaded => Location::NONE,
        Kind::Audio | Kind::BatchClose => match index.get(&key) {
            Some(entry) if entry.state == BatchState::Open => entry.last,
            _ => return Err(Skip::NotOpen),
        },
    };
    let hole = match header.kind {
        Kind::BatchOpen | Kind::Uploaded if header.prev != expected_prev => {
            return Err(Skip::BrokenChain);
        }
        // Records between the batch's last known record and this one were lost.
        _ if header.prev > expected_prev && header.prev < at => true,
        _ if header.prev != expected_prev => return Err(Skip::BrokenChain),
        _ => false,
    };
    index
        .apply(run, header, payload, at, now_unix_ms)
        .map_err(Skip::Refused)?;
    if hole {
        index.mark_hole(&key);
    }
    Ok(Replayed::Applied)
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
        damaged = segment.damaged,
        "spill recovery: {state} bytes end the segment; no valid record follows them"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::disk::RealDisk;
    use crate::spill::record::RECORD_HEADER_BYTES;
    use crate::spill::scan::segment_file_name;
    use crate::spill::test_log::{LogBuilder, TempDir, batch_open};
    use std::fs;

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

        let recovered = recover(&RealDisk, dir.path(), 16, 5_000).unwrap();
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

    /// Issue 11, defect 2: a damaged batch-open costs that batch only (it cannot be named);
    /// the batches around it are whole, and the segment is kept in `damaged/`.
    #[test]
    fn a_damaged_batch_open_costs_only_its_batch() {
        let dir = TempDir::new("skip");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, RUN_A);
        log.open(4, &batch_open("u", "c4", 1.0));
        log.audio(4, b"x1");
        let open_5 = log.open(5, &batch_open("u", "c5", 2.0));
        log.audio(4, b"x2");
        log.start_segment(2, RUN_A);
        log.audio(5, b"y1"); // its open is lost
        log.audio(4, b"x3");
        let close_4 = log.close(4);
        log.open(6, &batch_open("u", "c6", 3.0));
        log.audio(6, b"z1");
        let close_6 = log.close(6);
        log.finish();
        let path = dir.path().join(segment_file_name(1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[open_5.offset() as usize + RECORD_HEADER_BYTES] ^= 1;
        fs::write(&path, &bytes).unwrap();

        let recovered = recover(&RealDisk, dir.path(), 16, 0).unwrap();
        assert_eq!(recovered.corrupt_tails, 0);
        assert_eq!(recovered.segments[0].tail, Tail::Clean);
        assert_eq!(recovered.segments[0].records, 3);
        assert!(recovered.segments[0].damaged);
        assert_eq!(recovered.damaged_segments, 1);
        assert_eq!(
            recovered.skipped_records, 1,
            "y1: its batch cannot be named"
        );
        assert_eq!(recovered.index.len(), 2);
        let b4 = *recovered.index.get(&key(RUN_A, 4)).unwrap();
        assert_eq!((b4.audio_bytes, b4.audio_records, b4.holes), (6, 3, 0));
        assert_eq!(b4.state, BatchState::Closed { at: close_4 });
        let b6 = *recovered.index.get(&key(RUN_A, 6)).unwrap();
        assert_eq!(b6.state, BatchState::Closed { at: close_6 });
        assert_eq!(recovered.closed_at_recovery, 0);
        let kept = dir.path().join(DAMAGED_DIR_NAME).join(segment_file_name(1));
        assert_eq!(
            fs::read(&kept).unwrap(),
            bytes,
            "the damaged segment is kept aside"
        );
        // A second recovery finds the copy in place and keeps it.
        recover(&RealDisk, dir.path(), 16, 0).unwrap();
        assert!(kept.exists());
    }

    /// Issue 11, defect 2 (the repro): a flipped byte in one audio record of a batch costs that
    /// record; the batch is read back without it and marked partial; the batches whose records
    /// come after the damage are whole.
    #[test]
    fn a_damaged_audio_record_leaves_a_partial_batch_and_the_rest_whole() {
        let dir = TempDir::new("hole");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, RUN_A);
        log.open(1, &batch_open("u", "c1", 1.0));
        log.audio(1, b"a1-");
        log.open(2, &batch_open("u", "c2", 2.0));
        let a2 = log.audio(1, b"a2-");
        log.audio(2, b"b1-");
        log.audio(1, b"a3");
        log.close(1);
        log.audio(2, b"b2");
        log.close(2);
        log.open(3, &batch_open("u", "c3", 3.0));
        log.audio(3, b"c1");
        log.finish();
        let path = dir.path().join(segment_file_name(1));
        let mut bytes = fs::read(&path).unwrap();
        bytes[a2.offset() as usize + RECORD_HEADER_BYTES + 1] ^= 0x40;
        fs::write(&path, &bytes).unwrap();

        let recovered = recover(&RealDisk, dir.path(), 16, 0).unwrap();
        assert_eq!(
            (recovered.damaged_segments, recovered.holed_batches),
            (1, 1)
        );
        let index = &recovered.index;
        let b1 = *index.get(&key(RUN_A, 1)).unwrap();
        assert_eq!((b1.audio_records, b1.audio_bytes), (2, 5));
        assert!(b1.holes > 0);
        let read = |entry| {
            let mut out = Vec::new();
            crate::spill::reader::read_batch_audio(&RealDisk, dir.path(), entry, &mut out).unwrap();
            out
        };
        assert_eq!(read(&b1), b"a1-a3");
        assert!(crate::audio_log::upload_job(&b1).partial);
        let b2 = *index.get(&key(RUN_A, 2)).unwrap();
        assert_eq!((b2.holes, read(&b2)), (0, b"b1-b2".to_vec()));
        assert!(!crate::audio_log::upload_job(&b2).partial);
        let b3 = *index.get(&key(RUN_A, 3)).unwrap();
        assert_eq!((b3.holes, read(&b3)), (0, b"c1".to_vec()));
    }

    /// Bytes with nothing valid after them are a crash's torn write only at the end of a run's
    /// last segment; at the end of an earlier segment (synced whole before the writer rotated)
    /// they are damage.
    #[test]
    fn a_torn_tail_is_damage_unless_it_ends_its_runs_last_segment() {
        let dir = TempDir::new("torn-tails");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, RUN_A);
        log.open(1, &batch_open("u", "c1", 1.0));
        let a1 = log.audio(1, b"a1");
        log.start_segment(2, RUN_A);
        log.audio(1, b"a2");
        log.start_segment(3, RUN_B);
        log.open(1, &batch_open("u", "c2", 2.0));
        let b1 = log.audio(1, b"b1");
        log.finish();
        for (sequence, record) in [(1, a1), (3, b1)] {
            let path = dir.path().join(segment_file_name(sequence));
            let bytes = fs::read(&path).unwrap();
            fs::write(&path, &bytes[..record.offset() as usize + 5]).unwrap();
        }
        let recovered = recover(&RealDisk, dir.path(), 16, 0).unwrap();
        let damaged: Vec<bool> = recovered.segments.iter().map(|s| s.damaged).collect();
        assert_eq!(damaged, vec![true, false, false]);
        assert_eq!(recovered.corrupt_tails, 2);
        let a = recovered.index.get(&key(RUN_A, 1)).unwrap();
        assert_eq!(
            (a.audio_bytes, a.holes > 0),
            (2, true),
            "a1 lost, a2 kept: a hole"
        );
    }

    /// Issue 11, defect 4: an uploaded record drops its batch at recovery.
    #[test]
    fn an_uploaded_record_drops_its_batch() {
        let dir = TempDir::new("uploaded");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, RUN_A);
        log.open(1, &batch_open("u", "c1", 1.0));
        log.audio(1, b"a");
        log.close(1);
        log.open(2, &batch_open("u", "c2", 2.0));
        log.audio(2, b"b");
        log.close(2);
        log.start_segment(2, RUN_B);
        log.uploaded(RUN_A, 1);
        log.uploaded(RUN_A, 99); // a batch whose segment is gone already
        log.finish();
        let recovered = recover(&RealDisk, dir.path(), 16, 0).unwrap();
        assert_eq!(recovered.confirmed_batches, 1);
        assert!(recovered.index.get(&key(RUN_A, 1)).is_none());
        assert!(recovered.index.get(&key(RUN_A, 2)).is_some());
        let mut ready = Vec::new();
        let mut index = recovered.index;
        index.take_ready(Location(u64::MAX), 10, &mut ready);
        assert_eq!(
            ready,
            vec![key(RUN_A, 2)],
            "only the unconfirmed batch is uploaded"
        );
    }

    #[test]
    fn rebuild_leaves_open_batches_open() {
        let dir = TempDir::new("rebuild");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, RUN_A);
        log.open(1, &batch_open("u", "c", 1.0));
        log.audio(1, b"a");
        log.finish();
        let rebuilt = rebuild(&RealDisk, dir.path(), 4, 0).unwrap();
        assert_eq!(rebuilt.closed_at_recovery, 0);
        let entry = rebuilt.index.get(&key(RUN_A, 1)).unwrap();
        assert_eq!(entry.state, BatchState::Open);
    }

    #[test]
    fn next_sequence_follows_the_largest_segment() {
        let dir = TempDir::new("sequence");
        let spill = dir.path().join("spill");
        let recovered = recover(&RealDisk, &spill, 4, 0).unwrap();
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
        let recovered = recover(&RealDisk, &spill, 4, 0).unwrap();
        assert_eq!(recovered.next_sequence, 10);
        let sequences: Vec<u64> = recovered.segments.iter().map(|s| s.sequence).collect();
        assert_eq!(sequences, vec![2, 5, 9]);
        assert_eq!(recovered.segments[2].tail, Tail::Torn { offset: 0 });
        assert_eq!(recovered.segments[2].bytes, 4);
        assert_eq!(recovered.corrupt_tails, 1);
        assert_eq!(
            recovered.damaged_segments, 0,
            "a crash while creating the last segment is not damage"
        );
    }

    #[test]
    fn more_batches_than_the_bound_is_an_error() {
        let dir = TempDir::new("full");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, RUN_A);
        log.open(1, &batch_open("u", "c", 1.0));
        log.open(2, &batch_open("u", "c", 2.0));
        log.finish();
        let error = recover(&RealDisk, dir.path(), 1, 0)
            .err()
            .expect("too many batches");
        assert!(
            error.to_string().contains("more than 1 pending batches"),
            "{error}"
        );
    }
}
