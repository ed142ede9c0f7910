//! `syncdiff` subcommands that work on weights and tensors: `convert`, `forward`.

pub mod convert;
pub mod forward;
