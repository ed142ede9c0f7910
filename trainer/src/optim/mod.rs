//! Optimisation written on tensors, so every piece of state can be saved and restored:
//! parameters and gradients as views of flat buffers (`flat`), AdamW (`adamw`), EMA with
//! warm-up (`ema`), the learning-rate schedule (`schedule`), clipping by global norm (`clip`),
//! SGD (`sgd`), and the configured optimizer ([`Optimizer`], here).

mod adamw;
mod clip;
mod ema;
mod flat;
mod schedule;
mod sgd;

use std::collections::BTreeMap;

use tch::Tensor;

pub use adamw::{AdamW, AdamWConfig, OptimError};
pub use clip::clip_grad_norm;
pub use ema::Ema;
pub use flat::{bucket_elements, buckets, Flat, FlatError};
pub use schedule::lr_at;
pub use sgd::Sgd;

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
            Self::Sgd(o) => o.zero_grad(),
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

/// Copies saved tensors into the named views of flat state, checking every name and shape
/// first, so a failed restore changes nothing.
fn load_views(
    views: &[(String, Tensor)],
    state: &BTreeMap<String, Tensor>,
) -> Result<(), OptimError> {
    let mut sources = Vec::with_capacity(views.len());
    for (name, view) in views {
        let t = state
            .get(name)
            .ok_or_else(|| OptimError::Missing(name.clone()))?;
        if t.size() != view.size() {
            return Err(OptimError::Shape {
                name: name.clone(),
                expected: view.size(),
                actual: t.size(),
            });
        }
        sources.push(t);
    }
    tch::no_grad(|| {
        for ((_, view), t) in views.iter().zip(sources) {
            view.shallow_clone().copy_(t);
        }
    });
    Ok(())
}
