"""ComfyUI model configurations computed from a diffusers SD1.5-shaped folder of any size (plain dicts; no ComfyUI
import here: ``nodes/native_models.py`` hands these to ComfyUI's own model classes).

ComfyUI recognises a UNet by matching its weights against a fixed list of known sizes (SD1.5 is 320 channels, a
768-wide text encoder, 32 normalisation groups), so a smaller SD1.5-shaped model such as the built-in SynthFace base
is "Could not detect model type". Everything ComfyUI needs is in the folder's config files, so it is read from there:

- ``unet_config``: the keyword arguments of ComfyUI's ``openaimodel.UNetModel`` (the same keys
  ``comfy.model_detection`` produces for SD1.5), plus the GroupNorm group count ComfyUI's layers do not take;
- ``vae_config``: ComfyUI's ``AutoencoderKL`` ``ddconfig`` + ``embed_dim``, the down-scale factor and group count;
- ``clip_config``: the transformers ``CLIPTextModel`` config keys ComfyUI's CLIP text model reads;
- the latent scale and the prediction type, from the VAE and scheduler configs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CLIP_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "hidden_act",
             "max_position_embeddings", "vocab_size", "projection_dim", "layer_norm_eps", "bos_token_id",
             "eos_token_id", "pad_token_id")


class NotSD15Shaped(ValueError):
    """The folder is not a diffusers SD1.5-shaped pipeline that ComfyUI's SD1.5 model classes can hold."""


@dataclass
class NativeConfig:
    unet_config: dict
    unet_groups: int
    vae_ddconfig: dict
    vae_embed_dim: int
    vae_groups: int
    vae_downscale: int
    clip_config: dict
    latent_scale: float
    prediction: str  # "epsilon" or "v_prediction"
    beta_start: float
    beta_end: float
    beta_schedule: str
    num_train_timesteps: int


def _read(folder: Path, name: str) -> dict:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise NotSD15Shaped(f"{folder} has no {name}: not a diffusers pipeline folder") from exc


def unet_config_from_diffusers(cfg: dict) -> tuple[dict, int]:
    """(ComfyUI UNetModel kwargs, GroupNorm groups) of a diffusers ``UNet2DConditionModel`` config of SD1.5 shape
    (cross-attention down/up blocks, one transformer per attention, no added embeddings)."""
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if cfg.get("addition_embed_type") or cfg.get("class_embed_type") or cfg.get("encoder_hid_dim"):
        raise NotSD15Shaped("the UNet has added/class embeddings (SDXL-style); only SD1.5-shaped UNets are handled")
    if cfg.get("use_linear_projection"):
        raise NotSD15Shaped("the UNet uses linear transformer projections (SD2/SDXL-style), not SD1.5's convolutions")
    if len(down) != len(up) or len(cfg["block_out_channels"]) != len(down):
        raise NotSD15Shaped("down, up and block_out_channels of the UNet config differ in length")
    layers = cfg["layers_per_block"]
    if not isinstance(layers, int):
        raise NotSD15Shaped("per-block layers_per_block lists are not handled")
    depth = cfg.get("transformer_layers_per_block", 1)
    if not isinstance(depth, int):
        raise NotSD15Shaped("per-block transformer_layers_per_block lists are not handled")
    base = cfg["block_out_channels"][0]
    mult = []
    for ch in cfg["block_out_channels"]:
        if ch % base:
            raise NotSD15Shaped(f"block_out_channels {cfg['block_out_channels']} are not multiples of the first")
        mult.append(ch // base)
    has_attn_down = [t.startswith("CrossAttn") for t in down]
    has_attn_up = [t.startswith("CrossAttn") for t in reversed(up)]  # shallow -> deep, like the down path
    if has_attn_down != has_attn_up:
        raise NotSD15Shaped("the UNet's up blocks do not mirror its down blocks' attention")
    heads = cfg.get("num_attention_heads") or cfg["attention_head_dim"]  # diffusers' SD1.5 naming: head count
    if not isinstance(heads, int):
        raise NotSD15Shaped("per-block attention head counts are not handled")
    mid = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid != "UNetMidBlock2DCrossAttn":
        raise NotSD15Shaped(f"mid block {mid!r} is not SD1.5's cross-attention mid block")
    for key, want in (("act_fn", "silu"), ("time_embedding_type", "positional"), ("flip_sin_to_cos", True),
                      ("freq_shift", 0), ("resnet_time_scale_shift", "default"), ("conv_in_kernel", 3),
                      ("conv_out_kernel", 3), ("only_cross_attention", False), ("upcast_attention", False)):
        if cfg.get(key, want) != want:
            raise NotSD15Shaped(f"the UNet's {key} is {cfg.get(key)!r}; ComfyUI's SD1.5 UNet has {want!r}")
    unet = {
        "use_checkpoint": False, "image_size": int(cfg.get("sample_size") or 32), "out_channels": cfg["out_channels"],
        "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None, "in_channels": cfg["in_channels"],
        "model_channels": base, "num_res_blocks": [layers] * len(mult),
        "transformer_depth": [depth if a else 0 for a in has_attn_down for _ in range(layers)],
        "channel_mult": mult, "transformer_depth_middle": depth, "use_linear_in_transformer": False,
        "context_dim": cfg["cross_attention_dim"], "num_heads": heads, "num_head_channels": -1,
        "transformer_depth_output": [depth if a else 0 for a in has_attn_up for _ in range(layers + 1)],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }
    return unet, int(cfg.get("norm_num_groups", 32))


def vae_config_from_diffusers(cfg: dict) -> tuple[dict, int, int, int]:
    """(ComfyUI AutoencoderKL ddconfig, embed_dim, GroupNorm groups, down-scale factor) of a diffusers
    ``AutoencoderKL`` config."""
    chans = list(cfg["block_out_channels"])
    if cfg.get("down_block_types") and any(t != "DownEncoderBlock2D" for t in cfg["down_block_types"]):
        raise NotSD15Shaped("the VAE has non-standard encoder blocks")
    if not cfg.get("use_quant_conv", True) or not cfg.get("use_post_quant_conv", True):
        raise NotSD15Shaped("the VAE has no (post-)quant convolutions, which ComfyUI's AutoencoderKL expects")
    if not cfg.get("mid_block_add_attention", True):
        raise NotSD15Shaped("the VAE's mid block has no attention, which ComfyUI's AutoencoderKL expects")
    if any(c % chans[0] for c in chans):
        raise NotSD15Shaped(f"VAE block_out_channels {chans} are not multiples of the first")
    z = cfg["latent_channels"]
    ddconfig = {"double_z": True, "z_channels": z, "resolution": int(cfg.get("sample_size") or 256),
                "in_channels": cfg["in_channels"], "out_ch": cfg["out_channels"], "ch": chans[0],
                "ch_mult": [c // chans[0] for c in chans], "num_res_blocks": cfg["layers_per_block"],
                "attn_resolutions": [], "dropout": 0.0}
    return ddconfig, z, int(cfg.get("norm_num_groups", 32)), 2 ** (len(chans) - 1)


def native_config(folder: str | Path) -> NativeConfig:
    """Everything ComfyUI needs to hold the diffusers SD1.5-shaped pipeline in ``folder`` as MODEL / CLIP / VAE."""
    folder = Path(folder)
    index = _read(folder, "model_index.json")
    if index.get("_class_name") not in (None, "StableDiffusionPipeline"):
        raise NotSD15Shaped(f"{folder} holds a {index.get('_class_name')}, not an SD1.5-shaped "
                            "StableDiffusionPipeline (SDXL folders: use ComfyUI's own loaders)")
    unet, unet_groups = unet_config_from_diffusers(_read(folder, "unet/config.json"))
    vae_cfg = _read(folder, "vae/config.json")
    ddconfig, embed_dim, vae_groups, downscale = vae_config_from_diffusers(vae_cfg)
    te = _read(folder, "text_encoder/config.json")
    clip = {k: te[k] for k in CLIP_KEYS if k in te}
    if clip.get("hidden_size") != unet["context_dim"]:
        raise NotSD15Shaped(f"the text encoder's width {clip.get('hidden_size')} is not the UNet's cross-attention "
                            f"width {unet['context_dim']}")
    sched_file = folder / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_file.read_text()) if sched_file.is_file() else {}
    schedule = sched.get("beta_schedule", "scaled_linear")
    if schedule not in ("scaled_linear", "linear"):
        raise NotSD15Shaped(f"beta_schedule {schedule!r} is not one ComfyUI's SD1.5 sampling settings express")
    return NativeConfig(unet_config=unet, unet_groups=unet_groups, vae_ddconfig=ddconfig, vae_embed_dim=embed_dim,
                        vae_groups=vae_groups, vae_downscale=downscale, clip_config=clip,
                        latent_scale=float(vae_cfg.get("scaling_factor", 0.18215)),
                        prediction=sched.get("prediction_type", "epsilon"),
                        beta_start=float(sched.get("beta_start", 0.00085)),
                        beta_end=float(sched.get("beta_end", 0.012)),
                        beta_schedule=schedule, num_train_timesteps=int(sched.get("num_train_timesteps", 1000)))
