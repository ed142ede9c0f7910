//! Inference (model-spec.md section 8): lip-synced video from a reference video and driving
//! audio. Frames of one clip are generated in order, each conditioned on the identity frame (the
//! reference's first frame), the previously *generated* frame (the pose prior; frame 0 uses the
//! reference's first frame), the masked reference frame and the audio around it. Different clips
//! are independent, so a batch of clips advances one frame at a time together.

mod clip;
mod model;

pub use clip::{check_output, ping_pong, prepare, read_list, write, Job, Prepared, FPS, RATE};
pub use model::{Generator, WeightChoice};

use std::path::PathBuf;

use syncdiff_model::syncdiff::{Conditioning, SampleOptions, StepNoise, SyncDiffError};
use tch::{Kind, Tensor};

use crate::data::keyed_noise;

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
    /// The model produced NaN or Inf for a clip: that clip stops, the others go on.
    #[error(
        "{out}: the model's output is not finite (NaN or Inf) at frame {frame}; clip stopped \
         (damaged or diverged weights?)"
    )]
    NonFinite {
        /// The clip's output file.
        out: PathBuf,
        /// The frame.
        frame: u64,
    },
}

/// One clip's generated frames (N, 3, S, S) in [-1, 1] on the CPU, or why it stopped.
pub type ClipOutput = Result<Tensor, GenerateError>;

impl From<SyncDiffError> for GenerateError {
    fn from(e: SyncDiffError) -> Self {
        Self::Model(e.to_string())
    }
}

/// Sampling settings.
#[derive(Debug, Clone, Copy)]
pub struct GenerateOptions {
    /// DDIM or DPM-Solver++(2M).
    pub sampler: syncdiff_model::config::SamplerKind,
    /// Sampling steps.
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

/// One frame step of some clips: their inputs, moved to whichever thread samples them.
struct Chunk {
    masked: Tensor,
    identity: Tensor,
    context: Tensor,
    previous: Tensor,
    /// Inpainting reference latents, when inpainting.
    reference: Option<Tensor>,
    /// Noise keys of the clips.
    keys: Vec<u64>,
    /// Frame index.
    t: u64,
}

/// Samples one chunk: (latents (B, C, h, w), images (B, 3, S, S) on the CPU).
fn sample_chunk(
    g: &Generator,
    c: Chunk,
    opts: &GenerateOptions,
) -> Result<(Tensor, Tensor), GenerateError> {
    let shape = c.identity.size()[1..].to_vec();
    let noise_of = |extra: &[u64]| {
        let keys: Vec<Vec<u64>> = c
            .keys
            .iter()
            .map(|&key| [&[opts.seed, key, c.t][..], extra].concat())
            .collect();
        keyed_noise(&keys, &shape).to_device(g.device)
    };
    let keep = opts.inpaint.then(|| inpaint_keep(g, &shape));
    let sample_opts = SampleOptions {
        sampler: opts.sampler,
        steps: opts.steps,
        eta: opts.eta,
        inpaint: c.reference.as_ref().zip(keep.as_ref()),
    };
    let cond = Conditioning {
        masked: &c.masked,
        identity: Some(&c.identity),
        previous: Some(&c.previous),
        context: &c.context,
    };
    let z = g
        .model
        .denoiser()
        .sample(&cond, &noise_of(&[]), &sample_opts, |n| {
            Some(match n {
                StepNoise::Ddim(i) => noise_of(&[STEP_NOISE, i as u64]),
                StepNoise::Inpaint(i) => noise_of(&[INPAINT_NOISE, i as u64]),
            })
        })?;
    let images = tch::no_grad(|| g.autoencoder.decode(&z))
        .clamp(-1.0, 1.0)
        .to_kind(Kind::Float)
        .to_device(tch::Device::Cpu);
    Ok((z, images))
}

/// Generates every clip of `batch` together; `progress(frames)` after each frame step with the
/// number of frames just made. Returns each clip's frames (N_i, 3, S, S) in [-1, 1] on the CPU,
/// or the error that stopped that clip alone (non-finite outputs).
pub fn generate_batch(
    g: &Generator,
    batch: &[&Prepared],
    opts: &GenerateOptions,
    progress: impl FnMut(usize),
) -> Result<Vec<ClipOutput>, GenerateError> {
    let np = g.config.model.priors.needed_previous_frames() as i64;
    frame_steps(batch, np, opts.inpaint, 1, progress, |chunks| {
        chunks
            .into_iter()
            .map(|c| sample_chunk(g, c, opts))
            .collect()
    })
}

/// As [`generate_batch`], with each frame step's clips split among `workers` (copies of one
/// model, each sampled on its own thread). On CPUs, workers with one libtorch thread each use
/// the cores better than one model with several intra-op threads on small tensors. The result
/// equals [`generate_batch`]'s up to floating-point summation order.
pub fn generate_batch_parallel(
    workers: &mut [Generator],
    batch: &[&Prepared],
    opts: &GenerateOptions,
    progress: impl FnMut(usize),
) -> Result<Vec<ClipOutput>, GenerateError> {
    let Some(first) = workers.first() else {
        return Err(GenerateError::Model("no generator to run".into()));
    };
    let np = first.config.model.priors.needed_previous_frames() as i64;
    let parts = workers.len();
    frame_steps(batch, np, opts.inpaint, parts, progress, |chunks| {
        std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .iter_mut()
                .zip(chunks)
                .map(|(g, c)| s.spawn(move || sample_chunk(g, c, opts)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(GenerateError::Model("a generation worker panicked".into()))
                    })
                })
                .collect()
        })
    })
}

/// The autoregressive loop over frames: builds each frame step's inputs for the clips still
/// running, in up to `parts` chunks, hands them to `sample`, and feeds the latents back as the
/// next pose prior.
fn frame_steps(
    batch: &[&Prepared],
    np: i64,
    inpaint: bool,
    parts: usize,
    mut progress: impl FnMut(usize),
    mut sample: impl FnMut(Vec<Chunk>) -> Result<Vec<(Tensor, Tensor)>, GenerateError>,
) -> Result<Vec<ClipOutput>, GenerateError> {
    let Some(longest) = batch.iter().map(|p| p.frames).max() else {
        return Ok(Vec::new());
    };
    let keys: Vec<u64> = batch.iter().map(|p| clip_key(&p.job)).collect();
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
    let mut stopped: Vec<Option<GenerateError>> = batch.iter().map(|_| None).collect();
    for t in 0..longest {
        let active: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].frames > t && stopped[i].is_none())
            .collect();
        if active.is_empty() {
            break;
        }
        let size = active.len().div_ceil(parts.max(1));
        let groups: Vec<&[usize]> = active.chunks(size.max(1)).collect();
        let chunks: Vec<Chunk> = groups
            .iter()
            .map(|group| {
                let stack = |f: &dyn Fn(usize) -> Tensor| {
                    Tensor::stack(&group.iter().map(|&i| f(i)).collect::<Vec<_>>(), 0)
                };
                let ti = t as i64;
                Chunk {
                    masked: stack(&|i| batch[i].masked.get(ti)),
                    identity: stack(&|i| batch[i].identity.shallow_clone()),
                    context: stack(&|i| batch[i].context.get(ti)),
                    previous: stack(&|i| previous[i].shallow_clone()),
                    reference: inpaint.then(|| stack(&|i| batch[i].reference.get(ti))),
                    keys: group.iter().map(|&i| keys[i]).collect(),
                    t: t as u64,
                }
            })
            .collect();
        let results = sample(chunks)?;
        for (group, (z, images)) in groups.iter().zip(results) {
            // One host read per chunk and frame: NaN or Inf in a clip's latent stops that clip
            // (it would feed the next frame's pose prior and give a black video).
            let finite = Vec::<bool>::try_from(z.isfinite().flatten(1, -1).all_dim(1, false))
                .map_err(|e| GenerateError::Model(e.to_string()))?;
            for (j, &i) in group.iter().enumerate() {
                if !finite.get(j).copied().unwrap_or(false) {
                    stopped[i] = Some(GenerateError::NonFinite {
                        out: batch[i].job.out.clone(),
                        frame: t as u64,
                    });
                    continue;
                }
                let zi = z.get(j as i64).unsqueeze(0);
                if np > 0 {
                    previous[i] = Tensor::cat(&[previous[i].narrow(0, 1, np - 1), zi], 0);
                }
                outputs[i].push(images.get(j as i64));
            }
        }
        progress(active.len());
    }
    Ok(outputs
        .iter()
        .zip(stopped)
        .map(|(o, stop)| match stop {
            Some(e) => Err(e),
            None => Ok(Tensor::stack(o, 0)),
        })
        .collect())
}

/// DiffTalk's keep mask in latent space: 1 above the masked rows, 0 on them.
fn inpaint_keep(g: &Generator, shape: &[i64]) -> Tensor {
    let h = shape[1];
    let first = ((1.0 - g.config.data.mask_fraction) * h as f64).round() as i64;
    let keep = Tensor::ones([1, 1, h, shape[2]], (Kind::Float, g.device));
    let _ = keep.narrow(2, first, h - first).fill_(0.0);
    keep
}
