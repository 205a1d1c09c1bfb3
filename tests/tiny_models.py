"""Tiny SD-1.5- and SDXL-shaped pipelines with random weights, for fast tests (no network, no real weights).

Importing this module also makes sure the pack is importable as ``facesmith`` (its name when pip-installed) and caps
torch at one thread.

- ``build_tiny_sd15()`` / ``build_tiny_sdxl()``: in-memory pipelines (UNet block_out_channels (32, 64), tiny VAE with
  f=2, CLIP text encoders of width 32/48 over the real CLIP vocabulary from assets/clip_tokenizer);
- ``save_tiny_sd15(dir)`` / ``save_tiny_sdxl(dir)``: the same as a diffusers folder (safetensors);
- ``save_tiny_checkpoint(pipe, path)``: a single-file checkpoint in the original (LDM) key layout;
- ``copy_config_folder(src, dst)``: only the configs/tokenizer/scheduler of a diffusers folder (what a single-file
  checkpoint needs beside it).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import shutil
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def _ensure_pack() -> None:
    """Import the pack as ``facesmith`` (pip install -e . makes it that); without an install, register it as a bare
    package pointing at the repository (its ``__init__`` is not run), as ``tests/conftest.py`` does."""
    if "facesmith" in sys.modules:
        return
    try:
        import facesmith  # noqa: F401
        return
    except ImportError:
        for key in [k for k in sys.modules if k == "facesmith" or k.startswith("facesmith.")]:
            del sys.modules[key]
    spec = importlib.machinery.ModuleSpec("facesmith", None, is_package=True)
    module = importlib.util.module_from_spec(spec)
    module.__path__ = [str(REPO)]
    sys.modules["facesmith"] = module


_ensure_pack()


# ------------------------------------------------------------------------------------------------------ tokenizer


def tiny_tokenizer():
    """The real CLIP BPE tokenizer shipped in assets/clip_tokenizer (49,408 tokens, max length 77)."""
    from facesmith.core.synthface.base_model import load_tokenizer

    return load_tokenizer()


# ------------------------------------------------------------------------------------------------------- modules


def _scheduler():
    from diffusers import PNDMScheduler

    # SD1.5's own scheduler config
    return PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, sample_size=16,
    )


def _text_config(tok, hidden: int, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tok), max_position_embeddings=77, projection_dim=projection_dim or hidden,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        hidden_act="quick_gelu",
    )


def build_tiny_sd15(seed: int = 0):
    """A StableDiffusionPipeline with random weights (~1 M params), native size 16x16 px."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32,
    )
    return StableDiffusionPipeline(
        vae=_vae(), text_encoder=CLIPTextModel(_text_config(tok, 32)), tokenizer=tok, unet=unet,
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_sdxl(seed: int = 0):
    """A StableDiffusionXLPipeline with random weights: text encoders of width 32 and 48 (they must differ, as in
    real SDXL, for diffusers' single-file loader to tell them apart), cross-attention 80, native size 16x16 px."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    te1 = CLIPTextModel(_text_config(tok, 32))
    te2 = CLIPTextModelWithProjection(_text_config(tok, 48, projection_dim=32))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=80, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=32,
    )
    scheduler = EulerDiscreteScheduler.from_config(_scheduler().config, timestep_spacing="leading")
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=scheduler,
    )


# ------------------------------------------------------------------------------------------------------ on disk


def save_tiny_sd15(folder: Path, seed: int = 0) -> Path:
    """Save ``build_tiny_sd15(seed)`` as a diffusers folder (safetensors) at ``folder``."""
    build_tiny_sd15(seed).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def save_tiny_sdxl(folder: Path, seed: int = 0) -> Path:
    build_tiny_sdxl(seed).save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def save_tiny_checkpoint(pipe, path: Path) -> Path:
    """Save ``pipe`` as a single-file original-layout checkpoint (through the pack's converter and writer)."""
    from checkpoint_convert import save_original_checkpoint

    return save_original_checkpoint(pipe, path, metadata={"made_by": "tests/tiny_models.py"})


def copy_config_folder(src: Path, dst: Path) -> Path:
    """Copy a diffusers folder without its weights: model_index.json, */config.json, tokenizer*/, scheduler/."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / "model_index.json", dst / "model_index.json")
    for sub in src.iterdir():
        if not sub.is_dir():
            continue
        if sub.name.startswith(("tokenizer", "scheduler")):
            shutil.copytree(sub, dst / sub.name, dirs_exist_ok=True)
        elif (sub / "config.json").is_file():
            (dst / sub.name).mkdir(exist_ok=True)
            shutil.copy2(sub / "config.json", dst / sub.name / "config.json")
    return dst
