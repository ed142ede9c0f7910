//! A training step end to end on a synthetic data set: synth -> ingest -> sampler -> batch ->
//! loss -> AdamW. The loss falls.
#![allow(clippy::unwrap_used)]

use crate::common;

use syncdiff_dataset::shards::Dataset;
use syncdiff_model::config::Config;
use syncdiff_trainer::data::{Batch, LoaderState, SampleSpec, Sampler};
use syncdiff_trainer::model::TrainModel;
use syncdiff_trainer::optim::{AdamW, AdamWConfig, Flat};
use tch::Kind;

#[test]
fn training_steps_on_synthetic_data_reduce_the_loss() {
    let _torch = common::torch();
    let out = common::dataset();
    let cfg = Config::load(&common::repo().join("configs/debug.yaml"), &[]).unwrap();
    let ds = Dataset::open(out).unwrap();
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let np = cfg.model.priors.previous_frames;
    let sampler = Sampler::new(0, cfg.train.epoch_unit, &frames, u64::from(np), 1000, 4).unwrap();

    tch::manual_seed(0);
    let model = TrainModel::new(&cfg, tch::Device::Cpu);
    let trainable = model.trainable();
    assert!(
        trainable.iter().any(|(n, _)| n.starts_with("unet."))
            && trainable.iter().any(|(n, _)| n.starts_with("temporal."))
    );
    let mut opt = AdamW::new(
        Flat::new(trainable, 1 << 22).unwrap(),
        AdamWConfig::default(),
    );
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
    let _torch = common::torch();
    use syncdiff_model::config::Override;
    let out = common::dataset();
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
    let ds = Dataset::open(out).unwrap();
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
    let model = TrainModel::new(&cfg, tch::Device::Cpu);
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
    let _torch = common::torch();
    use syncdiff_model::config::Override;
    let out = common::dataset();
    let load = |noise: &str| {
        let sets = [Override::parse(&format!("model.priors.previous_noise={noise}")).unwrap()];
        Config::load(&common::repo().join("configs/debug.yaml"), &sets).unwrap()
    };
    let (plain, noisy) = (load("0.0"), load("1.0"));
    let ds = Dataset::open(out).unwrap();
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
        TrainModel::new(cfg, tch::Device::Cpu)
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

/// Host reads (each a device synchronisation on a GPU) per training step: the loss, the gradient
/// norm, and with several ranks the stop flag; never one per tensor, per micro-batch or per
/// sample (before: one norm per parameter tensor and one loss per micro-batch).
#[test]
fn a_training_step_reads_three_values_back_at_most() {
    let _torch = common::torch();
    use std::sync::Arc;
    use syncdiff_model::config::{DistBackend, Override};
    use syncdiff_trainer::data::{Loader, RankShare};
    use syncdiff_trainer::trainer::Trainer;
    let out = common::dataset();
    let sets: Vec<Override> = [
        format!("data.dataset={}", out.display()),
        "train.max_micro_batch=1".into(), // 4 micro-batches per step
    ]
    .iter()
    .map(|s| Override::parse(s).unwrap())
    .collect();
    let cfg = Config::load(&common::repo().join("configs/debug.yaml"), &sets).unwrap();
    assert!(cfg.train.grad_clip.is_some());
    let rt = syncdiff_trainer::dist::Runtime::init().unwrap();
    let ds = Arc::new(Dataset::open(out).unwrap());
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let np = cfg.model.priors.needed_previous_frames();
    let sampler =
        Arc::new(Sampler::new(0, cfg.train.epoch_unit, &frames, u64::from(np), 1000, 4).unwrap());
    let share = RankShare {
        rank: 0,
        world: 1,
        micro: 1,
        previous: np,
        context: u64::from(cfg.model.audio_encoder.context_frames),
    };
    let mut loader = Loader::new(ds, sampler.clone(), share, 0);
    let mut trainer = Trainer::new(&cfg, &rt, tch::Device::Cpu, DistBackend::Mpi).unwrap();
    let mut state = LoaderState::default();
    for step in 1..=3 {
        let batches = loader.next(state).unwrap();
        assert_eq!(batches.len(), 4);
        let before = syncdiff_trainer::host::reads();
        let st = trainer.step(step, 1e-4, || Ok(batches), false).unwrap();
        assert!(st.loss.is_finite() && st.grad_norm.is_some());
        // One rank: the loss and the gradient norm (the stop flag travels only between ranks).
        assert_eq!(syncdiff_trainer::host::reads() - before, 2, "step {step}");
        state = sampler.advance(state);
    }
}

/// The files of the training step read tensors back only through `host::scalar` (counted
/// above); a direct read would slip past the count.
#[test]
fn the_step_reads_tensors_back_only_through_the_counted_helper() {
    let _torch = common::torch();
    let root = common::repo();
    let files = [
        "trainer/src/trainer.rs",
        "trainer/src/model.rs",
        "trainer/src/data/batch.rs",
        "trainer/src/optim/adamw.rs",
        "trainer/src/optim/ema.rs",
        "trainer/src/optim/flat.rs",
        "trainer/src/optim/schedule.rs",
        "trainer/src/dist/grad_sync.rs",
        "trainer/src/dist/nccl.rs",
        "model/src/syncdiff.rs",
        "model/src/diffusion.rs",
        "model/src/unet.rs",
        "model/src/audio.rs",
        "model/src/avhubert.rs",
        "model/src/temporal.rs",
    ];
    let reads = [
        "f64::try_from(",
        "f32::try_from(",
        "i64::try_from(",
        "bool::try_from(",
        "Vec::try_from(",
        "::<f32>::try_from(",
        ".double_value(",
        ".int64_value(",
    ];
    // Allowed: loading checkpoint state (once per resume) and the start-up broadcast.
    let allowed = [
        "self.step = step.int64_value",
        "self.updates = u.int64_value",
        "Vec::try_from(p.to_kind(Kind::Float).flatten(0, -1))",
    ];
    let mut found = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(root.join(f)).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, line) in code.lines().enumerate() {
            if reads.iter().any(|r| line.contains(r)) && !allowed.iter().any(|a| line.contains(a)) {
                found.push(format!("{f}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "host reads outside host::scalar:\n{}",
        found.join("\n")
    );
}

/// The samples of the first step of 4 on one rank, the previous frames and the audio context.
fn first_step(ds: &Dataset, cfg: &Config) -> (Vec<SampleSpec>, u32, u64) {
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let np = cfg.model.priors.needed_previous_frames();
    let sampler = Sampler::new(0, cfg.train.epoch_unit, &frames, u64::from(np), 1000, 4).unwrap();
    let specs = sampler
        .step(LoaderState::default(), 0, 1, 4, &sampler.permutation(0))
        .concat();
    (specs, np, u64::from(cfg.model.audio_encoder.context_frames))
}

/// Every trained parameter takes part in the loss: a parameter whose gradient is exactly zero
/// after a step would be dead weight in the model (or a wiring bug).
#[test]
fn every_trained_parameter_gets_a_gradient() {
    let _torch = common::torch();
    let out = common::dataset();
    let cfg = Config::load(&common::repo().join("configs/debug.yaml"), &[]).unwrap();
    let ds = Dataset::open(out).unwrap();
    let (specs, np, ctx) = first_step(&ds, &cfg);
    tch::manual_seed(0);
    let model = TrainModel::new(&cfg, tch::Device::Cpu);
    let batch = Batch::read(&ds, &specs, np, ctx).unwrap();
    model.loss(&batch, true).unwrap().backward();
    let dead: Vec<String> = model
        .trainable()
        .iter()
        .filter(|(_, p)| {
            let g = p.grad();
            !g.defined() || f64::try_from(g.abs().max()).unwrap() == 0.0
        })
        .map(|(n, _)| n.clone())
        .collect();
    assert!(dead.is_empty(), "no gradient: {dead:?}");
}

/// A batch read for a GPU keeps the frames in float16 as stored (half the bytes to copy) and
/// widens them when moved: on arrival it equals the float32 batch read for the CPU. (Pinning,
/// the other half of the GPU path, needs a GPU.)
#[test]
fn a_float16_batch_arrives_as_the_float32_batch() {
    let _torch = common::torch();
    let out = common::dataset();
    let cfg = Config::load(&common::repo().join("configs/debug.yaml"), &[]).unwrap();
    let ds = Dataset::open(out).unwrap();
    let (specs, np, ctx) = first_step(&ds, &cfg);
    let stored = Batch::read_stored(&ds, &specs, np, ctx).unwrap();
    let wide = Batch::read(&ds, &specs, np, ctx).unwrap();
    assert_eq!(
        (stored.z0.kind(), wide.z0.kind()),
        (Kind::Half, Kind::Float)
    );
    let moved = stored.to(tch::Device::Cpu);
    let pairs = [
        (&moved.z0, &wide.z0),
        (&moved.masked, &wide.masked),
        (&moved.identity, &wide.identity),
        (&moved.previous, &wide.previous),
        (&moved.noise, &wide.noise),
        (&moved.timesteps, &wide.timesteps),
        (&moved.mel[0], &wide.mel[0]),
    ];
    for (i, (a, b)) in pairs.into_iter().enumerate() {
        assert_eq!(a.kind(), b.kind(), "field {i}");
        assert!(a.equal(b), "field {i}");
    }
    // Moving a float32 CPU batch to the CPU shares its tensors.
    assert_eq!(wide.to(tch::Device::Cpu).z0.data_ptr(), wide.z0.data_ptr());
}

/// Audio dropout: keyed per sample (the same choice for the same seed), about the configured
/// share of samples, and the dropped samples train the null context.
#[test]
fn audio_dropout_is_keyed_per_sample_and_trains_the_null_context() {
    let _torch = common::torch();
    let out = common::dataset();
    let cfg = Config::load(
        &common::repo().join("configs/debug.yaml"),
        &[syncdiff_model::config::Override::parse("train.audio_dropout=0.5").unwrap()],
    )
    .unwrap();
    let ds = Dataset::open(out).unwrap();
    let frames: Vec<u64> = ds.clips().iter().map(|c| c.frames).collect();
    let np = cfg.model.priors.previous_frames;
    let sampler = Sampler::new(0, cfg.train.epoch_unit, &frames, u64::from(np), 1000, 4).unwrap();
    tch::manual_seed(0);
    let model = TrainModel::new(&cfg, tch::Device::Cpu);
    assert!(model.trainable().iter().any(|(n, _)| n == "null_context"));
    let context = u64::from(cfg.model.audio_encoder.context_frames);
    let (mut state, mut drops, mut seen) = (LoaderState::default(), 0, 0);
    let mut with_drop = None;
    for _ in 0..12 {
        let order = sampler.permutation(state.epoch);
        let specs = sampler.step(state, 0, 1, 4, &order).concat();
        let batch = Batch::read(&ds, &specs, np, context).unwrap();
        let dropped = model.audio_dropped(&batch);
        assert_eq!(dropped, model.audio_dropped(&batch), "not deterministic");
        // The same sample (seed) gets the same choice in another batch.
        let alone = Batch::read(&ds, &specs[..1], np, context).unwrap();
        assert_eq!(model.audio_dropped(&alone)[0], dropped[0]);
        drops += dropped.iter().filter(|&&d| d).count();
        seen += dropped.len();
        if dropped.contains(&true) && with_drop.is_none() {
            with_drop = Some(batch);
        }
        state = sampler.advance(state);
    }
    println!("audio dropout 0.5: {drops} of {seen} samples dropped");
    assert!(
        drops * 5 >= seen && drops * 5 <= 4 * seen,
        "{drops} of {seen}"
    );
    let batch = with_drop.unwrap();
    let null = model
        .trainable()
        .into_iter()
        .find(|(n, _)| n == "null_context")
        .unwrap()
        .1;
    model.loss(&batch, true).unwrap().backward();
    let g = f64::try_from(null.grad().abs().sum(Kind::Float)).unwrap();
    assert!(g > 0.0, "no gradient reached the null context");
    // Without training (validation) nothing is dropped: the loss equals the no-dropout model's.
    let mut plain_cfg = cfg.clone();
    plain_cfg.train.audio_dropout = 0.0;
    tch::manual_seed(0);
    let plain = TrainModel::new(&plain_cfg, tch::Device::Cpu);
    let a = f64::try_from(model.loss(&batch, false).unwrap()).unwrap();
    let b = f64::try_from(plain.loss(&batch, false).unwrap()).unwrap();
    assert_eq!(a, b);
}
