"""SyncNet LSE-D / LSE-C reference (syncnet_python's SyncNetInstance.evaluate), for the Rust lip-sync metric.

    python syncnet_ref.py make --out syncnet.pt --seed 0 [--state-dict S.model] [--state-dict-zip S.pth]
        Build the SyncNet "S" architecture (Chung & Zisserman 2016, syncnet_python SyncNetModel.py)
        with random weights and random BatchNorm running statistics (eval mode), and save it with
        torch.jit.script. Exported methods: forward_lip((B,3,5,224,224)) -> (B,1024) and
        forward_aud((B,1,13,20)) -> (B,1024).

    python syncnet_ref.py lse --model syncnet.pt --video V.mp4 [--vshift 15] [--batch 20] [--dump DIR]
        Print {"lse_d", "lse_c", "offset", "frames", "windows"} as one JSON line. Same procedure as
        SyncNetInstance.evaluate except face detection/cropping: the whole frame is resized to
        224x224 by ffmpeg (area filter). --dump writes lip_feat.npy, aud_feat.npy, dists.npy, mdist.npy.
"""
import argparse
import json
import math
import os
import subprocess

import numpy as np
import python_speech_features
import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn_relu(conv: nn.Module, bn: nn.Module) -> list:
    return [conv, bn, nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """Layer-for-layer the SyncNetModel.S network (num_layers_in_fc_layers=1024)."""

    def __init__(self):
        super().__init__()
        # Audio: (B,1,13,20) MFCC -> (B,512,1,1)
        self.netcnnaud = nn.Sequential(
            *conv_bn_relu(nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64)),
            nn.MaxPool2d((1, 1), (1, 1)),
            *conv_bn_relu(nn.Conv2d(64, 192, 3, 1, 1), nn.BatchNorm2d(192)),
            nn.MaxPool2d((3, 3), (1, 2)),
            *conv_bn_relu(nn.Conv2d(192, 384, 3, 1, 1), nn.BatchNorm2d(384)),
            *conv_bn_relu(nn.Conv2d(384, 256, 3, 1, 1), nn.BatchNorm2d(256)),
            *conv_bn_relu(nn.Conv2d(256, 256, 3, 1, 1), nn.BatchNorm2d(256)),
            nn.MaxPool2d((3, 3), (2, 2)),
            *conv_bn_relu(nn.Conv2d(256, 512, (5, 4), 1, 0), nn.BatchNorm2d(512)),
        )
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))
        # Lip: (B,3,5,224,224) BGR 0..255 -> (B,512,1,1,1)
        self.netcnnlip = nn.Sequential(
            *conv_bn_relu(nn.Conv3d(3, 96, (5, 7, 7), (1, 2, 2), 0), nn.BatchNorm3d(96)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *conv_bn_relu(nn.Conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256)),
            *conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256)),
            *conv_bn_relu(nn.Conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.BatchNorm3d(256)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *conv_bn_relu(nn.Conv3d(256, 512, (1, 6, 6), 1, 0), nn.BatchNorm3d(512)),
        )
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 1024))

    @torch.jit.export
    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnlip(x)
        return self.netfclip(mid.view(mid.size(0), -1))

    @torch.jit.export
    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        mid = self.netcnnaud(x)
        return self.netfcaud(mid.view(mid.size(0), -1))


def cmd_make(args):
    torch.manual_seed(args.seed)
    net = SyncNet()
    # Random BatchNorm affine parameters and running statistics so that eval-mode BN is not the identity.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    net.eval()
    scripted = torch.jit.script(net)
    # Shape check on the scripted module.
    with torch.no_grad():
        assert scripted.forward_lip(torch.rand(2, 3, 5, 224, 224) * 255).shape == (2, 1024)
        assert scripted.forward_aud(torch.randn(2, 1, 13, 20)).shape == (2, 1024)
    scripted.save(args.out)
    # The same weights as a state dict, the form of syncnet_python's syncnet_v2.model (keys
    # netcnnaud.0.weight, ...): in the legacy torch.save format the released file has, and zipped.
    if args.state_dict:
        torch.save(net.state_dict(), args.state_dict, _use_new_zipfile_serialization=False)
    if args.state_dict_zip:
        torch.save(net.state_dict(), args.state_dict_zip)


def ffmpeg_bytes(video: str, *out_args: str) -> bytes:
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", video, *out_args, "pipe:1"]
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout


def calc_pdist(feat1: torch.Tensor, feat2: torch.Tensor, vshift: int) -> torch.Tensor:
    """(2*vshift+1, L): distance of video feature i to audio features i-vshift..i+vshift (zero-padded)."""
    win = 2 * vshift + 1
    feat2p = F.pad(feat2, (0, 0, vshift, vshift))
    dists = [F.pairwise_distance(feat1[[i], :].repeat(win, 1), feat2p[i:i + win, :]) for i in range(len(feat1))]
    return torch.stack(dists, 1)  # stacked on dim 1 as in syncnet_python, so the mean below sums in the same order


def cmd_lse(args):
    model = torch.jit.load(args.model).eval()

    # Video: whole frame resized to 224x224, RGB -> BGR (cv2 order), raw 0..255 floats, (1,3,T,224,224).
    raw = ffmpeg_bytes(args.video, "-map", "0:v:0", "-vf", "scale=224:224:flags=area", "-vsync", "passthrough",
                       "-f", "rawvideo", "-pix_fmt", "rgb24")
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 224, 224, 3)[..., ::-1]
    n_frames = frames.shape[0]
    imtv = torch.from_numpy(frames.transpose(3, 0, 1, 2).astype(np.float32))[None]

    # Audio: mono 16 kHz int16 -> MFCC (13 x N), as (1,1,13,N).
    audio = np.frombuffer(ffmpeg_bytes(args.video, "-map", "0:a:0", "-ac", "1", "-ar", "16000", "-f", "s16le"), np.int16)
    mfcc = python_speech_features.mfcc(audio, 16000).T
    cct = torch.from_numpy(mfcc.astype(np.float32))[None, None]

    # One window per start frame v: 5 video frames v..v+4, MFCC columns 4v..4v+19 (100 Hz vs 25 fps).
    min_length = min(n_frames, math.floor(len(audio) / 640))
    lastframe = min_length - 5
    if lastframe <= 0:
        raise SystemExit(f"video too short: {n_frames} frames, {len(audio)} audio samples")
    im_feat, cc_feat = [], []
    with torch.no_grad():
        for i in range(0, lastframe, args.batch):
            vs = range(i, min(lastframe, i + args.batch))
            im_feat.append(model.forward_lip(torch.cat([imtv[:, :, v:v + 5] for v in vs], 0)))
            cc_feat.append(model.forward_aud(torch.cat([cct[:, :, :, 4 * v:4 * v + 20] for v in vs], 0)))
    im_feat = torch.cat(im_feat, 0)
    cc_feat = torch.cat(cc_feat, 0)

    dists = calc_pdist(im_feat, cc_feat, args.vshift)
    mdist = dists.mean(1)
    minval, minidx = torch.min(mdist, 0)
    offset = args.vshift - int(minidx)
    conf = torch.median(mdist) - minval  # lower middle value for even counts; 2*vshift+1 is odd

    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        for name, t in [("lip_feat", im_feat), ("aud_feat", cc_feat), ("dists", dists.t()), ("mdist", mdist)]:
            np.save(os.path.join(args.dump, name + ".npy"), t.numpy())
    print(json.dumps({"lse_d": float(minval), "lse_c": float(conf), "offset": offset,
                      "frames": n_frames, "windows": lastframe}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--state-dict", help="also save the state dict here (legacy torch.save format)")
    m.add_argument("--state-dict-zip", help="also save the state dict here (zip torch.save format)")
    m.set_defaults(func=cmd_make)
    s = sub.add_parser("lse")
    s.add_argument("--model", required=True)
    s.add_argument("--video", required=True)
    s.add_argument("--vshift", type=int, default=15)
    s.add_argument("--batch", type=int, default=20)
    s.add_argument("--dump")
    s.set_defaults(func=cmd_lse)
    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
