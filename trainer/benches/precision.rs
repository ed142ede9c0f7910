//! The training step (`Trainer::step`) under `train.precision: bf16` against the same step under
//! fp32, interleaved on the same pre-built batches, at the debug and the mid-size configuration
//! (1 rank), and at the demo's (configs/demo.yaml) with one rank's batch of 8. On CPU it depends
//! on the cores: with AVX512-BF16 (the project's AMD EPYC machines) libtorch's bf16 matmuls and
//! convolutions are faster; without it bf16 only adds casts. Mind the threads: on 2 threads this
//! machine's fp32 step is several times slower than on 1 (docs/benchmarks.md), which flatters
//! bf16. The point of bf16 is GPU tensor cores, which this bench does not reach.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench precision
//! BENCH_REPS=20 BENCH_THREADS=1 cargo bench -p syncdiff-trainer --bench precision
//! ```

mod common;

use common::{debug_config, prebuilt_steps, with_dataset, MID_SIZE};
use syncdiff_devkit::stats::interleave;
use syncdiff_devkit::{env_or, repo};
use syncdiff_model::config::{Config, DistBackend, Override, Precision};
use syncdiff_trainer::data::Batch;
use syncdiff_trainer::dist::Runtime;
use syncdiff_trainer::trainer::Trainer;
use tch::Device;

fn main() -> anyhow::Result<()> {
    let threads = common::threads();
    let reps = env_or("BENCH_REPS", 20);
    let rt = Runtime::init()?;
    let dir = tempfile::tempdir()?;
    println!(
        "Trainer::step bf16 / fp32 (1 rank); {threads} threads, {reps} interleaved repetitions"
    );
    let mut mid = vec!["data.resolution=128"];
    mid.extend_from_slice(MID_SIZE);
    // The demo's model with one rank's share of its batch (16 on 2 ranks); run it with
    // BENCH_THREADS=1 for one of the demo's two ranks.
    let demo = Config::load(
        &repo().join("configs/demo.yaml"),
        &[Override::parse("train.global_batch=8")?],
    )?;
    for (name, config) in [
        ("debug config", debug_config(&[])?),
        ("mid-size config", debug_config(&mid)?),
        ("demo config, batch 8", demo),
    ] {
        let mut config = with_dataset(dir.path(), config)?;
        config.train.precision = Precision::Fp32;
        let prebuilt = prebuilt_steps(&config, 8)?;
        let mut bf16_config = config.clone();
        bf16_config.train.precision = Precision::Bf16;
        let mut fp32 = Trainer::new(&config, &rt, Device::Cpu, DistBackend::Mpi)?;
        let mut bf16 = Trainer::new(&bf16_config, &rt, Device::Cpu, DistBackend::Mpi)?;
        let mut k = 0usize;
        let lr = config.train.lr;
        let step = |trainer: &mut Trainer<'_>, k: &mut usize| -> anyhow::Result<f64> {
            *k += 1;
            let b: Vec<Batch> = prebuilt[*k % prebuilt.len()]
                .iter()
                .map(|b| b.with_audio_of(b))
                .collect();
            let st = trainer.step(*k as u64, lr, || Ok(b), false)?;
            Ok(st.total.as_secs_f64())
        };
        for _ in 0..env_or("BENCH_WARMUP", 3) {
            step(&mut bf16, &mut k)?;
            step(&mut fp32, &mut k)?;
        }
        let k = std::cell::RefCell::new(k);
        let step = std::cell::RefCell::new(step);
        let c = interleave(
            reps,
            || (step.borrow_mut())(&mut bf16, &mut k.borrow_mut()),
            || (step.borrow_mut())(&mut fp32, &mut k.borrow_mut()),
        )?;
        println!("{name}: bf16 / fp32 step time: {}", c.summary());
    }
    Ok(())
}
