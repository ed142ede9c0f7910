//! The model crate's integration tests: one binary, one module per topic.
//!
//! Tests that run libtorch hold [`common::torch`] (one global generator: a seeded test must not
//! interleave with another that draws from it). Filter by module path:
//! `cargo test -p syncdiff-model --test it parity::`.
#![allow(clippy::unwrap_used)]

mod common;

mod avhubert;
mod config;
mod convert;
mod parity;
mod syncdiff;
mod weights;
