//! SyncDiff networks and diffusion math.
//!
//! This crate knows nothing about ranks, files or URLs: distribution, data loading and
//! checkpointing wrap it from the trainer crate. It also owns the configuration schema
//! ([`config`]), because every binary (dataprep, trainer, generation) shares it.

pub mod audio;
pub mod avhubert;
pub mod config;
pub mod diffusion;
pub mod dpm_solver;
pub mod nn;
pub mod syncdiff;
pub mod temporal;
pub mod unet;
pub mod vq;
pub mod weights;
