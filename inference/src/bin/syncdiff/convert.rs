//! `syncdiff convert`: original checkpoints -> safetensors with the names the model loads.

use std::path::PathBuf;

use anyhow::Context;
use syncdiff_model::avhubert::AvHubert;
use syncdiff_model::vq::VqModel;
use syncdiff_model::weights::{self, convert};
use tch::nn::VarStore;
use tch::Device;

/// `syncdiff convert`: which original checkpoint to import.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// LDM VQ-f4 `model.ckpt` (CompVis layout) -> diffusers `VQModel` names.
    VqF4(Args),
    /// fairseq AV-HuBERT checkpoint (e.g. base_vox_iter5.pt) -> the audio encoder's names,
    /// weight norm folded, video front end and pre-training heads dropped.
    Avhubert(Args),
}

/// The files of a conversion.
#[derive(Debug, clap::Args)]
pub struct Args {
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

/// Converts `--ckpt` and writes `--out`. With `--config`, loads the result into the configured
/// module first, so a mismatch is reported before anything is written.
pub fn run(command: Command) -> anyhow::Result<String> {
    let (source, args) = match command {
        Command::VqF4(a) => (Source::VqF4, a),
        Command::Avhubert(a) => (Source::Avhubert, a),
    };
    let check = match &args.config {
        Some(path) => Some(crate::load_file(path)?.model),
        None => None,
    };
    let check = check.as_ref();
    let (ckpt, out) = (args.ckpt.as_path(), args.out.as_path());
    let converted = match source {
        Source::VqF4 => convert::vq_f4(ckpt)?,
        Source::Avhubert => convert::avhubert(ckpt)?,
    };
    let n = converted.tensors.len();
    let params: i64 = converted
        .tensors
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let tmp = out.with_extension("safetensors.partial");
    weights::save(&converted.tensors, &tmp)?;
    if let Some(cfg) = check {
        let vs = VarStore::new(Device::Cpu);
        let section = match source {
            Source::VqF4 => {
                let _m = VqModel::new(vs.root(), &cfg.autoencoder);
                "model.autoencoder"
            }
            Source::Avhubert => {
                let _m = AvHubert::new(vs.root(), &cfg.audio_encoder);
                "model.audio_encoder"
            }
        };
        if let Err(e) = weights::load(&vs, &tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(anyhow::Error::new(e).context(format!(
                "the converted weights do not fit {section} of the configuration"
            )));
        }
    }
    std::fs::rename(&tmp, out).with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(format!(
        "wrote {}: {n} tensors, {:.1} M parameters; dropped {} keys ({})",
        out.display(),
        params as f64 / 1e6,
        converted.dropped.len(),
        summarize(&converted.dropped),
    ))
}

/// `loss.* (12)`-style summary of dropped keys by first component.
fn summarize(keys: &[String]) -> String {
    let mut groups: Vec<(String, usize)> = Vec::new();
    for k in keys {
        let head = k.split('.').next().unwrap_or("").to_string();
        match groups.iter_mut().find(|(h, _)| *h == head) {
            Some((_, n)) => *n += 1,
            None => groups.push((head, 1)),
        }
    }
    if groups.is_empty() {
        return "none".into();
    }
    groups
        .iter()
        .map(|(h, n)| format!("{h}.* ({n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    VqF4,
    Avhubert,
}
