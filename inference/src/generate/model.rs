//! The model `generate` runs: the denoiser and audio path from an inference bundle (`syncdiff ckpt
//! export`) or straight from a checkpoint URL, plus the autoencoder that encodes the reference
//! frames and decodes the generated latents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use syncdiff_model::config::{AutoencoderKind, Config};
use syncdiff_model::vq::Autoencoder;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::GenerateError;
use syncdiff_checkpoint::{self as ckpt, Retry, Store};
use syncdiff_model::networks::Networks;

/// Which weights of a checkpoint to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightChoice {
    /// The EMA of the trained parameters when the checkpoint has one (the default).
    Ema,
    /// The live (last optimizer step) weights.
    Live,
}

/// A loaded model ready to generate.
#[derive(Debug)]
pub struct Generator {
    /// The configuration the model was trained with.
    pub config: Config,
    /// Audio path and denoiser.
    pub model: Networks,
    /// Autoencoder (its variables live in `_ae_vs`).
    pub autoencoder: Autoencoder,
    _ae_vs: VarStore,
    /// Device everything runs on.
    pub device: Device,
    /// Where the weights came from, for messages and reports.
    pub source: String,
}

fn io(path: &Path, e: impl std::fmt::Display) -> GenerateError {
    GenerateError::Input {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Generator {
    /// Loads `checkpoint`: a bundle directory (`config.yaml` + `weights.safetensors`), a checkpoint
    /// `URL/step-NNNNNNNNN`, or a checkpoint URL (its newest valid checkpoint). `autoencoder`
    /// overrides the VQ-f4 weights path of the configuration.
    pub fn load(
        checkpoint: &str,
        weights: WeightChoice,
        autoencoder: Option<&Path>,
        device: Device,
    ) -> Result<Self, GenerateError> {
        let dir = Path::new(checkpoint);
        // A bundle has config.yaml beside weights.safetensors; a checkpoint directory has a
        // manifest (and is read through the checkpoint store, verified).
        let bundle = dir.join("config.yaml").is_file() && !dir.join(ckpt::MANIFEST).is_file();
        let (mut config, tensors, source, base) = if bundle {
            let (c, t, s) = read_bundle(dir, weights)?;
            (c, t, s, Some(dir.to_path_buf()))
        } else {
            let (c, t, s) = read_checkpoint(checkpoint, weights)?;
            (c, t, s, None)
        };
        let ae = &mut config.model.autoencoder;
        if let Some(p) = autoencoder {
            ae.weights = Some(p.display().to_string());
        } else if let (Some(w), Some(base)) = (&ae.weights, &base) {
            // Bundle paths are relative to the bundle.
            ae.weights = Some(base.join(w).display().to_string());
        }
        if ae.kind == AutoencoderKind::VqF4 {
            let path = ae.weights.clone().unwrap_or_default();
            if !Path::new(&path).is_file() {
                return Err(GenerateError::Model(format!(
                    "{source}: the model's VQ-f4 weights `{path}` are not on this machine; pass --autoencoder PATH"
                )));
            }
        }
        let model = Networks::new(&config, device);
        let label = PathBuf::from(&source);
        syncdiff_model::weights::load_into(&model.vs, "", &label, &tensors)
            .map_err(|e| GenerateError::Model(e.to_string()))?;
        Self::assemble(config, model, device, source)
    }

    /// A model of `config` with random weights (for benchmarks and tests of the machinery).
    pub fn random(config: Config, device: Device) -> Result<Self, GenerateError> {
        let model = Networks::new(&config, device);
        Self::assemble(config, model, device, "random weights".into())
    }

    /// Adds the configured autoencoder to a model.
    fn assemble(
        config: Config,
        model: Networks,
        device: Device,
        source: String,
    ) -> Result<Self, GenerateError> {
        let (ae_vs, autoencoder, _) =
            syncdiff_dataset::autoencoder::load_autoencoder(&config, device)
                .map_err(|e| GenerateError::Model(e.to_string()))?;
        Ok(Self {
            config,
            model,
            autoencoder,
            _ae_vs: ae_vs,
            device,
            source,
        })
    }

    /// Side of the frames the model works on.
    pub fn resolution(&self) -> u32 {
        self.config.data.resolution
    }
}

type Loaded = (Config, BTreeMap<String, Tensor>, String);

fn read_bundle(dir: &Path, weights: WeightChoice) -> Result<Loaded, GenerateError> {
    // Sizes and sha256 first: a damaged file is named as such, not as a missing tensor.
    let info = ckpt::BundleInfo::verify(dir)?;
    for name in ["config.yaml", "weights.safetensors"] {
        if !info.lists(name) {
            return Err(io(
                &dir.join(name),
                format!("not listed in {} (export the bundle again)", ckpt::BUNDLE),
            ));
        }
    }
    let cfg_path = dir.join("config.yaml");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| io(&cfg_path, e))?;
    let config = Config::from_yaml(&text, &cfg_path.display().to_string(), &[])
        .map_err(|e| GenerateError::Model(e.to_string()))?;
    let w = dir.join("weights.safetensors");
    if !w.is_file() {
        return Err(io(
            &w,
            "missing (a bundle is made by `syncdiff ckpt export`)",
        ));
    }
    if weights == WeightChoice::Live {
        eprintln!(
            "note: {} holds the weights chosen at export (EMA when the run had one); --live-weights applies to checkpoint URLs",
            dir.display()
        );
    }
    let tensors =
        syncdiff_model::weights::read(&w).map_err(|e| GenerateError::Model(e.to_string()))?;
    Ok((config, tensors, w.display().to_string()))
}

fn read_checkpoint(url: &str, weights: WeightChoice) -> Result<Loaded, GenerateError> {
    let retry = Retry {
        attempts: 3,
        backoff: std::time::Duration::from_secs(1),
    };
    let tmp = tempfile::tempdir().map_err(|e| GenerateError::Model(e.to_string()))?;
    let (base, dir) = match ckpt::split_url(url) {
        Some((base, dir)) => (base, Some(dir)),
        None => (url, None),
    };
    if !base.contains("://") && !Path::new(base).exists() {
        return Err(GenerateError::Model(format!(
            "{url}: no such bundle directory or checkpoint location"
        )));
    }
    let store = Store::open_read(base, retry).map_err(ckpt::CkptError::from)?;
    let chosen = match dir {
        Some(dir) => ckpt::exact(&store, dir, tmp.path())?,
        None => ckpt::newest_valid(&store, tmp.path())?.ok_or_else(|| {
            GenerateError::Model(format!("{url}: no valid checkpoint under this URL"))
        })?,
    };
    let r = ckpt::read(&chosen.local, &chosen.manifest)?;
    let name = store.display(&chosen.dir);
    let config = Config::from_yaml(&r.config_yaml, &format!("{name}/config.yaml"), &[])
        .map_err(|e| GenerateError::Model(e.to_string()))?;
    let mut tensors = r.model;
    if let (WeightChoice::Ema, Some(ema)) = (weights, &r.ema) {
        for (k, t) in ema.iter().filter(|(k, _)| *k != "ema_updates") {
            if let Some(slot) = tensors.get_mut(k) {
                *slot = t.shallow_clone();
            }
        }
    }
    eprintln!(
        "loaded step {} from {name} ({} weights)",
        r.state.step,
        match (weights, r.ema.is_some()) {
            (WeightChoice::Ema, true) => "EMA",
            _ => "live",
        }
    );
    Ok((config, tensors, name))
}
