//! What the samplers and audio guidance cost in `syncdiff generate`, at the demo configuration
//! (configs/demo.yaml with train.audio_dropout=0.1, so the model has its null context; random
//! weights: the cost does not depend on them).
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench samplers
//! ```
//! 1. One clip, frames/s of DDIM with N steps vs DPM-Solver++(2M) with N/4, interleaved, for
//!    N = 20 and 40; and the per-step cost of each, which projects the paper's 200 DDIM steps
//!    against 50 DPM-Solver++ steps.
//!    DPM-Solver++ on Karras noise levels vs linspace at 5 and 10 steps (same solver, other
//!    timesteps: the cost should not differ).
//! 2. Guidance: the same clip at guidance 2 vs 1 (DPM-Solver++, 5 steps), and at the UNet: one
//!    batched call on 2B rows (what `sample` does) vs two calls on B rows, B = 8.
//! 3. The paper's scale (`BENCH_PAPER=0` skips it): one forward of the paper's UNet
//!    (configs/syncdiff-lrs2.yaml, 64x64 latents, batch 1, random weights), which projects a
//!    frame's 200 DDIM steps against 50 DPM-Solver++ steps on this machine.

mod common;

use std::time::Instant;

use syncdiff_devkit::stats::{interleave, median, Comparison};
use syncdiff_devkit::{env_or, repo};
use syncdiff_inference::generate::{self, Collect, FrameSink, GenerateOptions, Generator, Job};
use syncdiff_model::config::{Config, Override, SamplerKind};
use syncdiff_model::unet::{Unet, UnetShape};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn options(sampler: SamplerKind, steps: usize, guidance: f64) -> GenerateOptions {
    GenerateOptions {
        sampler,
        steps,
        eta: 0.0,
        inpaint: false,
        guidance,
        final_x0: false,
        seed: 0,
        precision: Default::default(),
    }
}

fn main() -> anyhow::Result<()> {
    let threads = common::threads();
    let reps = env_or("BENCH_REPS", 5);
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("lrs2");
    common::synthetic_clips(&root, 1.0, 1)?;
    let sets = [Override::parse("train.audio_dropout=0.1")?];
    let config = Config::load(&repo().join("configs/demo.yaml"), &sets)?;
    tch::manual_seed(0);
    let g = Generator::random(config, Device::Cpu)?;
    let clip = root.join("main/spk00/00001.mp4");
    let job = Job {
        video: clip.clone(),
        audio: clip,
        out: dir.path().join("out.mp4"),
    };
    let prepared = generate::prepare(&g, &job, &g.config.data.face)?;
    let frames = prepared.frames;
    let run = |opts: &GenerateOptions| -> anyhow::Result<f64> {
        let t = Instant::now();
        let mut sink = Collect::default();
        let mut sinks: Vec<&mut dyn FrameSink> = vec![&mut sink];
        for r in generate::generate_batch(
            &g,
            &[&prepared],
            &mut sinks,
            opts,
            |_| {},
            &mut Default::default(),
        )? {
            r?;
        }
        Ok(t.elapsed().as_secs_f64())
    };
    println!(
        "samplers, demo config (64x64 pixel space, random weights), one clip of {frames} frames, \
         {threads} threads, {reps} interleaved repetitions"
    );
    let mut per_step = Vec::new();
    for n in [20usize, 40] {
        let (ddim, dpm) = (
            options(SamplerKind::Ddim, n, 1.0),
            options(SamplerKind::DpmPp2m, n / 4, 1.0),
        );
        let cmp = interleave(reps, || run(&ddim), || run(&dpm))?;
        let s = cmp.summary();
        let (a, b) = (median(&cmp.a), median(&cmp.b));
        println!(
            "DDIM {n}: {:.2} frames/s; DPM-Solver++(2M) {}: {:.2} frames/s; speedup median \
             {:.2}x, 95% interval [{:.2}, {:.2}]",
            frames as f64 / a,
            n / 4,
            frames as f64 / b,
            s.median,
            s.low,
            s.high
        );
        per_step.push((n, a, b));
    }
    // Per step and frame from the difference between N = 40 and N = 20 (the per-frame work
    // outside the sampler cancels out), and that per-frame work itself.
    let (t20, t40) = (per_step[0], per_step[1]);
    let f = frames as f64;
    let ddim_step = (t40.1 - t20.1) / (20.0 * f);
    let dpm_step = (t40.2 - t20.2) / (5.0 * f);
    println!(
        "per step and frame: DDIM {:.1} ms, DPM-Solver++ {:.1} ms ({:.2}x); per frame outside \
         the steps {:.1} ms",
        ddim_step * 1e3,
        dpm_step * 1e3,
        dpm_step / ddim_step,
        (t20.1 / f - 20.0 * ddim_step) * 1e3
    );

    // The Karras spacing runs the same solver on other timesteps: its cost should equal
    // linspace's at the same step count.
    for n in [5usize, 10] {
        let (lin, karras) = (
            options(SamplerKind::DpmPp2m, n, 1.0),
            options(SamplerKind::DpmPp2mKarras, n, 1.0),
        );
        let cmp = interleave(reps, || run(&lin), || run(&karras))?;
        println!(
            "DPM-Solver++(2M) {n}: linspace {:.2} frames/s, Karras {:.2} frames/s; Karras / \
             linspace time {}",
            frames as f64 / median(&cmp.a),
            frames as f64 / median(&cmp.b),
            time_ratio_b_over_a(&cmp)
        );
    }

    let (plain, guided) = (
        options(SamplerKind::DpmPp2m, 5, 1.0),
        options(SamplerKind::DpmPp2m, 5, 2.0),
    );
    let cmp = interleave(reps, || run(&plain), || run(&guided))?;
    println!(
        "guidance 1: {:.2} frames/s; guidance 2: {:.2} frames/s (DPM-Solver++ 5 steps): guided \
         / plain time {}",
        frames as f64 / median(&cmp.a),
        frames as f64 / median(&cmp.b),
        time_ratio_b_over_a(&cmp)
    );

    // The UNet alone: 2B rows in one call vs two calls of B rows.
    let m = &g.config.model;
    let b = 8i64;
    let side =
        i64::from(g.config.data.resolution) >> (m.autoencoder.block_out_channels.len().max(1) - 1);
    let unet = g.model.denoiser().unet();
    let input = |rows: i64| {
        Tensor::randn(
            [rows, i64::from(m.unet_in_channels()), side, side],
            (Kind::Float, Device::Cpu),
        )
    };
    let context = |rows: i64| {
        Tensor::randn(
            [
                rows,
                i64::from(m.context_tokens()),
                i64::from(m.context_dim()),
            ],
            (Kind::Float, Device::Cpu),
        )
    };
    let (x2, c2, t2) = (
        input(2 * b),
        context(2 * b),
        Tensor::full([2 * b], 500, (Kind::Int64, Device::Cpu)),
    );
    let (x1, c1, t1) = (x2.narrow(0, 0, b), c2.narrow(0, 0, b), t2.narrow(0, 0, b));
    let time = |f: &dyn Fn()| -> Result<f64, std::convert::Infallible> {
        let t = Instant::now();
        tch::no_grad(f);
        Ok(t.elapsed().as_secs_f64())
    };
    let one = || {
        let _ = unet.forward(&x2, &t2, &c2, false);
    };
    let two = || {
        let _ = unet.forward(&x1, &t1, &c1, false);
        let _ = unet.forward(&x1, &t1, &c1, false);
    };
    let reps_unet = env_or("BENCH_REPS_UNET", 21);
    let cmp = interleave(reps_unet, || time(&two), || time(&one))?;
    let s = cmp.summary();
    println!(
        "UNet, guidance's two halves ({b} rows each): two calls {:.1} ms, one batched call of {} \
         rows {:.1} ms; speedup median {:.2}x, 95% interval [{:.2}, {:.2}] ({reps_unet} reps)",
        median(&cmp.a) * 1e3,
        2 * b,
        median(&cmp.b) * 1e3,
        s.median,
        s.low,
        s.high
    );
    if env_or("BENCH_PAPER", 1) == 1 {
        paper_scale()?;
    }
    Ok(())
}

/// Side B's time over side A's: the inverse of `Comparison::summary`'s A/B ratio, with its
/// interval's bounds swapped.
fn time_ratio_b_over_a(cmp: &Comparison) -> String {
    let s = cmp.summary();
    format!(
        "median {:.2}x, 95% interval [{:.2}, {:.2}]",
        1.0 / s.median,
        1.0 / s.high,
        1.0 / s.low
    )
}

/// One forward of the paper's UNet at batch 1, and the per-frame time of 200 DDIM steps against
/// 50 DPM-Solver++ steps it implies (a step of either sampler is one UNet call plus arithmetic
/// on one latent, which the per-step figures above show to be small next to the call).
fn paper_scale() -> anyhow::Result<()> {
    let config = Config::load(&repo().join("configs/syncdiff-lrs2.yaml"), &[])?;
    let m = &config.model;
    let side = i64::from(config.data.resolution) >> (m.autoencoder.block_out_channels.len() - 1);
    tch::manual_seed(0);
    let vs = VarStore::new(Device::Cpu);
    let unet = Unet::new(vs.root(), &UnetShape::of(m));
    let x = Tensor::randn(
        [1, i64::from(m.unet_in_channels()), side, side],
        (Kind::Float, Device::Cpu),
    );
    let c = Tensor::randn(
        [1, i64::from(m.context_tokens()), i64::from(m.context_dim())],
        (Kind::Float, Device::Cpu),
    );
    let t = Tensor::full([1], 500, (Kind::Int64, Device::Cpu));
    let mut times = Vec::new();
    for _ in 0..env_or("BENCH_REPS_PAPER", 3) + 1 {
        let start = Instant::now();
        tch::no_grad(|| {
            let _ = unet.forward(&x, &t, &c, false);
        });
        times.push(start.elapsed().as_secs_f64());
    }
    times.remove(0); // warm-up
    let f = median(&times);
    let params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|v| v.numel() as i64)
        .sum();
    println!(
        "paper UNet ({:.0} M parameters, {side}x{side} latents, batch 1): {:.2} s per forward \
         (median of {}); per frame: 200 DDIM steps {:.0} s, 50 DPM-Solver++ steps {:.0} s",
        params as f64 / 1e6,
        f,
        times.len(),
        200.0 * f,
        50.0 * f
    );
    Ok(())
}
