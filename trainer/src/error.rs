//! Why training stops with an error: one enum for the loop, the trainer and their set-up. Every
//! message names the file, key, URL or rank.

use std::path::PathBuf;

use syncdiff_dataset::shards::StoreError;
use syncdiff_model::config::ConfigError;

use crate::data::{LoaderError, SamplerError};
use crate::dist::DistError;
use crate::heldout::ValidateError;

/// Why training stopped with an error. Messages name the file, key or rank.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration does not fit this job.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The training data set cannot be opened.
    #[error("data.dataset {path}: {source}")]
    Dataset {
        /// Data set path.
        path: String,
        /// Cause.
        source: StoreError,
    },
    /// A data set on object storage could not be made local.
    #[error(transparent)]
    DataCache(#[from] syncdiff_dataset::remote::CacheError),
    /// The data set does not match the configuration.
    #[error("{0}")]
    DatasetSettings(String),
    /// The data set cannot feed the configured batch.
    #[error("data.dataset: {0}")]
    Sampler(#[from] SamplerError),
    /// Reading a batch failed.
    #[error(transparent)]
    Loader(#[from] LoaderError),
    /// A collective failed or ranks disagree.
    #[error(transparent)]
    Dist(#[from] DistError),
    /// Validation failed.
    #[error(transparent)]
    Validate(#[from] ValidateError),
    /// A forward pass failed.
    #[error(transparent)]
    Model(#[from] syncdiff_model::syncdiff::SyncDiffError),
    /// The trained parameters cannot be laid out in flat buffers, or left them.
    #[error("trained parameters: {0}")]
    Flat(#[from] crate::optim::FlatError),
    /// A tensor could not be read back.
    #[error("tensor: {0}")]
    Tensor(#[from] tch::TchError),
    /// The log directory cannot be written.
    #[error("log.dir {path}: {source}")]
    Log {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Something the loop does not support yet.
    #[error("{0}")]
    Unsupported(String),
    /// External weights cannot be loaded.
    #[error("{0}")]
    Weights(String),
    /// A checkpoint could not be saved or resumed.
    #[error(transparent)]
    Ckpt(#[from] syncdiff_checkpoint::CkptError),
    /// libtorch refused a precision switch (autocast, TF32).
    #[error("train.precision: {0}")]
    Amp(#[from] crate::amp::AmpError),
    /// The watchdog thread (collective and data timeouts) could not start.
    #[error("cannot start the watchdog thread that times out collectives and data fetches: {0}")]
    Watchdog(std::io::Error),
    /// `train.max_nonfinite_steps` steps in a row had a non-finite loss or gradients. Every
    /// rank reaches it at the same step (the decision is taken on the averaged gradients).
    #[error(
        "training diverged: steps {first} to {step} had a non-finite loss or gradients \
         (train.max_nonfinite_steps {limit}; none of them changed the model); {last_finite}; \
         {resume}"
    )]
    Diverged {
        /// The first skipped step of the run of them.
        first: u64,
        /// The step that reached the limit.
        step: u64,
        /// `train.max_nonfinite_steps`.
        limit: u32,
        /// "the last finite loss was X at step N", or that there was none.
        last_finite: String,
        /// Which checkpoint to resume from (rank 0 knows it), or that there is none.
        resume: String,
    },
}

impl TrainError {
    /// Whether every rank stops with this error at the same point, so that the job can end
    /// without aborting the others (they are not waiting in a collective).
    pub fn on_every_rank(&self) -> bool {
        matches!(self, Self::Diverged { .. })
    }
}
