//! Importing a CompVis VQ-f4 checkpoint: a real `torch.save` file written by the reference script,
//! converted without Python, must reproduce diffusers' outputs; a malicious pickle is refused.
#![allow(clippy::unwrap_used)]

mod common;

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
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("junk.ckpt");
    std::fs::write(&p, b"definitely not a zip").unwrap();
    let e = convert::vq_f4(&p).unwrap_err().to_string();
    assert!(
        e.contains("junk.ckpt: not a torch.save zip checkpoint"),
        "{e}"
    );
}
