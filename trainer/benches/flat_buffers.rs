//! Flat parameter/gradient/moment/EMA buffers against the per-tensor layout they replaced, at
//! the mid-size configuration on CPU. The per-tensor side is the same code with one bucket per
//! tensor (`dist.bucket_mb` below any tensor), which issues the operations of the old
//! per-tensor AdamW, EMA, clipping and zeroing.
//!
//! Measured, interleaved (median ratio flat / per-tensor with a bootstrap 95% interval):
//! (1) the whole `Trainer::step` (one rank, pre-built batches: data, forward, backward,
//!     clipping, AdamW, EMA) - fewer launches must not cost CPU time: target upper bound <= 1.02;
//! (2) the update alone (clipping, AdamW, EMA, zeroing) on the same parameters.
//! Counted (libtorch's operator observers, `opcount`): the operations of the update and of the
//! whole step, for both layouts.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench flat_buffers
//! BENCH_REPS=20 BENCH_THREADS=2 cargo bench -p syncdiff-trainer --bench flat_buffers
//! ```

mod common;

use std::time::Instant;

use common::{debug_config, with_dataset, MID_SIZE};
use syncdiff_devkit::env_or;
use syncdiff_devkit::stats::interleave;
use syncdiff_model::config::{Config, DistBackend};
use syncdiff_trainer::data::Batch;
use syncdiff_trainer::dist::Runtime;
use syncdiff_trainer::model::TrainModel;
use syncdiff_trainer::opcount;
use syncdiff_trainer::optim::{bucket_elements, clip_grad_norm, AdamW, Ema, Flat};
use syncdiff_trainer::trainer::Trainer;
use tch::{Device, Kind, Tensor};

/// `dist.bucket_mb` below any tensor's size: one bucket per tensor.
const PER_TENSOR_MB: f64 = 1e-6;

/// The update of one step (what `Trainer::step` runs after the all-reduce) on a layout.
struct Update {
    flat: Flat,
    opt: AdamW,
    ema: Ema,
    clip: f64,
}

impl Update {
    fn new(config: &Config, bucket_elems: usize) -> anyhow::Result<Self> {
        tch::manual_seed(config.train.seed as i64);
        let model = TrainModel::new(config, Device::Cpu);
        let flat = Flat::new(model.trainable(), bucket_elems)?;
        // Gradients of a realistic scale (a backward pass would give the same operations).
        tch::no_grad(|| {
            for g in flat.grads() {
                g.shallow_clone().copy_(&(g.randn_like() * 1e-3));
            }
        });
        let t = &config.train;
        let opt = AdamW::new(flat.share(), t.into());
        let ema = Ema::new(flat.share(), t.ema.decay, t.ema.warmup);
        Ok(Self {
            flat,
            opt,
            ema,
            clip: t.grad_clip.unwrap_or(1.0),
        })
    }

    /// Clipping, AdamW, zeroing, EMA (the gradients stay zero after the first: the same work).
    fn run(&mut self) -> anyhow::Result<f64> {
        let start = Instant::now();
        clip_grad_norm(self.flat.grads(), self.clip)?;
        self.opt.step(1e-4);
        self.opt.zero_grad();
        self.ema.update();
        Ok(start.elapsed().as_secs_f64())
    }
}

fn main() -> anyhow::Result<()> {
    let threads = common::threads();
    let reps = env_or("BENCH_REPS", 20);
    let rt = Runtime::init()?;
    let dir = tempfile::tempdir()?;
    let mut sets = vec!["data.resolution=128"];
    sets.extend_from_slice(MID_SIZE);
    let flat_config = with_dataset(dir.path(), debug_config(&sets)?)?;
    let mut per_config = flat_config.clone();
    per_config.dist.bucket_mb = PER_TENSOR_MB;
    println!(
        "flat buffers (dist.bucket_mb={}) vs one bucket per tensor (dist.bucket_mb={PER_TENSOR_MB}); mid-size \
         config (paper UNet layout at width 64, 32x32 latents, mel encoder 768); 1 rank, \
         {threads} threads, {reps} interleaved repetitions",
        flat_config.dist.bucket_mb
    );

    // (2) and the operation counts of the update.
    let mut flat_update = Update::new(&flat_config, bucket_elements(flat_config.dist.bucket_mb))?;
    let mut per_update = Update::new(&per_config, 1)?;
    let tensors = flat_update.flat.params().len();
    let elements: usize = flat_update.flat.params().iter().map(Tensor::numel).sum();
    let (_, flat_ops) = opcount::count(|| flat_update.run());
    let (_, per_ops) = opcount::count(|| per_update.run());
    let update = interleave(reps, || flat_update.run(), || per_update.run())?;
    let buckets = flat_update.flat.buckets().len();
    drop((flat_update, per_update));

    // (1) the whole step on pre-built batches.
    let prebuilt = common::prebuilt_steps(&flat_config, 8)?;
    let mut flat_trainer = Trainer::new(&flat_config, &rt, Device::Cpu, DistBackend::Mpi)?;
    let mut per_trainer = Trainer::new(&per_config, &rt, Device::Cpu, DistBackend::Mpi)?;
    let lr = flat_config.train.lr;
    let step = |trainer: &mut Trainer<'_>, k: u64| -> anyhow::Result<f64> {
        let batches: Vec<Batch> = prebuilt[k as usize % prebuilt.len()]
            .iter()
            .map(|b| b.with_audio_of(b))
            .collect();
        Ok(trainer
            .step(k, lr, || Ok(batches), false)?
            .total
            .as_secs_f64())
    };
    let warmup = env_or("BENCH_WARMUP", 3);
    for k in 1..=warmup as u64 {
        step(&mut flat_trainer, k)?;
        step(&mut per_trainer, k)?;
    }
    let (_, flat_step_ops) = opcount::count(|| step(&mut flat_trainer, 100));
    let (_, per_step_ops) = opcount::count(|| step(&mut per_trainer, 100));
    let (mut kf, mut kp) = (200u64, 200u64);
    let whole = interleave(
        reps,
        || {
            kf += 1;
            step(&mut flat_trainer, kf)
        },
        || {
            kp += 1;
            step(&mut per_trainer, kp)
        },
    )?;
    // The two layouts train the same model on the same batches: their weights stay close.
    let (a, b) = (flat_trainer.snapshot().0, per_trainer.snapshot().0);
    let mut worst = 0.0f64;
    for ((_, x), (_, y)) in a.iter().zip(&b) {
        if x.is_floating_point() {
            let d = f64::try_from((x - y).abs().max().to_kind(Kind::Double))?;
            worst = worst.max(d);
        }
    }

    let count = |c: Option<u64>| c.map_or("-".to_string(), |n| n.to_string());
    println!("{tensors} trained tensors, {elements} elements, {buckets} flat buckets");
    println!(
        "operations of the update (clip, AdamW, zero, EMA): flat {}, per-tensor {}",
        count(flat_ops),
        count(per_ops)
    );
    println!(
        "operations of the whole step: flat {}, per-tensor {}",
        count(flat_step_ops),
        count(per_step_ops)
    );
    println!("(1) whole step, flat / per-tensor: {}", whole.summary());
    println!("(2) update alone, flat / per-tensor: {}", update.summary());
    // Warm-up, the counted step, interleave's own warm-up, the repetitions.
    let steps = warmup + 1 + 1 + reps;
    println!("largest weight difference between the layouts after {steps} steps: {worst:.2e}");
    Ok(())
}
