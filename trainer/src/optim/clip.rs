//! Gradient clipping by global norm (`train.grad_clip`).

use tch::Tensor;

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
///
/// As torch's `clip_grad_norm_`: per-tensor norms in the gradients' own precision, their norm
/// on the device, and the scale `min(1, max_norm / (norm + 1e-6))` applied on the device, so the
/// only host read is the norm returned (one, whatever the number of tensors).
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<f64, tch::TchError> {
    let defined: Vec<&Tensor> = grads.iter().filter(|g| g.defined()).collect();
    let Some(first) = defined.first() else {
        return Ok(0.0);
    };
    let norms: Vec<Tensor> = defined
        .iter()
        .map(|g| g.norm().to_kind(tch::Kind::Float))
        .collect();
    let total = Tensor::stack(&norms, 0).norm();
    let scale = (max_norm / (&total + 1e-6))
        .clamp_max(1.0)
        .to_kind(first.kind());
    tch::no_grad(|| {
        for g in &defined {
            let _ = g.shallow_clone().g_mul_(&scale);
        }
    });
    crate::host::scalar(&total)
}
