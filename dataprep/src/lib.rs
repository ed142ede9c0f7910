//! LRS2 -> Zarr shard stores of autoencoder latents and filterbank features.
//!
//! This crate owns the data format: it writes the stores and provides the reader the trainer uses.
//! Modules: `audio` (filterbank features), `face` (the face front-end: detection, tracking,
//! crop and mask), `video` (ffmpeg I/O), `synth` (the synthetic
//! LRS2-layout data set). What every host shares (object storage, launcher variables, the
//! progress bar, randomness, hashing) is in `syncdiff-runtime`.

pub mod audio;
pub mod face;
pub mod ingest;
pub mod layout;
pub mod lrs2;
pub mod outpath;
pub mod publish;
mod segments;
pub mod store;
pub mod synth;
pub mod video;
