"""ComfyUI model configurations computed from a diffusers SD1.5- or SDXL-shaped folder of any size (plain dicts; no
ComfyUI import here: ``nodes/native_models.py`` hands these to ComfyUI's own model classes).

ComfyUI recognises a UNet by matching its weights against a fixed list of known sizes (SD1.5 is 320 channels, a
768-wide text encoder, 32 normalisation groups; SDXL is 320 channels, 2048-wide context, 2816 added inputs), so a
smaller model of either shape, such as the built-in SynthFace base, is "Could not detect model type". Everything
ComfyUI needs is in the folder's config files, so it is read from there:

- ``unet_config``: the keyword arguments of ComfyUI's ``openaimodel.UNetModel`` (the same keys
  ``comfy.model_detection`` produces for SD1.5 / SDXL), plus the GroupNorm group count ComfyUI's layers do not take;
- ``vae_config``: ComfyUI's ``AutoencoderKL`` ``ddconfig`` + ``embed_dim``, the down-scale factor and group count;
- ``clip_config`` (and for SDXL ``clip_g_config``): the transformers ``CLIPTextModel`` config keys ComfyUI's CLIP
  text model reads, and each tokenizer's padding;
- for SDXL, the width of each of the six size/crop embeddings that join the pooled text vector (``adm_time_dim``);
- the latent scale and the prediction type, from the VAE and scheduler configs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CLIP_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "hidden_act",
             "max_position_embeddings", "vocab_size", "projection_dim", "layer_norm_eps", "bos_token_id",
             "eos_token_id", "pad_token_id")
FAMILIES = {"StableDiffusionPipeline": "sd15", "StableDiffusionXLPipeline": "sdxl"}
LABELS = {"sd15": "SD1.5", "sdxl": "SDXL"}


class UnsupportedShape(ValueError):
    """The folder is not a diffusers SD1.5- or SDXL-shaped pipeline that ComfyUI's SD1.5 / SDXL model classes can
    hold."""


@dataclass
class NativeConfig:
    family: str  # "sd15" or "sdxl"
    unet_config: dict
    unet_groups: int
    vae_ddconfig: dict
    vae_embed_dim: int
    vae_groups: int
    vae_downscale: int
    clip_config: dict  # SD1.5: the text encoder; SDXL: the first (CLIP-L-shaped) one
    latent_scale: float
    prediction: str  # "epsilon" or "v_prediction"
    beta_start: float
    beta_end: float
    beta_schedule: str
    num_train_timesteps: int
    clip_g_config: dict | None = None  # SDXL: the second text encoder (with projection: the pooled vector)
    adm_time_dim: int | None = None  # SDXL: width of each of the 6 size/crop embeddings
    pad_with_end: tuple = (True,)  # per tokenizer: pads with its end token (True) or with id 0 (SDXL's "!")

    @property
    def label(self) -> str:
        return LABELS[self.family]


def _read(folder: Path, name: str) -> dict:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise UnsupportedShape(f"{folder} has no {name}: not a diffusers pipeline folder") from exc


def _per_block(cfg: dict, key: str, n: int, default=None) -> list:
    value = cfg.get(key, default)
    if isinstance(value, int):
        return [value] * n
    if isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(v, int) for v in value):
        return list(value)
    raise UnsupportedShape(f"the UNet's {key} {value!r} is neither one number nor one per block")


def unet_config_from_diffusers(cfg: dict) -> tuple[dict, int]:
    """(ComfyUI UNetModel kwargs, GroupNorm groups) of a diffusers ``UNet2DConditionModel`` config of SD1.5 shape
    (cross-attention down/up blocks, no added embeddings) or SDXL shape (per-block transformer depths, linear
    projections, the text_time added embedding)."""
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    added = cfg.get("addition_embed_type")
    if added not in (None, "text_time"):
        raise UnsupportedShape(f"the UNet's addition_embed_type {added!r} is neither none (SD1.5) nor 'text_time' "
                               "(SDXL)")
    for key in ("class_embed_type", "encoder_hid_dim", "num_class_embeds", "time_cond_proj_dim",
                "reverse_transformer_layers_per_block", "time_embedding_dim", "timestep_post_act",
                "cross_attention_norm"):
        if cfg.get(key) is not None:
            raise UnsupportedShape(f"the UNet sets {key}={cfg[key]!r}, which neither SD1.5 nor SDXL has")
    if len(down) != len(up) or len(cfg["block_out_channels"]) != len(down):
        raise UnsupportedShape("down, up and block_out_channels of the UNet config differ in length")
    n = len(down)
    layers = cfg["layers_per_block"]
    if not isinstance(layers, int):
        raise UnsupportedShape("per-block layers_per_block lists are not handled")
    depth = _per_block(cfg, "transformer_layers_per_block", n, 1)
    if not isinstance(cfg["cross_attention_dim"], int):
        raise UnsupportedShape("per-block cross_attention_dim lists are not handled")
    chans = list(cfg["block_out_channels"])
    base = chans[0]
    mult = []
    for ch in chans:
        if ch % base:
            raise UnsupportedShape(f"block_out_channels {chans} are not multiples of the first")
        mult.append(ch // base)
    has_attn_down = [t.startswith("CrossAttn") for t in down]
    has_attn_up = [t.startswith("CrossAttn") for t in reversed(up)]  # shallow -> deep, like the down path
    if has_attn_down != has_attn_up:
        raise UnsupportedShape("the UNet's up blocks do not mirror its down blocks' attention")
    mid = cfg.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid != "UNetMidBlock2DCrossAttn":
        raise UnsupportedShape(f"mid block {mid!r} is not SD's cross-attention mid block")
    # diffusers' SD naming: attention_head_dim holds the HEAD COUNT (num_attention_heads when set)
    heads = _per_block(cfg, "num_attention_heads", n) if cfg.get("num_attention_heads") else \
        _per_block(cfg, "attention_head_dim", n)
    attn = [i for i in range(n) if has_attn_down[i]] + [n - 1]  # the mid block uses the deepest block's heads
    counts = {heads[i] for i in attn}
    widths = {chans[i] // heads[i] for i in attn if chans[i] % heads[i] == 0}
    if len(counts) == 1:  # one head count everywhere (SD1.5): ComfyUI's num_heads
        num_heads, head_channels = counts.pop(), -1
    elif len(widths) == 1 and all(chans[i] % heads[i] == 0 for i in attn):  # one head width (SDXL): num_head_channels
        num_heads, head_channels = -1, widths.pop()
    else:
        raise UnsupportedShape(f"attention heads {heads} over widths {chans} have neither one count nor one width")
    for key, want in (("act_fn", "silu"), ("time_embedding_type", "positional"), ("flip_sin_to_cos", True),
                      ("freq_shift", 0), ("resnet_time_scale_shift", "default"), ("conv_in_kernel", 3),
                      ("conv_out_kernel", 3), ("only_cross_attention", False), ("upcast_attention", False),
                      ("dual_cross_attention", False), ("attention_type", "default"),
                      ("mid_block_only_cross_attention", False), ("class_embeddings_concat", False)):
        got = cfg.get(key, want)
        if (bool(got) if want is False else got) != want:
            raise UnsupportedShape(f"the UNet's {key} is {cfg.get(key)!r}; ComfyUI's SD UNet has {want!r}")
    unet = {
        "use_checkpoint": False, "image_size": int(cfg.get("sample_size") or 32), "out_channels": cfg["out_channels"],
        "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None, "in_channels": cfg["in_channels"],
        "model_channels": base, "num_res_blocks": [layers] * n,
        "transformer_depth": [depth[i] if has_attn_down[i] else 0 for i in range(n) for _ in range(layers)],
        "channel_mult": mult, "transformer_depth_middle": depth[-1],
        "use_linear_in_transformer": bool(cfg.get("use_linear_projection")),
        "context_dim": cfg["cross_attention_dim"], "num_heads": num_heads, "num_head_channels": head_channels,
        "transformer_depth_output": [depth[i] if has_attn_up[i] else 0 for i in range(n) for _ in range(layers + 1)],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }
    if added == "text_time":
        unet["num_classes"] = "sequential"
        unet["adm_in_channels"] = int(cfg["projection_class_embeddings_input_dim"])
    return unet, int(cfg.get("norm_num_groups", 32))


def vae_config_from_diffusers(cfg: dict) -> tuple[dict, int, int, int]:
    """(ComfyUI AutoencoderKL ddconfig, embed_dim, GroupNorm groups, down-scale factor) of a diffusers
    ``AutoencoderKL`` config."""
    chans = list(cfg["block_out_channels"])
    if cfg.get("down_block_types") and any(t != "DownEncoderBlock2D" for t in cfg["down_block_types"]):
        raise UnsupportedShape("the VAE has non-standard encoder blocks")
    if not cfg.get("use_quant_conv", True) or not cfg.get("use_post_quant_conv", True):
        raise UnsupportedShape("the VAE has no (post-)quant convolutions, which ComfyUI's AutoencoderKL expects")
    if not cfg.get("mid_block_add_attention", True):
        raise UnsupportedShape("the VAE's mid block has no attention, which ComfyUI's AutoencoderKL expects")
    if any(c % chans[0] for c in chans):
        raise UnsupportedShape(f"VAE block_out_channels {chans} are not multiples of the first")
    z = cfg["latent_channels"]
    ddconfig = {"double_z": True, "z_channels": z, "resolution": int(cfg.get("sample_size") or 256),
                "in_channels": cfg["in_channels"], "out_ch": cfg["out_channels"], "ch": chans[0],
                "ch_mult": [c // chans[0] for c in chans], "num_res_blocks": cfg["layers_per_block"],
                "attn_resolutions": [], "dropout": 0.0}
    return ddconfig, z, int(cfg.get("norm_num_groups", 32)), 2 ** (len(chans) - 1)


def _clip(folder: Path, sub: str) -> dict:
    te = _read(folder, f"{sub}/config.json")
    return {k: te[k] for k in CLIP_KEYS if k in te}


def _pads_with_end(folder: Path, sub: str) -> bool:
    """Whether the tokenizer in ``sub`` pads with its end token (SD1.5, SDXL's first) rather than id 0 ("!", SDXL's
    second): ComfyUI's tokenizers must pad alike or the padded positions the UNet attends to differ."""
    try:
        cfg = json.loads((folder / sub / "tokenizer_config.json").read_text())
    except FileNotFoundError:
        return True
    pad, end = cfg.get("pad_token"), cfg.get("eos_token")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    end = end.get("content") if isinstance(end, dict) else end
    return pad is None or pad == end


def native_config(folder: str | Path) -> NativeConfig:
    """Everything ComfyUI needs to hold the diffusers SD1.5- or SDXL-shaped pipeline in ``folder`` as MODEL / CLIP /
    VAE."""
    folder = Path(folder)
    index = _read(folder, "model_index.json")
    name = index.get("_class_name")
    if name is None:
        name = "StableDiffusionXLPipeline" if (folder / "text_encoder_2").is_dir() else "StableDiffusionPipeline"
    family = FAMILIES.get(name)
    if family is None:
        raise UnsupportedShape(f"{folder} holds a {name}, not an SD1.5-shaped StableDiffusionPipeline or an "
                               "SDXL-shaped StableDiffusionXLPipeline (other pipelines: use ComfyUI's own loaders)")
    unet, unet_groups = unet_config_from_diffusers(_read(folder, "unet/config.json"))
    vae_cfg = _read(folder, "vae/config.json")
    ddconfig, embed_dim, vae_groups, downscale = vae_config_from_diffusers(vae_cfg)
    clip = _clip(folder, "text_encoder")
    extra: dict = {"pad_with_end": (_pads_with_end(folder, "tokenizer"),)}
    if family == "sd15":
        if unet["adm_in_channels"] is not None:
            raise UnsupportedShape("the UNet has SDXL's added text_time embedding but the folder is an SD1.5 "
                                   "StableDiffusionPipeline")
        if clip.get("hidden_size") != unet["context_dim"]:
            raise UnsupportedShape(f"the text encoder's width {clip.get('hidden_size')} is not the UNet's "
                                   f"cross-attention width {unet['context_dim']}")
    else:
        ucfg = _read(folder, "unet/config.json")
        if unet["adm_in_channels"] is None:
            raise UnsupportedShape("an SDXL pipeline's UNet needs addition_embed_type 'text_time'")
        clip_g = _clip(folder, "text_encoder_2")
        if clip.get("hidden_size", 0) + clip_g.get("hidden_size", 0) != unet["context_dim"]:
            raise UnsupportedShape(f"the text encoders' widths {clip.get('hidden_size')} + "
                                   f"{clip_g.get('hidden_size')} are not the UNet's cross-attention width "
                                   f"{unet['context_dim']}")
        for which, te in (("first", clip), ("second", clip_g)):
            if te.get("num_hidden_layers", 0) < 2:
                raise UnsupportedShape(f"SDXL reads its {which} text encoder's penultimate layer, which a "
                                       f"{te.get('num_hidden_layers')}-layer encoder does not have")
        time_dim = int(ucfg.get("addition_time_embed_dim") or 0)
        pooled = clip_g.get("projection_dim", clip_g.get("hidden_size"))
        if pooled + 6 * time_dim != unet["adm_in_channels"]:
            raise UnsupportedShape(f"the UNet's added input {unet['adm_in_channels']} is not the pooled text width "
                                   f"{pooled} + 6 x addition_time_embed_dim {time_dim}")
        extra = {"clip_g_config": clip_g, "adm_time_dim": time_dim,
                 "pad_with_end": (_pads_with_end(folder, "tokenizer"), _pads_with_end(folder, "tokenizer_2"))}
    sched_file = folder / "scheduler" / "scheduler_config.json"
    sched = json.loads(sched_file.read_text()) if sched_file.is_file() else {}
    schedule = sched.get("beta_schedule", "scaled_linear")
    if schedule not in ("scaled_linear", "linear"):
        raise UnsupportedShape(f"beta_schedule {schedule!r} is not one ComfyUI's SD sampling settings express")
    return NativeConfig(family=family, unet_config=unet, unet_groups=unet_groups, vae_ddconfig=ddconfig,
                        vae_embed_dim=embed_dim, vae_groups=vae_groups, vae_downscale=downscale, clip_config=clip,
                        latent_scale=float(vae_cfg.get("scaling_factor", 0.18215)),
                        prediction=sched.get("prediction_type", "epsilon"),
                        beta_start=float(sched.get("beta_start", 0.00085)),
                        beta_end=float(sched.get("beta_end", 0.012)),
                        beta_schedule=schedule, num_train_timesteps=int(sched.get("num_train_timesteps", 1000)),
                        **extra)
