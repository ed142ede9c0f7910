//! Every trained network of SyncDiff in one VarStore, as checkpoints and bundles name them:
//! `audio.*` (the audio path: AV-HuBERT layers and the temporal filter), `temporal.*`, `unet.*`,
//! `bottleneck.*`, and `null_context` when trained with audio dropout. Training adds its loss
//! to it (`syncdiff_trainer::model::TrainModel`); generation loads weights into it and samples.

use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::audio::AudioPath;
use crate::config::Config;
use crate::syncdiff::SyncDiff;

/// The audio path and the denoiser, their variables in one store (frozen audio layers are in it
/// too, with `requires_grad = false`).
#[derive(Debug)]
pub struct Networks {
    /// The variables.
    pub vs: VarStore,
    audio: AudioPath,
    denoiser: SyncDiff,
}

impl Networks {
    /// Builds the networks of `config.model` on `device` (random initialisation from tch's global
    /// seed), with a null audio context when `config.train.audio_dropout` > 0.
    pub fn new(config: &Config, device: Device) -> Self {
        let vs = VarStore::new(device);
        let root = vs.root();
        let audio = AudioPath::new(&root, &config.model);
        let null_context = config.train.audio_dropout > 0.0;
        let denoiser = SyncDiff::build(root.clone(), &config.model, null_context);
        Self {
            vs,
            audio,
            denoiser,
        }
    }

    /// Parameters the optimizer updates (sorted by name; frozen audio layers excluded).
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The audio path (audio encoder and temporal filter).
    pub fn audio(&self) -> &AudioPath {
        &self.audio
    }

    /// The denoiser.
    pub fn denoiser(&self) -> &SyncDiff {
        &self.denoiser
    }
}
