"""Small random-weight network with the LPIPS formula, and a per-video LPIPS score, for the Rust LPIPS metric.

    python lpips_ref.py make --out lpips.pt --seed 0
        Save (torch.jit.script) a module forward(x, y) -> (N,1,1,1) for two (N,3,H,W) images in [-1,1]:
        LPIPS scaling layer, 3 conv3x3+ReLU stages (16/32/32 channels, 2x2 max-pool between stages),
        per-stage channel unit-normalisation, squared difference, 1x1 conv (non-negative, no bias)
        to one channel, spatial mean, summed over stages.

    python lpips_ref.py score --model lpips.pt --pred A.mp4 --gt B.mp4
        Print {"lpips": mean over frames, "frames": n}, comparing the first n = min(frames) frames
        of both videos at their native size.
"""
import argparse
import json
import subprocess
from typing import List

import numpy as np
import torch
import torch.nn as nn


def normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Unit-normalise over the channel dimension, as LPIPS's normalize_tensor."""
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)


class TinyLPIPS(nn.Module):
    def __init__(self, chans: List[int] = [16, 32, 32]):
        super().__init__()
        # LPIPS ScalingLayer constants.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        stages = []
        cin = 3
        for i, c in enumerate(chans):
            layers = [nn.MaxPool2d(2, 2)] if i > 0 else []
            stages.append(nn.Sequential(*layers, nn.Conv2d(cin, c, 3, 1, 1), nn.ReLU()))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, 1, 0, bias=False) for c in chans])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        hx = (x - self.shift) / self.scale
        hy = (y - self.shift) / self.scale
        total = torch.zeros(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)
        for stage, lin in zip(self.stages, self.lins):
            hx = stage(hx)
            hy = stage(hy)
            d = (normalize(hx) - normalize(hy)) ** 2
            total = total + lin(d).mean(dim=[2, 3], keepdim=True)
        return total


def cmd_make(args):
    torch.manual_seed(args.seed)
    net = TinyLPIPS()
    with torch.no_grad():
        for lin in net.lins:
            lin.weight.uniform_(0.0, 1.0)  # LPIPS linear weights are non-negative
    scripted = torch.jit.script(net.eval())
    with torch.no_grad():
        x = torch.rand(2, 3, 40, 48) * 2 - 1
        assert scripted(x, torch.rand(2, 3, 40, 48) * 2 - 1).shape == (2, 1, 1, 1)
        assert float(scripted(x, x).abs().max()) == 0.0
    scripted.save(args.out)


def read_frames(video: str) -> torch.Tensor:
    """Decode all frames at native size as (N,3,H,W) float in [-1,1]."""
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=width,height", "-of", "csv=p=0", video],
                           check=True, stdout=subprocess.PIPE, text=True).stdout
    w, h = (int(v) for v in probe.strip().split(",")[:2])
    raw = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", video, "-map", "0:v:0",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"],
                         check=True, stdout=subprocess.PIPE).stdout
    rgb = np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)
    return torch.from_numpy(rgb.transpose(0, 3, 1, 2).astype(np.float32)) / 127.5 - 1


def print_score(model, pred_video: str, gt_video: str):
    """Print {"lpips", "frames"}: `model`'s mean over the common frames, 16 pairs per call."""
    pred, gt = read_frames(pred_video), read_frames(gt_video)
    n = min(len(pred), len(gt))
    pred, gt = pred[:n], gt[:n]
    vals = []
    with torch.no_grad():
        for i in range(0, n, 16):
            vals.append(model(pred[i:i + 16], gt[i:i + 16]).flatten())
    score = float(torch.cat(vals).mean()) if n else float("nan")
    print(json.dumps({"lpips": score, "frames": n}))


def cmd_score(args):
    print_score(torch.jit.load(args.model).eval(), args.pred, args.gt)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_make)
    s = sub.add_parser("score")
    s.add_argument("--model", required=True)
    s.add_argument("--pred", required=True)
    s.add_argument("--gt", required=True)
    s.set_defaults(func=cmd_score)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
