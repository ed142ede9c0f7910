//! The configuration schema shared by every binary, and its loader.
//!
//! One YAML document with the sections `data`, `model`, `train`, `dist`, `checkpoint`, `log` and
//! `sample`. Loading goes: file -> YAML tree -> `--set key.path=value` overrides applied to the tree
//! -> typed structs (unknown keys rejected, each error naming the source and the full key path)
//! -> semantic validation. Precedence: `--set` > file > defaults (the paper's values).
//!
//! ```text
//! configs/x.yaml: model.unet.channel_mult: expected a list of integers
//! --set train.global_batch=abc: train.global_batch: invalid type: string "abc", expected u32
//! ```

mod checks;
#[cfg(feature = "cli")]
mod cli;
mod de;
mod face;
mod load;
mod model;
mod plan;
mod precision;
mod run;
mod secrets;

use serde::{Deserialize, Serialize};

/// Width of one mel row: 26 log filterbank energies x 4 stacked 10 ms frames (one 25 Hz video
/// frame). The audio encoders' input and the data sets' `mel` arrays.
pub const MEL_DIM: u64 = 104;

#[cfg(feature = "cli")]
pub use cli::{parse_args, ConfigArgs};
pub use face::{FaceConfig, FaceCrop, FaceDetectorKind, FaceMask, DEBIAN_LANDMARKS_MODEL};
pub use load::{ConfigError, Override};
pub use model::{
    AudioEncoderConfig, AudioEncoderKind, AutoencoderConfig, AutoencoderKind, BetaSchedule,
    DiffusionConfig, ModelConfig, PredictionTarget, PriorsConfig, ReferenceMode, TemporalConfig,
    TemporalTokens, UnetConfig,
};
pub use plan::{BatchPlan, StepPlan};
pub use precision::{LossScaleConfig, Precision, ReduceDtype};
pub use run::{
    CheckpointConfig, DataCacheConfig, DataConfig, DistBackend, DistConfig, EmaConfig, EpochUnit,
    LeaseConfig, LogConfig, LrSchedule, OptimizerKind, SampleConfig, SamplerKind, SizeHint,
    TrainConfig,
};
pub use secrets::{redact_secrets, redact_url, url_secret_problem, SECRET_VARS};

/// The whole configuration of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The prepared data set and how it is made.
    pub data: DataConfig,
    /// The networks and the diffusion process.
    pub model: ModelConfig,
    /// Optimisation and run length.
    pub train: TrainConfig,
    /// Data-parallel runtime.
    pub dist: DistConfig,
    /// Checkpoint destination and policy.
    pub checkpoint: CheckpointConfig,
    /// TensorBoard and console output.
    pub log: LogConfig,
    /// DDIM sampling.
    pub sample: SampleConfig,
}

impl Config {
    /// The resolved configuration as YAML, with the derived values as trailing comments.
    pub fn to_yaml(&self) -> String {
        let body = serde_saphyr::to_string(self)
            .unwrap_or_else(|e| format!("# cannot serialise the configuration: {e}\n"));
        let m = &self.model;
        format!(
            "{body}# derived (not settable):\n\
             #   model.unet.in_channels: {}\n\
             #   model.unet.out_channels: {}\n\
             #   model.unet.context_dim: {}\n\
             #   latent size: {}x{}x{} (data.resolution / autoencoder factor {})\n",
            m.unet_in_channels(),
            m.unet_out_channels(),
            m.context_dim(),
            m.latent_channels(),
            self.latent_side(),
            self.latent_side(),
            m.autoencoder.downsample_factor(),
        )
    }

    /// Side of the square latent the UNet works on.
    pub fn latent_side(&self) -> u32 {
        self.data.resolution / self.model.autoencoder.downsample_factor()
    }
}
