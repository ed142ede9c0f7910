//! `syncdiff`: tools around a trained model. Subcommands arrive with their features
//! (generate, eval, convert, forward, ckpt); `config` prints the resolved configuration.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use syncdiff_model::config::ConfigArgs;

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Config { config } => match config.load() {
            Ok(c) => {
                print!("{}", c.to_yaml());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
