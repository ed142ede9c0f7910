//! Data-parallel correctness with real MPI: 2 ranks with micro-batch B end equal to 1 rank with
//! micro-batch 2B after k SGD steps; without the division by the world size they do not.
//!
//! The test spawns `mpirun -n 2` on this very test binary, running `ddp_worker` on each rank.
#![allow(clippy::unwrap_used)]

use syncdiff_trainer::dist::{GradSync, MpiGradSync, Runtime};
use syncdiff_trainer::optim::{bucket_elements, buckets, Flat};
use tch::nn::{Module, VarStore};
use tch::{nn, Device, Kind, Tensor};

const B: i64 = 3;
const STEPS: i64 = 4;
const LR: f64 = 0.05;
/// 1000 float32 elements per bucket.
const BUCKET_MB: f64 = 1000.0 * 4.0 / (1u64 << 20) as f64;

struct Net {
    vs: VarStore,
    a: nn::Linear,
    b: nn::Linear,
    c: nn::Linear,
}

fn net() -> Net {
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let r = vs.root();
    let a = nn::linear(&r / "a", 20, 64, Default::default());
    let b = nn::linear(&r / "b", 64, 64, Default::default());
    let c = nn::linear(&r / "c", 64, 1, Default::default());
    Net { vs, a, b, c }
}

fn params(n: &Net) -> Vec<(String, Tensor)> {
    let mut v: Vec<(String, Tensor)> = n.vs.variables().into_iter().collect();
    v.sort_by(|x, y| x.0.cmp(&y.0));
    v
}

/// Samples [first, first + count): inputs and targets are functions of the global index.
fn loss(n: &Net, first: i64, count: i64) -> Tensor {
    let idx = Tensor::arange_start(first, first + count, (Kind::Float, Device::Cpu)).unsqueeze(1);
    let x = (&idx * Tensor::arange(20, (Kind::Float, Device::Cpu)).unsqueeze(0) * 0.37).sin();
    let y = (&idx * 0.91).cos();
    let out = n.c.forward(&n.b.forward(&n.a.forward(&x).tanh()).tanh());
    out.mse_loss(&y, tch::Reduction::Mean)
}

fn sgd(n: &Net) {
    tch::no_grad(|| {
        for (_, p) in params(n) {
            let mut p = p.shallow_clone();
            let g = p.grad();
            p -= &g * LR;
            // In place: the gradients of the distributed net are views of flat buffers.
            let _ = g.detach().zero_();
        }
    });
}

#[test]
#[ignore = "runs on each rank under mpirun, started by the tests below"]
fn ddp_worker() {
    let rt = Runtime::init().unwrap();
    let (rank, world) = (i64::from(rt.rank()), i64::from(rt.world_size()));
    let n = net();
    let numels: Vec<usize> = params(&n).iter().map(|(_, t)| t.numel()).collect();
    let groups = buckets(&numels, 1000);
    assert!(
        groups.len() >= 3 && numels.iter().any(|&x| x > 1000),
        "{groups:?} {numels:?}"
    );
    let flat = Flat::new(params(&n), bucket_elements(BUCKET_MB)).unwrap();
    assert_eq!(flat.buckets().len(), groups.len());
    let mut sync = MpiGradSync::new(rt.comm());
    sync.average = std::env::var("DDP_NO_AVERAGE").is_err();
    for s in 0..STEPS {
        loss(&n, s * world * B + rank * B, B).backward();
        flat.check().unwrap();
        // Rank 1 asks to stop at the last step: every rank learns it from the same reduce.
        let stop = sync
            .sync(flat.reduce_buffers(), rank == 1 && s == STEPS - 1)
            .unwrap();
        assert_eq!(stop, world > 1 && s == STEPS - 1, "step {s}");
        sgd(&n);
    }
    if rank == 0 {
        let reference = net();
        for s in 0..STEPS {
            loss(&reference, s * world * B, world * B).backward();
            sgd(&reference);
        }
        let mut worst = 0.0f64;
        for ((name, a), (_, b)) in params(&n).iter().zip(params(&reference)) {
            let rel = f64::try_from((a - &b).abs().max()).unwrap()
                / f64::try_from(b.abs().max()).unwrap().max(1e-12);
            assert!(rel.is_finite(), "{name}");
            worst = worst.max(rel);
        }
        println!("DDP_RESULT max_rel_err={worst:e}");
    }
}

fn run_ranks(no_average: bool) -> f64 {
    let env: &[(&str, &str)] = if no_average {
        &[("DDP_NO_AVERAGE", "1")]
    } else {
        &[]
    };
    let out = crate::common::mpirun_worker("ddp::ddp_worker", 2, env);
    // The line may follow the test harness's "test ddp_worker ... " on the same line.
    let value = out
        .lines()
        .find_map(|l| l.split("DDP_RESULT max_rel_err=").nth(1))
        .unwrap();
    value.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn two_ranks_with_b_equal_one_rank_with_2b() {
    let err = run_ranks(false);
    println!("2 ranks x B vs 1 rank x 2B after {STEPS} SGD steps: max relative error {err:e}");
    assert!(err <= 1e-6, "{err}");
}

#[test]
fn a_missing_division_by_the_world_size_fails_the_check() {
    let err = run_ranks(true);
    assert!(
        err > 1e-3,
        "summing without averaging went unnoticed: {err}"
    );
}

#[test]
fn buckets_keep_order_and_isolate_large_tensors() {
    assert_eq!(
        buckets(&[400, 400, 400, 2500, 10, 10], 1000),
        vec![0..2, 2..3, 3..4, 4..6]
    );
    assert_eq!(buckets(&[], 1000), Vec::<std::ops::Range<usize>>::new());
    assert_eq!(buckets(&[5000], 1000), vec![0..1]);
}
