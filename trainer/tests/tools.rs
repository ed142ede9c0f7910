//! `syncdiff convert` and `syncdiff forward` as a user runs them.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> Command {
    let exe = std::env::var("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .unwrap_or_else(|_| PathBuf::from("python3"));
    Command::new(exe)
}

/// Runs a model-crate reference script (diffusers) into a temporary directory.
fn reference(script: &str, kind: &str, spec: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("spec.json");
    std::fs::write(&spec_path, spec).unwrap();
    let o = python()
        .arg(repo().join("model/tests/reference").join(script))
        .args([
            kind,
            spec_path.to_str().unwrap(),
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    dir
}

fn syncdiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_syncdiff"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const VQ_SPEC: &str = r#"{"block_out_channels": [32, 64, 64], "layers_per_block": 1, "latent_channels": 3,
  "num_vq_embeddings": 64, "norm_num_groups": 8, "size": 16, "marker": "/nonexistent/marker"}"#;

const VQ_YAML: &str = "model:\n  autoencoder:\n    block_out_channels: [32, 64, 64]\n    layers_per_block: 1\n    norm_num_groups: 8\n    num_vq_embeddings: 64\n";

#[test]
fn forward_vq_encode_matches_the_reference_and_rejects_bad_inputs() {
    let dir = reference("diffusers_ref.py", "vq", VQ_SPEC);
    let d = dir.path();
    let cfg = d.join("vq.yaml");
    std::fs::write(&cfg, VQ_YAML).unwrap();
    let s = |p: &str| d.join(p).display().to_string();
    let o = syncdiff(&[
        "forward",
        "--module",
        "vq-encode",
        "--config",
        &s("vq.yaml"),
        "--weights",
        &s("weights.safetensors"),
        "--input",
        &s("inputs.safetensors"),
        "--output",
        &s("ours.safetensors"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = tch::Tensor::read_safetensors(d.join("ours.safetensors")).unwrap();
    let reference = tch::Tensor::read_safetensors(d.join("outputs.safetensors")).unwrap();
    let latent = |v: &Vec<(String, tch::Tensor)>| {
        v.iter()
            .find(|(n, _)| n == "latent")
            .unwrap()
            .1
            .shallow_clone()
    };
    let err = f64::try_from((latent(&ours) - latent(&reference)).abs().max()).unwrap();
    assert!(err < 1e-4, "max abs error {err}");

    // The decoder needs `latent`, which the input file does not have.
    let o = syncdiff(&[
        "forward",
        "--module",
        "vq-decode",
        "--config",
        &s("vq.yaml"),
        "--weights",
        &s("weights.safetensors"),
        "--input",
        &s("inputs.safetensors"),
        "--output",
        &s("x.safetensors"),
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("no input tensor `latent` (found [\"code\", \"image\"])")
            && e.lines().count() == 1,
        "{e}"
    );

    // Weights for another configuration: the error names the tensor and both shapes.
    let o = syncdiff(&[
        "forward",
        "--module",
        "vq-encode",
        "--config",
        &repo()
            .join("configs/syncdiff-lrs2.yaml")
            .display()
            .to_string(),
        "--weights",
        &s("weights.safetensors"),
        "--input",
        &s("inputs.safetensors"),
        "--output",
        &s("x.safetensors"),
    ]);
    let e = stderr(&o);
    assert!(
        e.contains("has shape") && e.contains("expected") && !e.contains("panicked"),
        "{e}"
    );

    let o = syncdiff(&[
        "forward",
        "--module",
        "nope",
        "--config",
        &s("vq.yaml"),
        "--weights",
        &s("weights.safetensors"),
        "--input",
        &s("inputs.safetensors"),
        "--output",
        &s("x.safetensors"),
    ]);
    assert!(stderr(&o).contains("unknown module `nope`; available: vq-encode, vq-decode, unet"));
}

#[test]
fn convert_vq_f4_writes_loadable_weights() {
    let dir = reference("compvis_ckpt.py", "vq", VQ_SPEC);
    let d = dir.path();
    std::fs::write(d.join("vq.yaml"), VQ_YAML).unwrap();
    let s = |p: &str| d.join(p).display().to_string();
    let o = syncdiff(&[
        "convert",
        "vq-f4",
        "--ckpt",
        &s("model.ckpt"),
        "--out",
        &s("vq.safetensors"),
        "--config",
        &s("vq.yaml"),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("dropped 2 keys (loss.* (2))"), "{out}");

    // Checked against the paper's autoencoder, the small checkpoint is refused and nothing is written.
    let o = syncdiff(&[
        "convert",
        "vq-f4",
        "--ckpt",
        &s("model.ckpt"),
        "--out",
        &s("paper.safetensors"),
        "--config",
        &repo()
            .join("configs/syncdiff-lrs2.yaml")
            .display()
            .to_string(),
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("do not fit model.autoencoder") && e.contains("has shape"),
        "{e}"
    );
    assert!(!d.join("paper.safetensors").exists() && !d.join("paper.safetensors.partial").exists());

    let o = syncdiff(&[
        "convert",
        "vq-f4",
        "--ckpt",
        &s("evil.ckpt"),
        "--out",
        &s("evil.safetensors"),
    ]);
    let e = stderr(&o);
    assert!(
        e.contains("refusing to load") && e.lines().count() == 1,
        "{e}"
    );
}
