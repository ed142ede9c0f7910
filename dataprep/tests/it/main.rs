//! dataprep's integration tests: one binary, one module per topic.
//!
//! Tests that run libtorch in this process hold [`common::torch`] (one global generator).
//! Filter by module path: `cargo test -p syncdiff-dataprep --test it ingest::`.
#![allow(clippy::unwrap_used)]

mod common;

mod audio;
mod face;
mod ingest;
mod long_recording;
mod slurm;
mod store;
mod synth;
