//! `syncdiff generate`: one clip (`--video --audio --out`) or a list of them (`--list`), batched
//! on one device; under `mpirun` each rank takes every world-th line of the list.
//!
//! A clip that fails (unreadable file, too small, no audio) is reported and skipped; the others
//! still run, and the exit status says whether all succeeded. Outputs appear under their final
//! name only when complete; `--skip-existing` makes a rerun do only what is missing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use syncdiff_dataprep::launch::{DeviceChoice, Launch};
use syncdiff_dataprep::progress::Progress;
use syncdiff_model::config::SamplerKind;
use tch::Device;

use syncdiff_trainer::generate::{self, GenerateOptions, Generator, Job, WeightChoice};

/// `syncdiff generate`: the reference video's face speaking the driving audio.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inference bundle (`syncdiff ckpt export`), checkpoint `URL/step-NNNNNNNNN`, or a
    /// checkpoint URL (its newest valid checkpoint).
    #[arg(long)]
    checkpoint: String,
    /// Reference video (identity and pose; 25 fps, at least the model's resolution).
    #[arg(long)]
    video: Option<PathBuf>,
    /// Driving audio (wav, mp4, anything ffmpeg reads); sets the output length.
    #[arg(long)]
    audio: Option<PathBuf>,
    /// Output mp4.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A list of jobs, one `VIDEO AUDIO OUT` per line (# comments).
    #[arg(long, conflicts_with_all = ["video", "audio", "out"])]
    list: Option<PathBuf>,
    /// Clips generated together on the device.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Sampler: ddim or dpmpp-2m (DPM-Solver++(2M): far fewer steps) [default: sample.sampler].
    #[arg(long, value_name = "ddim|dpmpp-2m")]
    sampler: Option<SamplerKind>,
    /// Sampling steps [default: the model's sample.ddim_steps].
    #[arg(long)]
    steps: Option<usize>,
    /// DDIM eta [default: sample.eta].
    #[arg(long)]
    eta: Option<f64>,
    /// Blend the re-noised reference outside the mask at every step (DiffTalk) [default:
    /// sample.inpaint].
    #[arg(long)]
    inpaint: Option<bool>,
    /// Seed of the sampling noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the live weights of a checkpoint instead of its EMA.
    #[arg(long)]
    live_weights: bool,
    /// VQ-f4 weights, when the path in the model's configuration is not valid here.
    #[arg(long)]
    autoencoder: Option<PathBuf>,
    /// auto (this rank's GPU if any), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_name = "auto|cpu|cuda|cuda:N")]
    device: DeviceChoice,
    /// Leave clips whose output already exists.
    #[arg(long)]
    skip_existing: bool,
    /// CPU only: split each batch among N worker threads, each with its own copy of the
    /// model and one libtorch thread (faster than intra-op threads for small models).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    workers: u64,
}

/// Runs the request on this rank; returns the summary line.
pub fn run(args: Args) -> anyhow::Result<String> {
    let jobs = jobs(args.list.as_deref(), args.video, args.audio, args.out)?;
    let launch = Launch::from_env();
    let (rank, world) = (launch.rank, launch.world);
    let device = args
        .device
        .device(launch.local_rank)
        .map_err(anyhow::Error::msg)?;
    if device == Device::Cpu && world > 1 {
        tch::set_num_threads(launch.cpu_threads() as i32);
    }
    let weights = if args.live_weights {
        WeightChoice::Live
    } else {
        WeightChoice::Ema
    };
    let workers = args.workers as usize;
    let assigned: Vec<&Job> = jobs
        .iter()
        .enumerate()
        .filter(|(i, _)| i % world == rank)
        .map(|(_, j)| j)
        .collect();
    let (existing, mine): (Vec<&Job>, Vec<&Job>) = assigned
        .into_iter()
        .partition(|j| args.skip_existing && j.out.is_file());
    let skipped = existing.len();
    // Outputs are checked before any model is loaded or frame made: an unwritable place, or a
    // directory given as --out, fails that clip now, not after its last frame.
    let mut failed = Vec::new();
    let mine: Vec<&Job> = mine
        .into_iter()
        .filter(|j| match generate::check_output(&j.out) {
            Ok(_) => true,
            Err(e) => {
                eprintln!("error: {e}");
                failed.push(e.to_string());
                false
            }
        })
        .collect();
    let early = failed.len();
    if mine.is_empty() && early > 0 {
        bail!(
            "{} clip(s) failed before generating (first: {})",
            failed.len(),
            failed[0]
        );
    }
    if workers > 1 && device != Device::Cpu {
        bail!(
            "--workers {}: worker threads are for CPUs; on a GPU use a larger --batch",
            workers
        );
    }
    let load = || {
        Generator::load(
            &args.checkpoint,
            weights,
            args.autoencoder.as_deref(),
            device,
        )
    };
    // One model, or one per CPU worker thread (each with one libtorch thread).
    let mut models: Vec<Generator> = (0..workers.max(1))
        .map(|_| load())
        .collect::<Result<_, _>>()?;
    if models.len() > 1 {
        tch::set_num_threads(1);
    }
    let g = &models[0];
    let s = &g.config.sample;
    let opts = GenerateOptions {
        sampler: args.sampler.unwrap_or(s.sampler),
        steps: args.steps.unwrap_or(s.ddim_steps as usize),
        eta: args.eta.unwrap_or(s.eta),
        inpaint: args.inpaint.unwrap_or(s.inpaint),
        seed: args.seed,
    };
    if opts.eta > 0.0 && opts.sampler != SamplerKind::Ddim {
        bail!(
            "--eta {}: stochastic steps are DDIM's; {} is deterministic",
            opts.eta,
            opts.sampler.name()
        );
    }
    let timesteps = g.config.model.diffusion.timesteps;
    if opts.steps == 0 || opts.steps > timesteps as usize {
        bail!(
            "--steps {}: must be between 1 and the model's {timesteps} diffusion timesteps",
            opts.steps
        );
    }
    let face = &g.config.data.face;
    if face.detector.is_dlib() && rank == 0 {
        // Said once: generation does not run the face front-end yet (docs/faces.md).
        eprintln!(
            "warning: the model was prepared with data.face.detector {} (crop {}); `syncdiff \
             generate` does not run the face front-end yet and takes each whole reference frame \
             as the face crop: give reference videos cropped as the training frames were",
            face.detector.name(),
            face.crop.name()
        );
    }
    let progress = Progress::new(true, "generate", "frame", 0, 0);
    let start = Instant::now();
    let (mut done, mut frames) = (0usize, 0u64);
    for chunk in mine.chunks(args.batch.max(1)) {
        let mut prepared = Vec::new();
        for job in chunk {
            match generate::prepare(&models[0], job) {
                Ok(p) => {
                    progress.add_total(p.frames as u64);
                    prepared.push(p);
                }
                Err(e) => {
                    progress.eprintln(&format!("error: {e}"));
                    failed.push(e.to_string());
                }
            }
        }
        progress.message(|| {
            format!(
                "clips {}..{} of {}",
                done + 1,
                done + chunk.len(),
                mine.len()
            )
        });
        let refs: Vec<&generate::Prepared> = prepared.iter().collect();
        let tick = |n: usize| progress.inc(n as u64);
        let outputs = if models.len() == 1 {
            generate::generate_batch(&models[0], &refs, &opts, tick)?
        } else {
            generate::generate_batch_parallel(&mut models, &refs, &opts, tick)?
        };
        for (p, out) in prepared.iter().zip(outputs) {
            match out.and_then(|frames| generate::write(p, &frames)) {
                Ok(()) => {
                    frames += p.frames as u64;
                    let line = format!("wrote {} ({} frames)", p.job.out.display(), p.frames);
                    progress.println(&line);
                }
                Err(e) => {
                    progress.eprintln(&format!("error: {e}"));
                    failed.push(e.to_string());
                }
            }
        }
        done += chunk.len();
    }
    progress.finish();
    let secs = start.elapsed().as_secs_f64();
    let rank_note = if world > 1 {
        format!("rank {rank}/{world}: ")
    } else {
        String::new()
    };
    let summary = format!(
        "{rank_note}{} clip(s), {frames} frames in {secs:.1} s ({:.2} frames/s), {} {} steps{}{}",
        mine.len() - (failed.len() - early),
        frames as f64 / secs.max(1e-9),
        opts.steps,
        opts.sampler.name(),
        if skipped > 0 {
            format!(", {skipped} existing skipped")
        } else {
            String::new()
        },
        if opts.inpaint { ", inpainting" } else { "" }
    );
    if !failed.is_empty() {
        bail!(
            "{summary}; {} clip(s) failed (first: {})",
            failed.len(),
            failed[0]
        );
    }
    Ok(summary)
}

/// The jobs of a command line: one clip, or the lines of `--list`.
fn jobs(
    list: Option<&Path>,
    video: Option<PathBuf>,
    audio: Option<PathBuf>,
    out: Option<PathBuf>,
) -> anyhow::Result<Vec<Job>> {
    match (list, video, audio, out) {
        (Some(l), None, None, None) => {
            let jobs = generate::read_list(l)?;
            if jobs.is_empty() {
                bail!("{}: no jobs in the list", l.display());
            }
            Ok(jobs)
        }
        (None, Some(video), Some(audio), Some(out)) => Ok(vec![Job { video, audio, out }]),
        _ => bail!("give either --list FILE, or all of --video, --audio and --out"),
    }
}
