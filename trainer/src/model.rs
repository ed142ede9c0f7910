//! The trained model (`syncdiff_model::networks::Networks`: audio path + denoiser) and its loss on
//! a batch: the forward/backward unit the training loop repeats.

use syncdiff_model::audio::AudioPath;
use syncdiff_model::config::{AudioEncoderKind, Config};
use syncdiff_model::networks::Networks;
use syncdiff_model::syncdiff::{Conditioning, SyncDiff, SyncDiffError};
use syncdiff_model::weights::WeightsError;
use syncdiff_runtime::rng::{keyed_noise, Rng};
use tch::{Device, Tensor};

use crate::data::Batch;

/// SyncDiff's networks and what training adds to them: layerdrop in the audio encoder, noise on
/// the previous frames (pose), audio dropout; each random choice keyed by the sample's seed.
#[derive(Debug)]
pub struct TrainModel {
    /// The networks (their variables: `nets.vs`).
    pub nets: Networks,
    layerdrop: f64,
    previous_noise: f64,
    audio_dropout: f64,
}

/// Separate the layerdrop and pose-noise streams from the sample's other random choices.
const LAYERDROP: u64 = 0x6c64_726f;
const POSE_NOISE: u64 = 0x706f_7365;
const AUDIO_DROPOUT: u64 = 0x6e75_6c6c;

impl TrainModel {
    /// Builds the model of `config.model` on `device` (random initialisation from tch's global
    /// seed), with a null audio context when `config.train.audio_dropout` > 0.
    pub fn new(config: &Config, device: Device) -> Self {
        let cfg = &config.model;
        Self {
            nets: Networks::new(config, device),
            layerdrop: cfg.audio_encoder.layerdrop,
            previous_noise: cfg.priors.previous_noise,
            audio_dropout: config.train.audio_dropout,
        }
    }

    /// [`TrainModel::new`] with the pretrained AV-HuBERT layers of
    /// `model.audio_encoder.weights` loaded (`syncdiff convert avhubert` makes them).
    pub fn with_pretrained(config: &Config, device: Device) -> Result<Self, WeightsError> {
        let model = Self::new(config, device);
        let enc = &config.model.audio_encoder;
        if let (Some(w), AudioEncoderKind::Avhubert) = (&enc.weights, enc.kind) {
            let path = std::path::Path::new(w);
            let file = syncdiff_model::weights::read(path)?;
            syncdiff_model::weights::load_into(&model.nets.vs, "audio.", path, &file)?;
        }
        Ok(model)
    }

    /// Parameters the optimizer updates (sorted by name; frozen audio layers excluded).
    pub fn trainable(&self) -> Vec<(String, Tensor)> {
        self.nets.trainable()
    }

    /// The audio path (audio encoder and temporal filter).
    pub fn audio(&self) -> &AudioPath {
        self.nets.audio()
    }

    /// The denoiser.
    pub fn denoiser(&self) -> &SyncDiff {
        self.nets.denoiser()
    }

    /// Cross-attention contexts of a batch (B, M, D).
    pub fn context(&self, batch: &Batch, train: bool) -> Tensor {
        let offsets = &batch.offsets;
        // Layerdrop decisions keyed by each sample's seed: the same on any world size.
        let p = self.layerdrop;
        self.audio()
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

    /// Which samples of a batch train unconditionally (audio dropout): (B,) bool, keyed by each
    /// sample's seed (the same on any world size).
    pub fn audio_dropped(&self, batch: &Batch) -> Vec<bool> {
        let p = self.audio_dropout;
        batch
            .seeds
            .iter()
            .map(|&s| p > 0.0 && Rng::new(&[s, AUDIO_DROPOUT]).uniform() < p)
            .collect()
    }

    /// Diffusion loss of a batch (already on the model's device): a scalar.
    pub fn loss(&self, batch: &Batch, train: bool) -> Result<Tensor, SyncDiffError> {
        let mut context = self.context(batch, train);
        let dropped = self.audio_dropped(batch);
        if train && dropped.contains(&true) {
            let drop = Tensor::from_slice(&dropped).to_device(context.device());
            context = self.denoiser().drop_context(&context, &drop)?;
        }
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
        self.denoiser()
            .loss(&batch.z0, &batch.timesteps, &batch.noise, &cond, train)
    }
}
