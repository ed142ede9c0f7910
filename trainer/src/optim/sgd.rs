//! Plain SGD with decoupled weight decay (no state; the tests' optimizer).

use super::Flat;

/// p <- p (1 - lr wd) - lr g, one pass per bucket.
#[derive(Debug)]
pub struct Sgd {
    flat: Flat,
    weight_decay: f64,
}

impl Sgd {
    /// Zeroes the gradients.
    pub fn zero_grad(&mut self) {
        self.flat.zero_grad();
    }

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
