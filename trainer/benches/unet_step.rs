//! One UNet training step (forward, MSE loss, backward, AdamW step) in Rust vs the same diffusers
//! UNet in PyTorch eager (AdamW foreach=False), interleaved, on the same CPU threads.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench unet_step
//! BENCH_REPS=20 BENCH_THREADS=2 cargo bench -p syncdiff-trainer --bench unet_step
//! ```
//! Prints, per configuration, the median seconds of each side and the median ratio Rust/PyTorch
//! with its bootstrap 95% interval. Targets: interval upper bound <= 0.9 at the debug
//! configuration, <= 1.05 at the mid-size one.

mod common;

use std::time::Instant;

use syncdiff_devkit::stats::interleave;
use syncdiff_devkit::{env_or, repo};
use syncdiff_model::config::{Config, UnetConfig};
use syncdiff_model::unet::{Unet, UnetShape};
use syncdiff_trainer::optim::{AdamW, AdamWConfig, Flat};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

struct Case {
    name: &'static str,
    shape: UnetShape,
    batch: i64,
    size: i64,
    tokens: i64,
}

fn cases() -> anyhow::Result<Vec<Case>> {
    let debug = Config::load(&repo().join("configs/debug.yaml"), &[])?;
    let m = &debug.model;
    let tokens = |c: &Config| i64::from(c.model.context_tokens());
    // The paper's block layout at a quarter of its width, on 32x32 latents.
    let mid = UnetConfig {
        model_channels: 64,
        ..UnetConfig::default()
    };
    Ok(vec![
        Case {
            name: "debug config (configs/debug.yaml)",
            shape: UnetShape::of(m),
            batch: i64::from(debug.train.global_batch),
            size: i64::from(debug.latent_side()),
            tokens: tokens(&debug),
        },
        Case {
            name: "mid-size (paper layout, width 64, 32x32 latents)",
            shape: UnetShape::new(&mid, 10, 3, 768),
            batch: 4,
            size: 32,
            tokens: 8,
        },
    ])
}

fn main() -> anyhow::Result<()> {
    let threads = common::threads();
    let reps = env_or("BENCH_REPS", 30);
    println!("UNet training step, Rust (tch) vs PyTorch eager; {threads} threads, {reps} interleaved repetitions");
    for case in cases()? {
        let s = &case.shape;
        let spec = serde_json::json!({
            "channels": s.channels, "attention": s.attention, "num_res_blocks": s.num_res_blocks,
            "head_dim": s.head_dim, "depth": s.depth, "groups": s.groups, "in_channels": s.in_channels,
            "out_channels": s.out_channels, "context_dim": s.context_dim, "size": case.size,
            "tokens": case.tokens, "batch": case.batch, "threads": threads,
        });
        let mut py = common::py_server("trainer/benches/torch_unet_step.py", &spec)?;
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let unet = Unet::new(vs.root(), s);
        let params: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        // One bucket per tensor: the arithmetic and launches of PyTorch's foreach=False loop.
        let mut opt = AdamW::new(Flat::new(params, 1)?, AdamWConfig::default());
        let opts = (Kind::Float, Device::Cpu);
        let x = Tensor::randn([case.batch, s.in_channels, case.size, case.size], opts);
        let t = Tensor::randint(1000, [case.batch], (Kind::Int64, Device::Cpu));
        let ctx = Tensor::randn([case.batch, case.tokens, s.context_dim], opts);
        let target = Tensor::randn([case.batch, s.out_channels, case.size, case.size], opts);
        let mut rust_step = || {
            let start = Instant::now();
            let out = unet.forward(&x, &t, &ctx, true);
            let loss = out.mse_loss(&target, tch::Reduction::Mean);
            loss.backward();
            opt.step(1e-4);
            opt.zero_grad();
            start.elapsed().as_secs_f64()
        };

        let c = interleave(
            reps,
            || Ok::<f64, std::io::Error>(rust_step()),
            || py.step(),
        )?;
        py.finish()?;
        println!("{}: {}", case.name, c.summary());
    }
    Ok(())
}
