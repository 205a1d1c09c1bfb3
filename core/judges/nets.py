"""The judges' networks: small ResNets with BatchNorm (a different family from the UNet/VAE/CLIP models FaceSmith
trains, so a generator cannot share a judge's blind spots by construction).

- :class:`AttributeNet`: 64x64 RGB -> one logit vector per head (SynthFace attributes and identity facts);
- :class:`RecognizerNet`: 112x112 arcface-aligned RGB -> L2-normalised 128-d embedding;
- :class:`DetectorNet`: a tiny SCRFD-layout face detector (strides 8/16/32, 2 anchors per location, score + box
  distances + 5 landmarks), the layout insightface's ``SCRFD`` class decodes.

Every net takes images as ``(N, 3, H, W)`` float in roughly [-1, 1] (RGB); see each class for the exact scaling.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs with BatchNorm) with a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.proj is None else self.proj(x)))


class Trunk(nn.Module):
    """Stem (3x3 conv, stride ``stem_stride``) then one stage per width; every stage after the first halves the
    resolution. ``forward`` returns the output of every stage."""

    def __init__(self, widths=(24, 48, 96, 192), blocks=(1, 1, 1, 1), stem_stride: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stem_stride, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = [BasicBlock(cin, w, 1 if i == 0 else 2)]
            layers += [BasicBlock(w, w) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for s in self.stages:
            x = s(x)
            outs.append(x)
        return outs


class AttributeNet(nn.Module):
    """64x64 RGB in [-1, 1] -> ``{head: logits}``. ``heads`` maps a head name to its number of classes."""

    def __init__(self, heads: dict[str, int], widths=(24, 48, 96, 192), blocks=(1, 1, 1, 1), dropout: float = 0.1):
        super().__init__()
        self.head_names = list(heads)
        self.trunk = Trunk(widths, blocks, stem_stride=2)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleDict({k: nn.Linear(widths[-1], n) for k, n in heads.items()})

    def forward(self, x) -> dict[str, torch.Tensor]:
        f = self.trunk(x)[-1]
        f = self.dropout(F.adaptive_avg_pool2d(f, 1).flatten(1))
        return {k: h(f) for k, h in self.heads.items()}


class RecognizerNet(nn.Module):
    """112x112 arcface-aligned RGB, ``(x - 127.5) / 127.5`` -> L2-normalised embedding (insightface's recognition
    convention). Average-pools to 56 first: SynthFace faces carry no detail finer than that."""

    def __init__(self, dim: int = 128, widths=(24, 48, 96, 192), blocks=(1, 1, 1, 1), dropout: float = 0.1,
                 input_size: int = 112):
        super().__init__()
        self.pool = nn.AvgPool2d(2)
        self.trunk = Trunk(widths, blocks, stem_stride=2)
        side = input_size // 2 // 2
        for _ in widths[1:]:
            side = (side + 1) // 2
        self.bn_feat = nn.BatchNorm2d(widths[-1])
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[-1] * side * side, dim)
        self.bn_emb = nn.BatchNorm1d(dim)

    def forward(self, x) -> torch.Tensor:
        f = self.bn_feat(self.trunk(self.pool(x))[-1])
        e = self.bn_emb(self.fc(self.dropout(f.flatten(1))))
        return e / e.norm(dim=1, keepdim=True).clamp_min(1e-6)


STRIDES = (8, 16, 32)
NUM_ANCHORS = 2


class DetectorNet(nn.Module):
    """SCRFD-layout detector. Input: RGB ``(x - 127.5) / 128``. Output, per stride 8/16/32 (9 tensors, scores
    first, then box distances, then landmarks): score ``(A, 1)`` after a sigmoid, box distances ``(A, 4)`` (left, top,
    right, bottom) and landmark offsets ``(A, 10)``, both in units of the stride, relative to the anchor centre
    ``(x * stride, y * stride)``; ``A = H/s * W/s * 2`` in (y, x, anchor) order. Batch size 1 (what SCRFD feeds)."""

    def __init__(self, widths=(16, 24, 32, 64, 96), head_width: int = 32):
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = nn.Sequential(  # /4
            nn.Conv2d(3, w0, 3, 2, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True),
            nn.Conv2d(w0, w1, 3, 2, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU(inplace=True))
        self.stages = nn.ModuleList([BasicBlock(w1, w2, 2), BasicBlock(w2, w3, 2), BasicBlock(w3, w4, 2)])  # /8 /16 /32
        # a light top-down pathway (FPN) so the fine strides see the whole face
        self.lateral = nn.ModuleList([nn.Conv2d(w, head_width, 1) for w in (w2, w3, w4)])
        self.heads = nn.ModuleList()
        for _ in STRIDES:
            self.heads.append(nn.Sequential(
                nn.Conv2d(head_width, head_width, 3, 1, 1, bias=False), nn.BatchNorm2d(head_width),
                nn.ReLU(inplace=True), nn.Conv2d(head_width, NUM_ANCHORS * (1 + 4 + 10), 1)))

    def raw(self, x) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per stride ``(score_logits (N, A), box (N, A, 4), kps (N, A, 10))`` for a batch."""
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        p = [lat(f) for lat, f in zip(self.lateral, feats)]
        for i in (1, 0):
            p[i] = p[i] + F.interpolate(p[i + 1], scale_factor=2.0, mode="nearest")
        out = []
        for f, head in zip(p, self.heads):
            y = head(f)  # (N, 2*15, h, w)
            n, _, h, w = y.shape
            y = y.permute(0, 2, 3, 1).reshape(n, h * w * NUM_ANCHORS, 15)
            out.append((y[..., 0], y[..., 1:5], y[..., 5:15]))
        return out

    def forward(self, x):
        outs = self.raw(x)
        scores = [torch.sigmoid(s).reshape(-1, 1) for s, _, _ in outs]
        boxes = [b.reshape(-1, 4) for _, b, _ in outs]
        kps = [k.reshape(-1, 10) for _, _, k in outs]
        return (*scores, *boxes, *kps)


def anchor_centers(height: int, width: int, stride: int) -> torch.Tensor:
    """``(h/s * w/s * 2, 2)`` anchor centres (x, y) in input pixels, in SCRFD's order."""
    h, w = height // stride, width // stride
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    c = torch.stack([xs, ys], -1).reshape(-1, 2).float() * stride
    return c.repeat_interleave(NUM_ANCHORS, dim=0)
