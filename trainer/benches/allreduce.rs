//! Gradient all-reduce over 2 MPI ranks on the real gradient set of a configuration (the shapes
//! of every trained parameter of TrainModel), interleaved against the limit: one raw MPI
//! all-reduce of a single buffer of the same size plus one memcpy of those bytes.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench allreduce
//! ```
//! Started without `mpirun`, it starts itself under `mpirun -n 2`. Prints, per gradient set, the
//! bucketed (dist.bucket_mb) and per-tensor syncs against the limit. Target: bucketed <= 1.1x.
//! The gradient buffers are laid out as `optim::Flat` lays them out (the last one with the stop
//! slot), for buckets of dist.bucket_mb and for one bucket per tensor.

mod common;

use std::time::Instant;

use common::{debug_config, MID_SIZE};
use mpi::collective::{CommunicatorCollectives, SystemOperation};
use syncdiff_devkit::env_or;
use syncdiff_devkit::stats::interleave;
use syncdiff_trainer::dist::{GradSync, MpiGradSync, Runtime};
use syncdiff_trainer::model::TrainModel;
use syncdiff_trainer::optim::{bucket_elements, buckets};
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    if std::env::var_os("OMPI_COMM_WORLD_SIZE").is_none() {
        return common::relaunch(2);
    }
    tch::set_num_threads(1);
    let rt = Runtime::init()?;
    let comm = rt.comm();
    let reps = env_or("BENCH_REPS", 20);
    // The paper's set (2.3 GB, buffers x4 per rank) does not fit 2 ranks in this machine's 24 GB.
    let cases: [(&str, &[&str]); 2] = [
        ("debug config", &[]),
        (
            "mid-size (paper UNet layout at width 64, mel encoder 768)",
            MID_SIZE,
        ),
    ];
    if rt.is_main() {
        println!("gradient all-reduce, 2 ranks, 1 thread each, {reps} interleaved repetitions");
    }
    for (name, sets) in cases {
        let config = debug_config(sets)?;
        // The sizes of every trained parameter (in name order, as Flat sorts them); the buffers
        // are laid out from them, so the model itself need not stay in memory.
        let numels: Vec<usize> = {
            let model = TrainModel::new(&config, Device::Cpu);
            let mut named = model.trainable();
            named.sort_by(|a, b| a.0.cmp(&b.0));
            named.iter().map(|(_, t)| t.numel()).collect()
        };
        let total: usize = numels.iter().sum();
        let layout = |elems: usize| -> Vec<Tensor> {
            let groups = buckets(&numels, elems);
            let last = groups.len().saturating_sub(1);
            groups
                .iter()
                .enumerate()
                .map(|(b, r)| {
                    let n: usize = numels[r.clone()].iter().sum();
                    let n = (n + usize::from(b == last)) as i64;
                    Tensor::ones([n], (Kind::Float, Device::Cpu))
                })
                .collect()
        };
        let mut send = vec![1.0f32; total];
        let mut recv = vec![0.0f32; total];

        // Max over ranks of each rank's time for `op`, started together.
        let timed = |op: &mut dyn FnMut()| -> f64 {
            comm.barrier();
            let start = Instant::now();
            op();
            let mine = start.elapsed().as_secs_f64();
            let mut all = 0.0f64;
            comm.all_reduce_into(&mine, &mut all, SystemOperation::max());
            all
        };
        let mut limit = || -> Result<f64, std::io::Error> {
            Ok(timed(&mut || {
                comm.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
                send.copy_from_slice(&recv);
            }))
        };
        // One backend's buffers at a time (the paper's set is 2.3 GB per buffer).
        let grads = layout(bucket_elements(config.dist.bucket_mb));
        let bucket_count = grads.len();
        let mut bucketed = MpiGradSync::new(comm);
        let bucketed_cmp = interleave(
            reps,
            || {
                let mut r = Ok(false);
                let t = timed(&mut || r = bucketed.sync(&grads, false));
                r.map(|_| t).map_err(std::io::Error::other)
            },
            &mut limit,
        )?;
        drop(grads);
        let grads = layout(1);
        let mut per_tensor = MpiGradSync::new(comm);
        let per_tensor_cmp = interleave(
            reps,
            || {
                let mut r = Ok(false);
                let t = timed(&mut || r = per_tensor.sync(&grads, false));
                r.map(|_| t).map_err(std::io::Error::other)
            },
            &mut limit,
        )?;
        if rt.is_main() {
            println!(
                "{name}: {} tensors, {:.1} MB of float32 gradients, {bucket_count} buckets of {} MB",
                grads.len(),
                total as f64 * 4.0 / 1e6,
                config.dist.bucket_mb
            );
            println!("  bucketed / limit: {}", bucketed_cmp.summary());
            println!("  per-tensor / limit: {}", per_tensor_cmp.summary());
        }
    }
    Ok(())
}
