"""Device and dtype decisions, in one place.

``pick_device("auto")`` prefers CUDA, then Apple MPS, then the CPU. ``pick_dtype("auto", device)`` is fp16 on CUDA and
fp32 elsewhere. Asking for fp16 on the CPU falls back to fp32 with a warning (many CPU kernels have no half-precision
version, and a workflow saved on a GPU machine should still run on a CPU-only one); bf16 works on the CPU and is kept.
Asking for a device that is not there is an error.
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("facesmith")

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_NAMES = {v: k for k, v in _DTYPES.items()}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> cuda if available, else mps, else cpu; ``"cuda"``/``"cuda:1"``/``"mps"`` must exist."""
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":", 1)[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "device 'cuda' was asked for but this torch has no usable CUDA GPU "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use 'auto' or 'cpu'"
            )
        index = torch.device(name).index
        if index is not None and index >= torch.cuda.device_count():
            raise RuntimeError(f"device {name!r} was asked for but only {torch.cuda.device_count()} CUDA GPU(s) exist")
    if kind == "mps" and not _mps_available():
        raise RuntimeError("device 'mps' was asked for but Apple MPS is not available; use 'auto' or 'cpu'")
    return torch.device(name)


def pick_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """``"auto"`` -> fp16 on cuda, fp32 elsewhere. fp16 on the CPU falls back to fp32 with a warning."""
    device = torch.device(device) if not isinstance(device, torch.device) else device
    if isinstance(dtype, torch.dtype):
        name = _DTYPE_NAMES.get(dtype)
        if name is None:
            raise ValueError(f"unsupported dtype {dtype}; choose one of {', '.join(DTYPE_CHOICES)}")
    else:
        name = str(dtype).strip().lower()
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    if name == "fp16" and device.type == "cpu":
        log.warning("FaceSmith: fp16 is not supported on the CPU; using fp32 instead")
        return torch.float32
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError("bf16 was asked for but this GPU does not support bfloat16; use 'fp16' or 'auto'")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"fp16"`` (for logs, metadata and fingerprints)."""
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))
