//! DDIM sampling: `SyncDiff::sample` (priors, UNet, DDIM update in Rust) vs diffusers'
//! `DDIMScheduler` loop over the same diffusers UNet in PyTorch eager, interleaved, on the same
//! threads, for the batch `syncdiff generate` runs (8 clips) at the debug and demo configurations.
//!
//! ```text
//! source ci/env.sh && cargo bench -p syncdiff-trainer --bench ddim
//! ```
//! Prints the median seconds of a whole sampling loop on each side and the median ratio
//! Rust/PyTorch with its bootstrap 95% interval. Target: <= 1.0.

mod common;

use std::time::Instant;

use syncdiff_devkit::stats::interleave;
use syncdiff_devkit::{env_or, repo};
use syncdiff_model::config::{Config, PredictionTarget};
use syncdiff_model::syncdiff::{Conditioning, SampleOptions, SyncDiff};
use syncdiff_model::unet::UnetShape;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let threads = common::threads();
    let reps = env_or("BENCH_REPS", 15);
    let batch = env_or("BENCH_BATCH", 8) as i64;
    println!("DDIM sampling loop, Rust vs diffusers; batch {batch}, {threads} threads, {reps} interleaved repetitions");
    for name in ["debug", "demo"] {
        let config = Config::load(&repo().join(format!("configs/{name}.yaml")), &[])?;
        let m = &config.model;
        let shape = UnetShape::of(m);
        let tokens = i64::from(m.context_tokens());
        let steps = config.sample.ddim_steps as usize;
        let size = i64::from(config.latent_side());
        let c = i64::from(m.latent_channels());
        let spec = serde_json::json!({
            "channels": shape.channels, "attention": shape.attention,
            "num_res_blocks": shape.num_res_blocks, "head_dim": shape.head_dim, "depth": shape.depth,
            "groups": shape.groups, "in_channels": shape.in_channels,
            "out_channels": shape.out_channels, "context_dim": shape.context_dim, "size": size,
            "tokens": tokens, "batch": batch, "threads": threads, "steps": steps,
            "prediction_type": match m.diffusion.prediction {
                PredictionTarget::Eps => "epsilon",
                PredictionTarget::X0 => "sample",
                PredictionTarget::V => "v_prediction",
            },
        });
        let mut py = common::py_server("trainer/benches/torch_ddim.py", &spec)?;
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let model = SyncDiff::new(vs.root(), m);
        let opts = (Kind::Float, Device::Cpu);
        let np = i64::from(m.priors.needed_previous_frames());
        let masked = Tensor::randn([batch, c, size, size], opts);
        let identity = Tensor::randn([batch, c, size, size], opts);
        let previous = Tensor::randn([batch, np, c, size, size], opts);
        let context = Tensor::randn([batch, tokens, i64::from(m.context_dim())], opts);
        let noise = Tensor::randn([batch, c, size, size], opts);
        let cond = Conditioning {
            masked: &masked,
            identity: Some(&identity),
            previous: Some(&previous),
            context: &context,
        };
        let sample = SampleOptions {
            sampler: syncdiff_model::config::SamplerKind::Ddim,
            steps,
            eta: 0.0,
            guidance: 1.0,
            final_x0: false,
            inpaint: None,
        };
        let mut rust = || -> anyhow::Result<f64> {
            let start = Instant::now();
            let z = model.sample(&cond, &noise, &sample, |_| None)?;
            let _ = z.sum(Kind::Float).double_value(&[]);
            Ok(start.elapsed().as_secs_f64())
        };
        let cmp = interleave(reps, &mut rust, || py.step().map_err(anyhow::Error::from))?;
        py.finish()?;
        println!(
            "{name} config ({steps} steps, {size}x{size}x{c} latents, {} UNet parameters): {}",
            syncdiff_model::weights::count(&vs, "unet."),
            cmp.summary()
        );
    }
    Ok(())
}
