//! AdamW (decoupled weight decay) on flat buffers: the arithmetic of PyTorch's `foreach=False`
//! path, run once per bucket of parameters (see `flat`), with its state (moments, step) saved
//! as named per-parameter tensors, so checkpoints do not depend on the bucket size.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use super::Flat;

/// Hyper-parameters other than the learning rate (which changes per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl From<&syncdiff_model::config::TrainConfig> for AdamWConfig {
    /// `train.betas`, `train.eps`, `train.weight_decay`.
    fn from(t: &syncdiff_model::config::TrainConfig) -> Self {
        Self {
            beta1: t.betas[0],
            beta2: t.betas[1],
            eps: t.eps,
            weight_decay: t.weight_decay,
        }
    }
}

/// Why optimizer state could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A state tensor is missing.
    #[error("optimizer state has no `{0}`")]
    Missing(String),
    /// A state tensor has the wrong shape.
    #[error("optimizer state `{name}` has shape {actual:?}, the parameter has {expected:?}")]
    Shape {
        /// State tensor name.
        name: String,
        /// Parameter shape.
        expected: Vec<i64>,
        /// Saved shape.
        actual: Vec<i64>,
    },
}

/// AdamW over the buckets of a [`Flat`] layout.
#[derive(Debug)]
pub struct AdamW {
    flat: Flat,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: i64,
    cfg: AdamWConfig,
}

impl AdamW {
    /// Optimises the parameters of `flat`, moments starting at zero.
    pub fn new(flat: Flat, cfg: AdamWConfig) -> Self {
        Self {
            exp_avg: flat.zeros_like_buckets(),
            exp_avg_sq: flat.zeros_like_buckets(),
            flat,
            step: 0,
            cfg,
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// The optimised parameters, in name order.
    pub fn params(&self) -> &[Tensor] {
        self.flat.params()
    }

    /// One update with learning rate `lr` from the current gradients: eight operations per
    /// bucket, whatever the number of tensors in it.
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = self.cfg;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias1;
        tch::no_grad(|| {
            for (((p, g), m), v) in self
                .flat
                .buckets()
                .iter()
                .zip(self.flat.grads())
                .zip(&mut self.exp_avg)
                .zip(&mut self.exp_avg_sq)
            {
                let mut p = p.shallow_clone();
                if c.weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = m.lerp_(g, 1.0 - c.beta1);
                let _ = v.g_mul_scalar_(c.beta2);
                let _ = v.addcmul_(&(g * (1.0 - c.beta2)), g);
                let mut denom = v.sqrt();
                let _ = denom.g_div_scalar_(bias2_sqrt);
                let _ = denom.g_add_scalar_(c.eps);
                // p -= step_size * m / denom, as p += m / (denom / -step_size): no temporary.
                let _ = denom.g_div_scalar_(-step_size);
                let _ = p.addcdiv_(m, &denom);
            }
        });
    }

    /// Clears the gradients (one operation per bucket).
    pub fn zero_grad(&mut self) {
        self.flat.zero_grad();
    }

    /// State as named tensors: `exp_avg.<param>`, `exp_avg_sq.<param>` (views of the flat
    /// moments), and `step`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let m = self.flat.views(&self.exp_avg);
        let v = self.flat.views(&self.exp_avg_sq);
        let mut out = Vec::with_capacity(2 * m.len() + 1);
        for ((n, m), (_, v)) in m.into_iter().zip(v) {
            out.push((format!("exp_avg.{n}"), m));
            out.push((format!("exp_avg_sq.{n}"), v));
        }
        out.push((
            "step".into(),
            Tensor::from_slice(&[self.step]).to_kind(Kind::Int64),
        ));
        out
    }

    /// Restores [`state`](Self::state) (from any bucket size: names and shapes are checked).
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), OptimError> {
        let m = self.flat.views(&self.exp_avg);
        let v = self.flat.views(&self.exp_avg_sq);
        let mut pairs = Vec::with_capacity(2 * m.len());
        for ((n, m), (_, v)) in m.into_iter().zip(v) {
            pairs.push((format!("exp_avg.{n}"), m));
            pairs.push((format!("exp_avg_sq.{n}"), v));
        }
        super::load_views(&pairs, state)?;
        let step = state
            .get("step")
            .ok_or_else(|| OptimError::Missing("step".into()))?;
        self.step = step.int64_value(&[0]);
        Ok(())
    }
}
