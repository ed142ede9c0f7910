//! The learning-rate schedule (`train.lr_schedule`: warm-up, then constant or cosine).

use syncdiff_model::config::{LrSchedule, TrainConfig};

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
