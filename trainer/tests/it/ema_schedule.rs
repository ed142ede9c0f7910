//! EMA warm-up rule and state, learning-rate schedules, global-norm clipping.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use syncdiff_model::config::{LrSchedule, TrainConfig};
use syncdiff_trainer::optim::{clip_grad_norm, lr_at, Ema, Flat};
use tch::{Kind, Tensor};

fn one_parameter() -> Flat {
    let w = Tensor::zeros([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    Flat::new(vec![("w".to_string(), w)], 1 << 20).unwrap()
}

#[test]
fn ema_follows_the_warmup_rule_and_restores() {
    let flat = one_parameter();
    let mut ema = Ema::new(flat.share(), 0.9999, true);
    assert!((ema.current_decay() - 0.1).abs() < 1e-12); // (1 + 0) / (10 + 0)
    let _ = tch::no_grad(|| flat.params()[0].shallow_clone().fill_(1.0));
    ema.update();
    // shadow = 0.1 * 0 + 0.9 * 1
    assert!((f64::try_from(ema.state()[0].1.get(0)).unwrap() - 0.9).abs() < 1e-6);
    assert!((ema.current_decay() - 2.0 / 11.0).abs() < 1e-12);
    for _ in 0..100_000 {
        if ema.current_decay() >= 0.9999 {
            break;
        }
        ema.update();
    }
    assert_eq!(ema.current_decay(), 0.9999);
    let saved: BTreeMap<String, Tensor> = ema
        .state()
        .into_iter()
        .map(|(n, t)| (n, t.copy()))
        .collect();
    let mut other = Ema::new(one_parameter(), 0.9999, true);
    other.load_state(&saved).unwrap();
    assert_eq!(other.current_decay(), ema.current_decay());
    assert!(other.state()[0].1.equal(&saved["w"]));
    let no_warmup = Ema::new(one_parameter(), 0.99, false);
    assert_eq!(no_warmup.current_decay(), 0.99);
}

#[test]
fn learning_rate_schedules() {
    let mut cfg = TrainConfig {
        lr: 1e-3,
        min_lr: 1e-5,
        warmup_steps: 10,
        ..TrainConfig::default()
    };
    assert!((lr_at(&cfg, 0, 110) - 1e-4).abs() < 1e-15);
    assert!((lr_at(&cfg, 9, 110) - 1e-3).abs() < 1e-15);
    assert_eq!(lr_at(&cfg, 50, 110), 1e-3);
    cfg.lr_schedule = LrSchedule::Linear;
    assert!((lr_at(&cfg, 60, 110) - (1e-5 + (1e-3 - 1e-5) * 0.5)).abs() < 1e-12);
    assert!((lr_at(&cfg, 110, 110) - 1e-5).abs() < 1e-15);
    cfg.lr_schedule = LrSchedule::Cosine;
    assert!((lr_at(&cfg, 10, 110) - 1e-3).abs() < 1e-15);
    assert!((lr_at(&cfg, 60, 110) - (1e-5 + (1e-3 - 1e-5) * 0.5)).abs() < 1e-12);
    assert!((lr_at(&cfg, 110, 110) - 1e-5).abs() < 1e-15);
}

#[test]
fn clipping_scales_to_the_global_norm() {
    let g = vec![
        Tensor::from_slice(&[3.0f32, 0.0]),
        Tensor::from_slice(&[0.0f32, 4.0]),
    ];
    let before = clip_grad_norm(&g, 1.0).unwrap();
    assert!((before - 5.0).abs() < 1e-6);
    let after: f64 = g
        .iter()
        .map(|t| f64::try_from(t.square().sum(Kind::Float)).unwrap())
        .sum::<f64>()
        .sqrt();
    assert!((after - 1.0).abs() < 1e-5, "{after}");
    // Below the limit nothing changes (the scale is exactly 1).
    let copy: Vec<Tensor> = g.iter().map(Tensor::copy).collect();
    assert!((clip_grad_norm(&g, 10.0).unwrap() - after).abs() < 1e-6);
    for (a, b) in g.iter().zip(&copy) {
        assert!(a.equal(b));
    }
}
