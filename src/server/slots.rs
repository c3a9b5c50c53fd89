//! The per-core session slab: a fixed number of slots allocated when the worker starts.
//!
//! Invariant: the slab never holds more than `capacity` entries and never reallocates
//! (`insert` refuses when full); a slot's waker is the only way another task on the core reaches
//! a connection (drain and close signals).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use super::outputs::Rings;
use crate::session::Session;

/// Bytes one slot takes in the slab (for the budget): the slot plus the slab entry tag.
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>() + std::mem::size_of::<usize>();

/// What lives in a slot while its connection is open.
pub struct Slot {
    /// The protocol state machine; `None` for the test-only echo route.
    pub session: Option<Session>,
    /// Droppable-stream rings, present only when the stream has a consumer.
    pub rings: Rings,
    waker: Option<Waker>,
    signalled: bool,
}

impl Slot {
    pub fn new(session: Option<Session>, rings: Rings) -> Slot {
        Slot {
            session,
            rings,
            waker: None,
            signalled: false,
        }
    }
}

pub struct Slots {
    slab: RefCell<Slab<Slot>>,
    capacity: usize,
}

impl Slots {
    pub fn new(capacity: usize) -> Slots {
        Slots {
            slab: RefCell::new(Slab::with_capacity(capacity)),
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.slab.borrow().len()
    }

    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Stores `slot`; None when every slot is taken.
    pub fn insert(&self, slot: Slot) -> Option<usize> {
        let mut slab = self.slab.borrow_mut();
        if slab.len() >= self.capacity {
            return None;
        }
        let key = slab.insert(slot);
        debug_assert!(
            slab.capacity() == self.capacity,
            "the slab never reallocates"
        );
        Some(key)
    }

    pub fn remove(&self, key: usize) -> Slot {
        self.slab.borrow_mut().remove(key)
    }

    /// Runs `f` on the slot; the slab stays borrowed for the call, so `f` must not await.
    pub fn with<R>(&self, key: usize, f: impl FnOnce(&mut Slot) -> R) -> R {
        f(&mut self.slab.borrow_mut()[key])
    }

    /// Marks every slot signalled and wakes its connection.
    pub fn signal_all(&self) {
        for (_, slot) in self.slab.borrow_mut().iter_mut() {
            slot.signalled = true;
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }

    /// Completes once the slot is signalled (and clears the signal).
    pub fn signalled(&self, key: usize) -> Signalled<'_> {
        Signalled { slots: self, key }
    }
}

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
