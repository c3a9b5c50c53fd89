//! Reading segment files front to back: naming, listing, and scanning for valid records.
//!
//! A segment is named `segment-{sequence:016x}.log` in the spill directory. A scan reads it
//! record by record through one bounded buffer. A record that is torn (fewer bytes than its
//! header or payload need) or corrupt (a bad header or a CRC mismatch) does not end the scan: it
//! looks for the next offset where a valid record starts (header checks, then the CRC) and goes
//! on from there, reporting the stretch between as [`Damage`]. So one damaged byte costs the
//! record it is in, not the records after it (issue 11, defect 2). Only bytes with no valid
//! record after them end the segment ([`Tail`]); after a crash that is the torn last write.
//!
//! Invariants: a scan holds at most one read buffer of [`SCAN_READ_BUFFER_BYTES`] plus one record
//! (at most `RECORD_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX` bytes); every record it passes on
//! has a valid header and CRC, and its [`Location`] names the file it was read from (the
//! sequence in the file name and the segment header agree); a resync checks at most
//! [`RESYNC_CHECK_BYTES_MAX`] bytes of failed candidates per segment.

use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use super::disk::{Disk, ReadFile, RealDisk};
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
pub fn list_segments(disk: &dyn Disk, dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segments: Vec<(u64, PathBuf)> = disk
        .list_files(dir)?
        .into_iter()
        .filter_map(|name| Some((parse_segment_file_name(&name)?, dir.join(name))))
        .collect();
    segments.sort_unstable_by_key(|&(sequence, _)| sequence);
    Ok(segments)
}

/// How a segment's valid records end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tail {
    /// The last record ends exactly at the end of the file.
    Clean,
    /// The bytes at `offset` are fewer than a segment header, a record header or its payload,
    /// and no valid record follows them.
    Torn {
        /// Where the bad bytes start, from the start of the file.
        offset: u64,
    },
    /// The bytes at `offset` are not a valid segment header or record (bad header, bad CRC),
    /// and no valid record follows them.
    Corrupt {
        /// Where the bad bytes start, from the start of the file.
        offset: u64,
    },
}

impl Tail {
    /// True for [`Tail::Clean`].
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
    /// Damaged stretches with valid records after them (the scan resumed past each).
    pub damaged_regions: u64,
    /// Bytes in those stretches (not the tail's).
    pub damaged_bytes: u64,
    /// How the valid records end.
    pub tail: Tail,
}

/// Bytes that are not a valid record, found by a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    /// The stretch `[start, end)` of the segment.
    pub start: u64,
    /// The offset just past the stretch.
    pub end: u64,
    /// The batch id the bytes at `start` name, if a record header's batch field is there: the
    /// likeliest owner of the lost record.
    pub suspect_batch: Option<u64>,
    /// No valid record follows (the stretch runs to the end of the file).
    pub at_end: bool,
}

/// Bytes of failed candidates a scan may check while looking for the next valid record after
/// damage, per segment: a bound on the work of a resync. Each candidate must first pass the
/// header checks (known kind, 7 zero bytes, a length that fits), so ordinary audio rarely costs
/// anything; past the bound the rest of the segment counts as damaged.
pub const RESYNC_CHECK_BYTES_MAX: u64 = 1 << 30;

/// Scans the segment at `path` on the real disk; see [`SegmentScanner::scan`].
pub fn scan_segment(
    path: &Path,
    f: impl FnMut(&Header, &[u8], Location),
) -> io::Result<SegmentScan> {
    SegmentScanner::open(&RealDisk, path)?.scan(f)
}

/// A segment file whose header has been read and checked, ready to scan its records.
pub struct SegmentScanner {
    file: Box<dyn ReadFile>,
    /// Bytes `[window_start, window_start + window.len())` of the file.
    window: Vec<u8>,
    window_start: u64,
    /// A record larger than the window is read here.
    large: Vec<u8>,
    resync_checked_bytes: u64,
    /// Filled in as the scan goes.
    scan: SegmentScan,
}

/// What is at one offset.
enum Found {
    Record(Header, u64),
    End,
    /// Fewer bytes than the record needs.
    Short,
    Bad,
}

impl SegmentScanner {
    /// Opens the segment at `path` and checks its header against the file name.
    pub fn open(disk: &dyn Disk, path: &Path) -> io::Result<SegmentScanner> {
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
        let file = disk.open_read(path)?;
        let file_bytes = file.len_bytes()?;
        let mut scanner = SegmentScanner {
            file,
            window: Vec::with_capacity(SCAN_READ_BUFFER_BYTES),
            window_start: 0,
            large: Vec::new(),
            resync_checked_bytes: 0,
            scan: SegmentScan {
                sequence,
                run_id: 0,
                records: 0,
                valid_bytes: 0,
                file_bytes,
                damaged_regions: 0,
                damaged_bytes: 0,
                tail: Tail::Clean,
            },
        };
        let header = scanner.bytes_at(0, SEGMENT_HEADER_BYTES)?;
        scanner.scan.tail = match header.map(decode_segment_header) {
            None => Tail::Torn { offset: 0 },
            Some(Some((found, run_id))) if found == sequence => {
                scanner.scan.run_id = run_id;
                scanner.scan.valid_bytes = SEGMENT_HEADER_BYTES as u64;
                Tail::Clean
            }
            Some(_) => Tail::Corrupt { offset: 0 },
        };
        Ok(scanner)
    }

    /// The run that wrote the segment, or None if its header is torn or corrupt.
    pub fn run_id(&self) -> Option<u64> {
        (self.scan.valid_bytes > 0).then_some(self.scan.run_id)
    }

    /// Calls `f` for each valid record, in order (nothing if the segment header is not valid).
    pub fn scan(self, mut f: impl FnMut(&Header, &[u8], Location)) -> io::Result<SegmentScan> {
        self.scan_with_damage(|header, payload, at| f(header, payload, at), |_| {})
    }

    /// Calls `on_record` for each valid record, in order, and `on_damage` for each stretch of
    /// bytes that is not one: after damage the scan resumes at the next valid record, so damage
    /// costs the records it covers and no others.
    pub fn scan_with_damage(
        mut self,
        mut on_record: impl FnMut(&Header, &[u8], Location),
        mut on_damage: impl FnMut(Damage),
    ) -> io::Result<SegmentScan> {
        if self.run_id().is_none() {
            debug_assert!(!self.scan.tail.is_clean());
            return Ok(self.scan);
        }
        let mut offset = SEGMENT_HEADER_BYTES as u64;
        loop {
            let bad = match self.record_at(offset)? {
                Found::End => break,
                Found::Record(header, record_bytes) => {
                    self.pass_on(offset, &header, record_bytes, &mut on_record)?;
                    offset += record_bytes;
                    continue;
                }
                Found::Short => Tail::Torn { offset },
                Found::Bad => Tail::Corrupt { offset },
            };
            let suspect_batch = self.suspect_batch(offset)?;
            match self.resync(offset)? {
                Some(next) => {
                    self.scan.damaged_regions += 1;
                    self.scan.damaged_bytes += next - offset;
                    on_damage(Damage {
                        start: offset,
                        end: next,
                        suspect_batch,
                        at_end: false,
                    });
                    offset = next;
                }
                None => {
                    self.scan.tail = bad;
                    on_damage(Damage {
                        start: offset,
                        end: self.scan.file_bytes,
                        suspect_batch,
                        at_end: true,
                    });
                    break;
                }
            }
        }
        debug_assert!(self.scan.valid_bytes <= self.scan.file_bytes);
        Ok(self.scan)
    }

    /// Hands the valid record at `offset` to `f`.
    fn pass_on(
        &mut self,
        offset: u64,
        header: &Header,
        record_bytes: u64,
        f: &mut impl FnMut(&Header, &[u8], Location),
    ) -> io::Result<()> {
        let at = Location::new(
            self.scan.sequence,
            u32::try_from(offset).expect("checked by record_at"),
        );
        let record = self.record_bytes(offset, record_bytes)?;
        f(header, &record[RECORD_HEADER_BYTES..], at);
        self.scan.records += 1;
        self.scan.valid_bytes = offset + record_bytes;
        Ok(())
    }

    /// Whether a valid record starts at `offset`.
    fn record_at(&mut self, offset: u64) -> io::Result<Found> {
        let remaining = self.scan.file_bytes - offset;
        if remaining == 0 {
            return Ok(Found::End);
        }
        if u32::try_from(offset).is_err() {
            // Past what a location can name: the writer never gets here.
            return Ok(Found::Bad);
        }
        let Some(header_bytes) = self.bytes_at(offset, RECORD_HEADER_BYTES)? else {
            return Ok(Found::Short);
        };
        let Ok(header) = decode_header(header_bytes) else {
            return Ok(Found::Bad);
        };
        let record_bytes = (RECORD_HEADER_BYTES + header.len as usize) as u64;
        if remaining < record_bytes {
            return Ok(Found::Short);
        }
        let record = self.record_bytes(offset, record_bytes)?;
        if record.len() as u64 != record_bytes {
            return Ok(Found::Short);
        }
        Ok(if check(record) {
            Found::Record(header, record_bytes)
        } else {
            Found::Bad
        })
    }

    /// The batch field of a record header at `offset`, if the file holds one there.
    fn suspect_batch(&mut self, offset: u64) -> io::Result<Option<u64>> {
        Ok(self
            .bytes_at(offset, RECORD_HEADER_BYTES)?
            .map(|bytes| u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"))))
    }

    /// The offset of the next valid record after the bad one at `bad`, if any (within the
    /// resync bound).
    fn resync(&mut self, bad: u64) -> io::Result<Option<u64>> {
        let file_bytes = self.scan.file_bytes;
        let mut candidate = bad + 1;
        while candidate + RECORD_HEADER_BYTES as u64 <= file_bytes {
            if self.resync_checked_bytes > RESYNC_CHECK_BYTES_MAX {
                tracing::warn!(
                    segment = self.scan.sequence,
                    from = candidate,
                    checked_bytes = self.resync_checked_bytes,
                    "spill scan: the resync bound is reached; the rest of the segment counts as \
                     damaged"
                );
                return Ok(None);
            }
            let Some(bytes) = self.bytes_at(candidate, RECORD_HEADER_BYTES)? else {
                return Ok(None);
            };
            let plausible = decode_header(bytes).is_ok_and(|header| {
                candidate + (RECORD_HEADER_BYTES + header.len as usize) as u64 <= file_bytes
            });
            if plausible {
                match self.record_at(candidate)? {
                    Found::Record(..) => return Ok(Some(candidate)),
                    _ => {
                        let len = u32::from_le_bytes(bytes_len(self.bytes_at(candidate, 8)?));
                        self.resync_checked_bytes += RECORD_HEADER_BYTES as u64 + u64::from(len);
                    }
                }
            }
            candidate += 1;
        }
        Ok(None)
    }

    /// `len` bytes at `offset` (at most the window), or None if the file ends first.
    fn bytes_at(&mut self, offset: u64, len: usize) -> io::Result<Option<&[u8]>> {
        debug_assert!(len <= SCAN_READ_BUFFER_BYTES);
        if offset + len as u64 > self.scan.file_bytes {
            return Ok(None);
        }
        let window_end = self.window_start + self.window.len() as u64;
        if offset < self.window_start || offset + len as u64 > window_end {
            let want = (self.scan.file_bytes - offset).min(SCAN_READ_BUFFER_BYTES as u64);
            self.window.resize(want as usize, 0);
            self.window_start = offset;
            let filled = read_up_to(&*self.file, &mut self.window, offset)?;
            self.window.truncate(filled);
            if filled < len {
                return Ok(None);
            }
        }
        let at = (offset - self.window_start) as usize;
        Ok(Some(&self.window[at..at + len]))
    }

    /// The whole record of `record_bytes` at `offset` (fewer bytes if the file shrank).
    fn record_bytes(&mut self, offset: u64, record_bytes: u64) -> io::Result<&[u8]> {
        if record_bytes <= SCAN_READ_BUFFER_BYTES as u64 {
            return Ok(self
                .bytes_at(offset, record_bytes as usize)?
                .unwrap_or_default());
        }
        self.large.resize(record_bytes as usize, 0);
        let filled = read_up_to(&*self.file, &mut self.large, offset)?;
        self.large.truncate(filled);
        Ok(&self.large)
    }
}

fn bytes_len(bytes: Option<&[u8]>) -> [u8; 4] {
    bytes.map_or([0; 4], |b| b[4..8].try_into().expect("4 bytes"))
}

/// Fills `buf` from `offset` as far as the file goes; returns the bytes read.
fn read_up_to(file: &dyn ReadFile, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
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
        let listed = list_segments(&RealDisk, dir.path()).unwrap();
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

    /// Issue 11, defect 2: one damaged record costs that record, not the valid ones after it.
    #[test]
    fn damage_in_the_middle_costs_only_the_damaged_record() {
        let dir = TempDir::new("middle");
        let mut log = LogBuilder::new(dir.path());
        log.start_segment(1, 1);
        log.open(5, &batch_open("u", "c", 1.0));
        let audio = log.audio(5, b"abc");
        log.audio(5, b"def");
        log.open(6, &batch_open("u", "d", 2.0));
        log.audio(6, b"ghi");
        log.close(6);
        log.finish();
        let path = dir.path().join(segment_file_name(1));
        let clean = std::fs::read(&path).unwrap();
        let mut bytes = clean.clone();
        bytes[audio.offset() as usize + RECORD_HEADER_BYTES] ^= 0x80;
        std::fs::write(&path, &bytes).unwrap();
        let (scan, seen) = scan_all(&path);
        let payloads: Vec<&[u8]> = seen.iter().map(|s| &s.2[..]).collect();
        assert_eq!(
            seen.len(),
            5,
            "every record but the damaged one: {payloads:?}"
        );
        assert!(!payloads.contains(&&b"abc"[..]));
        assert_eq!(payloads[1], b"def");
        assert_eq!(payloads[3], b"ghi");
        assert_eq!(scan.tail, Tail::Clean);
        assert_eq!(scan.valid_bytes, clean.len() as u64);
        assert_eq!((scan.damaged_regions, scan.damaged_bytes), (1, 35));
        // A header damaged too (its length field): the scan still finds the next record.
        bytes[audio.offset() as usize + 5] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let (scan, seen) = scan_all(&path);
        assert_eq!((seen.len(), scan.damaged_regions), (5, 1));
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
