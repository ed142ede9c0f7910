//! The run sections: `data`, `train`, `dist`, `checkpoint`, `log`, `sample`.

use serde::{Deserialize, Serialize};

use super::{FaceConfig, LossScaleConfig, Precision};

/// `data`: the prepared data set and how it is made from LRS2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Prepared data set (directory of `shard-NNNNN.zarr` stores plus `manifest.json`): a path,
    /// or an `s3://`, `gs://` or `az://` URL read through the node-local cache (`data.cache`).
    pub dataset: String,
    /// Validation data set (same format and places); none disables validation.
    pub val_dataset: Option<String>,
    /// The node-local cache of data sets on object storage.
    pub cache: DataCacheConfig,
    /// Frame side in pixels after resizing (the latent side is this / the autoencoder factor).
    pub resolution: u32,
    /// Video frame rate the features are aligned to.
    pub fps: u32,
    /// Audio sample rate of the filterbank input.
    pub sample_rate: u32,
    /// Fraction of the face box height, from the bottom, zeroed in the masked frame.
    pub mask_fraction: f64,
    /// Clips per shard store written by dataprep.
    pub clips_per_shard: u32,
    /// Cache the frozen audio-encoder layers' output in the data set.
    pub cache_audio_features: bool,
    /// Steps read ahead of the training step, per rank (each step's micro-batches; 0: read
    /// when asked).
    pub prefetch: u32,
    /// Data set size used by `--dry-run` before the data set exists (its manifest wins when present).
    pub size_hint: Option<SizeHint>,
    /// The face front-end: detection, crop and mask.
    pub face: FaceConfig,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: "data/lrs2".into(),
            val_dataset: None,
            cache: DataCacheConfig::default(),
            resolution: 256,
            fps: 25,
            sample_rate: 16000,
            mask_fraction: 0.5,
            clips_per_shard: 256,
            cache_audio_features: false,
            prefetch: 4,
            size_hint: None,
            face: FaceConfig::default(),
        }
    }
}

/// `data.cache`: where a node keeps the data sets it read from object storage. Shared by every
/// rank and run on the node; whole shards are fetched once, checked, and kept until space is
/// needed for another data set (least recently used first, never one a process is using).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataCacheConfig {
    /// Cache directory on node-local storage; none: `$TMPDIR/syncdiff-data-cache` (or `/tmp/...`).
    pub dir: Option<String>,
    /// Largest size of everything in the cache, in GB (10^9 bytes).
    pub max_gb: f64,
}

impl Default for DataCacheConfig {
    fn default() -> Self {
        Self {
            dir: None,
            max_gb: 200.0,
        }
    }
}

/// `data.size_hint`: clip and frame counts of the training split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeHint {
    /// Clips in the training split.
    pub clips: u64,
    /// Frames in the training split.
    pub frames: u64,
}

/// What one epoch iterates over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpochUnit {
    /// One random target frame per clip per epoch.
    Clip,
    /// Every usable frame once per epoch.
    Frame,
}

/// Optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// AdamW (decoupled weight decay).
    Adamw,
    /// Plain SGD (tests).
    Sgd,
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// Constant at `train.lr`.
    Constant,
    /// Cosine decay to `train.min_lr` at the last step.
    Cosine,
    /// Linear decay to `train.min_lr` at the last step.
    Linear,
}

/// `train`: optimisation and run length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Seed of every random choice (initialisation, sample order, diffusion steps, noise).
    pub seed: u64,
    /// Samples per optimizer step over all ranks: the invariant across world sizes.
    pub global_batch: u32,
    /// Largest batch one rank runs in one forward/backward; the per-rank batch is split into
    /// accumulation steps of the largest divisor not above it. None: no accumulation.
    pub max_micro_batch: Option<u32>,
    /// `adamw` or `sgd`.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate of the `cosine` and `linear` schedules.
    pub min_lr: f64,
    /// `constant`, `cosine` or `linear`.
    pub lr_schedule: LrSchedule,
    /// Linear warm-up steps from 0 to `lr`.
    pub warmup_steps: u64,
    /// AdamW betas.
    pub betas: [f64; 2],
    /// AdamW epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// Training length in epochs (ignored when `train.steps` is set).
    pub epochs: u32,
    /// Training length in optimizer steps; overrides `train.epochs` when set.
    pub steps: Option<u64>,
    /// `clip` or `frame`.
    pub epoch_unit: EpochUnit,
    /// Clip the global gradient norm to this value (none: no clipping).
    pub grad_clip: Option<f64>,
    /// Exponential moving average of the weights.
    pub ema: EmaConfig,
    /// Probability of replacing a sample's audio context with the learned null context
    /// (`null_context`, keyed by the sample's seed), which audio classifier-free guidance
    /// (`sample.guidance`) needs. 0 (the paper): no null context in the model.
    pub audio_dropout: f64,
    /// `fp32` (default), `bf16` or `fp16`: the autocast precision of the forward pass and loss
    /// (validation follows it).
    pub precision: Precision,
    /// TF32 for matmuls and convolutions on GPUs (a no-op on CPU).
    pub tf32: bool,
    /// The dynamic loss scale of `fp16` (GradScaler's rules and defaults).
    pub loss_scale: LossScaleConfig,
    /// `fp32` / `bf16`: an update whose loss or averaged gradients (or their norm) are not finite
    /// is skipped on every rank; this many such steps in a row stop the run with an error (a
    /// diverged run). `fp16` skips through its loss scaler instead and never stops for it.
    pub max_nonfinite_steps: u32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            global_batch: 48,
            max_micro_batch: None,
            optimizer: OptimizerKind::Adamw,
            // DiffTalk's rule: 1e-6 x GPUs x per-GPU batch = 1e-6 x 48.
            lr: 4.8e-5,
            min_lr: 0.0,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.01,
            epochs: 200,
            steps: None,
            epoch_unit: EpochUnit::Clip,
            grad_clip: Some(0.1),
            ema: EmaConfig::default(),
            audio_dropout: 0.0,
            precision: Precision::Fp32,
            tf32: false,
            loss_scale: LossScaleConfig::default(),
            max_nonfinite_steps: 3,
        }
    }
}

/// `train.ema`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmaConfig {
    /// Keep an EMA copy of the trainable weights.
    pub enabled: bool,
    /// Decay.
    pub decay: f64,
    /// Use min(decay, (1 + n) / (10 + n)) at update n (LDM's warm-up).
    pub warmup: bool,
}

impl Default for EmaConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            decay: 0.9999,
            warmup: true,
        }
    }
}

/// Gradient all-reduce backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DistBackend {
    /// NCCL when the rank has a GPU, else MPI.
    Auto,
    /// NCCL (GPU tensors).
    Nccl,
    /// MPI (CPU tensors).
    Mpi,
}

/// `dist`: data-parallel runtime.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistConfig {
    /// `auto`, `nccl` or `mpi`.
    pub backend: DistBackend,
    /// Gradient bucket size in MiB.
    pub bucket_mb: f64,
    /// All-reduce each bucket during the backward pass as soon as its gradients are final
    /// (false: after the whole backward pass).
    pub overlap: bool,
    /// Element type of the gradient all-reduce: `fp32` or `bf16`.
    pub reduce_dtype: super::ReduceDtype,
    /// A collective that takes longer aborts the job (seconds).
    pub collective_timeout_s: u64,
    /// A data fetch that takes longer aborts the job (seconds).
    pub data_timeout_s: u64,
    /// Compare a parameter checksum across ranks every this many steps (0: only at start).
    pub checksum_interval: u64,
    /// Intra-op threads per rank on CPU (0: cores / ranks on the node).
    pub cpu_threads: u32,
}

impl Default for DistConfig {
    fn default() -> Self {
        Self {
            backend: DistBackend::Auto,
            bucket_mb: 25.0,
            overlap: true,
            reduce_dtype: super::ReduceDtype::Fp32,
            collective_timeout_s: 600,
            data_timeout_s: 300,
            checksum_interval: 1000,
            cpu_threads: 0,
        }
    }
}

/// `checkpoint`: where and how often to save.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Destination: a path, `file://`, `s3://`, `gs://` or `az://` URL.
    pub url: String,
    /// Save every this many optimizer steps (0: only at the end and on preemption).
    pub interval: u64,
    /// Keep the newest this many checkpoints.
    pub keep_last: u32,
    /// Also keep every checkpoint whose step is a multiple of this (none: keep no extra).
    pub keep_every: Option<u64>,
    /// Attempts per storage operation (upload, download, list, delete) before it fails.
    pub retries: u32,
    /// Wait before the second attempt, doubled for each further one.
    pub retry_backoff_s: f64,
    /// The writer lease on `url`: one training job at a time saves there.
    pub lease: LeaseConfig,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        Self {
            url: "checkpoints".into(),
            interval: 5000,
            keep_last: 3,
            keep_every: None,
            retries: 4,
            retry_backoff_s: 2.0,
            lease: LeaseConfig::default(),
        }
    }
}

/// `checkpoint.lease`: a training job holds `lease.json` beside its checkpoints for its life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LeaseConfig {
    /// A lease not renewed for this long is expired and may be taken over (longer than
    /// `dist.collective_timeout_s`).
    pub expire_s: u64,
    /// Rank 0 renews the lease this often.
    pub renew_s: u64,
    /// At start, wait up to this long for a live lease of another job to expire before
    /// refusing (0: refuse at once). A requeue after a kill sets it above `expire_s`.
    pub wait_s: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            expire_s: 900,
            renew_s: 60,
            wait_s: 0,
        }
    }
}

/// `log`: TensorBoard and console output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// TensorBoard event directory (rank 0 writes).
    pub dir: String,
    /// Scalars every this many steps.
    pub interval: u64,
    /// Validation loss every this many steps (0: never).
    pub val_interval: u64,
    /// Batches per validation.
    pub val_batches: u32,
    /// A grid of sampled frames every this many steps (0: never).
    pub image_interval: u64,
    /// Progress bar on rank 0 (off in CI logs).
    pub progress: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            dir: "runs".into(),
            interval: 50,
            val_interval: 5000,
            val_batches: 8,
            image_interval: 10000,
            progress: true,
        }
    }
}

/// `sample.sampler`: how sampling steps from noise to a latent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SamplerKind {
    /// DDIM (the paper), uniform spacing, `sample.eta` for stochastic steps.
    #[default]
    #[serde(rename = "ddim")]
    Ddim,
    /// DPM-Solver++(2M) (diffusers' DPMSolverMultistepScheduler, dpmsolver++, order 2):
    /// deterministic, good results in far fewer steps.
    #[serde(rename = "dpmpp-2m")]
    DpmPp2m,
    /// DPM-Solver++(2M) on Karras et al.'s sigmas (diffusers' `use_karras_sigmas=True`): its last
    /// model call is at t = 0 (docs/generate.md compares both spacings on the demo).
    #[serde(rename = "dpmpp-2m-karras")]
    DpmPp2mKarras,
}

impl SamplerKind {
    /// The name in configurations and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ddim => "ddim",
            Self::DpmPp2m => "dpmpp-2m",
            Self::DpmPp2mKarras => "dpmpp-2m-karras",
        }
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ddim" => Ok(Self::Ddim),
            "dpmpp-2m" => Ok(Self::DpmPp2m),
            "dpmpp-2m-karras" => Ok(Self::DpmPp2mKarras),
            _ => Err(format!("{s:?}: expected ddim, dpmpp-2m or dpmpp-2m-karras")),
        }
    }
}

/// `sample`: sampling for generation and logged images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    /// `ddim` (the paper), `dpmpp-2m` or `dpmpp-2m-karras`.
    pub sampler: SamplerKind,
    /// Sampling steps of the sampler (uniform spacing for DDIM, diffusers' linspace for
    /// dpmpp-2m, Karras sigmas for dpmpp-2m-karras); the name is kept from when DDIM was the
    /// only sampler.
    pub ddim_steps: u32,
    /// DDIM eta (0: deterministic).
    pub eta: f64,
    /// Blend the re-noised reference outside the mask at every step (DiffTalk); off in the paper.
    pub inpaint: bool,
    /// Audio classifier-free guidance scale (1: off; > 1 needs `train.audio_dropout` > 0).
    pub guidance: f64,
    /// DDIM: end with the last step's x0 prediction instead of x_prev, which keeps the noise
    /// level of the first timestep (and feeds it to the next frame's pose prior).
    pub final_x0: bool,
    /// Autocast precision of the denoiser and the autoencoder during generation (`fp32`,
    /// `bf16`, `fp16`); the sampler's arithmetic stays float32.
    pub precision: super::Precision,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            sampler: SamplerKind::Ddim,
            ddim_steps: 200,
            eta: 0.0,
            inpaint: false,
            guidance: 1.0,
            final_x0: false,
            precision: super::Precision::Fp32,
        }
    }
}
