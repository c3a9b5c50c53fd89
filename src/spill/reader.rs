//! Reading a closed batch's audio back from the log, for the uploader.
//!
//! A batch is a chain of records linked backwards by `prev`, from its latest record
//! (`BatchEntry::last`) through its audio to its batch-open. The reader walks the chain reading
//! 32-byte headers only, collects the audio records' locations, then reads their payloads in log
//! order. Every record read is checked: its batch id, its kind and position in the chain, and its
//! CRC; the chain must hold exactly the audio the index counted.
//!
//! A batch with holes (recovery found records of it missing: damage) cannot be walked back
//! past a hole; its surviving audio is read forward instead, scanning its segments the way
//! recovery does and taking the batch's records in log order ([`read_holed_batch_audio`]).
//!
//! Invariants: at most `entry.audio_records + 2` records are visited (the chain is bounded by the
//! index entry, and each `prev` must point strictly backwards); at most one file is open per
//! segment touched; on error `out` is left as it was.

use std::io::{self, ErrorKind};
use std::path::Path;

use super::disk::{Disk, ReadFile, read_exact_at};
use super::index::BatchEntry;
use super::record::{
    BATCH_OPEN_PAYLOAD_BYTES_MAX, Header, Kind, Location, RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES, check, decode_header, decode_segment_header, encode_batch_open,
};
use super::scan::{SegmentScanner, segment_file_name};

/// Appends the batch's audio, in log order, to `out`. An error names the batch and the record
/// at fault; the log is not changed, so the caller may retry later.
pub fn read_batch_audio(
    disk: &dyn Disk,
    dir: &Path,
    entry: &BatchEntry,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    if entry.holes > 0 {
        return read_holed_batch_audio(disk, dir, entry, out);
    }
    let mut segments = Segments::new(disk, dir, entry);
    let chain = collect_audio(&mut segments, entry)?;
    let out_len = out.len();
    out.reserve(usize::try_from(entry.audio_bytes).expect("a batch fits in memory"));
    for audio in chain.iter().rev() {
        if let Err(error) = append_audio(&mut segments, audio, out) {
            out.truncate(out_len);
            return Err(error);
        }
    }
    debug_assert_eq!((out.len() - out_len) as u64, entry.audio_bytes);
    Ok(())
}

/// Appends what survives of a batch with holes: its audio records in log order, found by
/// scanning its segments (from its batch-open's to its last record's) with the rules recovery
/// applied (same run and batch id, each record's `prev` not behind the previous one taken).
/// The result must be the audio the index counted.
pub fn read_holed_batch_audio(
    disk: &dyn Disk,
    dir: &Path,
    entry: &BatchEntry,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    let out_len = out.len();
    let mut last = Location::NONE;
    let mut records = 0u32;
    for sequence in entry.first_segment..=entry.last.segment() {
        let path = dir.join(segment_file_name(sequence));
        let scanner = SegmentScanner::open(disk, &path)?;
        if scanner.run_id() != Some(entry.key.run) {
            continue;
        }
        scanner.scan(|header, payload, at| {
            let ours = header.batch == entry.key.batch && at <= entry.last && at > last;
            let chained = header.prev >= last || last == Location::NONE;
            match header.kind {
                Kind::BatchOpen if ours && at.segment() == entry.first_segment => {
                    last = at;
                }
                Kind::Audio if ours && chained && last != Location::NONE => {
                    out.extend_from_slice(payload);
                    records += 1;
                    last = at;
                }
                Kind::BatchClose if ours && chained && last != Location::NONE => last = at,
                _ => {}
            }
        })?;
    }
    let read = (out.len() - out_len) as u64;
    if records != entry.audio_records || read != entry.audio_bytes {
        out.truncate(out_len);
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "spill batch {:016x}/{}: {records} audio records, {read} bytes survive; the \
                 index counted {}, {}",
                entry.key.run, entry.key.batch, entry.audio_records, entry.audio_bytes
            ),
        ));
    }
    Ok(())
}

/// An audio record found on the chain; its payload is read later.
struct AudioRecord {
    at: Location,
    header: Header,
    /// CRC-32C of the record's header bytes 4..32 (the CRC continues over the payload).
    header_crc: u32,
}

/// The batch's audio records, newest first.
fn collect_audio(segments: &mut Segments, entry: &BatchEntry) -> io::Result<Vec<AudioRecord>> {
    let audio_records = entry.audio_records as usize;
    let mut chain = Vec::with_capacity(audio_records);
    let mut audio_bytes = 0u64;
    let mut at = entry.last;
    loop {
        let (header, header_bytes) = segments.read_header(at)?;
        if header.batch != entry.key.batch {
            return Err(segments.corrupt(at, "the record belongs to another batch"));
        }
        match header.kind {
            Kind::BatchClose if at == entry.last => {
                segments.read_small(at, &header, &header_bytes)?;
            }
            Kind::BatchClose => return Err(segments.corrupt(at, "a batch-close inside the chain")),
            Kind::Uploaded => return Err(segments.corrupt(at, "an uploaded record in the chain")),
            Kind::Audio if chain.len() == audio_records => {
                return Err(segments.corrupt(at, "more audio records than the index counted"));
            }
            Kind::Audio => {
                audio_bytes += u64::from(header.len);
                chain.push(AudioRecord {
                    at,
                    header,
                    header_crc: crc32c::crc32c(&header_bytes[4..]),
                });
            }
            Kind::BatchOpen => {
                segments.check_open(at, &header, &header_bytes)?;
                break;
            }
        }
        if header.prev >= at || header.prev.segment() < entry.first_segment {
            return Err(segments.corrupt(at, "prev does not point back into the batch"));
        }
        at = header.prev;
    }
    if chain.len() != audio_records || audio_bytes != entry.audio_bytes {
        return Err(segments.corrupt(
            at,
            &format!(
                "the chain holds {} audio records, {audio_bytes} bytes; the index counted \
                 {audio_records}, {}",
                chain.len(),
                entry.audio_bytes
            ),
        ));
    }
    Ok(chain)
}

/// Reads one audio record's payload onto the end of `out` and checks the record's CRC.
fn append_audio(segments: &mut Segments, audio: &AudioRecord, out: &mut Vec<u8>) -> io::Result<()> {
    let start = out.len();
    out.resize(start + audio.header.len as usize, 0);
    segments.read_at(audio.at, RECORD_HEADER_BYTES as u64, &mut out[start..])?;
    if crc32c::crc32c_append(audio.header_crc, &out[start..]) != audio.header.crc {
        return Err(segments.corrupt(audio.at, "CRC mismatch"));
    }
    Ok(())
}

/// The segment files of one batch, opened on first use, each checked to be the segment its name
/// says and to belong to the batch's run.
struct Segments<'a> {
    disk: &'a dyn Disk,
    dir: &'a Path,
    entry: &'a BatchEntry,
    /// (sequence, file); few: a batch spans few segments.
    open: Vec<(u64, Box<dyn ReadFile>)>,
}

impl<'a> Segments<'a> {
    fn new(disk: &'a dyn Disk, dir: &'a Path, entry: &'a BatchEntry) -> Segments<'a> {
        Segments {
            disk,
            dir,
            entry,
            open: Vec::new(),
        }
    }

    /// The position in `open` of segment `sequence`'s file, opening it on first use.
    fn file(&mut self, sequence: u64) -> io::Result<usize> {
        if let Some(at) = self.open.iter().position(|(s, _)| *s == sequence) {
            return Ok(at);
        }
        let file = self.open_segment(sequence)?;
        self.open.push((sequence, file));
        Ok(self.open.len() - 1)
    }

    fn open_segment(&self, sequence: u64) -> io::Result<Box<dyn ReadFile>> {
        let path = self.dir.join(segment_file_name(sequence));
        let file = self.disk.open_read(&path).map_err(|error| {
            let batch = self.batch_name();
            io::Error::new(
                error.kind(),
                format!("{batch}: {}: {error}", path.display()),
            )
        })?;
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        let at = Location::new(sequence, 0);
        self.read_exact_at(&*file, at, 0, &mut header)?;
        if decode_segment_header(&header) != Some((sequence, self.entry.key.run)) {
            return Err(self.corrupt(at, "not a segment of the batch's run"));
        }
        Ok(file)
    }

    /// Reads into `buf` from `skip` bytes into the record at `at`.
    fn read_at(&mut self, at: Location, skip: u64, buf: &mut [u8]) -> io::Result<()> {
        if at.segment() == 0 || (at.offset() as usize) < SEGMENT_HEADER_BYTES {
            return Err(self.corrupt(at, "not a record location"));
        }
        let file = self.file(at.segment())?;
        let position = u64::from(at.offset()) + skip;
        self.read_exact_at(&*self.open[file].1, at, position, buf)
    }

    /// Reads into `buf` from byte `position` of `file`, for the record at `at`.
    fn read_exact_at(
        &self,
        file: &dyn ReadFile,
        at: Location,
        position: u64,
        buf: &mut [u8],
    ) -> io::Result<()> {
        read_exact_at(file, buf, position).map_err(|error| match error.kind() {
            ErrorKind::UnexpectedEof => self.corrupt(at, "past the end of its segment"),
            kind => {
                let batch = self.batch_name();
                io::Error::new(kind, format!("{batch}: reading at {at}: {error}"))
            }
        })
    }

    fn read_header(&mut self, at: Location) -> io::Result<(Header, [u8; RECORD_HEADER_BYTES])> {
        let mut bytes = [0u8; RECORD_HEADER_BYTES];
        self.read_at(at, 0, &mut bytes)?;
        let header = decode_header(&bytes).map_err(|_| self.corrupt(at, "bad record header"))?;
        Ok((header, bytes))
    }

    /// Checks the batch-open's CRC, its place (the chain's first record, in `first_segment`)
    /// and that it opens the batch the index describes.
    fn check_open(
        &mut self,
        at: Location,
        header: &Header,
        header_bytes: &[u8; RECORD_HEADER_BYTES],
    ) -> io::Result<()> {
        if header.prev != Location::NONE || at.segment() != self.entry.first_segment {
            return Err(self.corrupt(at, "the batch-open is not where the index says"));
        }
        let record = self.read_small(at, header, header_bytes)?;
        let mut expected = [0u8; BATCH_OPEN_PAYLOAD_BYTES_MAX];
        let len = encode_batch_open(&mut expected, &self.entry.open);
        if record.payload() != &expected[..len] {
            return Err(self.corrupt(at, "the batch-open differs from the index entry"));
        }
        Ok(())
    }

    /// Reads a batch-open or batch-close record whole and checks its CRC.
    fn read_small(
        &mut self,
        at: Location,
        header: &Header,
        header_bytes: &[u8; RECORD_HEADER_BYTES],
    ) -> io::Result<SmallRecord> {
        let len = header.len as usize;
        if len > BATCH_OPEN_PAYLOAD_BYTES_MAX {
            return Err(self.corrupt(at, "payload too large for its kind"));
        }
        let mut record = SmallRecord {
            bytes: [0u8; SMALL_RECORD_BYTES_MAX],
            len: RECORD_HEADER_BYTES + len,
        };
        record.bytes[..RECORD_HEADER_BYTES].copy_from_slice(header_bytes);
        let payload = &mut record.bytes[RECORD_HEADER_BYTES..record.len];
        self.read_at(at, RECORD_HEADER_BYTES as u64, payload)?;
        if !check(&record.bytes[..record.len]) {
            return Err(self.corrupt(at, "CRC mismatch"));
        }
        Ok(record)
    }

    fn batch_name(&self) -> String {
        format!(
            "spill batch {:016x}/{}",
            self.entry.key.run, self.entry.key.batch
        )
    }

    fn corrupt(&self, at: Location, what: &str) -> io::Error {
        io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "{}: record at {at} in {}: {what}",
                self.batch_name(),
                self.dir.display()
            ),
        )
    }
}

const SMALL_RECORD_BYTES_MAX: usize = RECORD_HEADER_BYTES + BATCH_OPEN_PAYLOAD_BYTES_MAX;

/// A batch-open or batch-close record read whole.
struct SmallRecord {
    bytes: [u8; SMALL_RECORD_BYTES_MAX],
    len: usize,
}

impl SmallRecord {
    fn payload(&self) -> &[u8] {
        &self.bytes[RECORD_HEADER_BYTES..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spill::disk::RealDisk;
    use crate::spill::index::{BatchKey, Index};
    use crate::spill::record::{seal, set_prev};
    use crate::spill::recovery::recover;
    use crate::spill::test_log::{LogBuilder, TempDir, batch_open};

    const RUN: u64 = 0x5eed;

    /// Two batches interleaved over two segments; batch 1 is left open (closed by recovery).
    /// Returns the recovered index and the location of batch 1's "three" record.
    fn interleaved(dir: &Path) -> (Index, Location) {
        let mut log = LogBuilder::new(dir);
        log.start_segment(1, RUN);
        log.open(1, &batch_open("u1", "c1", 1.0));
        log.open(2, &batch_open("u2", "c2", 2.0));
        log.audio(1, b"one-");
        log.audio(2, b"xx");
        log.audio(1, b"two-");
        log.start_segment(2, RUN);
        log.audio(2, b"yy");
        let three = log.audio(1, b"three");
        log.close(2);
        log.audio(1, b"-four");
        log.finish();
        (recover(&RealDisk, dir, 8, 0).unwrap().index, three)
    }

    fn entry(index: &Index, batch: u64) -> BatchEntry {
        *index.get(&BatchKey { run: RUN, batch }).unwrap()
    }

    fn read(dir: &Path, entry: &BatchEntry) -> io::Result<Vec<u8>> {
        let mut out = b"kept|".to_vec();
        let result = read_batch_audio(&RealDisk, dir, entry, &mut out);
        match result {
            Ok(()) => Ok(out),
            Err(error) => {
                assert_eq!(out, b"kept|", "out is left as it was on error");
                Err(error)
            }
        }
    }

    /// Rewrites the record at `at` through `edit` and seals it again (a valid but wrong record).
    fn rewrite(dir: &Path, at: Location, edit: impl FnOnce(&mut [u8])) {
        let path = dir.join(segment_file_name(at.segment()));
        let mut bytes = std::fs::read(&path).unwrap();
        let start = at.offset() as usize;
        let header = decode_header(&bytes[start..]).unwrap();
        let record = &mut bytes[start..start + RECORD_HEADER_BYTES + header.len as usize];
        edit(record);
        seal(record);
        std::fs::write(&path, &bytes).unwrap();
    }

    #[test]
    fn reads_exactly_a_batchs_audio_across_segments() {
        let dir = TempDir::new("read");
        let (index, _) = interleaved(dir.path());
        assert_eq!(
            read(dir.path(), &entry(&index, 1)).unwrap(),
            b"kept|one-two-three-four"
        );
        assert_eq!(read(dir.path(), &entry(&index, 2)).unwrap(), b"kept|xxyy");
    }

    #[test]
    fn a_damaged_payload_is_an_error() {
        let dir = TempDir::new("read-crc");
        let (index, three) = interleaved(dir.path());
        let path = dir.path().join(segment_file_name(2));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[three.offset() as usize + RECORD_HEADER_BYTES + 2] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let error = read(dir.path(), &entry(&index, 1)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidData);
        assert!(error.to_string().contains("CRC mismatch"), "{error}");
        assert!(error.to_string().contains("record at 2:"), "{error}");
        assert_eq!(read(dir.path(), &entry(&index, 2)).unwrap(), b"kept|xxyy");
    }

    #[test]
    fn a_chain_through_another_batch_is_an_error() {
        let dir = TempDir::new("read-batch");
        let (index, three) = interleaved(dir.path());
        rewrite(dir.path(), three, |record| {
            record[16..24].copy_from_slice(&2u64.to_le_bytes());
        });
        let error = read(dir.path(), &entry(&index, 1)).unwrap_err();
        assert!(error.to_string().contains("another batch"), "{error}");
    }

    #[test]
    fn a_chain_that_does_not_point_backwards_is_an_error() {
        let dir = TempDir::new("read-loop");
        let (index, three) = interleaved(dir.path());
        rewrite(dir.path(), three, |record| set_prev(record, three));
        let error = read(dir.path(), &entry(&index, 1)).unwrap_err();
        assert!(error.to_string().contains("prev"), "{error}");
    }

    #[test]
    fn a_chain_unlike_the_index_entry_is_an_error() {
        let dir = TempDir::new("read-count");
        let (index, _) = interleaved(dir.path());
        let mut fewer = entry(&index, 1);
        fewer.audio_records -= 1;
        let error = read(dir.path(), &fewer).unwrap_err();
        assert!(error.to_string().contains("more audio records"), "{error}");
        let mut more = entry(&index, 1);
        more.audio_records += 1;
        more.audio_bytes += 1;
        let error = read(dir.path(), &more).unwrap_err();
        assert!(error.to_string().contains("index counted 5"), "{error}");
        let mut other_open = entry(&index, 1);
        other_open.open = batch_open("u1", "elsewhere", 1.0);
        let error = read(dir.path(), &other_open).unwrap_err();
        assert!(error.to_string().contains("batch-open differs"), "{error}");
        let mut other_run = entry(&index, 1);
        other_run.key.run += 1;
        let error = read(dir.path(), &other_run).unwrap_err();
        assert!(error.to_string().contains("batch's run"), "{error}");
    }

    #[test]
    fn a_missing_segment_is_an_error() {
        let dir = TempDir::new("read-missing");
        let (index, _) = interleaved(dir.path());
        std::fs::remove_file(dir.path().join(segment_file_name(1))).unwrap();
        let error = read(dir.path(), &entry(&index, 2)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::NotFound);
        assert!(error.to_string().contains("spill batch"), "{error}");
    }
}
