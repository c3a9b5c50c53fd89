//! Sans-I/O decoder for client → server frames (RFC 6455 §5).
//!
//! The decoder owns no memory: the caller owns the receive buffer and the decoder keeps only
//! offsets into it. The caller's loop:
//!
//! 1. read from the socket into `buf[filled..]` (`buf` holds at least
//!    [`Decoder::buffer_bytes_required`] bytes);
//! 2. call [`Decoder::decode`] until it returns `Ok(None)`, handling each event before the next call;
//! 3. call [`Decoder::compact`] and continue at step 1 with the `filled` it returns.
//!
//! A frame is handled only once all of it is in the buffer. Its payload is unmasked in place;
//! an unfragmented message is returned where it lies. Fragments of a message are moved down so
//! that they follow the previous fragment, so a reassembled message is contiguous as well.

use std::ops::Range;

use super::close;
use super::frame::{
    CLOSE_CODE_BYTES, CONTROL_PAYLOAD_BYTES_MAX, FIN_BIT, LEN7_BITS, LEN7_MARKER_U16,
    LEN7_MARKER_U64, MASK_BIT, MASK_KEY_BYTES, OPCODE_BITS, Opcode, RSV_BITS,
};

/// Bytes of the two fixed header bytes (FIN/RSV/opcode, MASK/length).
const LEAD_BYTES: usize = 2;
/// Longest client frame header: 2 fixed bytes, 8-byte extended length, masking key.
const CLIENT_HEADER_BYTES_MAX: usize = LEAD_BYTES + 8 + MASK_KEY_BYTES;
/// Longest client control frame: the header has no extended length.
const CLIENT_CONTROL_FRAME_BYTES_MAX: usize =
    LEAD_BYTES + MASK_KEY_BYTES + CONTROL_PAYLOAD_BYTES_MAX;
/// Longest incomplete UTF-8 sequence: a 4-byte code point missing its last byte.
const UTF8_INCOMPLETE_BYTES_MAX: usize = 3;

const RESERVED_BITS_SET: Violation = Violation::protocol("reserved bits set");
const RESERVED_OPCODE: Violation = Violation::protocol("reserved opcode");
const UNMASKED_FRAME: Violation = Violation::protocol("unmasked client frame");
const FRAGMENTED_CONTROL_FRAME: Violation = Violation::protocol("fragmented control frame");
const CONTROL_FRAME_TOO_LONG: Violation = Violation::protocol("control frame over 125 bytes");
const CONTINUATION_WITHOUT_MESSAGE: Violation =
    Violation::protocol("continuation frame without a message");
const DATA_FRAME_INSIDE_MESSAGE: Violation =
    Violation::protocol("new data frame inside a fragmented message");
const LENGTH_MSB_SET: Violation = Violation::protocol("frame length has its top bit set");
const CLOSE_PAYLOAD_ONE_BYTE: Violation = Violation::protocol("close payload of 1 byte");
const CLOSE_CODE_INVALID: Violation = Violation::protocol("invalid close code");
const MESSAGE_TOO_BIG: Violation = Violation {
    code: close::MESSAGE_TOO_BIG,
    reason: "message too big",
};
const TEXT_NOT_UTF8: Violation = Violation::invalid_payload("text message is not UTF-8");
const CLOSE_REASON_NOT_UTF8: Violation = Violation::invalid_payload("close reason is not UTF-8");

/// Limits the decoder enforces.
#[derive(Debug, Clone, Copy)]
pub struct DecoderLimits {
    /// Largest data message accepted, in payload bytes after reassembly; larger → 1009.
    pub max_message_bytes: usize,
}

/// The type of a data message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A text message (opcode 1), valid UTF-8.
    Text,
    /// A binary message (opcode 2): every pusher frame.
    Binary,
}

/// What a call to [`Decoder::decode`] found. Ranges index the caller's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A complete (possibly reassembled) data message; payload is `buf[range]`, unmasked.
    /// Text messages have already been checked to be valid UTF-8.
    Message {
        /// Text or binary.
        kind: MessageKind,
        /// Where the whole payload is in the buffer.
        payload: Range<usize>,
    },
    /// A Ping; `payload` (unmasked, <= 125 bytes) is to be echoed in a Pong.
    Ping {
        /// Where the Ping's payload is in the buffer.
        payload: Range<usize>,
    },
    /// A Pong (ignored: pusher sends no Pings).
    Pong,
    /// code None = empty close payload. Code validated with is_valid_on_wire, reason validated UTF-8.
    /// The peer sends nothing after a Close (RFC 6455 §5.5.1), so the caller stops decoding.
    Close {
        /// The peer's close code; `None` when its Close had no payload.
        code: Option<u16>,
        /// Where the close reason (UTF-8, possibly empty) is in the buffer.
        reason: Range<usize>,
    },
}

/// A protocol violation: the connection must be closed with `code` (1002, 1007 or 1009).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    /// The close code: 1002 (protocol error), 1007 (invalid payload) or 1009 (too big).
    pub code: u16,
    /// Short ASCII text, fit for the reason of a Close frame.
    pub reason: &'static str,
}

impl Violation {
    const fn protocol(reason: &'static str) -> Violation {
        Violation {
            code: close::PROTOCOL_ERROR,
            reason,
        }
    }

    const fn invalid_payload(reason: &'static str) -> Violation {
        Violation {
            code: close::INVALID_PAYLOAD,
            reason,
        }
    }
}

/// Decodes client frames from a caller-owned buffer; see the module documentation for the loop.
///
/// Invariants: `partial.start + partial.len_bytes <= next_frame_offset`, and
/// `partial.len_bytes <= max_message_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    max_message_bytes: usize,
    /// Offset in the buffer of the next frame header not yet handled.
    next_frame_offset: usize,
    /// The data message whose fragments are being reassembled, if any.
    partial: Option<PartialMessage>,
    /// The first violation found; every later call to decode returns it again.
    violation: Option<Violation>,
}

/// A data message whose final fragment has not arrived yet.
///
/// Invariant: for text, `utf8_valid_bytes <= len_bytes <= utf8_valid_bytes + 3` (what follows
/// the valid prefix is the start of a code point split across fragments); for binary,
/// `utf8_valid_bytes` stays 0.
#[derive(Debug, Clone, Copy)]
struct PartialMessage {
    kind: MessageKind,
    /// Offset in the buffer of the message's first payload byte.
    start: usize,
    /// Payload bytes received so far, unmasked and contiguous at `start`.
    len_bytes: usize,
    /// Length of the prefix of the payload known to be valid UTF-8.
    utf8_valid_bytes: usize,
}

/// A parsed client frame header.
#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    fin: bool,
    opcode: Opcode,
    header_bytes: usize,
    payload_bytes: usize,
    mask_key: [u8; MASK_KEY_BYTES],
}

impl Decoder {
    /// A decoder at the start of a stream, with no message in progress.
    pub fn new(limits: DecoderLimits) -> Decoder {
        Decoder {
            max_message_bytes: limits.max_message_bytes,
            next_frame_offset: 0,
            partial: None,
            violation: None,
        }
    }

    /// The receive-buffer size a caller must provide so that any message within the limits fits,
    /// including one interleaved control frame and frame headers (e.g. max_message_bytes + 256).
    ///
    /// After [`Decoder::compact`] the buffer holds the partial message (at most
    /// `max_message_bytes`) followed by the start of one incomplete frame. That frame is either a
    /// control frame (at most 131 bytes) or a data frame whose header (at most 14 bytes) plus
    /// payload fit in what the message may still grow by. So `max_message_bytes + 131` bytes
    /// always leave room to read the rest of the incomplete frame.
    pub fn buffer_bytes_required(limits: DecoderLimits) -> usize {
        const { assert!(CLIENT_CONTROL_FRAME_BYTES_MAX >= CLIENT_HEADER_BYTES_MAX) };
        limits
            .max_message_bytes
            .saturating_add(CLIENT_CONTROL_FRAME_BYTES_MAX)
    }

    /// Parses the next event from buf[..filled]. Unmasks payloads in place; moves continuation-frame
    /// payloads down so a fragmented message's payload is contiguous. Returns Ok(None) when more
    /// bytes are needed. Ranges in the returned Event index `buf` and stay valid until the next call
    /// to decode or compact.
    ///
    /// `buf` must be the buffer of the previous calls (unless [`Decoder::compact`] returned 0)
    /// with its first `filled` bytes unchanged except by the decoder, and `filled` must not shrink
    /// other than through compact. After a violation every call returns the same violation.
    pub fn decode(&mut self, buf: &mut [u8], filled: usize) -> Result<Option<Event>, Violation> {
        debug_assert!(buf.len() >= Self::buffer_bytes_required(self.limits()));
        debug_assert!(self.next_frame_offset <= filled && filled <= buf.len());
        if let Some(violation) = self.violation {
            return Err(violation);
        }
        let decoded = self.decode_frames(buf, filled);
        if let Err(violation) = decoded {
            self.violation = Some(violation);
        }
        decoded
    }

    /// Drops bytes the decoder no longer needs: moves the still-needed tail of buf[..filled] to the
    /// front (memmove), rebases internal offsets, returns the new `filled`. When it returns 0 the
    /// caller may hand the buffer back to a pool and later continue with a different buffer.
    ///
    /// What is kept: the payload of a partial message, then the bytes from the next frame on.
    pub fn compact(&mut self, buf: &mut [u8], filled: usize) -> usize {
        debug_assert!(self.next_frame_offset <= filled && filled <= buf.len());
        let kept_message_bytes = match &mut self.partial {
            Some(message) => {
                move_down(buf, message.range(), 0);
                message.start = 0;
                message.len_bytes
            }
            None => 0,
        };
        move_down(buf, self.next_frame_offset..filled, kept_message_bytes);
        let filled_after = kept_message_bytes + (filled - self.next_frame_offset);
        self.next_frame_offset = kept_message_bytes;
        filled_after
    }

    /// True while a fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        self.partial.is_some()
    }

    fn limits(&self) -> DecoderLimits {
        DecoderLimits {
            max_message_bytes: self.max_message_bytes,
        }
    }

    /// Handles whole frames from `next_frame_offset` on until one yields an event.
    fn decode_frames(&mut self, buf: &mut [u8], filled: usize) -> Result<Option<Event>, Violation> {
        loop {
            let unparsed = &buf[self.next_frame_offset..filled];
            let Some(header) = self.parse_header(unparsed)? else {
                return Ok(None);
            };
            let payload_start = self.next_frame_offset + header.header_bytes;
            if header.payload_bytes > filled - payload_start {
                return Ok(None);
            }
            let payload = payload_start..payload_start + header.payload_bytes;
            unmask(&mut buf[payload.clone()], header.mask_key);
            self.next_frame_offset = payload.end;
            if let Some(event) = self.on_frame(buf, header, payload)? {
                return Ok(Some(event));
            }
        }
    }

    /// Parses the frame header at the start of `unparsed`, failing as soon as the bytes that
    /// show a violation are there (so an oversized frame fails before its payload arrives).
    /// Ok(None): the header is incomplete.
    fn parse_header(&self, unparsed: &[u8]) -> Result<Option<FrameHeader>, Violation> {
        let [first, second, ..] = *unparsed else {
            return Ok(None);
        };
        let opcode = check_lead_bytes(first, second)?;
        self.check_sequence(opcode)?;
        let length_field_bytes = match second & LEN7_BITS {
            LEN7_MARKER_U16 => 2,
            LEN7_MARKER_U64 => 8,
            _ => 0,
        };
        let mask_key_start = LEAD_BYTES + length_field_bytes;
        let Some(length_field) = unparsed.get(LEAD_BYTES..mask_key_start) else {
            return Ok(None);
        };
        let payload_bytes = payload_length(second & LEN7_BITS, length_field)?;
        self.check_message_size(opcode, payload_bytes)?;
        let header_bytes = mask_key_start + MASK_KEY_BYTES;
        let Some(mask_key) = unparsed.get(mask_key_start..header_bytes) else {
            return Ok(None);
        };
        Ok(Some(FrameHeader {
            fin: first & FIN_BIT != 0,
            opcode,
            header_bytes,
            payload_bytes,
            mask_key: mask_key.try_into().expect("slice of MASK_KEY_BYTES"),
        }))
    }

    /// Checks that `opcode` may come next: continuations only inside a fragmented message,
    /// new data frames only outside one.
    fn check_sequence(&self, opcode: Opcode) -> Result<(), Violation> {
        match (opcode, self.in_message()) {
            (Opcode::Continuation, false) => Err(CONTINUATION_WITHOUT_MESSAGE),
            (Opcode::Text | Opcode::Binary, true) => Err(DATA_FRAME_INSIDE_MESSAGE),
            _ => Ok(()),
        }
    }

    /// Checks that a data frame of `payload_bytes` keeps its message within the limit.
    fn check_message_size(&self, opcode: Opcode, payload_bytes: usize) -> Result<(), Violation> {
        let received_bytes = match (opcode, self.partial) {
            (Opcode::Continuation, Some(message)) => message.len_bytes,
            (Opcode::Text | Opcode::Binary, _) => 0,
            _ => return Ok(()),
        };
        debug_assert!(received_bytes <= self.max_message_bytes);
        if payload_bytes > self.max_message_bytes - received_bytes {
            return Err(MESSAGE_TOO_BIG);
        }
        Ok(())
    }

    /// Handles a whole, unmasked frame; `payload` is where its payload lies in `buf`.
    fn on_frame(
        &mut self,
        buf: &mut [u8],
        header: FrameHeader,
        payload: Range<usize>,
    ) -> Result<Option<Event>, Violation> {
        let message = match header.opcode {
            Opcode::Ping => return Ok(Some(Event::Ping { payload })),
            Opcode::Pong => return Ok(Some(Event::Pong)),
            Opcode::Close => return close_event(buf, payload).map(Some),
            Opcode::Text => PartialMessage::new(MessageKind::Text, payload.start),
            Opcode::Binary => PartialMessage::new(MessageKind::Binary, payload.start),
            Opcode::Continuation => self
                .partial
                .expect("parse_header rejects a continuation outside a message"),
        };
        self.append_fragment(message, buf, payload, header.fin)
    }

    /// Appends a fragment's payload to `message` and emits the message if `fin` is set.
    fn append_fragment(
        &mut self,
        mut message: PartialMessage,
        buf: &mut [u8],
        payload: Range<usize>,
        fin: bool,
    ) -> Result<Option<Event>, Violation> {
        move_down(buf, payload.clone(), message.end());
        message.len_bytes += payload.len();
        debug_assert!(message.len_bytes <= self.max_message_bytes);
        if message.kind == MessageKind::Text {
            message.check_utf8(buf, fin)?;
        }
        if fin {
            self.partial = None;
            return Ok(Some(Event::Message {
                kind: message.kind,
                payload: message.range(),
            }));
        }
        self.partial = Some(message);
        Ok(None)
    }
}

impl PartialMessage {
    fn new(kind: MessageKind, start: usize) -> PartialMessage {
        PartialMessage {
            kind,
            start,
            len_bytes: 0,
            utf8_valid_bytes: 0,
        }
    }

    fn end(&self) -> usize {
        self.start + self.len_bytes
    }

    fn range(&self) -> Range<usize> {
        self.start..self.end()
    }

    /// Extends the valid UTF-8 prefix over the bytes appended since the last check. Fails when
    /// the bytes are definitely invalid, or, at the final fragment, when the message ends in the
    /// middle of a code point.
    fn check_utf8(&mut self, buf: &[u8], fin: bool) -> Result<(), Violation> {
        let unchecked = &buf[self.start + self.utf8_valid_bytes..self.end()];
        self.utf8_valid_bytes += utf8_valid_prefix_bytes(unchecked)?;
        debug_assert!(self.len_bytes - self.utf8_valid_bytes <= UTF8_INCOMPLETE_BYTES_MAX);
        if fin && self.utf8_valid_bytes != self.len_bytes {
            return Err(TEXT_NOT_UTF8);
        }
        Ok(())
    }
}

/// Checks the two fixed header bytes: no RSV bits, a known opcode, the mask bit, and for control
/// frames FIN and a 7-bit length of at most 125.
fn check_lead_bytes(first: u8, second: u8) -> Result<Opcode, Violation> {
    if first & RSV_BITS != 0 {
        return Err(RESERVED_BITS_SET);
    }
    let opcode = Opcode::from_bits(first & OPCODE_BITS).ok_or(RESERVED_OPCODE)?;
    if second & MASK_BIT == 0 {
        return Err(UNMASKED_FRAME);
    }
    if opcode.is_control() {
        if first & FIN_BIT == 0 {
            return Err(FRAGMENTED_CONTROL_FRAME);
        }
        if usize::from(second & LEN7_BITS) > CONTROL_PAYLOAD_BYTES_MAX {
            return Err(CONTROL_FRAME_TOO_LONG);
        }
    }
    Ok(opcode)
}

/// The payload length from the 7-bit field `len7` and the extended `length_field` it announces
/// (empty, 2 or 8 big-endian bytes).
fn payload_length(len7: u8, length_field: &[u8]) -> Result<usize, Violation> {
    let payload_bytes = match *length_field {
        [] => u64::from(len7),
        [high, low] => u64::from(u16::from_be_bytes([high, low])),
        _ => {
            let length = u64::from_be_bytes(length_field.try_into().expect("8-byte length"));
            if length >> 63 != 0 {
                return Err(LENGTH_MSB_SET);
            }
            length
        }
    };
    usize::try_from(payload_bytes).map_err(|_| MESSAGE_TOO_BIG)
}

/// The event for a Close frame whose unmasked payload is `buf[payload]`.
fn close_event(buf: &[u8], payload: Range<usize>) -> Result<Event, Violation> {
    let Some(code_bytes) = buf[payload.clone()].first_chunk::<CLOSE_CODE_BYTES>() else {
        return match payload.len() {
            0 => Ok(Event::Close {
                code: None,
                reason: payload,
            }),
            _ => Err(CLOSE_PAYLOAD_ONE_BYTE),
        };
    };
    let code = u16::from_be_bytes(*code_bytes);
    if !close::is_valid_on_wire(code) {
        return Err(CLOSE_CODE_INVALID);
    }
    let reason = payload.start + CLOSE_CODE_BYTES..payload.end;
    if std::str::from_utf8(&buf[reason.clone()]).is_err() {
        return Err(CLOSE_REASON_NOT_UTF8);
    }
    Ok(Event::Close {
        code: Some(code),
        reason,
    })
}

/// The length of the longest prefix of `bytes` that is valid UTF-8 and may be followed by more
/// bytes: an incomplete code point at the end is left out, any other invalid byte fails.
fn utf8_valid_prefix_bytes(bytes: &[u8]) -> Result<usize, Violation> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(bytes.len()),
        Err(error) if error.error_len().is_none() => Ok(error.valid_up_to()),
        Err(_) => Err(TEXT_NOT_UTF8),
    }
}

/// Moves `buf[from]` to start at `to` (`to <= from.start`), skipping the copy when it is in place.
fn move_down(buf: &mut [u8], from: Range<usize>, to: usize) {
    debug_assert!(to <= from.start);
    if to != from.start {
        buf.copy_within(from, to);
    }
}

/// Unmasks a whole frame payload in place (RFC 6455 §5.3): byte `i` is XORed with
/// `mask_key[i % 4]`.
///
/// This is the hot path: every audio message (~16 KB) passes through it. XORing 8 bytes at a
/// time with the key repeated twice in a u64 does 8 bytes per operation and the compiler
/// vectorises the loop further: on a 16 KB payload in cache it measured ~50 GB/s, against
/// ~3 GB/s for a bytewise loop with `i % 4` (release build, x86-64).
///
/// Each 8-byte chunk starts at a payload offset that is a multiple of 8, hence of 4, so the same
/// u64 applies to every chunk without rotating the key; rotation would be needed only if
/// unmasking started mid-payload at an offset that is not a multiple of 4, which never happens
/// because whole payloads are unmasked. The loads are unaligned byte-array reads, so the
/// payload's address needs no alignment. The tail (< 8 bytes) also starts at phase 0 and goes
/// bytewise.
fn unmask(payload: &mut [u8], mask_key: [u8; MASK_KEY_BYTES]) {
    let [k0, k1, k2, k3] = mask_key;
    let mask_u64 = u64::from_ne_bytes([k0, k1, k2, k3, k0, k1, k2, k3]);
    let (chunks, tail) = payload.as_chunks_mut::<8>();
    for chunk in chunks {
        *chunk = (u64::from_ne_bytes(*chunk) ^ mask_u64).to_ne_bytes();
    }
    for (byte, key) in tail.iter_mut().zip(mask_key.iter().cycle()) {
        *byte ^= key;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::frame::{HEADER_BYTES_MAX, encode_close, encode_header};

    const CONTINUATION: u8 = 0x0;
    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;
    /// The masking key of the examples in RFC 6455 §5.7.
    const KEY: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];
    const LIMITS: DecoderLimits = DecoderLimits {
        max_message_bytes: 70_000,
    };

    /// A client frame with the shortest length encoding. `rsv` is the 3-bit RSV1-3 field;
    /// `mask_key` None leaves the frame unmasked (MASK bit clear, no key).
    fn client_frame(
        fin: bool,
        rsv: u8,
        opcode: u8,
        mask_key: Option<[u8; 4]>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut frame = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
        let mask_bit = if mask_key.is_some() { MASK_BIT } else { 0 };
        match payload.len() {
            len @ 0..=125 => frame.push(mask_bit | len as u8),
            len @ 126..=65535 => {
                frame.push(mask_bit | LEN7_MARKER_U16);
                frame.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                frame.push(mask_bit | LEN7_MARKER_U64);
                frame.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        match mask_key {
            Some(key) => {
                frame.extend_from_slice(&key);
                frame.extend(payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
            }
            None => frame.extend_from_slice(payload),
        }
        frame
    }

    /// A masked client frame without RSV bits.
    fn masked(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        client_frame(fin, 0, opcode, Some(KEY), payload)
    }

    /// The frames concatenated, as one stream.
    fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
        frames.concat()
    }

    /// `len` bytes of a repeating pattern that is not invariant under the masking key.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// An event with its payload copied out of the buffer.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Owned {
        Message(MessageKind, Vec<u8>),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>, Vec<u8>),
    }

    fn own(buf: &[u8], event: Event) -> Owned {
        match event {
            Event::Message { kind, payload } => Owned::Message(kind, buf[payload].to_vec()),
            Event::Ping { payload } => Owned::Ping(buf[payload].to_vec()),
            Event::Pong => Owned::Pong,
            Event::Close { code, reason } => Owned::Close(code, buf[reason].to_vec()),
        }
    }

    fn text(payload: &[u8]) -> Owned {
        Owned::Message(MessageKind::Text, payload.to_vec())
    }

    fn binary(payload: &[u8]) -> Owned {
        Owned::Message(MessageKind::Binary, payload.to_vec())
    }

    fn limits(max_message_bytes: usize) -> DecoderLimits {
        DecoderLimits { max_message_bytes }
    }

    /// Decodes `stream`, all of it in one buffer: the events until more bytes are needed, then
    /// the violation if one was found.
    fn decode_all(stream: &[u8], limits: DecoderLimits) -> (Vec<Owned>, Option<Violation>) {
        let mut decoder = Decoder::new(limits);
        let buf_bytes = stream.len().max(Decoder::buffer_bytes_required(limits));
        let mut buf = vec![0; buf_bytes];
        buf[..stream.len()].copy_from_slice(stream);
        let mut events = Vec::new();
        loop {
            match decoder.decode(&mut buf, stream.len()) {
                Ok(Some(event)) => events.push(own(&buf, event)),
                Ok(None) => return (events, None),
                Err(violation) => return (events, Some(violation)),
            }
        }
    }

    /// The events of a stream that has no violation.
    fn events_of(stream: &[u8], limits: DecoderLimits) -> Vec<Owned> {
        let (events, violation) = decode_all(stream, limits);
        assert_eq!(violation, None);
        events
    }

    /// The close code of the violation `stream` must end in.
    fn violation_code(stream: &[u8], limits: DecoderLimits) -> u16 {
        decode_all(stream, limits)
            .1
            .expect("stream has a violation")
            .code
    }

    /// Feeds `stream` as the server loop does: through a buffer of exactly
    /// `buffer_bytes_required` bytes, read `n` taking at most `read_bytes_max(n)` bytes, decode
    /// until Ok(None), then compact. Whenever compact returns 0 the buffer is poisoned and
    /// swapped for another one, as a pooled buffer could be.
    fn decode_in_reads(
        stream: &[u8],
        limits: DecoderLimits,
        mut read_bytes_max: impl FnMut(usize) -> usize,
    ) -> Vec<Owned> {
        let buf_bytes = Decoder::buffer_bytes_required(limits);
        let mut buffers = [vec![0xA5; buf_bytes], vec![0x5A; buf_bytes]];
        let mut current = 0;
        let mut decoder = Decoder::new(limits);
        let (mut filled, mut sent_bytes, mut events) = (0, 0, Vec::new());
        for read_index in 0.. {
            let buf = &mut buffers[current];
            while let Some(event) = decoder.decode(buf, filled).expect("valid stream") {
                events.push(own(buf, event));
            }
            filled = decoder.compact(buf, filled);
            if filled == 0 {
                buf.fill(0xEE);
                current = 1 - current;
            }
            if sent_bytes == stream.len() {
                break;
            }
            let read_bytes = read_bytes_max(read_index)
                .min(buf_bytes - filled)
                .min(stream.len() - sent_bytes);
            assert!(read_bytes > 0, "buffer full while the decoder waits");
            let buf = &mut buffers[current];
            buf[filled..filled + read_bytes]
                .copy_from_slice(&stream[sent_bytes..sent_bytes + read_bytes]);
            filled += read_bytes;
            sent_bytes += read_bytes;
        }
        assert_eq!(filled, 0, "stream ends with a whole frame");
        assert!(!decoder.in_message());
        events
    }

    /// The server frame `server_frame` (unmasked) turned into the client frame a client would
    /// send for it, masked with `mask_key`.
    fn to_client_frame(server_frame: &[u8], mask_key: [u8; 4]) -> Vec<u8> {
        let header_bytes = match server_frame[1] & LEN7_BITS {
            LEN7_MARKER_U16 => 4,
            LEN7_MARKER_U64 => 10,
            _ => 2,
        };
        let mut frame = server_frame[..header_bytes].to_vec();
        frame[1] |= MASK_BIT;
        frame.extend_from_slice(&mask_key);
        let payload = &server_frame[header_bytes..];
        frame.extend(
            payload
                .iter()
                .zip(mask_key.iter().cycle())
                .map(|(b, k)| b ^ k),
        );
        frame
    }

    #[test]
    fn every_length_encoding() {
        for (payload_bytes, header_bytes) in [(0, 6), (125, 6), (126, 8), (65535, 8), (65536, 14)] {
            let payload = pattern(payload_bytes);
            let frame = masked(true, BINARY, &payload);
            assert_eq!(frame.len(), header_bytes + payload_bytes);
            let mut buf = frame.clone();
            buf.resize(Decoder::buffer_bytes_required(LIMITS), 0);
            let event = Decoder::new(LIMITS).decode(&mut buf, frame.len());
            let in_place = header_bytes..frame.len();
            assert_eq!(
                event,
                Ok(Some(Event::Message {
                    kind: MessageKind::Binary,
                    payload: in_place.clone()
                })),
                "payload_bytes {payload_bytes}"
            );
            assert_eq!(buf[in_place], payload[..]);
        }
    }

    #[test]
    fn rfc_6455_examples() {
        let unmasked_hello = [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        assert_eq!(
            violation_code(&unmasked_hello, LIMITS),
            close::PROTOCOL_ERROR
        );
        let masked_hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        assert_eq!(events_of(&masked_hello, LIMITS), [text(b"Hello")]);
    }

    #[test]
    fn non_minimal_length_encoding_is_accepted() {
        let mut frame = vec![0x82, MASK_BIT | LEN7_MARKER_U64, 0, 0, 0, 0, 0, 0, 0, 3];
        frame.extend_from_slice(&[0; 4]);
        frame.extend_from_slice(b"abc");
        assert_eq!(events_of(&frame, LIMITS), [binary(b"abc")]);
    }

    #[test]
    fn zero_mask_key_is_masked() {
        let frame = client_frame(true, 0, BINARY, Some([0; 4]), b"raw");
        assert_eq!(events_of(&frame, LIMITS), [binary(b"raw")]);
    }

    #[test]
    fn unmasked_frames_are_protocol_errors() {
        for opcode in [TEXT, BINARY, PING, PONG, CLOSE] {
            let frame = client_frame(true, 0, opcode, None, b"");
            assert_eq!(violation_code(&frame, LIMITS), close::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn reserved_bits_are_protocol_errors() {
        for rsv in 1..=7 {
            let frame = client_frame(true, rsv, BINARY, Some(KEY), b"x");
            assert_eq!(
                violation_code(&frame, LIMITS),
                close::PROTOCOL_ERROR,
                "{rsv}"
            );
        }
    }

    #[test]
    fn reserved_opcodes_are_protocol_errors() {
        for opcode in (0x3..=0x7).chain(0xB..=0xF) {
            let frame = masked(true, opcode, b"x");
            assert_eq!(
                violation_code(&frame, LIMITS),
                close::PROTOCOL_ERROR,
                "{opcode}"
            );
        }
    }

    #[test]
    fn fragmented_control_frames_are_protocol_errors() {
        for opcode in [PING, PONG, CLOSE] {
            let frame = masked(false, opcode, b"");
            assert_eq!(
                violation_code(&frame, LIMITS),
                close::PROTOCOL_ERROR,
                "{opcode}"
            );
        }
    }

    #[test]
    fn control_frames_over_125_bytes_are_protocol_errors() {
        assert_eq!(
            events_of(&masked(true, PING, &[7; 125]), LIMITS),
            [Owned::Ping(vec![7; 125])]
        );
        for opcode in [PING, PONG, CLOSE] {
            let frame = masked(true, opcode, &[b'a'; 126]);
            assert_eq!(
                violation_code(&frame, LIMITS),
                close::PROTOCOL_ERROR,
                "{opcode}"
            );
        }
    }

    #[test]
    fn continuation_without_message_is_protocol_error() {
        let alone = masked(true, CONTINUATION, b"x");
        assert_eq!(violation_code(&alone, LIMITS), close::PROTOCOL_ERROR);
        let after_whole_message =
            stream(&[masked(true, TEXT, b"a"), masked(false, CONTINUATION, b"b")]);
        let (events, violation) = decode_all(&after_whole_message, LIMITS);
        assert_eq!(events, [text(b"a")]);
        assert_eq!(violation.map(|v| v.code), Some(close::PROTOCOL_ERROR));
    }

    #[test]
    fn data_frame_inside_message_is_protocol_error() {
        for (first, second) in [
            (TEXT, TEXT),
            (TEXT, BINARY),
            (BINARY, TEXT),
            (BINARY, BINARY),
        ] {
            let frames = stream(&[masked(false, first, b"a"), masked(true, second, b"b")]);
            assert_eq!(violation_code(&frames, LIMITS), close::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn length_with_top_bit_set_is_protocol_error_before_the_mask_key() {
        let header = [0x82, MASK_BIT | LEN7_MARKER_U64, 0x80, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(violation_code(&header, LIMITS), close::PROTOCOL_ERROR);
        assert_eq!(decode_all(&header[..9], LIMITS), (vec![], None));
    }

    #[test]
    fn incomplete_frames_need_more_bytes() {
        let frame = masked(true, BINARY, &pattern(300));
        for filled in 0..frame.len() {
            assert_eq!(
                decode_all(&frame[..filled], LIMITS),
                (vec![], None),
                "{filled}"
            );
        }
    }

    #[test]
    fn violation_is_sticky() {
        let mut buf = vec![0; Decoder::buffer_bytes_required(LIMITS)];
        let bad = client_frame(true, 0, BINARY, None, b"x");
        buf[..bad.len()].copy_from_slice(&bad);
        let mut decoder = Decoder::new(LIMITS);
        let first = decoder.decode(&mut buf, bad.len());
        assert_eq!(
            first.clone().map_err(|v| v.code),
            Err(close::PROTOCOL_ERROR)
        );
        let good = masked(true, BINARY, b"x");
        buf[..good.len()].copy_from_slice(&good);
        assert_eq!(decoder.decode(&mut buf, good.len()), first);
    }

    #[test]
    fn single_frame_at_max_passes_and_max_plus_one_fails_from_the_header() {
        let max = limits(1000);
        assert_eq!(
            events_of(&masked(true, BINARY, &pattern(1000)), max),
            [binary(&pattern(1000))]
        );
        let too_big = masked(true, BINARY, &pattern(1001));
        let lead_and_length = &too_big[..4];
        assert_eq!(violation_code(lead_and_length, max), close::MESSAGE_TOO_BIG);
        assert_eq!(decode_all(&too_big[..3], max), (vec![], None));
    }

    #[test]
    fn fragmented_message_at_max_passes_and_max_plus_one_fails_from_the_header() {
        let max = limits(1000);
        let at_max = stream(&[
            masked(false, BINARY, &pattern(600)),
            masked(true, PING, &[1; 125]),
            masked(true, CONTINUATION, &pattern(400)),
        ]);
        let expected = [
            Owned::Ping(vec![1; 125]),
            binary(&[pattern(600), pattern(400)].concat()),
        ];
        assert_eq!(events_of(&at_max, max), expected);

        let first = masked(false, TEXT, &[b'a'; 600]);
        let second_header = &masked(true, CONTINUATION, &[b'b'; 401])[..4];
        let over_max = stream(&[first, second_header.to_vec()]);
        assert_eq!(violation_code(&over_max, max), close::MESSAGE_TOO_BIG);
    }

    #[test]
    fn huge_length_is_too_big_not_an_overflow() {
        let mut header = vec![0x82, MASK_BIT | LEN7_MARKER_U64];
        header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(violation_code(&header, LIMITS), close::MESSAGE_TOO_BIG);
        let first = masked(false, BINARY, b"abc");
        assert_eq!(
            violation_code(&[first, header].concat(), LIMITS),
            close::PROTOCOL_ERROR
        );
    }

    #[test]
    fn control_frames_do_not_count_toward_the_message_size() {
        let tiny = limits(4);
        let frames = stream(&[
            masked(false, BINARY, b"ab"),
            masked(true, PING, &[0; 100]),
            masked(true, CONTINUATION, b"cd"),
        ]);
        assert_eq!(
            events_of(&frames, tiny),
            [Owned::Ping(vec![0; 100]), binary(b"abcd")]
        );
    }

    #[test]
    fn invalid_text_is_invalid_payload() {
        let invalid: [&[u8]; 6] = [
            b"\xFF",
            b"ok\x80",
            b"\xC0\x80",         // overlong NUL
            b"\xED\xA0\x80",     // UTF-16 surrogate
            b"\xF4\x90\x80\x80", // above U+10FFFF
            b"\xE2\x82",         // truncated at the end of the message
        ];
        for payload in invalid {
            let frame = masked(true, TEXT, payload);
            assert_eq!(
                violation_code(&frame, LIMITS),
                close::INVALID_PAYLOAD,
                "{payload:?}"
            );
        }
        let binary_frame = masked(true, BINARY, b"\xFF");
        assert_eq!(events_of(&binary_frame, LIMITS), [binary(b"\xFF")]);
    }

    #[test]
    fn utf8_split_across_fragments_is_valid() {
        let whole = "a€😀é".as_bytes();
        for first_end in 0..=whole.len() {
            for second_end in first_end..=whole.len() {
                let frames = stream(&[
                    masked(false, TEXT, &whole[..first_end]),
                    masked(false, CONTINUATION, &whole[first_end..second_end]),
                    masked(true, CONTINUATION, &whole[second_end..]),
                ]);
                assert_eq!(
                    events_of(&frames, LIMITS),
                    [text(whole)],
                    "{first_end} {second_end}"
                );
            }
        }
    }

    #[test]
    fn invalid_utf8_fails_at_the_first_fragment_that_shows_it() {
        let definitely_invalid_first = masked(false, TEXT, b"ab\xFF");
        assert_eq!(
            violation_code(&definitely_invalid_first, LIMITS),
            close::INVALID_PAYLOAD
        );

        let bad_prefix = masked(false, TEXT, b"ab\xE0\x80");
        assert_eq!(violation_code(&bad_prefix, LIMITS), close::INVALID_PAYLOAD);

        let good_prefix = masked(false, TEXT, b"ab\xE2\x82");
        assert_eq!(decode_all(&good_prefix, LIMITS), (vec![], None));

        let bad_continuation = stream(&[good_prefix.clone(), masked(false, CONTINUATION, b"x")]);
        assert_eq!(
            violation_code(&bad_continuation, LIMITS),
            close::INVALID_PAYLOAD
        );

        let truncated = stream(&[good_prefix, masked(true, CONTINUATION, b"")]);
        assert_eq!(violation_code(&truncated, LIMITS), close::INVALID_PAYLOAD);
    }

    #[test]
    fn fragmented_text_with_interleaved_ping() {
        let frames = stream(&[
            masked(false, TEXT, b"Hel"),
            masked(true, PING, b"are you there"),
            masked(false, CONTINUATION, b""),
            masked(true, PONG, b"late"),
            masked(true, CONTINUATION, b"lo"),
        ]);
        let expected = [
            Owned::Ping(b"are you there".to_vec()),
            Owned::Pong,
            text(b"Hello"),
        ];
        assert_eq!(events_of(&frames, LIMITS), expected);
    }

    #[test]
    fn fragmented_binary_is_contiguous_and_tracks_in_message() {
        let parts = [pattern(300), pattern(126), pattern(5)];
        let frames = stream(&[
            masked(false, BINARY, &parts[0]),
            masked(false, CONTINUATION, &parts[1]),
            masked(true, PING, b"p"),
            masked(true, CONTINUATION, &parts[2]),
        ]);
        let mut buf = frames.clone();
        buf.resize(Decoder::buffer_bytes_required(LIMITS), 0);
        let mut decoder = Decoder::new(LIMITS);
        let ping = decoder.decode(&mut buf, frames.len()).unwrap().unwrap();
        assert_eq!(own(&buf, ping), Owned::Ping(b"p".to_vec()));
        assert!(decoder.in_message());
        let message = decoder.decode(&mut buf, frames.len()).unwrap().unwrap();
        assert!(!decoder.in_message());
        let first_payload_start = 2 + 2 + 4;
        let Event::Message { kind, payload } = message else {
            panic!("expected a message, got {message:?}");
        };
        assert_eq!(kind, MessageKind::Binary);
        assert_eq!(
            payload.start, first_payload_start,
            "first fragment stays in place"
        );
        assert_eq!(buf[payload], parts.concat()[..]);
        assert_eq!(decoder.decode(&mut buf, frames.len()), Ok(None));
    }

    #[test]
    fn close_code_validity() {
        let table: [(u16, bool); 12] = [
            (0, false),
            (999, false),
            (1000, true),
            (1004, false),
            (1005, false),
            (1006, false),
            (1012, true),
            (1016, false),
            (2999, false),
            (3000, true),
            (4999, true),
            (5000, false),
        ];
        for (code, valid) in table {
            let frame = masked(true, CLOSE, &code.to_be_bytes());
            let (events, violation) = decode_all(&frame, LIMITS);
            if valid {
                assert_eq!(events, [Owned::Close(Some(code), vec![])], "{code}");
            } else {
                assert_eq!(
                    violation.map(|v| v.code),
                    Some(close::PROTOCOL_ERROR),
                    "{code}"
                );
            }
        }
    }

    #[test]
    fn close_payloads() {
        let empty = masked(true, CLOSE, b"");
        assert_eq!(events_of(&empty, LIMITS), [Owned::Close(None, vec![])]);
        let one_byte = masked(true, CLOSE, &[0x03]);
        assert_eq!(violation_code(&one_byte, LIMITS), close::PROTOCOL_ERROR);
        let with_reason = masked(true, CLOSE, b"\x03\xE9bye \xC3\xA9");
        let expected = Owned::Close(Some(close::GOING_AWAY), "bye é".as_bytes().to_vec());
        assert_eq!(events_of(&with_reason, LIMITS), [expected]);
        let bad_reason = masked(true, CLOSE, b"\x03\xE8\xFF");
        assert_eq!(violation_code(&bad_reason, LIMITS), close::INVALID_PAYLOAD);
    }

    #[test]
    fn close_inside_fragmented_message_is_emitted() {
        let frames = stream(&[masked(false, TEXT, b"a"), masked(true, CLOSE, b"")]);
        assert_eq!(events_of(&frames, LIMITS), [Owned::Close(None, vec![])]);
    }

    #[test]
    fn several_frames_in_one_buffer() {
        let frames = stream(&[
            masked(true, BINARY, b"one"),
            masked(true, TEXT, b"two"),
            masked(true, PING, b""),
            masked(true, PONG, b"x"),
            masked(true, BINARY, b""),
            masked(true, CLOSE, b"\x03\xE8"),
        ]);
        let expected = [
            binary(b"one"),
            text(b"two"),
            Owned::Ping(vec![]),
            Owned::Pong,
            binary(b""),
            Owned::Close(Some(close::NORMAL), vec![]),
        ];
        assert_eq!(events_of(&frames, LIMITS), expected);
    }

    #[test]
    fn compact_keeps_partial_message_and_next_bytes() {
        let first = masked(false, BINARY, b"abc");
        let ping = masked(true, PING, b"p");
        let second = masked(true, CONTINUATION, b"def");
        let received = stream(&[first, ping, second[..3].to_vec()]);
        let mut buf = received.clone();
        buf.resize(Decoder::buffer_bytes_required(LIMITS), 0);
        let mut decoder = Decoder::new(LIMITS);
        let ping_event = decoder.decode(&mut buf, received.len()).unwrap().unwrap();
        assert_eq!(own(&buf, ping_event), Owned::Ping(b"p".to_vec()));
        assert_eq!(decoder.decode(&mut buf, received.len()), Ok(None));

        let mut filled = decoder.compact(&mut buf, received.len());
        assert_eq!(filled, 3 + 3);
        assert_eq!(buf[..3], *b"abc");
        assert_eq!(buf[3..6], second[..3]);

        buf[filled..filled + second.len() - 3].copy_from_slice(&second[3..]);
        filled += second.len() - 3;
        let message = decoder.decode(&mut buf, filled).unwrap().unwrap();
        assert_eq!(own(&buf, message), binary(b"abcdef"));
        assert_eq!(decoder.compact(&mut buf, filled), 0);
    }

    #[test]
    fn buffer_bytes_required_covers_message_and_control_frame() {
        assert_eq!(
            Decoder::buffer_bytes_required(limits(1 << 20)),
            (1 << 20) + 131
        );
        assert_eq!(
            Decoder::buffer_bytes_required(limits(usize::MAX)),
            usize::MAX
        );
    }

    #[test]
    fn mixed_stream_split_at_every_byte_boundary() {
        let max = limits(300);
        let (frames, expected) = mixed_stream();
        assert!(frames.len() > Decoder::buffer_bytes_required(max));
        assert_eq!(decode_all(&frames, max), (expected.clone(), None));
        for split in 1..=frames.len() {
            let events = decode_in_reads(
                &frames,
                max,
                |read| if read == 0 { split } else { usize::MAX },
            );
            assert_eq!(events, expected, "split at {split}");
        }
        for read_bytes in 1..=frames.len() {
            let events = decode_in_reads(&frames, max, |_| read_bytes);
            assert_eq!(events, expected, "reads of {read_bytes} bytes");
        }
    }

    /// A stream of every kind of frame for a 300-byte limit, and its events. It includes a
    /// message of exactly 300 bytes whose last fragment follows a 125-byte Ping, the case that
    /// needs all of `buffer_bytes_required`.
    fn mixed_stream() -> (Vec<u8>, Vec<Owned>) {
        let utf8 = "ab€😀z".as_bytes();
        let frames = stream(&[
            masked(true, BINARY, b""),
            masked(true, TEXT, "héllo wörld".as_bytes()),
            masked(true, PING, b"p1"),
            masked(true, BINARY, &pattern(200)),
            masked(false, TEXT, &utf8[..3]),
            masked(true, PING, &[9; 125]),
            masked(false, CONTINUATION, &utf8[3..7]),
            masked(true, PONG, b""),
            masked(true, CONTINUATION, &utf8[7..]),
            masked(false, BINARY, &pattern(150)),
            masked(false, CONTINUATION, &pattern(150)),
            masked(true, PING, &[8; 125]),
            masked(true, CONTINUATION, b""),
            masked(true, BINARY, &pattern(300)),
            masked(false, TEXT, b""),
            masked(false, CONTINUATION, b""),
            masked(true, CONTINUATION, b"x"),
            masked(true, PONG, b"pong"),
            masked(true, CLOSE, b"\x03\xE8bye"),
        ]);
        let events = vec![
            binary(b""),
            text("héllo wörld".as_bytes()),
            Owned::Ping(b"p1".to_vec()),
            binary(&pattern(200)),
            Owned::Ping(vec![9; 125]),
            Owned::Pong,
            text(utf8),
            Owned::Ping(vec![8; 125]),
            binary(&[pattern(150), pattern(150)].concat()),
            binary(&pattern(300)),
            text(b"x"),
            Owned::Pong,
            Owned::Close(Some(close::NORMAL), b"bye".to_vec()),
        ];
        (frames, events)
    }

    #[test]
    fn unmask_matches_bytewise_definition() {
        let keys = [KEY, [0; 4], [0xFF; 4], [1, 2, 3, 4]];
        for key in keys {
            for misalignment in 0..8 {
                for len in 0..=40 {
                    let original = pattern(misalignment + len);
                    let mut payload = original.clone();
                    unmask(&mut payload[misalignment..], key);
                    let expected: Vec<u8> = original[misalignment..]
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ key[i % 4])
                        .collect();
                    assert_eq!(
                        payload[misalignment..],
                        expected,
                        "{key:?} {misalignment} {len}"
                    );
                    assert_eq!(payload[..misalignment], original[..misalignment]);
                }
            }
        }
    }

    #[test]
    fn encode_header_round_trips_through_the_decoder() {
        let cases = [
            (Opcode::Binary, 0),
            (Opcode::Binary, 125),
            (Opcode::Text, 126),
            (Opcode::Binary, 65535),
            (Opcode::Binary, 65536),
            (Opcode::Ping, 125),
        ];
        for (opcode, payload_bytes) in cases {
            let payload: Vec<u8> = match opcode {
                Opcode::Text => vec![b't'; payload_bytes],
                _ => pattern(payload_bytes),
            };
            let mut header = [0; HEADER_BYTES_MAX];
            let header_bytes = encode_header(opcode, payload_bytes, &mut header);
            let server_frame = [&header[..header_bytes], &payload].concat();
            let expected = match opcode {
                Opcode::Text => text(&payload),
                Opcode::Ping => Owned::Ping(payload.clone()),
                _ => binary(&payload),
            };
            let events = events_of(&to_client_frame(&server_frame, KEY), LIMITS);
            assert_eq!(events, [expected], "{opcode:?} {payload_bytes}");
        }
    }

    #[test]
    fn encode_close_round_trips_through_the_decoder() {
        let long_reason = "ü".repeat(80);
        let cases = [
            (close::NORMAL, ""),
            (close::MESSAGE_TOO_BIG, "message too big"),
            (close::TRY_AGAIN_LATER, long_reason.as_str()),
        ];
        for (code, reason) in cases {
            let mut out = [0; 2 + CONTROL_PAYLOAD_BYTES_MAX];
            let frame_bytes = encode_close(code, reason, &mut out);
            let events = events_of(&to_client_frame(&out[..frame_bytes], KEY), LIMITS);
            let kept_reason = &reason.as_bytes()[..reason.floor_char_boundary(123)];
            assert_eq!(
                events,
                [Owned::Close(Some(code), kept_reason.to_vec())],
                "{code}"
            );
        }
    }
}
