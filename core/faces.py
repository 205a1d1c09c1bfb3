"""Face detection and alignment of ONE image: ``detect_and_crop(image) -> aligned 112x112 face``, on the face
pipeline's detectors (``identity/detectors.py``; batches, recognizers and options live in
``identity/face_pipeline.py``).

- ``"insightface"``: an insightface model pack (a folder of ``.onnx`` files, model kind ``insightface``: the built-in
  ``models/synthface`` pack, or e.g. ``buffalo_l`` in the user's models folder) run with
  ``insightface.app.FaceAnalysis`` for detection; needs the ``face`` extra (insightface, onnxruntime, opencv);
- ``"synthface"``: the built-in SynthFace detector in torch (no extra packages);
- ``"mtcnn"`` / ``"dlib"``: real-face detectors whose weights ship in PyPI wheels (``identity/wheel_models.py``);
- ``"center"``: no detection -- the face is assumed centred and upright (SynthFace framing) and is aligned with the
  canonical SynthFace landmarks;
- ``"auto"``: ``"insightface"`` when insightface is importable, else ``"synthface"``.

Every backend returns the arcface-aligned crop (insightface's ``norm_crop`` template) that the identity recognizer
takes with ``embed(crops, aligned=True)``.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

BACKENDS = ("auto", "insightface", "synthface", "mtcnn", "dlib", "center")
DEFAULT_INSIGHTFACE_PACK = "synthface"


class NoFaceError(ValueError):
    """No face was found where one was needed."""


def _describe(image) -> str:
    shape = getattr(image, "shape", None)
    return f"the image ({'x'.join(str(s) for s in shape)})" if shape is not None else "the image"


def _to_uint8(image) -> np.ndarray:
    from .judges.align import to_batch

    x = to_batch(image, "image")
    if x.shape[0] != 1:
        raise ValueError(f"detect_and_crop takes one image, got a batch of {x.shape[0]}")
    return (x[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)


def insightface_available() -> bool:
    from .identity.insightface_pack import insightface_available as available

    return available()


def find_insightface_pack(name: str = DEFAULT_INSIGHTFACE_PACK) -> Path:
    """The folder of insightface pack ``name`` (``<insightface>/models/<name>/`` or ``<insightface>/<name>/``); the
    error names the expected files (see ``identity/insightface_pack.py``)."""
    from .identity.insightface_pack import find_pack

    return find_pack(name)


def face_analysis(name: str = DEFAULT_INSIGHTFACE_PACK, allowed_modules=None):
    """An ``insightface.app.FaceAnalysis`` for pack ``name`` (detection + whatever else the pack has), on the CPU."""
    import onnxruntime
    from insightface.app import FaceAnalysis

    from .identity.insightface_pack import pack_args

    onnxruntime.set_default_logger_severity(3)
    app = FaceAnalysis(**pack_args(find_insightface_pack(name)), allowed_modules=allowed_modules,
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    return app


@lru_cache(maxsize=4)
def _detector(backend: str, pack: str):
    from .identity import detectors
    from .identity.insightface_pack import load_pack

    return detectors.make_detector(
        backend, load_pack(pack, need_recognition=False) if backend == "insightface" else None)


def detect(image, backend: str = "auto", pack: str = DEFAULT_INSIGHTFACE_PACK):
    """Faces in ``image`` as ``[(box (4,), kps (5, 2), score)]``, best first (``"center"`` gives the canonical one).
    The detectors are those of the face pipeline (``identity/detectors.py``), at detection size 640."""
    backend = resolve_backend(backend)
    img = _to_uint8(image)
    if backend != "center":
        faces = sorted(_detector(backend, pack).detect(img, 640), key=lambda f: -f.score)
        return [(np.asarray(f.box, np.float32), np.asarray(f.kps, np.float32), float(f.score)) for f in faces]
    from .judges.align import canonical_landmarks

    h, w = img.shape[:2]
    s = min(h, w)
    kps = canonical_landmarks() * s - 0.5 + np.array([(w - s) // 2, (h - s) // 2])
    return [(np.array([0, 0, w, h], np.float32), kps.astype(np.float32), 1.0)]


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"face detection backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "insightface" if insightface_available() and _pack_present() else "synthface"
    return backend


def _pack_present() -> bool:
    try:
        find_insightface_pack(DEFAULT_INSIGHTFACE_PACK)
    except FileNotFoundError:
        return False
    return True


def detect_and_crop(image, size: int = 112, backend: str = "auto", pack: str = DEFAULT_INSIGHTFACE_PACK,
                    what: str | None = None) -> np.ndarray:
    """The most confident face of ``image`` (uint8 HxWx3 RGB, or a ComfyUI IMAGE of batch 1), arcface-aligned to
    uint8 ``(size, size, 3)`` RGB. Raises :class:`NoFaceError` when there is none."""
    import torch

    from .judges.align import ARCFACE_DST, similarity_transform, to_batch, warp

    faces = detect(image, backend, pack)
    if not faces:
        raise NoFaceError(f"no face detected in {what or _describe(image)} (backend {resolve_backend(backend)!r})")
    _, kps, _ = faces[0]
    m = similarity_transform(kps, ARCFACE_DST * (size / 112.0))
    x = to_batch(image, "image")
    crop = warp(x, m[None], size)[0]
    return (crop.permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


__all__ = ["BACKENDS", "NoFaceError", "detect", "detect_and_crop", "face_analysis", "find_insightface_pack",
           "insightface_available", "resolve_backend"]
