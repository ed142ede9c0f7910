//! `syncdiff generate`: one clip (`--video --audio --out`) or a list of them (`--list`), batched
//! on one device; under `mpirun` each rank takes every world-th line of the list.
//!
//! A clip that fails (unreadable file, too small, no audio) is reported and skipped; the others
//! still run, and the exit status says whether all succeeded. Outputs appear under their final
//! name only when complete; `--skip-existing` makes a rerun do only what is missing.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use syncdiff_dataprep::face;
use syncdiff_dataprep::video;
use syncdiff_model::config::{FaceDetectorKind, Precision, SamplerKind};
use syncdiff_runtime::launch::{DeviceChoice, Launch};
use syncdiff_runtime::progress::Progress;
use tch::Device;

use syncdiff_inference::generate::{self, GenerateOptions, Generator, Job, WeightChoice};

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
    let launch = Launch::from_env().map_err(anyhow::Error::msg)?;
    let (rank, world) = (launch.rank, launch.world);
    let device = args
        .device
        .device(launch.local_rank)
        .map_err(anyhow::Error::msg)?;
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
    if let (Some(n), false) = (args.threads, device == Device::Cpu) {
        bail!("--threads {n}: libtorch threads are for CPUs; this run is on {device:?}");
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
    if device == Device::Cpu {
        // One process with one model keeps libtorch's own default (which reads OMP_NUM_THREADS).
        let threads = match args.threads {
            Some(n) => Some(n as usize),
            None if models.len() > 1 => Some(1),
            None if world > 1 => Some(launch.cpu_threads()),
            None => None,
        };
        if let Some(n) = threads {
            tch::set_num_threads(n as i32);
        }
    }
    // Said in the summary: timings and last-bit results depend on it.
    let cpu_note = match (device, models.len()) {
        (Device::Cpu, 1) => format!(", {} libtorch thread(s)", tch::get_num_threads()),
        (Device::Cpu, n) => format!(
            ", {n} workers of {} libtorch thread(s)",
            tch::get_num_threads()
        ),
        _ => String::new(),
    };
    let g = &models[0];
    let s = &g.config.sample;
    let opts = GenerateOptions {
        sampler: args.sampler.unwrap_or(s.sampler),
        steps: args.steps.unwrap_or(s.ddim_steps as usize),
        eta: args.eta.unwrap_or(s.eta),
        inpaint: args.inpaint.unwrap_or(s.inpaint),
        guidance: args.guidance.unwrap_or(s.guidance),
        final_x0: args.final_x0.unwrap_or(s.final_x0),
        seed: args.seed,
        precision: args.precision.unwrap_or(s.precision),
    };
    if !(opts.guidance.is_finite() && opts.guidance >= 1.0) {
        bail!("--guidance {}: must be at least 1 (1: off)", opts.guidance);
    }
    if opts.guidance != 1.0 && g.model.denoiser().null_context().is_none() {
        bail!(
            "--guidance {}: this model was trained without audio dropout \
             (train.audio_dropout 0), so it has no null audio context to guide against; use 1",
            opts.guidance
        );
    }
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
    let (face, departures) = generate::face_settings(&g.config, &args.set)?;
    if rank == 0 {
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
    }
    let progress = Progress::new(true, "generate", "frame", 0, 0);
    let start = Instant::now();
    let (mut done, mut frames) = (0usize, 0u64);
    let mut passed = 0u64;
    let mut timings = generate::Timings::default();
    for chunk in mine.chunks(args.batch.max(1)) {
        let mut prepared = Vec::new();
        for job in chunk {
            if face.detector.is_dlib() {
                progress.message(|| format!("finding the face in {}", job.video.display()));
            }
            match generate::prepare(&models[0], job, &face) {
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
        // Each clip's encoder, fed as frames are made.
        let mut ready = Vec::new();
        let mut sinks = Vec::new();
        for p in &prepared {
            match generate::Mp4Sink::create(p) {
                Ok(s) => {
                    ready.push(p);
                    sinks.push(s);
                }
                Err(e) => {
                    progress.eprintln(&format!("error: {e}"));
                    failed.push(e.to_string());
                }
            }
        }
        let mut dyn_sinks: Vec<&mut dyn generate::FrameSink> = sinks
            .iter_mut()
            .map(|s| s as &mut dyn generate::FrameSink)
            .collect();
        let tick = |n: usize| progress.inc(n as u64);
        let reports = if models.len() == 1 {
            generate::generate_batch(
                &models[0],
                &ready,
                &mut dyn_sinks,
                &opts,
                tick,
                &mut timings,
            )?
        } else {
            generate::generate_batch_parallel(
                &mut models,
                &ready,
                &mut dyn_sinks,
                &opts,
                tick,
                &mut timings,
            )?
        };
        drop(dyn_sinks);
        for ((p, sink), report) in ready.iter().zip(sinks).zip(reports) {
            match report.and_then(|r| sink.finish().map(|()| r)) {
                Ok(r) => {
                    let n = (r.generated + r.passed_through) as u64;
                    frames += n;
                    passed += r.passed_through as u64;
                    let note = if r.passed_through > 0 {
                        format!(", {} without a face passed through", r.passed_through)
                    } else {
                        String::new()
                    };
                    let line = format!("wrote {} ({n} frames{note})", p.job.out.display());
                    progress.println(&line);
                    if args.preview {
                        match preview(p) {
                            Ok(png) => progress.println(&format!("wrote {}", png.display())),
                            Err(e) => progress.eprintln(&format!("warning: preview: {e}")),
                        }
                    }
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
    if timings.steps > 0 {
        // Where the time went (docs/generate.md, "Speed"): the phases of the frame loop.
        eprintln!("{rank_note}time per phase: {timings}");
    }
    let summary = format!(
        "{rank_note}{} clip(s), {frames} frames in {secs:.1} s ({:.2} frames/s{cpu_note}), {} {} steps{}{}{}{}{}",
        mine.len() - (failed.len() - early),
        frames as f64 / secs.max(1e-9),
        opts.steps,
        opts.sampler.name(),
        if skipped > 0 {
            format!(", {skipped} existing skipped")
        } else {
            String::new()
        },
        if opts.inpaint { ", inpainting" } else { "" },
        if opts.guidance != 1.0 {
            format!(", guidance {}", opts.guidance)
        } else {
            String::new()
        },
        if passed > 0 {
            format!(", {passed} frames without a face passed through")
        } else {
            String::new()
        },
        syncdiff_runtime::progress::peak_memory_mib()
            .map_or(String::new(), |m| format!(", peak memory {m} MiB"))
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

/// Frame `k` of a video at 25 fps, as generation read it.
fn frame_at(path: &Path, k: usize) -> anyhow::Result<(Vec<u8>, u32, u32)> {
    let info = video::probe(path)?;
    let mut rd = video::FrameReader::open(path, info.width, info.height, Some(25.0), None)?;
    let mut buf = vec![0u8; rd.frame_len()];
    for _ in 0..=k {
        if !rd.next_frame(&mut buf)? {
            bail!("{}: fewer than {} frames", path.display(), k + 1);
        }
    }
    Ok((buf, info.width, info.height))
}

/// Writes `OUT.preview.png`: the middle output frame's reference, the output, and their
/// difference x4, each scaled to 360 rows.
fn preview(p: &generate::Prepared) -> anyhow::Result<PathBuf> {
    let k = p.frames / 2;
    let (before, w, h) = frame_at(&p.job.video, generate::ping_pong(k, p.available))?;
    let (after, ow, oh) = frame_at(&p.job.out, k)?;
    anyhow::ensure!(
        (ow, oh) == (w, h),
        "the output is {ow}x{oh}, the reference {w}x{h}"
    );
    let diff: Vec<u8> = before
        .iter()
        .zip(&after)
        .map(|(a, b)| (u32::from(a.abs_diff(*b)) * 4).min(255) as u8)
        .collect();
    let rows = 360u32.min(h);
    let cols = (u64::from(w) * u64::from(rows) / u64::from(h)).max(1) as u32;
    let k = w as f32 / cols as f32;
    let scale = face::Affine([k, 0.0, 0.0, 0.0, h as f32 / rows as f32, 0.0]);
    let panels: Vec<Vec<u8>> = [&before, &after, &diff]
        .iter()
        .map(|f| face::warp(f, w, h, &scale, cols, rows))
        .collect();
    let line = (cols * 3) as usize;
    let mut strip = Vec::with_capacity(line * 3 * rows as usize);
    for y in 0..rows as usize {
        for panel in &panels {
            strip.extend_from_slice(&panel[y * line..(y + 1) * line]);
        }
    }
    let name = p
        .job
        .out
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let png = p.job.out.with_file_name(format!("{name}.preview.png"));
    video::write_png(&png, &strip, cols * 3, rows)?;
    Ok(png)
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
