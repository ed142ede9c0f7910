//! `syncdiff generate`: one clip (`--video --audio --out`) or a list of them (`--list`), batched
//! on one device; under `mpirun` each rank takes every world-th line of the list.
//!
//! A clip that fails (unreadable file, too small, no audio) is reported and skipped; the others
//! still run, and the exit status says whether all succeeded. Outputs appear under their final
//! name only when complete; `--skip-existing` makes a rerun do only what is missing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tch::Device;

use crate::generate::{self, GenerateOptions, Generator, Job, WeightChoice};

/// Everything `syncdiff generate` was asked.
#[derive(Debug, Clone)]
pub struct Request {
    /// Bundle directory or checkpoint URL.
    pub checkpoint: String,
    /// The clips (before the rank split).
    pub jobs: Vec<Job>,
    /// Clips generated together.
    pub batch: usize,
    /// DDIM steps (None: the configuration's `sample.ddim_steps`).
    pub steps: Option<usize>,
    /// DDIM eta (None: `sample.eta`).
    pub eta: Option<f64>,
    /// Inpainting blend (None: `sample.inpaint`).
    pub inpaint: Option<bool>,
    /// Noise seed.
    pub seed: u64,
    /// EMA or live weights of a checkpoint.
    pub weights: WeightChoice,
    /// VQ-f4 weights when the configured path is not valid here.
    pub autoencoder: Option<PathBuf>,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Skip clips whose output exists.
    pub skip_existing: bool,
    /// CPU worker threads, each with its own copy of the model and one libtorch thread.
    pub workers: usize,
}

/// The device of `--device`: `auto` takes this rank's GPU when there is one.
pub fn device(spec: &str, local_rank: usize) -> anyhow::Result<Device> {
    let gpus = tch::Cuda::device_count() as usize;
    let cuda = |i: usize| {
        if i < gpus {
            Ok(Device::Cuda(i))
        } else if gpus == 0 {
            bail!("--device {spec}: this machine has no CUDA GPU visible to libtorch; use --device cpu")
        } else {
            bail!("--device {spec}: only {gpus} GPU(s) visible")
        }
    };
    match spec {
        "auto" if gpus > 0 => Ok(Device::Cuda(local_rank % gpus)),
        "auto" | "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(local_rank % gpus.max(1)),
        s => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
            Some(i) => cuda(i),
            None => bail!("--device {spec}: expected auto, cpu, cuda or cuda:N"),
        },
    }
}

fn env_usize(names: &[&str]) -> Option<usize> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok()?.parse().ok())
}

/// Prints a line above the bar, or plainly when the bar is hidden (not a terminal).
fn say(bar: &ProgressBar, line: String, error: bool) {
    match (bar.is_hidden(), error) {
        (false, _) => bar.println(line),
        (true, false) => println!("{line}"),
        (true, true) => eprintln!("{line}"),
    }
}

fn bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "generate {bar:30} frame {pos}/{len} {msg} elapsed {elapsed} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Runs the request on this rank; returns the summary line.
pub fn run(req: &Request) -> anyhow::Result<String> {
    let (rank, world) = syncdiff_dataprep::ingest::launcher_rank();
    let local_rank = env_usize(&[
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ])
    .unwrap_or(0);
    let device = device(&req.device, local_rank)?;
    if device == Device::Cpu && world > 1 {
        let local = env_usize(&["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]).unwrap_or(world);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tch::set_num_threads((cores / local.max(1)).max(1) as i32);
    }
    let assigned: Vec<&Job> = req
        .jobs
        .iter()
        .enumerate()
        .filter(|(i, _)| i % world == rank)
        .map(|(_, j)| j)
        .collect();
    let (existing, mine): (Vec<&Job>, Vec<&Job>) = assigned
        .into_iter()
        .partition(|j| req.skip_existing && j.out.is_file());
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
    if req.workers > 1 && device != Device::Cpu {
        bail!(
            "--workers {}: worker threads are for CPUs; on a GPU use a larger --batch",
            req.workers
        );
    }
    let load = || {
        Generator::load(
            &req.checkpoint,
            req.weights,
            req.autoencoder.as_deref(),
            device,
        )
    };
    // One model, or one per CPU worker thread (each with one libtorch thread).
    let mut models: Vec<Generator> = (0..req.workers.max(1))
        .map(|_| load())
        .collect::<Result<_, _>>()?;
    if models.len() > 1 {
        tch::set_num_threads(1);
    }
    let g = &models[0];
    let s = &g.config.sample;
    let opts = GenerateOptions {
        steps: req.steps.unwrap_or(s.ddim_steps as usize),
        eta: req.eta.unwrap_or(s.eta),
        inpaint: req.inpaint.unwrap_or(s.inpaint),
        seed: req.seed,
    };
    let timesteps = g.config.model.diffusion.timesteps;
    if opts.steps == 0 || opts.steps > timesteps as usize {
        bail!(
            "--steps {}: must be between 1 and the model's {timesteps} diffusion timesteps",
            opts.steps
        );
    }
    let progress = bar(0);
    let start = Instant::now();
    let (mut done, mut frames) = (0usize, 0u64);
    for chunk in mine.chunks(req.batch.max(1)) {
        let mut prepared = Vec::new();
        for job in chunk {
            match generate::prepare(&models[0], job) {
                Ok(p) => {
                    progress.inc_length(p.frames as u64);
                    prepared.push(p);
                }
                Err(e) => {
                    say(&progress, format!("error: {e}"), true);
                    failed.push(e.to_string());
                }
            }
        }
        progress.set_message(format!(
            "clips {}..{} of {}",
            done + 1,
            done + chunk.len(),
            mine.len()
        ));
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
                    say(&progress, line, false);
                }
                Err(e) => {
                    say(&progress, format!("error: {e}"), true);
                    failed.push(e.to_string());
                }
            }
        }
        done += chunk.len();
    }
    progress.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    let rank_note = if world > 1 {
        format!("rank {rank}/{world}: ")
    } else {
        String::new()
    };
    let summary = format!(
        "{rank_note}{} clip(s), {frames} frames in {secs:.1} s ({:.2} frames/s), {} DDIM steps{}{}",
        mine.len() - (failed.len() - early),
        frames as f64 / secs.max(1e-9),
        opts.steps,
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
pub fn jobs(
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
