//! The pusher frame decoder (100–105) on arbitrary messages: it never panics, every refusal is
//! a 1007, and what it accepts is what the protocol allows.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pusher::protocol::{self, Inbound};

fuzz_target!(|data: &[u8]| {
    match protocol::decode(data) {
        Ok(Inbound::Audio { timestamp, pcm }) => {
            assert!(timestamp.is_finite() && timestamp >= 0.0);
            assert_eq!(pcm.len() + 12, data.len());
        }
        Ok(Inbound::Transcript { segments, .. }) => assert!(segments.starts_with('[')),
        Ok(Inbound::ProcessConversation { payload, .. }) => assert!(payload.starts_with('{')),
        Ok(_) => {}
        Err(error) => {
            assert_eq!(error.close_code(), 1007);
            assert!(!error.reason().is_empty());
        }
    }
});
