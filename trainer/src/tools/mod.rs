//! `syncdiff` subcommands: `convert`, `forward` (weights and tensors), `ckpt` (checkpoints).

pub mod ckpt;
pub mod convert;
pub mod forward;
