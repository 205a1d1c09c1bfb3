"""Real-face models whose weights ship inside PyPI wheels, for real photos when no insightface pack is present.

- **MTCNN** (``pip install --no-deps facenet-pytorch``): detector + 5 landmarks (eyes, nose tip, mouth corners, the
  ArcFace order). Its weights (``pnet/rnet/onet.pt``, 1.9 MB) ship in the wheel. Its code calls two torchvision
  functions; where torchvision does not import (the PyPI build does not load beside every torch), the pure-torch
  stand-ins below are used while its module is imported. Only the MTCNN modules are loaded, under a private
  package name, so facenet-pytorch's other modules (a download helper, a trainer) never run.
- **dlib** (``pip install dlib-bin face-recognition-models``): the HOG frontal face detector (no weight file), the
  5-point shape predictor (eye corners + nose base) and the 128-d ResNet face recognizer trained on real faces.
  The 68-point predictor in the same wheel is never used (its training data forbids commercial use).

Nothing here downloads: a missing package is an ``ImportError`` that says what to ``pip install``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from functools import lru_cache
from pathlib import Path

import torch

MTCNN_INSTALL = "pip install --no-deps facenet-pytorch"
DLIB_INSTALL = "pip install dlib-bin face-recognition-models"
DLIB_FILES = {
    "shape5": "shape_predictor_5_face_landmarks.dat",
    "recognizer": "dlib_face_recognition_resnet_model_v1.dat",
}


# ------------------------------------------------------------------------------------------------------ MTCNN


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou: float) -> torch.Tensor:
    """Greedy non-maximum suppression (torchvision.ops.nms semantics: boxes x1, y1, x2, y2, continuous area)."""
    order = torch.argsort(scores, descending=True)
    boxes = boxes.float()
    area = (boxes[:, 2] - boxes[:, 0]).clamp_min(0) * (boxes[:, 3] - boxes[:, 1]).clamp_min(0)
    keep = []
    while order.numel():
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        lt = torch.maximum(boxes[i, :2], boxes[rest, :2])
        rb = torch.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = (rb - lt).clamp_min(0).prod(1)
        ovr = inter / (area[i] + area[rest] - inter).clamp_min(1e-12)
        order = rest[ovr <= iou]
    return torch.tensor(keep, dtype=torch.long)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou: float) -> torch.Tensor:
    """torchvision.ops.boxes.batched_nms: NMS within each ``idxs`` group (boxes offset apart per group)."""
    if boxes.numel() == 0:
        return torch.empty(0, dtype=torch.long)
    offset = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offset[:, None], scores, iou)


def to_tensor(pic) -> torch.Tensor:
    """torchvision.transforms.functional.to_tensor for HxWxC arrays: CxHxW float (uint8 scaled to [0, 1])."""
    import numpy as np

    a = np.asarray(pic)
    t = torch.from_numpy(np.ascontiguousarray(a if a.ndim == 3 else a[..., None])).permute(2, 0, 1)
    return t.float().div(255.0) if t.dtype == torch.uint8 else t.float()


def _torchvision_works() -> bool:
    try:
        from torchvision.ops.boxes import batched_nms as _  # noqa: F401
        from torchvision.transforms import functional as _f  # noqa: F401
    except Exception:  # ImportError, or a torchvision built for another torch failing to load its ops
        return False
    return True


def _stand_in_modules() -> dict:
    tv = types.ModuleType("torchvision")
    ops, boxes = types.ModuleType("torchvision.ops"), types.ModuleType("torchvision.ops.boxes")
    transforms, functional = types.ModuleType("torchvision.transforms"), types.ModuleType(
        "torchvision.transforms.functional")
    boxes.batched_nms, boxes.nms = batched_nms, nms
    functional.to_tensor = to_tensor
    ops.boxes, transforms.functional = boxes, functional
    tv.ops, tv.transforms = ops, transforms
    return {"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
            "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


_MTCNN_PACKAGE = "facesmith_facenet_mtcnn"  # private name: facenet_pytorch's own __init__ is never run


def _mtcnn_module():
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"MTCNN needs facenet-pytorch: {MTCNN_INSTALL}")
    models_dir = Path(list(spec.submodule_search_locations)[0]) / "models"
    if _MTCNN_PACKAGE + ".mtcnn" in sys.modules:
        return sys.modules[_MTCNN_PACKAGE + ".mtcnn"]
    pkg = types.ModuleType(_MTCNN_PACKAGE)
    pkg.__path__ = [str(models_dir)]
    sys.modules[_MTCNN_PACKAGE] = pkg
    stand_ins = {} if _torchvision_works() else _stand_in_modules()
    saved = {k: sys.modules.get(k) for k in stand_ins}
    sys.modules.update(stand_ins)
    try:
        return importlib.import_module(_MTCNN_PACKAGE + ".mtcnn")
    except Exception:
        sys.modules.pop(_MTCNN_PACKAGE, None)
        raise
    finally:
        for k, v in saved.items():  # the stand-ins stay bound inside detect_face only
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def mtcnn_available() -> bool:
    return importlib.util.find_spec("facenet_pytorch") is not None


@lru_cache(maxsize=2)
def load_mtcnn(min_face_size: int = 20):
    """facenet-pytorch's ``MTCNN`` (keep_all, CPU) with its shipped weights."""
    mod = _mtcnn_module()
    return mod.MTCNN(keep_all=True, min_face_size=int(min_face_size), select_largest=False, post_process=False,
                     device=torch.device("cpu")).eval()


# ------------------------------------------------------------------------------------------------------- dlib


def dlib_model_dir() -> Path:
    """The folder of face-recognition-models' ``.dat`` files (found without importing it: it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"dlib's face models need face-recognition-models: {DLIB_INSTALL}")
    d = Path(list(spec.submodule_search_locations)[0]) / "models"
    missing = [f for f in DLIB_FILES.values() if not (d / f).is_file()]
    if missing:
        raise FileNotFoundError(f"face-recognition-models at {d} lacks {', '.join(missing)}; reinstall it "
                                f"({DLIB_INSTALL})")
    return d


def dlib_available() -> bool:
    return (importlib.util.find_spec("dlib") is not None
            and importlib.util.find_spec("face_recognition_models") is not None)


@lru_cache(maxsize=1)
def load_dlib() -> dict:
    """``{"dlib", "detector", "shape5", "recognizer"}``: dlib's HOG detector, 5-point predictor and recognizer."""
    try:
        import dlib
    except ImportError as exc:
        raise ImportError(f"dlib is not installed ({exc}): {DLIB_INSTALL}") from exc
    d = dlib_model_dir()
    return {"dlib": dlib, "detector": dlib.get_frontal_face_detector(),
            "shape5": dlib.shape_predictor(str(d / DLIB_FILES["shape5"])),
            "recognizer": dlib.face_recognition_model_v1(str(d / DLIB_FILES["recognizer"]))}


__all__ = ["DLIB_INSTALL", "MTCNN_INSTALL", "batched_nms", "dlib_available", "dlib_model_dir", "load_dlib",
           "load_mtcnn", "mtcnn_available", "nms", "to_tensor"]
