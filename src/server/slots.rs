//! The per-core session slab and its deadline queue: a fixed number of slots allocated when the
//! worker starts, and one heap of armed deadlines instead of a timer per connection (a monoio
//! `Sleep` is 640 bytes; an idle session must cost far less).
//!
//! Invariants: the slab never holds more than `capacity` entries and never reallocates
//! (`insert` refuses when full); the deadline heap never passes its start capacity (stale
//! entries are dropped before it would); a slot's waker is the only way another task on the core
//! reaches a connection (deadlines and the drain's close signal).

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use super::streams::Streams;
use crate::session::{Millis, Session};

/// Bytes one slot takes in the slab (for the budget): the slot plus the slab entry tag.
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>() + std::mem::size_of::<usize>();
/// Deadline-heap entries per slot: the armed one and at most one stale one on average.
const DEADLINES_PER_SLOT: usize = 2;

/// What lives in a slot while its connection is open.
pub struct Slot {
    /// The protocol state machine; `None` for the test-only echo route.
    pub session: Option<Session>,
    /// Where the session's effects go: droppable-stream rings, spill log state.
    pub streams: Streams,
    generation: u32,
    armed: Option<Millis>,
    waker: Option<Waker>,
    signalled: bool,
    /// Its receive buffer is needed by others (see `parked`).
    evicted: bool,
}

impl Slot {
    /// A slot for `session` (`None` on the echo route) and its streams, not yet inserted.
    pub fn new(session: Option<Session>, streams: Streams) -> Slot {
        Slot {
            session,
            streams,
            generation: 0,
            armed: None,
            waker: None,
            signalled: false,
            evicted: false,
        }
    }

    /// Tells this slot's session apart from earlier and later ones in the same key.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    fn signal(&mut self) {
        self.signalled = true;
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

/// (deadline ms, slot key, slot generation), earliest first.
type Deadline = Reverse<(u64, usize, u32)>;

/// This core's session slab (`sessions_per_core` slots, never reallocated) and the heap of its
/// armed deadlines.
pub struct Slots {
    slab: RefCell<Slab<Slot>>,
    deadlines: RefCell<BinaryHeap<Deadline>>,
    capacity: usize,
    next_generation: Cell<u32>,
}

impl Slots {
    /// `capacity` free slots, allocated now.
    pub fn new(capacity: usize) -> Slots {
        Slots {
            slab: RefCell::new(Slab::with_capacity(capacity)),
            deadlines: RefCell::new(BinaryHeap::with_capacity(capacity * DEADLINES_PER_SLOT + 1)),
            capacity,
            next_generation: Cell::new(0),
        }
    }

    /// Slots taken.
    pub fn len(&self) -> usize {
        self.slab.borrow().len()
    }

    /// True when every slot is taken.
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Stores `slot`; None when every slot is taken.
    pub fn insert(&self, mut slot: Slot) -> Option<usize> {
        let mut slab = self.slab.borrow_mut();
        if slab.len() >= self.capacity {
            return None;
        }
        slot.generation = self.next_generation.get();
        self.next_generation.set(slot.generation.wrapping_add(1));
        let key = slab.insert(slot);
        debug_assert!(
            slab.capacity() == self.capacity,
            "the slab never reallocates"
        );
        Some(key)
    }

    /// Frees slot `key` and returns what it held (panics if it is free).
    pub fn remove(&self, key: usize) -> Slot {
        self.slab.borrow_mut().remove(key)
    }

    /// Runs `f` on the slot; the slab stays borrowed for the call, so `f` must not await.
    pub fn with<R>(&self, key: usize, f: impl FnOnce(&mut Slot) -> R) -> R {
        f(&mut self.slab.borrow_mut()[key])
    }

    /// Runs `f` on the slot if it still holds the session of `generation`; the slab stays
    /// borrowed for the call.
    pub fn with_live<R>(
        &self,
        key: usize,
        generation: u32,
        f: impl FnOnce(&mut Slot) -> R,
    ) -> Option<R> {
        let mut slab = self.slab.borrow_mut();
        let slot = slab.get_mut(key).filter(|s| s.generation == generation)?;
        Some(f(slot))
    }

    /// True while `key` holds the session of `generation`.
    pub fn is_live(&self, key: usize, generation: u32) -> bool {
        self.slab
            .borrow()
            .get(key)
            .is_some_and(|s| s.generation == generation)
    }

    /// Tells the connection of `key`, if it is still the session of `generation`, that its
    /// receive buffer is needed by others; true if it was.
    pub fn evict(&self, key: usize, generation: u32) -> bool {
        let mut slab = self.slab.borrow_mut();
        match slab.get_mut(key).filter(|s| s.generation == generation) {
            Some(slot) => {
                slot.evicted = true;
                slot.signal();
                true
            }
            None => false,
        }
    }

    /// Whether the connection of `key` was told to give its buffer back (and clears it).
    pub fn take_evicted(&self, key: usize) -> bool {
        std::mem::take(&mut self.slab.borrow_mut()[key].evicted)
    }

    /// Wakes the slot's connection (a reply is ready).
    pub fn signal(&self, key: usize) {
        self.slab.borrow_mut()[key].signal();
    }

    /// Makes sure the slot is signalled at `deadline` or earlier. A later deadline than the armed
    /// one changes nothing: the connection re-arms when the earlier one fires.
    pub fn arm(&self, key: usize, deadline: Millis) {
        let mut slab = self.slab.borrow_mut();
        let slot = &mut slab[key];
        if slot.armed.is_some_and(|armed| armed <= deadline) {
            return;
        }
        slot.armed = Some(deadline);
        let entry = Reverse((deadline.0, key, slot.generation));
        let mut deadlines = self.deadlines.borrow_mut();
        if deadlines.len() == deadlines.capacity() {
            deadlines.retain(|Reverse((at, key, generation))| {
                slab.get(*key)
                    .is_some_and(|s| s.generation == *generation && s.armed == Some(Millis(*at)))
            });
        }
        assert!(
            deadlines.len() < deadlines.capacity(),
            "one live deadline per slot at most"
        );
        deadlines.push(entry);
    }

    /// Signals every slot whose armed deadline is at or before `now`.
    pub fn fire_due(&self, now: Millis) {
        let mut deadlines = self.deadlines.borrow_mut();
        let mut slab = self.slab.borrow_mut();
        while let Some(&Reverse((at, key, generation))) = deadlines.peek() {
            if at > now.0 {
                break;
            }
            deadlines.pop();
            let Some(slot) = slab.get_mut(key) else {
                continue;
            };
            if slot.generation == generation && slot.armed == Some(Millis(at)) {
                slot.armed = None;
                slot.signal();
            }
        }
    }

    /// Marks every slot signalled and wakes its connection.
    pub fn signal_all(&self) {
        for (_, slot) in self.slab.borrow_mut().iter_mut() {
            slot.signal();
        }
    }

    /// Completes once the slot is signalled (and clears the signal).
    pub fn signalled(&self, key: usize) -> Signalled<'_> {
        Signalled { slots: self, key }
    }
}

/// The future of [`Slots::signalled`].
pub struct Signalled<'a> {
    slots: &'a Slots,
    key: usize,
}

impl Future for Signalled<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut slab = self.slots.slab.borrow_mut();
        let slot = &mut slab[self.key];
        if slot.signalled {
            slot.signalled = false;
            return Poll::Ready(());
        }
        match &slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => slot.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::streams::Streams;

    fn slot() -> Slot {
        Slot::new(None, Streams::none())
    }

    fn signalled(slots: &Slots, key: usize) -> bool {
        slots.with(key, |s| std::mem::take(&mut s.signalled))
    }

    #[test]
    fn refuses_past_capacity() {
        let slots = Slots::new(2);
        let a = slots.insert(slot()).unwrap();
        slots.insert(slot()).unwrap();
        assert!(slots.insert(slot()).is_none());
        slots.remove(a);
        assert!(slots.insert(slot()).is_some());
    }

    #[test]
    fn deadlines_fire_in_order_and_only_once() {
        let slots = Slots::new(4);
        let a = slots.insert(slot()).unwrap();
        let b = slots.insert(slot()).unwrap();
        slots.arm(a, Millis(100));
        slots.arm(b, Millis(50));
        slots.fire_due(Millis(49));
        assert!(!signalled(&slots, a) && !signalled(&slots, b));
        slots.fire_due(Millis(60));
        assert!(!signalled(&slots, a) && signalled(&slots, b));
        slots.fire_due(Millis(1000));
        assert!(signalled(&slots, a));
        slots.fire_due(Millis(2000));
        assert!(!signalled(&slots, a), "a deadline fires once");
    }

    #[test]
    fn a_later_deadline_keeps_the_earlier_and_an_earlier_replaces_it() {
        let slots = Slots::new(1);
        let a = slots.insert(slot()).unwrap();
        slots.arm(a, Millis(100));
        slots.arm(a, Millis(500));
        slots.fire_due(Millis(100));
        assert!(signalled(&slots, a));
        slots.arm(a, Millis(500));
        slots.arm(a, Millis(200));
        slots.fire_due(Millis(200));
        assert!(signalled(&slots, a));
        slots.fire_due(Millis(500));
        assert!(!signalled(&slots, a), "the replaced deadline is stale");
    }

    #[test]
    fn a_removed_slot_reused_does_not_get_the_old_deadline() {
        let slots = Slots::new(1);
        let a = slots.insert(slot()).unwrap();
        slots.arm(a, Millis(100));
        slots.remove(a);
        let b = slots.insert(slot()).unwrap();
        assert_eq!(a, b);
        slots.fire_due(Millis(100));
        assert!(!signalled(&slots, b));
    }

    #[test]
    fn the_heap_stays_within_capacity_under_rearming() {
        let slots = Slots::new(1);
        let a = slots.insert(slot()).unwrap();
        for at in (0..1000u64).rev() {
            slots.arm(a, Millis(at + 1));
        }
        assert!(slots.deadlines.borrow().len() <= DEADLINES_PER_SLOT + 1);
    }
}
