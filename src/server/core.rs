//! Per-worker state: pools, slots, arena and budgets of one core, created when the worker starts.
//!
//! Invariant: a `Core` is only touched from its own thread (`Rc`/`RefCell`); everything it owns
//! is sized from the config at construction and never grows.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::core_egress::CoreEgress;
use super::handshake_slots::HandshakeSlots;
use super::outbound::OutboundBudget;
use super::parked::ParkedBuffers;
use super::pool::BufferPool;
use super::shared::Shared;
use super::slots::Slots;
use crate::connection::Limits as ConnectionLimits;
use crate::metrics::CoreGauges;
use crate::payload::PayloadArena;
use crate::session::Millis;
use crate::spill::handoff::{self, Handoff};
use crate::spill::writer::SpillShared;
use crate::websocket::codec::Decoder;

/// Bytes of one entry of [`Core::spill_waiters`] (one per slot at most; the budget counts it
/// with the slot).
pub const SPILL_WAITER_BYTES: usize = std::mem::size_of::<(usize, u32)>();

/// Capacity of a core's reply buffer: one 201 error frame (an id of at most 128 bytes and a
/// short reason) with room to spare.
pub const REPLY_BYTES_MAX: usize = 1024;

/// This core's end of the spill log.
pub struct SpillCore {
    /// This core's hand-off ring to the writer.
    pub ring: Arc<Handoff>,
    /// The log's shared state (disk budget flag, failure flag, index).
    pub shared: Arc<SpillShared>,
    /// The writer thread, unparked when the ring was idle and gets records.
    pub writer: std::thread::Thread,
    /// Hand-off bytes a session that writes audio needs free before it is fed a message.
    pub bytes_per_message: usize,
    /// Next batch id: the core index in the top byte, a counter below (unique within the run).
    next_batch: Cell<u64>,
}

impl SpillCore {
    fn new(index: usize, shared: &Shared) -> SpillCore {
        SpillCore {
            ring: Arc::clone(&shared.spill.rings[index]),
            shared: Arc::clone(&shared.spill.shared),
            writer: shared.spill.writer.clone(),
            bytes_per_message: handoff::bytes_per_message_max(shared.config.message_bytes_max),
            next_batch: Cell::new(((index as u64) << 56) | 1),
        }
    }

    /// A batch id for a new batch, unique within the run.
    pub fn next_batch(&self) -> u64 {
        let batch = self.next_batch.get();
        self.next_batch.set(batch + 1);
        batch
    }
}

/// One worker's state: its pools, slots, arena, budgets and egress counts. Touched only from its
/// own thread; sized at construction.
pub struct Core {
    /// What every worker shares.
    pub shared: Arc<Shared>,
    /// This core's receive buffers (`recv_buffers_per_core`), lent while a connection has bytes.
    pub recv_pool: Rc<BufferPool>,
    /// Receive buffers held by incomplete messages, which others may take back.
    pub parked: ParkedBuffers,
    /// Where request heads are peeked and parsed (one per core: a head is handled without
    /// waiting, see `handshake`).
    pub head_scratch: RefCell<Box<[u8]>>,
    /// Connections between accept and upgrade.
    pub handshakes: Rc<HandshakeSlots>,
    /// This core's session slots and their deadlines.
    pub slots: Slots,
    /// The bytes of this core's droppable items.
    pub arena: RefCell<PayloadArena>,
    /// The bound on this core's unsent bytes (`outbound_pending_bytes_per_core`).
    pub outbound: OutboundBudget,
    /// Accumulator bytes not yet promised to a session.
    pub accumulator_bytes_free: Cell<usize>,
    /// The sans-I/O connection's limits (decoder, idle and close timeouts), from the config.
    pub connection_limits: ConnectionLimits,
    /// This core's end of the spill log.
    pub spill: SpillCore,
    /// Sessions stalled on the spill log (hand-off full or disk budget reached), in the order
    /// they stalled: they are not woken by the clock but by [`Core::wake_spill_waiters`], as
    /// many as the room allows (thousands of stalled sessions polling every tick took the CPU
    /// the writer needed to end the stall). One entry per session at most (`waits_for_room`),
    /// so never more than the slots: allocated at start.
    pub spill_waiters: RefCell<VecDeque<(usize, u32)>>,
    /// This core's share of egress.
    pub egress: CoreEgress,
    /// Replies (201 frames) produced by one session step; capacity fixed at start.
    pub replies: RefCell<Vec<u8>>,
    gauges: CoreGauges,
    epoch: Instant,
    closing_signalled: Cell<bool>,
}

impl Core {
    /// The state of worker `index`, every structure allocated now.
    pub fn new(index: usize, shared: Arc<Shared>) -> Core {
        let config = &shared.config;
        let gauges = shared.metrics.core(index).clone();
        let limits = config.decoder_limits();
        let recv_pool = BufferPool::new(
            config.recv_buffers_per_core,
            Decoder::buffer_bytes_required(limits),
            Some(gauges.recv_buffers_in_use.clone()),
        );
        let handshakes = HandshakeSlots::new(config.handshake_buffers_per_core);
        gauges
            .sessions_capacity
            .set(shared.sessions_per_core as i64);
        gauges
            .recv_buffers_capacity
            .set(config.recv_buffers_per_core as i64);
        gauges
            .handshakes_capacity
            .set(config.handshake_buffers_per_core as i64);
        gauges
            .arena_capacity_bytes
            .set(config.payload_arena_bytes_per_core as i64);
        Core {
            recv_pool,
            parked: ParkedBuffers::new(config.recv_buffers_per_core),
            head_scratch: RefCell::new(
                vec![0u8; config.request_header_bytes_max].into_boxed_slice(),
            ),
            handshakes,
            slots: Slots::new(shared.sessions_per_core),
            arena: RefCell::new(PayloadArena::new(
                config.payload_arena_bytes_per_core,
                config.payload_blocks_per_core_max,
            )),
            outbound: OutboundBudget::new(
                config.outbound_pending_bytes_per_core,
                gauges.outbound_pending_bytes.clone(),
            ),
            accumulator_bytes_free: Cell::new(config.audio_accumulator_bytes_per_core),
            connection_limits: ConnectionLimits {
                decoder: limits,
                idle_timeout_ms: config.idle_timeout_ms,
                message_timeout_ms: config.message_timeout_ms,
                close_timeout_ms: config.close_timeout_ms,
            },
            spill: SpillCore::new(index, &shared),
            spill_waiters: RefCell::new(VecDeque::with_capacity(shared.sessions_per_core)),
            egress: CoreEgress::new(index, &shared, shared.sessions_per_core),
            replies: RefCell::new(Vec::with_capacity(REPLY_BYTES_MAX)),
            gauges,
            epoch: Instant::now(),
            closing_signalled: Cell::new(false),
            shared,
        }
    }

    /// Monotonic milliseconds since this worker started: the session state machine's clock.
    pub fn now_ms(&self) -> Millis {
        Millis(self.epoch.elapsed().as_millis() as u64)
    }

    /// Counts a session opened on this core (the shared count, the gauges, the counter).
    pub fn session_opened(&self) {
        self.shared.sessions_open.fetch_add(1, Ordering::Relaxed);
        self.shared.metrics.active_ws_connections.inc();
        self.shared.metrics.sessions_opened.inc();
        self.gauges.sessions_open.set(self.slots.len() as i64);
    }

    /// The gauges change before the counter: whoever saw the close counted has the gauges too.
    pub fn session_closed(&self, code: u16) {
        self.shared.sessions_open.fetch_sub(1, Ordering::Relaxed);
        self.shared.metrics.active_ws_connections.dec();
        self.gauges.sessions_open.set(self.slots.len() as i64);
        self.shared.metrics.closed(code).inc();
    }

    /// Queues the slot's stalled session to be woken when the spill log has room (once).
    pub fn wait_for_spill_room(&self, key: usize) {
        let generation = self.slots.with(key, |slot| {
            let queued = std::mem::replace(&mut slot.streams.spill.waits_for_room, true);
            (!queued).then(|| slot.generation())
        });
        if let Some(generation) = generation {
            let mut waiters = self.spill_waiters.borrow_mut();
            if waiters.len() >= self.shared.sessions_per_core {
                // Entries of sessions that ended meanwhile (their slot may hold a new session):
                // dropped, which leaves at most one per live slot.
                waiters.retain(|&(key, generation)| self.slots.is_live(key, generation));
            }
            assert!(
                waiters.len() < self.shared.sessions_per_core,
                "one entry per live slot"
            );
            waiters.push_back((key, generation));
        }
    }

    /// Wakes the sessions waiting for spill room, oldest first, as many as the hand-off has
    /// room for one message each (none while the disk budget is reached). Each re-checks for
    /// itself and queues again if the room is gone.
    pub fn wake_spill_waiters(&self) {
        if self.spill.shared.is_full() {
            return;
        }
        let mut room = self.spill.ring.free_bytes();
        let mut waiters = self.spill_waiters.borrow_mut();
        while room >= self.spill.bytes_per_message {
            let Some((key, generation)) = waiters.pop_front() else {
                return;
            };
            let live = self.slots.with_live(key, generation, |slot| {
                slot.streams.spill.waits_for_room = false;
            });
            if live.is_some() {
                self.slots.signal(key);
                room -= self.spill.bytes_per_message;
            }
        }
    }

    /// Refreshes the core's gauges: arena use (payload and speaker-sample), handshakes in
    /// flight, parked receive buffers, sessions waiting for spill room.
    pub fn refresh_gauges(&self) {
        let arena = self.arena.borrow();
        self.gauges.arena_used_bytes.set(arena.used_bytes() as i64);
        drop(arena);
        self.gauges
            .handshakes_in_flight
            .set(self.handshakes.len() as i64);
        self.gauges
            .recv_buffers_parked
            .set(self.parked.len() as i64);
        self.gauges
            .spill_waiters
            .set(self.spill_waiters.borrow().len() as i64);
        self.gauges
            .speaker_arena_used_bytes
            .set(self.egress.speaker_arena.borrow().used_bytes() as i64);
    }

    /// Once the drain's grace period is over, wakes every open session (once) so that each
    /// closes with 1001.
    pub fn relay_drain_close(&self) {
        if self.shared.drain.is_closing() && !self.closing_signalled.get() {
            self.closing_signalled.set(true);
            self.slots.signal_all();
        }
    }

    /// True once the drain's grace period is over on this core.
    pub fn closing(&self) -> bool {
        self.closing_signalled.get()
    }
}
