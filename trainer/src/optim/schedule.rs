//! Learning-rate schedule and gradient clipping.

use syncdiff_model::config::{LrSchedule, TrainConfig};
use tch::Tensor;

/// Learning rate at optimizer step `step` (0-based) of `total`: linear warm-up from 0 to
/// `train.lr` over `warmup_steps`, then constant, cosine or linear decay to `min_lr` at the end.
pub fn lr_at(cfg: &TrainConfig, step: u64, total: u64) -> f64 {
    let w = cfg.warmup_steps;
    if step < w {
        return cfg.lr * (step + 1) as f64 / w as f64;
    }
    let span = total.saturating_sub(w).max(1) as f64;
    let progress = ((step - w) as f64 / span).min(1.0);
    match cfg.lr_schedule {
        LrSchedule::Constant => cfg.lr,
        LrSchedule::Linear => cfg.min_lr + (cfg.lr - cfg.min_lr) * (1.0 - progress),
        LrSchedule::Cosine => {
            cfg.min_lr
                + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &[Tensor], max_norm: f64) -> f64 {
    // Per-tensor norms in the gradients' own precision (one pass each, like torch's
    // clip_grad_norm_), combined in f64.
    let sq: f64 = grads
        .iter()
        .map(|g| {
            let n = f64::try_from(g.norm()).unwrap_or(0.0);
            n * n
        })
        .sum();
    let norm = sq.sqrt();
    if norm > max_norm && norm > 0.0 {
        let scale = max_norm / (norm + 1e-6);
        tch::no_grad(|| {
            for g in grads {
                let _ = g.shallow_clone().g_mul_scalar_(scale);
            }
        });
    }
    norm
}
