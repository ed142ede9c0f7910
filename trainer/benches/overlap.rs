//! The training step (`Trainer::step`) on 2 MPI ranks with the gradient all-reduce overlapped
//! with the backward pass (`dist.overlap: true`) against the same step without overlap,
//! interleaved on the same pre-built batches, at the debug and the mid-size configuration. Also
//! the exposed all-reduce per step for both: from the end of the backward pass to the last
//! bucket reduced (overlap), or the whole all-reduce (no overlap).
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench overlap
//! BENCH_REPS=20 BENCH_THREADS=1 cargo bench -p syncdiff-trainer --bench overlap
//! ```
//! Started without `mpirun`, it starts itself under `mpirun -n 2`. On a 2-core machine with one
//! intra-op thread per rank there is no idle core for the communication thread: what overlap
//! hides here is bounded by that, and the figures say how much it was.

mod common;

use std::cell::RefCell;

use common::{debug_config, prebuilt_rank_steps, with_dataset, MID_SIZE};
use syncdiff_devkit::env_or;
use syncdiff_devkit::stats::{interleave, Comparison};
use syncdiff_model::config::DistBackend;
use syncdiff_trainer::data::Batch;
use syncdiff_trainer::dist::Runtime;
use syncdiff_trainer::trainer::Trainer;
use tch::Device;

fn main() -> anyhow::Result<()> {
    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_none() {
        return common::relaunch(2);
    }
    let threads = env_or("BENCH_THREADS", 1);
    tch::set_num_threads(threads as i32);
    let reps = env_or("BENCH_REPS", 12);
    let rt = Runtime::init()?;
    // Each rank prepares its own copy of the synthetic data (no shared directory to race on).
    let dir = tempfile::tempdir()?;
    if rt.is_main() {
        println!(
            "Trainer::step with / without dist.overlap, 2 ranks, {threads} thread(s) each, \
             {reps} interleaved repetitions"
        );
    }
    let mut mid = vec!["data.resolution=128"];
    mid.extend_from_slice(MID_SIZE);
    for (name, sets) in [("debug config", vec![]), ("mid-size config", mid)] {
        let config = with_dataset(dir.path(), debug_config(&sets)?)?;
        let prebuilt = prebuilt_rank_steps(&config, 8, rt.rank() as u64, 2)?;
        let mut on = config.clone();
        on.dist.overlap = true;
        let mut off = config.clone();
        off.dist.overlap = false;
        let mut with = Trainer::new(&on, &rt, Device::Cpu, DistBackend::Mpi)?;
        let mut without = Trainer::new(&off, &rt, Device::Cpu, DistBackend::Mpi)?;
        let lr = config.train.lr;
        let k = RefCell::new(0usize);
        // Per side, the exposed all-reduce of each timed step.
        let exposed = RefCell::new((Vec::new(), Vec::new()));
        let step = |trainer: &mut Trainer<'_>, side: usize| -> anyhow::Result<f64> {
            let mut k = k.borrow_mut();
            *k += 1;
            let b: Vec<Batch> = prebuilt[*k % prebuilt.len()]
                .iter()
                .map(|b| b.with_audio_of(b))
                .collect();
            let st = trainer.step(*k as u64, lr, || Ok(b), false)?;
            let mut e = exposed.borrow_mut();
            let v = if side == 0 { &mut e.0 } else { &mut e.1 };
            v.push(st.all_reduce.as_secs_f64());
            Ok(st.total.as_secs_f64())
        };
        for _ in 0..env_or("BENCH_WARMUP", 2) {
            step(&mut with, 0)?;
            step(&mut without, 1)?;
        }
        *exposed.borrow_mut() = (Vec::new(), Vec::new());
        let c = interleave(reps, || step(&mut with, 0), || step(&mut without, 1))?;
        let (a, b) = exposed.into_inner();
        // `interleave` runs each side once before the timed repetitions: drop those.
        let exposed = Comparison {
            a: a[1..].to_vec(),
            b: b[1..].to_vec(),
        }
        .summary();
        if rt.is_main() {
            println!("{name}: step time overlap / no overlap: {}", c.summary());
            println!(
                "{name}: exposed all-reduce per step: overlap {:.1} ms, no overlap {:.1} ms \
                 (ratio {:.3}x, 95% CI {:.3}-{:.3})",
                exposed.a_median * 1e3,
                exposed.b_median * 1e3,
                exposed.median,
                exposed.low,
                exposed.high
            );
        }
        with.shutdown()?;
        without.shutdown()?;
    }
    Ok(())
}
