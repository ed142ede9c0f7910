//! Diffusion math: beta schedule, forward noising, training targets, DDIM sampling.
//!
//! The schedule is computed in f64 (as LDM does) and applied to tensors as scalars. DDIM follows
//! LDM's sampler, which is diffusers `DDIMScheduler` with `steps_offset=1`,
//! `set_alpha_to_one=False`, `clip_sample=False` and "leading" spacing: for 200 of 1000 steps the
//! timesteps are 996, 991, ..., 6, 1.

use tch::{Kind, Tensor};

use crate::config::{BetaSchedule, DiffusionConfig, PredictionTarget};

/// The noise schedule of training and sampling.
#[derive(Debug, Clone)]
pub struct Schedule {
    alphas_cumprod: Vec<f64>,
    prediction: PredictionTarget,
    /// alpha-bar as a float32 tensor on the device last used: uploaded once, not per forward.
    table: std::sync::Arc<std::sync::Mutex<Option<Tensor>>>,
}

impl Schedule {
    /// From `model.diffusion`.
    pub fn new(cfg: &DiffusionConfig) -> Self {
        let n = cfg.timesteps as usize;
        let lin = |a: f64, b: f64, i: usize| {
            if n == 1 {
                a
            } else {
                a + (b - a) * i as f64 / (n - 1) as f64
            }
        };
        let betas: Vec<f64> = (0..n)
            .map(|i| match cfg.beta_schedule {
                BetaSchedule::ScaledLinear => {
                    lin(cfg.beta_start.sqrt(), cfg.beta_end.sqrt(), i).powi(2)
                }
                BetaSchedule::Linear => lin(cfg.beta_start, cfg.beta_end, i),
            })
            .collect();
        let mut acc = 1.0;
        let alphas_cumprod = betas
            .iter()
            .map(|b| {
                acc *= 1.0 - b;
                acc
            })
            .collect();
        Self {
            alphas_cumprod,
            prediction: cfg.prediction,
            table: Default::default(),
        }
    }

    /// Training timesteps T.
    pub fn timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// What the model predicts.
    pub fn prediction(&self) -> PredictionTarget {
        self.prediction
    }

    /// alpha-bar at each timestep.
    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// Per-sample sqrt(alpha-bar_t) and sqrt(1 - alpha-bar_t), shaped (B, 1, 1, 1) like x.
    fn coefficients(&self, t: &Tensor, like: &Tensor) -> (Tensor, Tensor) {
        let table = {
            // A poisoned lock only means another thread panicked mid-upload: upload again.
            let mut cached = self.table.lock().unwrap_or_else(|p| p.into_inner());
            match cached.as_ref().filter(|t| t.device() == like.device()) {
                Some(t) => t.shallow_clone(),
                None => {
                    let t = Tensor::from_slice(&self.alphas_cumprod)
                        .to_kind(Kind::Float)
                        .to_device(like.device());
                    *cached = Some(t.shallow_clone());
                    t
                }
            }
        };
        let a = table.index_select(0, &t.to_kind(Kind::Int64));
        let shape: Vec<i64> = std::iter::once(-1)
            .chain(std::iter::repeat_n(1, like.dim() - 1))
            .collect();
        let a = a.view(shape.as_slice()).to_kind(like.kind());
        (a.sqrt(), (a.ones_like() - &a).sqrt())
    }

    /// Forward process: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise. x0, noise: (B, ...), t: (B,).
    pub fn q_sample(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        let (sa, sb) = self.coefficients(t, x0);
        sa * x0 + sb * noise
    }

    /// What the model should output for (x0, noise, t) under the configured prediction target.
    pub fn target(&self, x0: &Tensor, t: &Tensor, noise: &Tensor) -> Tensor {
        match self.prediction {
            PredictionTarget::Eps => noise.shallow_clone(),
            PredictionTarget::X0 => x0.shallow_clone(),
            PredictionTarget::V => {
                let (sa, sb) = self.coefficients(t, x0);
                sa * noise - sb * x0
            }
        }
    }

    /// The clean-latent prediction of `model_output` for sample `x`, at a timestep whose
    /// sqrt(alpha-bar) is `sqrt_a` and sqrt(1 - alpha-bar) is `sqrt_b` (every sampler's first
    /// step).
    pub fn x0_of(&self, model_output: &Tensor, x: &Tensor, sqrt_a: f64, sqrt_b: f64) -> Tensor {
        match self.prediction {
            PredictionTarget::Eps => (x - model_output * sqrt_b) / sqrt_a,
            PredictionTarget::X0 => model_output.shallow_clone(),
            PredictionTarget::V => x * sqrt_a - model_output * sqrt_b,
        }
    }

    /// The x0 prediction of `model_output` for x = `x` at timestep `t`.
    pub fn x0_at(&self, model_output: &Tensor, t: i64, x: &Tensor) -> Tensor {
        let a_t = self.alphas_cumprod[t as usize];
        self.x0_of(model_output, x, a_t.sqrt(), (1.0 - a_t).sqrt())
    }

    /// DDIM timesteps for `steps` sampling steps, from noisiest to cleanest.
    pub fn ddim_timesteps(&self, steps: usize) -> Vec<i64> {
        let ratio = (self.timesteps() / steps.max(1)) as i64;
        (0..steps as i64).rev().map(|i| i * ratio + 1).collect()
    }

    /// One DDIM update from timestep `t` to the previous sampling timestep.
    ///
    /// x, model_output: (B, ...). `noise` is used only when `eta > 0`.
    pub fn ddim_step(
        &self,
        model_output: &Tensor,
        t: i64,
        x: &Tensor,
        steps: usize,
        eta: f64,
        noise: Option<&Tensor>,
    ) -> Tensor {
        let ratio = (self.timesteps() / steps.max(1)) as i64;
        let prev = t - ratio;
        let a_t = self.alphas_cumprod[t as usize];
        // set_alpha_to_one = False: the step after the last uses alpha-bar_0.
        let a_prev = if prev >= 0 {
            self.alphas_cumprod[prev as usize]
        } else {
            self.alphas_cumprod[0]
        };
        let b_t = 1.0 - a_t;
        let x0 = self.x0_of(model_output, x, a_t.sqrt(), b_t.sqrt());
        let eps = match self.prediction {
            PredictionTarget::Eps => model_output.shallow_clone(),
            PredictionTarget::X0 => (x - model_output * a_t.sqrt()) / b_t.sqrt(),
            PredictionTarget::V => model_output * a_t.sqrt() + x * b_t.sqrt(),
        };
        let variance = (1.0 - a_prev) / b_t * (1.0 - a_t / a_prev);
        let std = eta * variance.sqrt();
        let out = x0 * a_prev.sqrt() + eps * (1.0 - a_prev - std * std).sqrt();
        match noise {
            Some(n) if eta > 0.0 => out + n * std,
            _ => out,
        }
    }
}
