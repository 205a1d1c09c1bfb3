"""The denoising loss shared by domain tuning, one-image tuning and textual inversion (any prediction type)."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F


def training_scheduler(dp):
    """A DDPM scheduler with the pipeline's noise schedule and prediction type (for add_noise / get_velocity)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(dp.scheduler.config)


def scaling_factor(vae) -> float:
    return float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)


@torch.no_grad()
def latent_stats(vae, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """(B, 2C, h, w): posterior mean and std (unscaled) of images ``x`` in [-1, 1], float32 on the CPU."""
    dev, dt = next(vae.parameters()).device, next(vae.parameters()).dtype
    out = []
    for i in range(0, x.shape[0], batch):
        d = vae.encode(x[i:i + batch].to(dev, dt)).latent_dist
        out.append(torch.cat([d.mean, d.std], dim=1).float().cpu())
    return torch.cat(out)


def sample_latents(stats: torch.Tensor, sf: float, generator: torch.Generator | None = None) -> torch.Tensor:
    mean, std = stats.chunk(2, dim=1)
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    return (mean + std * eps.to(mean.device)) * sf


def denoise_loss(unet, sched, latents: torch.Tensor, cond: torch.Tensor,
                 generator: torch.Generator | None = None, t_min: int = 0, t_max: int | None = None) -> torch.Tensor:
    """MSE of the UNet's prediction (epsilon, v or sample, per the scheduler config) at timesteps drawn uniformly
    from ``[t_min, t_max)`` (default: all training timesteps)."""
    dev, dt = next(unet.parameters()).device, next(unet.parameters()).dtype
    latents = latents.to(dev, dt)
    noise = torch.randn(latents.shape, generator=generator).to(dev, dt)
    hi = sched.config.num_train_timesteps if t_max is None else int(t_max)
    t = torch.randint(int(t_min), hi, (latents.shape[0],), generator=generator).to(dev)
    noisy = sched.add_noise(latents, noise, t)
    kind = sched.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = sched.get_velocity(latents, noise, t)
    elif kind == "sample":
        target = latents
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}")
    pred = unet(noisy, t, encoder_hidden_states=cond.to(dev, dt)).sample
    return F.mse_loss(pred.float(), target.float())


def caption_ids(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(list(captions), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


@contextlib.contextmanager
def frozen(*modules) -> Iterator[None]:
    """``requires_grad_(False)`` on every parameter of ``modules`` meanwhile; the flags come back afterwards."""
    saved = [(p, p.requires_grad) for m in modules if m is not None for p in m.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextlib.contextmanager
def gradient_checkpointing(unet, enabled: bool) -> Iterator[None]:
    if not enabled or not getattr(unet, "_supports_gradient_checkpointing", True):
        yield
        return
    was = bool(getattr(unet, "is_gradient_checkpointing", False))
    unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if not was:
            unet.disable_gradient_checkpointing()


class ParamHolder(torch.nn.Module):
    """One trainable tensor as a module (what the training loop optimises and checkpoints)."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = torch.nn.Parameter(value.detach().clone().float())
