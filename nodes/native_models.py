"""Native ComfyUI models from FaceSmith's diffusers folders: MODEL / CLIP / VAE built from ComfyUI's own model
classes (``comfy.supported_models.SD15``, ``comfy.sd.CLIP``, ``comfy.sd.VAE``) and placed by
``comfy.model_management``, so KSampler, LoraLoader, ``embedding:NAME`` and every other native node work on them.

ComfyUI detects a model type by matching weights against known sizes; an SD1.5-shaped folder of another size (the
built-in SynthFace base) is built here from its config files instead (``core/native_config.py``), including what
ComfyUI's layers hard-code: GroupNorm group counts, the VAE's down-scale factor and the latent scale. Only this
module and ``comfy_bridge`` import ComfyUI, and only when a node runs.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..core import paths
from ..core.models import list_base_models, resolve_base_model
from ..core.native_config import NativeConfig, NotSD15Shaped, native_config
from .node_errors import input_error

log = logging.getLogger("facesmith")


def _comfy():
    try:
        import comfy.latent_formats as latent_formats  # type: ignore
        import comfy.model_base as model_base  # type: ignore
        import comfy.model_management as mm  # type: ignore
        import comfy.model_patcher as model_patcher  # type: ignore
        import comfy.sd as sd  # type: ignore
        import comfy.sd1_clip as sd1_clip  # type: ignore
        import comfy.supported_models as supported_models  # type: ignore
        import comfy.supported_models_base as supported_models_base  # type: ignore
        import comfy.utils as utils  # type: ignore
        from comfy import diffusers_convert  # type: ignore
    except ImportError as exc:
        raise RuntimeError(f"native MODEL/CLIP/VAE need ComfyUI (comfy.* is not importable: {exc}); outside "
                           "ComfyUI use 'Load Base Model (FaceSmith)'") from exc
    return locals()


def _set_groups(module, groups: int) -> None:
    """ComfyUI's SD layers are built with 32 GroupNorm groups; a model trained with another count gets it here
    (``F.group_norm`` reads ``num_groups`` at every call)."""
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.GroupNorm):
            if m.num_channels % groups:
                raise NotSD15Shaped(f"a GroupNorm of {m.num_channels} channels cannot have {groups} groups")
            m.num_groups = groups


def _load_safetensors(folder: Path, sub: str) -> dict:
    from safetensors.torch import load_file

    files = sorted((folder / sub).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder / sub} has no .safetensors weights (FaceSmith reads safetensors only)")
    out = {}
    for f in files:
        out.update(load_file(str(f)))
    return out


def model_config_class(cfg: NativeConfig, c: dict):
    """A ``comfy.supported_models.SD15`` subclass for this size: head count, latent scale, sampling settings and
    prediction type from the folder's configs."""
    latent = type("FaceSmithLatent", (c["latent_formats"].SD15,),
                  {"__init__": lambda self: c["latent_formats"].SD15.__init__(self, scale_factor=cfg.latent_scale)})
    schedule = {"scaled_linear": "linear", "linear": "sqrt_linear"}[cfg.beta_schedule]  # ComfyUI's names
    model_type = c["model_base"].ModelType.V_PREDICTION if cfg.prediction == "v_prediction" \
        else c["model_base"].ModelType.EPS

    class FaceSmithSD15(c["supported_models"].SD15):
        unet_config = {}  # never matched by ComfyUI's detection: built only here
        unet_extra_config = {"num_heads": cfg.unet_config["num_heads"], "num_head_channels": -1}
        latent_format = latent
        sampling_settings = {"beta_schedule": schedule, "linear_start": cfg.beta_start, "linear_end": cfg.beta_end,
                             "timesteps": cfg.num_train_timesteps}

        def model_type(self, state_dict, prefix=""):
            return model_type

    return FaceSmithSD15


def load_native(folder: str | Path, embedding_directory=None):
    """(MODEL, CLIP, VAE) of the diffusers SD1.5-shaped pipeline in ``folder``, as ComfyUI's checkpoint loader
    returns them (ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE)."""
    c = _comfy()
    mm, utils = c["mm"], c["utils"]
    folder = Path(folder)
    cfg = native_config(folder)

    # ---- MODEL: ComfyUI's SD1.5 UNet at this size, weights renamed by ComfyUI's own diffusers map
    model_config = model_config_class(cfg, c)(dict(cfg.unet_config))
    unet_sd = _load_safetensors(folder, "unet")
    parameters = utils.calculate_parameters(unet_sd)
    mapping = utils.unet_to_diffusers(model_config.unet_config)
    new_sd = {mapping[k]: unet_sd.pop(k) for k in mapping if k in unet_sd}  # the map lists every possible key
    if unet_sd:
        raise NotSD15Shaped(f"the UNet has {len(unet_sd)} weights ComfyUI's SD1.5 UNet has no place for, e.g. "
                            f"{sorted(unet_sd)[:3]}")
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    unet_dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=list(model_config.supported_inference_dtypes),
                               weight_dtype=utils.weight_dtype(new_sd))
    model_config.set_inference_dtype(unet_dtype, mm.unet_manual_cast(unet_dtype, load_device,
                                                                     model_config.supported_inference_dtypes))
    model = model_config.get_model(new_sd, "")
    _set_groups(model.diffusion_model, cfg.unet_groups)
    model = model.to(offload_device)
    missing, _ = model.diffusion_model.load_state_dict(model_config.process_unet_state_dict(new_sd), strict=False)
    if missing:
        raise NotSD15Shaped(f"the UNet weights lack {len(missing)} of ComfyUI's SD1.5 UNet's, e.g. {missing[:3]}")
    patcher = c["model_patcher"].ModelPatcher(model, load_device=load_device, offload_device=offload_device)

    # ---- CLIP: ComfyUI's SD1 text encoder + tokenizer (embedding:NAME, weights syntax) at this width
    sd1_clip = c["sd1_clip"]
    width = cfg.clip_config["hidden_size"]

    class FaceSmithTokenizer(sd1_clip.SDTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            super().__init__(embedding_directory=embedding_directory, embedding_size=width, embedding_key="clip_l",
                             tokenizer_data=tokenizer_data)

    te_sd = _load_safetensors(folder, "text_encoder")
    # transformers 5 writes CLIPTextModel without the "text_model." prefix that ComfyUI's CLIP (like older files) has
    te_sd = {(k if k.startswith("text_model.") or k.startswith("text_projection") else f"text_model.{k}"): v
             for k, v in te_sd.items()}
    target = c["supported_models_base"].ClipTarget(sd1_clip.SD1Tokenizer, sd1_clip.SD1ClipModel)
    clip = c["sd"].CLIP(target, embedding_directory=embedding_directory,
                        tokenizer_data={"clip_l_tokenizer_class": FaceSmithTokenizer},
                        parameters=utils.calculate_parameters(te_sd),
                        model_options={"clip_l_model_config": dict(cfg.clip_config)})
    m, u = clip.load_sd(te_sd)
    m = [k for k in m if not k.endswith(("text_projection.weight", "logit_scale"))]
    if m:
        raise NotSD15Shaped(f"the text encoder lacks weights ComfyUI's CLIP needs, e.g. {m[:3]}")

    # ---- VAE: ComfyUI's AutoencoderKL at this size (diffusers keys renamed by ComfyUI's converter, whose
    # decoder numbering assumes four levels)
    vae_sd = c["diffusers_convert"].convert_vae_state_dict(_load_safetensors(folder, "vae"))
    levels = len(cfg.vae_ddconfig["ch_mult"])
    fixed = {}
    for k, v in vae_sd.items():
        if k.startswith("decoder.up."):
            idx, rest = k[len("decoder.up."):].split(".", 1)
            k = f"decoder.up.{int(idx) - (4 - levels)}.{rest}"
        fixed[k] = v
    vae = c["sd"].VAE(sd=fixed, config={"params": {"ddconfig": dict(cfg.vae_ddconfig),
                                                    "embed_dim": cfg.vae_embed_dim}})
    _set_groups(vae.first_stage_model, cfg.vae_groups)
    vae.downscale_ratio = vae.upscale_ratio = cfg.vae_downscale
    return patcher, clip, vae


def list_native_models() -> list[str]:
    return [m for m in list_base_models() if m.startswith("diffusers/")]


class FaceSmithCheckpointLoader:
    DISPLAY_NAME = "Load Checkpoint (FaceSmith)"
    CATEGORY = "FaceSmith/Base"
    DESCRIPTION = (
        "Loads an SD1.5-shaped diffusers folder of any size (the built-in SynthFace base included) as native "
        "ComfyUI MODEL, CLIP and VAE, through ComfyUI's own model classes and memory management, for KSampler, "
        "LoraLoader, 'embedding:NAME' prompts and every other native node. ComfyUI's own loaders cannot detect "
        "these sizes; standard checkpoints keep using them. The SynthFace VAE scales by 4, not 8: an Empty Latent "
        "Image of 128x128 gives 64x64 pictures."
    )
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("model", "clip", "vae")
    OUTPUT_TOOLTIPS = ("The diffusion model (ComfyUI's SD1.5 UNet at this size).",
                       "The text encoder and tokenizer (reads embedding:NAME from models/embeddings).",
                       "The VAE (ComfyUI's AutoencoderKL at this size).")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        models = list_native_models()
        default = "diffusers/synthface-base"
        if default not in models:
            models.append(default)
        return {"required": {"model": (models, {
            "default": default,
            "tooltip": "A diffusers SD1.5-shaped pipeline folder (models/diffusers/<name>/ or the built-in one)."})}}

    @classmethod
    def IS_CHANGED(cls, model):
        try:
            return paths.file_signature(resolve_base_model(model))
        except (FileNotFoundError, ValueError):
            return ""

    def load(self, model):
        node = self.DISPLAY_NAME
        try:
            folder = resolve_base_model(model)
        except (FileNotFoundError, ValueError) as exc:
            raise input_error(node, "model", exc) from exc
        try:
            import folder_paths  # type: ignore

            embeddings = folder_paths.get_folder_paths("embeddings")
        except ImportError:
            embeddings = [str(p) for p in paths.search_roots("embeddings")]
        try:
            return load_native(folder, embedding_directory=embeddings)
        except (NotSD15Shaped, FileNotFoundError) as exc:
            raise input_error(node, "model", f"({model}): {exc}") from exc


NODE_CLASS_MAPPINGS = {"FaceSmithCheckpointLoader": FaceSmithCheckpointLoader}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
