//! Helpers shared by dataprep's integration tests.
#![allow(dead_code)]

pub use syncdiff_devkit::{python, repo, torch};

/// `syncdiff-dataprep LAYOUT --root ROOT --out OUT --config configs/debug.yaml --set S ...`.
pub fn ingest(
    layout: &str,
    root: &std::path::Path,
    out: &std::path::Path,
    sets: &[&str],
) -> std::process::Output {
    let config = repo().join("configs/debug.yaml");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_syncdiff-dataprep"));
    cmd.args([
        layout,
        "--root",
        root.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
    .args(["--config", config.to_str().unwrap()]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    cmd.output().unwrap()
}
