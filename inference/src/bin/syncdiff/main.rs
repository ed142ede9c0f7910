//! `syncdiff`: tools around the model.
//!
//! ```text
//! syncdiff config  --config C.yaml [--set k=v]...             # print the resolved configuration
//! syncdiff convert vq-f4 --ckpt model.ckpt --out vq.safetensors [--config C.yaml]
//! syncdiff forward --module vq-encode --config C.yaml --weights W.safetensors \
//!                  --input I.safetensors --output O.safetensors
//! syncdiff ckpt list s3://bucket/run                          # checkpoints under a URL
//! syncdiff ckpt inspect s3://bucket/run/step-000005000 [--config C.yaml]
//! syncdiff ckpt export s3://bucket/run/step-000005000 --out bundle/
//! syncdiff generate --checkpoint bundle/ --video ref.mp4 --audio drive.wav --out out.mp4
//! syncdiff generate --checkpoint s3://bucket/run/step-000005000 --list pairs.txt --batch 8
//! syncdiff data upload ds/ s3://bucket/ds                    # a prepared data set, manifest last
//! syncdiff data fetch --config C.yaml                         # fill this node's data cache
//! syncdiff eval --pred out/ --gt gt/ [--syncnet syncnet.pt] [--lpips lpips.pt] [--openings]
//! ```

mod ckpt;
mod convert;
mod data;
mod eval;
mod forward;
mod generate;

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use syncdiff_model::config::{parse_args, Config, ConfigArgs};

/// SyncDiff tools.
#[derive(Debug, Parser)]
#[command(name = "syncdiff", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve and validate a configuration and print it as YAML (with derived values).
    Config {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Import an original checkpoint as safetensors (loading never executes code from it).
    #[command(subcommand)]
    Convert(convert::Command),
    /// Run one module on named tensors and write its outputs (to check imported weights).
    Forward(forward::Args),
    /// Lip-synced video: the reference video's face speaking the driving audio (EMA weights by
    /// default). Many clips: --list FILE with lines `VIDEO AUDIO OUT`; under mpirun ranks split it.
    Generate(generate::Args),
    /// Scores generated videos against ground truth: PSNR and SSIM (scikit-image definitions),
    /// full frame and mouth region; optional LSE-C/D, LPIPS, WER and (synthetic data set) the
    /// mouth-opening error. A table and a JSON report.
    Eval(eval::Args),
    /// Checkpoints: list, inspect, export.
    #[command(subcommand)]
    Ckpt(ckpt::Command),
    /// Data sets on object storage: upload one, fill this node's cache.
    #[command(subcommand)]
    Data(data::Command),
}

/// A user error (a configuration that does not load): exit code 2, like a usage error.
#[derive(Debug)]
struct UserError(String);

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UserError {}

/// `--config` and `--set`, loaded and validated (an error is a [`UserError`]).
fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
    args.load().map_err(|e| UserError(e.to_string()).into())
}

/// A configuration file without overrides (`convert --config`).
fn load_file(path: &Path) -> anyhow::Result<Config> {
    Config::load(path, &[]).map_err(|e| UserError(e.to_string()).into())
}

fn main() -> ExitCode {
    let result = match parse_args::<Cli>().command {
        Command::Config { config } => load(&config).map(|c| c.to_yaml().trim_end().to_string()),
        Command::Convert(c) => convert::run(c),
        Command::Forward(a) => forward::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Ckpt(c) => ckpt::run(c),
        Command::Data(c) => data::run(c),
    };
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) if e.is::<UserError>() => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
