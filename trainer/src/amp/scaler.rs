//! The dynamic loss scale of fp16 training, with `torch.amp.GradScaler`'s rules: the loss is
//! multiplied by the scale before backward; after the all-reduce the gradients are multiplied by
//! the float32 reciprocal of the scale and checked for inf/NaN (every rank sees the same averaged
//! gradients, so every rank decides the same); a step with a non-finite gradient is skipped and
//! the scale backs off, `growth_interval` finite steps in a row grow it (when the grown scale is
//! finite). The scale is a float32, as GradScaler's is.

use syncdiff_checkpoint::LossScaleState;
use syncdiff_model::config::LossScaleConfig;
use tch::{Kind, Tensor};

/// The scale and its update rule.
#[derive(Debug, Clone)]
pub struct LossScaler {
    cfg: LossScaleConfig,
    state: LossScaleState,
}

impl LossScaler {
    /// A scaler at `cfg.init_scale`.
    pub fn new(cfg: &LossScaleConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            state: LossScaleState {
                scale: cfg.init_scale as f32,
                growth_tracker: 0,
            },
        }
    }

    /// The scale to multiply the loss by.
    pub fn scale(&self) -> f32 {
        self.state.scale
    }

    /// The state to checkpoint.
    pub fn state(&self) -> LossScaleState {
        self.state
    }

    /// Continues from a checkpoint's state.
    pub fn restore(&mut self, state: LossScaleState) {
        self.state = state;
    }

    /// The update after a step (`torch._amp_update_scale_`): back off on `found_inf`, else count
    /// the step and grow after `growth_interval` of them.
    pub fn update(&mut self, found_inf: bool) {
        let s = &mut self.state;
        if found_inf {
            s.scale = (f64::from(s.scale) * self.cfg.backoff_factor) as f32;
            s.growth_tracker = 0;
            return;
        }
        let successful = s.growth_tracker + 1;
        if successful == self.cfg.growth_interval {
            let grown = (f64::from(s.scale) * self.cfg.growth_factor) as f32;
            if grown.is_finite() {
                s.scale = grown;
            }
            s.growth_tracker = 0;
        } else {
            s.growth_tracker = successful;
        }
    }
}

/// Multiplies every gradient by the float32 reciprocal of `scale` (computed in double, as
/// GradScaler does) and returns whether all of them are finite: one multiply and one check per
/// flat gradient bucket, one read for the step.
pub fn unscale_and_check(grads: &[Tensor], scale: f32) -> Result<bool, tch::TchError> {
    let inv = f64::from((1.0f64 / f64::from(scale)) as f32);
    tch::no_grad(|| {
        for g in grads {
            let _ = g.shallow_clone().g_mul_scalar_(inv);
        }
    });
    all_finite(grads)
}

/// Whether every element of `grads` is finite (one host read).
pub fn all_finite(grads: &[Tensor]) -> Result<bool, tch::TchError> {
    let finite: Vec<Tensor> = tch::no_grad(|| grads.iter().map(|g| g.isfinite().all()).collect());
    if finite.is_empty() {
        return Ok(true);
    }
    let all = Tensor::stack(&finite, 0).all().to_kind(Kind::Float);
    Ok(crate::host::scalar(&all)? > 0.5)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backs_off_on_inf_and_grows_after_the_interval() {
        let mut s = LossScaler::new(&LossScaleConfig {
            init_scale: 8.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2,
        });
        let mut seen = Vec::new();
        for inf in [false, false, true, false, false, false] {
            s.update(inf);
            seen.push(s.scale());
        }
        assert_eq!(seen, [8.0, 16.0, 8.0, 8.0, 16.0, 16.0]);
        // A grown scale that overflows float32 is not taken.
        s.restore(LossScaleState {
            scale: f32::MAX,
            growth_tracker: 1,
        });
        s.update(false);
        assert_eq!(
            s.state(),
            LossScaleState {
                scale: f32::MAX,
                growth_tracker: 0
            }
        );
    }

    #[test]
    fn unscale_divides_and_finds_non_finite_values() {
        let g = Tensor::from_slice(&[2.0f32, 4.0]);
        assert!(unscale_and_check(&[g.shallow_clone()], 2.0).unwrap());
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), [1.0, 2.0]);
        let bad = Tensor::from_slice(&[1.0f32, f32::NAN]);
        assert!(!unscale_and_check(&[g, bad], 1.0).unwrap());
    }
}
