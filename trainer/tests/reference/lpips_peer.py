"""LPIPS computed by the PyPI package lpips (0.1.4: LPIPS(net="alex"), v0.1, the linear-layer
weights its wheel ships), run live with a random AlexNet trunk, for the parity test of
`syncdiff eval --lpips alex.pth --alexnet A`.

    python lpips_peer.py alexnet --out alexnet.pth --seed 0
        torchvision's AlexNet with random weights, its whole state dict (features and classifier,
        as torchvision's alexnet-owt-7be5be79.pth) in the legacy torch.save format.
        Prints {"lin": the package's weights/v0.1/alex.pth}.

    python lpips_peer.py score --alexnet A --pred P.mp4 --gt G.mp4
        The package's LPIPS with that trunk: mean over the first min(frames) frames of both videos
        at their native size, frames in [-1, 1] (16 per call). Prints {"lpips", "frames"}.
"""
import argparse
import inspect
import json
import os

import lpips
import torch
import torchvision
from lpips_ref import print_score  # the same decoding and averaging as the TorchScript reference


def lin_weights() -> str:
    return os.path.join(os.path.dirname(inspect.getfile(lpips.LPIPS)), "weights", "v0.1", "alex.pth")


def cmd_alexnet(args):
    torch.manual_seed(args.seed)
    net = torchvision.models.alexnet(weights=None)
    torch.save(net.state_dict(), args.out, _use_new_zipfile_serialization=False)
    print(json.dumps({"lin": lin_weights()}))


def cmd_score(args):
    # pnet_rand: the trunk is not downloaded; ours is copied into it below.
    model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    trunk = torch.load(args.alexnet, map_location="cpu")
    copied = 0
    with torch.no_grad():
        for s in range(1, model.net.N_slices + 1):
            for idx, layer in getattr(model.net, f"slice{s}").named_children():
                if isinstance(layer, torch.nn.Conv2d):
                    layer.weight.copy_(trunk[f"features.{idx}.weight"])
                    layer.bias.copy_(trunk[f"features.{idx}.bias"])
                    copied += 1
    assert copied == 5, copied
    print_score(model.eval(), args.pred, args.gt)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("alexnet")
    a.add_argument("--out", required=True)
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(func=cmd_alexnet)
    s = sub.add_parser("score")
    s.add_argument("--alexnet", required=True)
    s.add_argument("--pred", required=True)
    s.add_argument("--gt", required=True)
    s.set_defaults(func=cmd_score)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
