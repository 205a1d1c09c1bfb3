"""Face detectors behind one interface: ``detect(image, det_size, upscale) -> [Face(box, kps, score)]``.

``image`` is uint8 ``(H, W, 3)`` RGB; boxes are ``x1, y1, x2, y2`` and the 5 landmarks are in the ArcFace order
(image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner), both in pixels of
``image``. ``det_size`` is the side the detector works at: insightface letterboxes into ``det_size`` squares; MTCNN
and dlib shrink a larger image to it (and, with ``upscale``, enlarge a smaller one: the pipeline's retry); the
SynthFace detector always works at its fixed 128x128 input.

- ``synthface``: the built-in SynthFace detector in torch (SynthFace renders only);
- ``insightface``: the detection model of an insightface pack (``buffalo_l``, ``antelopev2``, the built-in
  ``synthface`` pack, ...);
- ``mtcnn``: facenet-pytorch's MTCNN (real faces), faces kept at probability >= 0.9 (facenet-pytorch's own
  default for picking faces);
- ``dlib``: dlib's HOG detector (real, roughly frontal faces) with its 5-point shape predictor; that predictor marks
  eye corners and the base of the nose, from which the ArcFace points are placed with fixed ratios (below).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..judges.detector import Face
from . import wheel_models

MTCNN_THRESHOLD = 0.9
# dlib 5-point -> ArcFace 5 points. In the frame that sends (left eye centre, right eye centre, nose base) to
# (0, 0), (1, 0), (0.5, 1), MTCNN's eyes, nose tip and mouth corners lie here: medians over 106 real faces (the
# 100 face crops of scikit-image's lfw_subset, the astronaut, insightface's t1.jpg group photo and portrait),
# mean error 6% of the eye distance.
DLIB_FRAME_POINTS = np.array([[-0.012, -0.012], [1.054, -0.012], [0.501, 0.749], [0.114, 1.372], [1.010, 1.389]])
_FRAME = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]])


def fit_to(image: np.ndarray, side: int, upscale: bool = False) -> tuple[np.ndarray, float]:
    """``image`` resized (aspect kept) so its longer side is ``side`` -- only shrunk unless ``upscale`` -- and the
    scale factor."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1 and not upscale or abs(scale - 1) < 1e-6:
        return image, 1.0
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    out = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
    return out, nw / w


def unscale(face: Face, scale: float, offset=(0.0, 0.0)) -> Face:
    """A face found in a resized (``scale``) and padded (``offset`` pixels left/top) copy, in the original's pixels
    (half-pixel centres: resized pixel u shows original pixel (u + 0.5) / scale - 0.5)."""
    ox, oy = offset
    box = (np.asarray(face.box, np.float64) + 0.5) / scale - 0.5 - np.array([ox, oy, ox, oy])
    kps = (np.asarray(face.kps, np.float64) + 0.5) / scale - 0.5 - np.array([ox, oy])
    return Face(box.astype(np.float32), kps.astype(np.float32), float(face.score))


class SynthFaceDetector:
    name = "synthface"
    label = "built-in SynthFace detector"
    synthface_only = True

    def __init__(self):
        from ..judges.detector import FaceDetector

        self.net = FaceDetector.load()

    def detect(self, image: np.ndarray, det_size: int = 640, upscale: bool = False) -> list[Face]:
        return self.net.detect(image)


class InsightFaceDetector:
    synthface_only = False

    def __init__(self, pack):
        from .insightface_pack import BUILTIN_PACK

        self.pack = pack
        self.model = pack.detector
        self.name = f"insightface:{pack.name}"
        self.synthface_only = pack.name == BUILTIN_PACK
        self.label = f"insightface pack '{pack.name}' detector ({pack.files.get('detection')}, {pack.providers[0]})"

    def detect(self, image: np.ndarray, det_size: int = 640, upscale: bool = False) -> list[Face]:
        bgr = np.ascontiguousarray(image[..., ::-1])
        boxes, kpss = self.model.detect(bgr, input_size=(int(det_size), int(det_size)), max_num=0)
        if boxes is None or not len(boxes) or kpss is None:
            return []
        return [Face(np.asarray(b[:4], np.float32), np.asarray(k, np.float32), float(b[4]))
                for b, k in zip(boxes, kpss)]


class MTCNNDetector:
    name = "mtcnn"
    label = "MTCNN detector (facenet-pytorch weights, real faces)"
    synthface_only = False

    def __init__(self, threshold: float = MTCNN_THRESHOLD):
        self.net = wheel_models.load_mtcnn()
        self.threshold = float(threshold)

    def detect(self, image: np.ndarray, det_size: int = 640, upscale: bool = False) -> list[Face]:
        import torch

        work, scale = fit_to(image, det_size, upscale)
        with torch.no_grad():
            boxes, probs, points = self.net.detect(np.ascontiguousarray(work), landmarks=True)
        if boxes is None:
            return []
        faces = [Face(np.asarray(b, np.float32), np.asarray(k, np.float32), float(p))
                 for b, p, k in zip(boxes, probs, points) if p is not None and float(p) >= self.threshold]
        return [unscale(f, scale) for f in faces]


def dlib_arcface_points(shape5: np.ndarray) -> np.ndarray:
    """dlib's 5 points (right-image eye corners 0-1, left-image eye corners 2-3, nose base 4) -> ArcFace 5 points."""
    p = np.asarray(shape5, np.float64)
    src = np.stack([(p[2] + p[3]) / 2, (p[0] + p[1]) / 2, p[4]])
    affine = np.linalg.solve(np.hstack([_FRAME, np.ones((3, 1))]), src)  # frame -> image, 3x2
    return np.hstack([DLIB_FRAME_POINTS, np.ones((5, 1))]) @ affine


def dlib_shape(models: dict, image: np.ndarray, box) -> np.ndarray:
    """dlib's 5 landmarks ``(5, 2)`` of the face in ``box`` of uint8 RGB ``image``."""
    rect = models["dlib"].rectangle(*(int(round(float(v))) for v in box[:4]))
    shape = models["shape5"](image, rect)
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float64)


class DlibDetector:
    name = "dlib"
    label = "dlib HOG detector + 5-point landmarks (face-recognition-models, real faces)"
    synthface_only = False

    def __init__(self, upsample: int = 1):
        self.models = wheel_models.load_dlib()
        self.upsample = int(upsample)

    def detect(self, image: np.ndarray, det_size: int = 640, upscale: bool = False) -> list[Face]:
        work, scale = fit_to(image, det_size, upscale)
        work = np.ascontiguousarray(work)
        rects, scores, _ = self.models["detector"].run(work, self.upsample, 0.0)
        faces = []
        for r, s in zip(rects, scores):
            box = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32)
            kps = dlib_arcface_points(dlib_shape(self.models, work, box)).astype(np.float32)
            faces.append(unscale(Face(box, kps, float(s)), scale))
        return faces


DETECTORS = ("auto", "synthface", "insightface", "mtcnn", "dlib")


def make_detector(kind: str, pack=None):
    """A detector of ``kind`` (not ``auto``: :mod:`face_pipeline` resolves that); ``pack`` is the
    :class:`~.insightface_pack.LoadedPack` for ``insightface``."""
    if kind == "synthface":
        return SynthFaceDetector()
    if kind == "insightface":
        if pack is None:
            raise ValueError("the insightface detector needs a loaded pack")
        return InsightFaceDetector(pack)
    if kind == "mtcnn":
        return MTCNNDetector()
    if kind == "dlib":
        return DlibDetector()
    raise ValueError(f"face detector must be one of {', '.join(DETECTORS)}, got {kind!r}")


__all__ = ["DETECTORS", "DlibDetector", "Face", "InsightFaceDetector", "MTCNNDetector", "SynthFaceDetector",
           "dlib_arcface_points", "dlib_shape", "fit_to", "make_detector", "unscale"]
