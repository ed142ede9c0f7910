//! Optimisation written on tensors, so every piece of state can be saved and restored:
//! parameters and gradients as views of flat buffers (`flat`), AdamW (`adamw`), EMA with
//! warm-up (`ema`), learning-rate schedule and clipping (`schedule`), SGD and the configured
//! optimizer (`sgd`).

mod adamw;
mod ema;
mod flat;
mod schedule;
mod sgd;

use std::collections::BTreeMap;

use tch::Tensor;

pub use adamw::{AdamW, AdamWConfig, OptimError};
pub use ema::Ema;
pub use flat::{bucket_elements, buckets, Flat, FlatError};
pub use schedule::{clip_grad_norm, lr_at};
pub use sgd::{Optimizer, Sgd};

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
