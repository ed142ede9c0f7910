//! The training step of `syncdiff-train` (the loop's `Trainer::step`: data, forward and backward
//! of the whole TrainModel, clipping, AdamW, EMA) measured two ways, interleaved:
//!
//! (a) with the real loader (background reads from a prepared data set) vs a bare PyTorch eager
//!     loop over the same model on one pre-built batch (trainer/benches/torch_train_step.py, same
//!     threads, AdamW foreach=False, EMA as a for loop). Target: interval upper bound <= 1.05.
//! (c) with the real loader vs the same step fed pre-built batches from memory. Target: <= 1.05.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench train_step
//! BENCH_REPS=20 BENCH_THREADS=2 cargo bench -p syncdiff-trainer --bench train_step
//! ```

mod common;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use common::{debug_config, with_dataset, MID_SIZE};
use syncdiff_dataset::shards::Dataset;
use syncdiff_devkit::stats::{interleave, PyServer};
use syncdiff_devkit::{env_or, repo};
use syncdiff_model::config::{DistBackend, TemporalTokens};
use syncdiff_model::unet::UnetShape;
use syncdiff_trainer::data::{Batch, Loader, LoaderState};
use syncdiff_trainer::dist::Runtime;
use syncdiff_trainer::trainer::Trainer;
use tch::{Device, Tensor};

/// The debug configuration and the mid-size one (at 32x32 latents), as `--set` overrides.
fn cases() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut mid = vec!["data.resolution=128"];
    mid.extend_from_slice(MID_SIZE);
    vec![
        ("debug config (configs/debug.yaml)", vec![]),
        (
            "mid-size (paper UNet layout at width 64, 32x32 latents, mel encoder 768)",
            mid,
        ),
    ]
}

/// The batch and schedule the Python side trains on.
fn write_batch(path: &Path, b: &Batch, trainer: &Trainer<'_>) -> anyhow::Result<()> {
    let ac = Tensor::from_slice(trainer.model.denoiser().schedule().alphas_cumprod());
    let mut named: Vec<(String, Tensor)> = vec![
        ("z0".into(), b.z0.shallow_clone()),
        ("masked".into(), b.masked.shallow_clone()),
        ("identity".into(), b.identity.shallow_clone()),
        ("previous".into(), b.previous.shallow_clone()),
        ("timesteps".into(), b.timesteps.shallow_clone()),
        ("noise".into(), b.noise.shallow_clone()),
        ("offsets".into(), Tensor::from_slice(&b.offsets)),
        ("alphas_cumprod".into(), ac),
    ];
    for (i, m) in b.mel.iter().enumerate() {
        named.push((format!("mel_{i}"), m.shallow_clone()));
    }
    Tensor::write_safetensors(&named, path)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let threads = common::threads();
    let reps = env_or("BENCH_REPS", 20);
    let rt = Runtime::init()?;
    let dir = tempfile::tempdir()?;
    println!(
        "syncdiff-train step (Trainer::step, 1 rank); {threads} threads, {reps} interleaved repetitions"
    );
    for (name, sets) in cases() {
        let config = with_dataset(dir.path(), debug_config(&sets)?)?;
        let m = &config.model;
        anyhow::ensure!(
            m.priors.reference.uses_identity() && m.priors.reference.uses_bottleneck(),
            "the Python model implements the rnd+prv- prior only"
        );
        let ds = Arc::new(Dataset::open(std::path::Path::new(&config.data.dataset))?);
        let np = m.priors.needed_previous_frames();
        let plan = config.batch_plan(1)?;
        let sampler = Arc::new(syncdiff_trainer::train::sampler(&config, &ds, 1)?);
        let share = syncdiff_trainer::train::rank_share(&config, 0, 1)?;
        let mut loader = Loader::new(
            ds.clone(),
            sampler.clone(),
            share,
            config.data.prefetch as usize,
        );
        // Pre-built: the batches of the first 8 steps, read once.
        let mut prebuilt = Vec::new();
        let mut s = LoaderState::default();
        let mut direct = Loader::new(ds.clone(), sampler.clone(), share, 0);
        let read_start = std::time::Instant::now();
        for _ in 0..8 {
            prebuilt.push(direct.next(s)?);
            s = sampler.advance(s);
        }
        let read_s = read_start.elapsed().as_secs_f64() / 8.0;
        let mut trainer = Trainer::new(&config, &rt, Device::Cpu, DistBackend::Mpi)?;
        let parameters: i64 = trainer
            .model
            .trainable()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum();
        let shape = UnetShape::new(
            &m.unet,
            m.unet_in_channels(),
            m.unet_out_channels(),
            m.context_dim(),
        );
        let first = prebuilt[0]
            .first()
            .context("no micro-batch in the first step")?;
        anyhow::ensure!(
            plan.accumulation == 1,
            "the Python loop runs one micro-batch"
        );
        let batch_path = dir.path().join("batch.safetensors");
        write_batch(&batch_path, first, &trainer)?;
        let t = &config.train;
        let spec = serde_json::json!({
            "channels": shape.channels, "attention": shape.attention,
            "num_res_blocks": shape.num_res_blocks, "head_dim": shape.head_dim,
            "depth": shape.depth, "groups": shape.groups, "in_channels": shape.in_channels,
            "out_channels": shape.out_channels, "context_dim": shape.context_dim,
            "size": config.latent_side(), "threads": threads,
            "mel_input": m.audio_encoder.input_dim, "temporal_hidden": m.temporal.hidden,
            "window": m.temporal.window, "all_tokens": m.temporal.tokens == TemporalTokens::All,
            "previous": np, "latent_channels": m.latent_channels(),
            "prediction": format!("{:?}", m.diffusion.prediction).to_lowercase(),
            "lr": t.lr, "betas": t.betas, "eps": t.eps, "weight_decay": t.weight_decay,
            "grad_clip": t.grad_clip.unwrap_or(f64::INFINITY), "ema_decay": t.ema.decay,
            "parameters": parameters,
        });
        let spec_path = dir.path().join("spec.json");
        std::fs::write(&spec_path, spec.to_string())?;
        let mut py = PyServer::start(
            &repo().join("trainer/benches/torch_train_step.py"),
            &[spec_path.as_os_str(), batch_path.as_os_str()],
            &[],
        )?;
        let (mut state, mut step) = (LoaderState::default(), 0u64);
        let mut k = 0usize;
        let mut waits = Vec::new();
        let lr = t.lr;
        let mut with_loader = |trainer: &mut Trainer<'_>| -> anyhow::Result<f64> {
            step += 1;
            let st = trainer.step(step, lr, || Ok(loader.next(state)?), false)?;
            waits.push(st.data.as_secs_f64());
            state = sampler.advance(state);
            Ok(st.total.as_secs_f64())
        };
        let mut with_prebuilt = |trainer: &mut Trainer<'_>| -> anyhow::Result<f64> {
            k += 1;
            let b: Vec<Batch> = prebuilt[k % prebuilt.len()]
                .iter()
                .map(|b| b.with_audio_of(b))
                .collect();
            let st = trainer.step(k as u64, lr, || Ok(b), false)?;
            Ok(st.total.as_secs_f64())
        };
        // Warm-up beyond interleave's one repetition: the first steps of both sides are slow
        // while the allocators grow their caches.
        for _ in 0..env_or("BENCH_WARMUP", 5) {
            with_loader(&mut trainer)?;
            with_prebuilt(&mut trainer)?;
            py.step()?;
        }
        let trainer = std::cell::RefCell::new(&mut trainer);
        let a = interleave(
            reps,
            || with_loader(&mut trainer.borrow_mut()),
            || Ok(py.step()?),
        )?;
        let c = interleave(
            reps,
            || with_loader(&mut trainer.borrow_mut()),
            || with_prebuilt(&mut trainer.borrow_mut()),
        )?;
        py.finish()?;
        println!(
            "{name} ({parameters} trained parameters, batch {}):",
            plan.global_batch
        );
        println!(
            "  (a) ours with the loader / PyTorch eager loop: {}",
            a.summary()
        );
        println!(
            "  (c) ours with the loader / ours with pre-built batches: {}",
            c.summary()
        );
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            println!(
                "  reading one step's batches on the calling thread: {:.3} ms",
                read_s * 1e3
            );
            println!(
                "  median wait for the loader: {:.3} ms",
                syncdiff_devkit::stats::median(&waits) * 1e3
            );
            for (label, x) in [("a", &a), ("c", &c)] {
                let pairs: Vec<String> =
                    x.a.iter()
                        .zip(&x.b)
                        .map(|(p, q)| format!("{p:.4}/{q:.4}"))
                        .collect();
                println!("  ({label}) seconds ours/reference: {}", pairs.join(" "));
            }
        }
    }
    Ok(())
}
