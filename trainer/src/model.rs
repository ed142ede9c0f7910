//! The trained model (audio path + denoiser) and its loss on a batch: the forward/backward unit
//! the training loop repeats.

use syncdiff_dataprep::rng::Rng;
use syncdiff_model::audio::AudioPath;
use syncdiff_model::config::ModelConfig;
use syncdiff_model::syncdiff::{Conditioning, SyncDiff, SyncDiffError};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::data::{keyed_noise, Batch};

/// Every trained network of SyncDiff in one VarStore: `audio.*`, `temporal.*`, `unet.*`,
/// `bottleneck.*` (frozen audio layers are in it too, with `requires_grad = false`).
#[derive(Debug)]
pub struct TrainModel {
    /// The variables.
    pub vs: VarStore,
    audio: AudioPath,
    denoiser: SyncDiff,
    layerdrop: f64,
    previous_noise: f64,
}

/// Separate the layerdrop and pose-noise streams from the sample's other random choices.
const LAYERDROP: u64 = 0x6c64_726f;
const POSE_NOISE: u64 = 0x706f_7365;

impl TrainModel {
    /// Builds the model of `cfg` on `device` (random initialisation from tch's global seed).
    pub fn new(cfg: &ModelConfig, device: Device) -> Self {
        let vs = VarStore::new(device);
        let root = vs.root();
        let audio = AudioPath::new(&root, cfg);
        let denoiser = SyncDiff::new(root.clone(), cfg);
        Self {
            vs,
            audio,
            denoiser,
            layerdrop: cfg.audio_encoder.layerdrop,
            previous_noise: cfg.priors.previous_noise,
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

    /// Cross-attention contexts of a batch (B, M, D).
    pub fn context(&self, batch: &Batch, train: bool) -> Tensor {
        let offsets = &batch.offsets;
        // Layerdrop decisions keyed by each sample's seed: the same on any world size.
        let p = self.layerdrop;
        self.audio
            .batch_context(&batch.mel, offsets, train, |s, layer| {
                let seed = batch.seeds.get(s).copied().unwrap_or(0);
                Rng::new(&[seed, LAYERDROP, layer as u64]).uniform() >= p
            })
    }

    /// Unit Gaussian noise like `batch.previous`, keyed by each sample's seed (the same on any
    /// world size).
    fn pose_noise(&self, batch: &Batch) -> Tensor {
        let keys: Vec<Vec<u64>> = batch.seeds.iter().map(|&s| vec![s, POSE_NOISE]).collect();
        keyed_noise(&keys, &batch.previous.size()[1..]).to_device(batch.previous.device())
    }

    /// Diffusion loss of a batch (already on the model's device): a scalar.
    pub fn loss(&self, batch: &Batch, train: bool) -> Result<Tensor, SyncDiffError> {
        let context = self.context(batch, train);
        let previous = if train && self.previous_noise > 0.0 {
            &batch.previous + self.pose_noise(batch) * self.previous_noise
        } else {
            batch.previous.shallow_clone()
        };
        let cond = Conditioning {
            masked: &batch.masked,
            identity: Some(&batch.identity),
            previous: Some(&previous),
            context: &context,
        };
        self.denoiser
            .loss(&batch.z0, &batch.timesteps, &batch.noise, &cond, train)
    }
}
