//! Periodic validation on the val split: the diffusion loss with each sample's true audio and
//! with the audio of another clip (same frames, timesteps and noise). The gap between the two is
//! the evidence that the model uses the audio. Rank 0 also renders a small grid of sampled frames.

use std::path::Path;

use mpi::collective::{CommunicatorCollectives, SystemOperation};
use mpi::topology::SimpleCommunicator;
use syncdiff_dataset::shards::{Dataset, StoreError};
use syncdiff_model::config::{Config, EpochUnit, Precision};
use syncdiff_model::syncdiff::{Conditioning, SampleOptions, SyncDiffError};
use syncdiff_model::vq::Autoencoder;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::amp::Autocast;
use crate::data::{Batch, LoaderState, SampleSpec, Sampler, SamplerError};
use crate::log::{grid, Rgb};
use crate::model::TrainModel;

/// Separates the validation sample choices from training's.
const VALIDATION: u64 = 0x7661_6c69;

/// Why validation cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    /// The val data set cannot be read.
    #[error("data.val_dataset: {0}")]
    Store(#[from] StoreError),
    /// The val data set was prepared with other settings.
    #[error("{0}")]
    Settings(String),
    /// The val data set is too small.
    #[error("data.val_dataset: {0}")]
    Sampler(#[from] SamplerError),
    /// The val data set has one clip: there is no other clip's audio.
    #[error(
        "data.val_dataset {0}: validation needs at least 2 clips (one's audio drives another)"
    )]
    OneClip(String),
    /// A forward pass failed.
    #[error(transparent)]
    Model(#[from] SyncDiffError),
    /// A tensor could not be read back.
    #[error("validation loss: {0}")]
    Tensor(#[from] tch::TchError),
    /// The autocast region could not be opened.
    #[error("validation: {0}")]
    Amp(#[from] crate::amp::AmpError),
}

/// Mean validation losses over all ranks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValLoss {
    /// With each sample's own audio.
    pub true_audio: f64,
    /// With another clip's audio.
    pub other_audio: f64,
    /// Samples evaluated (all ranks).
    pub samples: u64,
}

/// This rank's share of the validation samples, read once.
#[derive(Debug)]
pub struct Validator {
    /// (true batch, batch of the other clips whose audio replaces the true audio).
    batches: Vec<(Batch, Batch)>,
}

/// The sample whose audio stands in for `s`'s: the clip half-way round the list of clips, at the
/// same time (clamped to that clip's frames).
fn other_clip(s: &SampleSpec, frames: &[u64], previous: u64) -> SampleSpec {
    let n = frames.len();
    let mut c = (s.clip + n / 2) % n;
    // Skip clips too short to read a sample from.
    while frames[c] <= previous + 1 || c == s.clip {
        c = (c + 1) % n;
    }
    let t = s.t.clamp(previous, frames[c] - 1);
    SampleSpec {
        clip: c,
        t,
        identity: if t == 0 { 1 } else { 0 },
        ..*s
    }
}

impl Validator {
    /// Reads this rank's validation micro-batches: the first `log.val_batches` global batches of
    /// a fixed order of the val split.
    pub fn new(config: &Config, path: &str, rank: u64, world: u64) -> Result<Self, ValidateError> {
        let ds = Dataset::open(Path::new(path))?;
        crate::data::check_dataset_settings("data.val_dataset", path, &ds.manifest().meta, config)
            .map_err(ValidateError::Settings)?;
        let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
        let m = &config.model;
        let np = u64::from(m.priors.needed_previous_frames());
        if frames.iter().filter(|&&f| f > np + 1).count() < 2 {
            return Err(ValidateError::OneClip(path.to_string()));
        }
        let plan_global = u64::from(config.train.global_batch);
        let sampler = Sampler::new(
            config.train.seed ^ VALIDATION,
            // Frames, whatever the training unit: a val split has few clips.
            EpochUnit::Frame,
            &frames,
            np,
            u64::from(m.diffusion.timesteps),
            plan_global,
        )?;
        let order = sampler.permutation(0);
        let steps = u64::from(config.log.val_batches).min(sampler.steps_per_epoch());
        let micro = config
            .batch_plan(world as u32)
            .map_or(1, |p| u64::from(p.micro_batch));
        let context = u64::from(m.audio_encoder.context_frames);
        let mut state = LoaderState::default();
        let mut batches = Vec::new();
        for _ in 0..steps {
            for specs in sampler.step(state, rank, world, micro, &order) {
                let others: Vec<SampleSpec> =
                    specs.iter().map(|s| other_clip(s, &frames, np)).collect();
                batches.push((
                    Batch::read(&ds, &specs, np as u32, context)?,
                    Batch::read(&ds, &others, np as u32, context)?,
                ));
            }
            state = sampler.advance(state);
        }
        Ok(Self { batches })
    }

    /// Validation samples on this rank.
    pub fn len(&self) -> usize {
        self.batches.iter().map(|(b, _)| b.len()).sum()
    }

    /// Whether this rank has no validation sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Mean losses over every rank's samples (a collective: every rank calls it), the forward
    /// passes under the training precision's autocast.
    pub fn run(
        &self,
        model: &TrainModel,
        device: Device,
        precision: Precision,
        comm: &SimpleCommunicator,
    ) -> Result<ValLoss, ValidateError> {
        let mut sums = [0.0f64; 3];
        tch::no_grad(|| -> Result<(), ValidateError> {
            let _autocast = Autocast::enter(precision, device)?;
            for (b, other) in &self.batches {
                let b = b.to(device);
                let swapped = b.with_audio_of(&other.to(device));
                let n = b.len() as f64;
                sums[0] += f64::try_from(model.loss(&b, false)?)? * n;
                sums[1] += f64::try_from(model.loss(&swapped, false)?)? * n;
                sums[2] += n;
            }
            Ok(())
        })?;
        let mut all = [0.0f64; 3];
        comm.all_reduce_into(&sums[..], &mut all[..], SystemOperation::sum());
        let n = all[2].max(1.0);
        Ok(ValLoss {
            true_audio: all[0] / n,
            other_audio: all[1] / n,
            samples: all[2] as u64,
        })
    }

    /// A grid of up to `count` validation samples (rank-local): rows = ground truth, masked
    /// input, generated with the true audio, generated with another clip's audio.
    pub fn images(
        &self,
        model: &TrainModel,
        decoder: &Autoencoder,
        config: &Config,
        device: Device,
        count: usize,
    ) -> Result<Option<Rgb>, ValidateError> {
        let Some((b, other)) = self.batches.first() else {
            return Ok(None);
        };
        let k = b.len().min(count) as i64;
        let b = b.to(device);
        let swapped = b.with_audio_of(&other.to(device));
        let opts = SampleOptions {
            sampler: config.sample.sampler,
            steps: config.sample.ddim_steps as usize,
            eta: 0.0,
            guidance: config.sample.guidance,
            final_x0: config.sample.final_x0,
            inpaint: None,
        };
        let generate = |batch: &Batch| -> Result<Tensor, ValidateError> {
            let context = tch::no_grad(|| model.context(batch, false));
            let cond = Conditioning {
                masked: &batch.masked,
                identity: Some(&batch.identity),
                previous: Some(&batch.previous),
                context: &context,
            };
            let z = model
                .denoiser()
                .sample(&cond, &batch.noise, &opts, |_| None)?;
            Ok(tch::no_grad(|| decoder.decode(&z.narrow(0, 0, k))))
        };
        let rows = [
            tch::no_grad(|| decoder.decode(&b.z0.narrow(0, 0, k))),
            tch::no_grad(|| decoder.decode(&b.masked.narrow(0, 0, k))),
            generate(&b)?,
            generate(&swapped)?,
        ];
        Ok(grid(&rows.iter().collect::<Vec<_>>()))
    }
}

/// The decoder for image grids: the configured autoencoder (resampling, or VQ-f4 with its
/// weights). VQ-f4 without `model.autoencoder.weights` (training needs only the stored latents)
/// gives `Ok(None)` and a warning: no image grids. Weights that are configured but cannot be
/// loaded are an error naming them.
pub fn image_decoder(
    config: &Config,
    device: Device,
) -> Result<Option<(VarStore, Autoencoder)>, String> {
    let ae = &config.model.autoencoder;
    if ae.kind == syncdiff_model::config::AutoencoderKind::VqF4 && ae.weights.is_none() {
        eprintln!(
            "warning: log.image_interval {}: no image grids, model.autoencoder.weights is not \
             set (the decoder needs it; log.image_interval: 0 silences this)",
            config.log.image_interval
        );
        return Ok(None);
    }
    syncdiff_dataset::autoencoder::load_autoencoder(config, device)
        .map(|(vs, ae, _)| Some((vs, ae)))
        .map_err(|e| format!("log.image_interval: the image grids' decoder: {e}"))
}
