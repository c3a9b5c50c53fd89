//! The pusher wire protocol (docs/protocol.md §2 and §4), sans-I/O.
//!
//! [`decode`] turns one binary WebSocket message into an [`Inbound`] frame that borrows from the
//! message; [`encode_result`] writes one outbound 201 frame into a caller-provided buffer.
//!
//! Invariant: neither direction builds anything per frame. Decoded text (`segments`, `payload`,
//! `segment_ids`) is a slice of the message, ids are [`Id`]s stored inline, and unknown JSON fields
//! are skipped without being built (the one small allocation serde_json may still make is described
//! in `decode.rs`). Every [`FrameError`] maps to close `1007`.

mod decode;
mod encode;

pub use decode::decode;
pub use encode::{EncodeError, ResultOutcome, copy_fields, encode_result};

use std::fmt;

use crate::id::{Id, IdError};

/// Heartbeat: no action.
pub const HEARTBEAT: u32 = 100;
/// Audio: `f64 LE` timestamp ‖ PCM16 LE.
pub const AUDIO: u32 = 101;
/// Transcript segments: JSON `{"segments": [...], "memory_id": string or null}`.
pub const TRANSCRIPT: u32 = 102;
/// Current conversation: raw UTF-8 id.
pub const CONVERSATION: u32 = 103;
/// Process a conversation: JSON object with a string `conversation_id`.
pub const PROCESS_CONVERSATION: u32 = 104;
/// Speaker-sample request: JSON `{"person_id", "conversation_id", "segment_ids"}`.
pub const SPEAKER_SAMPLE: u32 = 105;
/// Outbound answer to a 104.
pub const RESULT: u32 = 201;

/// Bytes of the `u32 LE` header every message starts with.
pub const HEADER_BYTES: usize = 4;
/// Bytes of the `f64 LE` timestamp that starts a 101 payload.
pub const AUDIO_TIMESTAMP_BYTES: usize = 8;
/// Largest 101 timestamp accepted, in epoch seconds (year 33658). It keeps the batch object key,
/// which carries the timestamp with three decimals (docs/downstream.md §2), short.
pub const AUDIO_TIMESTAMP_SECONDS_MAX: f64 = 1e12;

/// Close code for every [`FrameError`]: invalid payload.
pub const CLOSE_INVALID_PAYLOAD: u16 = 1007;
/// Deepest nesting of arrays and objects accepted in a 102, 104 or 105 (serde_json's own
/// recursion limit, which does not apply to the values pusher skips or passes on raw).
pub const JSON_DEPTH_MAX: usize = 128;

/// One decoded inbound message, borrowing from the message bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Inbound<'a> {
    /// 100. Bytes after the header are ignored, as the Python service did.
    Heartbeat,
    /// 101. `pcm` is passed through as sent: it may be empty or of odd length.
    Audio {
        /// Epoch seconds of the first sample: finite, in `0 ..= AUDIO_TIMESTAMP_SECONDS_MAX`.
        timestamp: f64,
        /// PCM16 LE mono at the session's sample rate.
        pcm: &'a [u8],
    },
    /// 102. `segments` is the raw JSON array text; `memory_id` is `None` when null, absent or `""`.
    Transcript {
        /// The `segments` array, as JSON text.
        segments: &'a str,
        /// The conversation the 102 names, if any.
        memory_id: Option<Id>,
    },
    /// 103.
    Conversation(Id),
    /// 104. `payload` is the whole JSON object text, every field kept.
    ProcessConversation {
        /// The conversation to process.
        conversation_id: Id,
        /// The whole JSON object, as sent (without surrounding whitespace).
        payload: &'a str,
    },
    /// 105 with all three fields non-empty. `segment_ids` is the raw JSON array text.
    SpeakerSample {
        /// The person whose speaker sample is wanted.
        person_id: Id,
        /// The conversation the segments belong to.
        conversation_id: Id,
        /// The `segment_ids` array, as JSON text.
        segment_ids: &'a str,
    },
    /// 105 with a field missing, null or empty: ignored (docs/protocol.md §2).
    Ignored105,
    /// Any other header: ignored and counted by the caller.
    Unknown(u32),
}

/// Why a message was refused. Each one closes the session with `1007`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than its header needs: under 4 bytes, or a 101 with under 8 payload bytes.
    Truncated,
    /// A 101 timestamp that is not finite or not in `0..=AUDIO_TIMESTAMP_SECONDS_MAX`.
    BadTimestamp,
    /// A 102–105 payload that is not UTF-8.
    InvalidUtf8,
    /// A 102, 104 or 105 payload that is not JSON.
    InvalidJson,
    /// JSON of the wrong shape: not an object, a required field missing, a field of the wrong type.
    WrongShape,
    /// An id that fails the rule of docs/protocol.md §1.
    BadId(IdError),
    /// JSON nested deeper than [`JSON_DEPTH_MAX`].
    TooDeep,
}

impl FrameError {
    /// The WebSocket close code to send.
    pub fn close_code(&self) -> u16 {
        CLOSE_INVALID_PAYLOAD
    }

    /// A short close reason (well under the 123 bytes a close frame allows).
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Truncated => "message shorter than its header needs",
            FrameError::BadTimestamp => "bad audio timestamp",
            FrameError::InvalidUtf8 => "invalid UTF-8",
            FrameError::InvalidJson => "invalid JSON",
            FrameError::WrongShape => "JSON of the wrong shape",
            FrameError::TooDeep => "JSON nested too deep",
            FrameError::BadId(IdError::Empty) => "empty id",
            FrameError::BadId(IdError::TooLong) => "id longer than 128 bytes",
            FrameError::BadId(IdError::BadCharacter) => "id has a bad character",
            FrameError::BadId(IdError::DotPath) => "id is . or ..",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for FrameError {}
