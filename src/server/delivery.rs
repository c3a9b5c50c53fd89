//! The core's side of egress: turning ring items into jobs for the egress thread while keeping
//! per-session order and the core's in-flight bounds, taking completions back (201s to their
//! connections), and holding speaker-sample requests until they are due.
//!
//! Invariants:
//! - per session and stream (transcripts, audio items) at most one job is in flight (`busy`):
//!   items reach each target in the order the session produced them;
//! - jobs in flight never pass this core's shares: `deliveries ≤ deliveries_max`,
//!   `processes ≤ processes_max`, and delivery payload bytes pass `bytes_max` by at most one
//!   item; a stream that finds no room is queued once in `waiting` and started when a
//!   completion frees room (its items wait in its drop-oldest ring meanwhile);
//! - a completion whose session has gone is dropped; a 201 reaches only the session that asked.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use super::core::Core;
use super::outputs::{Item, Streams};
use crate::egress::delay::{DelayQueue, Owner};
use crate::egress::job::{AudioTarget, Completion, CoreShares, Done, Job, Work};
use crate::egress::{Link, SessionContext, Ticket};
use crate::id::Id;
use crate::metrics::Stream;
use crate::payload::{DropOldestRing, Handle, PayloadArena, RingItem};
use crate::session::{Millis, Session};
use crate::settings::UserSettings;

/// The streams whose items egress delivers in order, one job at a time per session.
pub const ORDERED_STREAMS: [Stream; 2] = [Stream::Transcript, Stream::AudioBytes];

/// First byte of an audio item: which consumer it is for.
pub const AUDIO_FOR_APPS: u8 = 0;
pub const AUDIO_FOR_WEBHOOK: u8 = 1;

/// The 201 payloads waiting for one session: one inline, more (up to
/// `process_in_flight_per_session_max`) on the heap.
pub type Replies = smallvec::SmallVec<[Vec<u8>; 1]>;

/// A session's egress state (lives in its slot).
pub struct SessionEgress {
    pub settings: Option<Arc<UserSettings>>,
    /// Shared with its jobs; made on the session's first job. Its token cancels the session's
    /// process calls when the session ends.
    context: Option<Arc<SessionContext>>,
    busy: [bool; ORDERED_STREAMS.len()],
    waiting: [bool; ORDERED_STREAMS.len()],
    /// 201 payloads answered by egress, waiting for the connection to send them (at most one
    /// per process call in flight; usually one, held inline: no allocation on the worker).
    pub replies: Replies,
}

impl SessionEgress {
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

/// A session stream that found no room, to be started when room frees up.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    ticket: Ticket,
    stream: usize,
}

/// A count of jobs in flight with its bound.
struct Quota {
    used: Cell<usize>,
    max: usize,
}

impl Quota {
    fn new(max: usize) -> Quota {
        Quota {
            used: Cell::new(0),
            max,
        }
    }

    fn has_room(&self) -> bool {
        self.used.get() < self.max
    }

    /// Counts one more if there is room.
    fn try_take(&self) -> bool {
        let room = self.has_room();
        if room {
            self.used.set(self.used.get() + 1);
        }
        room
    }

    fn release(&self) {
        debug_assert!(self.used.get() > 0);
        self.used.set(self.used.get() - 1);
    }
}

/// This core's egress counts, queues and delay queue.
pub struct CoreEgress {
    pub link: Arc<Link>,
    deliveries: Quota,
    /// Payload bytes of the deliveries in flight (may pass `bytes_max` by one item).
    bytes: Cell<usize>,
    bytes_max: usize,
    processes: Quota,
    settings_fetches: Quota,
    waiting: RefCell<VecDeque<Waiting>>,
    waiting_max: usize,
    speaker_samples: RefCell<DelayQueue<Handle>>,
}

/// The link of one core, sized for its shares.
pub fn new_link(config: &crate::config::Config, workers: usize) -> Arc<Link> {
    let shares = CoreShares::of(config, workers);
    Arc::new(Link::new(shares.jobs(), shares.completions()))
}

impl CoreEgress {
    pub fn new(index: usize, shared: &Shared, sessions: usize) -> CoreEgress {
        let config = &shared.config;
        let shares = CoreShares::of(config, shared.budget.workers as usize);
        CoreEgress {
            link: Arc::clone(&shared.egress_links[index]),
            deliveries: Quota::new(shares.deliveries),
            bytes: Cell::new(0),
            bytes_max: shares.bytes,
            processes: Quota::new(shares.processes),
            settings_fetches: Quota::new(shares.settings_fetches),
            waiting: RefCell::new(VecDeque::with_capacity(sessions * ORDERED_STREAMS.len())),
            waiting_max: sessions * ORDERED_STREAMS.len(),
            speaker_samples: RefCell::new(DelayQueue::new(config.speaker_sample_queue_per_core)),
        }
    }

    fn has_delivery_room(&self) -> bool {
        self.deliveries.has_room() && self.bytes.get() < self.bytes_max
    }

    /// Counts a delivery job of `bytes` in flight (the caller saw [`Self::has_delivery_room`]).
    fn start_delivery(&self, bytes: usize) {
        assert!(self.deliveries.try_take(), "checked has_delivery_room");
        self.bytes.set(self.bytes.get() + bytes);
    }

    fn finish_delivery(&self, bytes: usize) {
        self.deliveries.release();
        self.bytes.set(self.bytes.get() - bytes);
    }

    /// True when a process call may start (and counts it).
    pub fn start_process(&self) -> bool {
        self.processes.try_take()
    }

    /// True when a settings fetch may start (and counts it); see [`CoreEgress::settings_fetched`].
    pub fn start_settings_fetch(&self) -> bool {
        self.settings_fetches.try_take()
    }

    pub fn settings_fetched(&self) {
        self.settings_fetches.release();
    }

    /// Hands a counted job over; the link has room for every counted job.
    pub fn submit(&self, job: Job) {
        if self.link.submit(job).is_err() {
            unreachable!("the job queue holds every job the counts admit");
        }
    }

    fn wait(&self, core: &Core, ticket: Ticket, stream: usize) {
        let mut waiting = self.waiting.borrow_mut();
        if waiting.len() == self.waiting_max {
            // Entries of ended sessions are stale; each live session stream is queued once.
            waiting.retain(|w| core.slots.is_live(w.ticket.key, w.ticket.generation));
        }
        assert!(
            waiting.len() < self.waiting_max,
            "each session stream waits once at most"
        );
        waiting.push_back(Waiting { ticket, stream });
    }
}

fn stream_index(stream: Stream) -> usize {
    ORDERED_STREAMS
        .iter()
        .position(|&s| s == stream)
        .expect("an ordered stream")
}

/// Starts the next delivery of each of the session's ordered streams that is idle and has an
/// item, as far as the core's room allows.
pub fn dispatch(
    core: &Core,
    ticket: Ticket,
    session: &Session,
    streams: &mut Streams,
    arena: &mut PayloadArena,
) {
    for (index, stream) in ORDERED_STREAMS.into_iter().enumerate() {
        if streams.egress.busy[index] || streams.egress.waiting[index] {
            continue;
        }
        let Some(ring) = streams.ring_mut(stream) else {
            continue;
        };
        if ring.is_empty() {
            continue;
        }
        if !core.egress.has_delivery_room() {
            streams.egress.waiting[index] = true;
            core.egress.wait(core, ticket, index);
            continue;
        }
        let Some(item) = pop_counted(core, stream, ring, arena) else {
            continue;
        };
        let data = arena.get(item.handle()).expect("pop returns live items");
        let work = match stream {
            Stream::Transcript => transcript_work(data),
            _ => audio_work(data),
        };
        let bytes = data.len();
        arena.free(item.handle());
        let context = streams
            .egress
            .context(session.uid(), session.sample_rate_hz());
        core.egress.start_delivery(bytes);
        core.egress.submit(Job {
            ticket,
            session: Some(context),
            work: Box::new(work),
            bytes,
        });
        streams.egress.busy[index] = true;
    }
}

/// Pops the ring's next live item, counting items the arena evicted meanwhile.
fn pop_counted(
    core: &Core,
    stream: Stream,
    ring: &mut DropOldestRing<Item>,
    arena: &PayloadArena,
) -> Option<Item> {
    let dropped_before = ring.dropped();
    let item = ring.pop(arena);
    let dropped = ring.dropped() - dropped_before;
    if dropped > 0 {
        core.shared.metrics.ring_dropped(stream, dropped);
    }
    item
}

/// A transcript item's block: `conversation length (u8) ‖ conversation ‖ segments JSON`.
fn transcript_work(data: &[u8]) -> Work {
    let len = usize::from(data[0]);
    let conversation =
        (len > 0).then(|| Id::parse(&data[1..1 + len]).expect("a valid id was stored"));
    let segments = std::str::from_utf8(&data[1 + len..])
        .expect("segments were validated as UTF-8")
        .to_owned();
    Work::Transcript {
        conversation,
        segments,
    }
}

/// An audio item's block: `target byte ‖ PCM`.
fn audio_work(data: &[u8]) -> Work {
    let target = match data[0] {
        AUDIO_FOR_APPS => AudioTarget::Apps,
        _ => AudioTarget::Webhook,
    };
    Work::Audio {
        target,
        pcm: data[1..].to_vec(),
    }
}

/// Puts a speaker-sample request body (already encoded in `handle`'s block) in the delay queue,
/// due `speaker_sample_delay_s` from now. A session over its bound loses its oldest request; a
/// full queue loses its oldest.
pub fn queue_speaker_sample(core: &Core, owner: Owner, handle: Handle, arena: &mut PayloadArena) {
    let config = &core.shared.config;
    let metrics = &core.shared.egress_metrics;
    let mut queue = core.egress.speaker_samples.borrow_mut();
    if queue.count_of(owner) >= config.speaker_sample_ring_capacity
        && let Some(oldest) = queue.drop_oldest_of(owner)
    {
        arena.free(oldest);
        metrics.speaker_samples_dropped.inc();
        metrics.speaker_sample_queue_len.dec();
        core.shared.metrics.ring_dropped(Stream::SpeakerSample, 1);
    }
    // The clock reads whole milliseconds, rounded down: one more keeps a request from firing
    // before its full delay has passed.
    let due = core
        .now_ms()
        .saturating_add_ms(config.speaker_sample_delay_s * 1000 + 1);
    if let Some((_, evicted)) = queue.push(due, owner, handle) {
        arena.free(evicted);
        metrics.speaker_samples_dropped.inc();
        core.shared.metrics.ring_dropped(Stream::SpeakerSample, 1);
    } else {
        metrics.speaker_sample_queue_len.inc();
    }
    metrics.speaker_samples_queued.inc();
}

/// Sends every due speaker-sample request the core has room for (called on each housekeeping
/// tick; a request without room stays queued until the next).
pub fn send_due_speaker_samples(core: &Core, now: Millis) {
    let mut queue = core.egress.speaker_samples.borrow_mut();
    while core.egress.has_delivery_room() {
        let Some((owner, handle)) = queue.pop_due(now) else {
            return;
        };
        core.shared.egress_metrics.speaker_sample_queue_len.dec();
        let mut arena = core.arena.borrow_mut();
        let Some(data) = arena.get(handle) else {
            core.shared.egress_metrics.speaker_samples_dropped.inc();
            core.shared.metrics.ring_dropped(Stream::SpeakerSample, 1);
            continue;
        };
        let body = data.to_vec();
        arena.free(handle);
        drop(arena);
        let bytes = body.len();
        core.egress.start_delivery(bytes);
        core.egress.submit(Job {
            ticket: Ticket {
                key: owner.key,
                generation: owner.generation,
            },
            session: None,
            work: Box::new(Work::SpeakerSample { body }),
            bytes,
        });
    }
}

/// The core's completion pump: applies each completion as it comes back.
pub async fn pump(core: Rc<Core>) {
    loop {
        core.egress.link.completion_ready().await;
        while let Some(completion) = core.egress.link.next_completion() {
            complete(&core, completion);
        }
        start_waiting(&core);
    }
}

fn complete(core: &Core, completion: Completion) {
    let Completion {
        ticket,
        done,
        bytes,
    } = completion;
    let egress = &core.egress;
    match done {
        Done::Delivered(stream) => {
            egress.finish_delivery(bytes);
            let index = stream_index(stream);
            resume(core, ticket, |egress| egress.busy[index] = false);
        }
        Done::SpeakerSample => egress.finish_delivery(bytes),
        Done::Processed {
            conversation,
            reply,
        } => {
            egress.processes.release();
            // A cancelled call (no reply) belonged to a session that has ended.
            let Some(reply) = reply else { return };
            let delivered = core.slots.with_live(ticket.key, ticket.generation, |slot| {
                let session = slot.session.as_mut().filter(|s| !s.is_ended())?;
                session.on_process_done(&conversation).then(|| {
                    slot.streams.egress.replies.push(reply);
                })
            });
            match delivered.flatten() {
                Some(()) => core.slots.signal(ticket.key),
                None => {
                    core.shared.egress_metrics.process_replies_dropped.inc();
                }
            }
        }
    }
}

/// Starts waiting session streams while the core has room.
fn start_waiting(core: &Core) {
    while core.egress.has_delivery_room() {
        let Some(waiting) = core.egress.waiting.borrow_mut().pop_front() else {
            return;
        };
        let Waiting { ticket, stream } = waiting;
        resume(core, ticket, |egress| egress.waiting[stream] = false);
    }
}

/// Updates the session's egress state with `mark`, then starts its next deliveries if the
/// session (key and generation) is still there and going on.
fn resume(core: &Core, ticket: Ticket, mark: impl FnOnce(&mut SessionEgress)) {
    core.slots.with_live(ticket.key, ticket.generation, |slot| {
        mark(&mut slot.streams.egress);
        if let Some(session) = slot.session.as_ref().filter(|s| !s.is_ended()) {
            let mut arena = core.arena.borrow_mut();
            dispatch(core, ticket, session, &mut slot.streams, &mut arena);
        }
    });
}
