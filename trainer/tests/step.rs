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
