"""The face pipeline: images -> detect -> 5-point alignment to the 112x112 ArcFace template -> embed -> ``Faces``.

``analyze(images, settings, ...)`` takes a ComfyUI IMAGE batch (1, 3 or 4 channels: grayscale is repeated,
alpha is dropped), uint8 arrays (``(H, W)``, ``(H, W, C)``, ``(B, H, W, C)``) or a list of arrays of any sizes.

Choices (:class:`FaceSettings`), with ``auto`` meaning "a real-face model when the user has one, else built-in":

- detector ``auto``: the detector of the user's insightface pack when one is present (and insightface imports),
  else the built-in SynthFace detector; or ``synthface`` / ``insightface`` / ``mtcnn`` / ``dlib`` (detectors.py);
- recognizer ``auto``: the pack's recognizer with a user pack, else dlib's after a real-face detector when dlib is
  installed, else the SynthFace one; or ``synthface`` / ``insightface`` / ``dlib`` / ``none`` (recognizers.py);
- pack ``auto``: the first user pack, else the built-in ``synthface`` pack; provider: onnxruntime's execution
  provider for insightface (CPU fallback with a note when it cannot be used).

Per image: when nothing is found and ``retry`` is on, the image is padded by 25% of its longer side (edge pixels)
and searched again at half the detection size (enlarged if small): faces that fill the frame, or are cut by its
edge, are found that way. Still nothing: ``on_no_face="error"`` raises :class:`~facesmith.core.faces.NoFaceError`
naming the image, ``"skip"`` records it in ``Faces.skipped`` and goes on. Several faces: ``select="largest"``
keeps the largest, ``"index"`` the ``face_index``-th from the left (from 0), ``"all"`` every face, left to right.

Embeddings are personal data: they live only in the returned ``Faces`` (whose ``repr`` leaves them out) and are
written nowhere by this module.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import torch

from ..faces import NoFaceError
from ..judges.align import ARCFACE_DST, similarity_transform, warp
from ..progress import report
from . import insightface_pack, wheel_models
from .detectors import DETECTORS, Face, make_detector, unscale
from .recognizers import RECOGNIZERS, make_recognizer

SELECT = ("largest", "index", "all")
ON_NO_FACE = ("error", "skip")
CROP_SIZE = 112
RETRY_PAD = 0.25
MIN_DET_SIZE = 160

SYNTHFACE_ONLY = (
    "The built-in SynthFace models only know the SynthFace world (FaceSmith's procedural faces): they do not find "
    "or recognise real people. For real photos choose detector 'mtcnn' (pip install --no-deps facenet-pytorch) or "
    "'dlib' with recognizer 'dlib' (pip install dlib-bin face-recognition-models), or put an insightface pack such "
    "as buffalo_l or antelopev2 in models/insightface/models/<name>/; to generate real people also load a real base "
    "model (SD1.5/SDXL) and an encoder or adapter trained on real faces.")


@dataclass(frozen=True)
class FaceSettings:
    detector: str = "auto"
    recognizer: str = "auto"
    pack: str = "auto"
    provider: str = "CPU"
    det_size: int = 640


@dataclass
class Faces:
    """What the pipeline found: one row per kept face. ``image_index[k]`` is the image face k came from."""

    boxes: np.ndarray            # (F, 4) x1, y1, x2, y2, pixels of its image
    landmarks: np.ndarray        # (F, 5, 2) ArcFace order
    scores: np.ndarray           # (F,) detector confidence
    image_index: np.ndarray      # (F,) int
    crops: torch.Tensor = field(repr=False)              # (F, 112, 112, 3) float [0, 1], ArcFace-aligned
    embeddings: torch.Tensor | None = field(repr=False)  # (F, D) L2-normalised, None for recognizer 'none'
    detector: str = ""           # e.g. "mtcnn", "insightface:buffalo_l"
    recognizer: str | None = None
    detector_label: str = ""
    recognizer_label: str = ""
    threshold: float | None = None   # the recognizer's same-person cosine, where known
    synthface_detector: bool = False
    synthface_recognizer: bool = False
    settings: FaceSettings = FaceSettings()  # resolved: analysing new images the same way (Face Similarity)
    num_images: int = 0
    found: list = field(default_factory=list)      # per image: faces the detector found
    retried: list = field(default_factory=list)    # images searched a second time (padding, smaller size)
    skipped: list = field(default_factory=list)    # images without a face (on_no_face="skip")
    others: list = field(default_factory=list)     # (image index, box) of faces found but not kept
    notes: list = field(default_factory=list)

    def __len__(self) -> int:
        return int(len(self.scores))

    def __repr__(self) -> str:  # short, and never the embeddings
        return (f"Faces({len(self)} face(s) from {self.num_images} image(s), detector={self.detector!r}, "
                f"recognizer={self.recognizer!r}, skipped={self.skipped})")

    def per_image(self) -> list[list[int]]:
        """Row indices of the kept faces of each image."""
        out = [[] for _ in range(self.num_images)]
        for k, i in enumerate(self.image_index):
            out[int(i)].append(k)
        return out

    def identity(self) -> torch.Tensor:
        """The normalised mean embedding of all faces (one person seen in several images)."""
        if self.embeddings is None or not len(self):
            raise ValueError("these FACES have no embeddings" if self.embeddings is None else "these FACES are empty")
        m = self.embeddings.mean(0)
        return m / m.norm().clamp_min(1e-12)


# --------------------------------------------------------------------------------------------- building


def resolve(settings: FaceSettings) -> FaceSettings:
    """``auto`` choices made concrete (see the module docstring)."""
    for value, allowed, what in ((settings.detector, DETECTORS, "detector"),
                                 (settings.recognizer, RECOGNIZERS, "recognizer")):
        if value not in allowed:
            raise ValueError(f"face {what} must be one of {', '.join(allowed)}, got {value!r}")
    pack = settings.pack
    user = insightface_pack.user_packs() if pack == "auto" or settings.detector == "auto" else []
    if pack == "auto":
        pack = user[0] if user else insightface_pack.BUILTIN_PACK
    real_pack = pack != insightface_pack.BUILTIN_PACK and insightface_pack.insightface_available()
    detector = settings.detector
    if detector == "auto":
        detector = "insightface" if real_pack and pack in user else "synthface"
    recognizer = settings.recognizer
    if recognizer == "auto":
        if detector == "insightface" and real_pack:
            recognizer = "insightface"
        elif detector in ("mtcnn", "dlib") and wheel_models.dlib_available():
            recognizer = "dlib"
        else:
            recognizer = "synthface"
    det_size = int(settings.det_size)
    if det_size < MIN_DET_SIZE or det_size % 32:
        raise ValueError(f"det_size must be a multiple of 32 and at least {MIN_DET_SIZE}, got {det_size}")
    return FaceSettings(detector, recognizer, pack, settings.provider, det_size)


def requirement_problem(settings: FaceSettings) -> tuple[str, str] | None:
    """``(setting, what to install)`` when a chosen model's package is missing, else ``None``."""
    s = resolve(settings)
    if s.detector == "mtcnn" and not wheel_models.mtcnn_available():
        return "detector", f"MTCNN needs facenet-pytorch: {wheel_models.MTCNN_INSTALL}"
    for what in ("detector", "recognizer"):
        if getattr(s, what) == "dlib" and not wheel_models.dlib_available():
            return what, f"dlib's models need dlib and face-recognition-models: {wheel_models.DLIB_INSTALL}"
        if getattr(s, what) == "insightface" and not insightface_pack.insightface_available():
            return what, f"insightface packs need insightface and onnxruntime: {insightface_pack.INSIGHTFACE_INSTALL}"
    return None


class FacePipeline:
    def __init__(self, settings: FaceSettings):
        self.settings = s = resolve(settings)
        self.pack = None
        if "insightface" in (s.detector, s.recognizer):
            self.pack = insightface_pack.load_pack(s.pack, s.provider, need_recognition=s.recognizer == "insightface",
                                                   det_size=s.det_size)
        self.notes = list(self.pack.notes) if self.pack else []
        self.detector = make_detector(s.detector, self.pack)
        self.recognizer = None if s.recognizer == "none" else make_recognizer(s.recognizer, self.pack)

    def find(self, image: np.ndarray, retry: bool = True) -> tuple[list[Face], bool]:
        """Faces in one uint8 RGB image, left to right, and whether the padded retry was needed."""
        det_size = self.settings.det_size
        found = self.detector.detect(image, det_size)
        retried = False
        if not found and retry:
            h, w = image.shape[:2]
            pad = max(1, int(round(RETRY_PAD * max(h, w))))
            padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
            size = max(MIN_DET_SIZE, det_size // 2 // 32 * 32)
            found = [unscale(f, 1.0, (pad, pad)) for f in self.detector.detect(padded, size, upscale=True)]
            retried = True
        return sorted(found, key=lambda f: float(f.box[0] + f.box[2])), retried


@lru_cache(maxsize=4)
def _pipeline(settings: FaceSettings) -> FacePipeline:
    return FacePipeline(settings)


def pipeline(settings: FaceSettings = FaceSettings()) -> FacePipeline:
    """A (cached) pipeline for ``settings``."""
    return _pipeline(resolve(settings))


# --------------------------------------------------------------------------------------------- analysing


def as_uint8_images(images) -> list[np.ndarray]:
    """Images in any accepted form -> a list of uint8 ``(H, W, 3)`` RGB arrays (through core/images)."""
    from ..images import comfy_to_numpy, numpy_to_comfy

    if isinstance(images, torch.Tensor):
        return list(comfy_to_numpy(images))
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise TypeError(f"images: expected uint8 arrays or a ComfyUI IMAGE tensor, got {images.dtype}")
        if not images.flags.writeable:  # torch.from_numpy warns on read-only arrays (e.g. scikit-image's data)
            images = images.copy()
        return list(comfy_to_numpy(numpy_to_comfy(images)))
    if isinstance(images, (list, tuple)) and images:
        return [a for im in images for a in as_uint8_images(im)]
    raise TypeError(f"images: expected a ComfyUI IMAGE, uint8 arrays or a list of them, got {type(images).__name__}")


def align(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> torch.Tensor:
    """The faces with ``landmarks`` ``(F, 5, 2)`` of one uint8 image, ArcFace-aligned: ``(F, size, size, 3)``."""
    if not len(landmarks):
        return torch.zeros(0, size, size, 3)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    dst = ARCFACE_DST * (size / 112.0)
    m = np.stack([similarity_transform(p, dst) for p in landmarks])
    return warp(x.expand(len(m), -1, -1, -1), m, size).clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def _select(faces: list[Face], select: str, face_index: int, i: int, n: int) -> list[int]:
    if select == "all":
        return list(range(len(faces)))
    if select == "largest":
        areas = [float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])) for f in faces]
        return [int(np.argmax(areas))]
    if face_index >= len(faces):
        raise NoFaceError(f"image {i} (of {n}, numbered from 0) has {len(faces)} face(s); face_index {face_index} "
                          f"asks for face number {face_index} from the left, counting from 0")
    return [face_index]


def no_face_message(i: int, n: int, pipe: FacePipeline, retried: bool) -> str:
    det = pipe.detector
    msg = f"no face found in image {i} (of {n}, numbered from 0) by the {det.label}"
    if retried:
        msg += (f", also not when retried with {int(RETRY_PAD * 100)}% padding at detection size "
                f"{max(MIN_DET_SIZE, pipe.settings.det_size // 2 // 32 * 32)}")
    if det.synthface_only:
        msg += ". " + SYNTHFACE_ONLY
    return msg


def analyze(images, settings: FaceSettings = FaceSettings(), on_no_face: str = "error", select: str = "largest",
            face_index: int = 0, retry: bool = True, progress=None) -> Faces:
    """Detect, align and embed the faces of ``images`` (see the module docstring)."""
    if on_no_face not in ON_NO_FACE:
        raise ValueError(f"on_no_face must be one of {', '.join(ON_NO_FACE)}, got {on_no_face!r}")
    if select not in SELECT:
        raise ValueError(f"select must be one of {', '.join(SELECT)}, got {select!r}")
    if face_index < 0:
        raise ValueError(f"face_index must be 0 or more, got {face_index}")
    pipe = pipeline(settings)
    arrays = as_uint8_images(images)
    n = len(arrays)
    rows: list[tuple[int, Face]] = []
    crops, embs = [], []
    out = Faces(np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros(0, np.float32),
                np.zeros(0, np.int64), torch.zeros(0, CROP_SIZE, CROP_SIZE, 3), None, pipe.detector.name,
                pipe.recognizer.name if pipe.recognizer else None, pipe.detector.label,
                pipe.recognizer.label if pipe.recognizer else "none (detection only)",
                pipe.recognizer.threshold if pipe.recognizer else None, pipe.detector.synthface_only,
                bool(pipe.recognizer and pipe.recognizer.synthface_only), pipe.settings, n)
    out.notes.extend(pipe.notes)
    for i, img in enumerate(arrays):
        found, retried = pipe.find(img, retry)
        out.found.append(len(found))
        if retried:
            out.retried.append(i)
        if not found:
            if on_no_face == "error":
                raise NoFaceError(no_face_message(i, n, pipe, retried))
            out.skipped.append(i)
        else:
            try:
                keep = _select(found, select, face_index, i, n)
            except NoFaceError:
                if on_no_face == "error":
                    raise
                keep = []
                out.skipped.append(i)
            out.others.extend((i, found[k].box) for k in range(len(found)) if k not in keep)
            kept = [found[k] for k in keep]
            if kept:
                c = align(img, np.stack([f.kps for f in kept]))
                crops.append(c)
                if pipe.recognizer is not None:
                    embs.append(pipe.recognizer.embed(img, kept, c))
                rows.extend((i, f) for f in kept)
        report(progress, i + 1, n)
    if rows:
        out.boxes = np.stack([f.box for _, f in rows]).astype(np.float32)
        out.landmarks = np.stack([f.kps for _, f in rows]).astype(np.float32)
        out.scores = np.array([f.score for _, f in rows], np.float32)
        out.image_index = np.array([i for i, _ in rows], np.int64)
        out.crops = torch.cat(crops)
    if pipe.recognizer is not None:
        out.embeddings = torch.cat(embs) if embs else torch.zeros(0, pipe.recognizer.dim or 0)
    out.notes.extend(synthface_hints(out))
    return out


def synthface_hints(faces: Faces) -> list[str]:
    """Plain words for a real photo given to the built-in SynthFace models."""
    if faces.synthface_detector and (faces.skipped or not len(faces)):
        return [f"No face found in image(s) {', '.join(map(str, faces.skipped)) or 'all'}. " + SYNTHFACE_ONLY]
    if faces.synthface_recognizer and not faces.synthface_detector and len(faces):
        return ["These faces were found by a real-face detector but embedded by the built-in SynthFace recognizer, "
                "so their similarity scores mean little. " + SYNTHFACE_ONLY]
    return []


def merge(parts: list[Faces]) -> Faces:
    """Several FACES (e.g. one per photo, photos of different sizes) as one: rows concatenated, image indices
    renumbered in order. They must come from the same detector and recognizer settings."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0]
    for p in parts[1:]:
        if (p.recognizer, p.detector) != (first.recognizer, first.detector):
            raise ValueError(f"these FACES were analysed differently (detector {p.detector!r}, recognizer "
                             f"{p.recognizer!r} vs {first.detector!r}, {first.recognizer!r}); analyse every photo "
                             "with the same settings")
    offset, index, skipped, found, retried, others = 0, [], [], [], [], []
    for p in parts:
        index.append(np.asarray(p.image_index, np.int64) + offset)
        skipped += [i + offset for i in p.skipped]
        retried += [i + offset for i in p.retried]
        others += [(i + offset, b) for i, b in p.others]
        found += list(p.found)
        offset += p.num_images
    embs = None if any(p.embeddings is None for p in parts) else torch.cat([p.embeddings for p in parts])
    return replace(first, boxes=np.concatenate([p.boxes for p in parts]),
                   landmarks=np.concatenate([p.landmarks for p in parts]),
                   scores=np.concatenate([p.scores for p in parts]), image_index=np.concatenate(index),
                   crops=torch.cat([p.crops for p in parts]), embeddings=embs, num_images=offset, found=found,
                   retried=retried, skipped=skipped, others=others,
                   notes=list(dict.fromkeys(n for p in parts for n in p.notes)))


# --------------------------------------------------------------------------------------------- likeness


COMBINE = ("mean", "max")


def similarity(faces: Faces, reference: Faces, combine: str = "mean") -> np.ndarray:
    """Cosine similarity of each face to the reference person: to the normalised mean of the reference embeddings
    (``mean``), or to the best-matching reference face (``max``)."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {', '.join(COMBINE)}, got {combine!r}")
    if reference.embeddings is None or faces.embeddings is None:
        raise ValueError("similarity needs embeddings: analyse the faces with a recognizer (not 'none')")
    if reference.recognizer != faces.recognizer:
        raise ValueError(f"the faces were embedded by {faces.recognizer!r} but the reference by "
                         f"{reference.recognizer!r}; embeddings of different recognizers cannot be compared")
    if not len(reference):
        raise ValueError("the reference FACES hold no face")
    if not len(faces):
        return np.zeros(0)
    if combine == "mean":
        return (faces.embeddings @ reference.identity()).numpy().astype(np.float64)
    return (faces.embeddings @ reference.embeddings.T).max(1).values.numpy().astype(np.float64)


def compare(images, reference: Faces, combine: str = "mean", select: str = "largest",
            progress=None) -> tuple[list[float | None], Faces]:
    """Analyse ``images`` exactly as ``reference`` was (same detector, recognizer, pack) and score each image's
    selected face against it: ``(score per image, None where no face was found; the images' Faces)``."""
    faces = analyze(images, replace(reference.settings), on_no_face="skip", select=select, progress=progress)
    sims = similarity(faces, reference, combine)
    per_image: list[float | None] = [None] * faces.num_images
    for k, i in enumerate(faces.image_index):
        per_image[int(i)] = float(sims[k]) if per_image[int(i)] is None else max(per_image[int(i)], float(sims[k]))
    return per_image, faces


__all__ = ["COMBINE", "FacePipeline", "FaceSettings", "Faces", "NoFaceError", "ON_NO_FACE", "SELECT",
           "SYNTHFACE_ONLY", "align", "analyze", "merge", "as_uint8_images", "compare", "pipeline", "requirement_problem",
           "resolve", "similarity", "synthface_hints"]
