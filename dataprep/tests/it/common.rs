//! Helpers shared by dataprep's integration tests.
#![allow(dead_code)]

pub use syncdiff_devkit::{python, repo, torch};
