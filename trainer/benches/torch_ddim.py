"""PyTorch side of the DDIM sampling benchmark (trainer/benches/ddim.rs).

    python torch_ddim.py SPEC.json
Builds the diffusers UNet of SPEC and a DDIMScheduler with LDM's settings (scaled_linear
0.0015..0.0195, steps_offset=1, set_alpha_to_one=False, clip_sample=False), then for every line
"step" on stdin runs one whole DDIM sampling loop (SPEC["steps"] UNet calls on the noisy sample
concatenated with the conditioning channels) under no_grad and prints its seconds.
"""
import json
import os
import sys
import time

import torch
from diffusers import DDIMScheduler

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "model", "tests", "reference"))
from diffusers_ref import build_unet  # noqa: E402

spec = json.load(open(sys.argv[1]))
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
model = build_unet(spec).eval()
sched = DDIMScheduler(
    num_train_timesteps=1000,
    beta_schedule="scaled_linear",
    beta_start=0.0015,
    beta_end=0.0195,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
    prediction_type=spec["prediction_type"],
)
b, s, c = spec["batch"], spec["size"], spec["out_channels"]
noise = torch.randn(b, c, s, s)
priors = torch.randn(b, spec["in_channels"] - c, s, s)
ctx = torch.randn(b, spec["tokens"], spec["context_dim"])
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    start = time.perf_counter()
    with torch.no_grad():
        sched.set_timesteps(spec["steps"])
        x = noise
        for t in sched.timesteps:
            out = model(torch.cat([x, priors], 1), t, encoder_hidden_states=ctx).sample
            x = sched.step(out, t, x, eta=0.0).prev_sample
    print(time.perf_counter() - start, flush=True)
