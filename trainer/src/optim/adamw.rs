//! AdamW (decoupled weight decay), one parameter at a time like PyTorch's `foreach=False` path,
//! with its state (moments, step) as named tensors for checkpoints.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

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

/// AdamW over named parameters (in a fixed order: sorted by name).
#[derive(Debug)]
pub struct AdamW {
    names: Vec<String>,
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: i64,
    cfg: AdamWConfig,
}

impl AdamW {
    /// Optimises `params` (name, tensor requiring grad).
    pub fn new(mut params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, params): (Vec<String>, Vec<Tensor>) = params.into_iter().unzip();
        let zeros = |p: &Tensor| p.zeros_like().set_requires_grad(false);
        Self {
            exp_avg: params.iter().map(zeros).collect(),
            exp_avg_sq: params.iter().map(zeros).collect(),
            names,
            params,
            step: 0,
            cfg,
        }
    }

    /// Steps taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// The optimised parameters, in order.
    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// One update with learning rate `lr` from the current gradients (parameters without a
    /// gradient are left alone).
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = self.cfg;
        let bias1 = 1.0 - c.beta1.powi(self.step as i32);
        let bias2_sqrt = (1.0 - c.beta2.powi(self.step as i32)).sqrt();
        let step_size = lr / bias1;
        tch::no_grad(|| {
            for ((p, m), v) in self
                .params
                .iter()
                .zip(&mut self.exp_avg)
                .zip(&mut self.exp_avg_sq)
            {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                if c.weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                }
                let _ = m.lerp_(&g, 1.0 - c.beta1);
                let _ = v.g_mul_scalar_(c.beta2);
                let _ = v.addcmul_(&(&g * (1.0 - c.beta2)), &g);
                let mut denom = v.sqrt();
                let _ = denom.g_div_scalar_(bias2_sqrt);
                let _ = denom.g_add_scalar_(c.eps);
                // p -= step_size * m / denom, as p += m / (denom / -step_size): no temporary.
                let _ = denom.g_div_scalar_(-step_size);
                let _ = p.addcdiv_(m, &denom);
            }
        });
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }

    /// State as named tensors: `exp_avg.<param>`, `exp_avg_sq.<param>`, and `step`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.names.len() + 1);
        for ((n, m), v) in self.names.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            out.push((format!("exp_avg.{n}"), m.shallow_clone()));
            out.push((format!("exp_avg_sq.{n}"), v.shallow_clone()));
        }
        out.push((
            "step".into(),
            Tensor::from_slice(&[self.step]).to_kind(Kind::Int64),
        ));
        out
    }

    /// Restores [`state`](Self::state).
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), OptimError> {
        let get = |k: String, like: &Tensor| -> Result<Tensor, OptimError> {
            let t = state
                .get(&k)
                .ok_or_else(|| OptimError::Missing(k.clone()))?;
            if t.size() != like.size() {
                return Err(OptimError::Shape {
                    name: k,
                    expected: like.size(),
                    actual: t.size(),
                });
            }
            Ok(t.to_kind(like.kind()).to_device(like.device()))
        };
        let mut m = Vec::with_capacity(self.params.len());
        let mut v = Vec::with_capacity(self.params.len());
        for (n, p) in self.names.iter().zip(&self.params) {
            m.push(get(format!("exp_avg.{n}"), p)?);
            v.push(get(format!("exp_avg_sq.{n}"), p)?);
        }
        let step = state
            .get("step")
            .ok_or_else(|| OptimError::Missing("step".into()))?;
        self.step = step.int64_value(&[0]);
        self.exp_avg = m;
        self.exp_avg_sq = v;
        Ok(())
    }
}
