"""Image features through a native ComfyUI VAE: the VAE-encoder tokens (``core/vae_tokens``) that the identity adapter
and the instruction model read, computed by ComfyUI's own VAE instead of a second diffusers copy."""
from __future__ import annotations

import torch


@torch.no_grad()
def comfy_vae_tokens(vae, x: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(VAE tokens, latent mean) of model-format images ``x`` (N, 3, S, S) in [-1, 1] through ComfyUI's VAE (its
    encoder's last down level gives the features diffusers' ``down_blocks[-1]`` gives)."""
    from ..core.vae_tokens import pooled_tokens

    encoder = vae.first_stage_model.encoder
    got = {}
    hook = encoder.down[-1].block[-1].register_forward_hook(lambda m, a, o: got.__setitem__("f", o))
    try:
        mean = vae.encode(((x + 1) / 2).permute(0, 2, 3, 1))  # ComfyUI's VAE takes (N, H, W, C) in [0, 1]
    finally:
        hook.remove()
    return pooled_tokens(got["f"], mean, grid), mean.float().cpu()


def model_native_size(model, vae) -> int:
    """The pixel size a native MODEL was built for: its UNet's sample size x the VAE's scale."""
    return int(model.model.model_config.unet_config["image_size"]) * int(vae.downscale_ratio)
