//! The per-session state machine of docs/protocol.md §3, sans-I/O.
//!
//! A [`Session`] is fed decoded frames ([`Session::on_frame`]), the passage of time
//! ([`Session::next_deadline`] / [`Session::on_deadline`]), the end of process-conversation calls
//! ([`Session::on_process_done`]) and its own end ([`Session::end`]); it answers with effects on
//! the caller's [`Outputs`]. Time is a caller-supplied monotonic [`Millis`]: the session never
//! reads a clock, performs I/O or spawns anything, so it is fully deterministic.
//!
//! Invariants:
//! - a private-cloud batch is open only while private cloud is enabled and a current conversation
//!   is known, and it always belongs to the current conversation: a change closes it first;
//! - between calls an open batch holds fewer than `R*2*batch_audio_seconds` bytes;
//! - an accumulator exists only when its consumer does, and never reallocates;
//! - at most `process_in_flight_max` ≤ [`PROCESS_IN_FLIGHT_LIMIT`] 104s are in flight;
//! - a session allocates only in [`Session::new`] (the accumulators' buffers) and on its first
//!   104 (the in-flight array, `in_flight.rs`), and its inline state stays a few hundred bytes
//!   (10,000 idle sessions per core are expected).

mod accumulator;
mod batch;
mod in_flight;
mod millis;
#[cfg(test)]
mod tests;

pub use in_flight::PROCESS_IN_FLIGHT_LIMIT;
pub use millis::Millis;

use accumulator::Accumulator;
use batch::Batch;
use in_flight::InFlight;

use crate::id::Id;
use crate::protocol::Inbound;
use crate::settings::UserSettings;

/// Lowest sample rate a session accepts (docs/protocol.md §1).
pub const SAMPLE_RATE_HZ_MIN: u32 = 8000;
/// Highest sample rate a session accepts (docs/protocol.md §1).
pub const SAMPLE_RATE_HZ_MAX: u32 = 48000;
/// Bytes per sample: PCM16 mono.
pub const PCM_BYTES_PER_SAMPLE: u32 = 2;
/// Seconds of audio the app-audio trigger accumulates before emitting (docs/protocol.md §3).
pub const APP_AUDIO_SECONDS: u32 = 4;
/// Longest accumulation (app trigger or developer webhook delay); it bounds an accumulator's
/// buffer.
pub const ACCUMULATOR_SECONDS_MAX: u32 = 60;
/// Seconds of audio after which a private-cloud batch closes (docs/protocol.md §3).
pub const BATCH_AUDIO_SECONDS: u32 = 60;
/// The 201 error sent at once for a 104 beyond the in-flight bound.
pub const BUSY: &str = "busy";

/// Why a private-cloud batch was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchCloseReason {
    /// It holds at least `R*2*batch_audio_seconds` bytes.
    Full,
    /// It turned `batch_age_ms_max` old.
    Age,
    /// The current conversation changed.
    ConversationChanged,
    /// The session ended.
    SessionEnded,
}

/// The effects of a session, implemented by the I/O layer.
pub trait Outputs {
    /// Opens a private-cloud batch of `uid` for `conversation`; `timestamp` is its first
    /// frame's, `sample_rate_hz` the session's.
    fn audio_batch_open(
        &mut self,
        uid: &Id,
        sample_rate_hz: u32,
        conversation: &Id,
        timestamp: f64,
    );
    /// Appends PCM to the open batch.
    fn audio_append(&mut self, pcm: &[u8]);
    /// Closes the open batch for `reason`.
    fn audio_batch_close(&mut self, reason: BatchCloseReason);
    /// One transcript item; `conversation` is the 102's memory_id or else the current one.
    fn transcript(&mut self, conversation: Option<&Id>, segments_json: &str);
    /// One app-audio item with all accumulated bytes.
    fn app_audio(&mut self, pcm: &[u8]);
    /// One developer-webhook audio item with all accumulated bytes.
    fn webhook_audio(&mut self, pcm: &[u8]);
    /// Starts a process-conversation call; its end must be reported with
    /// [`Session::on_process_done`].
    fn process_conversation(&mut self, conversation: &Id, payload_json: &str);
    /// One complete 105: `segment_ids_json` is its `segment_ids` array as JSON text
    /// (docs/downstream.md §4).
    fn speaker_sample(&mut self, person_id: &Id, conversation: &Id, segment_ids_json: &str);
    /// Sends a 201 error at once.
    fn result_error(&mut self, conversation: &Id, error: &str);
    /// A message with an unknown header was received (counted, otherwise ignored).
    fn unknown_header(&mut self, header: u32);
}

/// What a session does for its user, fixed when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    /// The user's `private_cloud_sync_enabled`: audio goes into batches in the spill log.
    pub private_cloud_enabled: bool,
    /// Some transcript consumer exists (an app, the user's webhook, or a global hook).
    pub transcripts_wanted: bool,
    /// Seconds the app-audio trigger accumulates; `None` when no app has `audio_bytes`.
    pub app_audio_seconds: Option<u32>,
    /// The developer audio webhook's delay; `None` when not configured; `Some(0)` sends every
    /// frame.
    pub webhook_audio_seconds: Option<u32>,
    /// Most 104s in flight at once (1 ..= [`PROCESS_IN_FLIGHT_LIMIT`]); beyond it a 104 is answered
    /// `busy`.
    pub process_in_flight_max: usize,
    /// Seconds of audio (`R*2` bytes each) at which a batch closes as full; above 0.
    pub batch_audio_seconds: u32,
    /// Age in milliseconds, from its opening, at which a batch closes.
    pub batch_age_ms_max: u64,
    /// The largest inbound message; it sizes the accumulators.
    pub message_bytes_max: usize,
}

impl Default for SessionConfig {
    fn default() -> SessionConfig {
        SessionConfig {
            private_cloud_enabled: true,
            transcripts_wanted: false,
            app_audio_seconds: None,
            webhook_audio_seconds: None,
            process_in_flight_max: 8,
            batch_audio_seconds: BATCH_AUDIO_SECONDS,
            batch_age_ms_max: 60_000,
            message_bytes_max: 1 << 20,
        }
    }
}

impl SessionConfig {
    /// The configuration a user's settings call for, with default limits. A webhook delay above
    /// [`ACCUMULATOR_SECONDS_MAX`] is clamped to it.
    pub fn from_settings(settings: &UserSettings, global_transcript_hooks: bool) -> SessionConfig {
        SessionConfig {
            private_cloud_enabled: settings.private_cloud_sync_enabled,
            transcripts_wanted: global_transcript_hooks || settings.has_transcript_target(),
            app_audio_seconds: settings.has_audio_app().then_some(APP_AUDIO_SECONDS),
            webhook_audio_seconds: settings
                .audio_bytes_webhook
                .as_ref()
                .map(|webhook| webhook.delay_seconds.min(ACCUMULATOR_SECONDS_MAX)),
            ..SessionConfig::default()
        }
    }
}

/// Cheap per-session counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// PCM bytes received in 101s.
    pub audio_bytes: u64,
    /// 100s received.
    pub heartbeat_frames: u32,
    /// 101s received (empty ones included).
    pub audio_frames: u32,
    /// 102s received.
    pub transcript_frames: u32,
    /// 103s received.
    pub conversation_frames: u32,
    /// 104s received (duplicates and `busy` ones included).
    pub process_conversation_frames: u32,
    /// Complete 105s received.
    pub speaker_sample_frames: u32,
    /// 105s ignored for an empty field.
    pub ignored_speaker_sample_frames: u32,
    /// Messages with an unknown header.
    pub unknown_frames: u32,
    /// 104s not sent again because the same conversation was in flight.
    pub process_duplicates: u32,
    /// 104s answered `busy`.
    pub process_busy: u32,
}

/// One WebSocket session's state.
pub struct Session {
    uid: Id,
    conversation: Option<Id>,
    sample_rate_hz: u32,
    private_cloud_enabled: bool,
    transcripts_wanted: bool,
    ended: bool,
    /// The latest time seen.
    now: Millis,
    batch: Batch,
    app_audio: Option<Accumulator>,
    webhook_audio: Option<Accumulator>,
    in_flight: InFlight,
    counters: SessionCounters,
}

impl Session {
    /// A session of `uid` at `sample_rate_hz` (asserted within [`SAMPLE_RATE_HZ_MIN`] ..=
    /// [`SAMPLE_RATE_HZ_MAX`]) with no conversation; allocates its accumulators here, sized
    /// threshold + one message.
    pub fn new(uid: Id, sample_rate_hz: u32, config: SessionConfig) -> Session {
        assert!(
            (SAMPLE_RATE_HZ_MIN..=SAMPLE_RATE_HZ_MAX).contains(&sample_rate_hz),
            "sample rate out of range"
        );
        assert!(config.batch_audio_seconds > 0);
        for seconds in [config.app_audio_seconds, config.webhook_audio_seconds] {
            assert!(
                seconds.unwrap_or(0) <= ACCUMULATOR_SECONDS_MAX,
                "accumulation longer than ACCUMULATOR_SECONDS_MAX"
            );
        }
        let bytes_per_second = sample_rate_hz * PCM_BYTES_PER_SAMPLE;
        let accumulator = |seconds: u32| {
            let threshold_bytes = (bytes_per_second * seconds) as usize;
            Accumulator::new(threshold_bytes, config.message_bytes_max)
        };
        Session {
            uid,
            conversation: None,
            sample_rate_hz,
            private_cloud_enabled: config.private_cloud_enabled,
            transcripts_wanted: config.transcripts_wanted,
            ended: false,
            now: Millis(0),
            batch: Batch::new(
                u64::from(bytes_per_second) * u64::from(config.batch_audio_seconds),
                config.batch_age_ms_max,
            ),
            app_audio: config.app_audio_seconds.map(accumulator),
            webhook_audio: config.webhook_audio_seconds.map(accumulator),
            in_flight: InFlight::new(config.process_in_flight_max),
            counters: SessionCounters::default(),
        }
    }

    /// The session's user.
    pub fn uid(&self) -> &Id {
        &self.uid
    }

    /// The session's sample rate in Hz.
    pub fn sample_rate_hz(&self) -> u32 {
        self.sample_rate_hz
    }

    /// The current conversation, if any frame set one.
    pub fn conversation(&self) -> Option<&Id> {
        self.conversation.as_ref()
    }

    /// The session's frame counters so far.
    pub fn counters(&self) -> &SessionCounters {
        &self.counters
    }

    /// Process-conversation calls started and not yet reported done.
    pub fn process_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// True once [`Session::end`] was called.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Applies one decoded frame received at `now`. Not to be called after [`Session::end`].
    pub fn on_frame(&mut self, frame: Inbound<'_>, now: Millis, out: &mut impl Outputs) {
        debug_assert!(!self.ended, "frame after the session ended");
        if self.ended {
            return;
        }
        self.advance(now);
        match frame {
            Inbound::Heartbeat => bump(&mut self.counters.heartbeat_frames),
            Inbound::Audio { timestamp, pcm } => self.on_audio(timestamp, pcm, out),
            Inbound::Transcript {
                segments,
                memory_id,
            } => self.on_transcript(segments, memory_id, out),
            Inbound::Conversation(conversation) => {
                bump(&mut self.counters.conversation_frames);
                self.set_conversation(conversation, out);
            }
            Inbound::ProcessConversation {
                conversation_id,
                payload,
            } => self.on_process_conversation(&conversation_id, payload, out),
            Inbound::SpeakerSample {
                person_id,
                conversation_id,
                segment_ids,
            } => {
                bump(&mut self.counters.speaker_sample_frames);
                out.speaker_sample(&person_id, &conversation_id, segment_ids);
            }
            Inbound::Ignored105 => bump(&mut self.counters.ignored_speaker_sample_frames),
            Inbound::Unknown(header) => {
                bump(&mut self.counters.unknown_frames);
                out.unknown_header(header);
            }
        }
    }

    /// True while a private-cloud batch is open (ending the session writes its close).
    pub fn has_open_batch(&self) -> bool {
        self.batch.is_open()
    }

    /// When [`Session::on_deadline`] must next be called: the open batch's age limit.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.batch.deadline()
    }

    /// Closes the open batch if it has reached its age limit by `now`.
    pub fn on_deadline(&mut self, now: Millis, out: &mut impl Outputs) {
        if self.ended {
            return;
        }
        self.advance(now);
        if self.batch.is_due(self.now) {
            self.close_batch(BatchCloseReason::Age, out);
        }
    }

    /// Frees the in-flight slot of `conversation` once its call ended (answered, failed or timed
    /// out). `false` when it was not in flight.
    pub fn on_process_done(&mut self, conversation: &Id) -> bool {
        self.in_flight.remove(conversation)
    }

    /// Ends the session: closes the open batch and forgets in-flight calls (the caller cancels
    /// them). Audio accumulated below an emit threshold is dropped, as before. Idempotent.
    pub fn end(&mut self, now: Millis, out: &mut impl Outputs) {
        if self.ended {
            return;
        }
        self.advance(now);
        self.close_batch(BatchCloseReason::SessionEnded, out);
        self.in_flight.clear();
        self.ended = true;
    }

    fn advance(&mut self, now: Millis) {
        debug_assert!(now >= self.now, "time went backwards");
        self.now = self.now.max(now);
    }

    fn on_audio(&mut self, timestamp: f64, pcm: &[u8], out: &mut impl Outputs) {
        bump(&mut self.counters.audio_frames);
        self.counters.audio_bytes += pcm.len() as u64;
        if pcm.is_empty() {
            return;
        }
        self.store(timestamp, pcm, out);
        if let Some(app_audio) = &mut self.app_audio {
            app_audio.append(pcm, |all| out.app_audio(all));
        }
        if let Some(webhook_audio) = &mut self.webhook_audio {
            webhook_audio.append(pcm, |all| out.webhook_audio(all));
        }
    }

    /// Appends to the current conversation's batch, opening and closing batches as due.
    fn store(&mut self, timestamp: f64, pcm: &[u8], out: &mut impl Outputs) {
        if !self.private_cloud_enabled {
            return;
        }
        let Some(conversation) = &self.conversation else {
            return;
        };
        if self.batch.is_due(self.now) {
            self.batch.close();
            out.audio_batch_close(BatchCloseReason::Age);
        }
        if !self.batch.is_open() {
            self.batch.open(self.now);
            out.audio_batch_open(&self.uid, self.sample_rate_hz, conversation, timestamp);
        }
        out.audio_append(pcm);
        if self.batch.append(pcm.len()) {
            self.close_batch(BatchCloseReason::Full, out);
        }
    }

    fn on_transcript(&mut self, segments: &str, memory_id: Option<Id>, out: &mut impl Outputs) {
        bump(&mut self.counters.transcript_frames);
        if let Some(memory_id) = memory_id {
            self.set_conversation(memory_id, out);
        }
        if self.transcripts_wanted {
            out.transcript(self.conversation.as_ref(), segments);
        }
    }

    /// Makes `conversation` current, closing the old conversation's batch first.
    fn set_conversation(&mut self, conversation: Id, out: &mut impl Outputs) {
        if self.conversation.as_ref() == Some(&conversation) {
            return;
        }
        self.close_batch(BatchCloseReason::ConversationChanged, out);
        self.conversation = Some(conversation);
    }

    fn on_process_conversation(
        &mut self,
        conversation: &Id,
        payload: &str,
        out: &mut impl Outputs,
    ) {
        bump(&mut self.counters.process_conversation_frames);
        if self.in_flight.contains(conversation) {
            bump(&mut self.counters.process_duplicates);
            return;
        }
        if self.in_flight.is_full() {
            bump(&mut self.counters.process_busy);
            out.result_error(conversation, BUSY);
            return;
        }
        self.in_flight.insert(conversation);
        out.process_conversation(conversation, payload);
    }

    fn close_batch(&mut self, reason: BatchCloseReason, out: &mut impl Outputs) {
        if self.batch.close() {
            out.audio_batch_close(reason);
        }
    }
}

fn bump(counter: &mut u32) {
    *counter = counter.saturating_add(1);
}
