//! `syncdiff generate`: one clip (`--video --audio --out`) or a list of them (`--list`), batched
//! on one device; under `mpirun` each rank takes every world-th line of the list.
//!
//! A clip that fails (unreadable file, too small, no audio) is reported and skipped; the others
//! still run, and the exit status says whether all succeeded. Outputs appear under their final
//! name only when complete; `--skip-existing` makes a rerun do only what is missing.

use std::path::{Path, PathBuf};

use anyhow::bail;
use syncdiff_model::config::{Precision, SamplerKind};
use syncdiff_runtime::device::DeviceChoice;
use syncdiff_runtime::ranks::Ranks;

use syncdiff_inference::generate::{self, Job, WeightChoice};

/// `syncdiff generate`: the reference video's face speaking the driving audio.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Inference bundle (`syncdiff ckpt export`), checkpoint `URL/step-NNNNNNNNN`, or a
    /// checkpoint URL (its newest valid checkpoint).
    #[arg(long)]
    checkpoint: String,
    /// Reference video (identity and pose; any size and frame rate: the output has its size,
    /// at 25 fps).
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
    /// Sampler: ddim, dpmpp-2m or dpmpp-2m-karras (DPM-Solver++(2M), on linspace timesteps or
    /// Karras sigmas: far fewer steps) [default: sample.sampler].
    #[arg(long, value_name = "ddim|dpmpp-2m|dpmpp-2m-karras")]
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
    /// Audio classifier-free guidance scale, 1 = off (needs a model trained with
    /// train.audio_dropout > 0) [default: sample.guidance].
    #[arg(long)]
    guidance: Option<f64>,
    /// DDIM: end with the last step's x0 prediction instead of x_prev [default:
    /// sample.final_x0].
    #[arg(long)]
    final_x0: Option<bool>,
    /// Autocast precision of the autoencoder and the denoiser (the sampler stays float32)
    /// [default: sample.precision].
    #[arg(long, value_name = "fp32|bf16|fp16")]
    precision: Option<Precision>,
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
    /// CPU only: libtorch intra-op threads (of each worker with --workers) [default: 1 per
    /// worker with --workers, the node's cores shared among its ranks under a launcher,
    /// libtorch's own otherwise]. Results differ in the last bits between thread counts: give
    /// the same value to runs that must match.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// Also write `OUT.preview.png` beside each output: its middle frame before, after, and
    /// the difference (x4), side by side.
    #[arg(long)]
    preview: bool,
    /// Override a face setting, e.g. `--set data.face.min_face=60` (repeatable; the model's
    /// own settings are what it was trained with: a change is warned about).
    #[arg(long = "set", value_name = "data.face.KEY=VALUE")]
    set: Vec<String>,
}

/// Runs the request on this rank; returns the summary line.
pub fn run(args: Args) -> anyhow::Result<String> {
    let jobs = jobs(args.list.as_deref(), args.video, args.audio, args.out)?;
    let launch = Ranks::from_env()?;
    let device = args.device.device(launch.local_rank)?;
    let request = generate::Request {
        checkpoint: args.checkpoint,
        weights: if args.live_weights {
            WeightChoice::Live
        } else {
            WeightChoice::Ema
        },
        autoencoder: args.autoencoder,
        device,
        workers: args.workers as usize,
        threads: args.threads.map(|n| n as usize),
        batch: args.batch,
        sample: generate::SampleOverrides {
            sampler: args.sampler,
            steps: args.steps,
            eta: args.eta,
            inpaint: args.inpaint,
            guidance: args.guidance,
            final_x0: args.final_x0,
            precision: args.precision,
        },
        seed: args.seed,
        skip_existing: args.skip_existing,
        preview: args.preview,
        face_set: args.set,
    };
    let summary = generate::run(&jobs, &request, &launch)?;
    if let Some(first) = summary.failed.first() {
        bail!(
            "{summary}; {} clip(s) failed (first: {first})",
            summary.failed.len()
        );
    }
    Ok(summary.to_string())
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
