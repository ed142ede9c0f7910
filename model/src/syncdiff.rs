//! The composed SyncDiff denoiser: visual priors (masked frame, identity frame, bottlenecked
//! previous frames) concatenated to the noisy latent, audio context through cross-attention.
//!
//! All randomness (timesteps, noise) comes in as tensors, so the caller decides how it is drawn
//! (the trainer uses a counter-based RNG keyed by sample, independent of world size).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::{ModelConfig, PriorsConfig, SamplerKind};
use crate::diffusion::Schedule;
use crate::dpm_solver::{DpmSolverPp2m, Spacing};
use crate::unet::{Unet, UnetShape};

/// Latent conditioning of a batch of B target frames.
#[derive(Debug)]
pub struct Conditioning<'a> {
    /// Latent of the masked target frame: (B, C, h, w).
    pub masked: &'a Tensor,
    /// Latent of the identity frame: (B, C, h, w); required when the prior mode uses it.
    pub identity: Option<&'a Tensor>,
    /// Latents of the NP previous frames, oldest first: (B, NP, C, h, w); required when used.
    pub previous: Option<&'a Tensor>,
    /// Audio context for cross-attention: (B, M, context_dim).
    pub context: &'a Tensor,
}

/// Options of sampling.
#[derive(Debug)]
pub struct SampleOptions<'a> {
    /// DDIM or DPM-Solver++(2M).
    pub sampler: SamplerKind,
    /// Sampling steps.
    pub steps: usize,
    /// DDIM eta (0: deterministic).
    pub eta: f64,
    /// Audio classifier-free guidance scale: the output is `uncond + guidance * (cond -
    /// uncond)`, the unconditional half taking the learned null context; 1 is off (one pass).
    pub guidance: f64,
    /// DDIM: return the last step's x0 prediction instead of its x_prev (which still holds
    /// the noise of alpha-bar at the first timestep). DPM-Solver++ ends at x0 either way.
    pub final_x0: bool,
    /// Blend target: re-noised reference latent (B, C, h, w) and keep mask (B or 1, 1, h, w):
    /// where keep = 1 the reference is imposed at every step (DiffTalk's inpainting).
    pub inpaint: Option<(&'a Tensor, &'a Tensor)>,
}

/// Which random draw of a DDIM step a noise tensor is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepNoise {
    /// The stochastic part of step i (eta > 0).
    Ddim(usize),
    /// The noise that re-noises the inpainting reference at step i.
    Inpaint(usize),
}

/// Why a forward pass cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SyncDiffError {
    /// A prior the configuration needs was not given.
    #[error("the prior mode {mode} needs the {what} latent, which was not given")]
    MissingPrior {
        /// Prior mode.
        mode: String,
        /// Which input.
        what: &'static str,
    },
    /// Guidance needs the learned null context, which only models trained with audio dropout have.
    #[error(
        "{0} needs a model trained with audio dropout (train.audio_dropout > 0, which learns the \
         null audio context); this model has none"
    )]
    NoNullContext(String),
    /// A conditioning input has the wrong number of dimensions.
    #[error("the {what} latents must be {expected}, got shape {actual:?}")]
    Shape {
        /// Which input.
        what: &'static str,
        /// The layout expected.
        expected: &'static str,
        /// The shape given.
        actual: Vec<i64>,
    },
}

/// SyncDiff: UNet (`unet.*`) plus the pose bottleneck (`bottleneck.*`) and, for models trained
/// with audio dropout, the learned null audio context (`null_context`, (1, M, D)).
#[derive(Debug)]
pub struct SyncDiff {
    unet: Unet,
    bottleneck: Option<nn::Conv2D>,
    null_context: Option<Tensor>,
    priors: PriorsConfig,
    schedule: Schedule,
}

impl SyncDiff {
    /// Builds the denoiser of `cfg` under `vs` (without a null context).
    pub fn new(vs: nn::Path, cfg: &ModelConfig) -> Self {
        Self::build(vs, cfg, false)
    }

    /// Builds the denoiser of `cfg` under `vs`; with `null_context`, also the learned null audio
    /// context (initialised to zeros) that audio dropout trains and guidance samples with.
    pub fn build(vs: nn::Path, cfg: &ModelConfig, null_context: bool) -> Self {
        let shape = UnetShape::of(cfg);
        let np = i64::from(cfg.priors.previous_frames);
        let c = i64::from(cfg.latent_channels());
        // One 1x1 conv per previous frame (groups = NP): C channels -> 1 channel each.
        let bottleneck = cfg.priors.reference.uses_bottleneck().then(|| {
            let conv = nn::ConvConfig {
                groups: np,
                ..Default::default()
            };
            nn::conv2d(&vs / "bottleneck", c * np, np, 1, conv)
        });
        let unet = Unet::new(&vs / "unet", &shape);
        // Made after every other variable, so it does not shift their random initialisation.
        let null_context = null_context.then(|| {
            let (m, d) = (
                i64::from(cfg.context_tokens()),
                i64::from(cfg.context_dim()),
            );
            vs.zeros("null_context", &[1, m, d])
        });
        Self {
            unet,
            bottleneck,
            null_context,
            priors: cfg.priors.clone(),
            schedule: Schedule::new(&cfg.diffusion),
        }
    }

    /// The noise schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The UNet.
    pub fn unet(&self) -> &Unet {
        &self.unet
    }

    /// The learned null audio context (1, M, D), when the model has one.
    pub fn null_context(&self) -> Option<&Tensor> {
        self.null_context.as_ref()
    }

    /// `context` (B, M, D) with the samples where `drop` (B,) is true replaced by the null
    /// context (audio dropout). Fails when the model has no null context.
    pub fn drop_context(&self, context: &Tensor, drop: &Tensor) -> Result<Tensor, SyncDiffError> {
        let null = self
            .null_context
            .as_ref()
            .ok_or_else(|| SyncDiffError::NoNullContext("audio dropout".into()))?;
        let keep = drop.logical_not().view([-1, 1, 1]);
        Ok(context.where_self(&keep, &null.expand_as(context)))
    }

    /// Channels the UNet sees besides the noisy latent: (B, in_channels - C, h, w).
    pub fn priors_input(&self, cond: &Conditioning<'_>) -> Result<Tensor, SyncDiffError> {
        let mode = self.priors.reference;
        let missing = |what| SyncDiffError::MissingPrior {
            mode: format!("{mode:?}"),
            what,
        };
        let mut parts = vec![cond.masked.shallow_clone()];
        if mode.uses_identity() {
            parts.push(
                cond.identity
                    .ok_or_else(|| missing("identity"))?
                    .shallow_clone(),
            );
        }
        if mode.uses_previous() {
            let prev = cond.previous.ok_or_else(|| missing("previous-frame"))?;
            let (b, np, c, h, w) = prev.size5().map_err(|_| SyncDiffError::Shape {
                what: "previous-frame",
                expected: "(B, NP, C, h, w)",
                actual: prev.size(),
            })?;
            // (B, NP, C, h, w) -> (B, NP*C, h, w)
            let flat = prev.reshape([b, np * c, h, w]);
            parts.push(match &self.bottleneck {
                Some(conv) => conv.forward(&flat),
                None => flat,
            });
        }
        Ok(Tensor::cat(&parts, 1))
    }

    /// Model output for noisy latents x_t: (B, C, h, w) at timesteps t: (B,).
    pub fn predict(
        &self,
        x_t: &Tensor,
        t: &Tensor,
        cond: &Conditioning<'_>,
        train: bool,
    ) -> Result<Tensor, SyncDiffError> {
        let input = Tensor::cat(&[x_t.shallow_clone(), self.priors_input(cond)?], 1);
        Ok(self.unet.forward(&input, t, cond.context, train))
    }

    /// Mean squared error between the model output and the configured target, for clean latents
    /// z0: (B, C, h, w), timesteps t: (B,) and noise like z0. Returns a scalar.
    pub fn loss(
        &self,
        z0: &Tensor,
        t: &Tensor,
        noise: &Tensor,
        cond: &Conditioning<'_>,
        train: bool,
    ) -> Result<Tensor, SyncDiffError> {
        let x_t = self.schedule.q_sample(z0, t, noise);
        let out = self.predict(&x_t, t, cond, train)?;
        Ok(out.mse_loss(&self.schedule.target(z0, t, noise), tch::Reduction::Mean))
    }

    /// Sampling (DDIM or DPM-Solver++(2M)) from x_T = `noise`: (B, C, h, w). `step_noise(n)`
    /// gives the noise (like x_T) of step i's draws: `StepNoise::Ddim(i)` when eta > 0,
    /// `StepNoise::Inpaint(i)` for the re-noised reference; `None` draws from libtorch's
    /// generator. With guidance, the conditional and unconditional halves run as one UNet call
    /// on 2B samples. Returns the predicted clean latent (B, C, h, w).
    pub fn sample(
        &self,
        cond: &Conditioning<'_>,
        noise: &Tensor,
        opts: &SampleOptions<'_>,
        mut step_noise: impl FnMut(StepNoise) -> Option<Tensor>,
    ) -> Result<Tensor, SyncDiffError> {
        tch::no_grad(|| {
            let b = noise.size()[0];
            let guided = opts.guidance != 1.0;
            // The priors do not change over the steps: the bottleneck runs once.
            let mut priors = self.priors_input(cond)?;
            let mut context = cond.context.shallow_clone();
            if guided {
                let null = self.null_context.as_ref().ok_or_else(|| {
                    SyncDiffError::NoNullContext(format!("guidance {}", opts.guidance))
                })?;
                priors = Tensor::cat(&[&priors, &priors], 0);
                context = Tensor::cat(&[&context, &null.expand_as(&context)], 0);
            }
            let rows = if guided { 2 * b } else { b };
            let mut x = noise.shallow_clone();
            let mut dpm = match opts.sampler {
                SamplerKind::Ddim => None,
                SamplerKind::DpmPp2m => Some(Spacing::Linspace),
                SamplerKind::DpmPp2mKarras => Some(Spacing::Karras),
            }
            .map(|spacing| DpmSolverPp2m::new(&self.schedule, opts.steps, spacing));
            let timesteps = match &dpm {
                Some(s) => s.timesteps().to_vec(),
                None => self.schedule.ddim_timesteps(opts.steps),
            };
            let last = timesteps.len().saturating_sub(1);
            for (i, t) in timesteps.into_iter().enumerate() {
                if let Some((reference, keep)) = opts.inpaint {
                    let tt = Tensor::full([b], t, (Kind::Int64, x.device()));
                    let draw = step_noise(StepNoise::Inpaint(i))
                        .unwrap_or_else(|| noise.zeros_like().normal_(0.0, 1.0));
                    let renoised = self.schedule.q_sample(reference, &tt, &draw);
                    x = &renoised * keep + &x * (1.0 - keep);
                }
                let xs = if guided {
                    Tensor::cat(&[&x, &x], 0)
                } else {
                    x.shallow_clone()
                };
                let input = Tensor::cat(&[xs, priors.shallow_clone()], 1);
                let ts = Tensor::full([rows], t, (Kind::Int64, x.device()));
                // Under autocast the UNet answers in the low precision; the sampler's arithmetic
                // stays in x's (float32).
                let mut out = self
                    .unet
                    .forward(&input, &ts, &context, false)
                    .to_kind(x.kind());
                if guided {
                    let halves = out.chunk(2, 0);
                    out = &halves[1] + (&halves[0] - &halves[1]) * opts.guidance;
                }
                x = match &mut dpm {
                    Some(solver) => solver.step(&out, &x),
                    None if opts.final_x0 && i == last => self.schedule.x0_at(&out, t, &x),
                    None => {
                        let extra = (opts.eta > 0.0)
                            .then(|| step_noise(StepNoise::Ddim(i)))
                            .flatten();
                        self.schedule
                            .ddim_step(&out, t, &x, opts.steps, opts.eta, extra.as_ref())
                    }
                };
            }
            Ok(x)
        })
    }
}
