"""Face detection and alignment: ``detect_and_crop(image) -> aligned 112x112 face`` through one of three backends.

- ``"insightface"``: an insightface model pack (a folder of ``.onnx`` files, model kind ``insightface``: the built-in
  ``models/synthface`` pack, or e.g. ``buffalo_l`` in the user's models folder) run with
  ``insightface.app.FaceAnalysis`` for detection; needs the ``face`` extra (insightface, onnxruntime, opencv);
- ``"synthface"``: the built-in SynthFace detector in torch (no extra packages);
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

BACKENDS = ("auto", "insightface", "synthface", "center")
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
    try:
        import insightface  # noqa: F401
        import onnxruntime  # noqa: F401
    except Exception:
        return False
    return True


def find_insightface_pack(name: str = DEFAULT_INSIGHTFACE_PACK) -> Path:
    """The folder of insightface pack ``name`` (``<insightface>/models/<name>/`` or ``<insightface>/<name>/``)."""
    from . import paths

    for candidate in (f"models/{name}", name):
        p = paths.find("insightface", candidate)
        if p is not None and p.is_dir():
            return p
    raise FileNotFoundError(
        f"insightface model pack {name!r} not found: looked for a folder of .onnx files named models/{name} or "
        f"{name} in " + ", ".join(str(r) for r in paths.search_roots("insightface")))


def _pack_args(d: Path) -> dict:
    """FaceAnalysis arguments for pack folder ``d``: an absolute ``name`` is used as is by every insightface version
    (newer ones take a folder, older ones ``os.path.join(root, "models", name)``, which yields ``name``)."""
    d = d.resolve()
    return {"name": str(d), "root": str(d.parent.parent if d.parent.name == "models" else d.parent)}


@lru_cache(maxsize=4)
def _face_analysis(pack_dir: str):
    import onnxruntime
    from insightface.app import FaceAnalysis

    onnxruntime.set_default_logger_severity(3)
    app = FaceAnalysis(**_pack_args(Path(pack_dir)), allowed_modules=["detection"], providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    return app


def face_analysis(name: str = DEFAULT_INSIGHTFACE_PACK, allowed_modules=None):
    """An ``insightface.app.FaceAnalysis`` for pack ``name`` (detection + whatever else the pack has), on the CPU."""
    import onnxruntime
    from insightface.app import FaceAnalysis

    onnxruntime.set_default_logger_severity(3)
    app = FaceAnalysis(**_pack_args(find_insightface_pack(name)), allowed_modules=allowed_modules,
                       providers=["CPUExecutionProvider"])
    app.prepare(ctx_id=-1, det_size=(640, 640))
    return app


@lru_cache(maxsize=1)
def _synthface_detector():
    from .judges.detector import FaceDetector

    return FaceDetector.load()


def detect(image, backend: str = "auto", pack: str = DEFAULT_INSIGHTFACE_PACK):
    """Faces in ``image`` as ``[(box (4,), kps (5, 2), score)]``, best first (``"center"`` gives the canonical one)."""
    backend = resolve_backend(backend)
    img = _to_uint8(image)
    if backend == "insightface":
        app = _face_analysis(str(find_insightface_pack(pack)))
        faces = app.get(np.ascontiguousarray(img[..., ::-1]))  # insightface takes BGR
        faces = sorted(faces, key=lambda f: -float(f.det_score))
        return [(np.asarray(f.bbox, np.float32), np.asarray(f.kps, np.float32), float(f.det_score)) for f in faces]
    if backend == "synthface":
        return [(f.box, f.kps, f.score) for f in _synthface_detector().detect(img)]
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
