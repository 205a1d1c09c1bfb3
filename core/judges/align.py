"""Image batches for the judges, and arcface alignment without OpenCV.

- :func:`to_batch`: uint8 numpy ``(H, W, 3)``/``(N, H, W, 3)``, a list of those, or a ComfyUI IMAGE (torch float
  ``(B, H, W, C)`` in [0, 1]) -> torch float ``(N, 3, H, W)`` in [0, 1], RGB;
- :func:`similarity_transform`: the least-squares similarity (Umeyama) mapping 5 landmarks onto a template, as a
  2x3 matrix (what ``insightface.utils.face_align.estimate_norm`` computes);
- :func:`warp`: ``cv2.warpAffine``-equivalent bilinear warp of a batch with one 2x3 matrix per image (pixel centres
  at integer coordinates, zeros outside), so ``warp(img, similarity_transform(kps, ARCFACE_DST))`` is insightface's
  ``norm_crop``;
- :func:`canonical_landmarks`: where the 5 landmarks of an upright, centred SynthFace face lie on average, as
  fractions of the image side. The recognizer aligns an image it has no landmarks for with them.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

# insightface's arcface template for a 112x112 crop (eyes, nose tip, mouth corners)
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def to_batch(images, what: str = "images") -> torch.Tensor:
    """Images in any supported form -> float ``(N, 3, H, W)`` in [0, 1] on the CPU."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError(f"{what}: empty list")
        images = np.stack([np.asarray(a) for a in images])
    if isinstance(images, np.ndarray):
        a = images
        if a.ndim == 3:
            a = a[None]
        if a.ndim != 4 or a.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{what}: expected uint8 (N, H, W, 3), got shape {a.shape}")
        if a.shape[0] == 0:
            raise ValueError(f"{what}: empty batch")
        if a.dtype == np.uint8:
            t = torch.from_numpy(np.ascontiguousarray(a)).float() / 255.0
        elif np.issubdtype(a.dtype, np.floating):
            t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).clamp(0, 1)
        else:
            raise TypeError(f"{what}: expected uint8 or float images, got {a.dtype}")
    elif isinstance(images, torch.Tensor):
        t = images.detach().cpu()
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[-1] not in (1, 3, 4):
            raise ValueError(f"{what}: expected a ComfyUI IMAGE (B, H, W, C), got shape {tuple(t.shape)}")
        if t.shape[0] == 0:
            raise ValueError(f"{what}: empty batch")
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float().clamp(0, 1)
    else:
        raise TypeError(f"{what}: expected a numpy uint8 array or a ComfyUI IMAGE tensor, got {type(images).__name__}")
    if t.shape[-1] == 1:
        t = t.expand(*t.shape[:-1], 3)
    return t[..., :3].permute(0, 3, 1, 2).contiguous()


def center_square(x: torch.Tensor) -> torch.Tensor:
    """Centre crop ``(N, C, H, W)`` to a square."""
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top:top + s, left:left + s]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Square ``(N, C, S, S)`` -> ``(N, C, size, size)``: area averaging down, bilinear up."""
    s = x.shape[-1]
    if s == size:
        return x
    if s > size:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def similarity_transform(src, dst=ARCFACE_DST) -> np.ndarray:
    """2x3 matrix of the least-squares similarity (rotation, uniform scale, shift) taking ``src`` onto ``dst``."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1
    r = u @ np.diag(d) @ vt
    var = (s0 ** 2).sum() / len(src)
    scale = (sig * d).sum() / var if var > 0 else 1.0
    m = np.zeros((2, 3))
    m[:, :2] = scale * r
    m[:, 2] = mu_d - scale * r @ mu_s
    return m


def warp(x: torch.Tensor, matrices, size: int, padding: str = "zeros") -> torch.Tensor:
    """Bilinear warp of ``(N, C, H, W)`` with 2x3 matrices (source pixel -> output pixel) to ``size`` x ``size``;
    outside the source is zeros (``cv2.warpAffine``'s default) or the nearest edge pixel (``padding="border"``)."""
    m = torch.as_tensor(np.asarray(matrices, dtype=np.float64)).reshape(-1, 2, 3)
    if m.shape[0] == 1 and x.shape[0] > 1:
        m = m.expand(x.shape[0], 2, 3)
    full = torch.zeros(m.shape[0], 3, 3, dtype=torch.float64)
    full[:, :2] = m
    full[:, 2, 2] = 1
    inv = torch.linalg.inv(full)[:, :2]  # output pixel -> source pixel
    h, w = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, -1, 3)
    src = pts @ inv.transpose(1, 2)  # (N, size*size, 2)
    gx = src[..., 0] * (2.0 / max(w - 1, 1)) - 1.0
    gy = src[..., 1] * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], -1).reshape(-1, size, size, 2).to(x.device, x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=True)


@lru_cache(maxsize=1)
def canonical_landmarks() -> np.ndarray:
    """Mean landmarks (fractions of the side, pixel-centre convention removed) of upright neutral SynthFace faces
    of 2000 training identities: ``(5, 2)``. ``canonical_landmarks() * size - 0.5`` are pixel coordinates."""
    from ..synthface.render import landmarks
    from ..synthface.splits import identities

    ids = identities("train")[:2000]
    pts = np.mean([landmarks(i, {}, 256, None) for i in ids], axis=0)
    return ((pts + 0.5) / 256.0).astype(np.float64)


def canonical_matrix(side: int, out_size: int = 112) -> np.ndarray:
    """The arcface alignment of a centred SynthFace face in a ``side`` x ``side`` image, without detection."""
    return similarity_transform(canonical_landmarks() * side - 0.5, ARCFACE_DST * (out_size / 112.0))


def align_batch(x: torch.Tensor, landmarks=None, out_size: int = 112) -> torch.Tensor:
    """``(N, 3, H, W)`` -> arcface-aligned ``(N, 3, out, out)``: with ``landmarks`` ``(N, 5, 2)`` in pixel coordinates
    this is ``norm_crop``; without, the image is centre-cropped to a square and aligned with the canonical
    SynthFace landmarks (the face is assumed centred and upright)."""
    dst = ARCFACE_DST * (out_size / 112.0)
    if landmarks is None:
        x = center_square(x)
        return warp(x, canonical_matrix(x.shape[-1], out_size), out_size)
    lm = np.asarray(landmarks, dtype=np.float64).reshape(x.shape[0], 5, 2)
    return warp(x, np.stack([similarity_transform(p, dst) for p in lm]), out_size)
