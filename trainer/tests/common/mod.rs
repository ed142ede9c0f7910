//! Helpers shared by the trainer's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A small synthetic data set prepared with the debug configuration.
pub fn prepared_dataset(dir: &Path) -> PathBuf {
    let root = dir.join("lrs2");
    let opts = syncdiff_dataprep::synth::SynthOptions {
        out: root.clone(),
        speakers: 2,
        clips_per_speaker: 4,
        seconds: 1.0,
        seed: 4,
    };
    syncdiff_dataprep::synth::synth(&opts, |_, _| {}).unwrap();
    let cfg =
        syncdiff_model::config::Config::load(&repo().join("configs/debug.yaml"), &[]).unwrap();
    let out = dir.join("ds");
    let ingest = syncdiff_dataprep::ingest::IngestOptions {
        root,
        split: "train".into(),
        out: out.clone(),
        batch: 16,
        half: false,
        rank: 0,
        world: 1,
    };
    syncdiff_dataprep::ingest::ingest(&ingest, &cfg, |_, _, _| {}).unwrap();
    out
}
