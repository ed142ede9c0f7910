//! Parity against diffusers, run live from the project virtualenv: VQModel encode/decode,
//! UNet2DConditionModel forward with cross-attention, DDIM trajectories and the noise schedule.
#![allow(clippy::unwrap_used)]

use crate::common;

use serde_json::json;
use syncdiff_model::config::{AutoencoderConfig, DiffusionConfig, PredictionTarget, UnetConfig};
use syncdiff_model::diffusion::Schedule;
use syncdiff_model::dpm_solver::{DpmSolverPp2m, Spacing};
use syncdiff_model::unet::{Unet, UnetShape};
use syncdiff_model::vq::VqModel;
use syncdiff_model::weights;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use common::{assert_close, read, reference};

#[test]
fn vq_model_matches_diffusers() {
    let _torch = common::torch();
    let cfg = AutoencoderConfig {
        block_out_channels: vec![32, 64, 64],
        layers_per_block: 1,
        norm_num_groups: 8,
        num_vq_embeddings: 64,
        ..Default::default()
    };
    let spec = json!({
        "block_out_channels": cfg.block_out_channels, "layers_per_block": 1, "latent_channels": 3,
        "num_vq_embeddings": 64, "norm_num_groups": 8, "size": 32,
    });
    let dir = reference("diffusers_ref.py", "vq", &spec);
    let vs = VarStore::new(Device::Cpu);
    let model = VqModel::new(vs.root(), &cfg);
    weights::load(&vs, &dir.path().join("weights.safetensors")).unwrap();
    let inputs = read(&dir.path().join("inputs.safetensors"));
    let outputs = read(&dir.path().join("outputs.safetensors"));
    tch::no_grad(|| {
        assert_close(
            "vq encode",
            &model.encode(&inputs["image"]),
            &outputs["latent"],
        );
        assert_close(
            "vq decode",
            &model.decode(&inputs["code"]),
            &outputs["decoded"],
        );
    });
}

fn unet_parity(name: &str, cfg: &UnetConfig, in_channels: u32, context_dim: u32, size: i64) {
    let shape = UnetShape::new(cfg, in_channels, 3, context_dim);
    let spec = json!({
        "channels": shape.channels, "attention": shape.attention, "num_res_blocks": shape.num_res_blocks,
        "head_dim": shape.head_dim, "depth": shape.depth, "groups": shape.groups,
        "in_channels": in_channels, "out_channels": 3, "context_dim": context_dim,
        "size": size, "tokens": 5,
    });
    let dir = reference("diffusers_ref.py", "unet", &spec);
    let vs = VarStore::new(Device::Cpu);
    let unet = Unet::new(vs.root(), &shape);
    weights::load(&vs, &dir.path().join("weights.safetensors")).unwrap();
    let i = read(&dir.path().join("inputs.safetensors"));
    let o = read(&dir.path().join("outputs.safetensors"));
    let out = tch::no_grad(|| unet.forward(&i["sample"], &i["timestep"], &i["context"], false));
    assert_close(name, &out, &o["output"]);
}

#[test]
fn unet_matches_diffusers_tiny() {
    let _torch = common::torch();
    let cfg = UnetConfig {
        model_channels: 16,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attention_resolutions: vec![1, 2],
        head_dim: 8,
        transformer_depth: 2,
        norm_num_groups: 8,
        dropout: 0.0,
    };
    unet_parity(
        "unet tiny (attention at every level, depth 2)",
        &cfg,
        10,
        24,
        8,
    );
}

#[test]
fn unet_matches_diffusers_paper_layout_reduced_width() {
    let _torch = common::torch();
    // The paper's block layout (4 levels, mult [1, 2, 3, 4], 2 res blocks, attention at factors
    // 8/4/2, head dim 32) at model_channels 32 instead of 256, on 16x16 latents.
    let cfg = UnetConfig {
        model_channels: 32,
        ..UnetConfig::default()
    };
    unet_parity("unet paper layout, width 32", &cfg, 10, 64, 16);
}

fn ddim_parity(prediction: PredictionTarget, diffusers_name: &str) {
    let dir = reference(
        "diffusers_ref.py",
        "ddim",
        &json!({"prediction_type": diffusers_name, "steps": 200}),
    );
    let i = read(&dir.path().join("inputs.safetensors"));
    let o = read(&dir.path().join("outputs.safetensors"));
    let sched = Schedule::new(&DiffusionConfig {
        prediction,
        ..Default::default()
    });
    let steps = sched.ddim_timesteps(200);
    assert_eq!(Tensor::from_slice(&steps), o["timesteps"]);
    assert_eq!((steps[0], steps[1], steps[199]), (996, 991, 1));
    let ours = Tensor::from_slice(sched.alphas_cumprod()).to_kind(Kind::Float);
    assert_close("alphas_cumprod", &ours, &o["alphas_cumprod"]);
    assert_close(
        "q_sample",
        &sched.q_sample(&i["x0"], &i["t"], &i["noise"]),
        &o["noisy"],
    );
    if let Some(v) = o.get("velocity") {
        assert_close("v target", &sched.target(&i["x0"], &i["t"], &i["noise"]), v);
    }
    let mut x = i["x_T"].shallow_clone();
    let mut traj = Vec::new();
    for &t in &steps {
        let out = x.sin() * 0.7 + 0.1 * (t as f64 / 1000.0);
        x = sched.ddim_step(&out, t, &x, 200, 0.0, None);
        traj.push(x.shallow_clone());
    }
    assert_close(
        &format!("ddim 200-step trajectory ({diffusers_name})"),
        &Tensor::stack(&traj, 0),
        &o["trajectory"],
    );
}

#[test]
fn ddim_eps_matches_diffusers() {
    let _torch = common::torch();
    ddim_parity(PredictionTarget::Eps, "epsilon");
}

#[test]
fn ddim_x0_matches_diffusers() {
    let _torch = common::torch();
    ddim_parity(PredictionTarget::X0, "sample");
}

#[test]
fn ddim_v_matches_diffusers() {
    let _torch = common::torch();
    ddim_parity(PredictionTarget::V, "v_prediction");
}

/// DPM-Solver++(2M) against diffusers' DPMSolverMultistepScheduler on the DDIM test's schedule
/// and stand-in denoiser: timesteps and whole trajectories at 10, 20 and 25 steps, on linspace
/// timesteps and on Karras sigmas (`use_karras_sigmas=True`).
fn dpmpp_parity(prediction: PredictionTarget, diffusers_name: &str) {
    let counts = [10usize, 20, 25];
    let dir = reference(
        "diffusers_ref.py",
        "dpmpp",
        &json!({"prediction_type": diffusers_name, "steps": counts}),
    );
    let i = read(&dir.path().join("inputs.safetensors"));
    let o = read(&dir.path().join("outputs.safetensors"));
    let sched = Schedule::new(&DiffusionConfig {
        prediction,
        ..Default::default()
    });
    for (spacing, prefix) in [(Spacing::Linspace, ""), (Spacing::Karras, "karras_")] {
        for steps in counts {
            let mut solver = DpmSolverPp2m::new(&sched, steps, spacing);
            assert_eq!(
                Tensor::from_slice(solver.timesteps()),
                o[&format!("{prefix}timesteps_{steps}")],
                "{spacing:?}, {steps} steps"
            );
            let mut x = i["x_T"].shallow_clone();
            let mut traj = Vec::new();
            for t in solver.timesteps().to_vec() {
                let out = x.sin() * 0.7 + 0.1 * (t as f64 / 1000.0);
                x = solver.step(&out, &x);
                traj.push(x.shallow_clone());
            }
            assert_close(
                &format!("dpm-solver++ 2M {spacing:?} {steps}-step trajectory ({diffusers_name})"),
                &Tensor::stack(&traj, 0),
                &o[&format!("{prefix}trajectory_{steps}")],
            );
        }
    }
}

#[test]
fn dpmpp_2m_eps_matches_diffusers() {
    let _torch = common::torch();
    dpmpp_parity(PredictionTarget::Eps, "epsilon");
}

#[test]
fn dpmpp_2m_x0_matches_diffusers() {
    let _torch = common::torch();
    dpmpp_parity(PredictionTarget::X0, "sample");
}

#[test]
fn dpmpp_2m_v_matches_diffusers() {
    let _torch = common::torch();
    dpmpp_parity(PredictionTarget::V, "v_prediction");
}
