//! AV-HuBERT encoder: transformer stack against transformers' HubertEncoderStableLayerNorm, front
//! end against a direct torch computation (both run live); frozen/trainable split; temporal net.
#![allow(clippy::unwrap_used)]

use crate::common;

use serde_json::json;
use syncdiff_model::avhubert::AvHubert;
use syncdiff_model::config::{AudioEncoderConfig, TemporalConfig, TemporalTokens};
use syncdiff_model::temporal::TemporalFilter;
use syncdiff_model::weights;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use common::{assert_close, read, reference};

fn tiny(frozen: u32) -> AudioEncoderConfig {
    AudioEncoderConfig {
        embed_dim: 32,
        layers: 4,
        heads: 4,
        ffn_dim: 64,
        frozen_layers: frozen,
        pos_conv_kernel: 16,
        pos_conv_groups: 4,
        dropout: 0.0,
        attention_dropout: 0.0,
        ..AudioEncoderConfig::default()
    }
}

#[test]
fn encoder_matches_transformers_and_the_front_end_formula() {
    let _torch = common::torch();
    let cfg = tiny(2);
    let spec = json!({"dim": 32, "layers": 4, "heads": 4, "ffn": 64, "kernel": 16, "groups": 4, "frames": 37});
    let dir = reference("avhubert_ref.py", "encoder", &spec);
    let vs = VarStore::new(Device::Cpu);
    let enc = AvHubert::new(vs.root(), &cfg);
    weights::load(&vs, &dir.path().join("weights.safetensors")).unwrap();
    let i = read(&dir.path().join("inputs.safetensors"));
    let o = read(&dir.path().join("outputs.safetensors"));
    tch::no_grad(|| {
        assert_close(
            "avhubert front end",
            &enc.input_features(&i["audio"]),
            &o["front"],
        );
        let f = &i["features"];
        let full = enc.from_layer(&enc.encoder_until(f, 0), 0, false, |_| true);
        assert_close("avhubert transformer stack", &full, &o["encoder"]);
        for n in 0..4 {
            assert_close(
                &format!("avhubert after {n} layers"),
                &enc.encoder_until(f, n),
                &o[&format!("hidden_{n}")],
            );
            // Running until layer n, then from layer n, equals the whole stack.
            let split = enc.from_layer(&enc.encoder_until(f, n), n, false, |_| true);
            assert!(
                f64::try_from((&split - &full).abs().max()).unwrap() < 1e-5,
                "split at {n}"
            );
        }
    });
}

#[test]
fn frozen_layers_get_no_gradient_and_trained_layers_do() {
    let _torch = common::torch();
    let vs = VarStore::new(Device::Cpu);
    let enc = AvHubert::new(vs.root(), &tiny(3));
    let trainable: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(_, v)| v.requires_grad())
        .map(|(k, _)| k)
        .collect();
    assert!(
        trainable
            .iter()
            .all(|k| k.starts_with("encoder.layers.3.") || k.starts_with("encoder.layer_norm.")),
        "{trainable:?}"
    );
    assert_eq!(trainable.len(), 16 + 2, "{trainable:?}");
    let x = Tensor::randn([2, 20, 104], (Kind::Float, Device::Cpu));
    enc.forward(&x, true, |_| true)
        .square()
        .sum(Kind::Float)
        .backward();
    for (k, v) in vs.variables() {
        let got =
            v.grad().defined() && f64::try_from(v.grad().abs().sum(Kind::Float)).unwrap() > 0.0;
        assert_eq!(got, v.requires_grad(), "{k}: gradient {got}");
    }
    // NF = 0 trains everything.
    let vs = VarStore::new(Device::Cpu);
    let _enc = AvHubert::new(vs.root(), &tiny(0));
    assert!(vs.variables().values().all(Tensor::requires_grad));
}

#[test]
fn frozen_features_are_a_fixed_function_of_the_audio() {
    let _torch = common::torch();
    let vs = VarStore::new(Device::Cpu);
    let enc = AvHubert::new(
        vs.root(),
        &AudioEncoderConfig {
            dropout: 0.5,
            ..tiny(2)
        },
    );
    let x = Tensor::randn([1, 30, 104], (Kind::Float, Device::Cpu));
    // Dropout in the trained layers does not reach the frozen part.
    assert!(enc.frozen_features(&x).equal(&enc.frozen_features(&x)));
    let a = enc.forward(&x, true, |_| true);
    let b = enc.forward(&x, true, |_| true);
    assert!(
        !a.equal(&b),
        "dropout 0.5 in the trained layers had no effect"
    );
}

fn temporal(tokens: TemporalTokens) -> (VarStore, TemporalFilter) {
    let vs = VarStore::new(Device::Cpu);
    let f = TemporalFilter::new(
        vs.root(),
        &TemporalConfig {
            window: 8,
            tokens,
            hidden: 8,
        },
        16,
    );
    (vs, f)
}

#[test]
fn temporal_window_is_zero_padded_at_clip_edges() {
    let _torch = common::torch();
    let (_vs, f) = temporal(TemporalTokens::Pooled);
    // Feature of frame j is j + 1 everywhere.
    let feats = (Tensor::arange(10, (Kind::Float, Device::Cpu)) + 1.0)
        .view([1, 10, 1])
        .expand([2, 10, 16], false)
        .contiguous();
    let w = f.gather_window(&feats, &Tensor::from_slice(&[0i64, 9]));
    let first: Vec<f32> = Vec::try_from(w.get(0).select(1, 0)).unwrap();
    let last: Vec<f32> = Vec::try_from(w.get(1).select(1, 0)).unwrap();
    assert_eq!(first, vec![0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 3.0, 4.0]); // frames -4..3
    assert_eq!(last, vec![6.0, 7.0, 8.0, 9.0, 10.0, 0.0, 0.0, 0.0]); // frames 5..12
                                                                     // The host-indexed slice of one sample is the same window.
    for (b, c) in [(0i64, 0i64), (1, 9)] {
        let one = f.window_at(&feats.narrow(0, b, 1), c);
        assert!(one.equal(&w.narrow(0, b, 1)), "centre {c}");
    }
}

#[test]
fn temporal_filter_outputs_pooled_or_all_tokens() {
    let _torch = common::torch();
    let x = Tensor::randn([3, 8, 16], (Kind::Float, Device::Cpu));
    let (_vs, pooled) = temporal(TemporalTokens::Pooled);
    let a = pooled.weights(&x);
    assert_eq!(a.size(), vec![3, 8]);
    let sums: Vec<f32> =
        Vec::try_from(a.sum_dim_intlist([1i64].as_slice(), false, Kind::Float)).unwrap();
    assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5), "{sums:?}");
    let out = pooled.forward(&x);
    assert_eq!(out.size(), vec![3, 1, 16]);
    // The pooled token is the attention-weighted sum of the window.
    let manual =
        (x.shallow_clone() * a.unsqueeze(-1)).sum_dim_intlist([1i64].as_slice(), true, Kind::Float);
    assert!(f64::try_from((&out - manual).abs().max()).unwrap() < 1e-5);
    let (_vs, all) = temporal(TemporalTokens::All);
    assert_eq!(all.forward(&x).size(), vec![3, 8, 16]);
}
