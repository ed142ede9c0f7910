//! Counter-based randomness: a value is a pure function of (seed, key...), so results do not
//! depend on thread scheduling, world size or restarts. [`gaussian`] and [`keyed_noise`] draw
//! the diffusion noise of training and generation from such keys.

use tch::Tensor;

/// SplitMix64 finaliser: a well-mixed 64-bit hash of `x`.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A small deterministic generator seeded from a key path, e.g. `Rng::new(&[seed, speaker, clip])`.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// Generator for the key path `keys`.
    pub fn new(keys: &[u64]) -> Self {
        let state = keys
            .iter()
            .fold(0x2545_F491_4F6C_DD1D, |acc, &k| mix(acc ^ mix(k)));
        Self { state }
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix(self.state)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in [0, n) (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for n far below 2^64.
        ((u128::from(self.next_u64()) * u128::from(n.max(1))) >> 64) as u64
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// `n` standard normal values from `seed` (Box-Muller): a sample's noise, identical on any rank.
pub fn gaussian(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(&[seed]);
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1 = rng.uniform().max(f64::MIN_POSITIVE);
        let u2 = rng.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let a = std::f64::consts::TAU * u2;
        out.push((r * a.cos()) as f32);
        out.push((r * a.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Standard normal noise of shape (B, ..sample) on the CPU: sample b drawn by [`gaussian`] from
/// the seed `Rng::new(keys[b]).next_u64()`, so each sample's noise depends on its keys alone.
pub fn keyed_noise(keys: &[Vec<u64>], sample: &[i64]) -> Tensor {
    let n: i64 = sample.iter().product();
    let parts: Vec<Tensor> = keys
        .iter()
        .map(|k| {
            let seed = Rng::new(k).next_u64();
            Tensor::from_slice(&gaussian(seed, n as usize)).view(sample)
        })
        .collect();
    Tensor::stack(&parts, 0)
}
