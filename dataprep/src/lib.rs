//! LRS2 -> Zarr shard stores of autoencoder latents and filterbank features.
//!
//! This crate owns the data format: it writes the stores and provides the reader the trainer uses.
//! Modules: `audio` (filterbank features), `face` (the face front-end: detection, tracking,
//! crop and mask), `video` (ffmpeg I/O), `synth` (the synthetic
//! LRS2-layout data set), `rng` (counter-based randomness).

pub mod audio;
pub mod face;
pub mod hash;
pub mod ingest;
pub mod launch;
pub mod layout;
pub mod lrs2;
pub mod objstore;
pub mod outpath;
pub mod progress;
pub mod publish;
pub mod rng;
mod segments;
pub mod store;
pub mod synth;
pub mod video;
