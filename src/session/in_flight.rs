//! The set of conversations whose 104 is being processed, in a fixed array.
//!
//! Ids are kept as 64-bit SipHash digests to keep a session small. Two distinct ids of one session
//! sharing a digest (odds about 2⁻⁶⁴ per pair) would make the second look like a duplicate: it
//! would get no 201 and the client would send it again after reconnecting.
//!
//! The array is allocated on the session's first 104: most sessions never send one, and an
//! idle session must stay small.
//!
//! Invariant: at most `max` ≤ [`PROCESS_IN_FLIGHT_LIMIT`] digests, all distinct.

use std::hash::{DefaultHasher, Hasher};

use crate::id::Id;

/// The largest in-flight bound a session can be configured with.
pub const PROCESS_IN_FLIGHT_LIMIT: usize = 16;

pub(super) struct InFlight {
    digests: Option<Box<[u64; PROCESS_IN_FLIGHT_LIMIT]>>,
    len: u8,
    max: u8,
}

impl InFlight {
    pub(super) fn new(max: usize) -> InFlight {
        assert!(
            (1..=PROCESS_IN_FLIGHT_LIMIT).contains(&max),
            "process in-flight max must be within 1..={PROCESS_IN_FLIGHT_LIMIT}"
        );
        InFlight {
            digests: None,
            len: 0,
            max: max as u8,
        }
    }

    pub(super) fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub(super) fn is_full(&self) -> bool {
        self.len == self.max
    }

    pub(super) fn contains(&self, conversation: &Id) -> bool {
        self.position(digest(conversation)).is_some()
    }

    pub(super) fn insert(&mut self, conversation: &Id) {
        let digest = digest(conversation);
        debug_assert!(!self.is_full());
        debug_assert!(self.position(digest).is_none());
        let index = self.len();
        self.digests
            .get_or_insert_with(|| Box::new([0; PROCESS_IN_FLIGHT_LIMIT]))[index] = digest;
        self.len += 1;
    }

    /// Forgets `conversation`; `false` when it was not in flight.
    pub(super) fn remove(&mut self, conversation: &Id) -> bool {
        let Some(index) = self.position(digest(conversation)) else {
            return false;
        };
        self.len -= 1;
        let last = self.len();
        let digests = self.digests.as_mut().expect("a digest was found");
        digests[index] = digests[last];
        true
    }

    pub(super) fn clear(&mut self) {
        self.len = 0;
    }

    fn position(&self, digest: u64) -> Option<usize> {
        let digests = self.digests.as_ref()?;
        digests[..self.len()].iter().position(|&d| d == digest)
    }
}

fn digest(conversation: &Id) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(conversation.as_str().as_bytes());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> Id {
        Id::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn insert_contains_remove() {
        let mut set = InFlight::new(3);
        set.insert(&id("a"));
        set.insert(&id("b"));
        assert!(set.contains(&id("a")) && set.contains(&id("b")));
        assert!(!set.contains(&id("c")));
        assert!(set.remove(&id("a")));
        assert!(!set.remove(&id("a")));
        assert!(!set.contains(&id("a")));
        assert!(set.contains(&id("b")));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn fills_to_its_max_and_clears() {
        let mut set = InFlight::new(2);
        set.insert(&id("a"));
        assert!(!set.is_full());
        set.insert(&id("b"));
        assert!(set.is_full());
        set.clear();
        assert_eq!(set.len(), 0);
        assert!(!set.contains(&id("a")));
    }

    #[test]
    #[should_panic(expected = "process in-flight max")]
    fn max_above_the_limit_is_refused() {
        InFlight::new(PROCESS_IN_FLIGHT_LIMIT + 1);
    }
}
