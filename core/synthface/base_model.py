"""The tiny SD-1.5-shaped SynthFace base model: configs and a pipeline built from them.

AutoencoderKL (f=4: 64px -> 16x16x4, so thin glasses frames, mouths, irises and moles survive the round trip) +
UNet2DConditionModel (channels 32/64/128: a plain block at 16x16, cross-attention at 8x8 and 4x4) + CLIPTextModel
(hidden 128, 3 layers) with the real CLIP BPE vocabulary (assets/clip_tokenizer, 49,408 tokens, ids identical to
OpenAI CLIP) + a v-prediction DDPM noise schedule; saved as a normal diffusers folder so the real-model loader
loads it unchanged.
"""
from __future__ import annotations

from pathlib import Path

import torch

PACK_ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = PACK_ROOT / "assets" / "clip_tokenizer"
BUILTIN_MODELS = PACK_ROOT / "assets" / "models"
BASE_NAME = "synthface-base"
BASE_DIR = BUILTIN_MODELS / "diffusers" / BASE_NAME

IMAGE_SIZE = 64
LATENT_DOWNSCALE = 4
TEXT_HIDDEN = 128


def vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=IMAGE_SIZE,
                down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8)


def unet_config() -> dict:
    return dict(sample_size=IMAGE_SIZE // LATENT_DOWNSCALE, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=(32, 64, 128),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=TEXT_HIDDEN, attention_head_dim=4, norm_num_groups=16)


def text_config():
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=TEXT_HIDDEN, intermediate_size=2 * TEXT_HIDDEN,
                          num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=TEXT_HIDDEN)


def scheduler_kwargs() -> dict:
    return dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                prediction_type="v_prediction", clip_sample=False, timestep_spacing="trailing", steps_offset=1)


def load_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"),
                         pad_token="<|endoftext|>", model_max_length=77)


def build_components(seed: int = 0) -> dict:
    """Random-weight components (the starting point of training, and the 'random base' control)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return {
        "vae": AutoencoderKL(**vae_config()),
        "unet": UNet2DConditionModel(**unet_config()),
        "text_encoder": CLIPTextModel(text_config()),
        "tokenizer": load_tokenizer(),
        "scheduler": DDPMScheduler(**scheduler_kwargs()),
    }


def make_pipeline(components: dict):
    """A StableDiffusionPipeline over the components, with DPM-Solver++ as the inference scheduler."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    sched = DPMSolverMultistepScheduler.from_config(components["scheduler"].config, algorithm_type="dpmsolver++")
    pipe = StableDiffusionPipeline(vae=components["vae"], text_encoder=components["text_encoder"],
                                   tokenizer=components["tokenizer"], unet=components["unet"], scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
