//! Frame layout (RFC 6455 §5.2) and encoding of server → client frames.
//!
//! Frames pusher sends are never fragmented (FIN always set) and never masked (servers must not
//! mask, §5.1). [`encode_client_frame`] writes the other direction, for clients, tests and tools.

use super::close;

/// Longest server → client frame header: 2 bytes + an 8-byte extended payload length.
pub const HEADER_BYTES_MAX: usize = 10;

/// Bit 7 of the first header byte: this is the final fragment of a message.
pub(super) const FIN_BIT: u8 = 0x80;
/// Bits 4-6 of the first header byte: RSV1-3, which extensions would use.
pub(super) const RSV_BITS: u8 = 0x70;
/// Bits 0-3 of the first header byte.
pub(super) const OPCODE_BITS: u8 = 0x0F;
/// Bit 7 of the second header byte: a masking key follows the length.
pub(super) const MASK_BIT: u8 = 0x80;
/// Bits 0-6 of the second header byte: the payload length, or one of the two markers below.
pub(super) const LEN7_BITS: u8 = 0x7F;
/// `LEN7_BITS` value announcing a 16-bit big-endian payload length.
pub(super) const LEN7_MARKER_U16: u8 = 126;
/// `LEN7_BITS` value announcing a 64-bit big-endian payload length.
pub(super) const LEN7_MARKER_U64: u8 = 127;
/// Largest payload a control frame may carry (§5.5); also the largest length encoded in 7 bits.
pub(super) const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;
/// Bytes of the code at the start of a non-empty Close payload (§5.5.1).
pub(super) const CLOSE_CODE_BYTES: usize = 2;
/// Bytes of the masking key that follows the length in every client frame header (§5.3).
pub const MASK_KEY_BYTES: usize = 4;

/// A frame's opcode (§5.2). Reserved opcodes (3-7, 11-15) have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// 0x0: a further fragment of a data message.
    Continuation,
    /// 0x1: the first frame of a text message.
    Text,
    /// 0x2: the first frame of a binary message.
    Binary,
    /// 0x8: a Close (§5.5.1).
    Close,
    /// 0x9: a Ping, answered with a Pong (§5.5.2).
    Ping,
    /// 0xA: a Pong (§5.5.3).
    Pong,
}

impl Opcode {
    /// The 4-bit value of this opcode on the wire.
    pub const fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// The opcode for a 4-bit wire value; `None` for reserved values.
    pub const fn from_bits(bits: u8) -> Option<Opcode> {
        match bits {
            0x0 => Some(Opcode::Continuation),
            0x1 => Some(Opcode::Text),
            0x2 => Some(Opcode::Binary),
            0x8 => Some(Opcode::Close),
            0x9 => Some(Opcode::Ping),
            0xA => Some(Opcode::Pong),
            _ => None,
        }
    }

    /// Whether this is a control opcode (Close, Ping, Pong: §5.5).
    pub const fn is_control(self) -> bool {
        matches!(self, Opcode::Close | Opcode::Ping | Opcode::Pong)
    }
}

/// Writes a FIN frame header for `payload_len` into `out` (out.len() >= HEADER_BYTES_MAX), returns its length.
///
/// The length uses the shortest encoding (§5.2): 7 bits up to 125, then 16 bits, then 64 bits.
/// Control frames must have `payload_len <= 125`.
pub fn encode_header(opcode: Opcode, payload_len: usize, out: &mut [u8]) -> usize {
    debug_assert!(out.len() >= HEADER_BYTES_MAX);
    debug_assert!(!opcode.is_control() || payload_len <= CONTROL_PAYLOAD_BYTES_MAX);
    out[0] = FIN_BIT | opcode.bits();
    if payload_len <= CONTROL_PAYLOAD_BYTES_MAX {
        out[1] = payload_len as u8;
        2
    } else if let Ok(payload_len_u16) = u16::try_from(payload_len) {
        out[1] = LEN7_MARKER_U16;
        out[2..4].copy_from_slice(&payload_len_u16.to_be_bytes());
        4
    } else {
        out[1] = LEN7_MARKER_U64;
        out[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    }
}

/// Writes a whole Close frame (code + reason, reason cut at a char boundary so the payload is <= 125 bytes) into out (out.len() >= 2 + 125); returns its length.
///
/// `code` must be one a peer may send ([`close::is_valid_on_wire`]).
pub fn encode_close(code: u16, reason: &str, out: &mut [u8]) -> usize {
    debug_assert!(out.len() >= 2 + CONTROL_PAYLOAD_BYTES_MAX);
    debug_assert!(close::is_valid_on_wire(code), "close code {code}");
    let reason_bytes_max = CONTROL_PAYLOAD_BYTES_MAX - CLOSE_CODE_BYTES;
    let reason = &reason[..reason.floor_char_boundary(reason_bytes_max)];
    let payload_bytes = CLOSE_CODE_BYTES + reason.len();
    let header_bytes = encode_header(Opcode::Close, payload_bytes, out);
    let (code_out, reason_out) = out[header_bytes..].split_at_mut(CLOSE_CODE_BYTES);
    code_out.copy_from_slice(&code.to_be_bytes());
    reason_out[..reason.len()].copy_from_slice(reason.as_bytes());
    header_bytes + payload_bytes
}

/// Appends one whole (FIN) client → server frame to `out`: the header with the MASK bit and the
/// shortest length encoding, `mask_key`, then `payload` masked with it (§5.3).
///
/// pusher itself never sends masked frames: this is for clients, tests and tools (the load
/// generator, `perf/`), so they all put the same bytes on the wire as a conforming client.
/// Control frames must have `payload.len() <= 125`.
pub fn encode_client_frame(
    opcode: Opcode,
    payload: &[u8],
    mask_key: [u8; MASK_KEY_BYTES],
    out: &mut Vec<u8>,
) {
    let mut header = [0; HEADER_BYTES_MAX];
    let header_bytes = encode_header(opcode, payload.len(), &mut header);
    header[1] |= MASK_BIT;
    out.reserve(header_bytes + MASK_KEY_BYTES + payload.len());
    out.extend_from_slice(&header[..header_bytes]);
    out.extend_from_slice(&mask_key);
    out.extend(
        payload
            .iter()
            .zip(mask_key.iter().cycle())
            .map(|(byte, key)| byte ^ key),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_OPCODES: [Opcode; 6] = [
        Opcode::Continuation,
        Opcode::Text,
        Opcode::Binary,
        Opcode::Close,
        Opcode::Ping,
        Opcode::Pong,
    ];

    #[test]
    fn opcode_bits_round_trip() {
        for opcode in ALL_OPCODES {
            assert_eq!(Opcode::from_bits(opcode.bits()), Some(opcode));
        }
        for reserved in (0x3..=0x7).chain(0xB..=0xF) {
            assert_eq!(Opcode::from_bits(reserved), None, "opcode {reserved:#x}");
        }
    }

    #[test]
    fn control_opcodes() {
        let control: Vec<Opcode> = ALL_OPCODES.into_iter().filter(|o| o.is_control()).collect();
        assert_eq!(control, [Opcode::Close, Opcode::Ping, Opcode::Pong]);
    }

    #[test]
    fn header_length_encodings() {
        let cases: [(usize, &[u8]); 7] = [
            (0, &[0x82, 0]),
            (1, &[0x82, 1]),
            (125, &[0x82, 125]),
            (126, &[0x82, 126, 0, 126]),
            (65535, &[0x82, 126, 0xFF, 0xFF]),
            (65536, &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
            (0x0102_0304_0506, &[0x82, 127, 0, 0, 1, 2, 3, 4, 5, 6]),
        ];
        for (payload_len, expected) in cases {
            let mut out = [0xEE; HEADER_BYTES_MAX];
            let written = encode_header(Opcode::Binary, payload_len, &mut out);
            assert_eq!(&out[..written], expected, "payload_len {payload_len}");
        }
    }

    #[test]
    fn header_sets_fin_opcode_and_no_mask() {
        for opcode in [Opcode::Text, Opcode::Binary, Opcode::Ping, Opcode::Pong] {
            let mut out = [0; HEADER_BYTES_MAX];
            assert_eq!(encode_header(opcode, 5, &mut out), 2);
            assert_eq!(out[0], FIN_BIT | opcode.bits());
            assert_eq!(out[1] & MASK_BIT, 0);
        }
    }

    #[test]
    fn close_frame_layout() {
        let mut out = [0; 2 + CONTROL_PAYLOAD_BYTES_MAX];
        let written = encode_close(close::GOING_AWAY, "bye", &mut out);
        assert_eq!(&out[..written], &[0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
    }

    #[test]
    fn close_frame_without_reason() {
        let mut out = [0; 2 + CONTROL_PAYLOAD_BYTES_MAX];
        let written = encode_close(close::NORMAL, "", &mut out);
        assert_eq!(&out[..written], &[0x88, 2, 0x03, 0xE8]);
    }

    #[test]
    fn close_reason_cut_at_char_boundary() {
        let mut out = [0; 2 + CONTROL_PAYLOAD_BYTES_MAX];
        let ascii = "x".repeat(200);
        assert_eq!(encode_close(close::NORMAL, &ascii, &mut out), 2 + 125);
        assert_eq!(out[1], 125);

        // 'é' is 2 bytes: 123 reason bytes would split the 62nd one, so 61 (122 bytes) are kept.
        let two_byte_chars = "é".repeat(100);
        let written = encode_close(close::NORMAL, &two_byte_chars, &mut out);
        assert_eq!(written, 2 + 2 + 122);
        assert_eq!(out[1], 124);
        let reason = std::str::from_utf8(&out[4..written]).expect("cut at a char boundary");
        assert_eq!(reason, "é".repeat(61));
    }

    #[test]
    fn client_frame_is_masked_and_decodes_with_the_server_decoder() {
        use crate::websocket::{Decoder, DecoderLimits, Event, MessageKind};

        let key = [0x37, 0xFA, 0x21, 0x3D];
        let limits = DecoderLimits {
            max_message_bytes: 70_000,
        };
        for len in [0, 1, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            encode_client_frame(Opcode::Binary, &payload, key, &mut wire);

            let mut server_header = [0; HEADER_BYTES_MAX];
            let header_bytes = encode_header(Opcode::Binary, len, &mut server_header);
            assert_eq!(wire[0], server_header[0], "length {len}");
            assert_eq!(wire[1], server_header[1] | MASK_BIT, "length {len}");
            assert_eq!(wire[2..header_bytes], server_header[2..header_bytes]);
            assert_eq!(wire[header_bytes..header_bytes + MASK_KEY_BYTES], key);

            let mut buf = vec![0; Decoder::buffer_bytes_required(limits)];
            buf[..wire.len()].copy_from_slice(&wire);
            let mut decoder = Decoder::new(limits);
            let event = decoder.decode(&mut buf, wire.len()).unwrap().unwrap();
            let Event::Message {
                kind,
                payload: range,
            } = event
            else {
                panic!("length {len}: {event:?}");
            };
            assert_eq!(kind, MessageKind::Binary);
            assert_eq!(buf[range], payload[..], "length {len}");
        }
    }
}
