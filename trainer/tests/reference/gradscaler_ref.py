"""torch.amp.GradScaler's scale sequence for the Rust loss scaler's parity test
(trainer/tests/it/precision.rs).

    python gradscaler_ref.py INIT GROWTH BACKOFF INTERVAL PATTERN

PATTERN is one character per step: '.' a finite gradient, 'i' an inf, 'n' a NaN. Prints one
JSON line: {"scales": [scale after each update], "skipped": [whether the step was skipped]}.
"""
import json
import sys

import torch


def main():
    init, growth, backoff = (float(a) for a in sys.argv[1:4])
    interval = int(sys.argv[4])
    pattern = sys.argv[5]
    param = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([param], lr=0.1)
    scaler = torch.amp.GradScaler(
        "cpu", init_scale=init, growth_factor=growth, backoff_factor=backoff,
        growth_interval=interval,
    )
    scales, skipped = [], []
    for c in pattern:
        opt.zero_grad()
        loss = (param * torch.tensor([1.0, 2.0, 3.0])).sum()
        scaler.scale(loss).backward()
        if c != ".":
            param.grad[1] = float("inf") if c == "i" else float("nan")
        before = param.detach().clone()
        scaler.step(opt)
        scaler.update()
        skipped.append(bool(torch.equal(before, param.detach())))
        scales.append(scaler.get_scale())
    print(json.dumps({"scales": scales, "skipped": skipped}))


if __name__ == "__main__":
    main()
