//! SyncDiff training: the distributed runtime (MPI, NCCL), data loading, the optimizer step,
//! validation, checkpoint policy and resume, logging. The networks live in `syncdiff-model`, the
//! data format in `syncdiff-dataset`, the checkpoint format in `syncdiff-checkpoint`; generation
//! and evaluation in `syncdiff-inference`. No face front-end and no ffmpeg code: a training
//! node needs neither dlib nor OpenBLAS.

pub mod amp;
pub mod cadence;
pub mod data;
pub mod dist;
pub mod dryrun;
pub mod error;
pub mod heldout;
pub mod host;
pub mod log;
pub mod model;
pub mod opcount;
pub mod optim;
mod parallelize;
pub mod preflight;
mod shim;
pub mod train;
pub mod trainer;
