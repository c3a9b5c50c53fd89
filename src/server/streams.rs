//! A session's streams on its core: the drop-oldest rings between the session and egress, its
//! share of the core's accumulator budget, its place in the spill log and its egress state. A
//! [`Streams`] lives in the session's slot; `outputs` fills it, `delivery` drains it.
//!
//! Invariant: a ring exists only while its stream has a consumer; a ring's items live only in
//! the core's payload arena.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::egress::SessionContext;
use crate::id::Id;
use crate::metrics::Stream;
use crate::payload::{DropOldestRing, Handle, RingItem};
use crate::settings::{DataProtectionLevel, UserSettings};

/// Bytes one ring entry takes: the item plus crossbeam's per-slot stamp.
pub const RING_ENTRY_BYTES: usize = std::mem::size_of::<Item>() + std::mem::size_of::<usize>();
/// The streams whose items egress delivers in order, one job at a time per session.
pub const ORDERED_STREAMS: [Stream; 2] = [Stream::Transcript, Stream::AudioBytes];

/// First byte of an audio item: which consumer it is for.
pub const AUDIO_FOR_APPS: u8 = 0;
/// First byte of an audio item for the user's audio webhook.
pub const AUDIO_FOR_WEBHOOK: u8 = 1;

/// The 201 payloads waiting for one session: one inline, more (up to
/// `process_in_flight_per_session_max`) on the heap.
pub type Replies = smallvec::SmallVec<[Vec<u8>; 1]>;

/// A session's egress state (lives in its slot).
pub struct SessionEgress {
    /// The user's settings snapshot (`None` on the echo route).
    pub settings: Option<Arc<UserSettings>>,
    /// Shared with its jobs; made on the session's first job. Its token cancels the session's
    /// process calls when the session ends.
    context: Option<Arc<SessionContext>>,
    /// Per ordered stream: a job of it is in flight (the next item waits).
    pub busy: [bool; ORDERED_STREAMS.len()],
    /// Per ordered stream: queued in the core's waiting list for delivery room.
    pub waiting: [bool; ORDERED_STREAMS.len()],
    /// 201 payloads answered by egress, waiting for the connection to send them (at most one
    /// per process call in flight; usually one, held inline: no allocation on the worker).
    pub replies: Replies,
}

impl SessionEgress {
    /// Nothing in flight or waiting; no context yet.
    pub fn new(settings: Option<Arc<UserSettings>>) -> SessionEgress {
        SessionEgress {
            settings,
            context: None,
            busy: [false; ORDERED_STREAMS.len()],
            waiting: [false; ORDERED_STREAMS.len()],
            replies: Replies::new(),
        }
    }

    /// The session's context for a job, made on first use.
    pub fn context(&mut self, uid: &Id, sample_rate_hz: u32) -> Arc<SessionContext> {
        let settings = &self.settings;
        Arc::clone(self.context.get_or_insert_with(|| {
            Arc::new(SessionContext {
                uid: *uid,
                sample_rate_hz,
                settings: settings.clone().unwrap_or_default(),
                cancel: CancellationToken::new(),
            })
        }))
    }

    /// Cancels the session's process calls still in flight (their requests are dropped).
    pub fn cancel(&self) {
        if let Some(context) = &self.context {
            context.cancel.cancel();
        }
    }
}

/// A droppable item: a handle to its arena block.
#[derive(Debug, Clone, Copy)]
pub struct Item {
    /// The arena block holding the item's bytes.
    pub handle: Handle,
}

impl RingItem for Item {
    fn handle(&self) -> Handle {
        self.handle
    }
}

/// A session's streams: droppable-stream rings, its share of the core's accumulator budget, its
/// spill log state and its egress state. Rings are boxed: a ring's queue is cache-padded
/// (hundreds of bytes), and most sessions have none, so a slot holds only pointers.
pub struct Streams {
    /// Transcript items (`transcript_ring_capacity`), when the session has a transcript consumer.
    pub transcript: Option<Box<DropOldestRing<Item>>>,
    /// App and webhook audio items (`audio_bytes_ring_capacity`), when either consumer exists.
    pub audio_bytes: Option<Box<DropOldestRing<Item>>>,
    /// Bytes of the core's accumulator budget this session's accumulators hold.
    pub accumulator_bytes: usize,
    /// Its place in the spill log.
    pub spill: SpillState,
    /// Its egress state.
    pub egress: SessionEgress,
}

/// A session's place in the spill log.
#[derive(Debug, Clone, Copy)]
pub struct SpillState {
    /// The session writes private-cloud audio (its settings enable it).
    pub writes: bool,
    /// The user's data protection level, written in each batch-open record.
    pub level: DataProtectionLevel,
    /// Id of the open (or last) batch.
    pub batch: u64,
    /// Hand-off position just past the session's latest record: once durable, all is.
    pub last_position: u64,
    /// The session is in its core's queue of sessions waiting for spill room
    /// (`Core::spill_waiters`): it is never queued twice.
    pub waits_for_room: bool,
}

impl Streams {
    /// No rings, no accumulators, no spill writes: the streams of the echo route.
    pub fn none() -> Streams {
        Streams {
            transcript: None,
            audio_bytes: None,
            accumulator_bytes: 0,
            spill: SpillState {
                writes: false,
                level: DataProtectionLevel::Enhanced,
                batch: 0,
                last_position: 0,
                waits_for_room: false,
            },
            egress: SessionEgress::new(None),
        }
    }

    /// The ring of an ordered stream, if the session has its consumer.
    pub fn ring_mut(&mut self, stream: Stream) -> Option<&mut DropOldestRing<Item>> {
        match stream {
            Stream::Transcript => self.transcript.as_deref_mut(),
            Stream::AudioBytes => self.audio_bytes.as_deref_mut(),
            Stream::SpeakerSample => None,
        }
    }
}
