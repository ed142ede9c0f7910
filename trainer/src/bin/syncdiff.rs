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
//! syncdiff eval --pred out/ --gt gt/ [--syncnet syncnet.pt] [--lpips lpips.pt] [--openings]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use syncdiff_model::config::{Config, ConfigArgs};
use syncdiff_trainer::{generate, tools};

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
        /// vq-encode, vq-decode, unet, logfbank, avhubert, temporal (inputs and outputs: docs/models.md).
        #[arg(long)]
        module: String,
        #[command(flatten)]
        config: ConfigArgs,
        /// Weights (safetensors) of the module (not needed for logfbank).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// avhubert: run the front end and the first N layers only (output `hidden`).
        #[arg(long, value_name = "N", conflicts_with = "from_layer")]
        until_layer: Option<usize>,
        /// avhubert: start at layer N from input `hidden`, through the final LayerNorm.
        #[arg(long, value_name = "N")]
        from_layer: Option<usize>,
        /// Input tensors (safetensors).
        #[arg(long)]
        input: PathBuf,
        /// Where to write the outputs (safetensors).
        #[arg(long)]
        output: PathBuf,
    },
    /// Lip-synced video: the reference video's face speaking the driving audio (EMA weights by
    /// default). Many clips: --list FILE with lines `VIDEO AUDIO OUT`; under mpirun ranks split it.
    Generate {
        /// Inference bundle (`syncdiff ckpt export`), checkpoint `URL/step-NNNNNNNNN`, or a
        /// checkpoint URL (its newest valid checkpoint).
        #[arg(long)]
        checkpoint: String,
        /// Reference video (identity and pose; 25 fps, at least the model's resolution).
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
        /// DDIM steps [default: the model's sample.ddim_steps].
        #[arg(long)]
        steps: Option<usize>,
        /// DDIM eta [default: sample.eta].
        #[arg(long)]
        eta: Option<f64>,
        /// Blend the re-noised reference outside the mask at every step (DiffTalk) [default:
        /// sample.inpaint].
        #[arg(long)]
        inpaint: Option<bool>,
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
        #[arg(long, default_value = "auto")]
        device: String,
        /// Leave clips whose output already exists.
        #[arg(long)]
        skip_existing: bool,
        /// CPU only: split each batch among N worker threads, each with its own copy of the
        /// model and one libtorch thread (faster than intra-op threads for small models).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
        workers: u64,
    },
    /// Scores generated videos against ground truth: PSNR and SSIM (scikit-image definitions),
    /// full frame and mouth region; optional LSE-C/D, LPIPS, WER and (synthetic data set) the
    /// mouth-opening error. A table and a JSON report.
    Eval {
        /// Directory of generated videos.
        #[arg(long)]
        pred: PathBuf,
        /// Directory of ground-truth videos (*.mp4); each needs a prediction of the same name.
        #[arg(long)]
        gt: PathBuf,
        /// Mouth box as fractions of the frame: x,y,w,h.
        #[arg(long, default_value = "0.25,0.5,0.5,0.5")]
        mouth: String,
        /// Where to write the JSON report.
        #[arg(long, default_value = "eval.json")]
        report: PathBuf,
        /// SyncNet as TorchScript (methods forward_lip, forward_aud): LSE-C and LSE-D.
        #[arg(long)]
        syncnet: Option<PathBuf>,
        /// Audio-video offsets LSE searches, +- frames.
        #[arg(long, default_value_t = 15)]
        vshift: i64,
        /// LPIPS as TorchScript (forward(x, y) on [-1, 1] images).
        #[arg(long)]
        lpips: Option<PathBuf>,
        /// Lip reader for WER: a shell command whose last stdout line is the transcript of
        /// `{video}`; references from `<name>.txt` (LRS2 `Text:` line) in --truth-dir.
        #[arg(long)]
        wer_cmd: Option<String>,
        /// Synthetic data set: mouth opening read from the frames vs `<name>.mouth.txt`.
        #[arg(long)]
        openings: bool,
        /// Where the `.mouth.txt` and `.txt` references are [default: --gt].
        #[arg(long)]
        truth_dir: Option<PathBuf>,
        /// Device of the TorchScript metrics: cpu, cuda, cuda:N, auto (a GPU when there is one).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Checkpoints: list, inspect, export.
    Ckpt {
        #[command(subcommand)]
        what: Ckpt,
    },
}

#[derive(Debug, Subcommand)]
enum Ckpt {
    /// List the checkpoints under a URL (path, file://, s3://, gs://, az://), valid or not.
    List {
        /// Checkpoint URL (`checkpoint.url` of the run).
        url: String,
    },
    /// Download and verify one checkpoint; show its state and files, and with --config the
    /// configuration differences and whether that configuration can resume it.
    Inspect {
        /// `URL/step-NNNNNNNNN`.
        url: String,
        /// Compare with this configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides for --config.
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        set: Vec<String>,
    },
    /// Write an inference bundle (EMA weights, autoencoder weights, config without
    /// machine-specific paths) that `syncdiff generate` accepts.
    Export {
        /// `URL/step-NNNNNNNNN`.
        url: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// The VQ-f4 weights, when the path in the checkpoint's config is not valid here.
        #[arg(long)]
        autoencoder: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum Convert {
    /// LDM VQ-f4 `model.ckpt` (CompVis layout) -> diffusers `VQModel` names.
    VqF4(ConvertArgs),
    /// fairseq AV-HuBERT checkpoint (e.g. base_vox_iter5.pt) -> the audio encoder's names,
    /// weight norm folded, video front end and pre-training heads dropped.
    Avhubert(ConvertArgs),
}

#[derive(Debug, clap::Args)]
struct ConvertArgs {
    /// The original checkpoint.
    #[arg(long)]
    ckpt: PathBuf,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Also check the result loads into this configuration's model (autoencoder or audio encoder).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// A configuration error: printed and mapped to exit code 2.
fn load(args: &ConfigArgs) -> Result<Config, ExitCode> {
    args.load().map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// A configuration file for `convert --config`, loaded without overrides.
fn check_config(path: Option<&PathBuf>) -> Result<Option<Config>, ExitCode> {
    path.map(|p| {
        Config::load(p, &[]).map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::from(2)
        })
    })
    .transpose()
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
        Command::Convert { what } => {
            let (source, args) = match what {
                Convert::VqF4(a) => (tools::convert::Source::VqF4, a),
                Convert::Avhubert(a) => (tools::convert::Source::Avhubert, a),
            };
            match check_config(args.config.as_ref()) {
                Ok(cfg) => tools::convert::run(
                    source,
                    &args.ckpt,
                    &args.out,
                    cfg.as_ref().map(|c| &c.model),
                ),
                Err(code) => return code,
            }
        }
        Command::Forward {
            module,
            config,
            weights,
            until_layer,
            from_layer,
            input,
            output,
        } => match load(&config) {
            Ok(c) => {
                let layers = tools::forward::LayerRange {
                    until: until_layer,
                    from: from_layer,
                };
                tools::forward::run(&module, &c, weights.as_deref(), &input, &output, layers)
            }
            Err(code) => return code,
        },
        Command::Generate {
            checkpoint,
            video,
            audio,
            out,
            list,
            batch,
            steps,
            eta,
            inpaint,
            seed,
            live_weights,
            autoencoder,
            device,
            skip_existing,
            workers,
        } => tools::generate::jobs(list.as_deref(), video, audio, out).and_then(|jobs| {
            tools::generate::run(&tools::generate::Request {
                checkpoint,
                jobs,
                batch,
                steps,
                eta,
                inpaint,
                seed,
                weights: if live_weights {
                    generate::WeightChoice::Live
                } else {
                    generate::WeightChoice::Ema
                },
                autoencoder,
                device,
                skip_existing,
                workers: workers as usize,
            })
        }),
        Command::Eval {
            pred,
            gt,
            mouth,
            report,
            syncnet,
            vshift,
            lpips,
            wer_cmd,
            openings,
            truth_dir,
            device,
        } => {
            let parsed = tools::eval::MouthBox::parse(&mouth).and_then(|m| {
                let d = tools::generate::device(&device, 0).map_err(|e| e.to_string())?;
                if vshift < 1 {
                    return Err(format!("--vshift {vshift}: must be at least 1"));
                }
                Ok((m, d))
            });
            match parsed {
                Ok((m, d)) => tools::eval::run(
                    &pred,
                    &gt,
                    &tools::eval::EvalOptions {
                        mouth: m,
                        report,
                        syncnet,
                        vshift,
                        lpips,
                        wer_cmd,
                        openings,
                        truth_dir,
                        device: d,
                    },
                ),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        Command::Ckpt { what } => match what {
            Ckpt::List { url } => tools::ckpt::list(&url),
            Ckpt::Inspect { url, config, set } => {
                let cfg = match config {
                    None => None,
                    Some(path) => {
                        let args = ConfigArgs {
                            config: path,
                            set,
                            print_config: false,
                        };
                        match load(&args) {
                            Ok(c) => Some(c),
                            Err(code) => return code,
                        }
                    }
                };
                tools::ckpt::inspect(&url, cfg.as_ref())
            }
            Ckpt::Export {
                url,
                out,
                autoencoder,
            } => tools::ckpt::export(&url, &out, autoencoder.as_deref()),
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
