//! Plain SGD with decoupled weight decay (no state; the tests' optimizer), and the configured
//! optimizer (`train.optimizer`) behind one type.

use super::{AdamW, Flat};

/// p <- p (1 - lr wd) - lr g, one pass per bucket.
#[derive(Debug)]
pub struct Sgd {
    flat: Flat,
    weight_decay: f64,
}

impl Sgd {
    /// SGD over the parameters of `flat`.
    pub fn new(flat: Flat, weight_decay: f64) -> Self {
        Self { flat, weight_decay }
    }

    /// One update at learning rate `lr`.
    pub fn step(&mut self, lr: f64) {
        tch::no_grad(|| {
            for (p, g) in self.flat.buckets().iter().zip(self.flat.grads()) {
                let mut p = p.shallow_clone();
                if self.weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = p.g_add_(&(g * -lr));
            }
        });
    }
}

/// The configured optimizer.
#[derive(Debug)]
pub enum Optimizer {
    /// AdamW with its moments.
    AdamW(AdamW),
    /// Plain SGD (no state).
    Sgd(Sgd),
}

impl Optimizer {
    /// One update at learning rate `lr` from the current gradients.
    pub fn step(&mut self, lr: f64) {
        match self {
            Self::AdamW(o) => o.step(lr),
            Self::Sgd(o) => o.step(lr),
        }
    }

    /// Zeroes the gradients.
    pub fn zero_grad(&mut self) {
        match self {
            Self::AdamW(o) => o.zero_grad(),
            Self::Sgd(o) => o.flat.zero_grad(),
        }
    }

    /// The state to checkpoint (named tensors; none for SGD).
    pub fn state(&self) -> Vec<(String, tch::Tensor)> {
        match self {
            Self::AdamW(o) => o.state(),
            Self::Sgd(_) => Vec::new(),
        }
    }
}
