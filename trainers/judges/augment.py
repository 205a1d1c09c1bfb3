"""Training inputs of the SynthFace judges: augmentations (blur, noise, brightness) that make the judges tolerate
the softer images a generator makes, recognizer crops aligned like ``embed`` / ``norm_crop`` do, and detector
canvases."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ...core.judges import data as jdata
from ...core.judges.align import ARCFACE_DST, canonical_matrix, similarity_transform, warp


def _to_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image Gaussian blur (sigma in pixels, 0 = none), 5-tap separable."""
    r = torch.arange(-2, 3, dtype=x.dtype)
    s = sigma.clamp_min(1e-3).view(-1, 1)
    k = torch.exp(-(r.view(1, -1) ** 2) / (2 * s ** 2))
    k = k / k.sum(1, keepdim=True)  # (N, 5)
    n, c, h, w = x.shape
    xp = F.pad(x, (2, 2, 2, 2), mode="replicate")
    kx = k.repeat_interleave(c, 0).view(n * c, 1, 1, 5)
    ky = k.repeat_interleave(c, 0).view(n * c, 1, 5, 1)
    y = F.conv2d(xp.reshape(1, n * c, h + 4, w + 4), kx, groups=n * c)
    y = F.conv2d(y, ky, groups=n * c)
    return y.view(n, c, h, w)


def augment(x: torch.Tensor, rng: np.random.Generator, blur_p=0.3, noise_p=0.3, max_sigma=1.0, max_noise=0.04,
            brightness: float = 0.0) -> torch.Tensor:
    """[0, 1] images: random blur, Gaussian noise and (optionally) brightness."""
    n = x.shape[0]
    sig = torch.from_numpy(np.where(rng.random(n) < blur_p, rng.uniform(0.3, max_sigma, n), 0.0)).float()
    if (sig > 0).any():
        x = torch.where((sig > 0).view(-1, 1, 1, 1), _gaussian_blur(x, sig), x)
    if brightness:
        x = x * torch.from_numpy(rng.uniform(1 - brightness, 1 + brightness, (n, 1, 1, 1))).float()
    ns = torch.from_numpy(np.where(rng.random(n) < noise_p, rng.uniform(0, max_noise, n), 0.0)).float()
    gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    x = x + torch.randn(x.shape, generator=gen) * ns.view(-1, 1, 1, 1)
    return x.clamp(0, 1)


def recognizer_inputs(pool: jdata.Pool, idx: np.ndarray, rng: np.random.Generator, canonical_p: float = 0.5,
                      landmark_noise: float = 0.6) -> torch.Tensor:
    """Aligned 112x112 [0, 1] crops of pool samples ``idx``: canonical alignment or noisy true landmarks."""
    side = pool.images.shape[1]
    canon = canonical_matrix(side, 112)
    mats = []
    for i in idx:
        if rng.random() < canonical_p:
            mats.append(canon)
        else:
            lm = pool.landmarks[i] + rng.normal(0, landmark_noise, (5, 2))
            mats.append(similarity_transform(lm, ARCFACE_DST))
    return warp(_to_float(pool.images[idx]), np.stack(mats), 112)


def detector_canvases(pool: jdata.Pool, idx: np.ndarray, rng: np.random.Generator, size: int = 128,
                      negative_p: float = 0.08, full_frame_p: float = 0.4):
    """Canvases ``(N, 3, size, size)`` in [0, 1] with boxes ``(N, 4)``, landmarks ``(N, 5, 2)`` and ``has_face``."""
    side = pool.images.shape[1]
    mats, boxes, kps, has = [], [], [], []
    for i in idx:
        b, lm = pool.boxes[i], pool.landmarks[i]
        bc = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
        bsz = math.sqrt((b[2] - b[0]) * (b[3] - b[1]))
        u = rng.random()
        if u < full_frame_p:  # the whole image scaled to the input, as SCRFD letterboxes a face crop
            z = size / side * rng.uniform(0.92, 1.08)
            ang = math.radians(rng.uniform(-4, 4))
            r = z * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
            c0 = np.array([side / 2 - 0.5, side / 2 - 0.5])
            m = np.concatenate([r, (np.array([size / 2, size / 2]) + rng.normal(0, 3, 2) - r @ c0)[:, None]], 1)
        else:
            target = math.exp(rng.uniform(math.log(16), math.log(110)))
            z = target / bsz
            ang = math.radians(rng.uniform(-15, 15))
            r = z * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
            lo, hi = target * 0.35, size - target * 0.35
            centre = rng.uniform(lo, hi, 2) if hi > lo else np.array([size / 2, size / 2])
            m = np.concatenate([r, (centre - r @ bc)[:, None]], 1)
        mats.append(m)
        corners = np.array([[b[0], b[1]], [b[2], b[1]], [b[0], b[3]], [b[2], b[3]]]) @ m[:, :2].T + m[:, 2]
        # the box of a rotated face: the rotated outline box shrunk back towards the face (rotation inflates it)
        cb = np.array([*corners.min(0), *corners.max(0)])
        ctr = (cb[:2] + cb[2:]) / 2
        half = np.array([(b[2] - b[0]) / 2, (b[3] - b[1]) / 2]) * z
        boxes.append(np.concatenate([ctr - half, ctr + half]))
        kps.append(lm @ m[:, :2].T + m[:, 2])
        has.append(True)
    x = warp(_to_float(pool.images[idx]), np.stack(mats), size, padding="border")
    n = len(idx)
    neg = rng.random(n) < negative_p
    if neg.any():
        k = int(neg.sum())
        col = torch.from_numpy(rng.uniform(0, 1, (k, 3, 1, 1))).float()
        slope = torch.from_numpy(rng.uniform(-0.3, 0.3, (2, k, 1, 1, 1))).float()
        gy = torch.linspace(-1, 1, size).view(1, 1, size, 1) * slope[0]
        gx = torch.linspace(-1, 1, size).view(1, 1, 1, size) * slope[1]
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 31)))  # from the batch's rng, not the global one
        blank = (col + gx + gy + torch.randn(k, 3, size, size, generator=gen) * float(rng.uniform(0, 0.1))).clamp(0, 1)
        x[torch.from_numpy(neg)] = blank
    has = ~neg
    return x, np.asarray(boxes, np.float32), np.asarray(kps, np.float32), has
