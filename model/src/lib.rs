//! SyncDiff networks and diffusion math.
//!
//! This crate knows nothing about ranks, data sets or URLs: distribution, data loading and
//! checkpointing wrap it (the trainer, checkpoint and dataset crates). The files it reads are
//! the ones that define a network: weights (`weights`: safetensors and `.pt` conversion) and the
//! configuration ([`config`], YAML), which it owns because every binary (dataprep, training,
//! generation) shares it. `networks` is SyncDiff's trained networks in one store; `autocast`
//! the precision regions training and generation run them in.

pub mod audio;
pub mod autocast;
pub mod avhubert;
pub mod config;
pub mod diffusion;
pub mod dpm_solver;
pub mod expert;
pub mod networks;
pub mod nn;
pub mod offsets;
pub mod syncdiff;
pub mod temporal;
pub mod unet;
pub mod vq;
pub mod weights;
