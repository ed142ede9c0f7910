//! `syncdiff-dataprep`: make the training data.
//!
//! ```text
//! syncdiff-dataprep synth --out data/synth --speakers 8 --clips-per-speaker 12 --seconds 3 --seed 0
//! syncdiff-dataprep config --config configs/debug.yaml
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use syncdiff_dataprep::synth::{synth, SynthOptions};
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
    /// Write a synthetic data set in LRS2's layout: procedurally drawn faces whose mouth follows
    /// the loudness of espeak-ng speech, with the true mouth opening of every frame.
    Synth {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Speakers (identities).
        #[arg(long, default_value_t = 8)]
        speakers: u32,
        /// Clips per speaker (clip 1 goes to test.txt, clip 2 to val.txt, the rest to train.txt).
        #[arg(long, default_value_t = 12)]
        clips_per_speaker: u32,
        /// Seconds per clip.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Seed of every random choice.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Resolve a configuration and print what dataprep uses from it (data, model.autoencoder).
    Config {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Synth { out, speakers, clips_per_speaker, seconds, seed } => {
            let opts = SynthOptions { out: out.clone(), speakers, clips_per_speaker, seconds, seed };
            let bar = indicatif::ProgressBar::new(u64::from(speakers * clips_per_speaker));
            bar.set_style(
                indicatif::ProgressStyle::with_template("synth {bar:30} {pos}/{len} clips, {elapsed} elapsed, ETA {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let r = synth(&opts, |done, _| bar.set_position(done as u64));
            bar.finish_and_clear();
            r.map(|n| format!("wrote {n} clips to {} ({} s each; train/val/test lists beside main/)", out.display(), seconds))
                .map_err(anyhow::Error::from)
        }
        Command::Config { config } => match config.load() {
            Ok(c) => Ok(format!(
                "data set: {}\nframes: {}x{} at {} fps, audio {} Hz, mask: lower {} of the face box\nautoencoder: {:?}, latent {}x{}x{}",
                c.data.dataset,
                c.data.resolution,
                c.data.resolution,
                c.data.fps,
                c.data.sample_rate,
                c.data.mask_fraction,
                c.model.autoencoder.kind,
                c.model.latent_channels(),
                c.latent_side(),
                c.latent_side()
            )),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
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
