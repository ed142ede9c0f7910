//! CUDA-only checks, run by `launch/gpu-check.sh` on the first GPU node of a new cluster. On a
//! machine without a GPU (or with fewer GPUs than a check needs) each prints why it skipped
//! and passes, so the suite stays green on CPU machines. None of these has run on a GPU yet.
#![allow(clippy::unwrap_used)]

use syncdiff_dataset::shards::Dataset;
use syncdiff_model::config::Config;
use syncdiff_trainer::data::{Batch, LoaderState};
use syncdiff_trainer::model::TrainModel;
use tch::{Device, Kind, Tensor};

use crate::common;

/// The visible CUDA devices, or a printed reason to skip when there are fewer than `need`.
fn gpus(test: &str, need: i64) -> Option<i64> {
    let n = if tch::Cuda::is_available() {
        tch::Cuda::device_count()
    } else {
        0
    };
    if n < need {
        println!("{test}: skipped: needs {need} CUDA device(s), libtorch sees {n}");
        return None;
    }
    Some(n)
}

/// Relative L2 distance of two lists of tensors taken as one vector.
fn rel_l2(a: &[Tensor], b: &[Tensor]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (x.to_kind(Kind::Double), y.to_kind(Kind::Double));
        num += f64::try_from((&x - &y).square().sum(Kind::Double)).unwrap();
        den += f64::try_from(y.square().sum(Kind::Double)).unwrap();
    }
    (num / den.max(1e-300)).sqrt()
}

/// The loss and gradients of one training step of `model` on `batch` (no dropout: its masks
/// come from each device's own generator).
fn grads(model: &TrainModel, batch: &Batch) -> (f64, Vec<Tensor>) {
    let loss = model.loss(batch, false).unwrap();
    loss.backward();
    let g = model
        .trainable()
        .iter()
        .map(|(_, p)| p.grad().to_device(Device::Cpu))
        .collect();
    (f64::try_from(&loss).unwrap(), g)
}

/// The debug model's first training batch, and the loss and gradients of one step on `device`
/// of a model holding the CPU model's weights (copied), against the CPU model's own.
fn step_on(device: Device) -> ((f64, Vec<Tensor>), (f64, Vec<Tensor>)) {
    let cfg = Config::load(&common::repo().join("configs/debug.yaml"), &[]).unwrap();
    let ds = Dataset::open(common::dataset()).unwrap();
    let sampler = syncdiff_trainer::train::sampler(&cfg, &ds, 1).unwrap();
    let order = sampler.permutation(LoaderState::default().epoch);
    let specs = sampler
        .step(LoaderState::default(), 0, 1, 4, &order)
        .concat();
    let np = cfg.model.priors.previous_frames;
    let ctx = u64::from(cfg.model.audio_encoder.context_frames);
    let batch = Batch::read(&ds, &specs, np, ctx).unwrap();
    tch::manual_seed(0);
    let cpu = TrainModel::new(&cfg, Device::Cpu);
    let mut other = TrainModel::new(&cfg, device);
    other.nets.vs.copy(&cpu.nets.vs).unwrap();
    (grads(&other, &batch.to(device)), grads(&cpu, &batch))
}

/// The harness of the CUDA check, run CPU against CPU: a copied model on the same batch gives
/// the same bits, so on a GPU any difference is the GPU's.
#[test]
fn the_device_step_check_finds_no_difference_between_the_cpu_and_itself() {
    let _torch = common::torch();
    let ((loss_a, ga), (loss_b, gb)) = step_on(Device::Cpu);
    assert_eq!(loss_a, loss_b);
    assert!(!ga.is_empty() && ga.len() == gb.len());
    assert_eq!(rel_l2(&ga, &gb), 0.0);
}

/// (1) The debug model's training step on CUDA (fp32, TF32 off) equals the same step on the
/// CPU: the same weights (copied), the same batch. Tolerance: relative L2 over all gradients
/// below 1e-4 and the losses within 1e-5 relative; what differs is the order cuDNN and cuBLAS
/// sum in (float32 rounding, ~1e-6 relative), an error in the GPU path is orders of magnitude
/// larger.
#[test]
fn a_training_step_on_cuda_equals_the_same_step_on_the_cpu() {
    if gpus("cuda step vs cpu step", 1).is_none() {
        return;
    }
    let _torch = common::torch();
    syncdiff_trainer::amp::set_tf32(false).unwrap();
    let ((loss_gpu, g_gpu), (loss_cpu, g_cpu)) = step_on(Device::Cuda(0));
    let d = rel_l2(&g_gpu, &g_cpu);
    println!(
        "cuda vs cpu: loss {loss_gpu:.6} vs {loss_cpu:.6}, gradients relative L2 {d:.3e} \
         ({} tensors)",
        g_cpu.len()
    );
    assert!(
        ((loss_gpu - loss_cpu) / loss_cpu).abs() < 1e-5,
        "{loss_gpu} vs {loss_cpu}"
    );
    assert!(d < 1e-4, "gradients on CUDA differ from the CPU's: {d:.3e}");
}

/// (2) NCCL across every GPU of the node: training with the all-reduce overlapped (its own
/// stream, event dependencies) ends bit-identical to the non-overlapped run, one all-reduce per
/// bucket per step over two micro-batches. Needs 2 GPUs (NCCL refuses two ranks on one GPU).
#[test]
fn nccl_across_the_node_with_overlap_ends_bit_identical_to_without() {
    let Some(n) = gpus("nccl overlap vs no overlap", 2) else {
        return;
    };
    crate::overlap::overlap_on_and_off_agree(n as u32, &["dist.backend=nccl"]);
}

/// `launch/gpu-check.sh` on a machine without a GPU: one line naming the node and why, exit 1,
/// before building anything; bad options are usage errors (2). (On a GPU node this test would
/// start the whole check, so it skips there: run the script itself.)
#[test]
fn gpu_check_on_a_machine_without_a_gpu_fails_at_once_with_the_reason() {
    let script = common::repo().join("launch/gpu-check.sh");
    let o = std::process::Command::new("bash")
        .arg(&script)
        .arg("--reps")
        .arg("x")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(common::text(&o).1.contains("--reps: not a number: x"));
    let help = std::process::Command::new("bash")
        .arg(&script)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(common::text(&help).0.contains("bit-identical"));
    let smi_lists_gpus = std::process::Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("GPU "));
    if tch::Cuda::is_available() || smi_lists_gpus {
        println!("gpu-check.sh without a GPU: skipped: this machine has a GPU");
        return;
    }
    let start = std::time::Instant::now();
    let o = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap();
    let (out, err) = common::text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(
        out.starts_with("[gpu-check] FAIL step 0: no GPU on ") && out.lines().count() == 1,
        "{out}"
    );
    assert!(start.elapsed().as_secs() < 10);
}
