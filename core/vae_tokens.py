"""VAE-encoder tokens of images: the frozen base's own VAE encoder as a detail feature for the identity adapter's
patch tokens and the instruction model's feature fusion.

One pass of the encoder gives both parts of a token: the last down level's feature map and the latent mean, each
pooled to ``grid x grid``. ``pooled_tokens`` is the maths both the diffusers path (``vae_tokens`` here) and the
native ComfyUI path (``nodes/native_vae.py``, through ComfyUI's VAE) use.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pooled_tokens(feature: torch.Tensor, mean: torch.Tensor, grid: int) -> torch.Tensor:
    """VAE tokens (N, grid*grid, C) from the VAE encoder's last down-block output and the latent mean."""
    f = torch.cat([F.adaptive_avg_pool2d(feature.float(), grid), F.adaptive_avg_pool2d(mean.float(), grid)], 1)
    return f.flatten(2).transpose(1, 2).cpu()


@torch.no_grad()
def vae_tokens(dp, x: torch.Tensor, grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(VAE tokens (N, grid*grid, C), latent mean (N, 4, h, w) unscaled) of model-format images x (N, 3, S, S) in
    [-1, 1] at the model's native size, through the diffusers pipeline ``dp``'s VAE."""
    vae = dp.vae
    dev, dt = next(vae.parameters()).device, next(vae.parameters()).dtype
    got = {}
    hook = vae.encoder.down_blocks[-1].register_forward_hook(lambda m, a, o: got.__setitem__("f", o))
    try:
        mean = vae.encode(x.to(dev, dt)).latent_dist.mean
    finally:
        hook.remove()
    return pooled_tokens(got["f"], mean, grid), mean.float().cpu()
