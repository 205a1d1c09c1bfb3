"""The judges' objectives on the one loop (core/training/loop.py): attribute heads, the CosFace recognizer with its
trait head, and the SCRFD-layout detector with its anchor targets."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.judges import data as jdata
from ...core.judges.nets import STRIDES, AttributeNet, DetectorNet, RecognizerNet, anchor_centers
from .augment import _to_float, augment, detector_canvases, recognizer_inputs


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


TRAIT_NUMBERS = ["face_w", "face_h", "squareness", "chin_taper", "eye_spacing", "eye_size", "eye_y", "brow_thick",
                 "brow_tilt", "nose_len", "nose_w", "mouth_w", "mouth_y", "ear_size", "hairline"]


def trait_targets(ids) -> tuple[np.ndarray, np.ndarray]:
    """The generative identity traits of ``ids``: numbers ``(N, 22)`` (geometry, skin and lip colour, mole count,
    z-scored over ``ids``) and categories ``(N, len(TRAIT_VOCAB))`` (every identity trait's value index)."""
    from ...core.synthface.render import TRAIT_VOCAB, identity_traits

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
        from ...core.synthface.render import TRAIT_VOCAB

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
