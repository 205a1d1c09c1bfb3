"""The attribute judge: which SynthFace attributes (hair colour, expression, glasses, hat, beard, background) and
identity facts (eye colour, hair style, eye shape, nose shape, skin tone) an image shows.

A small ResNet with BatchNorm and one classification head per attribute/fact, trained on renders of TRAIN
identities only (``facesmith train judges``); its held-out accuracies are stored in the weight file's metadata.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .align import center_square, resize, to_batch
from .common import batches, load_judge_net
from .nets import AttributeNet

FILE_NAME = "attributes.safetensors"
KIND = "facesmith.judge.attributes"
INPUT_SIZE = 64


def preprocess(images, size: int = INPUT_SIZE) -> torch.Tensor:
    """Any supported image batch -> ``(N, 3, 64, 64)`` in [-1, 1] (centre square crop, area resize)."""
    return resize(center_square(to_batch(images)), size) * 2.0 - 1.0


class AttributeJudge:
    """``predict(images) -> [{"hair": "red", "glasses": True, ..., "eye_colour": "blue", ...}, ...]``."""

    def __init__(self, net: AttributeNet, heads: dict[str, list], metadata: dict | None = None,
                 path: Path | None = None):
        self.net = net.eval()
        self.heads = heads
        self.metadata = metadata or {}
        self.path = path

    @classmethod
    def load(cls, path=None, device: str = "cpu") -> "AttributeJudge":
        net, arch, meta, path = load_judge_net(
            path, FILE_NAME, KIND, device=device,
            build=lambda a: AttributeNet({k: len(v) for k, v in a["heads"].items()}, tuple(a["widths"]),
                                         tuple(a["blocks"])))
        return cls(net, arch["heads"], meta, path)

    @property
    def held_out(self) -> dict:
        """Held-out accuracies measured when the weights were built."""
        return self.metadata.get("held_out", {})

    @torch.no_grad()
    def logits(self, images, batch_size: int = 256) -> dict[str, torch.Tensor]:
        x = preprocess(images)
        dev = next(self.net.parameters()).device
        outs: dict[str, list] = {k: [] for k in self.heads}
        for sl in batches(len(x), batch_size):
            o = self.net(x[sl].to(dev))
            for k in self.heads:
                outs[k].append(o[k].float().cpu())
        return {k: torch.cat(v) for k, v in outs.items()}

    def predict_indices(self, images) -> np.ndarray:
        """``(N, heads)`` class indices, heads in ``self.heads`` order."""
        lg = self.logits(images)
        return np.stack([lg[k].argmax(1).numpy() for k in self.heads], axis=1)

    def predict(self, images) -> list[dict]:
        """The most likely value of every attribute and identity fact, per image."""
        idx = self.predict_indices(images)
        names = list(self.heads)
        return [{k: self.heads[k][int(row[j])] for j, k in enumerate(names)} for row in idx]

    def probabilities(self, images) -> list[dict]:
        """``[{head: {value: probability}}]`` per image (values as in ``ATTRIBUTES``/``TRAIT_VOCAB``; booleans
        are keyed by ``False``/``True``)."""
        lg = self.logits(images)
        probs = {k: torch.softmax(v, 1).numpy() for k, v in lg.items()}
        n = len(next(iter(probs.values())))
        return [{k: {val: float(probs[k][i, j]) for j, val in enumerate(self.heads[k])} for k in self.heads}
                for i in range(n)]
