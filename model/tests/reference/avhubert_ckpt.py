"""Writes a fairseq AV-HuBERT checkpoint with random weights, as torch.save makes it, for
model/tests/convert.rs (the real base_vox_iter5.pt cannot be downloaded here).

    python avhubert_ckpt.py avhubert SPEC.json OUTDIR

OUTDIR/avhubert.pt      {"model": state dict in AV-HuBERT's key layout (audio and video front ends,
                        weight-normed positional conv, encoder layers, mask_emb, final_proj,
                        label_embs_concat), "cfg": nested omegaconf DictConfig, "args": argparse
                        Namespace, "optimizer_history": [...], "extra_state": {...}}
OUTDIR/expected.safetensors  what the conversion must produce (weight norm folded by torch)
"""
import argparse
import json
import sys

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file


def main():
    kind, spec_path, out = sys.argv[1:4]
    spec = json.load(open(spec_path))
    gen = torch.Generator().manual_seed(5)
    d, layers, ffn, k, g = spec["dim"], spec["layers"], spec["ffn"], spec["kernel"], spec["groups"]
    r = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    conv = torch.nn.utils.weight_norm(torch.nn.Conv1d(d, d, k, padding=k // 2, groups=g), name="weight", dim=2)
    with torch.no_grad():
        conv.weight_g.copy_(1 + 0.1 * r(*conv.weight_g.shape))
        conv.weight_v.copy_(r(*conv.weight_v.shape))
        conv.bias.copy_(0.1 * r(d))
    sd = {
        "feature_extractor_audio.proj.weight": r(d, 104),
        "feature_extractor_audio.proj.bias": r(d),
        "feature_extractor_video.proj.weight": r(d, 512),
        "feature_extractor_video.resnet.frontend3D.0.weight": r(8, 1, 5, 7, 7),
        "layer_norm.weight": r(2 * d),
        "layer_norm.bias": r(2 * d),
        "post_extract_proj.weight": r(d, 2 * d),
        "post_extract_proj.bias": r(d),
        "mask_emb": r(2 * d),
        "encoder.pos_conv.0.weight_g": conv.weight_g.detach().clone(),
        "encoder.pos_conv.0.weight_v": conv.weight_v.detach().clone(),
        "encoder.pos_conv.0.bias": conv.bias.detach().clone(),
        "encoder.layer_norm.weight": r(d),
        "encoder.layer_norm.bias": r(d),
        "final_proj.weight": r(256, d),
        "final_proj.bias": r(256),
        "label_embs_concat": r(2004, 256),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for name in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"]:
            sd[p + name + ".weight"] = r(d, d)
            sd[p + name + ".bias"] = r(d)
        for name in ["self_attn_layer_norm", "final_layer_norm"]:
            sd[p + name + ".weight"] = r(d)
            sd[p + name + ".bias"] = r(d)
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = r(ffn, d), r(ffn)
        sd[p + "fc2.weight"], sd[p + "fc2.bias"] = r(d, ffn), r(d)
    cfg = OmegaConf.create({
        "common": {"fp16": True, "log_interval": 200, "seed": 1337},
        "model": {"_name": "av_hubert", "encoder_layers": layers, "encoder_embed_dim": d,
                  "layer_norm_first": True, "conv_pos": k, "conv_pos_groups": g,
                  "feature_grad_mult": 0.1, "modality_fuse": "concat"},
        "task": {"_name": "av_hubert_pretraining", "labels": ["km"], "stack_order_audio": 4},
        "optimization": {"max_update": 400000, "lr": [0.002]},
    })
    args = argparse.Namespace(arch="av_hubert", encoder_layers=layers, nested=argparse.Namespace(dropout=0.1))
    ckpt = {
        "args": args,
        "cfg": cfg,
        "model": sd,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "AVHubertCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 400000}],
        "task_state": {},
        "extra_state": {"epoch": 97, "train_iterator": {"epoch": 97, "iterations_in_epoch": 4}},
        "last_optimizer_state": {"state": {0: {"exp_avg": torch.zeros(3)}}},
    }
    torch.save(ckpt, f"{out}/avhubert.pt")
    keep = {k: v for k, v in sd.items() if k.startswith(("feature_extractor_audio.", "layer_norm.", "post_extract_proj.", "encoder."))}
    del keep["encoder.pos_conv.0.weight_g"], keep["encoder.pos_conv.0.weight_v"]
    keep["encoder.pos_conv.0.weight"] = torch._weight_norm(conv.weight_v, conv.weight_g, 2).detach()
    save_file({k: v.contiguous() for k, v in keep.items()}, f"{out}/expected.safetensors")


if __name__ == "__main__":
    main()
