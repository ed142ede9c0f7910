//! Importing a CompVis VQ-f4 checkpoint: a real `torch.save` file written by the reference script,
//! converted without Python, must reproduce diffusers' outputs; a malicious pickle is refused.
#![allow(clippy::unwrap_used)]

use crate::common;

use serde_json::json;
use syncdiff_model::config::AutoencoderConfig;
use syncdiff_model::vq::VqModel;
use syncdiff_model::weights::{self, convert, pickle::Value, torchzip::TorchCheckpoint};
use tch::nn::VarStore;
use tch::Device;

use common::{assert_close, read, reference};

fn fixture(marker: &std::path::Path) -> tempfile::TempDir {
    let spec = json!({
        "block_out_channels": [32, 64, 64], "layers_per_block": 1, "num_vq_embeddings": 64,
        "norm_num_groups": 8, "marker": marker.display().to_string(),
    });
    reference("compvis_ckpt.py", "vq", &spec)
}

#[test]
fn compvis_checkpoint_converts_to_diffusers_layout() {
    let _torch = common::torch();
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture(&tmp.path().join("pwned"));
    let ckpt = dir.path().join("model.ckpt");

    // The Lightning metadata is readable as data.
    let c = TorchCheckpoint::open(&ckpt).unwrap();
    assert_eq!(c.root.get("global_step"), Some(&Value::Int(12345)));
    assert_eq!(
        c.root
            .get("hyper_parameters")
            .and_then(|h| h.get("n_embed")),
        Some(&Value::Int(64))
    );

    let converted = convert::vq_f4(&ckpt).unwrap();
    assert_eq!(converted.dropped.len(), 2, "{:?}", converted.dropped);
    let out = dir.path().join("vq.safetensors");
    weights::save(&converted.tensors, &out).unwrap();

    let cfg = AutoencoderConfig {
        block_out_channels: vec![32, 64, 64],
        layers_per_block: 1,
        norm_num_groups: 8,
        num_vq_embeddings: 64,
        ..Default::default()
    };
    let vs = VarStore::new(Device::Cpu);
    let model = VqModel::new(vs.root(), &cfg);
    weights::load(&vs, &out).unwrap();
    let i = read(&dir.path().join("inputs.safetensors"));
    let o = read(&dir.path().join("outputs.safetensors"));
    tch::no_grad(|| {
        assert_close(
            "converted vq encode",
            &model.encode(&i["image"]),
            &o["latent"],
        );
        assert_close(
            "converted vq decode",
            &model.decode(&o["latent"]),
            &o["decoded"],
        );
    });
}

#[test]
fn pickle_calling_os_system_is_refused_and_not_run() {
    let _torch = common::torch();
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("pwned");
    let dir = fixture(&marker);
    let e = TorchCheckpoint::open(&dir.path().join("evil.ckpt"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refusing to load: the pickle references `posix.system`")
            || e.contains("`os.system`"),
        "{e}"
    );
    let e = convert::vq_f4(&dir.path().join("evil.ckpt"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("refusing to load"), "{e}");
    assert!(!marker.exists(), "the payload ran");
}

#[test]
fn not_a_checkpoint_is_a_clear_error() {
    let _torch = common::torch();
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("junk.ckpt");
    std::fs::write(&p, b"definitely not a zip").unwrap();
    let e = convert::vq_f4(&p).unwrap_err().to_string();
    assert!(
        e.contains("junk.ckpt: neither a torch.save zip checkpoint nor a legacy torch.save file"),
        "{e}"
    );
}

#[test]
fn fairseq_avhubert_checkpoint_converts_with_weight_norm_folded() {
    let _torch = common::torch();
    use syncdiff_model::avhubert::AvHubert;
    use syncdiff_model::config::AudioEncoderConfig;

    let spec = json!({"dim": 32, "layers": 3, "ffn": 64, "kernel": 16, "groups": 4});
    let dir = reference("avhubert_ckpt.py", "avhubert", &spec);
    let ckpt = dir.path().join("avhubert.pt");

    // The non-tensor objects load as inert data: omegaconf config, argparse Namespace, history.
    let c = TorchCheckpoint::open(&ckpt).unwrap();
    match c.root.get("cfg") {
        Some(Value::Object { class, .. }) => assert_eq!(class, "omegaconf.dictconfig.DictConfig"),
        other => panic!("cfg: {other:?}"),
    }
    match c.root.get("args") {
        Some(Value::Object { class, state, .. }) => {
            assert_eq!(class, "argparse.Namespace");
            assert_eq!(state.get("encoder_layers"), Some(&Value::Int(3)));
        }
        other => panic!("args: {other:?}"),
    }

    let converted = convert::avhubert(&ckpt).unwrap();
    let mut dropped = converted.dropped.clone();
    dropped.sort();
    assert_eq!(
        dropped,
        [
            "feature_extractor_video.proj.weight",
            "feature_extractor_video.resnet.frontend3D.0.weight",
            "final_proj.bias",
            "final_proj.weight",
            "label_embs_concat",
            "mask_emb"
        ]
    );
    let expected = read(&dir.path().join("expected.safetensors"));
    assert_eq!(converted.tensors.len(), expected.len());
    for (name, t) in &converted.tensors {
        assert_close(name, t, &expected[name]);
    }
    let out = dir.path().join("avhubert.safetensors");
    weights::save(&converted.tensors, &out).unwrap();
    let cfg = AudioEncoderConfig {
        embed_dim: 32,
        layers: 3,
        heads: 4,
        ffn_dim: 64,
        frozen_layers: 2,
        pos_conv_kernel: 16,
        pos_conv_groups: 4,
        ..AudioEncoderConfig::default()
    };
    let vs = VarStore::new(Device::Cpu);
    let _enc = AvHubert::new(vs.root(), &cfg);
    weights::load(&vs, &out).unwrap();
}

/// Python 2 era files (the lpips package's weights/v0.1/alex.pth) build their state dict as
/// `OrderedDict([[key, value], ...])`, not as an empty OrderedDict filled by SETITEMS.
#[test]
fn ordered_dict_built_from_a_list_of_pairs() {
    let bytes = b"\x80\x02ccollections\nOrderedDict\nq\x00]q\x01(]q\x02(X\x01\x00\x00\x00aK\x01e](X\x01\x00\x00\x00bK\x02ee\x85R.";
    let v = syncdiff_model::weights::pickle::parse(bytes).unwrap();
    assert_eq!(v.get("a"), Some(&Value::Int(1)), "{v:?}");
    assert_eq!(v.get("b"), Some(&Value::Int(2)), "{v:?}");
    // A pair that is not a pair is an error, not a guess.
    let bad = b"\x80\x02ccollections\nOrderedDict\nq\x00]q\x01(]q\x02(X\x01\x00\x00\x00aee\x85R.";
    let e = syncdiff_model::weights::pickle::parse(bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a (key, value) pair"), "{e}");
}
