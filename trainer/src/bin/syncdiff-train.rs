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
use syncdiff_model::config::{parse_args, Config, ConfigArgs};
use syncdiff_trainer::dist::{self, Runtime};
use syncdiff_trainer::dryrun::DryRun;
use syncdiff_trainer::preflight;
use syncdiff_trainer::train::{self, ResumePolicy};

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

fn run(cli: &Cli, config: &Config) -> Result<(), Failure> {
    let rt = Runtime::init().context("cannot start MPI")?;
    // The split of the global batch depends on the world size, known only now. Every rank
    // computes the same answer, so all of them exit with it (no abort needed).
    if let Err(e) = config.batch_plan(rt.world_size() as u32) {
        return Err(Failure::Config(main_only(&rt, e.to_string())));
    }
    if cli.dry_run {
        DryRun::print(config, &rt, &cli.config.config)
            .map_err(|e| anyhow::anyhow!("{} {e}", rt.prefix()))?;
        return Ok(());
    }
    let placement = dist::place(config, &rt);
    if cli.preflight {
        let placement = placement.map_err(|e| e.to_string());
        preflight::run_job(config, &rt, placement).map_err(anyhow::Error::from)?;
        return Ok(());
    }
    let stop = train::stop_on_signals().context("cannot install the signal handlers")?;
    let placement = placement.map_err(|e| anyhow::anyhow!("{e}"))?;
    tch::set_num_threads(placement.cpu_threads as i32);
    let stop_requested = || stop.load(std::sync::atomic::Ordering::Relaxed);
    let opts = train::TrainOptions {
        device: placement.device,
        backend: placement.backend,
        stop_requested: &stop_requested,
        resume: cli.resume.clone(),
        move_aside: cli.move_aside,
        take_lease: cli.take_lease,
    };
    match train::train(config, &rt, &opts) {
        Ok(summary) if rt.is_main() => println!("{} {summary}", rt.prefix()),
        Ok(_) => {}
        Err(e) if e.on_every_rank() => {
            return Err(Failure::EveryRank(main_only(
                &rt,
                format!("{} {e}", rt.prefix()),
            )))
        }
        // One rank's failure ends the job at once: the others may be waiting in a collective.
        Err(e) if rt.world_size() > 1 => {
            let (p, n) = (rt.prefix(), rt.world_size());
            dist::error_line(&format!("{p} {e:#}; aborting all {n} ranks"));
            rt.abort(1)
        }
        Err(e) => return Err(anyhow::anyhow!("{} {e:#}", rt.prefix()).into()),
    }
    Ok(())
}

/// A message said once, by rank 0 (the other ranks' are empty).
fn main_only(rt: &Runtime, message: String) -> String {
    if rt.is_main() {
        message
    } else {
        String::new()
    }
}
