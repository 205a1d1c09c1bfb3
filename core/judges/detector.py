"""The built-in SynthFace face detector: box + 5 landmarks, in the SCRFD output layout (see ``nets.DetectorNet``).

The same network runs here in torch (``FaceDetector``, no onnxruntime/OpenCV needed) and, exported to ONNX, inside
insightface (``SCRFD`` class, ``FaceAnalysis``). Decoding below mirrors insightface's: the image is letterboxed
into the 128x128 input (aspect kept, padded right/bottom), anchors above ``threshold`` are decoded and
non-maximum suppressed at IoU 0.4.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .align import to_batch
from .common import default_path, load_net
from .nets import STRIDES, DetectorNet, anchor_centers

FILE_NAME = "detector.safetensors"
KIND = "facesmith.judge.detector"
INPUT_SIZE = 128
NMS_IOU = 0.4


@dataclass
class Face:
    box: np.ndarray    # (4,) x1, y1, x2, y2 in image pixels
    kps: np.ndarray    # (5, 2) eyes, nose tip, mouth corners (insightface order)
    score: float


def letterbox(x: torch.Tensor, size: int = INPUT_SIZE) -> tuple[torch.Tensor, float]:
    """``(1, 3, H, W)`` in [0, 1] -> ``(1, 3, size, size)`` (aspect kept, black padding right/bottom), scale."""
    h, w = x.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    mode = "area" if scale < 1 else "bilinear"
    y = F.interpolate(x, size=(nh, nw), mode=mode, **({} if mode == "area" else {"align_corners": False}))
    out = torch.zeros(x.shape[0], 3, size, size)
    out[..., :nh, :nw] = y
    return out, nh / h


def normalise(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] RGB -> the detector's input scaling ``(x * 255 - 127.5) / 128`` (insightface SCRFD's)."""
    return (x01 * 255.0 - 127.5) / 128.0


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(boxes[i, 0], boxes[order[1:], 0])
        yy1 = np.maximum(boxes[i, 1], boxes[order[1:], 1])
        xx2 = np.minimum(boxes[i, 2], boxes[order[1:], 2])
        yy2 = np.minimum(boxes[i, 3], boxes[order[1:], 3])
        inter = np.maximum(0, xx2 - xx1 + 1) * np.maximum(0, yy2 - yy1 + 1)
        area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
        ovr = inter / (area[i] + area[order[1:]] - inter)
        order = order[1:][ovr <= iou]
    return keep


def decode(outputs, threshold: float, size: int = INPUT_SIZE):
    """SCRFD decoding of one image's 9 outputs -> (boxes (K, 4), kps (K, 5, 2), scores (K,)) in input pixels."""
    boxes, kpss, scores = [], [], []
    for i, s in enumerate(STRIDES):
        sc = np.asarray(outputs[i]).reshape(-1)
        bb = np.asarray(outputs[i + 3]).reshape(-1, 4) * s
        kp = np.asarray(outputs[i + 6]).reshape(-1, 10) * s
        c = anchor_centers(size, size, s).numpy()
        pos = np.where(sc >= threshold)[0]
        if not len(pos):
            continue
        c = c[pos]
        b = bb[pos]
        boxes.append(np.stack([c[:, 0] - b[:, 0], c[:, 1] - b[:, 1], c[:, 0] + b[:, 2], c[:, 1] + b[:, 3]], 1))
        kpss.append(kp[pos].reshape(-1, 5, 2) + c[:, None, :])
        scores.append(sc[pos])
    if not boxes:
        return np.zeros((0, 4)), np.zeros((0, 5, 2)), np.zeros(0)
    return np.concatenate(boxes), np.concatenate(kpss), np.concatenate(scores)


class FaceDetector:
    def __init__(self, net: DetectorNet, metadata: dict | None = None, path: Path | None = None,
                 threshold: float = 0.5):
        self.net = net.eval()
        self.metadata = metadata or {}
        self.path = path
        self.threshold = threshold

    @classmethod
    def load(cls, path=None) -> "FaceDetector":
        path = Path(path) if path is not None else default_path(FILE_NAME)
        state, arch, meta = load_net(path, KIND)
        net = DetectorNet(tuple(arch["widths"]), arch["head_width"])
        net.load_state_dict(state)
        return cls(net, meta, path, float(meta.get("threshold", 0.5)))

    @torch.no_grad()
    def detect(self, image, threshold: float | None = None, max_faces: int = 0) -> list[Face]:
        """Faces in one image (uint8 HxWx3, or a ComfyUI IMAGE of batch 1), best first."""
        x = to_batch(image, "image")
        if x.shape[0] != 1:
            raise ValueError(f"detect takes one image, got a batch of {x.shape[0]}")
        thr = self.threshold if threshold is None else float(threshold)
        inp, scale = letterbox(x)
        outs = [o.numpy() for o in self.net(normalise(inp))]
        boxes, kps, scores = decode(outs, thr)
        if not len(scores):
            return []
        keep = nms(boxes, scores)
        # input pixel u shows image pixel (u + 0.5) / scale - 0.5 (half-pixel centres, as the resize samples)
        faces = [Face((boxes[i] + 0.5) / scale - 0.5, (kps[i] + 0.5) / scale - 0.5, float(scores[i])) for i in keep]
        return faces[:max_faces] if max_faces else faces
