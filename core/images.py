"""The one image conversion module.

Formats:

- **comfy**: ComfyUI ``IMAGE``, a torch float32 tensor ``(B, H, W, C)`` in ``[0, 1]``, C = 3 (RGB);
- **pil**: a list of ``PIL.Image.Image`` in RGB;
- **numpy**: ``uint8`` arrays ``(H, W, C)`` or ``(B, H, W, C)``;
- **model**: a torch tensor ``(B, C, H, W)`` in ``[-1, 1]`` (what VAEs and most encoders take).

Float -> uint8 rounds to nearest (``round(x * 255)``) so pil -> comfy -> pil is lossless.

PIL images of every mode read through :func:`pil_to_float` (and :func:`pil_alpha` for transparency): 8-bit modes as
PIL converts them; 16-bit integer modes (``I;16``, as 16-bit PNGs open) and ``I`` scaled by 1/65535, so they are not
clipped to white; ``F`` on PIL's own 0..255 scale (what ``convert`` assumes), non-finite values as 0.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = [
    "check_comfy",
    "comfy_to_pil",
    "pil_to_comfy",
    "comfy_to_numpy",
    "numpy_to_comfy",
    "pil_to_numpy",
    "numpy_to_pil",
    "comfy_to_model",
    "model_to_comfy",
    "unit_bchw_to_comfy",
    "pil_to_model",
    "model_to_pil",
    "pil_to_float",
    "pil_alpha",
]

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def pil_to_float(im: Image.Image) -> np.ndarray:
    """Any PIL image -> float32 ``(H, W, 3)`` RGB in [0, 1], scaled by the mode's range (see the module doc)."""
    if im.mode in _SIXTEEN_BIT:
        gray = np.asarray(im).astype(np.float32) / 65535.0
    elif im.mode == "F":
        gray = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0) / 255.0
    else:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    gray = np.clip(gray, 0.0, 1.0)
    return np.repeat(gray[..., None], 3, axis=-1)


def pil_alpha(im: Image.Image) -> np.ndarray | None:
    """The transparency of a PIL image as float32 ``(H, W)`` in [0, 1] (1 = opaque), or None if it has none
    (RGBA, LA, PA, and palette or 8-bit images with a ``transparency`` entry have one)."""
    if "A" in im.getbands():
        return np.asarray(im.getchannel("A"), dtype=np.float32) / 255.0
    if "transparency" in im.info and im.mode in ("P", "L", "RGB"):
        return np.asarray(im.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0
    return None


def check_comfy(images: torch.Tensor, what: str = "image") -> torch.Tensor:
    """Validate a ComfyUI IMAGE; a single ``(H, W, C)`` image gets a batch dimension. Returns float32 on its device."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what} must be a torch tensor (B, H, W, C), got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what} must have shape (B, H, W, C) with C in 1/3/4, got {tuple(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} is an empty batch")
    if not images.is_floating_point():
        raise TypeError(f"{what} must be a float tensor in [0, 1], got {images.dtype}")
    return images.float()


def _to_rgb_channels(images: torch.Tensor) -> torch.Tensor:
    c = images.shape[-1]
    if c == 3:
        return images
    if c == 1:
        return images.expand(*images.shape[:-1], 3)
    return images[..., :3]  # RGBA: drop alpha


def comfy_to_numpy(images: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE -> uint8 ``(B, H, W, 3)``."""
    images = _to_rgb_channels(check_comfy(images))
    return (images.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def numpy_to_comfy(arrays: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 ``(H, W, C)``/``(B, H, W, C)`` (or a list of same-size ``(H, W, C)``) -> ComfyUI IMAGE, RGB."""
    if not isinstance(arrays, np.ndarray):
        arrays = np.stack([np.asarray(a) for a in arrays])
    if arrays.ndim == 2:
        arrays = arrays[..., None]
    if arrays.ndim == 3:
        arrays = arrays[None]
    if arrays.ndim != 4 or arrays.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected uint8 images (B, H, W, C) with C in 1/3/4, got shape {arrays.shape}")
    if arrays.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {arrays.dtype}")
    t = torch.from_numpy(np.ascontiguousarray(arrays)).float() / 255.0
    return _to_rgb_channels(t).contiguous()


def pil_to_numpy(images: Image.Image | Iterable[Image.Image]) -> np.ndarray:
    """PIL image(s) -> uint8 ``(B, H, W, 3)``; all images must have the same size."""
    if isinstance(images, Image.Image):
        images = [images]
    arrays = [_pil_to_uint8(im) for im in images]
    if not arrays:
        raise ValueError("no images given")
    sizes = {a.shape for a in arrays}
    if len(sizes) > 1:
        raise ValueError(f"all images in a batch must have the same size, got {sorted(s[1::-1] for s in sizes)}")
    return np.stack(arrays)


def _pil_to_uint8(im: Image.Image) -> np.ndarray:
    if im.mode in _SIXTEEN_BIT or im.mode == "F":
        return np.round(pil_to_float(im) * 255.0).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def numpy_to_pil(arrays: np.ndarray) -> list[Image.Image]:
    """uint8 ``(H, W, C)``/``(B, H, W, C)`` -> list of RGB PIL images."""
    return [Image.fromarray(a, "RGB") for a in comfy_to_numpy(numpy_to_comfy(arrays))]


def comfy_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """ComfyUI IMAGE -> list of RGB PIL images."""
    return [Image.fromarray(a, "RGB") for a in comfy_to_numpy(images)]


def pil_to_comfy(images: Image.Image | Iterable[Image.Image]) -> torch.Tensor:
    """PIL image(s) of one size -> ComfyUI IMAGE."""
    return numpy_to_comfy(pil_to_numpy(images))


def comfy_to_model(images: torch.Tensor, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """ComfyUI IMAGE ``(B, H, W, C)`` in [0, 1] -> ``(B, 3, H, W)`` in [-1, 1]."""
    x = _to_rgb_channels(check_comfy(images)).permute(0, 3, 1, 2) * 2.0 - 1.0
    return x.to(device=device or x.device, dtype=dtype or torch.float32).contiguous()


def _check_bchw(images: torch.Tensor, expected: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected a (B, 3, H, W) tensor in {expected}, got {shape}")
    return images.detach().float().cpu()


def unit_bchw_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] (diffusers' ``output_type="pt"``) -> ComfyUI IMAGE (float32, CPU, clamped,
    NaN -> 0)."""
    x = _check_bchw(images, "[0, 1]")
    return torch.nan_to_num(x, nan=0.0).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def model_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [-1, 1] -> ComfyUI IMAGE (float32, CPU, clamped, NaN -> 0)."""
    return unit_bchw_to_comfy((_check_bchw(images, "[-1, 1]") + 1.0) / 2.0)


def pil_to_model(images: Image.Image | Iterable[Image.Image], device=None, dtype=None) -> torch.Tensor:
    """PIL image(s) -> ``(B, 3, H, W)`` in [-1, 1]."""
    return comfy_to_model(pil_to_comfy(images), device=device, dtype=dtype)


def model_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """``(B, 3, H, W)`` in [-1, 1] -> list of RGB PIL images."""
    return comfy_to_pil(model_to_comfy(images))
