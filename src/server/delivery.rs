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

use std::rc::Rc;

use super::core::Core;
use super::core_egress::Waiting;
use super::streams::{AUDIO_FOR_APPS, Item, ORDERED_STREAMS, SessionEgress, Streams};
use crate::egress::Ticket;
use crate::egress::delay::Owner;
use crate::egress::job::{AudioTarget, Completion, Done, Job, Work};
use crate::id::Id;
use crate::metrics::Stream;
use crate::payload::{DropOldestRing, PayloadArena, RingItem};
use crate::session::{Millis, Session};

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
            core.egress.wait(&core.slots, ticket, index);
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

/// Counts a speaker-sample request lost to a bound (the queue's, a session's, the arena's).
fn speaker_sample_dropped(core: &Core) {
    core.shared.egress_metrics.speaker_samples_dropped.inc();
    core.shared.metrics.ring_dropped(Stream::SpeakerSample, 1);
}

/// Copies a speaker-sample request `body` into the core's speaker-sample arena and puts it in
/// the delay queue, due `speaker_sample_delay_s` from now. A body larger than the arena is
/// dropped; a session over its bound loses its oldest request; a full queue loses its oldest.
pub fn queue_speaker_sample(core: &Core, owner: Owner, body: &[u8]) {
    let mut arena = core.egress.speaker_arena.borrow_mut();
    let Some(handle) = arena.insert(body) else {
        speaker_sample_dropped(core);
        return;
    };
    let config = &core.shared.config;
    let metrics = &core.shared.egress_metrics;
    let mut queue = core.egress.speaker_samples.borrow_mut();
    if queue.count_of(owner) >= config.speaker_sample_ring_capacity
        && let Some(oldest) = queue.drop_oldest_of(owner)
    {
        arena.free(oldest);
        metrics.speaker_sample_queue_len.dec();
        speaker_sample_dropped(core);
    }
    // The clock reads whole milliseconds, rounded down: one more keeps a request from firing
    // before its full delay has passed.
    let due = core
        .now_ms()
        .saturating_add_ms(config.speaker_sample_delay_s * 1000 + 1);
    if let Some((_, evicted)) = queue.push(due, owner, handle) {
        arena.free(evicted);
        speaker_sample_dropped(core);
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
        let mut arena = core.egress.speaker_arena.borrow_mut();
        let Some(data) = arena.get(handle) else {
            speaker_sample_dropped(core);
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
