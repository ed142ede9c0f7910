"""LSE-D / LSE-C computed by the PyPI package syncnet-python (a maintained re-release of
syncnet_python: its own SyncNetModel and SyncNetInstance.evaluate), run live, for the parity
test of `syncdiff eval --syncnet syncnet_v2.model`.

    python syncnet_peer.py weights --out syncnet_v2.model --seed 0
        The package's SyncNetModel with random weights and random BatchNorm statistics, saved as
        the released syncnet_v2.model is: a state dict in the legacy torch.save format.

    python syncnet_peer.py lse --weights W --video V.mp4 --work DIR --out LOSSLESS.mp4 [--vshift 15]
        What the package's pipeline hands to evaluate, made from V.mp4: DIR/%06d.jpg (224x224
        frames written with cv2.imwrite) and DIR/audio.wav (16 kHz mono int16). The pixels
        evaluate reads back from those JPEGs (cv2.imread) and the same audio are also written to
        LOSSLESS.mp4 (libx264rgb -qp 0, ALAC), so that `syncdiff eval` decodes exactly the
        bytes evaluate scored. Runs SyncNetInstance.evaluate on DIR and prints
        {"offset", "lse_c", "lse_d", "frames"} as the last line.
"""
import argparse
import json
import os
import subprocess
import types

import cv2
import numpy as np
import torch
from syncnet_python import SyncNetInstance, SyncNetModel

SIDE = 224


def cmd_weights(args):
    torch.manual_seed(args.seed)
    net = SyncNetModel(num_layers_in_fc_layers=1024)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), args.out, _use_new_zipfile_serialization=False)
    print(json.dumps({"tensors": len(net.state_dict())}))


def ffmpeg(*a: str, stdin: bytes = None) -> bytes:
    return subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *a], input=stdin,
                          check=True, stdout=subprocess.PIPE).stdout


def cmd_lse(args):
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    raw = ffmpeg("-i", args.video, "-map", "0:v:0", "-vf", f"scale={SIDE}:{SIDE}:flags=area",
                 "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:1")
    frames = np.frombuffer(raw, np.uint8).reshape(-1, SIDE, SIDE, 3)
    read_back = []
    for i, f in enumerate(frames):
        name = os.path.join(args.work, f"{i + 1:06d}.jpg")
        assert cv2.imwrite(name, f)
        read_back.append(cv2.imread(name))
    wav = os.path.join(args.work, "audio.wav")
    ffmpeg("-i", args.video, "-map", "0:a:0", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", wav)
    pixels = np.stack(read_back).tobytes()
    ffmpeg("-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{SIDE}x{SIDE}", "-r", "25", "-i", "pipe:0",
           "-i", wav, "-map", "0:v", "-map", "1:a", "-c:v", "libx264rgb", "-qp", "0",
           "-pix_fmt", "bgr24", "-c:a", "alac", args.out, stdin=pixels)
    net = SyncNetInstance(SyncNetModel(num_layers_in_fc_layers=1024), device="cpu")
    net.loadParameters(args.weights)
    opt = types.SimpleNamespace(tmp_dir=args.work, batch_size=20, vshift=args.vshift)
    with torch.no_grad():
        offset, conf, dist = net.evaluate(opt)
    print(json.dumps({"offset": offset, "lse_c": conf, "lse_d": dist, "frames": len(frames)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("weights")
    w.add_argument("--out", required=True)
    w.add_argument("--seed", type=int, default=0)
    w.set_defaults(func=cmd_weights)
    s = sub.add_parser("lse")
    s.add_argument("--weights", required=True)
    s.add_argument("--video", required=True)
    s.add_argument("--work", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--vshift", type=int, default=15)
    s.set_defaults(func=cmd_lse)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
