//! Importing original checkpoints into the safetensors layout the model loads.

use std::path::Path;

use tch::{Kind, Tensor};

use super::pickle::Value;
use super::torchzip::{state_dict_entries, CheckpointError, TorchCheckpoint};

/// Why a conversion failed.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The checkpoint could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The checkpoint is not in the expected layout.
    #[error("{path}: {message}")]
    Layout {
        /// File.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// What a conversion produced.
#[derive(Debug)]
pub struct Converted {
    /// Tensors with their new names, float32.
    pub tensors: Vec<(String, Tensor)>,
    /// Checkpoint keys deliberately dropped (e.g. the GAN loss of the autoencoder).
    pub dropped: Vec<String>,
}

/// Maps one CompVis autoencoder key to its diffusers `VQModel` name; `levels` is the number of
/// resolution levels (the decoder's `up.i` counts from the highest resolution, diffusers'
/// `up_blocks.j` from the lowest). None for keys that are not part of the autoencoder.
fn vq_name(key: &str, levels: usize) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let (net, rest) = parts.split_first()?;
    let mapped: Vec<String> = match (*net, rest) {
        ("quantize", ["embedding", "weight"]) => return Some(key.to_string()),
        ("quant_conv" | "post_quant_conv", [_]) => return Some(key.to_string()),
        ("encoder" | "decoder", _) => {
            let (head, tail): (Vec<String>, &[&str]) = match rest {
                ["conv_in" | "conv_out", ..] => (vec![rest[0].to_string()], &rest[1..]),
                ["norm_out", ..] => (vec!["conv_norm_out".into()], &rest[1..]),
                ["mid", block, ..] => {
                    let b = match *block {
                        "block_1" => "resnets.0",
                        "block_2" => "resnets.1",
                        "attn_1" => "attentions.0",
                        _ => return None,
                    };
                    (vec![format!("mid_block.{b}")], &rest[2..])
                }
                ["down", i, "block", j, ..] => {
                    (vec![format!("down_blocks.{i}.resnets.{j}")], &rest[4..])
                }
                ["down", i, "downsample", ..] => {
                    (vec![format!("down_blocks.{i}.downsamplers.0")], &rest[3..])
                }
                ["up", i, "block", j, ..] => {
                    let u = levels.checked_sub(1 + i.parse::<usize>().ok()?)?;
                    (vec![format!("up_blocks.{u}.resnets.{j}")], &rest[4..])
                }
                ["up", i, "upsample", ..] => {
                    let u = levels.checked_sub(1 + i.parse::<usize>().ok()?)?;
                    (vec![format!("up_blocks.{u}.upsamplers.0")], &rest[3..])
                }
                _ => return None,
            };
            let tail: Vec<String> = tail
                .iter()
                .map(|t| match *t {
                    "nin_shortcut" => "conv_shortcut".to_string(),
                    "norm" => "group_norm".to_string(),
                    "q" => "to_q".to_string(),
                    "k" => "to_k".to_string(),
                    "v" => "to_v".to_string(),
                    "proj_out" => "to_out.0".to_string(),
                    other => other.to_string(),
                })
                .collect();
            std::iter::once(net.to_string())
                .chain(head)
                .chain(tail)
                .collect()
        }
        _ => return None,
    };
    Some(mapped.join("."))
}

/// The state dict of a checkpoint: `state_dict` (Lightning), `model`, or the root itself.
pub(crate) fn find_state_dict<'a>(root: &'a Value, keys: &[&str]) -> &'a Value {
    keys.iter().find_map(|k| root.get(k)).unwrap_or(root)
}

/// Converts LDM's VQ-f4 `model.ckpt` (CompVis key layout, Lightning checkpoint) to diffusers
/// `VQModel` names. Attention 1x1-conv weights become linear weights; `loss.*` is dropped.
pub fn vq_f4(path: &Path) -> Result<Converted, ConvertError> {
    let p = path.display().to_string();
    let layout = |message: String| ConvertError::Layout {
        path: p.clone(),
        message,
    };
    let mut ckpt = TorchCheckpoint::open(path)?;
    let entries = state_dict_entries(find_state_dict(&ckpt.root, &["state_dict"]));
    if entries.is_empty() {
        return Err(layout(
            "no tensors found under `state_dict` or at the top level".into(),
        ));
    }
    // An LDM checkpoint nests the autoencoder under `first_stage_model.`.
    let nested = entries
        .iter()
        .any(|(k, _)| k.starts_with("first_stage_model."));
    let levels = entries
        .iter()
        .filter_map(|(k, _)| {
            let k = if nested {
                k.strip_prefix("first_stage_model.")?
            } else {
                k.as_str()
            };
            let rest = k.strip_prefix("decoder.up.")?;
            rest.split('.').next()?.parse::<usize>().ok()
        })
        .max()
        .map(|m| m + 1)
        .ok_or_else(|| {
            layout("no `decoder.up.N` keys: not a CompVis autoencoder checkpoint".into())
        })?;
    let mut out = Converted {
        tensors: Vec::new(),
        dropped: Vec::new(),
    };
    for (key, r) in &entries {
        let k = if nested {
            match key.strip_prefix("first_stage_model.") {
                Some(k) => k,
                None => {
                    out.dropped.push(key.clone());
                    continue;
                }
            }
        } else {
            key.as_str()
        };
        if k.starts_with("loss.") {
            out.dropped.push(key.clone());
            continue;
        }
        let name = vq_name(k, levels).ok_or_else(|| {
            layout(format!(
                "unexpected key `{key}` for a CompVis VQ autoencoder"
            ))
        })?;
        let mut t = ckpt.tensor(key, r)?.to_kind(Kind::Float);
        let is_attn_matrix =
            name.contains("attentions.0.to_") && name.ends_with(".weight") && t.dim() == 4;
        if is_attn_matrix {
            let s = t.size();
            t = t.reshape([s[0], s[1]]);
        }
        out.tensors.push((name, t));
    }
    Ok(out)
}

/// Prefixes of the AV-HuBERT audio encoder's tensors (everything else is dropped: the video
/// front end, `mask_emb`, `final_proj`, `label_embs_concat`, ...).
const AVHUBERT_KEEP: &[&str] = &[
    "feature_extractor_audio.",
    "layer_norm.",
    "post_extract_proj.",
    "encoder.",
];

/// Converts a fairseq AV-HuBERT checkpoint (`state["model"]`; fine-tuned checkpoints nest it under
/// `encoder.w2v_model.`) to the audio encoder's names, folding the weight norm of the positional
/// convolution: weight = g * v / ||v|| with the norm over all dimensions but the kernel one (2).
pub fn avhubert(path: &Path) -> Result<Converted, ConvertError> {
    let p = path.display().to_string();
    let layout = |message: String| ConvertError::Layout {
        path: p.clone(),
        message,
    };
    let mut ckpt = TorchCheckpoint::open(path)?;
    let entries = state_dict_entries(find_state_dict(&ckpt.root, &["model", "state_dict"]));
    if entries.is_empty() {
        return Err(layout(
            "no tensors under `model`: not a fairseq checkpoint".into(),
        ));
    }
    let nested = entries
        .iter()
        .any(|(k, _)| k.starts_with("encoder.w2v_model."));
    let mut out = Converted {
        tensors: Vec::new(),
        dropped: Vec::new(),
    };
    let mut pos_g = None;
    let mut pos_v = None;
    for (key, r) in &entries {
        let k = match (nested, key.strip_prefix("encoder.w2v_model.")) {
            (true, Some(k)) => k,
            (true, None) => {
                out.dropped.push(key.clone());
                continue;
            }
            (false, _) => key.as_str(),
        };
        if !AVHUBERT_KEEP.iter().any(|prefix| k.starts_with(prefix)) {
            out.dropped.push(key.clone());
            continue;
        }
        let t = ckpt.tensor(key, r)?.to_kind(Kind::Float);
        match k {
            "encoder.pos_conv.0.weight_g" => pos_g = Some(t),
            "encoder.pos_conv.0.weight_v" => pos_v = Some(t),
            _ => out.tensors.push((k.to_string(), t)),
        }
    }
    match (pos_g, pos_v) {
        (Some(g), Some(v)) => {
            // ||v|| over dims (0, 1) for each kernel position: shape (1, 1, K), like g.
            let norm = v
                .square()
                .sum_dim_intlist([0i64, 1].as_slice(), true, Kind::Float)
                .sqrt();
            out.tensors
                .push(("encoder.pos_conv.0.weight".into(), &v * (g / norm)));
        }
        (None, None)
            if out
                .tensors
                .iter()
                .any(|(k, _)| k == "encoder.pos_conv.0.weight") => {}
        _ => {
            return Err(layout(
                "the positional convolution needs both `weight_g` and `weight_v`".into(),
            ))
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::vq_name;

    #[test]
    fn compvis_names_map_to_diffusers() {
        let cases = [
            (
                "encoder.down.1.block.0.nin_shortcut.weight",
                "encoder.down_blocks.1.resnets.0.conv_shortcut.weight",
            ),
            (
                "encoder.down.0.downsample.conv.bias",
                "encoder.down_blocks.0.downsamplers.0.conv.bias",
            ),
            (
                "encoder.mid.attn_1.q.weight",
                "encoder.mid_block.attentions.0.to_q.weight",
            ),
            (
                "encoder.mid.attn_1.proj_out.bias",
                "encoder.mid_block.attentions.0.to_out.0.bias",
            ),
            (
                "encoder.mid.attn_1.norm.weight",
                "encoder.mid_block.attentions.0.group_norm.weight",
            ),
            (
                "encoder.mid.block_2.conv1.weight",
                "encoder.mid_block.resnets.1.conv1.weight",
            ),
            ("encoder.norm_out.weight", "encoder.conv_norm_out.weight"),
            (
                "decoder.up.0.block.2.conv2.weight",
                "decoder.up_blocks.2.resnets.2.conv2.weight",
            ),
            (
                "decoder.up.2.upsample.conv.weight",
                "decoder.up_blocks.0.upsamplers.0.conv.weight",
            ),
            ("quantize.embedding.weight", "quantize.embedding.weight"),
            ("post_quant_conv.bias", "post_quant_conv.bias"),
        ];
        for (from, to) in cases {
            assert_eq!(vq_name(from, 3).as_deref(), Some(to), "{from}");
        }
        assert_eq!(vq_name("loss.discriminator.main.0.weight", 3), None);
        assert_eq!(vq_name("encoder.mystery.weight", 3), None);
    }
}
