//! A `syncdiff generate` request on this rank: which jobs are this rank's, the models (one, or
//! one per CPU worker thread), the sampling options (the model's `sample` section with the
//! request's overrides, checked against the model), batches of clips through the frame loop,
//! and the summary. A clip that fails is reported and counted; the others go on.

use std::path::PathBuf;
use std::time::Instant;

use syncdiff_model::config::{FaceConfig, FaceDetectorKind, Precision, SamplerKind};
use syncdiff_runtime::progress::Progress;
use syncdiff_runtime::ranks::Ranks;
use tch::Device;

use super::preview::preview;
use super::{
    check_output, face_settings, generate_batch, generate_batch_parallel, prepare, FrameSink,
    GenerateError, GenerateOptions, Generator, Job, Mp4Sink, Prepared, Timings, WeightChoice,
};

/// Sampling settings a request overrides (`None`: the model's `sample` section).
#[derive(Debug, Clone, Copy, Default)]
pub struct SampleOverrides {
    /// `--sampler`.
    pub sampler: Option<SamplerKind>,
    /// `--steps`.
    pub steps: Option<usize>,
    /// `--eta`.
    pub eta: Option<f64>,
    /// `--inpaint`.
    pub inpaint: Option<bool>,
    /// `--guidance`.
    pub guidance: Option<f64>,
    /// `--final-x0`.
    pub final_x0: Option<bool>,
    /// `--precision`.
    pub precision: Option<Precision>,
}

/// What to generate with, and how.
#[derive(Debug, Clone)]
pub struct Request {
    /// A bundle, a checkpoint `URL/step-NNNNNNNNN`, or a checkpoint URL (its newest).
    pub checkpoint: String,
    /// EMA or live weights.
    pub weights: WeightChoice,
    /// VQ-f4 weights replacing the model configuration's path.
    pub autoencoder: Option<PathBuf>,
    /// Where the models run.
    pub device: Device,
    /// CPU worker threads, each with its own model (1: none).
    pub workers: usize,
    /// CPU libtorch threads (of each worker); `None`: the default for the launch.
    pub threads: Option<usize>,
    /// Clips generated together.
    pub batch: usize,
    /// Overrides of the model's sampling settings.
    pub sample: SampleOverrides,
    /// Seed of the sampling noise.
    pub seed: u64,
    /// Leave jobs whose output exists.
    pub skip_existing: bool,
    /// Write `OUT.preview.png` beside each output.
    pub preview: bool,
    /// `data.face.KEY=VALUE` overrides of the model's face settings.
    pub face_set: Vec<String>,
}

/// What a rank did.
#[derive(Debug)]
pub struct Summary {
    /// This rank and the world size.
    pub rank: usize,
    /// Ranks in the launch.
    pub world: usize,
    /// Clips written.
    pub clips: usize,
    /// Frames written.
    pub frames: u64,
    /// Of them, frames without a face passed through unchanged.
    pub passed_through: u64,
    /// Wall time, s.
    pub secs: f64,
    /// The CPU threading (`, 2 libtorch thread(s)`), empty on a GPU.
    pub cpu_note: String,
    /// The sampling settings used.
    pub opts: GenerateOptions,
    /// Jobs left because their output existed.
    pub skipped: usize,
    /// One message per failed clip.
    pub failed: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&rank_prefix(self.rank, self.world))?;
        let o = &self.opts;
        write!(
            f,
            "{} clip(s), {} frames in {:.1} s ({:.2} frames/s{}), {} {} steps",
            self.clips,
            self.frames,
            self.secs,
            self.frames as f64 / self.secs.max(1e-9),
            self.cpu_note,
            o.steps,
            o.sampler.name()
        )?;
        if self.skipped > 0 {
            write!(f, ", {} existing skipped", self.skipped)?;
        }
        if o.inpaint {
            f.write_str(", inpainting")?;
        }
        if o.guidance != 1.0 {
            write!(f, ", guidance {}", o.guidance)?;
        }
        if self.passed_through > 0 {
            write!(
                f,
                ", {} frames without a face passed through",
                self.passed_through
            )?;
        }
        if let Some(m) = syncdiff_runtime::progress::peak_memory_mib() {
            write!(f, ", peak memory {m} MiB")?;
        }
        Ok(())
    }
}

/// `rank R/W: ` before a rank's lines when there are several ranks, else nothing.
fn rank_prefix(rank: usize, world: usize) -> String {
    if world > 1 {
        format!("rank {rank}/{world}: ")
    } else {
        String::new()
    }
}

/// Runs this rank's share of `jobs` (every world-th, from the launcher's variables).
pub fn run(jobs: &[Job], req: &Request, launch: &Ranks) -> Result<Summary, GenerateError> {
    let (rank, world) = (launch.rank, launch.world);
    let assigned: Vec<&Job> = jobs.iter().skip(rank).step_by(world.max(1)).collect();
    let (existing, mine): (Vec<&Job>, Vec<&Job>) = assigned
        .into_iter()
        .partition(|j| req.skip_existing && j.out.is_file());
    // Outputs are checked before any model is loaded or frame made: an unwritable place, or a
    // directory given as --out, fails that clip now, not after its last frame.
    let mut failed = Vec::new();
    let mine: Vec<&Job> = mine
        .into_iter()
        .filter(|j| match check_output(&j.out) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(e.to_string());
                false
            }
        })
        .collect();
    if mine.is_empty() && !failed.is_empty() {
        return Err(GenerateError::Request(format!(
            "{} clip(s) failed before generating (first: {})",
            failed.len(),
            failed[0]
        )));
    }
    let early = failed.len();
    let (mut models, cpu_note) = load_models(req, launch)?;
    let opts = sample_options(&models[0], &req.sample, req.seed)?;
    let face = face_settings_of(&models[0], &req.face_set, rank)?;
    let start = Instant::now();
    let mut batches = Batches {
        progress: Progress::new(true, "generate", "frame", 0, 0),
        face,
        opts,
        preview: req.preview,
        failed,
        timings: Timings::default(),
        frames: 0,
        passed_through: 0,
    };
    batches.all(&mut models, &mine, req.batch.max(1))?;
    if batches.timings.steps > 0 {
        // Where the time went (docs/generate.md, "Speed"): the phases of the frame loop.
        let rank = rank_prefix(rank, world);
        eprintln!("{rank}time per phase: {}", batches.timings);
    }
    Ok(Summary {
        rank,
        world,
        clips: mine.len() - (batches.failed.len() - early),
        frames: batches.frames,
        passed_through: batches.passed_through,
        secs: start.elapsed().as_secs_f64(),
        cpu_note,
        opts,
        skipped: existing.len(),
        failed: batches.failed,
    })
}

/// One model, or one per CPU worker thread (each with one libtorch thread), and libtorch's
/// thread count set; the threading as the summary says it.
fn load_models(req: &Request, launch: &Ranks) -> Result<(Vec<Generator>, String), GenerateError> {
    let cpu = req.device == Device::Cpu;
    if req.workers > 1 && !cpu {
        return Err(GenerateError::Request(format!(
            "--workers {}: worker threads are for CPUs; on a GPU use a larger --batch",
            req.workers
        )));
    }
    if let (Some(n), false) = (req.threads, cpu) {
        return Err(GenerateError::Request(format!(
            "--threads {n}: libtorch threads are for CPUs; this run is on {:?}",
            req.device
        )));
    }
    let models: Vec<Generator> = (0..req.workers.max(1))
        .map(|_| {
            let ae = req.autoencoder.as_deref();
            Generator::load(&req.checkpoint, req.weights, ae, req.device)
        })
        .collect::<Result<_, _>>()?;
    if !cpu {
        return Ok((models, String::new()));
    }
    // One process with one model keeps libtorch's own default (which reads OMP_NUM_THREADS).
    let threads = match req.threads {
        Some(n) => Some(n),
        None if models.len() > 1 => Some(1),
        None if launch.world > 1 => Some(launch.cpu_threads()),
        None => None,
    };
    if let Some(n) = threads {
        tch::set_num_threads(n as i32);
    }
    // Said in the summary: timings and last-bit results depend on it.
    let n = tch::get_num_threads();
    let note = match models.len() {
        1 => format!(", {n} libtorch thread(s)"),
        w => format!(", {w} workers of {n} libtorch thread(s)"),
    };
    Ok((models, note))
}

/// The model's sampling settings with the request's overrides, checked against the model.
pub fn sample_options(
    g: &Generator,
    o: &SampleOverrides,
    seed: u64,
) -> Result<GenerateOptions, GenerateError> {
    let s = &g.config.sample;
    let opts = GenerateOptions {
        sampler: o.sampler.unwrap_or(s.sampler),
        steps: o.steps.unwrap_or(s.ddim_steps as usize),
        eta: o.eta.unwrap_or(s.eta),
        inpaint: o.inpaint.unwrap_or(s.inpaint),
        guidance: o.guidance.unwrap_or(s.guidance),
        final_x0: o.final_x0.unwrap_or(s.final_x0),
        seed,
        precision: o.precision.unwrap_or(s.precision),
    };
    let bad = |m: String| Err(GenerateError::Request(m));
    if !(opts.guidance.is_finite() && opts.guidance >= 1.0) {
        return bad(format!(
            "--guidance {}: must be at least 1 (1: off)",
            opts.guidance
        ));
    }
    if opts.guidance != 1.0 && g.model.denoiser().null_context().is_none() {
        return bad(format!(
            "--guidance {}: this model was trained without audio dropout \
             (train.audio_dropout 0), so it has no null audio context to guide against; use 1",
            opts.guidance
        ));
    }
    if opts.eta > 0.0 && opts.sampler != SamplerKind::Ddim {
        return bad(format!(
            "--eta {}: stochastic steps are DDIM's; {} is deterministic",
            opts.eta,
            opts.sampler.name()
        ));
    }
    let timesteps = g.config.model.diffusion.timesteps;
    if opts.steps == 0 || opts.steps > timesteps as usize {
        return bad(format!(
            "--steps {}: must be between 1 and the model's {timesteps} diffusion timesteps",
            opts.steps
        ));
    }
    Ok(opts)
}

/// The model's face settings with the request's overrides; rank 0 warns once about departures
/// from what the model was trained with, and about sidecar boxes (not read here).
fn face_settings_of(
    g: &Generator,
    set: &[String],
    rank: usize,
) -> Result<FaceConfig, GenerateError> {
    let (face, departures) = face_settings(&g.config, set)?;
    if rank != 0 {
        return Ok(face);
    }
    if !departures.is_empty() {
        // Said once: sync accuracy drops when alignment differs from training.
        eprintln!(
            "warning: face settings depart from what the model was trained with: {}; \
             lip sync may suffer (docs/faces.md)",
            departures.join(", ")
        );
    }
    if face.detector == FaceDetectorKind::Boxes {
        eprintln!(
            "warning: data.face.detector boxes: generation does not read sidecar boxes and \
             takes each whole reference frame as the face crop; give face crops, or \
             --set data.face.detector=dlib-hog to find the face (docs/faces.md)"
        );
    }
    Ok(face)
}

/// The batches of a rank's clips, and what they have made so far.
struct Batches {
    progress: Progress,
    face: FaceConfig,
    opts: GenerateOptions,
    preview: bool,
    failed: Vec<String>,
    timings: Timings,
    frames: u64,
    passed_through: u64,
}

impl Batches {
    /// Every clip of `mine`, `batch` at a time.
    fn all(
        &mut self,
        models: &mut [Generator],
        mine: &[&Job],
        batch: usize,
    ) -> Result<(), GenerateError> {
        for (i, chunk) in mine.chunks(batch).enumerate() {
            let prepared = self.prepare(&models[0], chunk);
            let first = i * batch + 1;
            self.progress.message(|| {
                format!(
                    "clips {first}..{} of {}",
                    first + chunk.len() - 1,
                    mine.len()
                )
            });
            self.generate(models, &prepared)?;
        }
        self.progress.finish();
        Ok(())
    }

    /// The clips of a batch that could be prepared (face track, audio); the others failed.
    fn prepare(&mut self, g: &Generator, chunk: &[&Job]) -> Vec<Prepared> {
        let mut prepared = Vec::new();
        for job in chunk {
            if self.face.detector.is_dlib() {
                let video = job.video.display();
                self.progress
                    .message(|| format!("finding the face in {video}"));
            }
            match prepare(g, job, &self.face) {
                Ok(p) => {
                    self.progress.add_total(p.frames as u64);
                    prepared.push(p);
                }
                Err(e) => self.fail(e),
            }
        }
        prepared
    }

    /// Generates the prepared clips of a batch into their mp4 files.
    fn generate(
        &mut self,
        models: &mut [Generator],
        prepared: &[Prepared],
    ) -> Result<(), GenerateError> {
        // Each clip's encoder, fed as frames are made.
        let mut ready = Vec::new();
        let mut sinks = Vec::new();
        for p in prepared {
            match Mp4Sink::create(p) {
                Ok(s) => {
                    ready.push(p);
                    sinks.push(s);
                }
                Err(e) => self.fail(e),
            }
        }
        let mut dyn_sinks: Vec<&mut dyn FrameSink> =
            sinks.iter_mut().map(|s| s as &mut dyn FrameSink).collect();
        let progress = &self.progress;
        let tick = |n: usize| progress.inc(n as u64);
        let (opts, timings) = (&self.opts, &mut self.timings);
        let reports = match models {
            [one] => generate_batch(one, &ready, &mut dyn_sinks, opts, tick, timings)?,
            _ => generate_batch_parallel(models, &ready, &mut dyn_sinks, opts, tick, timings)?,
        };
        drop(dyn_sinks);
        for ((p, sink), report) in ready.iter().zip(sinks).zip(reports) {
            match report.and_then(|r| sink.finish().map(|()| r)) {
                Ok(r) => self.written(p, r.generated as u64, r.passed_through as u64),
                Err(e) => self.fail(e),
            }
        }
        Ok(())
    }

    /// Says that a clip is written (and its preview, when asked for).
    fn written(&mut self, p: &Prepared, generated: u64, passed: u64) {
        let n = generated + passed;
        self.frames += n;
        self.passed_through += passed;
        let note = if passed > 0 {
            format!(", {passed} without a face passed through")
        } else {
            String::new()
        };
        let out = p.job.out.display();
        self.progress
            .println(&format!("wrote {out} ({n} frames{note})"));
        if self.preview {
            match preview(p) {
                Ok(png) => self.progress.println(&format!("wrote {}", png.display())),
                Err(e) => self.progress.eprintln(&format!("warning: preview: {e}")),
            }
        }
    }

    /// Reports a clip's failure; the others go on.
    fn fail(&mut self, e: GenerateError) {
        self.progress.eprintln(&format!("error: {e}"));
        self.failed.push(e.to_string());
    }
}
