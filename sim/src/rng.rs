//! The simulator's only source of randomness: xoshiro256** seeded through splitmix64.
//! Small, fast, and fully determined by the seed, so a failing run is replayed by its seed.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    pub fn seed(seed: u64) -> Self {
        let mut st = seed;
        let s = [
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
            splitmix64(&mut st),
        ];
        Self { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (Lemire's method, unbiased). `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform in `0..=max`, for every `max` (`below(max + 1)` would wrap at `u64::MAX`).
    /// Draws exactly what `below(max + 1)` draws wherever that does not wrap.
    pub fn up_to(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.below(n),
            None => self.next_u64(),
        }
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// An independent stream for a sub-component (one per simulated node), derived from this
    /// one, so adding a node does not shift the randomness every other node sees.
    pub fn fork(&mut self, label: u64) -> Rng {
        Rng::seed(self.next_u64() ^ label.wrapping_mul(0xa076_1d64_78bd_642f))
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;
    use proptest::prelude::{any, prop_assert, proptest};

    #[test]
    fn same_seed_same_stream_different_seed_different_stream() {
        let a: Vec<u64> = {
            let mut r = Rng::seed(7);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = Rng::seed(7);
            (0..8).map(|_| r.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut r = Rng::seed(8);
            (0..8).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn below_is_roughly_uniform() {
        let mut r = Rng::seed(1);
        let mut counts = [0u32; 6];
        for _ in 0..60_000 {
            counts[r.below(6) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn up_to_takes_the_whole_range_and_draws_what_below_draws() {
        let (mut a, mut b) = (Rng::seed(3), Rng::seed(3));
        for max in [0, 1, 6, 1 << 40] {
            assert_eq!(a.up_to(max), b.below(max + 1));
        }
        // No `max + 1` to wrap: a draw from the whole of u64.
        let (mut a, mut b) = (Rng::seed(4), Rng::seed(4));
        assert_eq!(a.up_to(u64::MAX), b.next_u64());
    }

    proptest! {
        #[test]
        fn below_stays_in_range(seed in any::<u64>(), n in 1u64..u64::MAX) {
            let mut r = Rng::seed(seed);
            for _ in 0..16 {
                prop_assert!(r.below(n) < n);
            }
        }
    }
}
