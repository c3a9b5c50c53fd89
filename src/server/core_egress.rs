//! This core's share of egress: the counts of jobs in flight against their bounds, the queue of
//! session streams waiting for room, and the speaker-sample delay queue with its own arena.
//! `delivery` moves jobs and completions through it.
//!
//! Invariants: jobs in flight never pass this core's shares (`deliveries ≤ deliveries_max`,
//! `processes ≤ processes_max`; delivery payload bytes pass `bytes_max` by at most one item);
//! each live session stream is queued in `waiting` at most once, so `waiting` never passes
//! `sessions × ORDERED_STREAMS` entries.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::Arc;

use super::shared::Shared;
use super::slots::Slots;
use super::streams::ORDERED_STREAMS;
use crate::egress::delay::BODY_BYTES_PER_ENTRY;
use crate::egress::delay::DelayQueue;
use crate::egress::job::{CoreShares, Job};
use crate::egress::{Link, Ticket};
use crate::payload::{Handle, PayloadArena};

/// A session stream that found no room, to be started when room frees up.
#[derive(Debug, Clone, Copy)]
pub struct Waiting {
    /// The session.
    pub ticket: Ticket,
    /// Which of its ordered streams (an index into `ORDERED_STREAMS`).
    pub stream: usize,
}

/// A count of jobs in flight with its bound.
pub struct Quota {
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

    /// Counts one fewer in flight.
    pub fn release(&self) {
        debug_assert!(self.used.get() > 0);
        self.used.set(self.used.get() - 1);
    }
}

/// This core's egress counts, queues and delay queue.
pub struct CoreEgress {
    /// This core's link to the egress thread.
    pub link: Arc<Link>,
    deliveries: Quota,
    /// Payload bytes of the deliveries in flight (may pass `bytes_max` by one item).
    bytes: Cell<usize>,
    bytes_max: usize,
    /// Process calls in flight against this core's share of `processor_in_flight_max`.
    pub processes: Quota,
    settings_fetches: Quota,
    /// Session streams waiting for delivery room, oldest first.
    pub waiting: RefCell<VecDeque<Waiting>>,
    waiting_max: usize,
    /// Speaker-sample requests waiting to be due (`speaker_sample_queue_per_core` entries).
    pub speaker_samples: RefCell<DelayQueue<Handle>>,
    /// The bodies of the queued speaker-sample requests. Not the core's payload arena: a
    /// request waits `speaker_sample_delay_s` (120 s), while transcripts and audio items pass
    /// through that FIFO arena in milliseconds and wrap it long before (the capacity bench
    /// lost speaker samples from ~400 sessions per core, and all of them at 7,600, when they
    /// shared it). Every
    /// request waits the same delay, so this FIFO arena frees in the order it fills.
    pub speaker_arena: RefCell<PayloadArena>,
}

/// The link of one core, sized for its shares.
pub fn new_link(config: &crate::config::Config, workers: usize) -> Arc<Link> {
    let shares = CoreShares::of(config, workers);
    Arc::new(Link::new(shares.jobs(), shares.completions()))
}

impl CoreEgress {
    /// The egress state of worker `index` with `sessions` slots, sized for its shares.
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
            speaker_arena: RefCell::new(PayloadArena::new(
                config.speaker_sample_queue_per_core * BODY_BYTES_PER_ENTRY,
                config.speaker_sample_queue_per_core,
            )),
        }
    }

    /// True when a delivery may start: under both the count and the byte share.
    pub fn has_delivery_room(&self) -> bool {
        self.deliveries.has_room() && self.bytes.get() < self.bytes_max
    }

    /// Counts a delivery job of `bytes` in flight (the caller saw [`Self::has_delivery_room`]).
    pub fn start_delivery(&self, bytes: usize) {
        assert!(self.deliveries.try_take(), "checked has_delivery_room");
        self.bytes.set(self.bytes.get() + bytes);
    }

    /// Counts a delivery of `bytes` as finished.
    pub fn finish_delivery(&self, bytes: usize) {
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

    /// Counts a settings fetch as finished.
    pub fn settings_fetched(&self) {
        self.settings_fetches.release();
    }

    /// Hands a counted job over; the link has room for every counted job.
    pub fn submit(&self, job: Job) {
        if self.link.submit(job).is_err() {
            unreachable!("the job queue holds every job the counts admit");
        }
    }

    /// Queues the session stream until a completion frees room.
    pub fn wait(&self, slots: &Slots, ticket: Ticket, stream: usize) {
        let mut waiting = self.waiting.borrow_mut();
        if waiting.len() == self.waiting_max {
            // Entries of ended sessions are stale; each live session stream is queued once.
            waiting.retain(|w| slots.is_live(w.ticket.key, w.ticket.generation));
        }
        assert!(
            waiting.len() < self.waiting_max,
            "each session stream waits once at most"
        );
        waiting.push_back(Waiting { ticket, stream });
    }
}
