//! A simulated object store: objects by key, every put counted, faults drawn from the
//! simulation's random stream — a put that fails, or that is stored but whose reply is lost (the
//! uploader sees a failure and puts again), each after a latency.

use std::collections::BTreeMap;

use super::rng::SimRng;

/// Fault rates in parts per million of puts, and the latency range of a put.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreFaults {
    /// Puts that fail without storing anything.
    pub fail_ppm: u32,
    /// Puts that store the object but whose reply is lost (seen as a failure).
    pub lost_reply_ppm: u32,
    /// Longest latency of a put in milliseconds (each drawn from `0 ..= latency_ms_max`).
    pub latency_ms_max: u64,
}

/// What becomes of one put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored and confirmed.
    Stored,
    /// Not stored; the uploader sees an error.
    Failed,
    /// Stored, but the uploader sees an error (a timeout).
    LostReply,
}

/// The simulated object store: objects by key and a count of puts per key.
#[derive(Debug, Default)]
pub struct SimStore {
    objects: BTreeMap<String, Vec<u8>>,
    puts: BTreeMap<String, u32>,
    /// The fault rates and latency of the next puts.
    pub faults: StoreFaults,
}

impl SimStore {
    /// Draws the outcome and latency of a put about to start.
    pub fn plan_put(&self, rng: &mut SimRng) -> (PutOutcome, u64) {
        let latency_ms = rng.below(self.faults.latency_ms_max + 1);
        let outcome = if rng.chance_ppm(self.faults.fail_ppm) {
            PutOutcome::Failed
        } else if rng.chance_ppm(self.faults.lost_reply_ppm) {
            PutOutcome::LostReply
        } else {
            PutOutcome::Stored
        };
        (outcome, latency_ms)
    }

    /// The put reached the store (overwriting: puts are idempotent by key).
    pub fn store(&mut self, key: &str, body: &[u8]) {
        self.objects.insert(key.to_string(), body.to_vec());
        *self.puts.entry(key.to_string()).or_default() += 1;
    }

    /// Every object stored, by key.
    pub fn objects(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.objects
    }

    /// Puts that reached the store, all keys.
    pub fn puts_total(&self) -> u64 {
        self.puts.values().map(|&n| u64::from(n)).sum()
    }
}
