//! `syncdiff-dataprep`: make the training data.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use syncdiff_model::config::ConfigArgs;

/// Prepare SyncDiff training data.
#[derive(Debug, Parser)]
#[command(name = "syncdiff-dataprep", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Resolve a configuration and print what dataprep uses from it (data, model.autoencoder).
    Config {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Config { config } => match config.load() {
            Ok(c) => {
                println!("data set: {}", c.data.dataset);
                println!(
                    "frames: {}x{} at {} fps, audio {} Hz, mask: lower {} of the face box",
                    c.data.resolution,
                    c.data.resolution,
                    c.data.fps,
                    c.data.sample_rate,
                    c.data.mask_fraction
                );
                println!(
                    "autoencoder: {:?}, latent {}x{}x{}",
                    c.model.autoencoder.kind,
                    c.model.latent_channels(),
                    c.latent_side(),
                    c.latent_side()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
