//! The composed model: prior channels per mode, the loss trains, sampling runs for each target.
#![allow(clippy::unwrap_used)]

use crate::common;

use syncdiff_model::config::{ModelConfig, PredictionTarget, ReferenceMode, SamplerKind};
use syncdiff_model::syncdiff::{Conditioning, SampleOptions, SyncDiff};
use tch::nn::{OptimizerConfig, VarStore};
use tch::{Device, Kind, Tensor};

fn tiny(reference: ReferenceMode, np: u32, prediction: PredictionTarget) -> ModelConfig {
    let mut cfg = common::tiny_model();
    cfg.priors.reference = reference;
    cfg.priors.previous_frames = np;
    cfg.diffusion.prediction = prediction;
    cfg
}

struct Batch {
    z0: Tensor,
    masked: Tensor,
    identity: Tensor,
    previous: Tensor,
    context: Tensor,
}

fn batch(b: i64, np: i64) -> Batch {
    tch::manual_seed(3);
    let z = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu));
    Batch {
        z0: z(&[b, 3, 8, 8]),
        masked: z(&[b, 3, 8, 8]),
        identity: z(&[b, 3, 8, 8]),
        previous: z(&[b, np, 3, 8, 8]),
        context: z(&[b, 4, 16]),
    }
}

fn cond(b: &Batch) -> Conditioning<'_> {
    Conditioning {
        masked: &b.masked,
        identity: Some(&b.identity),
        previous: Some(&b.previous),
        context: &b.context,
    }
}

#[test]
fn prior_channels_follow_the_mode() {
    let _torch = common::torch();
    for (mode, np, want) in [
        (ReferenceMode::Rnd, 1, 6),
        (ReferenceMode::Prv, 1, 6),
        (ReferenceMode::PrvMinus, 1, 4),
        (ReferenceMode::RndPrvMinus, 1, 7),
        (ReferenceMode::RndPrvMinus, 5, 11),
    ] {
        let vs = VarStore::new(Device::Cpu);
        let m = SyncDiff::new(vs.root(), &tiny(mode, np, PredictionTarget::Eps));
        let b = batch(2, i64::from(np));
        let p = m.priors_input(&cond(&b)).unwrap();
        assert_eq!(p.size(), vec![2, want, 8, 8], "{mode:?} NP={np}");
    }
}

#[test]
fn missing_prior_is_an_error() {
    let _torch = common::torch();
    let vs = VarStore::new(Device::Cpu);
    let m = SyncDiff::new(
        vs.root(),
        &tiny(ReferenceMode::RndPrvMinus, 1, PredictionTarget::Eps),
    );
    let b = batch(1, 1);
    let c = Conditioning {
        identity: None,
        ..cond(&b)
    };
    let e = m.priors_input(&c).unwrap_err().to_string();
    assert!(e.contains("needs the identity latent"), "{e}");
}

#[test]
fn loss_decreases_when_fitting_one_batch() {
    let _torch = common::torch();
    let vs = VarStore::new(Device::Cpu);
    let m = SyncDiff::new(
        vs.root(),
        &tiny(ReferenceMode::RndPrvMinus, 1, PredictionTarget::X0),
    );
    let mut opt = tch::nn::Adam::default().build(&vs, 2e-3).unwrap();
    let b = batch(4, 1);
    let t = Tensor::from_slice(&[10i64, 200, 500, 900]);
    let noise = Tensor::randn([4, 3, 8, 8], (Kind::Float, Device::Cpu));
    let mut losses = Vec::new();
    for _ in 0..30 {
        let loss = m.loss(&b.z0, &t, &noise, &cond(&b), true).unwrap();
        opt.backward_step(&loss);
        losses.push(f64::try_from(&loss).unwrap());
    }
    assert!(losses[29] < 0.5 * losses[0], "{losses:?}");
    // The bottleneck gets a gradient: the pose prior is wired in.
    let g = vs.variables()["bottleneck.weight"].grad();
    assert!(f64::try_from(g.abs().sum(Kind::Float)).unwrap() > 0.0);
}

#[test]
fn sampling_runs_for_every_target_and_is_deterministic() {
    let _torch = common::torch();
    for p in [
        PredictionTarget::Eps,
        PredictionTarget::X0,
        PredictionTarget::V,
    ] {
        let vs = VarStore::new(Device::Cpu);
        let m = SyncDiff::new(vs.root(), &tiny(ReferenceMode::RndPrvMinus, 1, p));
        let b = batch(2, 1);
        let noise = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
        // DPM-Solver++(2M) runs for every target too, deterministic and finite.
        let dpm = SampleOptions {
            sampler: SamplerKind::DpmPp2m,
            steps: 5,
            eta: 0.0,
            guidance: 1.0,
            final_x0: false,
            inpaint: None,
        };
        let d = m.sample(&cond(&b), &noise, &dpm, |_| None).unwrap();
        let d_again = m.sample(&cond(&b), &noise, &dpm, |_| None).unwrap();
        assert!(d.equal(&d_again) && bool::try_from(d.isfinite().all()).unwrap());
        let opts = SampleOptions {
            sampler: SamplerKind::Ddim,
            steps: 5,
            eta: 0.0,
            guidance: 1.0,
            final_x0: false,
            inpaint: None,
        };
        let a = m.sample(&cond(&b), &noise, &opts, |_| None).unwrap();
        assert!(!d.equal(&a), "{p:?}: the samplers gave the same latent");
        let again = m.sample(&cond(&b), &noise, &opts, |_| None).unwrap();
        assert_eq!(a.size(), vec![2, 3, 8, 8]);
        assert!(a.equal(&again), "{p:?}");
        assert!(bool::try_from(a.isfinite().all()).unwrap());
        // The inpainting blend changes the result and keeps it finite.
        let keep = Tensor::ones([1, 1, 8, 8], (Kind::Float, Device::Cpu));
        let opts = SampleOptions {
            sampler: SamplerKind::Ddim,
            steps: 5,
            eta: 0.0,
            guidance: 1.0,
            final_x0: false,
            inpaint: Some((&b.z0, &keep)),
        };
        let blended = m.sample(&cond(&b), &noise, &opts, |_| None).unwrap();
        assert!(!blended.equal(&a) && bool::try_from(blended.isfinite().all()).unwrap());
    }
}

/// Guidance and `final_x0` against DDIM written out step by step here: the conditional and the
/// null-context outputs from two separate UNet calls, combined as `u + g (c - u)`.
#[test]
fn guidance_is_one_batched_call_and_final_x0_ends_at_the_prediction() {
    let _torch = common::torch();
    let cfg = tiny(ReferenceMode::RndPrvMinus, 1, PredictionTarget::Eps);
    tch::manual_seed(11);
    let vs = VarStore::new(Device::Cpu);
    let guided = SyncDiff::build(vs.root(), &cfg, true);
    tch::manual_seed(11);
    let vs_plain = VarStore::new(Device::Cpu);
    let plain = SyncDiff::new(vs_plain.root(), &cfg);
    // A null context that is not zero, as after training.
    tch::no_grad(|| {
        let null = guided.null_context().unwrap();
        assert_eq!(null.size(), vec![1, i64::from(cfg.context_tokens()), 16]);
        null.shallow_clone().copy_(&(null.randn_like() * 0.5));
    });
    let b = batch(2, 1);
    let noise = Tensor::randn([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let opts = |guidance: f64, final_x0: bool| SampleOptions {
        sampler: SamplerKind::Ddim,
        steps: 4,
        eta: 0.0,
        guidance,
        final_x0,
        inpaint: None,
    };
    // Guidance 1 is the plain model: same weights, one pass, the null context unused.
    let one = guided
        .sample(&cond(&b), &noise, &opts(1.0, false), |_| None)
        .unwrap();
    let base = plain
        .sample(&cond(&b), &noise, &opts(1.0, false), |_| None)
        .unwrap();
    assert!(one.equal(&base));
    // A model without a null context refuses guidance.
    let e = plain
        .sample(&cond(&b), &noise, &opts(2.0, false), |_| None)
        .unwrap_err();
    assert!(e
        .to_string()
        .starts_with("guidance 2 needs a model trained with audio dropout"));

    let null = guided.null_context().unwrap().expand_as(&b.context);
    let uncond = Conditioning {
        context: &null,
        ..cond(&b)
    };
    let s = guided.schedule();
    for (g, final_x0) in [(2.5, false), (1.0, true), (1.5, true)] {
        let got = guided
            .sample(&cond(&b), &noise, &opts(g, final_x0), |_| None)
            .unwrap();
        let timesteps = s.ddim_timesteps(4);
        let mut x = noise.shallow_clone();
        tch::no_grad(|| {
            for (i, &t) in timesteps.iter().enumerate() {
                let tt = Tensor::full([2], t, (Kind::Int64, Device::Cpu));
                let c = guided.predict(&x, &tt, &cond(&b), false).unwrap();
                let u = guided.predict(&x, &tt, &uncond, false).unwrap();
                let out = &u + (&c - &u) * g;
                x = if final_x0 && i + 1 == timesteps.len() {
                    s.x0_at(&out, t, &x)
                } else {
                    s.ddim_step(&out, t, &x, 4, 0.0, None)
                };
            }
        });
        let err = f64::try_from((&got - &x).abs().max()).unwrap();
        assert!(
            err < 1e-4,
            "guidance {g}, final_x0 {final_x0}: max error {err}"
        );
        if g > 1.0 {
            assert!(
                !got.allclose(&base, 1e-3, 1e-3, false),
                "guidance {g} changed nothing"
            );
        }
    }
    let last_x0 = guided
        .sample(&cond(&b), &noise, &opts(1.0, true), |_| None)
        .unwrap();
    assert!(!last_x0.equal(&base), "final_x0 changed nothing");
}

#[test]
fn audio_dropout_replaces_exactly_the_dropped_rows() {
    let _torch = common::torch();
    let cfg = tiny(ReferenceMode::RndPrvMinus, 1, PredictionTarget::Eps);
    let vs = VarStore::new(Device::Cpu);
    let m = SyncDiff::build(vs.root(), &cfg, true);
    let tokens = i64::from(cfg.context_tokens());
    let context = Tensor::randn([3, tokens, 16], (Kind::Float, Device::Cpu));
    let drop = Tensor::from_slice(&[false, true, false]);
    let out = m.drop_context(&context, &drop).unwrap();
    assert!(out.get(0).equal(&context.get(0)) && out.get(2).equal(&context.get(2)));
    assert!(out.get(1).equal(&m.null_context().unwrap().get(0)));
    let plain = SyncDiff::new(VarStore::new(Device::Cpu).root(), &cfg);
    assert!(plain.null_context().is_none());
    assert!(plain.drop_context(&context, &drop).is_err());
}
