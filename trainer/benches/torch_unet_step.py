"""PyTorch side of the UNet training-step benchmark (trainer/benches/unet_step.rs).

    python torch_unet_step.py SPEC.json
Builds the diffusers UNet of SPEC, then for every line "step" on stdin runs one training step
(forward, MSE loss, backward, AdamW foreach=False step, zero_grad) and prints its seconds.
"""
import json
import os
import sys
import time

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "model", "tests", "reference"))
from diffusers_ref import build_unet  # noqa: E402

spec = json.load(open(sys.argv[1]))
torch.set_num_threads(spec["threads"])
torch.manual_seed(0)
model = build_unet(spec).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, foreach=False)
b, s = spec["batch"], spec["size"]
x = torch.randn(b, spec["in_channels"], s, s)
t = torch.randint(0, 1000, (b,))
ctx = torch.randn(b, spec["tokens"], spec["context_dim"])
target = torch.randn(b, spec["out_channels"], s, s)
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    start = time.perf_counter()
    out = model(x, t, encoder_hidden_states=ctx).sample
    loss = torch.nn.functional.mse_loss(out, target)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    print(time.perf_counter() - start, flush=True)
