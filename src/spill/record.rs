//! The spill log's on-disk format: segment headers and records.
//!
//! A segment file is a [`SEGMENT_HEADER_BYTES`]-byte header followed by records, each:
//!
//! ```text
//! offset  size  field
//!      0     4  crc32c   CRC-32C (Castagnoli) of bytes 4 .. 32+len of the record
//!      4     4  len      payload bytes
//!      8     1  kind     1 batch-open, 2 audio, 3 batch-close, 4 uploaded
//!      9     7  zero     reserved, must be 0
//!     16     8  batch    batch id, unique within the run that wrote the segment
//!     24     8  prev     location of the previous record of the same batch, or 0
//!     32   len  payload
//! ```
//!
//! All integers are little-endian. A location is `(segment sequence << 32) | offset`; segment
//! sequences start at 1, so 0 means "none". The segment header is the magic `PUSHSPL1`, the
//! segment's sequence (u64) and the run id (u64) of the process that wrote it.
//!
//! An uploaded record (kind 4, `batch` and `prev` 0) says the store confirmed a batch: its
//! payload is the batch's key, run id then batch id (u64 each). Recovery drops such a batch, so a
//! restart neither uploads it again nor repeats its chunk notification.
//!
//! Invariant: [`decode_header`] accepts a record only if its reserved bytes are zero, its kind is
//! known, its length is within [`RECORD_PAYLOAD_BYTES_MAX`] and [`check`] holds for its bytes; any
//! flipped bit or truncation of a record is caught by one of these.

use std::fmt;

use crate::id::Id;
use crate::session::BatchCloseReason;
use crate::settings::DataProtectionLevel;

/// The first 8 bytes of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"PUSHSPL1";
/// Bytes of a segment header: the magic, the sequence (u64 LE) and the run id (u64 LE).
pub const SEGMENT_HEADER_BYTES: usize = 24;
/// Bytes of a record header: crc, len, kind, 7 reserved zero bytes, batch, prev.
pub const RECORD_HEADER_BYTES: usize = 32;
/// Largest payload a record may carry: a 64 MiB audio frame (the largest configurable message).
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 64 << 20;
/// Largest batch-open payload: two ids of at most 128 bytes, their lengths, timestamp, rate, level.
pub const BATCH_OPEN_PAYLOAD_BYTES_MAX: usize = 1 + 128 + 1 + 128 + 8 + 4 + 1;

/// A record's kind (its byte at offset 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Opens a batch: its uid, conversation, first timestamp, sample rate and level
    /// ([`BatchOpen`]).
    BatchOpen = 1,
    /// PCM16 LE audio of the batch, as one 101 carried it.
    Audio = 2,
    /// Closes the batch; the payload is one byte, the reason ([`close_reason_byte`]).
    BatchClose = 3,
    /// The store confirmed a batch; the payload is its run id and batch id ([`encode_uploaded`]).
    Uploaded = 4,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::BatchOpen),
            2 => Some(Kind::Audio),
            3 => Some(Kind::BatchClose),
            4 => Some(Kind::Uploaded),
            _ => None,
        }
    }
}

/// `(segment sequence << 32) | offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Location(pub u64);

impl Location {
    /// No location: the first record of a batch has this `prev` (sequences start at 1).
    pub const NONE: Location = Location(0);

    /// The location of byte `offset` of segment `segment` (`1 ..= u32::MAX`, debug-asserted).
    pub fn new(segment: u64, offset: u32) -> Location {
        debug_assert!(segment > 0 && segment < (1 << 32));
        Location((segment << 32) | u64::from(offset))
    }

    /// The segment sequence (high 32 bits).
    pub fn segment(self) -> u64 {
        self.0 >> 32
    }

    /// The byte offset within the segment (low 32 bits).
    pub fn offset(self) -> u32 {
        self.0 as u32
    }
}

/// `segment:offset`, both in decimal (for log lines and errors).
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.segment(), self.offset())
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The stored CRC-32C of bytes 4 .. 32 + `len` of the record.
    pub crc: u32,
    /// Payload bytes after the header (at most [`RECORD_PAYLOAD_BYTES_MAX`]).
    pub len: u32,
    /// The record's kind.
    pub kind: Kind,
    /// The batch id, unique within the run that wrote it (0 for an uploaded record).
    pub batch: u64,
    /// Where the batch's previous record is, or [`Location::NONE`].
    pub prev: Location,
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// Fewer bytes than the header or the payload needs (a torn write).
    Truncated,
    /// A reserved byte set, an unknown kind, or an impossible length.
    BadHeader,
    /// The CRC does not match.
    BadChecksum,
    /// A batch-open payload that does not parse, or an uploaded payload of the wrong length.
    BadPayload,
}

/// Writes a record header with `crc` = 0 (see [`seal`]).
pub fn encode_header(out: &mut [u8], kind: Kind, len: usize, batch: u64, prev: Location) {
    assert!(len <= RECORD_PAYLOAD_BYTES_MAX, "record payload too large");
    out[..RECORD_HEADER_BYTES].fill(0);
    out[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    out[8] = kind as u8;
    out[16..24].copy_from_slice(&batch.to_le_bytes());
    out[24..32].copy_from_slice(&prev.0.to_le_bytes());
}

/// Sets `prev` in an encoded record header.
pub fn set_prev(record: &mut [u8], prev: Location) {
    record[24..32].copy_from_slice(&prev.0.to_le_bytes());
}

/// Computes and stores the CRC of a whole record (`header ‖ payload`).
pub fn seal(record: &mut [u8]) {
    let crc = crc32c::crc32c(&record[4..]);
    record[..4].copy_from_slice(&crc.to_le_bytes());
}

/// True when the whole record's CRC matches.
pub fn check(record: &[u8]) -> bool {
    record.len() >= RECORD_HEADER_BYTES
        && crc32c::crc32c(&record[4..])
            == u32::from_le_bytes(record[..4].try_into().expect("4 bytes"))
}

/// Decodes the header at the start of `bytes` (CRC not yet checked: see [`check`]).
pub fn decode_header(bytes: &[u8]) -> Result<Header, RecordError> {
    if bytes.len() < RECORD_HEADER_BYTES {
        return Err(RecordError::Truncated);
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let len = u32_at(4);
    let kind = Kind::from_byte(bytes[8]).ok_or(RecordError::BadHeader)?;
    if bytes[9..16].iter().any(|&b| b != 0) || len as usize > RECORD_PAYLOAD_BYTES_MAX {
        return Err(RecordError::BadHeader);
    }
    Ok(Header {
        crc: u32_at(0),
        len,
        kind,
        batch: u64_at(16),
        prev: Location(u64_at(24)),
    })
}

/// What a batch-open record says about its batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchOpen {
    /// The session's user.
    pub uid: Id,
    /// The conversation the audio belongs to.
    pub conversation: Id,
    /// The first frame's 101 timestamp (epoch seconds).
    pub timestamp: f64,
    /// The session's sample rate in Hz.
    pub sample_rate_hz: u32,
    /// The user's data protection level when the batch opened: decides `.enc` or `.bin`.
    pub level: DataProtectionLevel,
}

/// Writes a batch-open payload into `out`; returns its length.
pub fn encode_batch_open(out: &mut [u8], open: &BatchOpen) -> usize {
    let mut at = 0;
    for id in [&open.uid, &open.conversation] {
        let bytes = id.as_str().as_bytes();
        out[at] = bytes.len() as u8;
        out[at + 1..at + 1 + bytes.len()].copy_from_slice(bytes);
        at += 1 + bytes.len();
    }
    out[at..at + 8].copy_from_slice(&open.timestamp.to_le_bytes());
    out[at + 8..at + 12].copy_from_slice(&open.sample_rate_hz.to_le_bytes());
    out[at + 12] = level_byte(open.level);
    at + 13
}

/// Parses a batch-open payload: two length-prefixed ids, then exactly 13 bytes (timestamp f64 LE,
/// sample rate u32 LE, level byte).
pub fn decode_batch_open(payload: &[u8]) -> Result<BatchOpen, RecordError> {
    let mut at = 0;
    let mut ids = [None, None];
    for id in &mut ids {
        let len = usize::from(*payload.get(at).ok_or(RecordError::BadPayload)?);
        let bytes = payload
            .get(at + 1..at + 1 + len)
            .ok_or(RecordError::BadPayload)?;
        *id = Some(Id::parse(bytes).map_err(|_| RecordError::BadPayload)?);
        at += 1 + len;
    }
    let rest = payload.get(at..).ok_or(RecordError::BadPayload)?;
    if rest.len() != 13 {
        return Err(RecordError::BadPayload);
    }
    Ok(BatchOpen {
        uid: ids[0].expect("parsed"),
        conversation: ids[1].expect("parsed"),
        timestamp: f64::from_le_bytes(rest[..8].try_into().expect("8 bytes")),
        sample_rate_hz: u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes")),
        level: level_from_byte(rest[12]).ok_or(RecordError::BadPayload)?,
    })
}

fn level_byte(level: DataProtectionLevel) -> u8 {
    match level {
        DataProtectionLevel::Standard => 0,
        DataProtectionLevel::Enhanced => 1,
        DataProtectionLevel::E2ee => 2,
    }
}

fn level_from_byte(byte: u8) -> Option<DataProtectionLevel> {
    match byte {
        0 => Some(DataProtectionLevel::Standard),
        1 => Some(DataProtectionLevel::Enhanced),
        2 => Some(DataProtectionLevel::E2ee),
        _ => None,
    }
}

/// The one-byte payload of a batch-close record.
pub fn close_reason_byte(reason: BatchCloseReason) -> u8 {
    match reason {
        BatchCloseReason::Full => 1,
        BatchCloseReason::Age => 2,
        BatchCloseReason::ConversationChanged => 3,
        BatchCloseReason::SessionEnded => 4,
    }
}

/// Payload bytes of an uploaded record.
pub const UPLOADED_PAYLOAD_BYTES: usize = 16;
/// Bytes of a whole uploaded record.
pub const UPLOADED_RECORD_BYTES: usize = RECORD_HEADER_BYTES + UPLOADED_PAYLOAD_BYTES;

/// Writes a sealed uploaded record for batch `(run, batch)` into `out`.
pub fn encode_uploaded(out: &mut [u8; UPLOADED_RECORD_BYTES], run: u64, batch: u64) {
    encode_header(
        out,
        Kind::Uploaded,
        UPLOADED_PAYLOAD_BYTES,
        0,
        Location::NONE,
    );
    out[RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + 8].copy_from_slice(&run.to_le_bytes());
    out[RECORD_HEADER_BYTES + 8..].copy_from_slice(&batch.to_le_bytes());
    seal(out);
}

/// (run, batch) of an uploaded record's payload.
pub fn decode_uploaded(payload: &[u8]) -> Result<(u64, u64), RecordError> {
    if payload.len() != UPLOADED_PAYLOAD_BYTES {
        return Err(RecordError::BadPayload);
    }
    let run = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    let batch = u64::from_le_bytes(payload[8..].try_into().expect("8 bytes"));
    Ok((run, batch))
}

/// Writes a segment header.
pub fn encode_segment_header(out: &mut [u8; SEGMENT_HEADER_BYTES], sequence: u64, run_id: u64) {
    out[..8].copy_from_slice(SEGMENT_MAGIC);
    out[8..16].copy_from_slice(&sequence.to_le_bytes());
    out[16..24].copy_from_slice(&run_id.to_le_bytes());
}

/// (sequence, run id) of a segment header, or None if it is not one.
pub fn decode_segment_header(bytes: &[u8]) -> Option<(u64, u64)> {
    if bytes.len() < SEGMENT_HEADER_BYTES || &bytes[..8] != SEGMENT_MAGIC {
        return None;
    }
    let sequence = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let run_id = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    Some((sequence, run_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: Kind, batch: u64, prev: Location, payload: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0u8; RECORD_HEADER_BYTES + payload.len()];
        encode_header(&mut bytes, kind, payload.len(), batch, prev);
        bytes[RECORD_HEADER_BYTES..].copy_from_slice(payload);
        seal(&mut bytes);
        bytes
    }

    #[test]
    fn header_round_trips() {
        let bytes = record(Kind::Audio, 7 << 56 | 42, Location::new(3, 4096), b"pcm!");
        let header = decode_header(&bytes).unwrap();
        assert_eq!(header.kind, Kind::Audio);
        assert_eq!(header.len, 4);
        assert_eq!(header.batch, 7 << 56 | 42);
        assert_eq!(header.prev, Location::new(3, 4096));
        assert_eq!(header.prev.segment(), 3);
        assert_eq!(header.prev.offset(), 4096);
        assert!(check(&bytes));
    }

    #[test]
    fn location_displays_as_segment_and_offset() {
        assert_eq!(Location::new(3, 4096).to_string(), "3:4096");
        assert_eq!(Location::NONE.to_string(), "0:0");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = record(Kind::Audio, 9, Location::new(1, 24), &[0x5a; 64]);
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            let rejected = match decode_header(&damaged) {
                Err(_) => true,
                Ok(header) => {
                    damaged.len() < RECORD_HEADER_BYTES + header.len as usize || !check(&damaged)
                }
            };
            assert!(rejected, "bit {bit} flipped was not detected");
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = record(Kind::Audio, 9, Location::NONE, &[1, 2, 3, 4, 5, 6, 7, 8]);
        for cut in 0..bytes.len() {
            let torn = &bytes[..cut];
            let complete = decode_header(torn)
                .map(|h| torn.len() >= RECORD_HEADER_BYTES + h.len as usize)
                .unwrap_or(false);
            assert!(!complete, "a record cut at {cut} looked complete");
        }
    }

    #[test]
    fn batch_open_round_trips() {
        let open = BatchOpen {
            uid: Id::parse(b"user-1").unwrap(),
            conversation: Id::parse(&[b'c'; 128]).unwrap(),
            timestamp: 1_700_000_000.125,
            sample_rate_hz: 16_000,
            level: DataProtectionLevel::Enhanced,
        };
        let mut out = [0u8; BATCH_OPEN_PAYLOAD_BYTES_MAX];
        let len = encode_batch_open(&mut out, &open);
        assert_eq!(decode_batch_open(&out[..len]), Ok(open));
        assert_eq!(
            decode_batch_open(&out[..len - 1]),
            Err(RecordError::BadPayload)
        );
    }

    #[test]
    fn uploaded_round_trips() {
        let mut out = [0u8; UPLOADED_RECORD_BYTES];
        encode_uploaded(&mut out, 0xabc, 42);
        let header = decode_header(&out).unwrap();
        assert_eq!(
            (header.kind, header.batch, header.prev),
            (Kind::Uploaded, 0, Location::NONE)
        );
        assert!(check(&out));
        assert_eq!(
            decode_uploaded(&out[RECORD_HEADER_BYTES..]),
            Ok((0xabc, 42))
        );
        assert_eq!(
            decode_uploaded(&out[RECORD_HEADER_BYTES + 1..]),
            Err(RecordError::BadPayload)
        );
    }

    #[test]
    fn segment_header_round_trips() {
        let mut header = [0u8; SEGMENT_HEADER_BYTES];
        encode_segment_header(&mut header, 12, 99);
        assert_eq!(decode_segment_header(&header), Some((12, 99)));
        header[0] = b'X';
        assert_eq!(decode_segment_header(&header), None);
    }
}
