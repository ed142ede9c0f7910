//! One training step of the paper's UNet (configs/syncdiff-lrs2.yaml: 64x64 latents, batch 8 as
//! on one of the paper's 6 GPUs) on CUDA under fp32, TF32, bf16 and fp16, against the same
//! diffusers UNet in PyTorch eager with `torch.autocast` (and GradScaler for fp16) on the same
//! GPU, interleaved; with the GPU memory each process holds afterwards. Part of
//! `launch/gpu-check.sh`.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench gpu_step
//! BENCH_PRECISIONS=bf16,fp16 BENCH_REPS=20 cargo bench -p syncdiff-trainer --bench gpu_step
//! ```
//! Without a CUDA device it prints why it skipped and exits 0. Each precision runs in a fresh
//! process pair (this binary starts itself once per precision), so the memory figures are
//! that precision's: `nvidia-smi`'s used memory per process after the timed steps, which is
//! the CUDA context plus what the caching allocator reserved (it keeps its peak).

mod common;

use std::time::Instant;

use syncdiff_devkit::stats::interleave;
use syncdiff_devkit::{env_or, repo};
use syncdiff_model::config::{Config, LossScaleConfig, Precision};
use syncdiff_model::unet::{Unet, UnetShape};
use syncdiff_trainer::amp::{set_tf32, unscale_and_check, Autocast, LossScaler};
use syncdiff_trainer::optim::{bucket_elements, AdamW, AdamWConfig, Flat};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const MODES: [&str; 4] = ["fp32", "tf32", "bf16", "fp16"];
const BATCH: i64 = 8;

fn main() -> anyhow::Result<()> {
    if !tch::Cuda::is_available() {
        println!("gpu_step: skipped: no CUDA device (libtorch sees none on this machine)");
        return Ok(());
    }
    match std::env::var("BENCH_GPU_MODE") {
        Ok(mode) => one(&mode),
        Err(_) => {
            let list = std::env::var("BENCH_PRECISIONS").unwrap_or_else(|_| MODES.join(","));
            for mode in list.split(',') {
                anyhow::ensure!(MODES.contains(&mode), "BENCH_PRECISIONS: unknown {mode:?}");
                let status = std::process::Command::new(std::env::current_exe()?)
                    .env("BENCH_GPU_MODE", mode)
                    .args(std::env::args_os().skip(1))
                    .status()?;
                anyhow::ensure!(status.success(), "gpu_step {mode} failed: {status}");
            }
            Ok(())
        }
    }
}

/// MiB of GPU memory `nvidia-smi` reports for process `pid` (None when it cannot tell).
fn used_mib(pid: u32) -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args([
            "--query-compute-apps=pid,used_memory",
            "--format=csv,noheader,nounits",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (p, m) = l.split_once(',')?;
        (p.trim().parse::<u32>().ok()? == pid)
            .then(|| m.trim().parse().ok())
            .flatten()
    })
}

fn one(mode: &str) -> anyhow::Result<()> {
    let reps = env_or("BENCH_REPS", 20);
    let paper = Config::load(&repo().join("configs/syncdiff-lrs2.yaml"), &[])?;
    let shape = UnetShape::of(&paper.model);
    let (size, tokens) = (
        i64::from(paper.latent_side()),
        i64::from(paper.model.context_tokens()),
    );
    let precision = match mode {
        "bf16" => Precision::Bf16,
        "fp16" => Precision::Fp16,
        _ => Precision::Fp32,
    };
    set_tf32(mode == "tf32")?;
    let s = &shape;
    let spec = serde_json::json!({
        "channels": s.channels, "attention": s.attention, "num_res_blocks": s.num_res_blocks,
        "head_dim": s.head_dim, "depth": s.depth, "groups": s.groups, "in_channels": s.in_channels,
        "out_channels": s.out_channels, "context_dim": s.context_dim, "size": size,
        "tokens": tokens, "batch": BATCH, "threads": 1, "device": "cuda", "mode": mode,
    });
    let mut py = common::py_server("trainer/benches/torch_unet_step.py", &spec)?;
    let device = Device::Cuda(0);
    tch::manual_seed(0);
    let vs = VarStore::new(device);
    let unet = Unet::new(vs.root(), s);
    let params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    let flat = Flat::new(params, bucket_elements(25.0))?;
    let grads: Vec<Tensor> = flat.grads().iter().map(Tensor::shallow_clone).collect();
    let mut opt = AdamW::new(flat, AdamWConfig::default());
    let mut scaler =
        (precision == Precision::Fp16).then(|| LossScaler::new(&LossScaleConfig::default()));
    let opts = (Kind::Float, device);
    let x = Tensor::randn([BATCH, s.in_channels, size, size], opts);
    let t = Tensor::randint(1000, [BATCH], (Kind::Int64, device));
    let ctx = Tensor::randn([BATCH, tokens, s.context_dim], opts);
    let target = Tensor::randn([BATCH, s.out_channels, size, size], opts);
    let mut ours = || -> anyhow::Result<f64> {
        tch::Cuda::synchronize(0);
        let start = Instant::now();
        let loss = {
            let _autocast = Autocast::enter(precision, device)?;
            let out = unet.forward(&x, &t, &ctx, true);
            out.to_kind(Kind::Float)
                .mse_loss(&target, tch::Reduction::Mean)
        };
        let finite = match &mut scaler {
            Some(sc) => {
                (&loss * f64::from(sc.scale())).backward();
                let finite = unscale_and_check(&grads, sc.scale())?;
                sc.update(!finite);
                finite
            }
            None => {
                loss.backward();
                true
            }
        };
        if finite {
            opt.step(1e-4);
        }
        opt.zero_grad();
        tch::Cuda::synchronize(0);
        Ok(start.elapsed().as_secs_f64())
    };
    let c = interleave(reps, &mut ours, || Ok(py.step()?))?;
    let (mine, theirs) = (used_mib(std::process::id()), used_mib(py.id()));
    py.finish()?;
    let mib = |m: Option<u64>| m.map_or("unknown".into(), |m| format!("{m} MiB"));
    println!(
        "paper UNet, 64x64 latents, batch {BATCH}, {mode}: {} | GPU memory held: ours {}, \
         PyTorch {}",
        c.summary(),
        mib(mine),
        mib(theirs)
    );
    Ok(())
}
