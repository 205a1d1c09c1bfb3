"""diffusers -> original (LDM/CompVis, what ComfyUI and A1111 load) key layout for SD1.5 and SDXL pipelines.

The inverse of diffusers' ``single_file_utils`` conversion, written for any block layout (the UNet/VAE configs give
the number of blocks and layers), so tiny test models and full-size models go through the same code. Used to save a
pipeline as one ``.safetensors`` checkpoint (``save_original_checkpoint``).

Test-only (it makes single-file checkpoints for the loader tests), so it lives here and not in the engine; import it
after ``tiny_models`` (which registers the pack as ``facesmith``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

_UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _split(key: str, n: int) -> tuple[list[str], str]:
    parts = key.split(".")
    return parts[:n], ".".join(parts[n:])


def _resnet_rest(rest: str) -> str:
    for new, old in _UNET_RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    raise KeyError(rest)


def unet_to_original(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict -> ``model.diffusion_model.*`` keys."""
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        raise ValueError("unet configs with a different layers_per_block per block are not supported")
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        head, rest = _split(key, 1)
        top = head[0]
        if top == "down_blocks":
            (_, b, sub, j), rest = _split(key, 4)
            b, j = int(b), int(j)
            if sub == "resnets":
                new = f"input_blocks.{1 + b * (lpb + 1) + j}.0.{_resnet_rest(rest)}"
            elif sub == "attentions":
                new = f"input_blocks.{1 + b * (lpb + 1) + j}.1.{rest}"
            elif sub == "downsamplers":  # downsamplers.0.conv.*
                new = f"input_blocks.{1 + b * (lpb + 1) + lpb}.0.op.{rest.split('.', 1)[1]}"
            else:
                raise KeyError(key)
        elif top == "up_blocks":
            (_, b, sub, j), rest = _split(key, 4)
            b, j = int(b), int(j)
            if sub == "resnets":
                new = f"output_blocks.{b * (lpb + 1) + j}.0.{_resnet_rest(rest)}"
            elif sub == "attentions":
                new = f"output_blocks.{b * (lpb + 1) + j}.1.{rest}"
            elif sub == "upsamplers":
                slot = 2 if up_has_attn[b] else 1
                new = f"output_blocks.{b * (lpb + 1) + lpb}.{slot}.{rest}"
            else:
                raise KeyError(key)
        elif top == "mid_block":
            (_, sub, j), rest = _split(key, 3)
            j = int(j)
            if sub == "resnets":
                new = f"middle_block.{2 * j}.{_resnet_rest(rest)}"
            elif sub == "attentions":
                new = f"middle_block.1.{rest}"
            else:
                raise KeyError(key)
        else:
            module, _, param = key.rpartition(".")
            if module not in _UNET_TOP:
                raise KeyError(f"unet key {key!r} has no original-layout equivalent")
            new = f"{_UNET_TOP[module]}.{param}"
        out[UNET_PREFIX + new] = value
    return out


_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def vae_to_original(state_dict: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict -> ``first_stage_model.*`` keys (attention projections as 1x1 convs)."""
    n_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key
        parts = key.split(".")
        coder = parts[0]
        if coder in ("encoder", "decoder") and parts[1] in ("down_blocks", "up_blocks"):
            b, sub = int(parts[2]), parts[3]
            block = f"down.{b}" if parts[1] == "down_blocks" else f"up.{n_up - 1 - b}"
            rest = ".".join(parts[5:])
            if sub == "resnets":
                new = f"{coder}.{block}.block.{parts[4]}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:  # downsamplers.0.conv / upsamplers.0.conv
                new = f"{coder}.{block}.{'downsample' if sub == 'downsamplers' else 'upsample'}.{rest}"
        elif coder in ("encoder", "decoder") and parts[1] == "mid_block":
            sub, j, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if sub == "resnets":
                new = f"{coder}.mid.block_{j + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
            else:
                module, _, param = rest.rpartition(".")
                new = f"{coder}.mid.attn_1.{_VAE_ATTN[module]}.{param}"
                if param == "weight" and module != "group_norm" and value.ndim == 2:
                    value = value[:, :, None, None]
        elif coder in ("encoder", "decoder") and parts[1] == "conv_norm_out":
            new = f"{coder}.norm_out.{parts[2]}"
        out[VAE_PREFIX + new] = value
    return out


def clip_to_original(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel state dict -> ``<prefix>text_model.*`` (HF layout, as SD1.5/SDXL store it)."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue
        if not key.startswith("text_model."):
            key = "text_model." + key  # transformers >= 5.6 flattened CLIPTextModel
        out[prefix + key] = value
    return out


_OPENCLIP = (
    ("text_model.encoder.layers.", "transformer.resblocks."),
    (".self_attn.out_proj.", ".attn.out_proj."),
    (".layer_norm1.", ".ln_1."),
    (".layer_norm2.", ".ln_2."),
    (".mlp.fc1.", ".mlp.c_fc."),
    (".mlp.fc2.", ".mlp.c_proj."),
)


def open_clip_to_original(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModelWithProjection state dict -> OpenCLIP layout (SDXL's second text encoder)."""
    sd = {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
          for k, v in state_dict.items() if not k.endswith("position_ids")}
    out = {
        prefix + "token_embedding.weight": sd.pop("text_model.embeddings.token_embedding.weight"),
        prefix + "positional_embedding": sd.pop("text_model.embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": sd.pop("text_model.final_layer_norm.weight"),
        prefix + "ln_final.bias": sd.pop("text_model.final_layer_norm.bias"),
        prefix + "text_projection": sd.pop("text_projection.weight").T.contiguous(),
    }
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        for q in ("q_proj", "k_proj", "v_proj"):
            marker = f".self_attn.{q}."
            if marker in key:
                layer, _, param = key.partition(marker)
                qkv.setdefault(f"{layer}|{param}", {})[q] = value
                break
        else:
            new = key
            for old_s, new_s in _OPENCLIP:
                new = new.replace(old_s, new_s)
            out[prefix + new] = value
    for lk, parts in qkv.items():
        layer, param = lk.split("|")
        layer = layer.replace("text_model.encoder.layers.", "transformer.resblocks.")
        out[f"{prefix}{layer}.attn.in_proj_{param}"] = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
    return out


def pipeline_to_original(pipe) -> dict[str, torch.Tensor]:
    """A diffusers StableDiffusion(XL)Pipeline -> one original-layout state dict (UNet, VAE, text encoder(s)).
    LoRA/peft adapters must be fused and unloaded first (their extra weights have no place in this layout)."""
    for part in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, part, None)
        if module is not None and any("lora_" in k or ".base_layer." in k for k in module.state_dict()):
            raise ValueError(f"pipeline.{part} has LoRA adapters attached; fuse_lora() and unload_lora_weights() "
                             "before saving it as a checkpoint")
    out = unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    out.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    if getattr(pipe, "text_encoder_2", None) is not None:
        out.update(clip_to_original(pipe.text_encoder.state_dict(), SDXL_CLIP_PREFIX))
        out.update(open_clip_to_original(pipe.text_encoder_2.state_dict(), SDXL_OPENCLIP_PREFIX))
    else:
        out.update(clip_to_original(pipe.text_encoder.state_dict(), SD15_CLIP_PREFIX))
    return out


def save_original_checkpoint(
    pipe,
    path: str | os.PathLike,
    metadata: Mapping | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Save ``pipe`` as a single-file original-layout ``.safetensors`` checkpoint (atomic, no overwrite by default)."""
    from facesmith.core.formats import save_safetensors

    state = pipeline_to_original(pipe)
    if dtype is not None:
        state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    return save_safetensors(path, state, metadata=metadata, overwrite=overwrite)
