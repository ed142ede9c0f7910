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

use common::{prebuilt_steps, timed_step, with_dataset};
use syncdiff_devkit::env_or;
use syncdiff_devkit::stats::interleave;
use syncdiff_model::config::{DistBackend, Precision};
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
    for (name, config) in common::step_configs()? {
        let mut config = with_dataset(dir.path(), config)?;
        config.train.precision = Precision::Fp32;
        let prebuilt = prebuilt_steps(&config, 8)?;
        let mut bf16_config = config.clone();
        bf16_config.train.precision = Precision::Bf16;
        let mut fp32 = Trainer::new(&config, &rt, Device::Cpu, DistBackend::Mpi)?;
        let mut bf16 = Trainer::new(&bf16_config, &rt, Device::Cpu, DistBackend::Mpi)?;
        let k = std::cell::RefCell::new(0usize);
        let lr = config.train.lr;
        for _ in 0..env_or("BENCH_WARMUP", 3) {
            timed_step(&mut bf16, &prebuilt, &mut k.borrow_mut(), lr)?;
            timed_step(&mut fp32, &prebuilt, &mut k.borrow_mut(), lr)?;
        }
        let c = interleave(
            reps,
            || timed_step(&mut bf16, &prebuilt, &mut k.borrow_mut(), lr),
            || timed_step(&mut fp32, &prebuilt, &mut k.borrow_mut(), lr),
        )?;
        println!("{name}: bf16 / fp32 step time: {}", c.summary());
    }
    Ok(())
}
