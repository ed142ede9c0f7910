//! Loading weights: every mismatch is an error naming the tensor and both shapes.
#![allow(clippy::unwrap_used)]

use crate::common;

use syncdiff_model::config::ModelConfig;
use syncdiff_model::syncdiff::SyncDiff;
use syncdiff_model::weights;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn tiny() -> ModelConfig {
    common::tiny_model()
}

fn saved(vs: &VarStore, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> tempfile::NamedTempFile {
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    edit(&mut tensors);
    let f = tempfile::NamedTempFile::new().unwrap();
    weights::save(&tensors, f.path()).unwrap();
    f
}

#[test]
fn round_trip_restores_every_value() {
    let _torch = common::torch();
    let vs = VarStore::new(Device::Cpu);
    let _m = SyncDiff::new(vs.root(), &tiny());
    let f = saved(&vs, |_| {});
    let vs2 = VarStore::new(Device::Cpu);
    let _m2 = SyncDiff::new(vs2.root(), &tiny());
    weights::load(&vs2, f.path()).unwrap();
    for (k, v) in vs.variables() {
        assert!(v.equal(&vs2.variables()[&k]), "{k}");
    }
}

#[test]
fn missing_tensor_is_named() {
    let _torch = common::torch();
    let vs = VarStore::new(Device::Cpu);
    let _m = SyncDiff::new(vs.root(), &tiny());
    let f = saved(&vs, |t| t.retain(|(k, _)| k != "unet.conv_in.weight"));
    let e = weights::load(&vs, f.path()).unwrap_err().to_string();
    assert!(
        e.ends_with("missing tensor `unet.conv_in.weight` (expected shape [16, 10, 3, 3])"),
        "{e}"
    );
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let _torch = common::torch();
    let vs = VarStore::new(Device::Cpu);
    let _m = SyncDiff::new(vs.root(), &tiny());
    let f = saved(&vs, |t| {
        for (k, v) in t.iter_mut() {
            if k == "bottleneck.weight" {
                *v = Tensor::zeros([2, 3, 1, 1], (Kind::Float, Device::Cpu));
            }
        }
    });
    let e = weights::load(&vs, f.path()).unwrap_err().to_string();
    assert!(
        e.ends_with("tensor `bottleneck.weight` has shape [2, 3, 1, 1], expected [1, 3, 1, 1]"),
        "{e}"
    );
}

#[test]
fn wrong_dtype_and_extra_tensors_are_named() {
    let _torch = common::torch();
    let vs = VarStore::new(Device::Cpu);
    let _m = SyncDiff::new(vs.root(), &tiny());
    let f = saved(&vs, |t| {
        for (k, v) in t.iter_mut() {
            if k == "unet.conv_out.bias" {
                *v = v.to_kind(Kind::Int64);
            }
        }
    });
    let e = weights::load(&vs, f.path()).unwrap_err().to_string();
    assert!(
        e.contains("tensor `unet.conv_out.bias` has dtype Int64, expected a floating-point dtype"),
        "{e}"
    );
    let f = saved(&vs, |t| {
        t.push((
            "unet.extra.weight".into(),
            Tensor::zeros([1], (Kind::Float, Device::Cpu)),
        ))
    });
    let e = weights::load(&vs, f.path()).unwrap_err().to_string();
    assert!(
        e.contains("1 tensor(s) the model does not have, e.g. `unet.extra.weight`"),
        "{e}"
    );
    // Half-precision weights are accepted and converted.
    let f = saved(&vs, |t| {
        t.iter_mut().for_each(|(_, v)| *v = v.to_kind(Kind::Half))
    });
    weights::load(&vs, f.path()).unwrap();
}

#[test]
fn nan_weights_are_never_saved() {
    let _torch = common::torch();
    let t = vec![("w".to_string(), Tensor::from_slice(&[1.0f32, f32::NAN]))];
    let f = tempfile::NamedTempFile::new().unwrap();
    let e = weights::save(&t, f.path()).unwrap_err().to_string();
    assert_eq!(e, "refusing to save: tensor `w` holds NaN or Inf");
}

#[test]
fn a_damaged_header_is_reported_as_damaged() {
    let _torch = common::torch();
    let vs = VarStore::new(Device::Cpu);
    let _m = SyncDiff::new(vs.root(), &tiny());
    // One character of a tensor name changed (what a flipped header byte does): the message
    // says the names are wrong, not only that one is missing.
    let f = saved(&vs, |t| {
        let name = &mut t[0].0;
        let last = name.pop().unwrap();
        name.push(if last == 'x' { 'y' } else { 'x' });
    });
    let vs2 = VarStore::new(Device::Cpu);
    let _m2 = SyncDiff::new(vs2.root(), &tiny());
    let e = weights::load(&vs2, f.path()).unwrap_err().to_string();
    assert!(e.contains("missing tensor"), "{e}");
    assert!(
        e.contains("a damaged file, or weights of another model"),
        "{e}"
    );
    // A header that is not JSON: named as a damaged file.
    let mut bytes = std::fs::read(f.path()).unwrap();
    bytes[9] = b'#';
    std::fs::write(f.path(), &bytes).unwrap();
    let e = weights::load(&vs2, f.path()).unwrap_err().to_string();
    assert!(
        e.contains("not a readable safetensors file (damaged"),
        "{e}"
    );
}
