//! `syncdiff`: tools around the model.
//!
//! ```text
//! syncdiff config  --config C.yaml [--set k=v]...             # print the resolved configuration
//! syncdiff convert vq-f4 --ckpt model.ckpt --out vq.safetensors [--config C.yaml]
//! syncdiff forward --module vq-encode --config C.yaml --weights W.safetensors \
//!                  --input I.safetensors --output O.safetensors
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use syncdiff_model::config::{Config, ConfigArgs};
use syncdiff_trainer::tools;

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
    Convert {
        #[command(subcommand)]
        what: Convert,
    },
    /// Run one module on named tensors and write its outputs (to check imported weights).
    Forward {
        /// vq-encode (image -> latent), vq-decode (latent -> image), unet (sample, timestep, context -> output).
        #[arg(long)]
        module: String,
        #[command(flatten)]
        config: ConfigArgs,
        /// Weights (safetensors) of the module.
        #[arg(long)]
        weights: PathBuf,
        /// Input tensors (safetensors).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the outputs (safetensors).
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum Convert {
    /// LDM VQ-f4 `model.ckpt` (CompVis layout) -> diffusers `VQModel` names.
    VqF4 {
        /// The original checkpoint.
        #[arg(long)]
        ckpt: PathBuf,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Also check the result loads into this configuration's model.autoencoder.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// A configuration error: printed and mapped to exit code 2.
fn load(args: &ConfigArgs) -> Result<Config, ExitCode> {
    args.load().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Config { config } => match load(&config) {
            Ok(c) => {
                print!("{}", c.to_yaml());
                return ExitCode::SUCCESS;
            }
            Err(code) => return code,
        },
        Command::Convert {
            what: Convert::VqF4 { ckpt, out, config },
        } => {
            let cfg = match config {
                Some(path) => match Config::load(&path, &[]) {
                    Ok(c) => Some(c.model.autoencoder),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => None,
            };
            tools::convert::vq_f4(&ckpt, &out, cfg.as_ref())
        }
        Command::Forward {
            module,
            config,
            weights,
            input,
            output,
        } => match load(&config) {
            Ok(c) => tools::forward::run(&module, &c, &weights, &input, &output),
            Err(code) => return code,
        },
    };
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
