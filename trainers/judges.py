"""Objectives that train the SynthFace judges on the one loop (core/training/loop.py), and ``build_judges`` which
trains, measures on held-out identities, and writes them (safetensors + ONNX for insightface).

All three judges learn from one pool of renders of TRAIN identities (random attributes and views, 64x64):

1. ``AttributeObjective``: cross-entropy over one head per attribute and identity fact;
2. ``RecognizerObjective``: CosFace (additive cosine margin) softmax over the pool's identities; each sample is
   arcface-aligned either with the canonical SynthFace landmarks (what ``embed`` does without landmarks) or with its
   true landmarks plus detector-like noise (what ``norm_crop`` after a detector gives);
3. ``DetectorObjective``: the SCRFD-layout detector on 128x128 canvases holding one face at a random scale,
   position and rotation (or none): per-anchor score (BCE, ignore zone around positives), box distances and
   landmark offsets (smooth L1) at positive anchors.

Augmentations (blur, noise, brightness) make the judges tolerate the softer images a generator makes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.judges import data as jdata
from ..core.judges.align import ARCFACE_DST, canonical_matrix, similarity_transform, warp
from ..core.judges.nets import STRIDES, AttributeNet, DetectorNet, RecognizerNet, anchor_centers
from ..core.training.loop import TrainConfig, train

log = logging.getLogger("facesmith.train")

ATTR_ARCH = {"widths": [24, 48, 96, 192], "blocks": [1, 1, 1, 1]}
REC_ARCH = {"dim": 128, "widths": [24, 48, 96, 192], "blocks": [1, 1, 1, 1], "input_size": 112}
DET_ARCH = {"widths": [16, 24, 32, 64, 96], "head_width": 32, "input_size": 128}


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


# ------------------------------------------------------------------------------------------------------ attributes


class AttributeObjective:
    def __init__(self, net: AttributeNet, pool: jdata.Pool, batch_size: int = 128, seed: int = 0,
                 weights: dict[str, float] | None = None):
        self.net, self.pool, self.batch_size = net.to(memory_format=torch.channels_last), pool, batch_size
        self.weights = weights or {}
        self.seed = seed  # batches are drawn from (seed, 11, step): a resumed run sees the same ones
        self.labels = torch.from_numpy(pool.labels)

    def modules(self):
        return {"attributes": self.net}

    def parameters(self):
        return list(self.net.parameters())

    def make_batch(self, step):
        rng = np.random.default_rng([self.seed, 11, step])
        idx = rng.integers(0, len(self.pool), self.batch_size)
        x = _to_float(self.pool.images[idx])
        # small shifts (+-2 px, edge replicated) so a slightly off-centre generated face is still read right
        dx, dy = rng.integers(-2, 3, 2)
        if dx or dy:
            x = F.pad(x, (2, 2, 2, 2), mode="replicate")
            x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))[..., 2:-2, 2:-2]
        x = augment(x, rng)
        return (x * 2 - 1).contiguous(memory_format=torch.channels_last), self.labels[idx]

    def loss(self, batch, step):
        x, y = batch
        out = self.net(x)
        losses = [F.cross_entropy(out[k], y[:, i], label_smoothing=0.02) * self.weights.get(k, 1.0)
                  for i, k in enumerate(jdata.HEADS)]
        loss = torch.stack(losses).sum()
        return loss, {}


# ------------------------------------------------------------------------------------------------------ recognizer


class MarginHead(nn.Module):
    """CosFace: logits ``s * (cos(theta_j) - m * [j == y])`` against normalised class centres."""

    def __init__(self, n_classes: int, dim: int, s: float = 32.0, m: float = 0.3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.s, self.m = s, m

    def forward(self, emb, labels):
        cos = F.linear(emb, F.normalize(self.weight, dim=1))
        onehot = F.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return self.s * (cos - self.m * onehot)


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


TRAIT_NUMBERS = ["face_w", "face_h", "squareness", "chin_taper", "eye_spacing", "eye_size", "eye_y", "brow_thick",
                 "brow_tilt", "nose_len", "nose_w", "mouth_w", "mouth_y", "ear_size", "hairline"]


def trait_targets(ids) -> tuple[np.ndarray, np.ndarray]:
    """The generative identity traits of ``ids``: numbers ``(N, 22)`` (geometry, skin and lip colour, mole count,
    z-scored over ``ids``) and categories ``(N, len(TRAIT_VOCAB))`` (every identity trait's value index)."""
    from ..core.synthface.render import TRAIT_VOCAB, identity_traits

    nums, cats = [], []
    for i in ids:
        t = identity_traits(int(i))
        nums.append([getattr(t, k) for k in TRAIT_NUMBERS] + [c / 255.0 for c in t.skin] + [c / 255.0 for c in t.lip]
                    + [len(t.moles) / 2.0])
        f = t.facts()
        cats.append([TRAIT_VOCAB[k].index(f[k]) for k in TRAIT_VOCAB])
    nums = np.asarray(nums, np.float32)
    nums = (nums - nums.mean(0)) / nums.std(0).clip(1e-6)
    return nums, np.asarray(cats, np.int64)


class TraitHead(nn.Module):
    """Auxiliary head: the embedding must linearly encode the identity's generative traits."""

    def __init__(self, dim: int, n_numbers: int):
        super().__init__()
        from ..core.synthface.render import TRAIT_VOCAB

        self.sizes = [len(v) for v in TRAIT_VOCAB.values()]
        self.fc = nn.Linear(dim, n_numbers + sum(self.sizes))
        self.n_numbers = n_numbers

    def forward(self, emb):
        out = self.fc(emb * 8.0)
        return out[:, :self.n_numbers], out[:, self.n_numbers:].split(self.sizes, dim=1)


class RecognizerObjective:
    def __init__(self, net: RecognizerNet, pool: jdata.Pool, batch_size: int = 128, seed: int = 0,
                 margin: float = 0.3, scale: float = 32.0, trait_weight: float = 1.0):
        self.net, self.pool, self.batch_size = net.to(memory_format=torch.channels_last), pool, batch_size
        self.trait_weight = trait_weight
        self.seed = seed  # batches are drawn from (seed, 22, step): a resumed run sees the same ones
        ids, classes = np.unique(pool.identity, return_inverse=True)
        self.classes = torch.from_numpy(classes.astype(np.int64))
        self.head = MarginHead(len(ids), net.fc.out_features, scale, margin)
        nums, cats = trait_targets(ids)
        self.trait_numbers, self.trait_cats = torch.from_numpy(nums), torch.from_numpy(cats)
        self.trait_head = TraitHead(net.fc.out_features, nums.shape[1])

    def modules(self):
        return {"recognizer": self.net, "margin_head": self.head, "trait_head": self.trait_head}

    def parameters(self):
        return list(self.net.parameters()) + list(self.head.parameters()) + list(self.trait_head.parameters())

    def make_batch(self, step):
        rng = np.random.default_rng([self.seed, 22, step])
        idx = rng.integers(0, len(self.pool), self.batch_size)
        x = augment(recognizer_inputs(self.pool, idx, rng, landmark_noise=0.8), rng, max_sigma=1.6)
        return (x * 2 - 1).contiguous(memory_format=torch.channels_last), self.classes[idx]

    def loss(self, batch, step):
        x, y = batch
        emb = self.net(x)
        logits = self.head(emb, y)
        margin_loss = F.cross_entropy(logits, y)
        nums, cats = self.trait_head(emb)
        trait_loss = F.mse_loss(nums, self.trait_numbers[y]) + sum(
            F.cross_entropy(c, self.trait_cats[y, j]) for j, c in enumerate(cats)) / len(cats)
        logs = {"margin": float(margin_loss.detach()), "traits": float(trait_loss.detach())}
        return margin_loss + self.trait_weight * trait_loss, logs


# -------------------------------------------------------------------------------------------------------- detector


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


# which face sizes (sqrt(w * h) in input pixels) each stride learns
STRIDE_RANGES = {8: (0.0, 80.0), 16: (28.0, 144.0), 32: (56.0, 1e9)}


def detector_targets(boxes, kps, has, size: int = 128):
    """Per stride: labels (N, A) in {1 positive, 0 negative, -1 ignore}, box targets (N, A, 4) and landmark
    targets (N, A, 10) in stride units."""
    out = []
    n = len(boxes)
    for s in STRIDES:
        c = anchor_centers(size, size, s).numpy()  # (A, 2)
        a = len(c)
        lab = np.zeros((n, a), np.float32)
        bt = np.zeros((n, a, 4), np.float32)
        kt = np.zeros((n, a, 10), np.float32)
        lo, hi = STRIDE_RANGES[s]
        for i in range(n):
            if not has[i]:
                continue
            b = boxes[i]
            ctr = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
            sz = math.sqrt(max(1.0, (b[2] - b[0]) * (b[3] - b[1])))
            d = np.linalg.norm(c - ctr, axis=1)
            r_pos = max(0.12 * sz, 0.5 * s)
            if not lo <= sz < hi:
                lab[i, d < max(0.25 * sz, s)] = -1  # another stride owns this face: neither push nor pull here
                continue
            pos = d < r_pos
            pos[np.argsort(d)[:2]] = True  # the nearest location (both anchors) is always positive
            ign = (d < 2.5 * r_pos) & ~pos
            lab[i, ign] = -1
            lab[i, pos] = 1
            bt[i, pos] = np.stack([c[pos, 0] - b[0], c[pos, 1] - b[1], b[2] - c[pos, 0], b[3] - c[pos, 1]], 1) / s
            kt[i, pos] = ((kps[i][None] - c[pos][:, None, :]) / s).reshape(-1, 10)
        out.append((torch.from_numpy(lab), torch.from_numpy(bt), torch.from_numpy(kt)))
    return out


class DetectorObjective:
    def __init__(self, net: DetectorNet, pool: jdata.Pool, batch_size: int = 32, seed: int = 0, size: int = 128,
                 kps_weight: float = 2.0):
        self.net, self.pool, self.batch_size = net.to(memory_format=torch.channels_last), pool, batch_size
        self.size, self.kps_weight = size, kps_weight
        self.seed = seed  # batches are drawn from (seed, 33, step): a resumed run sees the same ones

    def modules(self):
        return {"detector": self.net}

    def parameters(self):
        return list(self.net.parameters())

    def make_batch(self, step):
        rng = np.random.default_rng([self.seed, 33, step])
        idx = rng.integers(0, len(self.pool), self.batch_size)
        x, boxes, kps, has = detector_canvases(self.pool, idx, rng, self.size)
        x = augment(x, rng, max_sigma=1.2, brightness=0.25)
        x = ((x * 255.0 - 127.5) / 128.0).contiguous(memory_format=torch.channels_last)
        return x, detector_targets(boxes, kps, has, self.size)

    def loss(self, batch, step):
        x, targets = batch
        outs = self.net.raw(x)
        cls_pos, cls_neg, reg_box, reg_kps, npos = [], [], [], [], 0
        for (logit, box, kp), (lab, bt, kt) in zip(outs, targets):
            bce = F.binary_cross_entropy_with_logits(logit, (lab > 0).float(), reduction="none")
            pos, neg = lab > 0, lab == 0
            cls_pos.append(bce[pos])
            cls_neg.append(bce[neg])
            if pos.any():
                reg_box.append(F.smooth_l1_loss(box[pos], bt[pos], beta=0.1, reduction="none").sum(1))
                reg_kps.append(F.smooth_l1_loss(kp[pos], kt[pos], beta=0.05, reduction="none").sum(1))
                npos += int(pos.sum())
        lp = torch.cat(cls_pos).mean() if npos else x.new_zeros(())
        ln = torch.cat(cls_neg).mean()
        lb = torch.cat(reg_box).mean() / 4 if reg_box else x.new_zeros(())
        lk = torch.cat(reg_kps).mean() / 10 if reg_kps else x.new_zeros(())
        loss = lp + 4.0 * ln + lb + self.kps_weight * lk
        return loss, {k: float(v.detach()) for k, v in (("pos", lp), ("neg", ln), ("box", lb), ("kps", lk))}


# ------------------------------------------------------------------------------------------------------ utilities


@torch.no_grad()
def recalibrate_bn(net: nn.Module, batches) -> None:
    """Recompute BatchNorm running statistics for the final (EMA) weights from a few training batches."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was = net.training
    net.train()
    for x in batches:
        net(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    net.train(was)
    net.eval()


# ------------------------------------------------------------------------------------------------------- building

DEFAULTS = {"pool_identities": 8000, "per_identity": 4, "attr_steps": 800, "rec_steps": 1500, "det_steps": 2000,
            "attr_lr": 2e-3, "rec_lr": 2e-3, "det_lr": 3e-3, "eval_images": 2000, "eval_pairs": 2000,
            "det_eval_images": 500}
EVAL_SEED = 777  # build-time evaluation renders; benchmarks re-measure with other seeds


def _train_one(objective, steps: int, lr: float, seed: int, work_dir: Path | None, progress, ema: float = 0.995,
               recipe: dict | None = None, resume: bool = True):
    """Train one judge (resumable from ``work_dir``; ``recipe``: what else shapes it, checked on resume); its
    checkpoints are removed once it has finished, so a later identical command starts from scratch and reproduces
    the same weights."""
    import shutil

    cfg = TrainConfig(steps=steps, learning_rate=lr, weight_decay=1e-4, seed=seed, ema_decay=ema, warmup_steps=50,
                      log_every=100, checkpoint_every=250, work_dir=str(work_dir) if work_dir else None,
                      recipe=recipe or {}, resume=resume)
    result = train(objective, cfg, progress)
    if work_dir is not None:
        shutil.rmtree(work_dir, ignore_errors=True)
    recalibrate_bn(next(iter(objective.modules().values())), [objective.make_batch(k)[0] for k in range(16)])
    for m in objective.modules().values():
        m.to(memory_format=torch.contiguous_format)
    return result


def build_judges(out_dir: Path, onnx_dir: Path | None, work_dir: Path | None, seed: int = 0, overwrite: bool = False,
                 progress_factory=None, command: str = "", resume: bool = True, **overrides) -> dict:
    """Train the attribute judge, the identity recognizer and the detector on TRAIN identities, measure them on
    VAL/HELD-OUT identities, and write ``attributes/recognizer/detector.safetensors`` (+ README.md) to ``out_dir``
    and the insightface ONNX pack to ``onnx_dir``. Returns the measured figures."""
    from ..core.formats import atomic_write_text, check_new_file
    from ..core.judges import export as jexport
    from ..core.judges.attributes import FILE_NAME as ATTR_FILE, KIND as ATTR_KIND, AttributeJudge
    from ..core.judges.common import round_trip_half, save_net
    from ..core.judges.detector import FILE_NAME as DET_FILE, KIND as DET_KIND, FaceDetector
    from ..core.judges.recognizer import FILE_NAME as REC_FILE, KIND as REC_KIND, IdentityRecognizer

    cfg = dict(DEFAULTS)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise TypeError(f"build_judges: unknown settings {sorted(unknown)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    out_dir = Path(out_dir)
    targets = [out_dir / ATTR_FILE, out_dir / REC_FILE, out_dir / DET_FILE, out_dir / "README.md"]
    if onnx_dir is not None:
        targets += [Path(onnx_dir) / jexport.REC_FILE, Path(onnx_dir) / jexport.DET_FILE]
    for t in targets:
        check_new_file(t, overwrite)  # fail before minutes of training
    pf = progress_factory or (lambda label: None)
    torch.manual_seed(seed)
    t_start = time.time()
    timings = {}

    # 1. the pool (cached: a rerun resumes training without re-rendering)
    t0 = time.time()
    pool_path = (Path(work_dir) / f"pool-{cfg['pool_identities']}x{cfg['per_identity']}-seed{seed}.npz"
                 if work_dir else None)
    timings["pool_from_cache"] = bool(pool_path is not None and pool_path.exists())
    if timings["pool_from_cache"]:
        pool = jdata.Pool.load(pool_path)
    else:
        pool = jdata.training_pool(cfg["pool_identities"], cfg["per_identity"], seed, progress=pf("render pool"))
        if pool_path is not None:
            pool.save(pool_path)
    timings["render_pool_s"] = round(time.time() - t0, 1)
    log.info("pool: %d renders of %d TRAIN identities (%.0f s)", len(pool), len(np.unique(pool.identity)),
             timings["render_pool_s"])
    # checkpoint folders are named after everything that shapes the weights, so other settings never resume them
    key = json.dumps([cfg, seed, ATTR_ARCH, REC_ARCH, DET_ARCH], sort_keys=True)
    key = hashlib.sha256(key.encode()).hexdigest()[:10]
    wd = (lambda name: Path(work_dir) / f"{name}-{key}") if work_dir else (lambda name: None)
    # ... and their checkpoints record it (checked on resume, should a folder be reused under other settings)
    pool_recipe = {"pool_identities": cfg["pool_identities"], "per_identity": cfg["per_identity"]}
    common_meta = {"seed": seed, "pool": {"identities": cfg["pool_identities"], "per_identity": cfg["per_identity"],
                                          "split": "train"}, "command": command}

    # 2. attribute judge
    t0 = time.time()
    heads = {k: len(v) for k, v in jdata.HEADS.items()}
    attr_net = AttributeNet(heads, tuple(ATTR_ARCH["widths"]), tuple(ATTR_ARCH["blocks"]))
    _train_one(AttributeObjective(attr_net, pool, 128, seed), cfg["attr_steps"], cfg["attr_lr"], seed, wd("attributes"),
               pf("train attribute judge"), recipe=dict(pool_recipe, judge="attributes", arch=ATTR_ARCH, batch=128),
               resume=resume)
    timings["attributes_train_s"] = round(time.time() - t0, 1)
    round_trip_half(attr_net)
    judge = AttributeJudge(attr_net, jdata.HEADS)
    attr_eval = jdata.attribute_accuracy(judge, jdata.eval_images("heldout", cfg["eval_images"], EVAL_SEED))
    log.info("attribute judge held-out: %s", json.dumps({k: round(v, 4) for k, v in attr_eval["per_head"].items()}))

    # 3. identity recognizer
    t0 = time.time()
    rec_net = RecognizerNet(REC_ARCH["dim"], tuple(REC_ARCH["widths"]), tuple(REC_ARCH["blocks"]),
                            input_size=REC_ARCH["input_size"])
    _train_one(RecognizerObjective(rec_net, pool, 128, seed), cfg["rec_steps"], cfg["rec_lr"], seed, wd("recognizer"),
               pf("train recognizer"), recipe=dict(pool_recipe, judge="recognizer", arch=REC_ARCH, batch=128),
               resume=resume)
    timings["recognizer_train_s"] = round(time.time() - t0, 1)
    round_trip_half(rec_net)
    rec = IdentityRecognizer(rec_net, 0.0)
    va, vb, vsame = jdata.eval_pairs("val", cfg["eval_pairs"], EVAL_SEED)
    threshold = jdata.best_threshold(jdata.pair_similarities(rec, va, vb), vsame)
    rec.threshold = threshold
    val_ver = jdata.verification(rec, "val", cfg["eval_pairs"], EVAL_SEED)
    ver = jdata.verification(rec, "heldout", cfg["eval_pairs"], EVAL_SEED + 1)
    log.info("recognizer: threshold %.4f (val accuracy %.4f), held-out verification %.4f", threshold,
             val_ver["accuracy"], ver["accuracy"])

    # 4. detector
    t0 = time.time()
    det_net = DetectorNet(tuple(DET_ARCH["widths"]), DET_ARCH["head_width"])
    _train_one(DetectorObjective(det_net, pool, 32, seed, kps_weight=4.0), cfg["det_steps"], cfg["det_lr"], seed,
               wd("detector"),
               pf("train detector"), recipe=dict(pool_recipe, judge="detector", arch=DET_ARCH, batch=32),
               resume=resume)
    timings["detector_train_s"] = round(time.time() - t0, 1)
    round_trip_half(det_net)
    det_eval = jdata.detection_accuracy(FaceDetector(det_net), jdata.eval_images("heldout", cfg["det_eval_images"],
                                                                                 EVAL_SEED + 2))
    blank_found = len(FaceDetector(det_net).detect(np.full((64, 64, 3), 128, np.uint8)))
    det_eval["faces_on_blank_gray"] = blank_found
    log.info("detector held-out: %s", det_eval)
    timings["total_train_s"] = round(time.time() - t_start, 1)

    # 5. insightface pack + end-to-end check
    insight = None
    if onnx_dir is not None:
        jexport.export_insightface_pack(rec_net, det_net, onnx_dir, overwrite=overwrite)
        insight = insightface_check(onnx_dir, rec, va, vb, vsame, ver_pairs=min(300, cfg["eval_pairs"]))
        log.info("insightface: %s", insight)

    # 6. write
    common_meta.update(timings=timings, settings=cfg)
    attr_meta = dict(common_meta, steps=cfg["attr_steps"], lr=cfg["attr_lr"], held_out={
        "per_attribute": {k: attr_eval["per_head"][k] for k in jdata.ATTRIBUTE_HEADS},
        "per_fact": {k: attr_eval["per_head"][k] for k in jdata.FACT_HEADS},
        "attribute_mean": attr_eval["mean"], "fact_mean": attr_eval["facts_mean"], "n_images": attr_eval["n"],
        "split": "heldout", "eval_seed": EVAL_SEED})
    save_net(out_dir / ATTR_FILE, attr_net, ATTR_KIND, dict(ATTR_ARCH, heads=jdata.HEADS, input_size=64), attr_meta,
             overwrite)
    rec_meta = dict(common_meta, steps=cfg["rec_steps"], lr=cfg["rec_lr"], threshold=threshold,
                    loss="CosFace s=32 m=0.3 + trait regression", held_out={
                        "verification_accuracy": ver["accuracy"], "verification": ver, "val_verification": val_ver,
                        "protocol": "same identity with different attributes+views vs different identities with "
                                    "the same attributes; threshold chosen on VAL identities"},
                    insightface=insight)
    save_net(out_dir / REC_FILE, rec_net, REC_KIND, REC_ARCH, rec_meta, overwrite)
    det_meta = dict(common_meta, steps=cfg["det_steps"], lr=cfg["det_lr"], threshold=0.5, held_out=det_eval)
    save_net(out_dir / DET_FILE, det_net, DET_KIND, DET_ARCH, det_meta, overwrite)
    summary = {"attributes": attr_meta["held_out"], "recognizer": rec_meta["held_out"], "threshold": threshold,
               "detector": det_eval, "insightface": insight, "timings": timings, "settings": cfg, "seed": seed}
    atomic_write_text(out_dir / "README.md", readme(summary, command), overwrite=overwrite)
    return summary


def summary_from_files(out_dir) -> dict:
    """The build summary (what README.md shows) read back from the metadata of the judge files in ``out_dir``."""
    from ..core.judges.common import load_net

    out_dir = Path(out_dir)
    _, _, am = load_net(out_dir / "attributes.safetensors", "facesmith.judge.attributes")
    _, _, rm = load_net(out_dir / "recognizer.safetensors", "facesmith.judge.recognizer")
    _, _, dm = load_net(out_dir / "detector.safetensors", "facesmith.judge.detector")
    return {"attributes": am["held_out"], "recognizer": rm["held_out"], "threshold": rm["threshold"],
            "detector": dm["held_out"], "insightface": rm.get("insightface"), "timings": rm["timings"],
            "settings": rm["settings"], "seed": rm["seed"], "command": rm.get("command", "")}


def write_readme(out_dir, overwrite: bool = True) -> Path:
    """Regenerate ``out_dir/README.md`` from the judge files' metadata (no training)."""
    from ..core.formats import atomic_write_text

    summary = summary_from_files(out_dir)
    return atomic_write_text(Path(out_dir) / "README.md", readme(summary, summary["command"]), overwrite=overwrite)


def insightface_check(onnx_dir, rec, va, vb, vsame, ver_pairs: int = 300) -> dict | None:
    """insightface loads the pack: recognizer routed to ArcFaceONNX with matching embeddings, and FaceAnalysis
    (detect -> norm_crop -> embed) verification accuracy on validation pairs at the recognizer's threshold."""
    try:
        import insightface  # noqa: F401
    except Exception as exc:  # pragma: no cover - optional dependency
        log.warning("insightface not importable (%s): ONNX files written but not checked", exc)
        return None
    from ..core.judges import export as jexport
    from ..core.judges.align import align_batch, to_batch

    crops = (align_batch(to_batch(va.images[:64]), va.landmarks[:64]).permute(0, 2, 3, 1).numpy() * 255)
    crops = crops.round().astype(np.uint8)
    out = jexport.check_with_insightface(onnx_dir, rec.net, crops)
    from insightface.app import FaceAnalysis

    d = Path(onnx_dir)
    app = FaceAnalysis(name=d.name, root=str(d.parent.parent), providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    sims, found, torch_cos = [], 0, []
    emb_torch_a = rec.embed(va.images[:ver_pairs]).numpy()
    for i in range(ver_pairs):
        fa = app.get(np.ascontiguousarray(va.images[i][..., ::-1]))
        fb = app.get(np.ascontiguousarray(vb.images[i][..., ::-1]))
        if not fa or not fb:
            sims.append(-1.0)
            continue
        found += 1
        ea, eb = fa[0].normed_embedding, fb[0].normed_embedding
        sims.append(float(ea @ eb))
        torch_cos.append(float(ea @ emb_torch_a[i]))
    sims = np.array(sims)
    same = vsame[:ver_pairs]
    out.update({"face_analysis_pairs": ver_pairs, "face_analysis_found_both": found,
                "face_analysis_verification_accuracy": float(np.mean((sims > rec.threshold) == same)),
                "face_analysis_vs_canonical_cosine": float(np.mean(torch_cos)) if torch_cos else None,
                "split": "val"})
    return out


def readme(summary: dict, command: str) -> str:
    a, r, d = summary["attributes"], summary["recognizer"], summary["detector"]
    ins = summary.get("insightface") or {}
    t = summary["timings"]
    def table(accs: dict) -> str:
        return "\n".join(f"| {k} | {v * 100:.2f}% | {100 / len(jdata.HEADS[k]):.0f}% |" for k, v in accs.items())

    rows, facts = table(a["per_attribute"]), table(a["per_fact"])
    ver = r["verification"]
    lines = [
        "# SynthFace judges",
        "",
        "Built-in evaluation models used by every FaceSmith benchmark. Trained ONLY on TRAIN identities "
        "(`identity % 20 < 16`); the recognizer's threshold is chosen on VAL identities; every figure below is "
        "measured on HELD-OUT identities (`identity % 20 >= 18`) with the shipped (fp16-stored) weights.",
        "",
        "## Reproduce",
        "",
        "```",
        command or "facesmith train judges --seed 0",
        "```",
        "",
        f"Seed {summary['seed']}; settings: `{json.dumps(summary['settings'], sort_keys=True)}`. "
        f"Building took {t['total_train_s'] / 60:.1f} min on one CPU core (torch 1 thread), rendering, "
        f"training and measuring: pool "
        f"{t['render_pool_s']:.0f} s{' (loaded from the cache in --work-dir)' if t.get('pool_from_cache') else ''}, "
        f"attribute judge {t['attributes_train_s']:.0f} s, recognizer "
        f"{t['recognizer_train_s']:.0f} s, detector {t['detector_train_s']:.0f} s.",
        "",
        "## Files",
        "",
        "- `attributes.safetensors`: attribute judge (ResNet + BatchNorm, 64x64 input, one head per attribute and "
        "identity fact) -- `core.judges.attributes.AttributeJudge`;",
        "- `recognizer.safetensors`: identity recognizer (ResNet + BatchNorm, 112x112 arcface-aligned input, "
        "128-d L2-normalised embedding, CosFace margin loss + trait regression; `threshold` in the metadata) -- "
        "`core.judges.recognizer.IdentityRecognizer`;",
        "- `detector.safetensors`: face detector (box + 5 landmarks, SCRFD layout, 128x128 input) -- "
        "`core.judges.detector.FaceDetector`;",
        "- `../../insightface/models/synthface/{det,rec}_synthface.onnx`: the detector and recognizer for "
        "insightface (`FaceAnalysis(name=\"synthface\", root=<models>/insightface)`).",
        "",
        f"## Attribute judge (held-out, {a['n_images']} fresh renders)",
        "",
        "| attribute | accuracy | chance |",
        "|---|---|---|",
        rows,
        f"| **mean** | **{a['attribute_mean'] * 100:.2f}%** | |",
        "",
        "| identity fact | accuracy | chance |",
        "|---|---|---|",
        facts,
        f"| **mean** | **{a['fact_mean'] * 100:.2f}%** | |",
        "",
        "Identity facts are harder by nature: a hat hides most of the hair style, narrow or smiling eyes leave a few "
        "pixels of iris, and the nose is a low-contrast shape a few pixels wide at 64x64.",
        "",
        f"## Identity recognizer (held-out, {ver['n_pairs']} pairs)",
        "",
        "Protocol: half the pairs show the SAME identity with different attribute combinations and views, half show "
        "two DIFFERENT identities with the SAME attributes and different views.",
        "",
        f"- verification accuracy: **{ver['accuracy'] * 100:.2f}%** at threshold {summary['threshold']:.4f} "
        f"(chosen on VAL: {r['val_verification']['accuracy'] * 100:.2f}%)",
        f"- true accept {ver['true_accept'] * 100:.2f}%, true reject {ver['true_reject'] * 100:.2f}%; mean cosine same "
        f"{ver['same_mean']:.3f}, different {ver['different_mean']:.3f}",
        "",
        f"## Detector (held-out, {d['n']} renders)",
        "",
        f"- face found (box IoU > 0.5): {d['found_rate'] * 100:.2f}%; with landmark error < 10% of the eye-mouth "
        f"distance: {d['detection_rate'] * 100:.2f}%",
        f"- mean landmark error {d['mean_nme'] * 100:.2f}% of the eye-mouth distance; mean box IoU {d['mean_iou']:.3f}",
        f"- faces reported on a blank gray image: {d['faces_on_blank_gray']}",
        "",
    ]
    lines += [
        "## Use",
        "",
        "```python",
        "from facesmith.core.judges.metrics import identity_similarity, verification_rate, attribute_adherence, "
        "diversity",
        "from facesmith.core.judges.attributes import AttributeJudge",
        "from facesmith.core.judges.recognizer import IdentityRecognizer",
        "AttributeJudge.load().predict(images)            # uint8 (N, H, W, 3) or ComfyUI IMAGE",
        "IdentityRecognizer.load().embed(images)          # (N, 128); .threshold = same person",
        "from facesmith.core.faces import detect_and_crop  # backends insightface / synthface / center",
        "```",
        "",
        "`embed(images)` aligns a face it has no landmarks for with the canonical SynthFace landmarks (the mean over "
        "upright, centred faces); `embed(images, landmarks=kps)` uses detected ones (insightface's `norm_crop`); "
        "`embed(crops, aligned=True)` takes already aligned 112x112 crops. The recognizer was trained on both kinds.",
        "",
        "The render pool is cached in `--work-dir` (default `.cache/train-judges`); an interrupted run resumes from "
        "its checkpoints, a finished judge's checkpoints are removed (so the same command reproduces the weights).",
        "",
    ]
    if ins:
        lines += [
            "## insightface",
            "",
            f"- `get_model(rec_synthface.onnx)` -> `{ins['routed_as']}` (input mean {ins['input_mean']}, std "
            f"{ins['input_std']}); `get_feat` on BGR aligned crops vs torch: min cosine {ins['min_cosine']:.6f}",
            f"- `FaceAnalysis` (detect -> norm_crop -> embed) on {ins['face_analysis_pairs']} VAL pairs: faces found "
            f"in "
            f"both images of {ins['face_analysis_found_both']} pairs, verification accuracy "
            f"{ins['face_analysis_verification_accuracy'] * 100:.2f}%, mean cosine to the canonical-alignment torch "
            f"embedding {ins['face_analysis_vs_canonical_cosine']:.3f}",
            "",
        ]
    return "\n".join(lines)
