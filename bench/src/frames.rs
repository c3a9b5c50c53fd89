//! What a load client puts on the wire: the upgrade request and masked client frames carrying
//! pusher messages (docs/protocol.md §2: a `u32 LE` header, then the payload, in one binary
//! message), and what it reads: the server's unmasked frames (docs/protocol.md §4: 201 answers,
//! Close).
//!
//! Everything here is pure byte work, so it can be precomputed once and written in a loop.

use std::ops::Range;

use pusher::websocket::Opcode;
use pusher::websocket::frame::encode_client_frame;

/// Pusher message headers (docs/protocol.md §2).
pub const HEARTBEAT: u32 = 100;
pub const AUDIO: u32 = 101;
pub const TRANSCRIPT: u32 = 102;
pub const CONVERSATION_ID: u32 = 103;
pub const PROCESS_CONVERSATION: u32 = 104;
pub const SPEAKER_SAMPLE: u32 = 105;
/// The server's answer to a 104 (docs/protocol.md §4).
pub const PROCESS_RESULT: u32 = 201;

/// Masking key of every frame the tool sends. Servers must accept any key; a fixed one lets
/// frames be precomputed. Non-zero so that unmasking really changes the bytes.
pub const MASK_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// The Sec-WebSocket-Key of every upgrade (the RFC 6455 §1.3 sample: 16 bytes in base64).
const WEBSOCKET_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

const FIN_BIT: u8 = 0x80;
const MASK_BIT: u8 = 0x80;
pub const OPCODE_CONTINUATION: u8 = 0x0;
pub const OPCODE_TEXT: u8 = 0x1;
pub const OPCODE_BINARY: u8 = 0x2;
pub const OPCODE_CLOSE: u8 = 0x8;
pub const OPCODE_PING: u8 = 0x9;
pub const OPCODE_PONG: u8 = 0xA;
const OPCODE_MASK: u8 = 0x0f;
/// Largest payload length that fits the 7-bit length field.
const LEN7_MAX: usize = 125;
const LEN7_MARKER_U16: u8 = 126;
const LEN7_MARKER_U64: u8 = 127;
/// Close code "normal closure" (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;

/// The HTTP/1.1 upgrade request for `GET /v1/trigger/listen?uid=U&sample_rate=R`.
pub fn listen_request(host: &str, uid: &str, sample_rate: u32) -> String {
    format!(
        "GET /v1/trigger/listen?uid={uid}&sample_rate={sample_rate} HTTP/1.1\r\n\
         Host: {host}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: {WEBSOCKET_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n\
         \r\n"
    )
}

/// A pusher message: `u32 LE header` ‖ `payload`.
pub fn message(header: u32, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(4 + payload.len());
    message.extend_from_slice(&header.to_le_bytes());
    message.extend_from_slice(payload);
    message
}

/// A 101 audio message: `f64 LE` timestamp ‖ `pcm_bytes` of silence (PCM16 zeros).
pub fn audio_message(timestamp_s: f64, pcm_bytes: usize) -> Vec<u8> {
    let mut payload = vec![0u8; 8 + pcm_bytes];
    payload[..8].copy_from_slice(&timestamp_s.to_le_bytes());
    message(AUDIO, &payload)
}

/// Appends one masked, unfragmented binary frame carrying `payload` to `out`.
pub fn push_binary_frame(payload: &[u8], out: &mut Vec<u8>) {
    encode_client_frame(Opcode::Binary, payload, MASK_KEY, out);
}

/// A masked binary frame carrying `payload`.
pub fn binary_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_bytes(payload.len()));
    push_binary_frame(payload, &mut out);
    out
}

/// A masked Close frame with code 1000 and no reason.
pub fn close_frame() -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_bytes(2));
    encode_client_frame(
        Opcode::Close,
        &CLOSE_NORMAL.to_be_bytes(),
        MASK_KEY,
        &mut out,
    );
    out
}

/// A masked Pong frame echoing a Ping's `payload` (RFC 6455 §5.5.3).
pub fn pong_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_bytes(payload.len()));
    encode_client_frame(Opcode::Pong, payload, MASK_KEY, &mut out);
    out
}

/// A masked Ping frame carrying `payload` (at most 125 bytes).
pub fn ping_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame_bytes(payload.len()));
    encode_client_frame(Opcode::Ping, payload, MASK_KEY, &mut out);
    out
}

/// Bytes on the wire of a client frame with a payload of `payload_bytes`.
pub fn frame_bytes(payload_bytes: usize) -> usize {
    let extended = match payload_bytes {
        0..=LEN7_MAX => 0,
        126..=0xffff => 2,
        _ => 8,
    };
    2 + extended + MASK_KEY.len() + payload_bytes
}

/// A frame the server sent: its opcode, whether it is final, where its payload is in the
/// buffer it was parsed from, and its length on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFrame {
    pub opcode: u8,
    pub fin: bool,
    pub payload: Range<usize>,
    pub wire_bytes: usize,
}

/// Parses the frame at the start of `buf`: `Ok(None)` until it is complete. A masked frame (a
/// server never masks, RFC 6455 §5.1) or a payload longer than `payload_max` is an error.
pub fn parse_server_frame(buf: &[u8], payload_max: usize) -> Result<Option<ServerFrame>, String> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if second & MASK_BIT != 0 {
        return Err("a masked frame from the server".to_owned());
    }
    let (len, header_bytes) = match second & !MASK_BIT {
        LEN7_MARKER_U16 => match buf.get(2..4) {
            Some(bytes) => (u64::from(u16::from_be_bytes([bytes[0], bytes[1]])), 4),
            None => return Ok(None),
        },
        LEN7_MARKER_U64 => match buf.get(2..10) {
            Some(bytes) => (u64::from_be_bytes(bytes.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        len7 => (u64::from(len7), 2),
    };
    if len > payload_max as u64 {
        return Err(format!("a {len}-byte frame from the server"));
    }
    let wire_bytes = header_bytes + len as usize;
    if buf.len() < wire_bytes {
        return Ok(None);
    }
    Ok(Some(ServerFrame {
        opcode: first & OPCODE_MASK,
        fin: first & FIN_BIT != 0,
        payload: header_bytes..wire_bytes,
        wire_bytes,
    }))
}

/// Decodes client frames `wire` with the server's own decoder (tests): every event with its
/// payload bytes (a Close: its reason).
#[cfg(test)]
pub fn decode_client_frames(wire: &[u8]) -> Vec<(pusher::websocket::Event, Vec<u8>)> {
    use pusher::websocket::{Decoder, DecoderLimits, Event};
    let limits = DecoderLimits {
        max_message_bytes: 1 << 20,
    };
    let mut decoder = Decoder::new(limits);
    let mut buf = vec![0u8; Decoder::buffer_bytes_required(limits).max(wire.len())];
    buf[..wire.len()].copy_from_slice(wire);
    let mut events = Vec::new();
    while let Some(event) = decoder.decode(&mut buf, wire.len()).expect("valid frames") {
        let bytes = match &event {
            Event::Message { payload, .. } | Event::Ping { payload } => {
                buf[payload.clone()].to_vec()
            }
            Event::Close { reason, .. } => buf[reason.clone()].to_vec(),
            Event::Pong => Vec::new(),
        };
        events.push((event, bytes));
    }
    assert_eq!(
        decoder.compact(&mut buf, wire.len()),
        0,
        "no bytes left over"
    );
    events
}

#[cfg(test)]
mod tests {
    use pusher::websocket::{Event, MessageKind};

    use super::*;

    fn decode_all(wire: &[u8]) -> Vec<(Event, Vec<u8>)> {
        decode_client_frames(wire)
    }

    fn assert_binary(event: &(Event, Vec<u8>), expected: &[u8]) {
        assert!(matches!(
            event.0,
            Event::Message {
                kind: MessageKind::Binary,
                ..
            }
        ));
        assert_eq!(event.1, expected);
    }

    #[test]
    fn message_puts_the_header_first_little_endian() {
        assert_eq!(message(HEARTBEAT, &[]), [100, 0, 0, 0]);
        assert_eq!(message(CONVERSATION_ID, b"c1"), [103, 0, 0, 0, b'c', b'1']);
    }

    #[test]
    fn audio_message_is_header_timestamp_and_silence() {
        let audio = audio_message(1.5, 6);
        assert_eq!(audio.len(), 4 + 8 + 6);
        assert_eq!(audio[..4], AUDIO.to_le_bytes());
        assert_eq!(audio[4..12], 1.5f64.to_le_bytes());
        assert!(audio[12..].iter().all(|&b| b == 0));
    }

    #[test]
    fn frames_of_every_length_class_decode_with_the_server_decoder() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 16_012] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = binary_frame(&payload);
            assert_eq!(frame.len(), frame_bytes(len), "length {len}");
            let events = decode_all(&frame);
            assert_eq!(events.len(), 1, "length {len}");
            assert_binary(&events[0], &payload);
        }
    }

    #[test]
    fn batched_frames_decode_in_order() {
        let mut wire = Vec::new();
        push_binary_frame(&message(CONVERSATION_ID, b"conv-1"), &mut wire);
        push_binary_frame(&audio_message(2.0, 300), &mut wire);
        push_binary_frame(&message(HEARTBEAT, &[]), &mut wire);
        let events = decode_all(&wire);
        assert_eq!(events.len(), 3);
        assert_binary(&events[0], &message(CONVERSATION_ID, b"conv-1"));
        assert_binary(&events[1], &audio_message(2.0, 300));
        assert_binary(&events[2], &[100, 0, 0, 0]);
    }

    #[test]
    fn ping_frame_is_a_masked_ping() {
        let ping = ping_frame(&[0, 0, 0, 7]);
        assert_eq!(ping[0], 0x80 | OPCODE_PING, "FIN and opcode Ping");
        let events = decode_all(&ping);
        assert!(matches!(events[0].0, Event::Ping { .. }));
        assert_eq!(events[0].1, [0, 0, 0, 7]);
    }

    #[test]
    fn pong_frame_is_a_masked_pong() {
        let pong = pong_frame(b"ping-7");
        assert_eq!(pong.len(), frame_bytes(6));
        assert_eq!(pong[0], 0x80 | 0xA, "FIN and opcode Pong");
        assert_ne!(pong[1] & MASK_BIT, 0, "masked");
        let events = decode_all(&pong);
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0].0, Event::Pong));
    }

    #[test]
    fn close_frame_carries_code_1000() {
        let events = decode_all(&close_frame());
        assert_eq!(events.len(), 1);
        assert!(matches!(
            events[0].0,
            Event::Close {
                code: Some(1000),
                ..
            }
        ));
        assert!(events[0].1.is_empty());
    }

    #[test]
    fn server_frames_of_every_length_class_parse() {
        use pusher::websocket::frame::encode_header;
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            let mut wire = vec![0u8; 14];
            let header_bytes = encode_header(Opcode::Binary, len, &mut wire);
            wire.truncate(header_bytes);
            wire.extend((0..len).map(|i| (i % 251) as u8));
            wire.extend_from_slice(b"next");
            for cut in [0, 1, header_bytes - 1, header_bytes + len - 1] {
                if cut < header_bytes + len {
                    assert_eq!(
                        parse_server_frame(&wire[..cut], 1 << 20),
                        Ok(None),
                        "{len} cut {cut}"
                    );
                }
            }
            let frame = parse_server_frame(&wire, 1 << 20).unwrap().unwrap();
            assert_eq!(frame.opcode, OPCODE_BINARY);
            assert!(frame.fin);
            assert_eq!(frame.wire_bytes, header_bytes + len, "length {len}");
            assert_eq!(frame.payload, header_bytes..header_bytes + len);
            assert!(parse_server_frame(&wire, len.saturating_sub(1)).is_err() || len == 0);
        }
    }

    #[test]
    fn server_close_parses_and_masked_frames_are_refused() {
        use pusher::websocket::frame::encode_close;
        let mut wire = [0u8; 2 + 125];
        let written = encode_close(1001, "", &mut wire);
        let frame = parse_server_frame(&wire[..written], 1024).unwrap().unwrap();
        assert_eq!(frame.opcode, Opcode::Close.bits());
        assert_eq!(&wire[frame.payload], &1001u16.to_be_bytes());
        assert!(
            parse_server_frame(&close_frame(), 1024).is_err(),
            "client frames are masked"
        );
    }

    #[test]
    fn listen_request_is_a_websocket_upgrade() {
        let request = listen_request("127.0.0.1:8080", "idle-7", 16_000);
        assert!(
            request.starts_with("GET /v1/trigger/listen?uid=idle-7&sample_rate=16000 HTTP/1.1\r\n")
        );
        assert!(request.contains("\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(request.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(request.ends_with("\r\n\r\n"));
    }
}
