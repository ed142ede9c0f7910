//! `syncdiff convert`: original checkpoints -> safetensors with the names the model loads.

use std::path::Path;

use anyhow::Context;
use syncdiff_model::config::AutoencoderConfig;
use syncdiff_model::vq::VqModel;
use syncdiff_model::weights::{self, convert};
use tch::nn::VarStore;
use tch::Device;

/// Converts LDM's VQ-f4 `model.ckpt` and writes `out`. With `check`, loads the result into the
/// configured autoencoder first, so a mismatch is reported before anything is written.
pub fn vq_f4(ckpt: &Path, out: &Path, check: Option<&AutoencoderConfig>) -> anyhow::Result<String> {
    let converted = convert::vq_f4(ckpt)?;
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
        let _model = VqModel::new(vs.root(), cfg);
        weights::load(&vs, &tmp)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
            .context("the converted weights do not fit model.autoencoder of the configuration")?;
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
