//! Reading segment files front to back: naming, listing, and scanning for valid records.
//!
//! A segment is named `segment-{sequence:016x}.log` in the spill directory. A scan reads it
//! record by record through one bounded buffer and stops at the first record that is torn
//! (fewer bytes than its header or payload need) or corrupt (a bad header or a CRC mismatch):
//! everything before that point is valid, nothing after it is trusted.
//!
//! Invariants: a scan holds at most one read buffer of [`SCAN_READ_BUFFER_BYTES`] plus one record
//! (at most `RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX` bytes); every record it passes on
//! has a valid header and CRC, and its [`Location`] names the file it was read from (the
//! sequence in the file name and the segment header agree).

use std::fs::File;
use std::io::{self, BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use super::record::{
    Header, Location, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, check, decode_header,
    decode_segment_header,
};

/// The spill directory's name under the data directory.
pub const SPILL_DIR_NAME: &str = "spill";
/// Largest segment sequence a [`Location`] can name (its upper 32 bits).
pub const SEGMENT_SEQUENCE_MAX: u64 = u32::MAX as u64;
/// Bytes read from a segment file at a time.
pub const SCAN_READ_BUFFER_BYTES: usize = 256 * 1024;

const SEGMENT_FILE_PREFIX: &str = "segment-";
const SEGMENT_FILE_SUFFIX: &str = ".log";
const SEGMENT_FILE_HEX_DIGITS: usize = 16;

/// `<data_dir>/spill`.
pub fn spill_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(SPILL_DIR_NAME)
}

/// `segment-{sequence:016x}.log`.
pub fn segment_file_name(sequence: u64) -> String {
    assert!(
        (1..=SEGMENT_SEQUENCE_MAX).contains(&sequence),
        "segment sequence {sequence} out of range"
    );
    format!("{SEGMENT_FILE_PREFIX}{sequence:016x}{SEGMENT_FILE_SUFFIX}")
}

/// The sequence of a segment file name, or None if [`segment_file_name`] does not produce it.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let hex = name
        .strip_prefix(SEGMENT_FILE_PREFIX)?
        .strip_suffix(SEGMENT_FILE_SUFFIX)?;
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if hex.len() != SEGMENT_FILE_HEX_DIGITS || !hex.bytes().all(lower_hex) {
        return None;
    }
    let sequence = u64::from_str_radix(hex, 16).ok()?;
    (1..=SEGMENT_SEQUENCE_MAX)
        .contains(&sequence)
        .then_some(sequence)
}

/// The segment files in `dir`, sorted by sequence; other entries are ignored.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let sequence = entry.file_name().to_str().and_then(parse_segment_file_name);
        if let Some(sequence) = sequence
            && entry.file_type()?.is_file()
        {
            segments.push((sequence, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|&(sequence, _)| sequence);
    Ok(segments)
}

/// How a segment's valid records end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The last record ends exactly at the end of the file.
    Clean,
    /// The bytes at `offset` are fewer than a segment header, a record header or its payload.
    Torn { offset: u64 },
    /// The bytes at `offset` are not a valid segment header or record (bad header, bad CRC).
    Corrupt { offset: u64 },
}

impl Tail {
    pub fn is_clean(self) -> bool {
        self == Tail::Clean
    }
}

/// What a scan found in one segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentScan {
    /// From the file name (equal to the segment header's when the header is valid).
    pub sequence: u64,
    /// From the segment header; 0 when the header is torn or corrupt (then `records` is 0).
    pub run_id: u64,
    /// Valid records passed on.
    pub records: u64,
    /// Offset just past the last valid record (0 when the segment header is not valid).
    pub valid_bytes: u64,
    /// The file's length when the scan opened it; bytes appended later are not scanned.
    pub file_bytes: u64,
    pub tail: Tail,
}

/// One step of a scan.
enum Next {
    Record(Header),
    End,
    Stop(Tail),
}

/// Scans the segment at `path` (named by [`segment_file_name`]), calling `f` with each valid
/// record's header, payload and location, in order, until the end of the file or the first torn
/// or corrupt record. A missing or bad segment header ends the scan at offset 0 with no records.
pub fn scan_segment(
    path: &Path,
    f: impl FnMut(&Header, &[u8], Location),
) -> io::Result<SegmentScan> {
    SegmentScanner::open(path)?.scan(f)
}

/// A segment file whose header has been read and checked, ready to scan its records.
pub struct SegmentScanner {
    reader: BufReader<File>,
    /// Filled in as the scan goes.
    scan: SegmentScan,
}

impl SegmentScanner {
    /// Opens the segment at `path` and checks its header against the file name.
    pub fn open(path: &Path) -> io::Result<SegmentScanner> {
        let sequence = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(parse_segment_file_name)
            .ok_or_else(|| {
                io::Error::new(
                    ErrorKind::InvalidInput,
                    format!("{} is not a spill segment file name", path.display()),
                )
            })?;
        let file = File::open(path)?;
        let file_bytes = file.metadata()?.len();
        let mut reader = BufReader::with_capacity(SCAN_READ_BUFFER_BYTES, file);
        let mut scan = SegmentScan {
            sequence,
            run_id: 0,
            records: 0,
            valid_bytes: 0,
            file_bytes,
            tail: Tail::Clean,
        };
        match read_segment_header(&mut reader, sequence, file_bytes)? {
            Ok(run_id) => {
                scan.run_id = run_id;
                scan.valid_bytes = SEGMENT_HEADER_BYTES as u64;
            }
            Err(tail) => scan.tail = tail,
        }
        Ok(SegmentScanner { reader, scan })
    }

    /// The run that wrote the segment, or None if its header is torn or corrupt.
    pub fn run_id(&self) -> Option<u64> {
        (self.scan.valid_bytes > 0).then_some(self.scan.run_id)
    }

    /// Calls `f` for each valid record, in order (nothing if the segment header is not valid).
    pub fn scan(mut self, mut f: impl FnMut(&Header, &[u8], Location)) -> io::Result<SegmentScan> {
        if self.run_id().is_none() {
            debug_assert!(!self.scan.tail.is_clean());
            return Ok(self.scan);
        }
        let scan = &mut self.scan;
        // One buffer for every record: header ‖ payload, as `check` wants it.
        let mut record = Vec::with_capacity(SCAN_READ_BUFFER_BYTES);
        scan.tail = loop {
            let offset = scan.valid_bytes;
            let Ok(offset_u32) = u32::try_from(offset) else {
                // Past what a location can name: the writer never gets here.
                break Tail::Corrupt { offset };
            };
            match read_record(&mut self.reader, &mut record, offset, scan.file_bytes)? {
                Next::Record(header) => {
                    f(
                        &header,
                        &record[RECORD_HEADER_BYTES..],
                        Location::new(scan.sequence, offset_u32),
                    );
                    scan.records += 1;
                    scan.valid_bytes += record.len() as u64;
                }
                Next::End => break Tail::Clean,
                Next::Stop(tail) => break tail,
            }
        };
        debug_assert!(scan.valid_bytes <= scan.file_bytes);
        Ok(self.scan)
    }
}

/// The run id of a valid segment header naming `sequence`, or the tail at offset 0.
fn read_segment_header(
    reader: &mut impl Read,
    sequence: u64,
    file_bytes: u64,
) -> io::Result<Result<u64, Tail>> {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    if file_bytes < SEGMENT_HEADER_BYTES as u64 || !read_all(reader, &mut header)? {
        return Ok(Err(Tail::Torn { offset: 0 }));
    }
    Ok(match decode_segment_header(&header) {
        Some((found, run_id)) if found == sequence => Ok(run_id),
        _ => Err(Tail::Corrupt { offset: 0 }),
    })
}

/// Reads the record at `offset` into `record` (header ‖ payload) and validates it. `file_bytes`
/// bounds the read, so a torn length never makes the buffer grow past what the file holds.
fn read_record(
    reader: &mut impl Read,
    record: &mut Vec<u8>,
    offset: u64,
    file_bytes: u64,
) -> io::Result<Next> {
    debug_assert!(offset <= file_bytes);
    let remaining = file_bytes - offset;
    if remaining == 0 {
        return Ok(Next::End);
    }
    let torn = Next::Stop(Tail::Torn { offset });
    record.clear();
    record.resize(RECORD_HEADER_BYTES, 0);
    if remaining < RECORD_HEADER_BYTES as u64 || !read_all(reader, record)? {
        return Ok(torn);
    }
    let Ok(header) = decode_header(record) else {
        return Ok(Next::Stop(Tail::Corrupt { offset }));
    };
    let record_bytes = RECORD_HEADER_BYTES + header.len as usize;
    if remaining < record_bytes as u64 {
        return Ok(torn);
    }
    record.resize(record_bytes, 0);
    if !read_all(reader, &mut record[RECORD_HEADER_BYTES..])? {
        return Ok(torn);
    }
    if !check(record) {
        return Ok(Next::Stop(Tail::Corrupt { offset }));
    }
    Ok(Next::Record(header))
}

/// Fills `buf`; false if the file ends first (it shrank since it was opened).
fn read_all(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::UnexpectedEof => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::record::Kind;
    use crate::spill::test_log::{LogBuilder, TempDir, batch_open};

    /// (kind, batch, payload, location) of every record `f` saw.
    type Seen = Vec<(Kind, u64, Vec<u8>, Location)>;

    fn scan_all(path: &Path) -> (SegmentScan, Seen) {
        let mut seen = Vec::new();
        let scan = scan_segment(path, |header, payload, at| {
            seen.push((header.kind, header.batch, payload.to_vec(), at));
        })
        .expect("scan");
        (scan, seen)
    }

    /// A segment of four records; returns its path and the offset of its last record.
    fn four_records(dir: &Path) -> (PathBuf, u64) {
        let mut log = LogBuilder::new(dir);
        log.start_segment(1, 77);
        log.open(5, &batch_open("u", "c", 1.0));
        log.audio(5, b"hello");
        log.audio(5, b"world");
        let last = log.close(5);
        log.finish();
        (dir.join(segment_file_name(1)), u64::from(last.offset()))
    }

    #[test]
    fn file_names_round_trip_and_others_are_ignored() {
        assert_eq!(segment_file_name(1), "segment-0000000000000001.log");
        assert_eq!(segment_file_name(0xab), "segment-00000000000000ab.log");
        assert_eq!(
            parse_segment_file_name("segment-00000000000000ab.log"),
            Some(0xab)
        );
        for name in [
            "segment-00000000000000AB.log",
            "segment-0000000000000000.log",
            "segment-0000000100000000.log",
            "segment-01.log",
            "segment-00000000000000ab.log.tmp",
            "other.log",
        ] {
            assert_eq!(parse_segment_file_name(name), None, "{name}");
        }
    }

    #[test]
    fn list_segments_sorts_and_ignores_unrelated_files() {
        let dir = TempDir::new("list");
        for sequence in [3, 1, 0x10] {
            std::fs::write(dir.path().join(segment_file_name(sequence)), b"").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        std::fs::create_dir(dir.path().join("segment-0000000000000002.log")).unwrap();
        let listed = list_segments(dir.path()).unwrap();
        let sequences: Vec<u64> = listed.iter().map(|(s, _)| *s).collect();
        assert_eq!(sequences, vec![1, 3, 0x10]);
        assert_eq!(listed[0].1, dir.path().join(segment_file_name(1)));
    }

    #[test]
    fn a_clean_segment_yields_every_record_in_order() {
        let dir = TempDir::new("clean");
        let (path, last) = four_records(dir.path());
        let (scan, seen) = scan_all(&path);
        let file_bytes = std::fs::metadata(&path).unwrap().len();
        assert_eq!(scan.tail, Tail::Clean);
        assert_eq!((scan.sequence, scan.run_id, scan.records), (1, 77, 4));
        assert_eq!(
            (scan.valid_bytes, scan.file_bytes),
            (file_bytes, file_bytes)
        );
        let kinds: Vec<Kind> = seen.iter().map(|s| s.0).collect();
        assert_eq!(
            kinds,
            vec![Kind::BatchOpen, Kind::Audio, Kind::Audio, Kind::BatchClose]
        );
        assert_eq!(seen[0].3, Location::new(1, SEGMENT_HEADER_BYTES as u32));
        assert_eq!(seen[1].2, b"hello");
        assert_eq!(seen[2].2, b"world");
        assert_eq!(seen[3].3, Location::new(1, last as u32));
    }

    #[test]
    fn a_truncation_anywhere_in_the_last_record_is_torn() {
        let dir = TempDir::new("torn");
        let (path, last) = four_records(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        for cut in last as usize..bytes.len() {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let (scan, seen) = scan_all(&path);
            assert_eq!(seen.len(), 3, "cut at {cut}");
            assert_eq!(scan.records, 3, "cut at {cut}");
            assert_eq!(scan.valid_bytes, last, "cut at {cut}");
            let expected = if cut == last as usize {
                Tail::Clean
            } else {
                Tail::Torn { offset: last }
            };
            assert_eq!(scan.tail, expected, "cut at {cut}");
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_the_last_record_stops_the_scan() {
        let dir = TempDir::new("flip");
        let (path, last) = four_records(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        for bit in last as usize * 8..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            std::fs::write(&path, &damaged).unwrap();
            let (scan, seen) = scan_all(&path);
            assert_eq!(seen.len(), 3, "bit {bit}: a damaged record was passed on");
            assert_eq!(scan.valid_bytes, last, "bit {bit}");
            assert!(
                matches!(
                    scan.tail,
                    Tail::Torn { offset } | Tail::Corrupt { offset } if offset == last
                ),
                "bit {bit}: {:?}",
                scan.tail
            );
        }
    }

    #[test]
    fn a_bad_or_torn_segment_header_yields_no_records() {
        let dir = TempDir::new("header");
        let (path, _) = four_records(dir.path());
        let bytes = std::fs::read(&path).unwrap();
        for cut in 0..SEGMENT_HEADER_BYTES {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let (scan, seen) = scan_all(&path);
            assert!(seen.is_empty());
            assert_eq!(scan.tail, Tail::Torn { offset: 0 }, "cut at {cut}");
        }
        let mut damaged = bytes.clone();
        damaged[0] ^= 1;
        std::fs::write(&path, &damaged).unwrap();
        let (scan, seen) = scan_all(&path);
        assert!(seen.is_empty());
        assert_eq!(
            (scan.tail, scan.records, scan.valid_bytes),
            (Tail::Corrupt { offset: 0 }, 0, 0)
        );
        // A header naming another sequence than the file name is not this segment's.
        std::fs::write(dir.path().join(segment_file_name(2)), &bytes).unwrap();
        let (scan, seen) = scan_all(&dir.path().join(segment_file_name(2)));
        assert!(seen.is_empty());
        assert_eq!(scan.tail, Tail::Corrupt { offset: 0 });
    }

    #[test]
    fn corruption_in_the_middle_hides_the_rest() {
        let dir = TempDir::new("middle");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, 1);
        log.open(5, &batch_open("u", "c", 1.0));
        let audio = log.audio(5, b"abc");
        log.audio(5, b"def");
        log.finish();
        let path = dir.path().join(segment_file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[audio.offset() as usize + RECORD_HEADER_BYTES] ^= 0x80;
        std::fs::write(&path, &bytes).unwrap();
        let (scan, seen) = scan_all(&path);
        assert_eq!(seen.len(), 1);
        assert_eq!(
            scan.tail,
            Tail::Corrupt {
                offset: u64::from(audio.offset())
            }
        );
    }

    #[test]
    fn a_file_that_is_not_a_segment_name_is_refused() {
        let dir = TempDir::new("name");
        let path = dir.path().join("segment.log");
        std::fs::write(&path, b"").unwrap();
        let error = scan_segment(&path, |_, _, _| {}).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
    }
}
