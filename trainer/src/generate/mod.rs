//! Inference (model-spec.md section 8): lip-synced video from a reference video and driving
//! audio. Frames of one clip are generated in order, each conditioned on the identity frame (the
//! reference's first frame), the previously *generated* frame (the pose prior; frame 0 uses the
//! reference's first frame), the masked reference frame and the audio around it. Different clips
//! are independent, so a batch of clips advances one frame at a time together.

mod clip;
mod model;

pub use clip::{ping_pong, prepare, read_list, write, Job, Prepared, FPS, RATE};
pub use model::{Generator, WeightChoice};

use std::path::PathBuf;

use syncdiff_dataprep::rng::Rng;
use syncdiff_model::syncdiff::{Conditioning, SampleOptions, StepNoise, SyncDiffError};
use tch::{Kind, Tensor};

use crate::data::gaussian;

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// An input file is missing, unreadable or unusable.
    #[error("{path}: {message}")]
    Input {
        /// File.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// ffmpeg could not read or write a video.
    #[error(transparent)]
    Video(#[from] syncdiff_dataprep::video::VideoError),
    /// The checkpoint could not be read.
    #[error(transparent)]
    Ckpt(#[from] crate::ckpt::CkptError),
    /// The model could not be built, loaded or run.
    #[error("{0}")]
    Model(String),
}

impl From<SyncDiffError> for GenerateError {
    fn from(e: SyncDiffError) -> Self {
        Self::Model(e.to_string())
    }
}

/// Sampling settings.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// DDIM steps.
    pub steps: usize,
    /// DDIM eta (0: deterministic given the initial noise).
    pub eta: f64,
    /// Impose the re-noised reference outside the mask at every step (DiffTalk's blend).
    pub inpaint: bool,
    /// Seed of the initial and per-step noise.
    pub seed: u64,
}

/// Separate the per-step draws from the initial noise.
const STEP_NOISE: u64 = 0x7374_6570;
const INPAINT_NOISE: u64 = 0x696e_7061;

/// The key of a clip's noise: its output file name, so a clip gets the same noise whether it is
/// generated alone, in a batch or on another rank.
fn clip_key(job: &Job) -> u64 {
    let name = job.out.file_name().map_or_else(
        || job.out.to_string_lossy().into_owned(),
        |n| n.to_string_lossy().into_owned(),
    );
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Generates every clip of `batch` together; `progress(frames)` after each frame step with the
/// number of frames just made. Returns each clip's frames (N_i, 3, S, S) in [-1, 1] on the CPU.
pub fn generate_batch(
    g: &Generator,
    batch: &[&Prepared],
    opts: &GenerateOptions,
    mut progress: impl FnMut(usize),
) -> Result<Vec<Tensor>, GenerateError> {
    let Some(longest) = batch.iter().map(|p| p.frames).max() else {
        return Ok(Vec::new());
    };
    let np = g.config.model.priors.needed_previous_frames() as i64;
    let keys: Vec<u64> = batch.iter().map(|p| clip_key(&p.job)).collect();
    let shape = batch[0].identity.size();
    let numel: i64 = shape.iter().product();
    // Pose prior of each clip: its last NP generated latents (the reference's first frame before
    // anything is generated).
    let mut previous: Vec<Tensor> = batch
        .iter()
        .map(|p| {
            let first = p.reference.get(0).unsqueeze(0);
            if np > 0 {
                first.repeat([np, 1, 1, 1])
            } else {
                first.narrow(0, 0, 0)
            }
        })
        .collect();
    let mut outputs: Vec<Vec<Tensor>> = batch.iter().map(|_| Vec::new()).collect();
    let keep = opts.inpaint.then(|| inpaint_keep(g, &shape));
    for t in 0..longest {
        let active: Vec<usize> = (0..batch.len()).filter(|&i| batch[i].frames > t).collect();
        let stack = |f: &dyn Fn(&Prepared) -> Tensor| {
            Tensor::stack(&active.iter().map(|&i| f(batch[i])).collect::<Vec<_>>(), 0)
        };
        let masked = stack(&|p| p.masked.get(t as i64));
        let identity = stack(&|p| p.identity.shallow_clone());
        let context = stack(&|p| p.context.get(t as i64));
        let prev = Tensor::stack(
            &active
                .iter()
                .map(|&i| previous[i].shallow_clone())
                .collect::<Vec<_>>(),
            0,
        );
        let noise_of = |extra: &[u64]| {
            let parts: Vec<Tensor> = active
                .iter()
                .map(|&i| {
                    let mut k = vec![opts.seed, keys[i], t as u64];
                    k.extend_from_slice(extra);
                    let seed = Rng::new(&k).next_u64();
                    Tensor::from_slice(&gaussian(seed, numel as usize)).view(shape.as_slice())
                })
                .collect();
            Tensor::stack(&parts, 0).to_device(g.device)
        };
        let noise = noise_of(&[]);
        let reference = opts.inpaint.then(|| stack(&|p| p.reference.get(t as i64)));
        let sample_opts = SampleOptions {
            steps: opts.steps,
            eta: opts.eta,
            inpaint: reference.as_ref().zip(keep.as_ref()),
        };
        let cond = Conditioning {
            masked: &masked,
            identity: Some(&identity),
            previous: Some(&prev),
            context: &context,
        };
        let z = g
            .model
            .denoiser()
            .sample(&cond, &noise, &sample_opts, |n| {
                Some(match n {
                    StepNoise::Ddim(i) => noise_of(&[STEP_NOISE, i as u64]),
                    StepNoise::Inpaint(i) => noise_of(&[INPAINT_NOISE, i as u64]),
                })
            })?;
        let images = tch::no_grad(|| g.autoencoder.decode(&z))
            .clamp(-1.0, 1.0)
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu);
        for (j, &i) in active.iter().enumerate() {
            let zi = z.get(j as i64).unsqueeze(0);
            if np > 0 {
                previous[i] = Tensor::cat(&[previous[i].narrow(0, 1, np - 1), zi], 0);
            }
            outputs[i].push(images.get(j as i64));
        }
        progress(active.len());
    }
    Ok(outputs.iter().map(|o| Tensor::stack(o, 0)).collect())
}

/// DiffTalk's keep mask in latent space: 1 above the masked rows, 0 on them.
fn inpaint_keep(g: &Generator, shape: &[i64]) -> Tensor {
    let h = shape[1];
    let first = ((1.0 - g.config.data.mask_fraction) * h as f64).round() as i64;
    let keep = Tensor::ones([1, 1, h, shape[2]], (Kind::Float, g.device));
    let _ = keep.narrow(2, first, h - first).fill_(0.0);
    keep
}
