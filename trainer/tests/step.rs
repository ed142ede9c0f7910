//! A training step end to end on a synthetic data set: synth -> ingest -> sampler -> batch ->
//! loss -> AdamW. The loss falls.
#![allow(clippy::unwrap_used)]

mod common;

use syncdiff_dataprep::store::Dataset;
use syncdiff_model::config::Config;
use syncdiff_trainer::data::{Batch, LoaderState, Sampler};
use syncdiff_trainer::optim::{AdamW, AdamWConfig};
use syncdiff_trainer::step::TrainModel;

#[test]
fn training_steps_on_synthetic_data_reduce_the_loss() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::prepared_dataset(dir.path());
    let cfg = Config::load(&common::repo().join("configs/debug.yaml"), &[]).unwrap();
    let ds = Dataset::open(&out).unwrap();
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let np = cfg.model.priors.previous_frames;
    let sampler = Sampler::new(0, cfg.train.epoch_unit, &frames, u64::from(np), 1000, 4).unwrap();

    tch::manual_seed(0);
    let model = TrainModel::new(&cfg.model, tch::Device::Cpu);
    let trainable = model.trainable();
    assert!(
        trainable.iter().any(|(n, _)| n.starts_with("unet."))
            && trainable.iter().any(|(n, _)| n.starts_with("temporal."))
    );
    let mut opt = AdamW::new(trainable, AdamWConfig::default());
    let mut state = LoaderState::default();
    let mut losses = Vec::new();
    for _ in 0..60 {
        let order = sampler.permutation(state.epoch);
        let specs = sampler.step(state, 0, 1, 4, &order).concat();
        let batch = Batch::read(
            &ds,
            &specs,
            np,
            u64::from(cfg.model.audio_encoder.context_frames),
        )
        .unwrap();
        assert_eq!(batch.z0.size(), vec![4, 3, 8, 8]);
        opt.zero_grad();
        let loss = model.loss(&batch, true).unwrap();
        loss.backward();
        opt.step(3e-3);
        losses.push(f64::try_from(&loss).unwrap());
        state = sampler.advance(state);
    }
    let first: f64 = losses[..10].iter().sum::<f64>() / 10.0;
    let last: f64 = losses[50..].iter().sum::<f64>() / 10.0;
    println!("loss: first 10 steps {first:.4}, last 10 steps {last:.4}");
    assert!(last < 0.5 * first, "loss did not fall: {first} -> {last}");
}

#[test]
fn layerdrop_decisions_follow_each_samples_seed() {
    use syncdiff_model::config::Override;
    let dir = tempfile::tempdir().unwrap();
    let out = common::prepared_dataset(dir.path());
    let sets: Vec<Override> = [
        "model.audio_encoder.kind=avhubert",
        "model.audio_encoder.embed_dim=16",
        "model.audio_encoder.layers=6",
        "model.audio_encoder.heads=2",
        "model.audio_encoder.ffn_dim=32",
        "model.audio_encoder.frozen_layers=1",
        "model.audio_encoder.pos_conv_kernel=4",
        "model.audio_encoder.pos_conv_groups=2",
        "model.audio_encoder.dropout=0.0",
        "model.audio_encoder.attention_dropout=0.0",
        "model.audio_encoder.layerdrop=0.5",
    ]
    .iter()
    .map(|s| Override::parse(s).unwrap())
    .collect();
    let cfg = Config::load(&common::repo().join("configs/debug.yaml"), &sets).unwrap();
    let ds = Dataset::open(&out).unwrap();
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let np = cfg.model.priors.previous_frames;
    let sampler = Sampler::new(0, cfg.train.epoch_unit, &frames, u64::from(np), 1000, 4).unwrap();
    let order = sampler.permutation(0);
    let specs = sampler
        .step(LoaderState::default(), 0, 1, 4, &order)
        .concat();
    let ctx = u64::from(cfg.model.audio_encoder.context_frames);
    let batch = Batch::read(&ds, &specs, np, ctx).unwrap();
    tch::manual_seed(0);
    let model = TrainModel::new(&cfg.model, tch::Device::Cpu);
    // Same seeds: the same layers run (no dropout), whatever the global RNG did in between.
    let a = model.context(&batch, true);
    let _ = tch::Tensor::randn([100], (tch::Kind::Float, tch::Device::Cpu));
    let b = model.context(&batch, true);
    assert_eq!(f64::try_from((&a - &b).abs().max()).unwrap(), 0.0);
    // A sample alone gives the same context as inside the batch.
    let one = Batch::read(&ds, &specs[2..3], np, ctx).unwrap();
    let c = model.context(&one, true);
    assert_eq!(
        f64::try_from((a.narrow(0, 2, 1) - &c).abs().max()).unwrap(),
        0.0
    );
    // Other seeds drop other layers: some sample's context changes; in eval no layer drops.
    let mut other = Batch::read(&ds, &specs, np, ctx).unwrap();
    other.seeds.iter_mut().for_each(|s| *s ^= 0x5eed);
    let d = model.context(&other, true);
    assert!(f64::try_from((&a - &d).abs().max()).unwrap() > 1e-6);
    let e = model.context(&batch, false);
    let f = model.context(&other, false);
    assert_eq!(f64::try_from((&e - &f).abs().max()).unwrap(), 0.0);
}

#[test]
fn pose_noise_perturbs_training_only_and_follows_each_samples_seed() {
    use syncdiff_model::config::Override;
    let dir = tempfile::tempdir().unwrap();
    let out = common::prepared_dataset(dir.path());
    let load = |noise: &str| {
        let sets = [Override::parse(&format!("model.priors.previous_noise={noise}")).unwrap()];
        Config::load(&common::repo().join("configs/debug.yaml"), &sets).unwrap()
    };
    let (plain, noisy) = (load("0.0"), load("1.0"));
    let ds = Dataset::open(&out).unwrap();
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let np = plain.model.priors.previous_frames;
    let sampler = Sampler::new(0, plain.train.epoch_unit, &frames, u64::from(np), 1000, 4).unwrap();
    let specs = sampler
        .step(LoaderState::default(), 0, 1, 4, &sampler.permutation(0))
        .concat();
    let ctx = u64::from(plain.model.audio_encoder.context_frames);
    let batch = Batch::read(&ds, &specs, np, ctx).unwrap();
    let model = |cfg: &Config| {
        tch::manual_seed(0);
        TrainModel::new(&cfg.model, tch::Device::Cpu)
    };
    let (a, b) = (model(&plain), model(&noisy));
    let loss = |m: &TrainModel, train: bool| f64::try_from(m.loss(&batch, train).unwrap()).unwrap();
    // Training: the pose frame is perturbed, the same way every time (keyed by sample seeds).
    assert_ne!(loss(&a, true), loss(&b, true));
    let _ = tch::Tensor::randn([100], (tch::Kind::Float, tch::Device::Cpu));
    assert_eq!(loss(&b, true), loss(&b, true));
    // Evaluation: no noise.
    assert_eq!(loss(&a, false), loss(&b, false));
}
