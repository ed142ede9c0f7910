"""References for the AV-HuBERT encoder tests (model/tests/avhubert.rs).

    python avhubert_ref.py encoder SPEC.json OUTDIR

The transformer stack is transformers' HubertEncoderStableLayerNorm with random weights; the front
end (Linear(104->D), zero video stream, LayerNorm(2D), Linear(2D->D)) is computed directly in torch.
Writes OUTDIR/weights.safetensors in fairseq's AV-HuBERT names (positional-conv weight norm
folded), OUTDIR/inputs.safetensors and OUTDIR/outputs.safetensors.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from diffusers_ref import rerandomise  # noqa: E402


def hf_encoder(spec):
    from transformers import HubertConfig
    from transformers.models.hubert.modeling_hubert import HubertEncoderStableLayerNorm

    cfg = HubertConfig(
        hidden_size=spec["dim"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        intermediate_size=spec["ffn"],
        num_conv_pos_embeddings=spec["kernel"],
        num_conv_pos_embedding_groups=spec["groups"],
        hidden_act="gelu",
        do_stable_layer_norm=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
    )
    # Eager attention: an implementation independent of the fused kernel the Rust side uses.
    cfg._attn_implementation = "eager"
    return HubertEncoderStableLayerNorm(cfg).eval()


def fairseq_names(enc):
    """HF HubertEncoderStableLayerNorm state -> fairseq AV-HuBERT `encoder.*` names."""
    out = {
        "encoder.pos_conv.0.weight": enc.pos_conv_embed.conv.weight.detach().clone(),
        "encoder.pos_conv.0.bias": enc.pos_conv_embed.conv.bias.detach().clone(),
        "encoder.layer_norm.weight": enc.layer_norm.weight.detach().clone(),
        "encoder.layer_norm.bias": enc.layer_norm.bias.detach().clone(),
    }
    for i, layer in enumerate(enc.layers):
        parts = {
            "self_attn.q_proj": layer.attention.q_proj,
            "self_attn.k_proj": layer.attention.k_proj,
            "self_attn.v_proj": layer.attention.v_proj,
            "self_attn.out_proj": layer.attention.out_proj,
            "self_attn_layer_norm": layer.layer_norm,
            "fc1": layer.feed_forward.intermediate_dense,
            "fc2": layer.feed_forward.output_dense,
            "final_layer_norm": layer.final_layer_norm,
        }
        for name, mod in parts.items():
            out[f"encoder.layers.{i}.{name}.weight"] = mod.weight.detach().clone()
            out[f"encoder.layers.{i}.{name}.bias"] = mod.bias.detach().clone()
    return out


def encoder(spec, out, gen):
    d = spec["dim"]
    enc = hf_encoder(spec)
    rerandomise(enc, gen)
    weights = fairseq_names(enc)
    front = {
        "feature_extractor_audio.proj.weight": torch.randn(d, 104, generator=gen) / 104**0.5,
        "feature_extractor_audio.proj.bias": 0.1 * torch.randn(d, generator=gen),
        "layer_norm.weight": 1 + 0.2 * torch.randn(2 * d, generator=gen),
        "layer_norm.bias": 0.2 * torch.randn(2 * d, generator=gen),
        "post_extract_proj.weight": torch.randn(d, 2 * d, generator=gen) / (2 * d) ** 0.5,
        "post_extract_proj.bias": 0.1 * torch.randn(d, generator=gen),
    }
    weights.update(front)
    b, t = 2, spec["frames"]
    audio = torch.randn(b, t, 104, generator=gen)
    feats = torch.randn(b, t, d, generator=gen)
    with torch.no_grad():
        a = F.linear(audio, front["feature_extractor_audio.proj.weight"], front["feature_extractor_audio.proj.bias"])
        fused = torch.cat([a, torch.zeros_like(a)], dim=-1)
        fused = F.layer_norm(fused, (2 * d,), front["layer_norm.weight"], front["layer_norm.bias"])
        front_out = F.linear(fused, front["post_extract_proj.weight"], front["post_extract_proj.bias"])
        # The input of layer i is the state after i layers (0: after the positional conv).
        inputs = []
        hooks = [layer.register_forward_pre_hook(lambda m, args, kw: inputs.append(args[0].clone()), with_kwargs=True) for layer in enc.layers]
        r = enc(feats)
        for h in hooks:
            h.remove()
    outputs = {"front": front_out, "encoder": r.last_hidden_state}
    for i, h in enumerate(inputs):
        outputs[f"hidden_{i}"] = h
    save_file({k: v.contiguous() for k, v in weights.items()}, f"{out}/weights.safetensors")
    save_file({"audio": audio, "features": feats}, f"{out}/inputs.safetensors")
    save_file({k: v.contiguous() for k, v in outputs.items()}, f"{out}/outputs.safetensors")


def main():
    kind, spec_path, out = sys.argv[1:4]
    spec = json.load(open(spec_path))
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(spec.get("seed", 0))
    {"encoder": encoder}[kind](spec, out, gen)


if __name__ == "__main__":
    main()
