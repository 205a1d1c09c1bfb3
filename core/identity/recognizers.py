"""Face recognizers behind one interface: ``embed(image, faces, crops) -> (F, D)`` L2-normalised embeddings.

``image`` is the uint8 RGB picture the ``faces`` were found in; ``crops`` are the faces aligned to the 112x112
ArcFace template, ComfyUI IMAGE layout ``(F, 112, 112, 3)`` float in [0, 1]. Each recognizer says whether it knows
real faces (``synthface_only``) and, where one is known, its same-person cosine ``threshold``.

- ``synthface``: the built-in SynthFace recognizer (torch; the SynthFace judge's weights);
- ``insightface``: the recognition model of an insightface pack (ArcFace ONNX, e.g. ``w600k_r50`` of buffalo_l);
- ``dlib``: dlib's 128-d ResNet trained on real faces (face-recognition-models); it aligns each face itself from
  its 5-point shape predictor, run in a dlib-style box placed from the 5 landmarks (so any detector's faces work).
"""
from __future__ import annotations

import numpy as np
import torch

from . import wheel_models

# dlib's rule is "same person below euclidean distance 0.6" on its raw descriptors, whose norm is ~1.5 on real faces
# (1.36-1.59 measured on insightface's t1.jpg); for unit vectors that is cosine 1 - 0.6^2 / (2 * 1.5^2).
DLIB_COSINE_THRESHOLD = round(1.0 - 0.36 / (2 * 1.5 ** 2), 3)


# Where dlib's HOG detector puts its box relative to a face's 5 ArcFace points, in units of the eye-to-mouth
# distance: centre offset from the points' mean and box side (medians over 61 faces dlib found in the astronaut,
# t1.jpg and 60 enlarged lfw_subset crops). dlib's shape predictor is trained on such boxes and is sensitive to
# others (MTCNN's box, taller at the top, moved one overexposed face's score from 0.98 to 0.86).
DLIB_BOX_OFFSET = np.array([-0.056, -0.087])
DLIB_BOX_SIDE = 2.33


def dlib_box(kps) -> np.ndarray:
    """A dlib-style face box ``x1, y1, x2, y2`` from 5 ArcFace landmarks, whatever detector found them."""
    k = np.asarray(kps, np.float64)
    scale = np.linalg.norm((k[3] + k[4]) / 2 - (k[0] + k[1]) / 2)
    centre = k.mean(0) + DLIB_BOX_OFFSET * scale
    half = DLIB_BOX_SIDE * scale / 2
    return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])


def _normalise(e: torch.Tensor) -> torch.Tensor:
    return e / e.norm(dim=1, keepdim=True).clamp_min(1e-12)


class SynthFaceRecognizer:
    name = "synthface"
    label = "built-in SynthFace recognizer"
    synthface_only = True

    def __init__(self):
        from ..judges.metrics import recognizer

        self.net = recognizer()
        self.threshold = float(self.net.threshold)
        self.dim = self.net.dim

    def embed(self, image, faces, crops: torch.Tensor) -> torch.Tensor:
        return self.net.embed(crops, aligned=True)


class InsightFaceRecognizer:
    def __init__(self, pack):
        from .insightface_pack import BUILTIN_PACK

        self.model = pack.recognizer
        self.name = f"insightface:{pack.name}"
        self.synthface_only = pack.name == BUILTIN_PACK
        self.label = f"insightface pack '{pack.name}' recognizer ({pack.files.get('recognition')}, " \
                     f"{pack.providers[0]})"
        self.input_size = int(self.model.input_size[0])
        if self.synthface_only:  # the same weights as the SynthFace judge, so its validated threshold holds
            from ..judges.metrics import recognizer

            self.threshold = float(recognizer().threshold)
        else:
            self.threshold = None
        self.dim = None

    def embed(self, image, faces, crops: torch.Tensor) -> torch.Tensor:
        x = crops.permute(0, 3, 1, 2)
        if self.input_size != x.shape[-1]:
            x = torch.nn.functional.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                                                align_corners=False)
        bgr = (x.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).numpy()[..., ::-1]
        feats = np.asarray(self.model.get_feat([np.ascontiguousarray(a) for a in bgr]), np.float32)
        self.dim = feats.shape[1]
        return _normalise(torch.from_numpy(feats))


class DlibRecognizer:
    name = "dlib"
    label = "dlib ResNet recognizer (face-recognition-models, trained on real faces)"
    synthface_only = False
    threshold = DLIB_COSINE_THRESHOLD
    dim = 128

    def __init__(self):
        self.models = wheel_models.load_dlib()

    def embed(self, image, faces, crops: torch.Tensor) -> torch.Tensor:
        img = np.ascontiguousarray(image)
        out = []
        for f in faces:
            rect = self.models["dlib"].rectangle(*(int(round(float(v))) for v in dlib_box(f.kps)))
            shape = self.models["shape5"](img, rect)
            out.append(np.asarray(self.models["recognizer"].compute_face_descriptor(img, shape, 0), np.float32))
        return _normalise(torch.from_numpy(np.stack(out))) if out else torch.zeros(0, self.dim)


RECOGNIZERS = ("auto", "synthface", "insightface", "dlib", "none")


def make_recognizer(kind: str, pack=None):
    """A recognizer of ``kind`` (not ``auto``/``none``); ``pack`` is the loaded pack for ``insightface``."""
    if kind == "synthface":
        return SynthFaceRecognizer()
    if kind == "insightface":
        if pack is None or pack.recognizer is None:
            raise ValueError("the insightface recognizer needs a loaded pack with a recognition model")
        return InsightFaceRecognizer(pack)
    if kind == "dlib":
        return DlibRecognizer()
    raise ValueError(f"face recognizer must be one of {', '.join(RECOGNIZERS)}, got {kind!r}")


__all__ = ["DLIB_COSINE_THRESHOLD", "DlibRecognizer", "InsightFaceRecognizer", "RECOGNIZERS", "SynthFaceRecognizer",
           "make_recognizer"]
