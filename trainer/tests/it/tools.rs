//! `syncdiff convert` and `syncdiff forward` as a user runs them.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::{reference, repo};

fn syncdiff(args: &[&str]) -> Output {
    Command::new(syncdiff_devkit::workspace_bin("syncdiff"))
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
    let _torch = common::torch();
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
    // A usage error: one line naming the value and the choices, exit code 2.
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.starts_with("error: invalid value 'nope' for '--module <MODULE>'")
            && e.contains(
                "[possible values: vq-encode, vq-decode, unet, logfbank, avhubert, temporal]"
            ),
        "{e}"
    );
}

#[test]
fn convert_vq_f4_writes_loadable_weights() {
    let _torch = common::torch();
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

const AVHUBERT_YAML: &str = "model:\n  audio_encoder:\n    embed_dim: 32\n    layers: 3\n    heads: 4\n    ffn_dim: 64\n    frozen_layers: 2\n    pos_conv_kernel: 16\n    pos_conv_groups: 4\n    context_frames: 16\n  temporal:\n    hidden: 8\n";

fn read_named(p: &Path) -> std::collections::BTreeMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(p)
        .unwrap()
        .into_iter()
        .collect()
}

fn max_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

#[test]
fn convert_avhubert_then_forward_split_equals_full() {
    let _torch = common::torch();
    let dir = reference(
        "avhubert_ckpt.py",
        "avhubert",
        r#"{"dim": 32, "layers": 3, "ffn": 64, "kernel": 16, "groups": 4}"#,
    );
    let d = dir.path();
    std::fs::write(d.join("a.yaml"), AVHUBERT_YAML).unwrap();
    let s = |p: &str| d.join(p).display().to_string();
    let o = syncdiff(&[
        "convert",
        "avhubert",
        "--ckpt",
        &s("avhubert.pt"),
        "--out",
        &s("avhubert.safetensors"),
        "--config",
        &s("a.yaml"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("dropped 6 keys"), "{out}");

    let x = tch::Tensor::randn([2, 20, 104], (tch::Kind::Float, tch::Device::Cpu));
    tch::Tensor::write_safetensors(&[("features", &x)], d.join("in.safetensors")).unwrap();
    let fwd = |extra: &[&str], input: &str, output: &str| {
        let mut args = vec![
            "forward",
            "--module",
            "avhubert",
            "--config",
            "",
            "--weights",
            "",
            "--input",
            "",
            "--output",
            "",
        ];
        let (c, w, i, o) = (s("a.yaml"), s("avhubert.safetensors"), s(input), s(output));
        args[4] = &c;
        args[6] = &w;
        args[8] = &i;
        args[10] = &o;
        args.extend_from_slice(extra);
        let r = syncdiff(&args);
        assert!(r.status.success(), "{}", stderr(&r));
    };
    fwd(&[], "in.safetensors", "full.safetensors");
    fwd(
        &["--until-layer", "2"],
        "in.safetensors",
        "hidden.safetensors",
    );
    fwd(
        &["--from-layer", "2"],
        "hidden.safetensors",
        "split.safetensors",
    );
    let full = read_named(&d.join("full.safetensors"));
    let split = read_named(&d.join("split.safetensors"));
    assert_eq!(full["output"].size(), vec![2, 20, 32]);
    assert!(max_diff(&full["output"], &split["output"]) < 1e-5);

    let o = syncdiff(&[
        "forward",
        "--module",
        "avhubert",
        "--config",
        &s("a.yaml"),
        "--weights",
        &s("avhubert.safetensors"),
        "--input",
        &s("in.safetensors"),
        "--output",
        &s("x.safetensors"),
        "--from-layer",
        "7",
    ]);
    assert!(
        stderr(&o).contains("layer 7 is beyond the encoder's 3 layers"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn forward_logfbank_and_temporal() {
    let _torch = common::torch();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.yaml"), AVHUBERT_YAML).unwrap();
    let s = |p: &str| d.join(p).display().to_string();
    let tone =
        (tch::Tensor::arange(16000, (tch::Kind::Float, tch::Device::Cpu)) * 0.17).sin() * 8000.0;
    tch::Tensor::write_safetensors(&[("audio", &tone)], d.join("audio.safetensors")).unwrap();
    let o = syncdiff(&[
        "forward",
        "--module",
        "logfbank",
        "--config",
        &s("a.yaml"),
        "--input",
        &s("audio.safetensors"),
        "--output",
        &s("fb.safetensors"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fb = read_named(&d.join("fb.safetensors"));
    assert_eq!(fb["fbank"].size(), vec![99, 26]);
    assert_eq!(fb["features"].size(), vec![25, 104]);
    let samples: Vec<f64> = Vec::try_from(tone.to_kind(tch::Kind::Double)).unwrap();
    let lib = syncdiff_dataset::audio::LogFbank::new(Default::default()).compute(&samples);
    let lib = tch::Tensor::from_slice(&lib)
        .to_kind(tch::Kind::Float)
        .reshape([99, 26]);
    assert!(max_diff(&lib, &fb["fbank"]) < 1e-6);

    // Temporal filter weights from a VarStore, then the CLI on a feature sequence.
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let cfg = syncdiff_model::config::TemporalConfig {
        hidden: 8,
        ..Default::default()
    };
    let _f = syncdiff_model::temporal::TemporalFilter::new(vs.root(), &cfg, 32);
    vs.save(d.join("t.safetensors")).unwrap();
    let feats = tch::Tensor::randn([2, 16, 32], (tch::Kind::Float, tch::Device::Cpu));
    let centres = tch::Tensor::from_slice(&[0i64, 15]);
    tch::Tensor::write_safetensors(
        &[("features", &feats), ("centres", &centres)],
        d.join("f.safetensors"),
    )
    .unwrap();
    let o = syncdiff(&[
        "forward",
        "--module",
        "temporal",
        "--config",
        &s("a.yaml"),
        "--weights",
        &s("t.safetensors"),
        "--input",
        &s("f.safetensors"),
        "--output",
        &s("ctx.safetensors"),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        read_named(&d.join("ctx.safetensors"))["context"].size(),
        vec![2, 1, 32]
    );
    let o = syncdiff(&[
        "forward",
        "--module",
        "temporal",
        "--config",
        &s("a.yaml"),
        "--input",
        &s("f.safetensors"),
        "--output",
        &s("x.safetensors"),
    ]);
    assert!(
        stderr(&o).contains("module `temporal` needs --weights"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn ckpt_list_and_inspect_never_create_what_they_read() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo/path");
    for args in [
        vec!["ckpt", "list", typo.to_str().unwrap()],
        vec![
            "ckpt",
            "inspect",
            &format!("{}/step-000000004", typo.display()),
        ],
    ] {
        let o = syncdiff(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        assert!(e.contains("typo/path: no such directory"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(!dir.path().join("typo").exists(), "{args:?} created it");
    }
    // An existing empty location is not an error: it holds no checkpoints.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = syncdiff(&["ckpt", "list", empty.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no checkpoints"));
}
