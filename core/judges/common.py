"""Where the judges' weight files live and how they are read and written (safetensors + JSON metadata)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import paths
from ..formats import load_safetensors, save_safetensors
from ..weights_check import check_finite

JUDGES_SUBDIR = "judges"  # under the "facesmith" model kind
BUILTIN_JUDGES_DIR = paths.BUILTIN_MODELS_DIR / "facesmith" / JUDGES_SUBDIR
INSIGHTFACE_PACK = "synthface"  # <models>/insightface/models/synthface/{det,rec}_synthface.onnx
BUILTIN_INSIGHTFACE_ROOT = paths.BUILTIN_MODELS_DIR / "insightface"
FORMAT_VERSION = 1


def default_path(file_name: str) -> Path:
    """``judges/<file_name>`` from the user's facesmith models folder if present there, else the built-in one."""
    found = paths.find("facesmith", f"{JUDGES_SUBDIR}/{file_name}")
    return found if found is not None else BUILTIN_JUDGES_DIR / file_name


def save_net(path, net: torch.nn.Module, kind: str, arch: dict, extra: dict | None = None, overwrite: bool = False,
             half: bool = True) -> Path:
    """Write ``net``'s weights (float tensors as fp16 when ``half``) with metadata ``kind``/``arch``/``extra``."""
    tensors = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu()
        tensors[k] = v.half() if half and v.is_floating_point() else v
    meta = {"facesmith_kind": kind, "format_version": str(FORMAT_VERSION), "arch": json.dumps(arch)}
    for k, v in (extra or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    return save_safetensors(path, tensors, meta, overwrite=overwrite)


def round_trip_half(net: torch.nn.Module) -> None:
    """Round the float weights to fp16 and back (what saving/loading does), so build-time measurements describe
    exactly the weights that ship."""
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.half().float())


def load_net(path, kind: str) -> tuple[dict, dict, dict]:
    """``(state_dict as float32, arch, metadata with JSON values decoded)``; checks the file's kind."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"judge weights {path} not found; build them with `facesmith train judges` (see "
            f"{BUILTIN_JUDGES_DIR / 'README.md'})")
    tensors, meta = load_safetensors(path)
    check_finite(path, tensors)  # NaN/Inf weights would score every image silently wrong
    if meta.get("facesmith_kind") != kind:
        raise ValueError(f"{path} is not a {kind} file (facesmith_kind={meta.get('facesmith_kind')!r})")
    decoded = {}
    for k, v in meta.items():
        try:
            decoded[k] = json.loads(v)
        except (json.JSONDecodeError, TypeError):
            decoded[k] = v
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    return state, decoded["arch"], decoded


def load_judge_net(path, file_name: str, kind: str, build, device: str = "cpu"):
    """``(net, arch, metadata, path)`` of a judge file: ``path`` (default: the built-in ``file_name``) read by
    :func:`load_net`, the network made by ``build(arch)`` with the stored weights, on ``device``, in eval mode."""
    path = Path(path) if path is not None else default_path(file_name)
    state, arch, meta = load_net(path, kind)
    net = build(arch)
    net.load_state_dict(state)
    return net.to(device).eval(), arch, meta, path


def batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))
