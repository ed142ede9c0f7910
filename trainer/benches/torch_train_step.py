"""PyTorch side of the training-step benchmark (trainer/benches/train_step.rs).

    python torch_train_step.py SPEC.json BATCH.safetensors

A bare eager loop over the same model as syncdiff-train's TrainModel (mel audio encoder, temporal
filter, pose bottleneck, diffusers UNet) on one pre-built batch: for every line "step" on stdin,
one optimizer step (audio contexts per sample, q_sample, forward, MSE to the configured target,
backward, clip by global norm, AdamW foreach=False, EMA as a for loop) and print its seconds.
The parameter count must equal the Rust model's (SPEC["parameters"]), or the script exits.
"""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "..", "model", "tests", "reference"))
from diffusers_ref import build_unet  # noqa: E402

CONV_WIDTHS = [16, 8, 4, 2, 1]


class Mel(torch.nn.Module):
    def __init__(self, input_dim, dim):
        super().__init__()
        self.proj1 = torch.nn.Linear(input_dim, dim)
        self.proj2 = torch.nn.Linear(dim, dim)

    def forward(self, x):
        return self.proj2(F.gelu(self.proj1(x)))


class Temporal(torch.nn.Module):
    def __init__(self, dim, hidden, window, all_tokens):
        super().__init__()
        self.window = window
        self.proj = torch.nn.Linear(dim, hidden)
        convs, cin = [], hidden
        for cout in CONV_WIDTHS:
            convs.append(torch.nn.Conv1d(cin, cout, 3, padding=1))
            cin = cout
        self.convs = torch.nn.ModuleList(convs)
        self.attention = torch.nn.Linear(window, window)
        self.position = torch.nn.Parameter(torch.randn(window, dim) * 0.02) if all_tokens else None

    def forward(self, features, centre):
        half = self.window // 2
        padded = F.pad(features, (0, 0, half, half))
        win = padded[:, centre:centre + self.window]
        h = self.proj(win).transpose(1, 2)
        for c in self.convs:
            y = c(h)
            h = torch.maximum(y, 0.02 * y)
        a = torch.softmax(self.attention(h.squeeze(1)), -1)
        if self.position is not None:
            return win * (a.unsqueeze(-1) * self.window) + self.position.unsqueeze(0)
        return a.unsqueeze(1) @ win


class Model(torch.nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.mel = Mel(spec["mel_input"], spec["context_dim"])
        self.temporal = Temporal(spec["context_dim"], spec["temporal_hidden"], spec["window"],
                                 spec["all_tokens"])
        np_, c = spec["previous"], spec["latent_channels"]
        self.bottleneck = torch.nn.Conv2d(c * np_, np_, 1, groups=np_)
        self.unet = build_unet(spec)


def main():
    spec = json.load(open(sys.argv[1]))
    batch = load_file(sys.argv[2])
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = Model(spec).train()
    params = [p for p in model.parameters() if p.requires_grad]
    count = sum(p.numel() for p in params)
    if count != spec["parameters"]:
        sys.exit(f"parameter count {count} != Rust's {spec['parameters']}: not the same model")
    opt = torch.optim.AdamW(params, lr=spec["lr"], betas=tuple(spec["betas"]), eps=spec["eps"],
                            weight_decay=spec["weight_decay"], foreach=False)
    ema = [p.detach().clone() for p in params]
    updates = 0
    z0, masked, identity = batch["z0"], batch["masked"], batch["identity"]
    previous, t, noise = batch["previous"], batch["timesteps"], batch["noise"]
    offsets = batch["offsets"].tolist()
    mels = [batch[f"mel_{i}"] for i in range(z0.shape[0])]
    ac = batch["alphas_cumprod"]
    b, np_, c, h, w = previous.shape
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "step":
            break
        start = time.perf_counter()
        ctx = torch.cat([model.temporal(model.mel(m.unsqueeze(0)), o)
                         for m, o in zip(mels, offsets)], 0)
        a = ac[t].float().view(-1, 1, 1, 1)
        x_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
        prior = model.bottleneck(previous.reshape(b, np_ * c, h, w))
        out = model.unet(torch.cat([x_t, masked, identity, prior], 1), t,
                         encoder_hidden_states=ctx).sample
        target = {"x0": z0, "eps": noise, "v": a.sqrt() * noise - (1 - a).sqrt() * z0}[
            spec["prediction"]]
        loss = F.mse_loss(out, target)
        loss.backward()
        loss.item()
        torch.nn.utils.clip_grad_norm_(params, spec["grad_clip"], foreach=False)
        opt.step()
        opt.zero_grad(set_to_none=False)
        d = min(spec["ema_decay"], (1 + updates) / (10 + updates))
        with torch.no_grad():
            for e, p in zip(ema, params):
                e.lerp_(p, 1 - d)
        updates += 1
        print(time.perf_counter() - start, flush=True)


main()
