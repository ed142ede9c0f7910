//! `syncdiff forward`: run one module on named input tensors and write its outputs, so imported
//! weights can be checked against a reference implementation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use syncdiff_dataset::audio::{normalize_rows, stack_frames, FbankParams, LogFbank};
use syncdiff_model::avhubert::AvHubert;
use syncdiff_model::config::{Config, ConfigArgs};
use syncdiff_model::temporal::TemporalFilter;
use syncdiff_model::unet::{Unet, UnetShape};
use syncdiff_model::vq::VqModel;
use syncdiff_model::weights;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// The modules `forward` runs: input tensors -> output tensors (names as in the files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Module {
    /// image (B, 3, H, W) in [-1, 1] -> latent.
    VqEncode,
    /// latent (B, C, h, w) -> image.
    VqDecode,
    /// sample (B, in, h, w), timestep (B,) int64, context (B, M, D) -> output.
    Unet,
    /// audio (N,) int16-scale samples at 16 kHz (no weights) -> fbank (T, 26), features
    /// (ceil(T/4), 104).
    Logfbank,
    /// features (B, T, 104), or hidden (B, T, D) with --from-layer -> output, or hidden with
    /// --until-layer.
    Avhubert,
    /// features (B, T, D), centres (B,) int64 -> context (B, 1 or W, D).
    Temporal,
}

impl std::fmt::Display for Module {
    /// The name on the command line (`vq-encode`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        match self.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => write!(f, "{self:?}"),
        }
    }
}

/// `syncdiff forward`: one module on named tensors (to check imported weights).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The module (inputs and outputs: docs/models.md).
    #[arg(long, value_enum)]
    module: Module,
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
}

/// The input tensors of `--input`, by name.
struct Inputs<'a> {
    tensors: BTreeMap<String, Tensor>,
    file: &'a Path,
}

impl Inputs<'_> {
    /// The tensor `name`, or an error naming the file and the tensors it has.
    fn get(&self, name: &str) -> anyhow::Result<&Tensor> {
        self.tensors.get(name).with_context(|| {
            let have: Vec<&String> = self.tensors.keys().collect();
            format!(
                "{}: no input tensor `{name}` (found {have:?})",
                self.file.display()
            )
        })
    }
}

/// Named outputs.
type Outputs = Vec<(String, Tensor)>;

/// Runs the module on the tensors of `--input`, writes `--output`; returns a summary.
pub fn run(args: Args) -> anyhow::Result<String> {
    let config = crate::load(&args.config)?;
    let module = args.module;
    let inputs = Inputs {
        tensors: weights::read(&args.input)?,
        file: &args.input,
    };
    let w = match (args.weights.as_deref(), module) {
        (Some(w), _) => w,
        (None, Module::Logfbank) => Path::new(""),
        (None, _) => bail!("module `{module}` needs --weights"),
    };
    let layers = (args.until_layer, args.from_layer);
    if module != Module::Avhubert && layers != (None, None) {
        bail!("--until-layer / --from-layer apply to the avhubert module only");
    }
    let outputs = match module {
        Module::VqEncode | Module::VqDecode => vq(&config, module, w, &inputs)?,
        Module::Unet => unet(&config, w, &inputs)?,
        Module::Logfbank => logfbank(&inputs)?,
        Module::Avhubert => avhubert(&config, w, layers, &inputs)?,
        Module::Temporal => temporal(&config, w, &inputs)?,
    };
    weights::save(&outputs, &args.output)?;
    let shapes: Vec<String> = outputs
        .iter()
        .map(|(n, t)| format!("{n} {:?}", t.size()))
        .collect();
    Ok(format!(
        "wrote {}: {}",
        args.output.display(),
        shapes.join(", ")
    ))
}

/// vq-encode / vq-decode.
fn vq(config: &Config, module: Module, w: &Path, inputs: &Inputs) -> anyhow::Result<Outputs> {
    let vs = VarStore::new(Device::Cpu);
    let ae = &config.model.autoencoder;
    let model = VqModel::new(vs.root(), ae);
    weights::load(&vs, w)?;
    let encode = module == Module::VqEncode;
    let (name, channels, multiple) = if encode {
        ("image", ae.in_channels, ae.downsample_factor())
    } else {
        ("latent", ae.latent_channels, 1)
    };
    let x = inputs.get(name)?;
    let s = x.size();
    let m = i64::from(multiple);
    if s.len() != 4 || s[1] != i64::from(channels) || s[2] % m != 0 || s[3] % m != 0 {
        bail!(
            "{}: `{name}` has shape {s:?}; expected (B, {channels}, H, W) with H, W multiples of {m}",
            inputs.file.display()
        );
    }
    Ok(tch::no_grad(|| {
        if encode {
            vec![("latent".into(), model.encode(x))]
        } else {
            vec![("image".into(), model.decode(x))]
        }
    }))
}

/// unet: sample, timestep, context -> output.
fn unet(config: &Config, w: &Path, inputs: &Inputs) -> anyhow::Result<Outputs> {
    let vs = VarStore::new(Device::Cpu);
    let shape = UnetShape::of(&config.model);
    let unet = Unet::new(vs.root(), &shape);
    weights::load(&vs, w)?;
    let (x, t, c) = (
        inputs.get("sample")?,
        inputs.get("timestep")?,
        inputs.get("context")?,
    );
    let f = 1i64 << (shape.channels.len() - 1);
    let xs = x.size();
    if xs.len() != 4 || xs[1] != shape.in_channels || xs[2] % f != 0 || xs[3] % f != 0 {
        bail!(
            "{}: `sample` has shape {xs:?}; the configured UNet takes (B, {}, h, w) with h, w multiples of {f}",
            inputs.file.display(),
            shape.in_channels
        );
    }
    let cs = c.size();
    if cs.len() != 3 || cs[0] != xs[0] || cs[2] != shape.context_dim || t.size() != [xs[0]] {
        bail!(
            "{}: `context` {cs:?} / `timestep` {:?} do not match: expected ({}, M, {}) and ({},)",
            inputs.file.display(),
            t.size(),
            xs[0],
            shape.context_dim,
            xs[0]
        );
    }
    Ok(vec![(
        "output".into(),
        tch::no_grad(|| unet.forward(x, t, c, false)),
    )])
}

/// logfbank: audio -> fbank, features.
fn logfbank(inputs: &Inputs) -> anyhow::Result<Outputs> {
    let audio = inputs.get("audio")?;
    if audio.dim() != 1 {
        bail!(
            "{}: `audio` has shape {:?}; expected (N,) samples",
            inputs.file.display(),
            audio.size()
        );
    }
    let samples: Vec<f64> = Vec::try_from(audio.to_kind(tch::Kind::Double))?;
    let fb = LogFbank::new(FbankParams::default());
    let p = *fb.params();
    let fbank = fb.compute(&samples);
    let mut stacked = stack_frames(&fbank, p.nfilt, p.stack);
    normalize_rows(&mut stacked, p.nfilt * p.stack);
    let rows = |v: &[f64], d: usize| {
        Tensor::from_slice(v)
            .to_kind(tch::Kind::Float)
            .reshape([(v.len() / d) as i64, d as i64])
    };
    Ok(vec![
        ("fbank".into(), rows(&fbank, p.nfilt)),
        ("features".into(), rows(&stacked, p.nfilt * p.stack)),
    ])
}

/// avhubert: features (or hidden from a layer) -> output (or hidden up to a layer).
fn avhubert(
    config: &Config,
    w: &Path,
    (until, from): (Option<usize>, Option<usize>),
    inputs: &Inputs,
) -> anyhow::Result<Outputs> {
    let vs = VarStore::new(Device::Cpu);
    let enc = AvHubert::new(vs.root(), &config.model.audio_encoder);
    weights::load(&vs, w)?;
    let n = enc.num_layers();
    if let Some(l) = [until, from].into_iter().flatten().find(|&l| l > n) {
        bail!("layer {l} is beyond the encoder's {n} layers");
    }
    let (name, width) = if from.is_some() {
        ("hidden", enc.embed_dim())
    } else {
        ("features", syncdiff_model::config::MEL_DIM as i64)
    };
    let x = inputs.get(name)?;
    if x.dim() != 3 || x.size()[2] != width {
        bail!(
            "{}: `{name}` has shape {:?}; expected (B, T, {width})",
            inputs.file.display(),
            x.size()
        );
    }
    Ok(tch::no_grad(|| match (until, from) {
        (Some(u), None) => vec![("hidden".to_string(), enc.until_layer(x, u))],
        (None, Some(f)) => vec![("output".to_string(), enc.from_layer(x, f, false, |_| true))],
        (None, None) => vec![(
            "output".to_string(),
            enc.from_layer(&enc.until_layer(x, 0), 0, false, |_| true),
        )],
        (Some(_), Some(_)) => Vec::new(),
    }))
}

/// temporal: features, centres -> context.
fn temporal(config: &Config, w: &Path, inputs: &Inputs) -> anyhow::Result<Outputs> {
    let vs = VarStore::new(Device::Cpu);
    let d = i64::from(config.model.context_dim());
    let filter = TemporalFilter::new(vs.root(), &config.model.temporal, d);
    weights::load(&vs, w)?;
    let (x, c) = (inputs.get("features")?, inputs.get("centres")?);
    if x.dim() != 3 || x.size()[2] != d || c.size() != [x.size()[0]] {
        bail!(
            "{}: `features` {:?} / `centres` {:?}: expected (B, T, {d}) and (B,)",
            inputs.file.display(),
            x.size(),
            c.size()
        );
    }
    let context = tch::no_grad(|| filter.forward(&filter.gather_window(x, c)));
    Ok(vec![("context".into(), context)])
}
