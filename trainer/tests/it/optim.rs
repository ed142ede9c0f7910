//! The Rust AdamW against torch.optim.AdamW (foreach=False), run live, on flat buffers of two
//! bucket sizes; state save/restore across bucket sizes; the operations an optimizer step issues.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use syncdiff_trainer::optim::{clip_grad_norm, AdamW, AdamWConfig, Ema, Flat};
use tch::{Kind, Tensor};

fn params() -> Vec<(String, Tensor)> {
    tch::manual_seed(11);
    vec![
        (
            "a.weight".into(),
            Tensor::randn([4, 3], (Kind::Float, tch::Device::Cpu)),
        ),
        (
            "b.bias".into(),
            Tensor::randn([5], (Kind::Float, tch::Device::Cpu)),
        ),
        (
            "c.conv".into(),
            Tensor::randn([2, 2, 3, 3], (Kind::Float, tch::Device::Cpu)),
        ),
    ]
}

fn cfg() -> AdamWConfig {
    AdamWConfig {
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-6,
        weight_decay: 0.1,
    }
}

/// Sets p.grad = sin(p * (s + 1)) through a linear loss, and steps.
fn run(opt: &mut AdamW, steps: std::ops::Range<i64>) {
    for s in steps {
        opt.zero_grad();
        let loss = opt
            .params()
            .iter()
            .map(|p| (p * (p.detach() * (s + 1) as f64).sin()).sum(Kind::Float))
            .fold(
                Tensor::zeros([], (Kind::Float, tch::Device::Cpu)),
                |a, b| a + b,
            );
        loss.backward();
        opt.step(1e-2 * (s + 1) as f64);
    }
}

#[test]
fn adamw_matches_torch() {
    let _torch = common::torch();
    let dir = tempfile::tempdir().unwrap();
    let p = params();
    Tensor::write_safetensors(&p, dir.path().join("params.safetensors")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/adamw_ref.py");
    let o = common::python()
        .arg(script)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("result.safetensors"))
            .unwrap()
            .into_iter()
            .collect();

    // One bucket per tensor (PyTorch's per-parameter loop) and all tensors in one bucket.
    for bucket in [1, 1 << 20] {
        let leaves: Vec<(String, Tensor)> = p
            .iter()
            .map(|(n, t)| (n.clone(), t.copy().set_requires_grad(true)))
            .collect();
        let flat = Flat::new(
            leaves
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
            bucket,
        )
        .unwrap();
        assert_eq!(flat.buckets().len(), if bucket == 1 { 3 } else { 1 });
        let mut opt = AdamW::new(flat, cfg());
        run(&mut opt, 0..7);
        compare(&leaves, &opt, &reference, bucket);
    }
}

fn compare(
    leaves: &[(String, Tensor)],
    opt: &AdamW,
    reference: &BTreeMap<String, Tensor>,
    bucket: usize,
) {
    let state: BTreeMap<String, Tensor> = opt.state().into_iter().collect();
    for (n, t) in leaves {
        for (ours, key) in [
            (t, format!("param.{n}")),
            (&state[&format!("exp_avg.{n}")], format!("exp_avg.{n}")),
            (
                &state[&format!("exp_avg_sq.{n}")],
                format!("exp_avg_sq.{n}"),
            ),
        ] {
            let err = f64::try_from((ours - &reference[&key]).abs().max()).unwrap();
            assert!(
                err < 1e-6,
                "{key} (buckets of {bucket}): max abs error {err}"
            );
        }
    }
}

#[test]
fn restored_state_continues_identically() {
    let _torch = common::torch();
    // 40 elements: a.weight and b.bias share a bucket, c.conv has its own.
    let make_with = |bucket: usize| {
        let leaves: Vec<(String, Tensor)> = params()
            .into_iter()
            .map(|(n, t)| (n, t.set_requires_grad(true)))
            .collect();
        let flat = Flat::new(leaves, bucket).unwrap();
        assert_eq!(flat.buckets().len(), if bucket == 40 { 2 } else { 3 });
        AdamW::new(flat, cfg())
    };
    let make = || make_with(40);
    let mut straight = make();
    run(&mut straight, 0..6);

    let mut first = make();
    run(&mut first, 0..3);
    let saved: BTreeMap<String, Tensor> = first
        .state()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let weights: Vec<Tensor> = first.params().iter().map(Tensor::copy).collect();
    let mut resumed = make();
    tch::no_grad(|| {
        for (p, w) in resumed.params().iter().zip(&weights) {
            p.shallow_clone().copy_(w);
        }
    });
    resumed.load_state(&saved).unwrap();

    assert_eq!(resumed.steps(), 3);
    run(&mut resumed, 3..6);
    for (a, b) in straight.params().iter().zip(resumed.params()) {
        let d = f64::try_from((a - b).abs().max()).unwrap();
        assert!(a.equal(b), "resumed optimizer diverged by {d}");
    }
    // The saved state names parameters, not buckets: it resumes under another bucket size.
    let mut rebucketed = make_with(1);
    tch::no_grad(|| {
        for (p, w) in rebucketed.params().iter().zip(&weights) {
            p.shallow_clone().copy_(w);
        }
    });
    rebucketed.load_state(&saved).unwrap();
    run(&mut rebucketed, 3..6);
    for (a, b) in straight.params().iter().zip(rebucketed.params()) {
        let d = f64::try_from((a - b).abs().max()).unwrap();
        assert!(d < 1e-6, "resumed under other buckets, differs by {d}");
    }
    let mut bad: BTreeMap<String, Tensor> = saved
        .iter()
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    bad.remove("exp_avg.b.bias");
    assert_eq!(
        make().load_state(&bad).unwrap_err().to_string(),
        "optimizer state has no `exp_avg.b.bias`"
    );
}

/// AdamW, EMA, clipping and zeroing issue a fixed number of operations per bucket: with one
/// bucket the count does not depend on the number of tensors; with one bucket per tensor it
/// grows by the same amount per tensor (the per-tensor path this replaced). Counted by
/// libtorch's operator observers (`opcount`).
#[test]
fn the_optimizer_step_issues_operations_per_bucket_not_per_tensor() {
    let _torch = common::torch();
    // It draws from libtorch's global generator: not while another test seeds and draws.
    let ops = |tensors: usize, bucket: usize| -> u64 {
        let params: Vec<(String, Tensor)> = (0..tensors)
            .map(|i| {
                let t = Tensor::randn([7], (Kind::Float, tch::Device::Cpu));
                (format!("p{i:03}"), t.set_requires_grad(true))
            })
            .collect();
        let flat = Flat::new(params, bucket).unwrap();
        let mut opt = AdamW::new(flat.share(), cfg());
        let mut ema = Ema::new(flat.share(), 0.999, true);
        let loss = flat
            .params()
            .iter()
            .map(|p| p.square().sum(Kind::Float))
            .fold(
                Tensor::zeros([], (Kind::Float, tch::Device::Cpu)),
                |a, b| a + b,
            );
        loss.backward();
        let (norm, n) = syncdiff_trainer::opcount::count(|| {
            let norm = clip_grad_norm(flat.grads(), 1.0).unwrap();
            opt.step(1e-3);
            ema.update();
            opt.zero_grad();
            norm
        });
        assert!(norm > 0.0);
        n.unwrap()
    };
    let (flat_1, flat_10, flat_100) = (ops(1, 1 << 20), ops(10, 1 << 20), ops(100, 1 << 20));
    let (per_1, per_10, per_100) = (ops(1, 1), ops(10, 1), ops(100, 1));
    println!("operations: one bucket {flat_1}/{flat_10}/{flat_100}, per tensor {per_1}/{per_10}/{per_100} (1/10/100 tensors)");
    assert_eq!(flat_1, per_1, "one tensor is one bucket either way");
    assert_eq!((flat_10, flat_100), (flat_1, flat_1));
    // Each added tensor adds its own AdamW, EMA, norm, scale and zeroing operations.
    let per_tensor = (per_100 - per_10) as f64 / 90.0;
    assert!(per_tensor >= 20.0, "{per_tensor} operations per tensor");
    assert!(per_10 > flat_10 + 9 * 20, "{per_10}");
}
