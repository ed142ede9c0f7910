//! The Rust AdamW against torch.optim.AdamW (foreach=False), run live; state save/restore.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use syncdiff_trainer::optim::{AdamW, AdamWConfig};
use tch::{Kind, Tensor};

fn python() -> Command {
    let exe = std::env::var("VIRTUAL_ENV")
        .map(|v| PathBuf::from(v).join("bin/python"))
        .unwrap_or_else(|_| PathBuf::from("python3"));
    Command::new(exe)
}

/// The two tests run one at a time: run concurrently in one process they disagreed once in a
/// few runs (unexplained; see the session note), alone they are bit-exact every time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let p = params();
    Tensor::write_safetensors(&p, dir.path().join("params.safetensors")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/adamw_ref.py");
    let o = python().arg(script).arg(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reference: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(dir.path().join("result.safetensors"))
            .unwrap()
            .into_iter()
            .collect();

    let leaves: Vec<(String, Tensor)> = p
        .iter()
        .map(|(n, t)| (n.clone(), t.copy().set_requires_grad(true)))
        .collect();
    let mut opt = AdamW::new(
        leaves
            .iter()
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect(),
        cfg(),
    );
    run(&mut opt, 0..7);
    let state: BTreeMap<String, Tensor> = opt.state().into_iter().collect();
    for (n, t) in &leaves {
        for (ours, key) in [
            (t, format!("param.{n}")),
            (&state[&format!("exp_avg.{n}")], format!("exp_avg.{n}")),
            (
                &state[&format!("exp_avg_sq.{n}")],
                format!("exp_avg_sq.{n}"),
            ),
        ] {
            let err = f64::try_from((ours - &reference[&key]).abs().max()).unwrap();
            assert!(err < 1e-6, "{key}: max abs error {err}");
        }
    }
}

#[test]
fn restored_state_continues_identically() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let make = || {
        let leaves: Vec<(String, Tensor)> = params()
            .into_iter()
            .map(|(n, t)| (n, t.set_requires_grad(true)))
            .collect();
        AdamW::new(leaves, cfg())
    };
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
