//! `syncdiff-train`: the MPI entry point.
//!
//! ```text
//! syncdiff-train --config configs/debug.yaml --dry-run                 # 1 process
//! mpirun -n 2 syncdiff-train --config configs/debug.yaml --dry-run     # 2 ranks on one machine
//! mpirun -n 6 syncdiff-train --config configs/syncdiff-lrs2.yaml       # 1 node x 6 GPUs
//! ```

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use syncdiff_model::config::{parse_args, ConfigArgs};
use syncdiff_trainer::dist::Runtime;
use syncdiff_trainer::dryrun::{DryRun, ModelReport};
use syncdiff_trainer::train::ResumePolicy;

/// Train SyncDiff with data parallelism over MPI ranks.
#[derive(Debug, Parser)]
#[command(name = "syncdiff-train", version)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    /// Resolve and validate the configuration, report each rank's placement, the batch split and
    /// the run length, check an MPI all-reduce, and exit without touching data.
    #[arg(long)]
    dry_run: bool,
    /// Check each rank before a long run: device, gradient backend (NCCL or MPI all-reduce), the
    /// data set (reads one sample) and write access to the checkpoint URL; exit non-zero on any
    /// failure. `launch/preflight.sh` runs it.
    #[arg(long, conflicts_with = "dry_run")]
    preflight: bool,
    /// Resume policy: `auto` (newest valid checkpoint, else fresh), `never`, or a checkpoint URL.
    #[arg(long, default_value = "auto", value_name = "auto|never|URL")]
    resume: ResumePolicy,
    /// When checkpoints under `checkpoint.url` would mix with this run (newer steps than the one
    /// resumed, another run's, or any at all for a fresh start), move them to
    /// `<checkpoint.url>/set-aside/<UTC time>/` instead of refusing to start. Nothing is deleted;
    /// `--resume auto` never looks there. See docs/checkpoints.md.
    #[arg(long)]
    move_aside: bool,
    /// Take the writer lease on `checkpoint.url` even while another job holds it (that job then
    /// saves nothing more and stops). Without it a live lease refuses the start, naming its
    /// holder. See docs/checkpoints.md.
    #[arg(long)]
    take_lease: bool,
}

fn main() -> ExitCode {
    let cli = parse_args::<Cli>();
    // Configuration errors are the same on every rank: report them before MPI starts.
    let config = match cli.config.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.config.print_config {
        print!("{}", config.to_yaml());
        return ExitCode::SUCCESS;
    }
    match run(&cli, &config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        Err(Failure::EveryRank(message)) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Why the job stopped: a configuration that does not fit this launch (exit 2, like every other
/// configuration error) or anything else (exit 1).
enum Failure {
    Config(String),
    Other(anyhow::Error),
    /// An error every rank reached at the same point (exit 1 on every rank, no abort; rank 0
    /// says it, the other ranks' messages are empty).
    EveryRank(String),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

fn run(cli: &Cli, config: &syncdiff_model::config::Config) -> Result<(), Failure> {
    let rt = Runtime::init().context("cannot start MPI")?;
    // The split of the global batch depends on the world size, known only now. Every rank
    // computes the same answer, so all of them exit with it (no abort needed).
    if let Err(e) = config.batch_plan(rt.world_size() as u32) {
        return Err(Failure::Config(if rt.is_main() {
            e.to_string()
        } else {
            String::new()
        }));
    }
    if cli.dry_run {
        let plan = DryRun::run(config, &rt).map_err(|e| anyhow::anyhow!("{} {e}", rt.prefix()))?;
        if rt.is_main() {
            println!(
                "{} config {} (resolved; --print-config shows it)",
                rt.prefix(),
                cli.config.config.display()
            );
            for line in plan.summary(config, &rt) {
                println!("{line}");
            }
            let report = ModelReport::build(config, plan.batch.micro_batch);
            for line in report.lines(&rt.prefix(), plan.batch.micro_batch) {
                println!("{line}");
            }
        }
        rt.in_rank_order(|| println!("{}", plan.rank_line(&rt)));
        return Ok(());
    }
    let gpus = tch::Cuda::device_count();
    let placement = match syncdiff_trainer::dist::GpuNode::probe()
        .unusable(gpus, syncdiff_trainer::dist::WHEEL_CUDA)
    {
        Some(message) => Err(syncdiff_trainer::dist::DistError::Backend {
            rank: rt.rank(),
            message,
        }),
        None => syncdiff_trainer::dist::choose_device(
            config.dist.backend,
            rt.rank(),
            rt.local_rank(),
            rt.local_size(),
            config.dist.cpu_threads,
            gpus,
        ),
    };
    if cli.preflight {
        let report = syncdiff_trainer::preflight::run(
            config,
            &rt,
            placement.as_ref().map(|p| *p).map_err(|e| e.to_string()),
        );
        rt.in_rank_order(|| println!("{}", report.line));
        let mut failed = [0i32];
        mpi::collective::CommunicatorCollectives::all_reduce_into(
            rt.comm(),
            &[report.failures.len() as i32][..],
            &mut failed[..],
            mpi::collective::SystemOperation::sum(),
        );
        for f in &report.failures {
            error_line(&format!("{} preflight {f}", rt.prefix()));
        }
        if failed[0] > 0 {
            return Err(anyhow::anyhow!(
                "{} preflight: {} check(s) failed across the job",
                rt.prefix(),
                failed[0]
            )
            .into());
        }
        if rt.is_main() {
            println!(
                "{} preflight passed on all {} ranks",
                rt.prefix(),
                rt.world_size()
            );
        }
        return Ok(());
    }
    // SIGUSR1 (SLURM's warning before the time limit) or SIGTERM: stop after the current step on
    // every rank (the flag travels in the gradient all-reduce).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGUSR1, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .context("cannot install the signal handlers")?;
    }
    let placement = placement.map_err(|e| anyhow::anyhow!("{e}"))?;
    tch::set_num_threads(placement.cpu_threads as i32);
    let stop_requested = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let opts = syncdiff_trainer::train::TrainOptions {
        device: placement.device,
        backend: placement.backend,
        stop_requested: &stop_requested,
        resume: cli.resume.clone(),
        move_aside: cli.move_aside,
        take_lease: cli.take_lease,
    };
    let summary = match syncdiff_trainer::train::train(config, &rt, &opts) {
        Ok(s) => s,
        Err(e) if e.on_every_rank() => {
            return Err(Failure::EveryRank(if rt.is_main() {
                format!("{} {e}", rt.prefix())
            } else {
                String::new()
            }))
        }
        // One rank's failure ends the job at once: the others may be waiting in a collective.
        Err(e) if rt.world_size() > 1 => {
            error_line(&format!(
                "{} {e:#}; aborting all {} ranks",
                rt.prefix(),
                rt.world_size()
            ));
            rt.abort(1)
        }
        Err(e) => return Err(anyhow::anyhow!("{} {e:#}", rt.prefix()).into()),
    };
    if rt.is_main() {
        println!(
            "{} {} after {} steps in {:.1} s; last loss {:.4}; loader at epoch {} sample {}",
            rt.prefix(),
            if summary.stopped {
                "stopped on request"
            } else {
                "finished"
            },
            summary.steps,
            summary.seconds,
            summary.last_loss,
            summary.state.epoch,
            summary.state.consumed
        );
    }
    Ok(())
}

/// Writes `error: LINE` and its newline to stderr in one write, so that the lines of several
/// ranks (and mpirun's own messages) interleave only as whole lines (`eprintln!` writes each
/// formatted piece separately).
fn error_line(line: &str) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("error: {line}\n").as_bytes());
}
