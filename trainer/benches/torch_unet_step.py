"""PyTorch side of the UNet training-step benchmarks (trainer/benches/unet_step.rs, and
trainer/benches/gpu_step.rs on CUDA).

    python torch_unet_step.py SPEC.json
Builds the diffusers UNet of SPEC, then for every line "step" on stdin runs one training step
(forward, MSE loss, backward, AdamW step, zero_grad) and prints its seconds. On the CPU (the
default) AdamW runs with foreach=False, the loop the Rust side's per-tensor layout matches. With
"device": "cuda", PyTorch's defaults for CUDA (foreach AdamW) and "mode": fp32 | tf32 | bf16 |
fp16: TF32 flags, `torch.autocast("cuda", dtype)` around forward and loss, and GradScaler for
fp16; each step ends with torch.cuda.synchronize() before the clock stops.
"""
import contextlib
import json
import os
import sys
import time

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "model", "tests", "reference"))
from diffusers_ref import build_unet  # noqa: E402

spec = json.load(open(sys.argv[1]))
device = spec.get("device", "cpu")
mode = spec.get("mode", "fp32")
torch.set_num_threads(spec["threads"])
torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
torch.backends.cudnn.allow_tf32 = mode == "tf32"
torch.manual_seed(0)
model = build_unet(spec).train().to(device)
if device == "cpu":
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, foreach=False)
else:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
scaler = torch.amp.GradScaler(device) if mode == "fp16" else None
b, s = spec["batch"], spec["size"]
x = torch.randn(b, spec["in_channels"], s, s, device=device)
t = torch.randint(0, 1000, (b,), device=device)
ctx = torch.randn(b, spec["tokens"], spec["context_dim"], device=device)
target = torch.randn(b, spec["out_channels"], s, s, device=device)


def sync():
    if device != "cpu":
        torch.cuda.synchronize()


print("ready", flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    sync()
    start = time.perf_counter()
    region = torch.autocast(device, dtype=low) if low else contextlib.nullcontext()
    with region:
        out = model(x, t, encoder_hidden_states=ctx).sample
        loss = torch.nn.functional.mse_loss(out.float(), target)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    opt.zero_grad(set_to_none=False)
    sync()
    print(time.perf_counter() - start, flush=True)
