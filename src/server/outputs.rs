//! Where a session's effects go on this core: private-cloud audio to the spill log (through
//! the core's hand-off ring), droppable items to the rings between the session and egress
//! (started by `delivery`), speaker-sample requests to the core's delay queue, 104s to egress as
//! process calls, immediate 201 replies to the connection.
//!
//! Invariants: a session that writes audio is only fed a message when the hand-off ring has room
//! for every record that message can produce ([`spill_ready`]), so a record is never refused;
//! droppable payloads live only in the core's arena; a ring exists only while its stream has a
//! consumer; replies are encoded into the core's reply buffer, whose capacity is fixed at start
//! (one frame yields at most one reply).

use std::ops::Range;

use std::sync::Arc;

use super::core::{Core, REPLY_BYTES_MAX};
use super::delivery;
use super::slots::Slot;
use super::streams::{AUDIO_FOR_APPS, AUDIO_FOR_WEBHOOK, Item, SessionEgress, SpillState, Streams};
use crate::egress::Ticket;
use crate::egress::delay::Owner;
use crate::egress::job::{Job, Work};
use crate::http::admission::ListenParams;
use crate::id::Id;
use crate::metrics::{FrameKind, Stream};
use crate::payload::{DropOldestRing, Handle, PayloadArena};
use crate::protocol::{self, Inbound, ResultOutcome};
use crate::session::{BUSY, BatchCloseReason, Millis, Outputs, Session, SessionConfig};
use crate::settings::UserSettings;
use crate::spill::record::BatchOpen;
use crate::websocket::frame::{self, Opcode};

/// Copies `parts` into one new arena block; `None` when the arena refuses it.
fn alloc_parts(arena: &mut PayloadArena, parts: &[&[u8]]) -> Option<Handle> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let handle = arena.alloc(len)?;
    let block = arena.get_mut(handle).expect("just allocated");
    let mut at = 0;
    for part in parts {
        block[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    Some(handle)
}

/// The 201 error for every 104 when no processor URL is configured.
const PROCESSOR_NOT_CONFIGURED: &str = "processor_not_configured";
/// The 201 error for a 104 larger than `process_payload_bytes_max`.
const PAYLOAD_TOO_LARGE: &str = "payload_too_large";

/// True when the slot's session may be fed a message now: it does not write audio, or the
/// spill log is below its disk budget and the core's hand-off ring has room for anything the
/// message can produce. Otherwise the connection is not read (backpressure).
pub fn spill_ready(core: &Core, key: usize) -> bool {
    let writes = core.slots.with(key, |slot| slot.streams.spill.writes);
    !writes
        || (!core.spill.shared.is_full()
            && core.spill.ring.free_bytes() >= core.spill.bytes_per_message)
}

/// True when every record the slot's session wrote is durable (its close may be acknowledged).
pub fn spill_durable(core: &Core, key: usize) -> bool {
    let position = core
        .slots
        .with(key, |slot| slot.streams.spill.last_position);
    core.spill.ring.is_durable(position)
}

/// Opens a session for `params` with the user's settings; its accumulators come out of the
/// core's accumulator budget (a session that cannot get one runs without it, counted).
pub fn open_session(core: &Core, params: ListenParams, settings: Arc<UserSettings>) -> Slot {
    let config = &core.shared.config;
    let mut session_config =
        SessionConfig::from_settings(&settings, !config.transcript_hooks.is_empty());
    session_config.process_in_flight_max = config.process_in_flight_per_session_max;
    session_config.message_bytes_max = config.message_bytes_max;
    let bytes_per_second = params.sample_rate_hz as usize * 2;
    let mut accumulator_bytes = 0;
    for seconds in [
        &mut session_config.app_audio_seconds,
        &mut session_config.webhook_audio_seconds,
    ] {
        let Some(s) = *seconds else { continue };
        let s = s.min(config.webhook_audio_delay_s_max);
        let bytes = bytes_per_second * s as usize + config.message_bytes_max;
        if core.accumulator_bytes_free.get() >= bytes {
            core.accumulator_bytes_free
                .set(core.accumulator_bytes_free.get() - bytes);
            accumulator_bytes += bytes;
            *seconds = Some(s);
        } else {
            core.shared.metrics.accumulators_refused.inc();
            *seconds = None;
        }
    }
    let audio_consumer = session_config.app_audio_seconds.is_some()
        || session_config.webhook_audio_seconds.is_some();
    let streams = Streams {
        transcript: session_config
            .transcripts_wanted
            .then(|| Box::new(DropOldestRing::new(config.transcript_ring_capacity))),
        audio_bytes: audio_consumer
            .then(|| Box::new(DropOldestRing::new(config.audio_bytes_ring_capacity))),
        accumulator_bytes,
        spill: SpillState {
            writes: session_config.private_cloud_enabled,
            level: settings.data_protection_level,
            batch: 0,
            last_position: 0,
            waits_for_room: false,
        },
        egress: SessionEgress::new(Some(settings)),
    };
    core.shared
        .egress_metrics
        .accumulator_bytes
        .inc_by(accumulator_bytes as i64);
    let session = Session::new(params.uid, params.sample_rate_hz, session_config);
    Slot::new(Some(session), streams)
}

/// Replies produced by one step, as a range of the core's reply buffer.
pub struct Replies {
    /// Where the 201 frames are in `Core::replies`.
    pub range: Range<usize>,
}

/// Feeds one decoded frame of `message_bytes` to the slot's session.
pub fn on_frame(
    core: &Core,
    key: usize,
    frame: Inbound<'_>,
    message_bytes: usize,
    now: Millis,
) -> Replies {
    core.shared.metrics.frame(frame_kind(&frame), message_bytes);
    step(core, key, |session, out| session.on_frame(frame, now, out))
}

/// Runs the session's timer (batch age) if it is due and the hand-off has room for the close
/// record (else it stays due and runs on a later tick).
pub fn on_deadline(core: &Core, key: usize, now: Millis) -> Replies {
    let room = spill_ready(core, key);
    step(core, key, |session, out| {
        if room && session.next_deadline().is_some_and(|at| at <= now) {
            session.on_deadline(now, out);
        }
    })
}

/// Ends the slot's session (closing its open batch) once the hand-off has room for the close
/// record; false if it must be tried again later.
pub fn end_session(core: &Core, key: usize, now: Millis) -> bool {
    let (ended, open_batch) = core.slots.with(key, |slot| match &slot.session {
        Some(session) => (session.is_ended(), session.has_open_batch()),
        None => (true, false),
    });
    if ended {
        return true;
    }
    if open_batch && !core.spill.ring.has_room_for_batch_close() {
        return false;
    }
    step(core, key, |session, out| session.end(now, out));
    core.slots.with(key, |slot| slot.streams.egress.cancel());
    true
}

/// Frees what a closed slot held: ring items, its accumulator share, unsent 201s (counted).
pub fn release(core: &Core, mut slot: Slot) {
    let mut arena = core.arena.borrow_mut();
    let metrics = &core.shared.egress_metrics;
    for ring in [&mut slot.streams.transcript, &mut slot.streams.audio_bytes]
        .into_iter()
        .flatten()
    {
        let discarded = ring.clear(&mut arena);
        metrics.items_discarded_at_end.inc_by(discarded as u64);
    }
    core.accumulator_bytes_free
        .set(core.accumulator_bytes_free.get() + slot.streams.accumulator_bytes);
    metrics
        .accumulator_bytes
        .dec_by(slot.streams.accumulator_bytes as i64);
    let unsent = slot.streams.egress.replies.len() as u64;
    metrics.process_replies_dropped.inc_by(unsent);
}

/// Takes the 201 payloads egress answered for the slot's session (the connection sends them).
pub fn take_replies(core: &Core, key: usize) -> super::streams::Replies {
    core.slots
        .with(key, |slot| std::mem::take(&mut slot.streams.egress.replies))
}

fn step(core: &Core, key: usize, f: impl FnOnce(&mut Session, &mut CoreOutputs<'_>)) -> Replies {
    let mut replies = core.replies.borrow_mut();
    replies.clear();
    let mut arena = core.arena.borrow_mut();
    let evicted_before = arena.evicted_blocks();
    core.slots.with(key, |slot| {
        let ticket = Ticket {
            key,
            generation: slot.generation(),
        };
        let Some(session) = slot.session.as_mut() else {
            return;
        };
        let duplicates_before = session.counters().process_duplicates;
        let mut out = CoreOutputs {
            core,
            ticket,
            uid: *session.uid(),
            sample_rate_hz: session.sample_rate_hz(),
            streams: &mut slot.streams,
            arena: &mut arena,
            replies: &mut replies,
            done: None,
            wrote_spill: false,
        };
        f(session, &mut out);
        if let Some(conversation) = out.done.take() {
            session.on_process_done(&conversation);
        }
        if out.wrote_spill {
            core.spill.ring.wake(&core.spill.writer);
        }
        let duplicates = session.counters().process_duplicates - duplicates_before;
        core.shared
            .egress_metrics
            .process_duplicates
            .inc_by(u64::from(duplicates));
        if !session.is_ended() {
            delivery::dispatch(core, ticket, session, &mut slot.streams, &mut arena);
        }
    });
    let evicted = arena.evicted_blocks() - evicted_before;
    if evicted > 0 {
        core.shared.metrics.ring_arena_evictions.inc_by(evicted);
    }
    Replies {
        range: 0..replies.len(),
    }
}

fn frame_kind(frame: &Inbound<'_>) -> FrameKind {
    match frame {
        Inbound::Heartbeat => FrameKind::Heartbeat,
        Inbound::Audio { .. } => FrameKind::Audio,
        Inbound::Transcript { .. } => FrameKind::Transcript,
        Inbound::Conversation(_) => FrameKind::Conversation,
        Inbound::ProcessConversation { .. } => FrameKind::ProcessConversation,
        Inbound::SpeakerSample { .. } | Inbound::Ignored105 => FrameKind::SpeakerSample,
        Inbound::Unknown(_) => FrameKind::Unknown,
    }
}

/// The session's effects on this core.
struct CoreOutputs<'a> {
    core: &'a Core,
    ticket: Ticket,
    uid: Id,
    sample_rate_hz: u32,
    streams: &'a mut Streams,
    arena: &'a mut PayloadArena,
    replies: &'a mut Vec<u8>,
    /// A process request answered during this step (at most one per frame).
    done: Option<Id>,
    /// A record went to the hand-off ring: wake the writer.
    wrote_spill: bool,
}

impl CoreOutputs<'_> {
    /// Records where the session's latest record ends in the hand-off ring (once that
    /// position is durable, all of the session's audio is).
    fn spilled(&mut self, pushed: Option<u64>) {
        let position = pushed.expect("spill_ready checked the hand-off has room for this message");
        debug_assert!(position > self.streams.spill.last_position);
        self.streams.spill.last_position = position;
        self.wrote_spill = true;
    }

    /// Copies `parts` into one arena block and queues it on `stream`'s ring.
    fn push(&mut self, stream: Stream, parts: &[&[u8]]) {
        let Some(ring) = self.streams.ring_mut(stream) else {
            return;
        };
        let Some(handle) = alloc_parts(self.arena, parts) else {
            self.core.shared.metrics.ring_dropped(stream, 1);
            return;
        };
        let dropped_before = ring.dropped();
        ring.push(Item { handle }, self.arena);
        self.core.shared.metrics.ring_len_seen(stream, ring.len());
        let dropped = ring.dropped() - dropped_before;
        if dropped > 0 {
            self.core.shared.metrics.ring_dropped(stream, dropped);
        }
    }

    /// Appends a 201 error frame to the replies.
    fn reply_error(&mut self, conversation: &Id, error: &str) {
        let mut payload = [0u8; REPLY_BYTES_MAX - frame::HEADER_BYTES_MAX];
        let Ok(len) =
            protocol::encode_result(&mut payload, conversation, ResultOutcome::Error(error))
        else {
            tracing::error!(conversation = %conversation, "201 reply does not fit REPLY_BYTES_MAX");
            return;
        };
        let mut header = [0u8; frame::HEADER_BYTES_MAX];
        let header_len = frame::encode_header(Opcode::Binary, len, &mut header);
        assert!(
            self.replies.len() + header_len + len <= self.replies.capacity(),
            "reply buffer never grows"
        );
        self.replies.extend_from_slice(&header[..header_len]);
        self.replies.extend_from_slice(&payload[..len]);
        self.core.shared.metrics.results_sent.inc();
    }
}

impl Outputs for CoreOutputs<'_> {
    fn audio_batch_open(
        &mut self,
        uid: &Id,
        sample_rate_hz: u32,
        conversation: &Id,
        timestamp: f64,
    ) {
        self.streams.spill.batch = self.core.spill.next_batch();
        let open = BatchOpen {
            uid: *uid,
            conversation: *conversation,
            timestamp,
            sample_rate_hz,
            level: self.streams.spill.level,
        };
        let batch = self.streams.spill.batch;
        self.spilled(self.core.spill.ring.push_batch_open(batch, &open));
    }

    fn audio_append(&mut self, pcm: &[u8]) {
        let batch = self.streams.spill.batch;
        self.spilled(self.core.spill.ring.push_audio(batch, pcm));
    }

    fn audio_batch_close(&mut self, reason: BatchCloseReason) {
        let batch = self.streams.spill.batch;
        self.spilled(self.core.spill.ring.push_batch_close(batch, reason));
    }

    fn transcript(&mut self, conversation: Option<&Id>, segments_json: &str) {
        let conversation = conversation.map_or("", |id| id.as_str()).as_bytes();
        let conversation_len = [conversation.len() as u8];
        self.push(
            Stream::Transcript,
            &[&conversation_len, conversation, segments_json.as_bytes()],
        );
    }

    fn app_audio(&mut self, pcm: &[u8]) {
        self.push(Stream::AudioBytes, &[&[AUDIO_FOR_APPS], pcm]);
    }

    fn webhook_audio(&mut self, pcm: &[u8]) {
        self.push(Stream::AudioBytes, &[&[AUDIO_FOR_WEBHOOK], pcm]);
    }

    fn process_conversation(&mut self, conversation: &Id, payload_json: &str) {
        let core = self.core;
        if core.shared.config.processor_url.is_none() {
            self.reply_error(conversation, PROCESSOR_NOT_CONFIGURED);
            self.done = Some(*conversation);
            return;
        }
        if payload_json.len() > core.shared.config.process_payload_bytes_max {
            self.reply_error(conversation, PAYLOAD_TOO_LARGE);
            self.done = Some(*conversation);
            return;
        }
        if !core.egress.start_process() {
            core.shared.egress_metrics.process_busy.inc();
            self.reply_error(conversation, BUSY);
            self.done = Some(*conversation);
            return;
        }
        let context = self.streams.egress.context(&self.uid, self.sample_rate_hz);
        let metrics = &core.shared.egress_metrics;
        metrics.process_created.inc();
        metrics.process_in_flight.inc();
        core.egress.submit(Job {
            ticket: self.ticket,
            session: Some(context),
            work: Box::new(Work::Process {
                conversation: *conversation,
                payload: payload_json.to_owned(),
            }),
            bytes: 0,
        });
    }

    fn speaker_sample(&mut self, person_id: &Id, conversation: &Id, segment_ids_json: &str) {
        if self.core.shared.config.speaker_sample_url.is_none() {
            self.core
                .shared
                .egress_metrics
                .speaker_samples_dropped
                .inc();
            return;
        }
        let body = crate::egress::body::speaker_sample(
            &self.uid,
            person_id,
            conversation,
            segment_ids_json,
            self.sample_rate_hz,
        );
        let owner = Owner {
            key: self.ticket.key,
            generation: self.ticket.generation,
        };
        delivery::queue_speaker_sample(self.core, owner, &body);
    }

    fn result_error(&mut self, conversation: &Id, error: &str) {
        if error == BUSY {
            self.core.shared.egress_metrics.process_busy.inc();
        }
        self.reply_error(conversation, error);
    }

    fn unknown_header(&mut self, _header: u32) {}
}
