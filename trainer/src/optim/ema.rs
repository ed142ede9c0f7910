//! Exponential moving average of the trainable weights, with LDM's warm-up:
//! decay_n = min(decay, (1 + n) / (10 + n)) at update n.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use super::OptimError;

/// EMA shadow weights.
#[derive(Debug)]
pub struct Ema {
    names: Vec<String>,
    shadow: Vec<Tensor>,
    updates: u64,
    decay: f64,
    warmup: bool,
}

impl Ema {
    /// Shadows of `params` (name, tensor), starting equal to them.
    pub fn new(params: &[(String, Tensor)], decay: f64, warmup: bool) -> Self {
        let mut p: Vec<&(String, Tensor)> = params.iter().collect();
        p.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            names: p.iter().map(|(n, _)| n.clone()).collect(),
            shadow: p.iter().map(|(_, t)| t.detach().copy()).collect(),
            updates: 0,
            decay,
            warmup,
        }
    }

    /// The decay used at the next update.
    pub fn current_decay(&self) -> f64 {
        let n = self.updates as f64;
        if self.warmup {
            self.decay.min((1.0 + n) / (10.0 + n))
        } else {
            self.decay
        }
    }

    /// shadow <- d shadow + (1 - d) param, for `params` in the order given at construction.
    pub fn update(&mut self, params: &[Tensor]) {
        let d = self.current_decay();
        tch::no_grad(|| {
            for (s, p) in self.shadow.iter_mut().zip(params) {
                let _ = s.lerp_(p, 1.0 - d);
            }
        });
        self.updates += 1;
    }

    /// Named shadow weights (the EMA model), and the update count as `ema_updates`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out: Vec<(String, Tensor)> = self
            .names
            .iter()
            .cloned()
            .zip(self.shadow.iter().map(Tensor::shallow_clone))
            .collect();
        out.push((
            "ema_updates".into(),
            Tensor::from_slice(&[self.updates as i64]).to_kind(Kind::Int64),
        ));
        out
    }

    /// Restores [`state`](Self::state).
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), OptimError> {
        for (n, s) in self.names.iter().zip(&mut self.shadow) {
            let t = state.get(n).ok_or_else(|| OptimError::Missing(n.clone()))?;
            if t.size() != s.size() {
                return Err(OptimError::Shape {
                    name: n.clone(),
                    expected: s.size(),
                    actual: t.size(),
                });
            }
            tch::no_grad(|| s.copy_(t));
        }
        let u = state
            .get("ema_updates")
            .ok_or_else(|| OptimError::Missing("ema_updates".into()))?;
        self.updates = u.int64_value(&[0]) as u64;
        Ok(())
    }
}
