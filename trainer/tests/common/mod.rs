//! Helpers shared by the trainer's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A small synthetic data set prepared with the debug configuration (train split).
pub fn prepared_dataset(dir: &Path) -> PathBuf {
    prepared(dir, "train", &[])
}

/// The synthetic clips (2 speakers x 4 clips of 1 s: 2 train and 1 val clip each), made once
/// per directory.
fn synthetic(dir: &Path) -> PathBuf {
    let root = dir.join("lrs2");
    if !root.exists() {
        let opts = syncdiff_dataprep::synth::SynthOptions {
            out: root.clone(),
            speakers: 2,
            clips_per_speaker: 4,
            seconds: 1.0,
            seed: 4,
        };
        syncdiff_dataprep::synth::synth(&opts, |_, _| {}).unwrap();
    }
    root
}

/// Split `split` of the synthetic clips prepared with the debug configuration plus `sets`
/// (`key=value` overrides, e.g. `data.clips_per_shard=1`), in `dir/ds-<split>`.
pub fn prepared(dir: &Path, split: &str, sets: &[&str]) -> PathBuf {
    let root = synthetic(dir);
    let sets: Vec<syncdiff_model::config::Override> = sets
        .iter()
        .map(|s| syncdiff_model::config::Override::parse(s).unwrap())
        .collect();
    let cfg =
        syncdiff_model::config::Config::load(&repo().join("configs/debug.yaml"), &sets).unwrap();
    let out = dir.join(format!("ds-{split}"));
    let ingest = syncdiff_dataprep::ingest::IngestOptions {
        root,
        split: split.into(),
        out: out.clone(),
        batch: 16,
        half: false,
        rank: 0,
        world: 1,
    };
    syncdiff_dataprep::ingest::ingest(&ingest, &cfg, |_, _, _| {}).unwrap();
    out
}

/// `mpirun -n N syncdiff-train ...`, allowed to run as root and to oversubscribe the 2 cores.
pub fn mpirun(n: u32) -> Command {
    let mut c = Command::new("mpirun");
    c.current_dir(repo())
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .args(["--oversubscribe", "-n", &n.to_string()])
        .arg(env!("CARGO_BIN_EXE_syncdiff-train"));
    c
}

/// stdout and stderr of a finished command.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The python of the project's virtualenv.
pub fn python() -> PathBuf {
    std::env::var("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .unwrap_or_else(|_| PathBuf::from("python3"))
}
