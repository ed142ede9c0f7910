//! The trainer's integration tests: one binary (as ripgrep keeps its own), one module per topic.
//!
//! Tests that run libtorch in this process hold [`common::torch`] (one global generator); tests
//! that start `syncdiff-train`, `syncdiff` or `mpirun` run beside them. The synthetic clips and
//! the debug data set are built once per process ([`common::synthetic`], [`common::dataset`]).
//! Filter by module path: `cargo test -p syncdiff-trainer --test it resume::`.
#![allow(clippy::unwrap_used)]

mod ckpt_common;
mod common;

mod ckpt_s3;
mod ckpt_store;
mod cli;
mod cuda;
mod data_s3;
mod ddp;
mod ema_schedule;
mod eval_scripts;
mod faults;
mod generate;
mod generate_faces;
mod learns_audio;
mod lease;
mod metrics;
mod optim;
mod overlap;
mod precision;
mod resume;
mod sampler;
mod slurm;
mod step;
mod tensorboard;
mod tools;
mod two_nodes;
