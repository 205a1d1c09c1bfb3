"""Native ComfyUI models from FaceSmith's diffusers folders: MODEL / CLIP / VAE built from ComfyUI's own model
classes (``comfy.supported_models.SD15`` / ``SDXL``, ``comfy.sd.CLIP``, ``comfy.sd.VAE``) and placed by
``comfy.model_management``, so KSampler, LoraLoader, ``embedding:NAME`` and every other native node work on them.

ComfyUI detects a model type by matching weights against known sizes; an SD1.5- or SDXL-shaped folder of another size
(the built-in SynthFace base) is built here from its config files instead (``core/native_config.py``), including what
ComfyUI's layers hard-code: GroupNorm group counts, the VAE's down-scale factor and the latent scale. Only this
module and ``comfy_bridge`` import ComfyUI, and only when a node runs.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from pathlib import Path

from ..core import paths
from ..core.models import list_base_models, resolve_base_model
from ..core.native_config import NativeConfig, UnsupportedShape, native_config
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
        import comfy.sdxl_clip as sdxl_clip  # type: ignore
        import comfy.supported_models as supported_models  # type: ignore
        import comfy.supported_models_base as supported_models_base  # type: ignore
        import comfy.utils as utils  # type: ignore
        from comfy import diffusers_convert  # type: ignore
        from comfy.ldm.modules.diffusionmodules import openaimodel  # type: ignore
    except ImportError as exc:
        raise RuntimeError(f"native MODEL/CLIP/VAE need ComfyUI (comfy.* is not importable: {exc}); outside "
                           "ComfyUI use 'Load Base Model (FaceSmith)'") from exc
    return locals()


_GROUPS_LOCK = threading.Lock()


@contextmanager
def _group_norm_groups(groups: int):
    """ComfyUI's SD layers are built with 32 GroupNorm groups, which a model of 16 channels cannot even be built
    with; while ComfyUI's classes are built here, every GroupNorm gets the folder's count instead (scoped to this
    block; the lock keeps two loads from interleaving)."""
    import torch

    init = torch.nn.GroupNorm.__init__

    def with_groups(self, num_groups, num_channels, *args, **kwargs):
        if num_channels % groups:
            raise UnsupportedShape(f"a GroupNorm of {num_channels} channels cannot have {groups} groups")
        init(self, groups, num_channels, *args, **kwargs)

    with _GROUPS_LOCK:
        torch.nn.GroupNorm.__init__ = with_groups
        try:
            yield
        finally:
            torch.nn.GroupNorm.__init__ = init


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
    """A ``comfy.supported_models.SD15`` / ``SDXL`` subclass for this size: heads, latent scale, sampling settings,
    prediction type and (SDXL) the width of the size/crop embeddings, from the folder's configs."""
    sdxl = cfg.family == "sdxl"
    lf = c["latent_formats"]
    if sdxl:
        latent = type("FaceSmithLatentXL", (lf.SDXL,), {"scale_factor": cfg.latent_scale})
    else:
        latent = type("FaceSmithLatent", (lf.SD15,),
                      {"__init__": lambda self: lf.SD15.__init__(self, scale_factor=cfg.latent_scale)})
    schedule = {"scaled_linear": "linear", "linear": "sqrt_linear"}[cfg.beta_schedule]  # ComfyUI's names
    model_type = c["model_base"].ModelType.V_PREDICTION if cfg.prediction == "v_prediction" \
        else c["model_base"].ModelType.EPS
    parent = c["supported_models"].SDXL if sdxl else c["supported_models"].SD15

    class FaceSmithModel(parent):
        unet_config = {}  # never matched by ComfyUI's detection: built only here
        unet_extra_config = {"num_heads": cfg.unet_config["num_heads"],
                             "num_head_channels": cfg.unet_config["num_head_channels"]}
        latent_format = latent
        sampling_settings = {"beta_schedule": schedule, "linear_start": cfg.beta_start, "linear_end": cfg.beta_end,
                             "timesteps": cfg.num_train_timesteps}

        def model_type(self, state_dict, prefix=""):
            return model_type

        def get_model(self, state_dict, prefix="", device=None):
            out = super().get_model(state_dict, prefix, device=device)
            if sdxl:  # SDXL embeds height, width, crop and target size at 256 wide each; this model at its own
                out.embedder = c["openaimodel"].Timestep(cfg.adm_time_dim)
            return out

    FaceSmithModel.__name__ = f"FaceSmith{cfg.label.replace('.', '')}"
    return FaceSmithModel


def _text_sd(folder: Path, sub: str) -> dict:
    # transformers 5 writes CLIPTextModel without the "text_model." prefix that ComfyUI's CLIP (like older files) has
    return {(k if k.startswith("text_model.") or k.startswith("text_projection") else f"text_model.{k}"): v
            for k, v in _load_safetensors(folder, sub).items()}


def _check_text_weights(missing, which: str) -> None:
    missing = [k for k in missing if not k.endswith(("text_projection.weight", "logit_scale"))]
    if missing:
        raise UnsupportedShape(f"the {which} lacks weights ComfyUI's CLIP needs, e.g. {missing[:3]}")


def _load_clip(folder: Path, cfg: NativeConfig, c: dict, embedding_directory):
    """ComfyUI's SD1 / SDXL text encoders and tokenizers (embedding:NAME, weights syntax) at this width, with the
    folder's own tokenizer files and padding."""
    import torch

    sd1_clip, sdxl_clip = c["sd1_clip"], c["sdxl_clip"]

    def tokenizer_args(sub: str, width: int, key: str, pad_with_end: bool) -> dict:
        path = folder / sub
        return {"tokenizer_path": str(path) if (path / "vocab.json").is_file() else None,
                "pad_with_end": pad_with_end, "embedding_size": width, "embedding_key": key}

    te_sd = _text_sd(folder, "text_encoder")
    width = cfg.clip_config["hidden_size"]
    if cfg.family == "sd15":
        class FaceSmithTokenizer(sd1_clip.SDTokenizer):
            def __init__(self, embedding_directory=None, tokenizer_data={}):
                super().__init__(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data,
                                 **tokenizer_args("tokenizer", width, "clip_l", cfg.pad_with_end[0]))

        target = c["supported_models_base"].ClipTarget(sd1_clip.SD1Tokenizer, sd1_clip.SD1ClipModel)
        clip = c["sd"].CLIP(target, embedding_directory=embedding_directory,
                            tokenizer_data={"clip_l_tokenizer_class": FaceSmithTokenizer},
                            parameters=c["utils"].calculate_parameters(te_sd),
                            model_options={"clip_l_model_config": dict(cfg.clip_config)})
        _check_text_weights(clip.load_sd(te_sd)[0], "text encoder")
        return clip

    te2_sd = _text_sd(folder, "text_encoder_2")
    width_g = cfg.clip_g_config["hidden_size"]

    class FaceSmithXLTokenizer(sdxl_clip.SDXLTokenizer):
        def __init__(self, embedding_directory=None, tokenizer_data={}):
            sub = "tokenizer_2" if (folder / "tokenizer_2").is_dir() else "tokenizer"
            self.clip_l = sd1_clip.SDTokenizer(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data,
                                               **tokenizer_args("tokenizer", width, "clip_l", cfg.pad_with_end[0]))
            self.clip_g = sd1_clip.SDTokenizer(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data,
                                               **tokenizer_args(sub, width_g, "clip_g", cfg.pad_with_end[1]))

    class FaceSmithXLClip(sdxl_clip.SDXLClipModel):
        """SDXL's two encoders, each read at its penultimate layer, counted from the front: ComfyUI's "-2" is
        refused for a 2-layer encoder although it names a layer that exists."""

        def __init__(self, device="cpu", dtype=None, model_options={}):
            torch.nn.Module.__init__(self)
            self.clip_l = sd1_clip.SDClipModel(layer="hidden", layer_idx=cfg.clip_config["num_hidden_layers"] - 2,
                                               device=device, dtype=dtype, layer_norm_hidden_state=False,
                                               model_options=model_options)
            self.clip_g = sdxl_clip.SDXLClipG(layer="hidden", layer_idx=cfg.clip_g_config["num_hidden_layers"] - 2,
                                              device=device, dtype=dtype, model_options=model_options)
            g = cfg.clip_g_config
            if g.get("projection_dim", g["hidden_size"]) != g["hidden_size"]:  # ComfyUI builds it square
                self.clip_g.transformer.text_projection = self.clip_g.operations.Linear(
                    g["hidden_size"], g["projection_dim"], bias=False, dtype=dtype, device=device)
            self.dtypes = {dtype}

    target = c["supported_models_base"].ClipTarget(FaceSmithXLTokenizer, FaceSmithXLClip)
    clip = c["sd"].CLIP(target, embedding_directory=embedding_directory,
                        parameters=c["utils"].calculate_parameters({**te_sd, **te2_sd}),
                        model_options={"clip_l_model_config": dict(cfg.clip_config),
                                       "clip_g_model_config": dict(cfg.clip_g_config)})
    # ComfyUI tells SDXL's two encoders apart by layer count (32 layers: G); at any size each is loaded by name
    _check_text_weights(clip.cond_stage_model.clip_l.load_sd(te_sd)[0], "first text encoder")
    missing = clip.cond_stage_model.clip_g.load_sd(te2_sd)[0]
    if "text_projection.weight" in missing:
        raise UnsupportedShape("the second text encoder has no text_projection (SDXL's pooled vector)")
    _check_text_weights(missing, "second text encoder")
    return clip


def load_native(folder: str | Path, embedding_directory=None):
    """(MODEL, CLIP, VAE) of the diffusers SD1.5- or SDXL-shaped pipeline in ``folder``, as ComfyUI's checkpoint
    loader returns them (ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE)."""
    c = _comfy()
    mm, utils = c["mm"], c["utils"]
    folder = Path(folder)
    cfg = native_config(folder)

    # ---- MODEL: ComfyUI's SD1.5 / SDXL UNet at this size, weights renamed by ComfyUI's own diffusers map
    model_config = model_config_class(cfg, c)(dict(cfg.unet_config))
    unet_sd = _load_safetensors(folder, "unet")
    parameters = utils.calculate_parameters(unet_sd)
    mapping = utils.unet_to_diffusers(model_config.unet_config)
    new_sd = {mapping[k]: unet_sd.pop(k) for k in mapping if k in unet_sd}  # the map lists every possible key
    if unet_sd:
        raise UnsupportedShape(f"the UNet has {len(unet_sd)} weights ComfyUI's {cfg.label} UNet has no place for, "
                               f"e.g. {sorted(unet_sd)[:3]}")
    load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
    unet_dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=list(model_config.supported_inference_dtypes),
                               weight_dtype=utils.weight_dtype(new_sd))
    model_config.set_inference_dtype(unet_dtype, mm.unet_manual_cast(unet_dtype, load_device,
                                                                     model_config.supported_inference_dtypes))
    with _group_norm_groups(cfg.unet_groups):
        model = model_config.get_model(new_sd, "")
    model = model.to(offload_device)
    missing, _ = model.diffusion_model.load_state_dict(model_config.process_unet_state_dict(new_sd), strict=False)
    if missing:
        raise UnsupportedShape(f"the UNet weights lack {len(missing)} of ComfyUI's {cfg.label} UNet's, e.g. "
                               f"{missing[:3]}")
    patcher = c["model_patcher"].ModelPatcher(model, load_device=load_device, offload_device=offload_device)

    clip = _load_clip(folder, cfg, c, embedding_directory)

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
    with _group_norm_groups(cfg.vae_groups):
        vae = c["sd"].VAE(sd=fixed, config={"params": {"ddconfig": dict(cfg.vae_ddconfig),
                                                        "embed_dim": cfg.vae_embed_dim}})
    vae.downscale_ratio = vae.upscale_ratio = cfg.vae_downscale
    return patcher, clip, vae


def list_native_models() -> list[str]:
    return [m for m in list_base_models() if m.startswith("diffusers/")]


class FaceSmithCheckpointLoader:
    DISPLAY_NAME = "Load Checkpoint (FaceSmith)"
    CATEGORY = "FaceSmith/Base"
    DESCRIPTION = (
        "Loads an SD1.5- or SDXL-shaped diffusers folder of any size (the built-in SynthFace base included) as native "
        "ComfyUI MODEL, CLIP and VAE, through ComfyUI's own model classes and memory management, for KSampler, "
        "LoraLoader, 'embedding:NAME' prompts and every other native node. ComfyUI's own loaders cannot detect "
        "these sizes; standard checkpoints keep using them. The SynthFace VAE scales by 4, not 8: an Empty Latent "
        "Image of 128x128 gives 64x64 pictures."
    )
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("model", "clip", "vae")
    OUTPUT_TOOLTIPS = ("The diffusion model (ComfyUI's SD1.5 or SDXL UNet at this size).",
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
            "tooltip": "A diffusers SD1.5- or SDXL-shaped pipeline folder (models/diffusers/<name>/ or the built-in "
                       "one)."})}}

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
        except (UnsupportedShape, FileNotFoundError) as exc:
            raise input_error(node, "model", f"({model}): {exc}") from exc


NODE_CLASS_MAPPINGS = {"FaceSmithCheckpointLoader": FaceSmithCheckpointLoader}
NODE_DISPLAY_NAME_MAPPINGS = {k: v.DISPLAY_NAME for k, v in NODE_CLASS_MAPPINGS.items()}
