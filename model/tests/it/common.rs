//! Helpers shared by the model crate's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;

use tch::Tensor;

pub use syncdiff_devkit::{python, torch};

/// Runs `reference/<script> <kind> spec.json <dir>` and returns the directory with its outputs.
pub fn reference(script: &str, kind: &str, spec: &serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/reference")
        .join(script);
    let out = python()
        .arg(script)
        .arg(kind)
        .arg(&spec_path)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "reference {kind} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// All tensors of a safetensors file.
pub fn read(path: &Path) -> BTreeMap<String, Tensor> {
    syncdiff_model::weights::read(path).unwrap()
}

/// Max |a - b| and max |b|; asserts max |a - b| <= 1e-4 x max(1, max |b|) and prints both.
pub fn assert_close(what: &str, ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size(), "{what}: shape");
    let ours = ours.to_kind(tch::Kind::Double);
    let reference = reference.to_kind(tch::Kind::Double);
    let err = f64::try_from((&ours - &reference).abs().max()).unwrap();
    let scale = f64::try_from(reference.abs().max()).unwrap();
    let tol = 1e-4 * scale.max(1.0);
    println!("{what}: max abs error {err:.3e}, max |reference| {scale:.3e}, tolerance {tol:.3e}");
    assert!(err <= tol, "{what}: max abs error {err:e} > {tol:e}");
    err
}

/// A tiny SyncDiff configuration: 2-level UNet of width 16, 16-d context.
pub fn tiny_model() -> syncdiff_model::config::ModelConfig {
    use syncdiff_model::config::{AudioEncoderConfig, ModelConfig, UnetConfig};
    ModelConfig {
        unet: UnetConfig {
            model_channels: 16,
            channel_mult: vec![1, 2],
            num_res_blocks: 1,
            attention_resolutions: vec![2],
            head_dim: 8,
            norm_num_groups: 8,
            ..UnetConfig::default()
        },
        audio_encoder: AudioEncoderConfig {
            embed_dim: 16,
            ..AudioEncoderConfig::default()
        },
        ..ModelConfig::default()
    }
}
