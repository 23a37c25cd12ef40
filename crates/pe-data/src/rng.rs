//! A small, version-stable random number generator keyed by (seed, epoch, position).
//!
//! Why our own: determinism is a feature of the loader ("same seed, same batches, whatever the worker
//! count"), so every sample draws from a stream derived only from its key, never from a shared generator.
//! Owning the ~60 lines also means a dependency upgrade can never silently change an experiment's data.
//! The generator is xoshiro256++ seeded through SplitMix64, the construction its authors recommend.

/// Stream domains keep the generators of different purposes (sample augmentation, shuffling, mixup,
/// bad-file replacement) independent even when their numeric keys coincide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// Per-sample augmentation (crop, flip, RandAugment, erasing).
    Sample = 0x5A3C_1E0F,
    /// The epoch's permutation.
    Shuffle = 0x7B1D_44A2,
    /// Mixup/CutMix per batch.
    Mix = 0x2C9E_B00B,
    /// Choosing a replacement for an unreadable file.
    Replace = 0x6F0A_D1CE,
}

/// xoshiro256++ with convenience draws mirroring Python's `random` module where the transforms need them.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Rng {
    /// A generator for one stream, keyed by any number of integers (seed, epoch, position, ...).
    pub fn keyed(stream: Stream, key: &[u64]) -> Self {
        let mut h = stream as u64;
        for &k in key {
            // Mix each key word through SplitMix64 so (1, 2) and (2, 1) give unrelated streams.
            let mut st = h ^ k.wrapping_mul(0xD6E8_FEB8_6659_FD93);
            h = splitmix64(&mut st);
        }
        let mut st = h;
        let s = [splitmix64(&mut st), splitmix64(&mut st), splitmix64(&mut st), splitmix64(&mut st)];
        Rng { s }
    }

    /// Next raw 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits (Python's `random.random()`).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi) (Python's `random.uniform`).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// Uniform integer in [0, n); `n == 0` gives 0. Lemire's multiply-shift with rejection, unbiased.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        loop {
            let m = (self.next_u64() as u128) * (n as u128);
            let low = m as u64;
            if low >= n.wrapping_neg() % n {
                return (m >> 64) as u64;
            }
        }
    }

    /// Uniform integer in [lo, hi] inclusive (Python's `random.randint`); `hi < lo` gives `lo`.
    pub fn randint(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo) as u64 + 1) as i64
    }

    /// True with probability `p`.
    pub fn bernoulli(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Standard normal draw (Box–Muller; one value per call keeps the stream position simple).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.f64(); // (0, 1]
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Normal with mean `mu` and standard deviation `sigma` (Python's `random.gauss`).
    pub fn gauss(&mut self, mu: f64, sigma: f64) -> f64 {
        mu + sigma * self.normal()
    }

    /// Gamma(shape, 1) by Marsaglia–Tsang, with the shape < 1 boost.
    pub fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let u = 1.0 - self.f64();
            return self.gamma(shape + 1.0) * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = 1.0 - self.f64();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b) from two gammas (numpy's `random.beta` for a, b > 0).
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let x = self.gamma(a);
        let y = self.gamma(b);
        if x + y == 0.0 {
            // Both underflowed (tiny alphas): Beta mass sits at the ends; pick one fairly.
            return if self.bernoulli(a / (a + b)) { 1.0 } else { 0.0 };
        }
        x / (x + y)
    }

    /// A uniformly random permutation of 0..n (Fisher–Yates).
    pub fn permutation(&mut self, n: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_streams_are_reproducible_and_distinct() {
        let a: Vec<u64> = (0..4).map(|_| Rng::keyed(Stream::Sample, &[1, 2, 3]).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let b = Rng::keyed(Stream::Sample, &[1, 3, 2]).next_u64();
        let c = Rng::keyed(Stream::Shuffle, &[1, 2, 3]).next_u64();
        assert_ne!(a[0], b);
        assert_ne!(a[0], c);
    }

    #[test]
    fn draws_have_the_right_moments() {
        let mut r = Rng::keyed(Stream::Sample, &[7]);
        let n = 200_000;
        let (mut su, mut sn, mut sn2, mut sb) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..n {
            su += r.f64();
            let z = r.normal();
            sn += z;
            sn2 += z * z;
            sb += r.beta(0.8, 0.8);
        }
        let n = n as f64;
        assert!((su / n - 0.5).abs() < 0.01);
        assert!((sn / n).abs() < 0.01);
        assert!((sn2 / n - 1.0).abs() < 0.02);
        assert!((sb / n - 0.5).abs() < 0.01);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[r.randint(0, 2) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (c as i64 - 10_000).abs() < 500), "{counts:?}");
    }

    #[test]
    fn permutation_is_a_permutation() {
        let mut p = Rng::keyed(Stream::Shuffle, &[0, 1]).permutation(1000);
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        p.sort_unstable();
        assert_eq!(p, (0..1000).collect::<Vec<_>>());
    }
}
