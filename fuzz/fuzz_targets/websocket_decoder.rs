//! The WebSocket decoder on arbitrary client bytes, fed in arbitrary pieces: it never panics,
//! never reads past what it was given, and `compact` keeps only what it still needs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pusher::websocket::{Decoder, DecoderLimits, Event};

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let limits = DecoderLimits {
        max_message_bytes: 4096,
    };
    let mut decoder = Decoder::new(limits);
    let mut buf = vec![0u8; Decoder::buffer_bytes_required(limits)];
    let mut filled = 0;
    // Deliver the bytes in pieces of 1..=256 bytes (the first byte picks the size).
    let piece = usize::from(split) + 1;
    for chunk in bytes.chunks(piece) {
        let room = buf.len() - filled;
        let take = chunk.len().min(room);
        buf[filled..filled + take].copy_from_slice(&chunk[..take]);
        filled += take;
        loop {
            match decoder.decode(&mut buf, filled) {
                Ok(Some(Event::Message { payload, .. } | Event::Ping { payload })) => {
                    assert!(payload.end <= filled, "a payload inside what was given");
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(violation) => {
                    assert!(pusher::websocket::close::is_valid_on_wire(violation.code));
                    return;
                }
            }
        }
        filled = decoder.compact(&mut buf, filled);
        assert!(filled <= buf.len());
        if take < chunk.len() {
            // The buffer is full without a complete frame: the decoder's size admits every
            // message within the limits, so this cannot be a valid stream.
            return;
        }
    }
});
