//! `pusher spill inspect`: what the spill log holds, read-only.
//!
//! The log is scanned the way recovery scans it ([`rebuild`]), but nothing is written: no
//! directory is created, open batches are reported open (the server that writes them may be
//! running), and torn tails are reported, not repaired.

use std::io::{self, ErrorKind, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::index::{BatchEntry, BatchState};
use super::recovery::{Recovered, rebuild};
use super::scan::Tail;

/// Prints the segments, batches and totals of the spill log in `dir` to `out`. `batches_max`
/// bounds the index as in the server (`spill_batches_max`): a log holding more is an error.
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
    let recovered = rebuild(&super::disk::RealDisk, dir, batches_max, now_unix_ms)?;
    writeln!(out, "spill log {}", dir.display())?;
    print_segments(&recovered, out)?;
    print_batches(&recovered, out)?;
    print_totals(&recovered, out)
}

fn print_segments(recovered: &Recovered, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "segments: {}", recovered.segments.len())?;
    writeln!(
        out,
        "  {:>8}  {:>12}  {:>8}  {:>16}  tail",
        "sequence", "bytes", "records", "run"
    )?;
    for segment in &recovered.segments {
        let tail = match segment.tail {
            Tail::Clean => "clean".to_string(),
            Tail::Torn { offset } => format!("torn at {offset}"),
            Tail::Corrupt { offset } => format!("corrupt at {offset}"),
        };
        writeln!(
            out,
            "  {:>8}  {:>12}  {:>8}  {:016x}  {tail}",
            segment.sequence, segment.bytes, segment.records, segment.run_id
        )?;
    }
    Ok(())
}

fn print_batches(recovered: &Recovered, out: &mut impl Write) -> io::Result<()> {
    let mut batches: Vec<&BatchEntry> = recovered.index.entries().collect();
    batches.sort_unstable_by_key(|entry| (entry.first_segment, entry.key));
    writeln!(out, "batches: {}", batches.len())?;
    writeln!(
        out,
        "  {:<27}  {:<6}  {:>16}  {:>10}  {:>8}  uid  conversation",
        "run/batch", "state", "timestamp", "bytes", "records"
    )?;
    for entry in batches {
        let state = match entry.state {
            BatchState::Open => "open",
            BatchState::Closed { .. } => "closed",
            BatchState::Uploading => unreachable!("a scan uploads nothing"),
        };
        let key = format!("{:016x}/{}", entry.key.run, entry.key.batch);
        writeln!(
            out,
            "  {key:<27}  {state:<6}  {:>16.3}  {:>10}  {:>8}  {}  {}",
            entry.open.timestamp,
            entry.audio_bytes,
            entry.audio_records,
            entry.open.uid.as_str(),
            entry.open.conversation.as_str()
        )?;
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
    writeln!(
        out,
        "pending: {batches} batches ({open} open), {bytes} audio bytes; \
         {segment_bytes} bytes in {} segments",
        recovered.segments.len()
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

    #[test]
    fn a_missing_directory_is_reported_not_created() {
        let dir = TempDir::new("inspect-missing");
        let spill = dir.path().join("spill");
        let text = inspect_text(&spill);
        assert!(text.contains("no such directory"), "{text}");
        assert!(!spill.exists());
    }
}
