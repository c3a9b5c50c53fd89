//! The measured cases. Each `perf_case_*` function is `#[inline(never)]` and its name is unique,
//! so callgrind's `--toggle-collect=*perf_case_<name>*` counts exactly one call of it (and all it
//! calls) per iteration. Buffers are allocated and frames copied in outside them, as the server's
//! buffer pool and `recv` do, so only the receive path is counted. They contain no closures: a
//! closure's symbol would carry the case's name and toggle collection off again.

use std::hint::black_box;

use pusher::id::Id;
use pusher::protocol::{self, Inbound};
use pusher::session::{
    APP_AUDIO_SECONDS, BatchCloseReason, Millis, Outputs, Session, SessionConfig,
};
use pusher::websocket::{Decoder, DecoderLimits, Event, MessageKind};

use crate::client;

/// The server's default limits (`max_message_bytes` = 1 MiB).
const LIMITS: DecoderLimits = DecoderLimits {
    max_message_bytes: 1 << 20,
};
/// Bytes handed to the decoder per simulated `recv` when a session is replayed.
const RECV_BYTES: usize = 64 * 1024;
/// The simulated clock's step after each 101: the client sends one per second.
const AUDIO_PERIOD_MS: u64 = 1000;
const UID: &str = "perf-user";

/// Copies `frame` into a receive buffer and runs `decode_frame` on it, `iterations` times.
pub fn repeat_frame_decode(
    frame: &[u8],
    iterations: u32,
    decode_frame: fn(&mut [u8], usize) -> usize,
) {
    let mut buf = vec![0; Decoder::buffer_bytes_required(LIMITS)];
    for _ in 0..iterations {
        buf[..frame.len()].copy_from_slice(frame);
        black_box(decode_frame(black_box(&mut buf), frame.len()));
    }
}

/// Decodes the masked 101 frame in `buf[..filled]`; returns its PCM length.
#[inline(never)]
pub fn perf_case_decode_audio_frame(buf: &mut [u8], filled: usize) -> usize {
    match decode_single_message(buf, filled) {
        Inbound::Audio { pcm, .. } => pcm.len(),
        other => panic!("expected a 101, decoded {other:?}"),
    }
}

/// Decodes the masked 102 frame in `buf[..filled]`; returns the length of its segments JSON.
#[inline(never)]
pub fn perf_case_decode_transcript_frame(buf: &mut [u8], filled: usize) -> usize {
    match decode_single_message(buf, filled) {
        Inbound::Transcript { segments, .. } => segments.len(),
        other => panic!("expected a 102, decoded {other:?}"),
    }
}

/// The one binary message in `buf[..filled]`, unmasked and decoded as a pusher frame.
fn decode_single_message(buf: &mut [u8], filled: usize) -> Inbound<'_> {
    let mut decoder = Decoder::new(LIMITS);
    let event = decoder.decode(buf, filled).expect("a valid frame");
    let Some(Event::Message {
        kind: MessageKind::Binary,
        payload,
    }) = event
    else {
        panic!("expected one whole binary message, decoded {event:?}");
    };
    protocol::decode(&buf[payload]).expect("a valid pusher frame")
}

/// Replays the recorded session `wire`, `iterations` times.
pub fn repeat_session_replay(wire: &[u8], iterations: u32) {
    let mut buf = vec![0; Decoder::buffer_bytes_required(LIMITS)];
    for _ in 0..iterations {
        black_box(perf_case_replay_session(black_box(wire), &mut buf));
    }
}

/// Feeds the client bytes `wire` through the server's receive path, `RECV_BYTES` per read: the
/// WebSocket decoder, `protocol::decode` and a [`Session`] with private cloud, transcripts and
/// an app-audio trigger on. The clock advances one second with each 101; due batch deadlines
/// fire as the server's housekeeping tick would fire them; the Close ends the session.
#[inline(never)]
pub fn perf_case_replay_session(wire: &[u8], buf: &mut [u8]) -> OutputCounts {
    let uid = Id::parse(UID.as_bytes()).expect("a valid uid");
    let mut session = Session::new(uid, client::SAMPLE_RATE_HZ, session_config());
    let mut outputs = OutputCounts::default();
    let mut decoder = Decoder::new(LIMITS);
    let mut now = Millis(0);
    let mut filled = 0;
    for read in wire.chunks(RECV_BYTES) {
        buf[filled..filled + read.len()].copy_from_slice(read);
        filled += read.len();
        while let Some(event) = decoder.decode(buf, filled).expect("a valid session") {
            match event {
                Event::Message {
                    kind: MessageKind::Binary,
                    payload,
                } => {
                    let frame = protocol::decode(&buf[payload]).expect("a valid pusher frame");
                    let is_audio = matches!(frame, Inbound::Audio { .. });
                    session.on_frame(frame, now, &mut outputs);
                    if is_audio {
                        now = now.saturating_add_ms(AUDIO_PERIOD_MS);
                    }
                    if let Some(deadline) = session.next_deadline()
                        && deadline <= now
                    {
                        session.on_deadline(now, &mut outputs);
                    }
                }
                Event::Close { .. } => session.end(now, &mut outputs),
                other => panic!("unexpected event in the recorded session: {other:?}"),
            }
        }
        filled = decoder.compact(buf, filled);
    }
    outputs
}

fn session_config() -> SessionConfig {
    SessionConfig {
        private_cloud_enabled: true,
        transcripts_wanted: true,
        app_audio_seconds: Some(APP_AUDIO_SECONDS),
        message_bytes_max: LIMITS.max_message_bytes,
        ..SessionConfig::default()
    }
}

/// An [`Outputs`] that only counts what the session hands on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct OutputCounts {
    pub batches_opened: u32,
    pub audio_bytes_appended: u64,
    pub batches_closed_full: u32,
    pub batches_closed_other: u32,
    pub transcripts: u32,
    pub app_audio_items: u32,
    pub webhook_audio_items: u32,
    pub process_calls: u32,
    pub speaker_samples: u32,
    pub result_errors: u32,
    pub unknown_headers: u32,
}

impl Outputs for OutputCounts {
    fn audio_batch_open(
        &mut self,
        _uid: &Id,
        _sample_rate_hz: u32,
        _conversation: &Id,
        _timestamp: f64,
    ) {
        self.batches_opened += 1;
    }

    fn audio_append(&mut self, pcm: &[u8]) {
        self.audio_bytes_appended += pcm.len() as u64;
    }

    fn audio_batch_close(&mut self, reason: BatchCloseReason) {
        match reason {
            BatchCloseReason::Full => self.batches_closed_full += 1,
            _ => self.batches_closed_other += 1,
        }
    }

    fn transcript(&mut self, _conversation: Option<&Id>, _segments_json: &str) {
        self.transcripts += 1;
    }

    fn app_audio(&mut self, _pcm: &[u8]) {
        self.app_audio_items += 1;
    }

    fn webhook_audio(&mut self, _pcm: &[u8]) {
        self.webhook_audio_items += 1;
    }

    fn process_conversation(&mut self, _conversation: &Id, _payload_json: &str) {
        self.process_calls += 1;
    }

    fn speaker_sample(&mut self, _person_id: &Id, _conversation: &Id, _segment_ids_json: &str) {
        self.speaker_samples += 1;
    }

    fn result_error(&mut self, _conversation: &Id, _error: &str) {
        self.result_errors += 1;
    }

    fn unknown_header(&mut self, _header: u32) {
        self.unknown_headers += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session_bin_path() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("instructions/session.bin")
    }

    #[test]
    fn checked_in_session_is_what_record_writes() {
        let checked_in = std::fs::read(session_bin_path()).expect("perf/instructions/session.bin");
        assert!(
            checked_in == client::session(),
            "session.bin differs from `pusher-perf record`: re-record it and update the baseline"
        );
    }

    #[test]
    fn session_replay_hands_on_everything_the_client_sent() {
        let wire = client::session();
        let mut buf = vec![0; Decoder::buffer_bytes_required(LIMITS)];
        let seconds = client::SESSION_SECONDS;
        let expected = OutputCounts {
            batches_opened: 1,
            audio_bytes_appended: u64::from(seconds) * client::AUDIO_PCM_BYTES as u64,
            batches_closed_full: 1,
            transcripts: seconds,
            // An item goes once more than APP_AUDIO_SECONDS are held: every fifth 1-second 101.
            app_audio_items: seconds / (APP_AUDIO_SECONDS + 1),
            process_calls: 1,
            ..OutputCounts::default()
        };
        assert_eq!(perf_case_replay_session(&wire, &mut buf), expected);
        assert_eq!(
            perf_case_replay_session(&wire, &mut buf),
            expected,
            "a second replay in the same buffer"
        );
    }

    #[test]
    fn frame_cases_decode_their_messages() {
        let mut buf = vec![0; Decoder::buffer_bytes_required(LIMITS)];
        let audio = client::audio_frame();
        buf[..audio.len()].copy_from_slice(&audio);
        assert_eq!(
            perf_case_decode_audio_frame(&mut buf, audio.len()),
            client::AUDIO_PCM_BYTES
        );

        let transcript = client::transcript_frame();
        assert!(
            (900..1200).contains(&transcript.len()),
            "a ~1 KB 102: {} bytes",
            transcript.len()
        );
        buf[..transcript.len()].copy_from_slice(&transcript);
        let segments_bytes = perf_case_decode_transcript_frame(&mut buf, transcript.len());
        assert!(segments_bytes > 800, "{segments_bytes} bytes of segments");
    }
}
