//! The training step (`Trainer::step`, 1 rank, CPU) on all of this machine's cores against the
//! same step on one libtorch thread, interleaved on the same trainer and pre-built batches, in
//! fp32 and bf16, at the debug, mid-size and demo configurations (`common::step_configs`).
//! `syncdiff-train` gives each CPU rank the node's cores divided among its ranks
//! (`dist.cpu_threads: 0`); this says whether more threads pay on this kind of machine. A ratio
//! above 1 means the step is slower on all cores than on one.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench cpu_threads
//! BENCH_REPS=20 BENCH_THREADS=4 cargo bench -p syncdiff-trainer --bench cpu_threads
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
    // What syncdiff-train gives a lone CPU rank by default.
    let cores = syncdiff_runtime::ranks::cpu_threads_per_rank(1);
    let many = env_or("BENCH_THREADS", cores);
    let reps = env_or("BENCH_REPS", 10);
    let rt = Runtime::init()?;
    let dir = tempfile::tempdir()?;
    println!(
        "Trainer::step on {many} libtorch threads / on 1 ({cores} cores here); \
         {reps} interleaved repetitions"
    );
    for (name, config) in common::step_configs()? {
        let config = with_dataset(dir.path(), config)?;
        let prebuilt = prebuilt_steps(&config, 8)?;
        for precision in [Precision::Fp32, Precision::Bf16] {
            let mut config = config.clone();
            config.train.precision = precision;
            let lr = config.train.lr;
            let trainer =
                std::cell::RefCell::new(Trainer::new(&config, &rt, Device::Cpu, DistBackend::Mpi)?);
            let k = std::cell::RefCell::new(0usize);
            let on = |threads: usize| {
                tch::set_num_threads(threads as i32);
                timed_step(
                    &mut trainer.borrow_mut(),
                    &prebuilt,
                    &mut k.borrow_mut(),
                    lr,
                )
            };
            for _ in 0..env_or("BENCH_WARMUP", 2) {
                on(many)?;
                on(1)?;
            }
            let c = interleave(reps, || on(many), || on(1))?;
            let s = c.summary();
            println!(
                "{name}, {}: {many} threads {:.3} s, 1 thread {:.3} s per step: ratio {:.2}x \
                 (95% CI {:.2}-{:.2})",
                precision.name(),
                s.a_median,
                s.b_median,
                s.median,
                s.low,
                s.high
            );
        }
    }
    Ok(())
}
