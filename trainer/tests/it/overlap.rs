//! The all-reduce overlapped with the backward pass (`dist.overlap`), on 2 MPI ranks: the
//! bucket order is the same on every rank when gradients complete in different orders, two
//! micro-batches send one set of all-reduces, and a training run with overlap ends bit-identical
//! to the same run without it.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use mpi::collective::CommunicatorCollectives;
use syncdiff_model::config::{Config, Override};
use syncdiff_trainer::dist::{MpiThread, Overlap, Runtime};
use syncdiff_trainer::model::TrainModel;
use syncdiff_trainer::optim::{bucket_elements, buckets, Flat};
use tch::{Device, Kind, Tensor};

use crate::common::{self, mpirun, repo, text};

/// Six parameters of 300 elements in buckets of 600: [p0, p1], [p2, p3], [p4, p5].
const PARAMS: usize = 6;
const STEPS: usize = 3;

/// The loss of rank `rank`: a sum of one term per parameter, w * (p^2).sum() with a weight
/// depending on rank and parameter, built in an order that depends on the rank. The terms are
/// independent, and libtorch's engine runs the most recently built ready node first, so the
/// gradients complete in a different order on each rank.
fn loss(params: &[Tensor], rank: usize) -> Tensor {
    let order: Vec<usize> = if rank == 0 {
        vec![0, 2, 4, 1, 3, 5]
    } else {
        vec![5, 1, 3, 0, 4, 2]
    };
    order
        .into_iter()
        .fold(Tensor::zeros([], (Kind::Float, Device::Cpu)), |total, p| {
            let w = (p + 1) as f64 * (rank + 1) as f64;
            total + params[p].square().sum(Kind::Float) * w
        })
}

/// `v` on every rank, gathered (fixed length).
fn gather(comm: &mpi::topology::SimpleCommunicator, v: &[usize]) -> Vec<Vec<usize>> {
    let mine: Vec<u64> = v.iter().map(|&x| x as u64).collect();
    let world = mpi::topology::Communicator::size(comm) as usize;
    let mut all = vec![0u64; mine.len() * world];
    comm.all_gather_into(&mine[..], &mut all[..]);
    all.chunks(mine.len())
        .map(|c| c.iter().map(|&x| x as usize).collect())
        .collect()
}

#[test]
#[ignore = "runs on each rank under mpirun, started by the test below"]
fn overlap_worker() {
    let rt = Runtime::init().unwrap();
    let rank = rt.rank() as usize;
    let params: Vec<(String, Tensor)> = (0..PARAMS)
        .map(|i| {
            let t = Tensor::arange(300, (Kind::Float, Device::Cpu)) * 1e-3 + i as f64;
            (format!("p{i}"), t.set_requires_grad(true))
        })
        .collect();
    let flat = Flat::new(params, 600).unwrap();
    assert_eq!(flat.groups(), [0..2, 2..4, 4..6]);
    let buffers = flat
        .reduce_buffers()
        .iter()
        .map(Tensor::shallow_clone)
        .collect();
    let thread = MpiThread::new(
        rt.comm(),
        buffers,
        rt.thread_multiple(),
        syncdiff_model::config::ReduceDtype::Fp32,
    )
    .unwrap();
    let mut overlap = Overlap::new(&flat, Box::new(thread), rt.rank()).unwrap();
    let mut ready_logs = Vec::new();
    for step in 0..STEPS {
        // Two micro-batches: the first accumulates locally, the second is armed.
        loss(flat.params(), rank).backward();
        overlap.arm(rank == 1 && step == STEPS - 1).unwrap();
        loss(flat.params(), rank).backward();
        let (stop, calls) = overlap.finish().unwrap();
        assert_eq!(calls, 3, "step {step}: one all-reduce per bucket per step");
        assert_eq!(stop, step == STEPS - 1, "step {step}");
        let (ready, launched) = overlap.logs();
        let (all_ready, all_launched) = (gather(rt.comm(), &ready), gather(rt.comm(), &launched));
        assert_eq!(
            all_launched[0], all_launched[1],
            "step {step}: ranks started buckets in different orders (completed: {all_ready:?})"
        );
        ready_logs.push(all_ready);
        let changed = overlap.adopt_order(rt.comm()).unwrap();
        assert_eq!(changed, step == 0 && ready_logs[0][0] != [2, 1, 0]);
        // Each gradient is the mean over ranks of 2 micro-batches of 2 w p: p (w0 + w1) * 2.
        for (i, p) in flat.params().iter().enumerate() {
            let w = (i + 1) as f64 * 3.0;
            let want = p.detach() * (2.0 * w);
            let err = f64::try_from((p.grad() - &want).abs().max()).unwrap();
            assert!(err <= 1e-4 * (i + 1) as f64, "step {step} p{i}: {err}");
        }
        flat.zero_grad();
    }
    // The test means something: the two ranks' gradients did complete in different orders.
    assert_ne!(ready_logs[0][0], ready_logs[0][1], "{ready_logs:?}");
    // From step 2 on, every rank starts buckets in rank 0's completion order.
    assert_eq!(overlap.logs().1, ready_logs[0][0]);
    overlap.shutdown().unwrap();
    if rank == 0 {
        println!("OVERLAP_RESULT completion orders {ready_logs:?}");
    }
}

#[test]
fn the_bucket_order_is_the_same_on_every_rank_when_gradients_complete_in_other_orders() {
    let out = common::mpirun_worker("overlap::overlap_worker", 2, &[]);
    assert!(out.contains("OVERLAP_RESULT"), "{out}");
    println!("{out}");
}

#[test]
#[ignore = "runs on each rank under mpirun, started by the test below"]
fn bf16_reduce_worker() {
    use syncdiff_trainer::dist::{GradSync, MpiGradSync};
    let rt = Runtime::init().unwrap();
    let rank = rt.rank() as usize;
    let params: Vec<(String, Tensor)> = (0..PARAMS)
        .map(|i| {
            let t = Tensor::arange(300, (Kind::Float, Device::Cpu)).sin() * (i + 1) as f64;
            (format!("p{i}"), t.set_requires_grad(true))
        })
        .collect();
    let flat = Flat::new(params, 600).unwrap();
    loss(flat.params(), rank).backward();
    // Every rank's float32 gradients, before the all-reduce.
    let local: Vec<f32> = flat
        .grads()
        .iter()
        .flat_map(|g| Vec::<f32>::try_from(g).unwrap())
        .collect();
    let mut all = vec![0f32; local.len() * 2];
    rt.comm().all_gather_into(&local[..], &mut all[..]);
    let mut sync = MpiGradSync::new(rt.comm());
    sync.dtype = syncdiff_model::config::ReduceDtype::Bf16;
    let stop = sync.sync(flat.reduce_buffers(), rank == 1).unwrap();
    assert!(stop);
    let got: Vec<f32> = flat
        .grads()
        .iter()
        .flat_map(|g| Vec::<f32>::try_from(g).unwrap())
        .collect();
    // What the wire should carry: each rank's gradient / 2 rounded to bfloat16, the two added in
    // float32 and rounded to bfloat16 again (libtorch's rounding), widened.
    let bf16 = |v: &[f32]| {
        Tensor::from_slice(v)
            .to_kind(Kind::BFloat16)
            .to_kind(Kind::Float)
    };
    let half = |v: &[f32]| v.iter().map(|x| x / 2.0).collect::<Vec<f32>>();
    let sum = bf16(&half(&all[..local.len()])) + bf16(&half(&all[local.len()..]));
    let want: Vec<f32> = Vec::try_from(sum.to_kind(Kind::BFloat16).to_kind(Kind::Float)).unwrap();
    assert_eq!(
        got, want,
        "the bfloat16 all-reduce differs from its definition"
    );
    let fp32: Vec<f32> = (0..local.len())
        .map(|i| all[i] / 2.0 + all[local.len() + i] / 2.0)
        .collect();
    let rel = got
        .iter()
        .zip(&fp32)
        .map(|(a, b)| ((a - b) / b.abs().max(1e-3)).abs())
        .fold(0f32, f32::max);
    assert!(rel > 0.0 && rel < 1e-2, "{rel}");
    if rank == 0 {
        println!(
            "BF16_RESULT {} values exact; max relative distance to float32 {rel:.2e}",
            got.len()
        );
    }
}

#[test]
fn the_bf16_all_reduce_sums_as_bfloat16_rounding_defines_and_overlap_keeps_its_bits() {
    let out = common::mpirun_worker("overlap::bf16_reduce_worker", 2, &[]);
    assert!(out.contains("BF16_RESULT"), "{out}");
    println!(
        "{}",
        out.lines().find(|l| l.contains("BF16_RESULT")).unwrap()
    );
    overlap_on_and_off_agree(2, &["dist.reduce_dtype=bf16"]);
}

const BUCKET_MB: &str = "0.05";

/// A 6-step debug run with two micro-batches per rank and several buckets on `ranks` ranks.
fn settings(dir: &Path, ranks: u32, overlap: bool) -> Vec<String> {
    let ds = common::dataset();
    [
        format!("data.dataset={}", ds.display()),
        format!("checkpoint.url={}", dir.join("ckpt").display()),
        format!("log.dir={}", dir.join("runs").display()),
        "train.steps=6".into(),
        "log.interval=1".into(),
        format!("train.global_batch={}", 2 * ranks),
        "train.max_micro_batch=1".into(),
        format!("dist.bucket_mb={BUCKET_MB}"),
        format!("dist.overlap={overlap}"),
    ]
    .into_iter()
    .collect()
}

/// The calls/step figure of each step line.
fn calls(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.split_once(" calls/step"))
        .map(|(head, _)| head.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// Runs the same training with and without overlap on `ranks` ranks (plus `extra` settings)
/// and checks that both end with the same model, EMA and optimizer and issue one all-reduce
/// per bucket per step.
pub(crate) fn overlap_on_and_off_agree(ranks: u32, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for overlap in [true, false] {
        let d = dir.path().join(format!("overlap-{overlap}"));
        let mut cmd = mpirun(ranks);
        cmd.args(["--config", "configs/debug.yaml"]);
        for s in settings(&d, ranks, overlap)
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
        {
            cmd.args(["--set", s]);
        }
        let o = cmd.output().unwrap();
        let (out, err) = text(&o);
        assert!(o.status.success(), "{err}");
        let manifest = std::fs::read(d.join("ckpt/step-000000006/manifest.json")).unwrap();
        seen.push((
            common::tensor_hashes(&manifest),
            calls(&format!("{out}\n{err}")),
        ));
    }
    // The number of buckets, from the model's parameters and dist.bucket_mb.
    let sets: Vec<Override> = [format!("dist.bucket_mb={BUCKET_MB}")]
        .iter()
        .map(|s| Override::parse(s).unwrap())
        .collect();
    let config = Config::load(&repo().join("configs/debug.yaml"), &sets).unwrap();
    let numels: Vec<usize> = TrainModel::new(&config, Device::Cpu)
        .trainable()
        .iter()
        .map(|(_, t)| t.numel())
        .collect();
    let n = buckets(&numels, bucket_elements(config.dist.bucket_mb)).len() as u64;
    assert!(n > 3, "{n} buckets: the test needs several");
    let (with, without) = (&seen[0], &seen[1]);
    assert_eq!(with.1, vec![n; 6], "overlap: calls per step");
    assert_eq!(without.1, vec![n; 6], "no overlap: calls per step");
    assert_eq!(with.0.len(), 3);
    assert_eq!(
        with.0, without.0,
        "model, EMA and optimizer differ with and without overlap"
    );
}

#[test]
fn a_run_with_overlap_ends_bit_identical_to_one_without_and_reduces_each_bucket_once_a_step() {
    overlap_on_and_off_agree(2, &[]);
}
