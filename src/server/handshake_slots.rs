//! The per-core bound on connections between accept and upgrade: a fixed number of slots
//! (`handshake_buffers_per_core`). The accept loop takes a slot before it accepts; with none
//! free it stops accepting, and new connections wait in the kernel's accept backlog
//! (backpressure, not refusal). A connection gives its slot back when its handshake ends.
//!
//! So that peers who send nothing cannot hold every slot (and with them `/health`), the accept
//! loop may evict the oldest connection that is still reading its request head when every slot
//! is taken, another connection waits, and the handshakes have stopped making progress: none
//! finished for [`STALL_MIN`]. The victim is older than [`EVICT_AGE_MIN`] and has sent nothing
//! yet, or an incomplete head. In a burst of honest clients handshakes keep finishing (even
//! when each client is slow to send its request), so nobody is evicted; when silent peers hold
//! every slot, nothing finishes and they go, oldest first. A connection whose request is
//! already in its socket but not yet read is never evicted, and neither is one whose request is
//! being answered (a settings fetch).
//!
//! Invariants: at most `capacity` slots are taken; the accept-order queue holds at most
//! `capacity` entries after compaction (stale ones are dropped before it would grow); a
//! [`Ticket`] frees its slot exactly once (on drop, or when evicted).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use slab::Slab;

/// A connection reading its head may be evicted only after this long (and only while the
/// handshakes make no progress: [`STALL_MIN`]).
pub const EVICT_AGE_MIN: Duration = Duration::from_millis(100);
/// Evictions happen only when no handshake finished for this long (the slots are stuck, not
/// busy): in a burst of honest clients, even slow ones whose segments an overflowing accept
/// queue dropped (they retransmit after about 1 s), handshakes keep finishing. With [`EVICT_AGE_MIN`] it bounds how long peers that send nothing can keep the
/// accept loop (and a probe behind them in the backlog) waiting once they hold every slot.
pub const STALL_MIN: Duration = Duration::from_millis(1_000);
/// Entries the eviction scan looks at, oldest first (the rest are younger).
const EVICT_SCAN_MAX: usize = 64;

/// What a handshake is doing, for the eviction rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for its request head; `partial`: the head seen so far is incomplete.
    Reading { partial: bool },
    /// The head is read; the answer is being made (never evicted).
    Answering,
}

struct Entry {
    fd: RawFd,
    accepted_at: Instant,
    generation: u32,
    stage: Stage,
    evicted: bool,
    waker: Option<Waker>,
}

/// The slots of one core.
pub struct HandshakeSlots {
    entries: RefCell<Slab<Entry>>,
    /// (key, generation) in accept order; stale pairs are skipped and dropped.
    order: RefCell<VecDeque<(usize, u32)>>,
    capacity: usize,
    next_generation: Cell<u32>,
    /// The accept loop, waiting for a free slot.
    room_waker: RefCell<Option<Waker>>,
    /// When a handshake last finished (not by eviction), or the slots were created.
    last_finished: Cell<Instant>,
}

impl HandshakeSlots {
    /// `capacity` slots (`handshake_buffers_per_core`, above 0), all free.
    pub fn new(capacity: usize) -> Rc<HandshakeSlots> {
        assert!(capacity > 0);
        Rc::new(HandshakeSlots {
            entries: RefCell::new(Slab::with_capacity(capacity)),
            order: RefCell::new(VecDeque::with_capacity(capacity)),
            capacity,
            next_generation: Cell::new(0),
            room_waker: RefCell::new(None),
            last_finished: Cell::new(Instant::now()),
        })
    }

    /// Slots taken.
    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    /// True while a slot is free.
    pub fn has_room(&self) -> bool {
        self.len() < self.capacity
    }

    /// Takes a slot for the connection on `fd`, accepted at `now`; None when every slot is
    /// taken.
    pub fn take(self: &Rc<Self>, fd: RawFd, now: Instant) -> Option<Ticket> {
        let mut entries = self.entries.borrow_mut();
        if entries.len() >= self.capacity {
            return None;
        }
        let generation = self.next_generation.get();
        self.next_generation.set(generation.wrapping_add(1));
        let key = entries.insert(Entry {
            fd,
            accepted_at: now,
            generation,
            stage: Stage::Reading { partial: false },
            evicted: false,
            waker: None,
        });
        debug_assert!(
            entries.capacity() == self.capacity,
            "the slab never reallocates"
        );
        let mut order = self.order.borrow_mut();
        if order.len() == order.capacity() {
            order.retain(|&(k, g)| entries.get(k).is_some_and(|e| e.generation == g));
        }
        assert!(order.len() < order.capacity(), "one queue entry per slot");
        order.push_back((key, generation));
        Some(Ticket {
            slots: Rc::clone(self),
            key,
            generation,
        })
    }

    /// Completes when a slot is free (the accept loop waits on it).
    pub fn room(&self) -> Room<'_> {
        Room { slots: self }
    }

    /// Evicts the oldest connection that may be evicted at `now` (see the module doc);
    /// `has_input(fd)` says whether bytes wait in a socket. True if one was.
    pub fn evict_oldest(&self, now: Instant, has_input: impl Fn(RawFd) -> bool) -> bool {
        if now.saturating_duration_since(self.last_finished.get()) < STALL_MIN {
            return false;
        }
        let mut entries = self.entries.borrow_mut();
        let mut order = self.order.borrow_mut();
        while let Some(&(key, generation)) = order.front() {
            if entries.get(key).is_some_and(|e| e.generation == generation) {
                break;
            }
            order.pop_front();
        }
        for &(key, generation) in order.iter().take(EVICT_SCAN_MAX) {
            let Some(entry) = entries.get_mut(key).filter(|e| e.generation == generation) else {
                continue;
            };
            if now.saturating_duration_since(entry.accepted_at) < EVICT_AGE_MIN {
                return false;
            }
            let evictable = match entry.stage {
                Stage::Reading { partial: true } => true,
                Stage::Reading { partial: false } => !has_input(entry.fd),
                Stage::Answering => false,
            };
            if evictable && !entry.evicted {
                entry.evicted = true;
                if let Some(waker) = entry.waker.take() {
                    waker.wake();
                }
                return true;
            }
        }
        false
    }

    fn release(&self, key: usize, generation: u32) {
        let mut entries = self.entries.borrow_mut();
        if entries.get(key).is_some_and(|e| e.generation == generation) {
            let entry = entries.remove(key);
            if !entry.evicted {
                self.last_finished
                    .set(Instant::now().max(self.last_finished.get()));
            }
            drop(entries);
            if let Some(waker) = self.room_waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

/// A taken slot; dropping it frees the slot.
pub struct Ticket {
    slots: Rc<HandshakeSlots>,
    key: usize,
    generation: u32,
}

impl Ticket {
    /// The head seen so far is incomplete (the connection may be evicted once old enough).
    pub fn reading_partial(&self) {
        self.set_stage(Stage::Reading { partial: true });
    }

    /// The head is read: the answer is being made.
    pub fn answering(&self) {
        self.set_stage(Stage::Answering);
    }

    fn set_stage(&self, stage: Stage) {
        if let Some(entry) = self.slots.entries.borrow_mut().get_mut(self.key) {
            debug_assert_eq!(entry.generation, self.generation);
            entry.stage = stage;
        }
    }

    /// Completes once the accept loop evicted this connection.
    pub fn evicted(&self) -> Evicted<'_> {
        Evicted { ticket: self }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.slots.release(self.key, self.generation);
    }
}

/// The future of [`HandshakeSlots::room`].
pub struct Room<'a> {
    slots: &'a HandshakeSlots,
}

impl Future for Room<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.slots.has_room() {
            return Poll::Ready(());
        }
        *self.slots.room_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The future of [`Ticket::evicted`].
pub struct Evicted<'a> {
    ticket: &'a Ticket,
}

impl Future for Evicted<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut entries = self.ticket.slots.entries.borrow_mut();
        let Some(entry) = entries.get_mut(self.ticket.key) else {
            return Poll::Ready(());
        };
        if entry.evicted {
            return Poll::Ready(());
        }
        match &entry.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => entry.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(std::sync::atomic::AtomicBool);

    impl Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    fn poll_once<F: Future>(future: F) -> (Poll<F::Output>, std::sync::Arc<Flag>) {
        let flag = std::sync::Arc::new(Flag(false.into()));
        let waker = Waker::from(std::sync::Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        let mut future = std::pin::pin!(future);
        (future.as_mut().poll(&mut cx), flag)
    }

    fn woken(flag: &Flag) -> bool {
        flag.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    #[test]
    fn takes_up_to_capacity_and_frees_on_drop() {
        let slots = HandshakeSlots::new(2);
        let t0 = Instant::now();
        let a = slots.take(10, t0).unwrap();
        let _b = slots.take(11, t0).unwrap();
        assert!(slots.take(12, t0).is_none());
        assert!(!slots.has_room());
        drop(a);
        assert!(slots.has_room());
        assert!(slots.take(12, t0).is_some());
    }

    #[test]
    fn the_accept_loop_is_woken_when_a_slot_frees() {
        let slots = HandshakeSlots::new(1);
        let ticket = slots.take(10, Instant::now()).unwrap();
        let flag = std::sync::Arc::new(Flag(false.into()));
        let waker = Waker::from(std::sync::Arc::clone(&flag));
        let mut room = std::pin::pin!(slots.room());
        assert!(
            room.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        drop(ticket);
        assert!(woken(&flag));
        assert!(
            room.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
        );
    }

    #[test]
    fn only_old_silent_or_partial_readers_are_evicted_oldest_first() {
        let slots = HandshakeSlots::new(4);
        let t0 = slots.last_finished.get();
        let old = EVICT_AGE_MIN.max(STALL_MIN);
        let answering = slots.take(1, t0).unwrap();
        answering.answering();
        let waiting_input = slots.take(2, t0).unwrap();
        let silent = slots.take(3, t0 + ms(1)).unwrap();
        let young = slots.take(4, t0 + old).unwrap();
        let has_input = |fd| fd == 2;
        assert!(
            !slots.evict_oldest(t0 + old - ms(10), has_input),
            "nobody is old enough, and the slots are not stuck yet"
        );
        let (poll, flag) = poll_once(silent.evicted());
        assert!(poll.is_pending());
        let now = t0 + old + ms(1);
        assert!(slots.evict_oldest(now, has_input));
        assert!(woken(&flag), "the evicted connection is woken");
        assert!(poll_once(silent.evicted()).0.is_ready());
        assert!(poll_once(answering.evicted()).0.is_pending());
        assert!(poll_once(waiting_input.evicted()).0.is_pending());
        assert!(
            !slots.evict_oldest(now, has_input),
            "the young one stops the scan"
        );
        young.reading_partial();
        assert!(slots.evict_oldest(t0 + old + EVICT_AGE_MIN, has_input));
        assert!(poll_once(young.evicted()).0.is_ready());
        drop(silent);
        assert_eq!(slots.len(), 3);
    }

    #[test]
    fn no_eviction_while_handshakes_keep_finishing() {
        let slots = HandshakeSlots::new(2);
        let t0 = Instant::now();
        let slow = slots.take(1, t0).unwrap();
        let finishing = slots.take(2, t0).unwrap();
        // A handshake finished just now: the slots are busy, not stuck.
        drop(finishing);
        let now = slots.last_finished.get();
        let later = (now + EVICT_AGE_MIN).max(t0 + EVICT_AGE_MIN);
        assert!(!slots.evict_oldest(now + STALL_MIN - ms(1), |_| false));
        assert!(slots.evict_oldest(later.max(now + STALL_MIN), |_| false));
        assert!(poll_once(slow.evicted()).0.is_ready());
        // An evicted handshake's end is not progress.
        let before = slots.last_finished.get();
        drop(slow);
        assert_eq!(slots.last_finished.get(), before);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_order_queue_stays_within_capacity() {
        let slots = HandshakeSlots::new(2);
        let t0 = Instant::now();
        let held = slots.take(1, t0).unwrap();
        for fd in 0..1_000 {
            let ticket = slots.take(fd, t0).unwrap();
            drop(ticket);
        }
        assert!(slots.order.borrow().len() <= 2);
        drop(held);
        assert_eq!(slots.len(), 0);
    }
}
