"""ONNX export of the recognizer and the detector in the formats insightface's model zoo recognises.

- recognizer -> ``ArcFaceONNX``: input ``(N, 3, 112, 112)`` float RGB scaled ``(x - 127.5) / 127.5`` (insightface
  applies that scaling itself because the graph does not start with Sub/Mul nodes), ONE output ``embedding``
  ``(N, 128)``, already L2-normalised;
- detector -> ``SCRFD``: input ``(1, 3, 128, 128)`` (fixed, so insightface letterboxes every image to 128x128),
  RGB ``(x - 127.5) / 128``, 9 outputs ``score_8, score_16, score_32, bbox_8, ..., kps_32`` (2 anchors per location).

Put both in one folder (``<models>/insightface/models/<name>/``) and ``FaceAnalysis(name=<name>, root=<models>/
insightface)`` detects, aligns (``norm_crop``) and embeds faces with them.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ..formats import atomic_write_bytes
from .nets import STRIDES, DetectorNet, RecognizerNet

REC_FILE = "rec_synthface.onnx"
DET_FILE = "det_synthface.onnx"


class _Exportable(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)


def _to_bytes(module: torch.nn.Module, example: torch.Tensor, input_name: str, output_names: list[str],
              dynamic_axes: dict | None) -> bytes:
    import onnx

    buf = io.BytesIO()
    module = module.eval()
    with torch.no_grad():
        torch.onnx.export(module, (example,), buf, input_names=[input_name], output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=17, dynamo=False, do_constant_folding=True)
    model = onnx.load_model_from_string(buf.getvalue())
    _half_initializers(model)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _half_initializers(model, min_size: int = 64) -> None:
    """Store large float32 weights as float16 (half the file) with a Cast back to float32 in front: the graph still
    computes in float32 on the fp16-rounded weights the safetensors files hold, so outputs match torch."""
    from onnx import TensorProto, helper, numpy_helper

    casts = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        if arr.size < min_size:
            continue
        name = init.name
        half = numpy_helper.from_array(arr.astype(np.float16), name=f"{name}__fp16")
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], name=f"Cast_fp16_{len(casts)}",
                                      to=TensorProto.FLOAT))
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def recognizer_onnx_bytes(net: RecognizerNet) -> bytes:
    return _to_bytes(_Exportable(net), torch.zeros(1, 3, 112, 112), "input.1", ["embedding"],
                     {"input.1": {0: "batch"}, "embedding": {0: "batch"}})


def detector_onnx_bytes(net: DetectorNet, size: int = 128) -> bytes:
    names = [f"score_{s}" for s in STRIDES] + [f"bbox_{s}" for s in STRIDES] + [f"kps_{s}" for s in STRIDES]
    return _to_bytes(_Exportable(net), torch.zeros(1, 3, size, size), "input.1", names, None)


def export_insightface_pack(rec_net: RecognizerNet, det_net: DetectorNet, folder, overwrite: bool = False) -> dict:
    """Write ``rec_synthface.onnx`` and ``det_synthface.onnx`` into ``folder``; returns their paths."""
    folder = Path(folder)
    rec = atomic_write_bytes(folder / REC_FILE, recognizer_onnx_bytes(rec_net), overwrite=overwrite)
    det = atomic_write_bytes(folder / DET_FILE, detector_onnx_bytes(det_net), overwrite=overwrite)
    return {"recognition": rec, "detection": det}


def check_with_insightface(folder, rec_net: RecognizerNet, aligned_rgb_112: np.ndarray) -> dict:
    """Load the pack's recognizer with ``insightface.model_zoo.get_model`` and compare ``get_feat`` on BGR crops with
    the torch embeddings: ``{"routed_as", "min_cosine", "max_abs_diff"}``."""
    from insightface.model_zoo import get_model

    model = get_model(str(Path(folder) / REC_FILE), providers=["CPUExecutionProvider"])
    feats = np.asarray(model.get_feat([a[..., ::-1].copy() for a in aligned_rgb_112]), dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(aligned_rgb_112)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        ref = rec_net.eval()(x).numpy()
    cos = (feats * ref).sum(1) / (np.linalg.norm(feats, axis=1) * np.linalg.norm(ref, axis=1))
    return {"routed_as": type(model).__name__, "input_mean": float(model.input_mean),
            "input_std": float(model.input_std), "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(feats - ref).max())}
