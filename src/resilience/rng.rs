//! A tiny seeded random number generator (SplitMix64) for jitter.
//!
//! Jitter needs neither cryptographic quality nor a dependency; it needs to
//! be reproducible, so a test can seed it and check a backoff schedule
//! exactly.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// SplitMix64: a 64-bit state, one add and a mix per number.
///
/// The same seed always yields the same sequence. Not for cryptography.
///
/// ```
/// use tierpool::SeedRng;
///
/// let mut a = SeedRng::new(7);
/// let mut b = SeedRng::new(7);
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.uniform_inclusive(10) <= 10);
/// ```
#[derive(Debug, Clone)]
pub struct SeedRng {
    state: u64,
}

impl SeedRng {
    /// A generator whose sequence is fixed by `seed`.
    ///
    /// ```
    /// use tierpool::SeedRng;
    /// let first = SeedRng::new(42).next_u64();
    /// assert_eq!(first, SeedRng::new(42).next_u64());
    /// ```
    pub fn new(seed: u64) -> Self {
        SeedRng { state: seed }
    }

    /// A generator seeded from the process's hash randomness (std's
    /// `RandomState`), for production jitter that differs between
    /// processes without pulling in a `rand` dependency.
    ///
    /// ```
    /// use tierpool::SeedRng;
    /// let mut rng = SeedRng::from_entropy();
    /// let _ = rng.next_u64();
    /// ```
    pub fn from_entropy() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x7469_6572_706f_6f6c); // "tierpool"
        SeedRng::new(h.finish())
    }

    /// The next 64 random bits.
    ///
    /// ```
    /// use tierpool::SeedRng;
    /// let mut rng = SeedRng::new(1);
    /// assert_ne!(rng.next_u64(), rng.next_u64());
    /// ```
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`, for every `max` including `u64::MAX`.
    ///
    /// Uses the multiply-high mapping without rejection: the bias is below
    /// 2⁻⁶⁴ · max, irrelevant for jitter, and the call never loops.
    ///
    /// ```
    /// use tierpool::SeedRng;
    /// let mut rng = SeedRng::new(3);
    /// assert_eq!(rng.uniform_inclusive(0), 0);
    /// assert!(rng.uniform_inclusive(5) <= 5);
    /// ```
    pub fn uniform_inclusive(&mut self, max: u64) -> u64 {
        let span = max as u128 + 1;
        ((self.next_u64() as u128 * span) >> 64) as u64
    }

    /// A number in `[0, 1)` with 53 random bits.
    ///
    /// ```
    /// use tierpool::SeedRng;
    /// let x = SeedRng::new(9).next_f64();
    /// assert!((0.0..1.0).contains(&x));
    /// ```
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_reference_splitmix64_sequence() {
        // First outputs of SplitMix64 seeded with 0 (Vigna's reference).
        let mut rng = SeedRng::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn uniform_inclusive_covers_the_extremes_without_overflow() {
        let mut rng = SeedRng::new(5);
        for _ in 0..1000 {
            assert!(rng.uniform_inclusive(1) <= 1);
            let _ = rng.uniform_inclusive(u64::MAX);
        }
        let hits: std::collections::HashSet<u64> =
            (0..200).map(|_| rng.uniform_inclusive(3)).collect();
        assert_eq!(hits.len(), 4);
    }
}
