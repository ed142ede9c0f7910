"""torch.optim.AdamW (foreach=False) on fixed parameters and gradients, for trainer/tests/optim.rs.

    python adamw_ref.py OUTDIR    (reads OUTDIR/params.safetensors, writes OUTDIR/result.safetensors)
Gradient at step s (0-based) is sin(p * (s + 1)); learning rate 1e-2 * (s + 1).
"""
import sys

import torch
from safetensors.torch import load_file, save_file

out = sys.argv[1]
params = {k: v.clone().requires_grad_(True) for k, v in sorted(load_file(f"{out}/params.safetensors").items())}
opt = torch.optim.AdamW(list(params.values()), lr=1e-2, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.1, foreach=False)
for s in range(7):
    for p in params.values():
        p.grad = torch.sin(p.detach() * (s + 1))
    for g in opt.param_groups:
        g["lr"] = 1e-2 * (s + 1)
    opt.step()
result = {f"param.{k}": v.detach() for k, v in params.items()}
for k, v in params.items():
    st = opt.state[v]
    result[f"exp_avg.{k}"] = st["exp_avg"]
    result[f"exp_avg_sq.{k}"] = st["exp_avg_sq"]
save_file(result, f"{out}/result.safetensors")
