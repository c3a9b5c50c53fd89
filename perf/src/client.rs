//! What the transcription service's client sends (docs/protocol.md §2 and §6), as masked client
//! frames: the single frames the frame cases decode and the whole session the `session` case
//! replays. Everything is a pure function of the constants below, so `record` always writes the
//! same bytes.

use pusher::protocol::{AUDIO, CONVERSATION, HEARTBEAT, PROCESS_CONVERSATION, TRANSCRIPT};
use pusher::websocket::Opcode;
use pusher::websocket::frame::{MASK_KEY_BYTES, encode_client_frame};

/// Masking key of every frame (the RFC 6455 §5.7 examples' key): non-zero, so unmasking really
/// changes the bytes.
const MASK_KEY: [u8; MASK_KEY_BYTES] = [0x37, 0xFA, 0x21, 0x3D];
/// The session's sample rate: 8 kHz PCM16, so one second of audio is `AUDIO_PCM_BYTES`.
pub const SAMPLE_RATE_HZ: u32 = 8000;
/// PCM bytes in each 101: the one second of audio the client buffers between sends.
pub const AUDIO_PCM_BYTES: usize = 16_000;
/// Seconds of audio in the recorded session.
pub const SESSION_SECONDS: u32 = 60;
/// The client's heartbeat period.
const HEARTBEAT_PERIOD_SECONDS: u32 = 20;
/// Transcript segments in each 102.
pub const SEGMENTS_PER_TRANSCRIPT: u32 = 4;
/// Epoch seconds of the session's first sample (2026-01-01T00:00:00Z).
const START_TIMESTAMP_SECONDS: f64 = 1_767_225_600.0;
pub const CONVERSATION_ID: &str = "perf-conversation-1";
/// Close code "normal closure" (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;
/// Words the transcript text is drawn from, in a fixed order.
const WORDS: [&str; 16] = [
    "so", "the", "meeting", "moved", "to", "thursday", "because", "everyone", "was", "out", "and",
    "we", "still", "need", "the", "numbers",
];
/// Words in each segment's text.
const WORDS_PER_SEGMENT: usize = 14;

/// One masked frame carrying the 101 of the session's first second.
pub fn audio_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    push_message_frame(AUDIO, &audio_payload(0), &mut frame);
    frame
}

/// One masked frame carrying the 102 of the session's first second.
pub fn transcript_frame() -> Vec<u8> {
    let mut frame = Vec::new();
    push_message_frame(TRANSCRIPT, transcript_payload(0).as_bytes(), &mut frame);
    frame
}

/// The whole client session: a 103, then each second a 101 and a 102, a 100 every 20 s, then
/// the 104 for the conversation and a Close.
pub fn session() -> Vec<u8> {
    let mut wire = Vec::new();
    push_message_frame(CONVERSATION, CONVERSATION_ID.as_bytes(), &mut wire);
    for second in 0..SESSION_SECONDS {
        push_message_frame(AUDIO, &audio_payload(second), &mut wire);
        push_message_frame(TRANSCRIPT, transcript_payload(second).as_bytes(), &mut wire);
        if (second + 1) % HEARTBEAT_PERIOD_SECONDS == 0 {
            push_message_frame(HEARTBEAT, &[], &mut wire);
        }
    }
    let process = format!(r#"{{"conversation_id":"{CONVERSATION_ID}","language":"en"}}"#);
    push_message_frame(PROCESS_CONVERSATION, process.as_bytes(), &mut wire);
    encode_client_frame(
        Opcode::Close,
        &CLOSE_NORMAL.to_be_bytes(),
        MASK_KEY,
        &mut wire,
    );
    wire
}

/// Appends a masked binary frame carrying the pusher message `u32 LE header` ‖ `payload`.
fn push_message_frame(header: u32, payload: &[u8], out: &mut Vec<u8>) {
    let mut message = Vec::with_capacity(4 + payload.len());
    message.extend_from_slice(&header.to_le_bytes());
    message.extend_from_slice(payload);
    encode_client_frame(Opcode::Binary, &message, MASK_KEY, out);
}

/// A 101 payload for `second`: its `f64 LE` timestamp, then one second of silence.
fn audio_payload(second: u32) -> Vec<u8> {
    let timestamp = START_TIMESTAMP_SECONDS + f64::from(second);
    let mut payload = timestamp.to_le_bytes().to_vec();
    payload.resize(payload.len() + AUDIO_PCM_BYTES, 0);
    payload
}

/// A 102 payload for `second`, shaped like the service's segments (~1 KB).
fn transcript_payload(second: u32) -> String {
    let segments: Vec<String> = (0..SEGMENTS_PER_TRANSCRIPT)
        .map(|index| segment_json(second, index))
        .collect();
    format!(
        r#"{{"segments":[{}],"memory_id":null}}"#,
        segments.join(",")
    )
}

fn segment_json(second: u32, index: u32) -> String {
    let text: Vec<&str> = (0..WORDS_PER_SEGMENT)
        .map(|word| WORDS[(second as usize * 7 + index as usize * 3 + word) % WORDS.len()])
        .collect();
    let speaker = index % 2;
    let start = f64::from(second) + f64::from(index) / f64::from(SEGMENTS_PER_TRANSCRIPT);
    let end = start + 1.0 / f64::from(SEGMENTS_PER_TRANSCRIPT);
    format!(
        r#"{{"id":"seg-{second}-{index}","text":"{}","speaker":"SPEAKER_0{speaker}","speaker_id":{speaker},"is_user":{},"person_id":null,"start":{start:.3},"end":{end:.3},"translations":[],"speech_profile_processed":true}}"#,
        text.join(" "),
        speaker == 0,
    )
}
