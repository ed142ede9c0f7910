"""Writes a CompVis-layout VQ autoencoder checkpoint with random weights, as `torch.save` makes it,
plus diffusers reference outputs, for model/tests/convert.rs.

    python compvis_ckpt.py vq SPEC.json OUTDIR

OUTDIR/model.ckpt   Lightning-style checkpoint: state_dict in the CompVis key layout (with loss.*
                    keys), epoch, global_step, hyper-parameters, optimizer state; fp16 and fp32
                    tensors; two tensors sharing one storage
OUTDIR/evil.ckpt    a checkpoint whose pickle calls os.system (must be refused, never run)
OUTDIR/inputs.safetensors, OUTDIR/outputs.safetensors: image -> diffusers VQModel.encode / decode
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from diffusers_ref import rerandomise  # noqa: E402


def compvis_name(name, levels):
    """diffusers VQModel name -> CompVis name (the inverse of the Rust mapping, written apart)."""
    parts = name.split(".")
    net = parts[0]
    if net in ("quantize", "quant_conv", "post_quant_conv"):
        return name
    rest = parts[1:]
    if rest[0] == "conv_norm_out":
        out = ["norm_out"] + rest[1:]
    elif rest[0] in ("conv_in", "conv_out"):
        out = rest
    elif rest[0] == "mid_block":
        kind, idx = rest[1], rest[2]
        block = {"resnets.0": "block_1", "resnets.1": "block_2", "attentions.0": "attn_1"}[f"{kind}.{idx}"]
        out = ["mid", block] + rest[3:]
    elif rest[0] == "down_blocks":
        i = rest[1]
        if rest[2] == "resnets":
            out = ["down", i, "block", rest[3]] + rest[4:]
        else:
            out = ["down", i, "downsample"] + rest[4:]
    elif rest[0] == "up_blocks":
        i = str(levels - 1 - int(rest[1]))
        if rest[2] == "resnets":
            out = ["up", i, "block", rest[3]] + rest[4:]
        else:
            out = ["up", i, "upsample"] + rest[4:]
    else:
        raise KeyError(name)
    table = {"conv_shortcut": "nin_shortcut", "group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v"}
    out = [table.get(p, p) for p in out]
    joined = ".".join([net] + out)
    return joined.replace("to_out.0", "proj_out")


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = ""


def main():
    global MARKER
    kind, spec_path, out = sys.argv[1:4]
    spec = json.load(open(spec_path))
    MARKER = spec["marker"]
    from diffusers import VQModel

    gen = torch.Generator().manual_seed(1)
    n = len(spec["block_out_channels"])
    model = VQModel(
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=spec["block_out_channels"],
        layers_per_block=spec["layers_per_block"],
        latent_channels=3,
        num_vq_embeddings=spec["num_vq_embeddings"],
        norm_num_groups=spec["norm_num_groups"],
    ).eval()
    rerandomise(model, gen)
    sd = {}
    half = 0
    for name, t in model.state_dict().items():
        t = t.clone()
        if "attentions.0.to_" in name and name.endswith("weight"):
            t = t.reshape(t.shape[0], t.shape[1], 1, 1)  # CompVis uses 1x1 convs
        if "decoder.up_blocks" in name and name.endswith("conv1.weight"):
            t = t.half()  # stored in fp16: the reference uses the rounded values
            half += 1
        sd[compvis_name(name, n)] = t
    # Two tensors sharing one storage, at different offsets.
    w, b = "encoder.conv_in.weight", "encoder.conv_in.bias"
    buf = torch.cat([sd[w].flatten(), sd[b].flatten()])
    sd[w] = buf[: sd[w].numel()].view(sd[w].shape)
    sd[b] = buf[sd[w].numel():]
    sd["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4, generator=gen)
    sd["loss.logvar"] = torch.zeros(())
    # The reference model uses exactly the stored values (fp16-rounded where stored as fp16).
    with torch.no_grad():
        for name, p in model.state_dict().items():
            stored = sd[compvis_name(name, n)].float().reshape(p.shape)
            p.copy_(stored)
    ckpt = {
        "epoch": 3,
        "global_step": 12345,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": sd,
        "callbacks": {},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(4)}}, "param_groups": [{"lr": 4.5e-6}]}],
        "lr_schedulers": [],
        "hyper_parameters": {"embed_dim": 3, "n_embed": spec["num_vq_embeddings"], "ddconfig": {"ch": 128, "ch_mult": [1, 2, 4]}},
    }
    torch.save(ckpt, f"{out}/model.ckpt")
    torch.save({"state_dict": {}, "payload": Evil()}, f"{out}/evil.ckpt")
    image = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    with torch.no_grad():
        latent = model.encode(image).latents
        decoded = model.decode(latent).sample
    save_file({"image": image}, f"{out}/inputs.safetensors")
    save_file({"latent": latent.contiguous(), "decoded": decoded.contiguous()}, f"{out}/outputs.safetensors")
    print(f"fp16 tensors: {half}")


if __name__ == "__main__":
    main()
