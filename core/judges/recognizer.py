"""The identity recognizer: a 128-d L2-normalised embedding of an arcface-aligned 112x112 face; two images show
the same person when the cosine of their embeddings is above ``threshold`` (chosen on VALIDATION identities).

Trained with an additive margin (CosFace) softmax over TRAIN identities, each seen with many attribute
combinations and views, so attributes (hair colour, glasses, hat, beard, expression, background) do not define
identity. Exported to ONNX in insightface's recognition format (see ``export.py``).

Alignment: ``embed(images)`` aligns each image with the canonical SynthFace landmarks (centred, upright face -- what
renders and the base model's images are); ``embed(images, landmarks=...)`` uses detected landmarks (insightface's
``norm_crop``); ``embed(crops, aligned=True)`` takes crops that are already aligned (``core.faces.detect_and_crop``).
The recognizer was trained on both kinds of alignment.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .align import align_batch, resize, to_batch
from .common import batches, load_judge_net
from .nets import RecognizerNet

FILE_NAME = "recognizer.safetensors"
KIND = "facesmith.judge.recognizer"
INPUT_SIZE = 112


def preprocess(images, landmarks=None, aligned: bool = False) -> torch.Tensor:
    """Images -> aligned ``(N, 3, 112, 112)`` in [-1, 1] (``(x - 127.5) / 127.5`` of 0..255 RGB)."""
    x = to_batch(images)
    if aligned:
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"aligned crops must be square, got {tuple(x.shape[-2:])}")
        x = resize(x, INPUT_SIZE)
    else:
        x = align_batch(x, landmarks, INPUT_SIZE)
    return x * 2.0 - 1.0


class IdentityRecognizer:
    def __init__(self, net: RecognizerNet, threshold: float, metadata: dict | None = None, path: Path | None = None):
        self.net = net.eval()
        self.threshold = float(threshold)
        self.metadata = metadata or {}
        self.path = path

    @classmethod
    def load(cls, path=None, device: str = "cpu") -> "IdentityRecognizer":
        net, _, meta, path = load_judge_net(
            path, FILE_NAME, KIND, device=device,
            build=lambda a: RecognizerNet(a["dim"], tuple(a["widths"]), tuple(a["blocks"]), input_size=a["input_size"]))
        if "threshold" not in meta:
            raise ValueError(f"{path} has no 'threshold' in its metadata")
        return cls(net, float(meta["threshold"]), meta, path)

    @property
    def dim(self) -> int:
        return self.net.fc.out_features

    @property
    def held_out(self) -> dict:
        return self.metadata.get("held_out", {})

    @torch.no_grad()
    def embed_tensor(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Embeddings of preprocessed ``(N, 3, 112, 112)`` input."""
        dev = next(self.net.parameters()).device
        return torch.cat([self.net(x[sl].to(dev)).float().cpu() for sl in batches(len(x), batch_size)])

    def embed(self, images, landmarks=None, aligned: bool = False) -> torch.Tensor:
        """``(N, 128)`` L2-normalised embeddings (torch, CPU)."""
        return self.embed_tensor(preprocess(images, landmarks, aligned))

    def similarity(self, a, b) -> np.ndarray:
        """Cosine similarity of image ``a[i]`` and ``b[i]``."""
        return (self.embed(a) * self.embed(b)).sum(1).numpy()

    def same_person(self, a, b) -> np.ndarray:
        return self.similarity(a, b) > self.threshold
