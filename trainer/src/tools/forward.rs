//! `syncdiff forward`: run one module on named input tensors and write its outputs, so imported
//! weights can be checked against a reference implementation.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context};
use syncdiff_model::config::Config;
use syncdiff_model::unet::{Unet, UnetShape};
use syncdiff_model::vq::VqModel;
use syncdiff_model::weights;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// Modules `forward` can run, with their input and output tensor names.
pub const MODULES: &[(&str, &str, &str)] = &[
    ("vq-encode", "image (B, 3, H, W) in [-1, 1]", "latent"),
    ("vq-decode", "latent (B, C, h, w)", "image"),
    (
        "unet",
        "sample (B, in, h, w), timestep (B,) int64, context (B, M, D)",
        "output",
    ),
];

fn input<'a>(
    inputs: &'a BTreeMap<String, Tensor>,
    name: &str,
    file: &Path,
) -> anyhow::Result<&'a Tensor> {
    inputs.get(name).with_context(|| {
        let have: Vec<&String> = inputs.keys().collect();
        format!(
            "{}: no input tensor `{name}` (found {have:?})",
            file.display()
        )
    })
}

/// Runs `module` with weights `w` on the tensors of `input`, writes `output`; returns a summary.
pub fn run(
    module: &str,
    config: &Config,
    w: &Path,
    input_path: &Path,
    output: &Path,
) -> anyhow::Result<String> {
    let inputs = weights::read(input_path)?;
    let vs = VarStore::new(Device::Cpu);
    let outputs: Vec<(String, Tensor)> = match module {
        "vq-encode" | "vq-decode" => {
            let ae = &config.model.autoencoder;
            let model = VqModel::new(vs.root(), ae);
            weights::load(&vs, w)?;
            let (name, channels, multiple) = if module == "vq-encode" {
                ("image", ae.in_channels, ae.downsample_factor())
            } else {
                ("latent", ae.latent_channels, 1)
            };
            let s = input(&inputs, name, input_path)?.size();
            let m = i64::from(multiple);
            if s.len() != 4 || s[1] != i64::from(channels) || s[2] % m != 0 || s[3] % m != 0 {
                bail!("{}: `{name}` has shape {s:?}; expected (B, {channels}, H, W) with H, W multiples of {m}", input_path.display());
            }
            tch::no_grad(|| -> anyhow::Result<_> {
                Ok(if module == "vq-encode" {
                    vec![(
                        "latent".into(),
                        model.encode(input(&inputs, "image", input_path)?),
                    )]
                } else {
                    vec![(
                        "image".into(),
                        model.decode(input(&inputs, "latent", input_path)?),
                    )]
                })
            })?
        }
        "unet" => {
            let m = &config.model;
            let shape = UnetShape::new(
                &m.unet,
                m.unet_in_channels(),
                m.unet_out_channels(),
                m.context_dim(),
            );
            let unet = Unet::new(vs.root(), &shape);
            weights::load(&vs, w)?;
            let x = input(&inputs, "sample", input_path)?;
            let t = input(&inputs, "timestep", input_path)?;
            let c = input(&inputs, "context", input_path)?;
            let f = 1i64 << (shape.channels.len() - 1);
            let xs = x.size();
            if xs.len() != 4 || xs[1] != shape.in_channels || xs[2] % f != 0 || xs[3] % f != 0 {
                bail!(
                    "{}: `sample` has shape {xs:?}; the configured UNet takes (B, {}, h, w) with h, w multiples of {f}",
                    input_path.display(),
                    shape.in_channels
                );
            }
            let cs = c.size();
            if cs.len() != 3 || cs[0] != xs[0] || cs[2] != shape.context_dim || t.size() != [xs[0]]
            {
                bail!(
                    "{}: `context` {cs:?} / `timestep` {:?} do not match: expected ({}, M, {}) and ({},)",
                    input_path.display(),
                    t.size(),
                    xs[0],
                    shape.context_dim,
                    xs[0]
                );
            }
            vec![(
                "output".into(),
                tch::no_grad(|| unet.forward(x, t, c, false)),
            )]
        }
        other => {
            let names: Vec<&str> = MODULES.iter().map(|m| m.0).collect();
            bail!("unknown module `{other}`; available: {}", names.join(", "))
        }
    };
    weights::save(&outputs, output)?;
    let shapes: Vec<String> = outputs
        .iter()
        .map(|(n, t)| format!("{n} {:?}", t.size()))
        .collect();
    Ok(format!("wrote {}: {}", output.display(), shapes.join(", ")))
}
