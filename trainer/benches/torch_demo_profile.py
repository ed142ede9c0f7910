"""Where a training step of the demo's UNet goes on a CPU, in PyTorch (docs/training.md, "The CPU
demo"): the diffusers UNet with configs/demo.yaml's shape (16/32/48/64, one res-block a level,
transformers at 16x16 and 8x8, 10 input channels, 8 audio tokens of 64), batch 8 (one rank's
share of the demo's batch), one thread (one of the demo's two ranks).

    source ci/env.sh && python trainer/benches/torch_demo_profile.py [--reps N]

Prints, interleaved over N repetitions of 4 steps: fp32 vs bf16 autocast step time, and bf16 with
vs without the transformers at 16x16; then torch.profiler's table of the bf16 step's operators.
"""
import argparse
import os
import sys
import time

import torch

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "model", "tests", "reference"))
from diffusers_ref import build_unet  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("--reps", type=int, default=3)
args = parser.parse_args()
torch.set_num_threads(1)
spec = dict(channels=[16, 32, 48, 64], attention=[False, False, True, True], num_res_blocks=1,
            head_dim=16, depth=1, groups=8, in_channels=10, out_channels=3, context_dim=64,
            size=64)
torch.manual_seed(0)
models = {
    "16x16 + 8x8": build_unet(spec).train(),
    "8x8 only": build_unet(dict(spec, attention=[False, False, False, True])).train(),
}
optims = {k: torch.optim.AdamW(m.parameters(), lr=1e-4, foreach=False) for k, m in models.items()}
b = 8
x = torch.randn(b, 10, 64, 64)
t = torch.randint(0, 1000, (b,))
ctx = torch.randn(b, 8, 64)
target = torch.randn(b, 3, 64, 64)


def step(name, bf16):
    model, opt = models[name], optims[name]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x, t, encoder_hidden_states=ctx).sample
        loss = torch.nn.functional.mse_loss(out.float(), target)
    loss.backward()
    opt.step()
    opt.zero_grad()


def timed(name, bf16, steps=4):
    start = time.perf_counter()
    for _ in range(steps):
        step(name, bf16)
    return (time.perf_counter() - start) / steps


cases = [("fp32", "16x16 + 8x8", False), ("bf16", "16x16 + 8x8", True),
         ("bf16, transformers at 8x8 only", "8x8 only", True)]
for _, name, bf16 in cases:
    timed(name, bf16, steps=2)
times = {label: [] for label, _, _ in cases}
for _ in range(args.reps):
    for label, name, bf16 in cases:
        times[label].append(timed(name, bf16))
for label, values in times.items():
    values.sort()
    print(f"{label}: median {values[len(values) // 2]:.4f} s per step ({args.reps} reps)")

from torch.profiler import ProfilerActivity, profile  # noqa: E402

with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(3):
        step("16x16 + 8x8", True)
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
