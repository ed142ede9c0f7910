//! SyncDiff training system: distributed runtime, data loading, optimisation, checkpoints,
//! generation and evaluation. The networks live in `syncdiff-model`; the data format in
//! `syncdiff-dataprep`.

pub mod amp;
pub mod cadence;
pub mod ckpt;
pub mod data;
pub mod dist;
pub mod dryrun;
pub mod error;
pub mod eval;
pub mod generate;
pub mod host;
pub mod log;
pub mod model;
pub mod opcount;
pub mod optim;
pub mod preflight;
mod shim;
pub mod train;
pub mod trainer;
pub mod validate;
