//! Exponential moving average of the trainable weights, with LDM's warm-up:
//! decay_n = min(decay, (1 + n) / (10 + n)) at update n. The shadows are flat buffers laid out
//! like the parameters' (see `flat`): one operation per bucket per update.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use super::{Flat, OptimError};

/// EMA shadow weights.
#[derive(Debug)]
pub struct Ema {
    flat: Flat,
    shadow: Vec<Tensor>,
    updates: u64,
    decay: f64,
    warmup: bool,
}

impl Ema {
    /// Shadows of the parameters of `flat`, starting equal to them.
    pub fn new(flat: Flat, decay: f64, warmup: bool) -> Self {
        Self {
            shadow: flat.buckets().iter().map(|b| b.detach().copy()).collect(),
            flat,
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

    /// shadow <- d shadow + (1 - d) param.
    pub fn update(&mut self) {
        let d = self.current_decay();
        tch::no_grad(|| {
            for (s, p) in self.shadow.iter_mut().zip(self.flat.buckets()) {
                let _ = s.lerp_(p, 1.0 - d);
            }
        });
        self.updates += 1;
    }

    /// Named shadow weights (the EMA model), and the update count as `ema_updates`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = self.flat.views(&self.shadow);
        out.push((
            "ema_updates".into(),
            Tensor::from_slice(&[self.updates as i64]).to_kind(Kind::Int64),
        ));
        out
    }

    /// Restores [`state`](Self::state) (from any bucket size: names and shapes are checked).
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), OptimError> {
        super::load_views(&self.flat.views(&self.shadow), state)?;
        let u = state
            .get("ema_updates")
            .ok_or_else(|| OptimError::Missing("ema_updates".into()))?;
        self.updates = u.int64_value(&[0]) as u64;
        Ok(())
    }
}
