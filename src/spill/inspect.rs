//! `pusher spill inspect`: what the spill log holds, read-only.
//!
//! The log is scanned the way recovery scans it ([`rebuild_keeping_uploaded`]), but nothing is
//! written: no directory is created, open batches are reported open (the server that writes
//! them may be running), and torn tails are reported, not repaired. Each batch is in one state:
//!
//! - `open`: being written (or left open by a server that stopped: closed at its next start);
//! - `closed`: complete, waiting for its upload;
//! - `damaged`: records of it were lost to damage in the log; uploaded as a `.partial` object;
//! - `uploaded`: the store confirmed it (its uploaded record is in the log); only its
//!   segment is left, deleted once no older pending batch needs it.
//!
//! A segment is `active` (the newest: a running server appends to it), `live` (holds records
//! of pending batches), `uploaded` (everything in it is uploaded; awaiting deletion) or
//! `damaged` (a copy stays in `damaged/` for an operator).

use std::io::{self, ErrorKind, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::index::{BatchEntry, BatchState};
use super::recovery::{Recovered, SegmentInfo, rebuild_keeping_uploaded};
use super::scan::Tail;

/// Prints the segments, batches and totals of the spill log in `dir` to `out`. `batches_max`
/// bounds the index as in the server (`spill_batches_max`): a log holding more pending batches
/// is an error; at most as many uploaded batches are listed.
pub fn inspect(dir: &Path, batches_max: usize, out: &mut impl Write) -> io::Result<()> {
    if let Err(error) = std::fs::metadata(dir) {
        if error.kind() == ErrorKind::NotFound {
            return writeln!(out, "spill log {}: no such directory", dir.display());
        }
        return Err(error);
    }
    let now_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let disk = super::disk::RealDisk;
    let recovered = rebuild_keeping_uploaded(&disk, dir, batches_max, now_unix_ms, batches_max)?;
    writeln!(out, "spill log {}", dir.display())?;
    print_segments(&recovered, out)?;
    print_batches(&recovered, out)?;
    print_totals(&recovered, out)
}

/// The state of one segment (see the module doc).
fn segment_state(recovered: &Recovered, segment: &SegmentInfo) -> &'static str {
    let newest = recovered.segments.last().map(|s| s.sequence);
    let oldest_needed = recovered.index.oldest_segment();
    if segment.damaged {
        "damaged"
    } else if Some(segment.sequence) == newest {
        "active"
    } else if oldest_needed.is_some_and(|oldest| segment.sequence >= oldest) {
        "live"
    } else {
        "uploaded"
    }
}

fn print_segments(recovered: &Recovered, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "segments: {}", recovered.segments.len())?;
    writeln!(
        out,
        "  {:>8}  {:>12}  {:>8}  {:>16}  {:<8}  tail",
        "sequence", "bytes", "records", "run", "state"
    )?;
    for segment in &recovered.segments {
        let tail = match segment.tail {
            Tail::Clean => "clean".to_string(),
            Tail::Torn { offset } => format!("torn at {offset}"),
            Tail::Corrupt { offset } => format!("corrupt at {offset}"),
        };
        writeln!(
            out,
            "  {:>8}  {:>12}  {:>8}  {:016x}  {:<8}  {tail}",
            segment.sequence,
            segment.bytes,
            segment.records,
            segment.run_id,
            segment_state(recovered, segment)
        )?;
    }
    Ok(())
}

/// The state of one pending batch (see the module doc).
fn batch_state(entry: &BatchEntry) -> &'static str {
    match entry.state {
        _ if entry.holes > 0 => "damaged",
        BatchState::Open => "open",
        BatchState::Closed { .. } => "closed",
        BatchState::Uploading => unreachable!("a scan uploads nothing"),
    }
}

fn print_batches(recovered: &Recovered, out: &mut impl Write) -> io::Result<()> {
    let mut batches: Vec<(&BatchEntry, &str)> = recovered
        .uploaded
        .iter()
        .map(|entry| (entry, "uploaded"))
        .chain(recovered.index.entries().map(|e| (e, batch_state(e))))
        .collect();
    batches.sort_unstable_by_key(|(entry, _)| (entry.first_segment, entry.key));
    writeln!(out, "batches: {}", batches.len())?;
    writeln!(
        out,
        "  {:<27}  {:<8}  {:>16}  {:>10}  {:>8}  {:>5}  uid  conversation",
        "run/batch", "state", "timestamp", "bytes", "records", "holes"
    )?;
    for (entry, state) in batches {
        let key = format!("{:016x}/{}", entry.key.run, entry.key.batch);
        writeln!(
            out,
            "  {key:<27}  {state:<8}  {:>16.3}  {:>10}  {:>8}  {:>5}  {}  {}",
            entry.open.timestamp,
            entry.audio_bytes,
            entry.audio_records,
            entry.holes,
            entry.open.uid.as_str(),
            entry.open.conversation.as_str()
        )?;
    }
    let not_listed = recovered.confirmed_batches - recovered.uploaded.len() as u64;
    if not_listed > 0 {
        writeln!(out, "  ... and {not_listed} more uploaded batches")?;
    }
    Ok(())
}

fn print_totals(recovered: &Recovered, out: &mut impl Write) -> io::Result<()> {
    let (batches, bytes) = recovered.index.pending();
    let open = recovered
        .index
        .entries()
        .filter(|entry| entry.state == BatchState::Open)
        .count();
    let segment_bytes: u64 = recovered.segments.iter().map(|s| s.bytes).sum();
    let deletable: Vec<&SegmentInfo> = recovered
        .segments
        .iter()
        .filter(|segment| segment_state(recovered, segment) == "uploaded")
        .collect();
    writeln!(
        out,
        "pending: {batches} batches ({open} open), {bytes} audio bytes; \
         {segment_bytes} bytes in {} segments",
        recovered.segments.len()
    )?;
    writeln!(
        out,
        "uploaded: {} batches; {} segments ({} bytes) awaiting deletion",
        recovered.confirmed_batches,
        deletable.len(),
        deletable.iter().map(|s| s.bytes).sum::<u64>()
    )?;
    writeln!(
        out,
        "torn or corrupt tails: {}; damaged segments: {}; batches with holes: {}; skipped \
         records: {}; next segment: {}",
        recovered.corrupt_tails,
        recovered.damaged_segments,
        recovered.holed_batches,
        recovered.skipped_records,
        recovered.next_sequence
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::scan::segment_file_name;
    use crate::spill::test_log::{LogBuilder, TempDir, batch_open};

    fn inspect_text(dir: &Path) -> String {
        let mut out = Vec::new();
        inspect(dir, 16, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn words_of_line_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
        let line = text.lines().find(|line| line.contains(needle));
        line.expect(needle).split_whitespace().collect()
    }

    #[test]
    fn lists_segments_batches_and_totals_without_writing() {
        let dir = TempDir::new("inspect");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, 0xab);
        log.open(1, &batch_open("alice", "conv-1", 1_700_000_000.25));
        log.audio(1, &[7; 100]);
        log.close(1);
        log.start_segment(2, 0xab);
        log.open(2, &batch_open("bob", "conv-2", 1_700_000_001.0));
        log.audio(2, &[8; 30]);
        log.finish();
        let path = dir.path().join(segment_file_name(2));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0; 5]);
        std::fs::write(&path, &bytes).unwrap();
        let before: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();

        let text = inspect_text(dir.path());
        assert!(text.contains("segments: 2"), "{text}");
        assert!(text.contains("torn at"), "{text}");
        assert!(text.contains("batches: 2"), "{text}");
        assert_eq!(
            words_of_line_with(&text, "alice"),
            [
                "00000000000000ab/1",
                "closed",
                "1700000000.250",
                "100",
                "1",
                "0",
                "alice",
                "conv-1"
            ]
        );
        assert_eq!(
            words_of_line_with(&text, "bob"),
            [
                "00000000000000ab/2",
                "open",
                "1700000001.000",
                "30",
                "1",
                "0",
                "bob",
                "conv-2"
            ]
        );
        assert_eq!(
            words_of_line_with(&text, "torn at"),
            [
                "2",
                &bytes.len().to_string(),
                "2",
                "00000000000000ab",
                "active",
                "torn",
                "at",
                "142"
            ]
        );
        assert!(
            text.contains("pending: 2 batches (1 open), 130 audio bytes"),
            "{text}"
        );
        assert!(text.contains("torn or corrupt tails: 1"), "{text}");
        assert!(text.contains("next segment: 3"), "{text}");

        let after: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(before.len(), after.len());
        assert_eq!(
            std::fs::read(&path).unwrap(),
            bytes,
            "the torn tail is left alone"
        );
    }

    /// The state of each batch and segment: what `/metrics` counts as pending is what inspect
    /// calls pending; an uploaded batch is listed as uploaded, with its segment awaiting deletion.
    #[test]
    fn uploaded_and_damaged_batches_are_told_apart_from_pending_ones() {
        let dir = TempDir::new("inspect-states");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, 0xcd);
        log.open(1, &batch_open("uploaded-user", "c1", 1.0));
        log.audio(1, &[1; 40]);
        log.close(1);
        log.start_segment(2, 0xcd);
        log.uploaded(0xcd, 1);
        log.open(2, &batch_open("closed-user", "c2", 2.0));
        let damaged_audio = log.audio(2, &[2; 50]);
        log.audio(2, &[3; 60]);
        log.close(2);
        log.open(3, &batch_open("whole-user", "c3", 3.0));
        log.audio(3, &[4; 70]);
        log.close(3);
        log.start_segment(3, 0xcd);
        log.open(4, &batch_open("open-user", "c4", 4.0));
        log.audio(4, &[5; 30]);
        log.finish();
        let path = dir.path().join(segment_file_name(2));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[damaged_audio.offset() as usize + crate::spill::record::RECORD_HEADER_BYTES + 1] ^=
            0x40;
        std::fs::write(&path, &bytes).unwrap();

        let text = inspect_text(dir.path());
        let state_of = |needle| words_of_line_with(&text, needle)[1].to_string();
        assert_eq!(state_of("uploaded-user"), "uploaded", "{text}");
        assert_eq!(state_of("closed-user"), "damaged", "{text}");
        assert_eq!(state_of("whole-user"), "closed", "{text}");
        assert_eq!(state_of("open-user"), "open", "{text}");
        let segment_state = |sequence: &str| {
            let line = text
                .lines()
                .find(|line| line.split_whitespace().next() == Some(sequence))
                .expect("a segment line");
            line.split_whitespace().nth(4).unwrap().to_string()
        };
        assert_eq!(segment_state("1"), "uploaded", "{text}");
        assert_eq!(segment_state("2"), "damaged", "{text}");
        assert_eq!(segment_state("3"), "active", "{text}");
        assert!(
            text.contains("pending: 3 batches (1 open), 160 audio bytes"),
            "{text}"
        );
        assert!(text.contains("uploaded: 1 batches; 1 segments"), "{text}");
    }

    #[test]
    fn a_missing_directory_is_reported_not_created() {
        let dir = TempDir::new("inspect-missing");
        let spill = dir.path().join("spill");
        let text = inspect_text(&spill);
        assert!(text.contains("no such directory"), "{text}");
        assert!(!spill.exists());
    }
}
