//! Inference (model-spec.md section 8): lip-synced video from a reference video and driving
//! audio. Frames of one clip are generated in order, each conditioned on the identity frame (the
//! reference's first frame with a face), the previously *generated* frame (the pose prior; the
//! first frame uses its own reference), the masked reference frame and the audio around it.
//! Different clips are independent, so a batch of clips advances one frame at a time together.
//!
//! ```text
//! prepare   audio -> mel features; reference -> face track (dlib detectors; one decoding pass)
//! per frame reference frame (decoded again, one at a time) -> face crop + mouth mask
//!           -> encode -> sample -> decode -> paste back through the feathered mask -> encoder
//! ```
//!
//! Memory holds a few frames per clip whatever the video's length (docs/generate.md).

mod clip;
mod frames;
mod model;
mod preview;
mod session;
mod settings;
mod timings;

pub use clip::{check_output, ping_pong, prepare, read_list, Job, Prepared, FPS, RATE};
pub use frames::{Collect, FrameSink, Mp4Sink};
pub use model::{Generator, WeightChoice};
pub use preview::preview;
pub use session::{run, sample_options, Request, SampleOverrides, Summary};
pub use settings::face_settings;
pub use timings::Timings;

use clip::audio_context;
use frames::{frame_input, output_frame, Framed, Reference};

use std::path::PathBuf;
use std::time::{Duration, Instant};

use syncdiff_model::syncdiff::{Conditioning, SampleOptions, StepNoise, SyncDiffError};
use tch::{Kind, Tensor};

use syncdiff_runtime::rng::keyed_noise;

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
    Ckpt(#[from] syncdiff_checkpoint::CkptError),
    /// The model could not be built, loaded or run.
    #[error("{0}")]
    Model(String),
    /// A `--set` override is malformed or gives an invalid configuration.
    #[error(transparent)]
    Config(#[from] syncdiff_model::config::ConfigError),
    /// The face front-end could not run.
    #[error(transparent)]
    Face(#[from] syncdiff_dataprep::face::FaceError),
    /// The request cannot run as asked (an option out of range, or not for this device or model).
    #[error("{0}")]
    Request(String),
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
    /// Audio classifier-free guidance scale (1: off).
    pub guidance: f64,
    /// DDIM: end with the last step's x0 prediction.
    pub final_x0: bool,
    /// Seed of the initial and per-step noise.
    pub seed: u64,
    /// Autocast precision of the autoencoder and the denoiser (`sample.precision`).
    pub precision: syncdiff_model::config::Precision,
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
    /// Model inputs (B, 3, S, S) and their masked copies.
    x: Tensor,
    masked: Tensor,
    /// Per clip: its identity latent (C, h, w) and pose prior (NP, C, h, w); `None` on the
    /// clip's first generated frame (both come from this frame's own latent then).
    identity: Vec<Option<Tensor>>,
    previous: Vec<Option<Tensor>>,
    context: Tensor,
    /// Noise keys of the clips.
    keys: Vec<u64>,
    /// Frame index.
    t: u64,
}

/// What sampling one chunk gives: the generated latents (B, C, h, w), images (B, 3, S, S) on
/// the CPU, and the latents of the unmasked inputs (identity and pose prior of first frames).
struct Sampled {
    z: Tensor,
    images: Tensor,
    reference: Tensor,
    /// Time spent encoding, sampling and decoding.
    times: [Duration; 3],
}

fn sample_chunk(
    g: &Generator,
    c: Chunk,
    opts: &GenerateOptions,
    np: i64,
) -> Result<Sampled, GenerateError> {
    // The autoencoder and the denoiser under autocast (sample.precision; thread local, so each
    // worker thread opens its own region); latents and images come out as float32.
    let _autocast = syncdiff_model::autocast::Autocast::enter(opts.precision, g.device)
        .map_err(|e| GenerateError::Model(format!("sample.precision: {e}")))?;
    let mut times = [Duration::ZERO; 3];
    let encode = |x: &Tensor| tch::no_grad(|| g.autoencoder.encode(&x.to_device(g.device)));
    let (reference, masked) = Timings::time(&mut times[0], || {
        (
            encode(&c.x).to_kind(Kind::Float),
            encode(&c.masked).to_kind(Kind::Float),
        )
    });
    let identity: Vec<Tensor> = (0..c.keys.len())
        .map(|j| match &c.identity[j] {
            Some(t) => t.shallow_clone(),
            None => reference.get(j as i64),
        })
        .collect();
    let previous: Vec<Tensor> = (0..c.keys.len())
        .map(|j| match &c.previous[j] {
            Some(t) => t.shallow_clone(),
            None => first_prior(&reference.get(j as i64), np),
        })
        .collect();
    let (identity, previous) = (Tensor::stack(&identity, 0), Tensor::stack(&previous, 0));
    let shape = reference.size()[1..].to_vec();
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
        guidance: opts.guidance,
        final_x0: opts.final_x0,
        inpaint: opts.inpaint.then_some(&reference).zip(keep.as_ref()),
    };
    let cond = Conditioning {
        masked: &masked,
        identity: Some(&identity),
        previous: Some(&previous),
        context: &c.context,
    };
    let z = Timings::time(&mut times[1], || {
        g.model
            .denoiser()
            .sample(&cond, &noise_of(&[]), &sample_opts, |n| {
                Some(match n {
                    StepNoise::Ddim(i) => noise_of(&[STEP_NOISE, i as u64]),
                    StepNoise::Inpaint(i) => noise_of(&[INPAINT_NOISE, i as u64]),
                })
            })
    })?;
    let images = Timings::time(&mut times[2], || {
        tch::no_grad(|| g.autoencoder.decode(&z))
            .clamp(-1.0, 1.0)
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
    });
    Ok(Sampled {
        z,
        images,
        reference,
        times,
    })
}

/// The pose prior before anything is generated: the first frame's own latent, NP times.
fn first_prior(latent: &Tensor, np: i64) -> Tensor {
    let first = latent.unsqueeze(0);
    if np > 0 {
        first.repeat([np, 1, 1, 1])
    } else {
        first.narrow(0, 0, 0)
    }
}

/// How one clip went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipReport {
    /// Frames the model made.
    pub generated: usize,
    /// Frames without a face, passed through unchanged.
    pub passed_through: usize,
}

/// Generates every clip of `batch` together, each clip's frames going to its sink as they are
/// made; `progress(frames)` after each frame step with the number of frames just finished.
/// Returns each clip's report, or the error that stopped that clip alone (a file that cannot be
/// read again, non-finite outputs); an error of the whole batch (the model failing) is `Err`.
/// The time of each phase is added to `timings`.
pub fn generate_batch(
    g: &Generator,
    batch: &[&Prepared],
    sinks: &mut [&mut dyn FrameSink],
    opts: &GenerateOptions,
    progress: impl FnMut(usize),
    timings: &mut Timings,
) -> Result<Vec<Result<ClipReport, GenerateError>>, GenerateError> {
    frame_steps(Models::One(g), batch, sinks, opts, progress, timings)
}

/// As [`generate_batch`], with each frame step's clips split among `workers` (copies of one
/// model, each sampled on its own thread). On CPUs, workers with one libtorch thread each use
/// the cores better than one model with several intra-op threads on small tensors. The result
/// equals [`generate_batch`]'s up to floating-point summation order. The model's phases in
/// `timings` are summed over the workers (thread time, not wall time).
pub fn generate_batch_parallel(
    workers: &mut [Generator],
    batch: &[&Prepared],
    sinks: &mut [&mut dyn FrameSink],
    opts: &GenerateOptions,
    progress: impl FnMut(usize),
    timings: &mut Timings,
) -> Result<Vec<Result<ClipReport, GenerateError>>, GenerateError> {
    if workers.is_empty() {
        return Err(GenerateError::Model("no generator to run".into()));
    }
    frame_steps(Models::Many(workers), batch, sinks, opts, progress, timings)
}

/// The model(s) a batch runs on.
enum Models<'a> {
    One(&'a Generator),
    /// Copies sampled on their own threads (a libtorch model is not shared between threads).
    Many(&'a mut [Generator]),
}

impl Models<'_> {
    /// The model that also computes the audio context (between steps, never while sampling).
    fn first(&self) -> &Generator {
        match self {
            Self::One(g) => g,
            Self::Many(w) => &w[0],
        }
    }

    fn parts(&self) -> usize {
        match self {
            Self::One(_) => 1,
            Self::Many(w) => w.len(),
        }
    }

    fn sample(
        &mut self,
        chunks: Vec<Chunk>,
        opts: &GenerateOptions,
        np: i64,
    ) -> Result<Vec<Sampled>, GenerateError> {
        match self {
            Self::One(g) => chunks
                .into_iter()
                .map(|c| sample_chunk(g, c, opts, np))
                .collect(),
            Self::Many(workers) => std::thread::scope(|s| {
                let handles: Vec<_> = workers
                    .iter_mut()
                    .zip(chunks)
                    .map(|(g, c)| {
                        let g: &mut Generator = g;
                        s.spawn(move || sample_chunk(g, c, opts, np))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(GenerateError::Model("a generation worker panicked".into()))
                        })
                    })
                    .collect()
            }),
        }
    }
}

/// Frames of audio context computed at a time.
const CONTEXT_CHUNK: usize = 32;

/// A clip while it is generated.
struct Running<'a> {
    p: &'a Prepared,
    /// The reference being read (`None` when it could not be opened).
    reference: Option<Reference>,
    identity: Option<Tensor>,
    previous: Option<Tensor>,
    /// Audio context of output frames `context.0 ..`.
    context: (usize, Option<Tensor>),
    report: ClipReport,
    stopped: Option<GenerateError>,
}

impl<'a> Running<'a> {
    /// Starts reading `p`'s reference (a failure to open it stops the clip, not the batch).
    fn open(p: &'a Prepared) -> Self {
        let (reference, stopped) = match Reference::open(p) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            p,
            reference,
            identity: None,
            previous: None,
            context: (0, None),
            report: ClipReport {
                generated: 0,
                passed_through: 0,
            },
            stopped,
        }
    }

    fn context(&mut self, g: &Generator, t: usize) -> Tensor {
        let (start, cached) = &self.context;
        match cached {
            Some(c) if t >= *start && t < start + c.size()[0] as usize => c.get((t - start) as i64),
            _ => {
                let end = (t + CONTEXT_CHUNK).min(self.p.frames);
                let c = audio_context(g, self.p, t..end);
                let first = c.get(0);
                self.context = (t, Some(c));
                first
            }
        }
    }
}

/// The autoregressive loop over frames: reads each clip's reference frame, passes frames without
/// a face straight to the sink, builds the frame step's inputs for the others in up to `parts`
/// chunks, hands them to `sample`, puts the results back into their frames, and feeds the
/// latents back as the next pose prior.
fn frame_steps(
    models: Models<'_>,
    batch: &[&Prepared],
    sinks: &mut [&mut dyn FrameSink],
    opts: &GenerateOptions,
    mut progress: impl FnMut(usize),
    timings: &mut Timings,
) -> Result<Vec<Result<ClipReport, GenerateError>>, GenerateError> {
    let started = Instant::now();
    let result = frame_loop(models, batch, sinks, opts, &mut progress, timings);
    timings.total += started.elapsed();
    result
}

fn frame_loop(
    mut models: Models<'_>,
    batch: &[&Prepared],
    sinks: &mut [&mut dyn FrameSink],
    opts: &GenerateOptions,
    progress: &mut impl FnMut(usize),
    timings: &mut Timings,
) -> Result<Vec<Result<ClipReport, GenerateError>>, GenerateError> {
    let parts = models.parts();
    if sinks.len() != batch.len() {
        return Err(GenerateError::Model(format!(
            "{} clips but {} frame sinks",
            batch.len(),
            sinks.len()
        )));
    }
    let np = models.first().config.model.priors.needed_previous_frames() as i64;
    let mut clips: Vec<Running> = batch.iter().map(|p| Running::open(p)).collect();
    let keys: Vec<u64> = batch.iter().map(|p| clip_key(&p.job)).collect();
    let longest = batch.iter().map(|p| p.frames).max().unwrap_or(0);
    for t in 0..longest {
        if clips.iter().all(|c| c.stopped.is_some() || c.p.frames <= t) {
            break;
        }
        let (framed, mut done) = read_frames(&mut clips, sinks, t, timings);
        if framed.is_empty() {
            progress(done);
            continue;
        }
        let groups = split_among(framed, parts);
        let chunks: Vec<Chunk> = groups
            .iter()
            .map(|group| chunk(group, &mut clips, models.first(), &keys, t, timings))
            .collect();
        let results = models.sample(chunks, opts, np)?;
        timings.steps += 1;
        timings.calls += results.len();
        for out in &results {
            timings.encode += out.times[0];
            timings.denoise += out.times[1];
            timings.decode += out.times[2];
        }
        for (group, out) in groups.into_iter().zip(results) {
            done += put_back(&mut clips, sinks, group, &out, np, t, timings)?;
        }
        progress(done);
    }
    Ok(clips
        .into_iter()
        .map(|c| match c.stopped {
            Some(e) => Err(e),
            None => Ok(c.report),
        })
        .collect())
}

/// Reads frame step `t`'s reference frame of every running clip: the frames with a face, made
/// into model inputs, and how many frames without one went straight to their sinks.
fn read_frames(
    clips: &mut [Running],
    sinks: &mut [&mut dyn FrameSink],
    t: usize,
    timings: &mut Timings,
) -> (Vec<(usize, Framed)>, usize) {
    let mut framed = Vec::new();
    let mut passed = 0;
    for (i, c) in clips.iter_mut().enumerate() {
        let Some(reference) = c.reference.as_mut() else {
            continue;
        };
        if c.p.frames <= t || c.stopped.is_some() {
            continue;
        }
        let r = ping_pong(t, c.p.available);
        let mut buf = vec![0u8; reference.frame_len()];
        let step = Timings::time(&mut timings.read, || reference.get(r, &mut buf)).and_then(|()| {
            match Timings::time(&mut timings.input, || frame_input(c.p, r, buf)) {
                Ok(f) => Ok(Some(f)),
                Err(frame) => {
                    Timings::time(&mut timings.output, || sinks[i].push(&frame)).map(|()| None)
                }
            }
        });
        match step {
            Ok(Some(f)) => framed.push((i, f)),
            Ok(None) => {
                c.report.passed_through += 1;
                passed += 1;
            }
            Err(e) => c.stopped = Some(e),
        }
    }
    (framed, passed)
}

/// The frames of a step in up to `parts` groups of equal size, in order.
fn split_among(framed: Vec<(usize, Framed)>, parts: usize) -> Vec<Vec<(usize, Framed)>> {
    let size = framed.len().div_ceil(parts.max(1));
    let mut groups: Vec<Vec<(usize, Framed)>> = Vec::new();
    for item in framed {
        match groups.last_mut() {
            Some(gr) if gr.len() < size => gr.push(item),
            _ => groups.push(vec![item]),
        }
    }
    groups
}

/// The model inputs of one group of clips at frame step `t` (their audio context computed by
/// `g` when a clip's cached context runs out).
fn chunk(
    group: &[(usize, Framed)],
    clips: &mut [Running],
    g: &Generator,
    keys: &[u64],
    t: usize,
    timings: &mut Timings,
) -> Chunk {
    let stack = |f: &dyn Fn(&Framed) -> Tensor| {
        Tensor::stack(&group.iter().map(|(_, fr)| f(fr)).collect::<Vec<_>>(), 0)
    };
    let context: Vec<Tensor> = Timings::time(&mut timings.context, || {
        group.iter().map(|&(i, _)| clips[i].context(g, t)).collect()
    });
    Chunk {
        x: stack(&|f| f.x.shallow_clone()),
        masked: stack(&|f| f.masked.shallow_clone()),
        identity: group
            .iter()
            .map(|&(i, _)| clips[i].identity.as_ref().map(Tensor::shallow_clone))
            .collect(),
        previous: group
            .iter()
            .map(|&(i, _)| clips[i].previous.as_ref().map(Tensor::shallow_clone))
            .collect(),
        context: Tensor::stack(&context, 0),
        keys: group.iter().map(|&(i, _)| keys[i]).collect(),
        t: t as u64,
    }
}

/// Puts one sampled group back: each clip's latent becomes its next pose prior (its first
/// frame's reference also its identity), its image is pasted into its frame and handed to its
/// sink. A clip with a non-finite latent stops (it would feed the next frame's pose prior and
/// give a black video). Returns the frames finished.
fn put_back(
    clips: &mut [Running],
    sinks: &mut [&mut dyn FrameSink],
    group: Vec<(usize, Framed)>,
    out: &Sampled,
    np: i64,
    t: usize,
    timings: &mut Timings,
) -> Result<usize, GenerateError> {
    // One host read per chunk and frame.
    let finite = Vec::<bool>::try_from(out.z.isfinite().flatten(1, -1).all_dim(1, false))
        .map_err(|e| GenerateError::Model(e.to_string()))?;
    let mut done = 0;
    for (j, (i, fr)) in group.into_iter().enumerate() {
        let c = &mut clips[i];
        if !finite.get(j).copied().unwrap_or(false) {
            c.stopped = Some(GenerateError::NonFinite {
                out: c.p.job.out.clone(),
                frame: t as u64,
            });
            continue;
        }
        let ji = j as i64;
        let zi = out.z.get(ji).unsqueeze(0);
        let own = out.reference.get(ji);
        let prev = c.previous.take().unwrap_or_else(|| first_prior(&own, np));
        c.previous = Some(if np > 0 {
            Tensor::cat(&[prev.narrow(0, 1, np - 1), zi], 0)
        } else {
            prev
        });
        c.identity.get_or_insert(own);
        let pushed = Timings::time(&mut timings.output, || {
            output_frame(c.p, fr, &out.images.get(ji)).and_then(|f| sinks[i].push(&f))
        });
        match pushed {
            Ok(()) => {
                c.report.generated += 1;
                done += 1;
            }
            Err(e) => c.stopped = Some(e),
        }
    }
    Ok(done)
}

/// DiffTalk's keep mask in latent space: 1 above the masked rows, 0 on them.
fn inpaint_keep(g: &Generator, shape: &[i64]) -> Tensor {
    let h = shape[1];
    let first = ((1.0 - g.config.data.mask_fraction) * h as f64).round() as i64;
    let keep = Tensor::ones([1, 1, h, shape[2]], (Kind::Float, g.device));
    let _ = keep.narrow(2, first, h - first).fill_(0.0);
    keep
}
