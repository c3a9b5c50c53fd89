//! The simulation's one source of randomness: SplitMix64, so that a seed replays exactly on any
//! machine and with any version of the `rand` crate.

/// A SplitMix64 generator: one `u64` of state.
#[derive(Debug, Clone, Default)]
pub struct SimRng {
    state: u64,
}

impl SimRng {
    /// A generator whose stream is fixed by `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng { state: seed }
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound` > 0; the modulo bias is negligible for small bounds).
    pub fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        self.next_u64() % bound
    }

    /// True with probability `ppm` per million.
    pub fn chance_ppm(&mut self, ppm: u32) -> bool {
        ppm > 0 && self.below(1_000_000) < u64::from(ppm)
    }

    /// A new independent stream (for a component that draws on its own).
    pub fn fork(&mut self) -> SimRng {
        SimRng::new(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_exactly() {
        let mut a = SimRng::new(42);
        let mut b = SimRng::new(42);
        let drawn: Vec<u64> = (0..100).map(|_| a.below(1000)).collect();
        assert!(
            drawn
                .iter()
                .zip((0..100).map(|_| b.below(1000)))
                .all(|(x, y)| *x == y)
        );
        assert!(drawn.iter().any(|&x| x != drawn[0]));
        assert_ne!(SimRng::new(43).next_u64(), SimRng::new(42).next_u64());
    }
}
