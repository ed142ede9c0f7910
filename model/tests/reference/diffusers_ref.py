"""Reference outputs from diffusers for the Rust parity tests (model/tests/parity.rs).

    python diffusers_ref.py vq   SPEC.json OUTDIR
    python diffusers_ref.py unet SPEC.json OUTDIR
    python diffusers_ref.py ddim SPEC.json OUTDIR
    python diffusers_ref.py dpmpp SPEC.json OUTDIR
    python diffusers_ref.py unet_train SPEC.json OUTDIR

Writes OUTDIR/weights.safetensors (every parameter re-randomised, diffusers names),
OUTDIR/inputs.safetensors and OUTDIR/outputs.safetensors.
"""
import json
import sys

import torch
from safetensors.torch import save_file


def rerandomise(model, gen):
    """Give every parameter a random value: no part (norm affines, zero-initialised output
    projections, biases) stays at its trivial initialisation."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embedding.weight"):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif p.dim() == 1 and ("norm" in name):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() == 1:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in**0.5)


def save(model, inputs, outputs, out):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{out}/weights.safetensors")
    save_file({k: v.contiguous() for k, v in inputs.items()}, f"{out}/inputs.safetensors")
    save_file({k: v.contiguous() for k, v in outputs.items()}, f"{out}/outputs.safetensors")


def vq(spec, out, gen):
    from diffusers import VQModel

    n = len(spec["block_out_channels"])
    model = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=spec["block_out_channels"],
        layers_per_block=spec["layers_per_block"],
        latent_channels=spec["latent_channels"],
        num_vq_embeddings=spec["num_vq_embeddings"],
        norm_num_groups=spec["norm_num_groups"],
        sample_size=spec["size"],
    ).eval()
    rerandomise(model, gen)
    image = torch.rand(2, 3, spec["size"], spec["size"], generator=gen) * 2 - 1
    with torch.no_grad():
        latent = model.encode(image).latents
        # Decode a latent near the codebook scale so the quantizer picks varied entries.
        code = torch.randn(latent.shape, generator=gen)
        decoded = model.decode(code).sample
    save(model, {"image": image, "code": code}, {"latent": latent, "decoded": decoded}, out)


def build_unet(spec):
    """UNet2DConditionModel with the shape of a Rust `UnetShape` (heads per level = c / head_dim)."""
    from diffusers import UNet2DConditionModel

    ch = spec["channels"]
    attn = spec["attention"]
    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)]
    return UNet2DConditionModel(
        sample_size=spec["size"],
        in_channels=spec["in_channels"],
        out_channels=spec["out_channels"],
        down_block_types=down,
        up_block_types=up,
        block_out_channels=ch,
        layers_per_block=spec["num_res_blocks"],
        cross_attention_dim=spec["context_dim"],
        attention_head_dim=tuple(c // spec["head_dim"] for c in ch),
        norm_num_groups=spec["groups"],
        transformer_layers_per_block=spec["depth"],
    )


def random_unet(model, spec, gen):
    """Re-randomises `model` and draws a batch of 2: sample, timesteps and context."""
    rerandomise(model, gen)
    b = 2
    sample = torch.randn(b, spec["in_channels"], spec["size"], spec["size"], generator=gen)
    timestep = torch.tensor([17, 803], dtype=torch.int64)
    context = torch.randn(b, spec["tokens"], spec["context_dim"], generator=gen)
    return sample, timestep, context


def unet(spec, out, gen):
    model = build_unet(spec).eval()
    sample, timestep, context = random_unet(model, spec, gen)
    with torch.no_grad():
        output = model(sample, timestep, encoder_hidden_states=context).sample
    save(model, {"sample": sample, "timestep": timestep, "context": context}, {"output": output}, out)


def unet_train(spec, out, gen):
    """One training step's loss and gradients (MSE against a target) in float32 and under
    torch.autocast("cpu", torch.bfloat16): the forward and the loss inside the region, the
    backward outside it, as a PyTorch training loop does."""
    model = build_unet(spec).train()
    sample, timestep, context = random_unet(model, spec, gen)
    target = torch.randn(2, spec["out_channels"], spec["size"], spec["size"], generator=gen)
    outputs = {}
    for name, dtype in [("fp32", None), ("bf16", torch.bfloat16)]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            pred = model(sample, timestep, encoder_hidden_states=context).sample
            loss = torch.nn.functional.mse_loss(pred, target)
        loss.backward()
        outputs[f"{name}.loss"] = loss.detach().float().reshape(1)
        outputs[f"{name}.pred_dtype_bf16"] = torch.tensor([float(pred.dtype == torch.bfloat16)])
        for k, p in model.named_parameters():
            outputs[f"{name}.grad.{k}"] = p.grad.detach().clone()
    inputs = {"sample": sample, "timestep": timestep, "context": context, "target": target}
    save(model, inputs, outputs, out)


def fake_model(x, t):
    """The same deterministic stand-in for a denoiser on both sides of the DDIM test."""
    return 0.7 * torch.sin(x) + 0.1 * (t / 1000.0)


def ddim(spec, out, gen):
    from diffusers import DDIMScheduler, DDPMScheduler

    kw = dict(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.0015,
        beta_end=0.0195,
        clip_sample=False,
        prediction_type=spec["prediction_type"],
    )
    sched = DDIMScheduler(steps_offset=1, set_alpha_to_one=False, **kw)
    sched.set_timesteps(spec["steps"])
    x = torch.randn(2, 3, 8, 8, generator=gen)
    inputs = {"x_T": x.clone()}
    outputs = {"timesteps": sched.timesteps.clone(), "alphas_cumprod": sched.alphas_cumprod.clone()}
    traj = []
    for t in sched.timesteps:
        x = sched.step(fake_model(x, float(t)), t, x, eta=0.0).prev_sample
        traj.append(x)
    outputs["trajectory"] = torch.stack(traj)
    ddpm = DDPMScheduler(**kw)
    x0 = torch.randn(4, 3, 8, 8, generator=gen)
    noise = torch.randn(4, 3, 8, 8, generator=gen)
    t = torch.tensor([0, 1, 500, 999], dtype=torch.int64)
    inputs.update({"x0": x0, "noise": noise, "t": t})
    outputs["noisy"] = ddpm.add_noise(x0, noise, t)
    if spec["prediction_type"] == "v_prediction":
        outputs["velocity"] = ddpm.get_velocity(x0, noise, t)
    save_file({k: v.contiguous() for k, v in inputs.items()}, f"{out}/inputs.safetensors")
    save_file({k: v.contiguous() for k, v in outputs.items()}, f"{out}/outputs.safetensors")


def dpmpp(spec, out, gen):
    """DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint) trajectories on the DDIM
    test's schedule and stand-in denoiser, one per step count in spec["steps"], on linspace
    timesteps (keys `timesteps_N`, `trajectory_N`) and on Karras sigmas (`karras_...`)."""
    from diffusers import DPMSolverMultistepScheduler

    x_T = torch.randn(2, 3, 8, 8, generator=gen)
    inputs = {"x_T": x_T.clone()}
    outputs = {}
    for karras in (False, True):
        sched = DPMSolverMultistepScheduler(
            num_train_timesteps=1000,
            beta_schedule="scaled_linear",
            beta_start=0.0015,
            beta_end=0.0195,
            prediction_type=spec["prediction_type"],
            algorithm_type="dpmsolver++",
            solver_order=2,
            use_karras_sigmas=karras,
        )
        prefix = "karras_" if karras else ""
        for steps in spec["steps"]:
            sched.set_timesteps(steps)
            x = x_T.clone()
            traj = []
            for t in sched.timesteps:
                x = sched.step(fake_model(x, float(t)), t, x).prev_sample
                traj.append(x)
            outputs[f"{prefix}timesteps_{steps}"] = sched.timesteps.clone()
            outputs[f"{prefix}trajectory_{steps}"] = torch.stack(traj)
    save_file({k: v.contiguous() for k, v in inputs.items()}, f"{out}/inputs.safetensors")
    save_file({k: v.contiguous() for k, v in outputs.items()}, f"{out}/outputs.safetensors")


def main():
    kind, spec_path, out = sys.argv[1:4]
    spec = json.load(open(spec_path))
    torch.manual_seed(0)
    torch.set_num_threads(spec.get("threads", 1))
    gen = torch.Generator().manual_seed(spec.get("seed", 0))
    {"vq": vq, "unet": unet, "ddim": ddim, "dpmpp": dpmpp, "unet_train": unet_train}[kind](spec, out, gen)


if __name__ == "__main__":
    main()
