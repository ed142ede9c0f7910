//! `syncdiff` subcommands: `convert`, `forward` (weights and tensors), `ckpt` (checkpoints), `eval`.

pub mod ckpt;
pub mod convert;
pub mod eval;
pub mod forward;
pub mod generate;
