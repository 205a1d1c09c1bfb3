"""Checks on weight files from anywhere (downloads, other tools, a damaged disk) before anything is allocated.

A safetensors file states every tensor's dtype and shape in its header, so a loader can refuse a wrong file by
reading the header alone: :func:`read_header` parses it with bounded sizes, :func:`check_specs` compares dtypes and
shapes with what the loader expects, :func:`meta_int`/:func:`meta_float` read numbers from the metadata within
stated ranges (a ``hidden`` of 2,000,000 would otherwise size a layer), and :func:`check_finite` rejects NaN/Inf
after the (file-sized) tensors are read. Every message names the file and the key: :class:`BadWeights`.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

__all__ = ["BadWeights", "TensorSpec", "read_header", "check_specs", "check_finite", "meta_int", "meta_float",
           "meta_json", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the limit the safetensors library itself enforces
FLOAT_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class BadWeights(ValueError):
    """A weight file that cannot be used; the message names the file and, where there is one, the key."""

    def __init__(self, path, problem: str, key: str | None = None):
        self.path, self.key, self.problem = Path(path), key, problem
        where = f"{path}: key '{key}'" if key is not None else f"{path}"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class TensorSpec:
    dtype: str
    shape: tuple


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorSpec], dict[str, str]]:
    """``({name: TensorSpec}, metadata)`` of a safetensors file, reading only its header (at most
    ``MAX_HEADER_BYTES``). Raises :class:`BadWeights` for anything that is not a well-formed safetensors file."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise BadWeights(path, f"not a safetensors file (only {len(head)} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise BadWeights(path, f"header too large ({n} bytes; at most {MAX_HEADER_BYTES}): not a "
                                       "safetensors file, or a damaged one")
            if n > size - 8:
                raise BadWeights(path, f"truncated (the header needs {n} bytes, the file has {size - 8} after "
                                       "its length field)")
            raw = fh.read(n)
    except OSError as exc:
        raise BadWeights(path, f"cannot read it ({exc.strerror or exc})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadWeights(path, "the header is not valid JSON (not a safetensors file, or a damaged one)") from None
    if not isinstance(header, dict):
        raise BadWeights(path, "the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise BadWeights(path, "__metadata__ must map strings to strings", "__metadata__")
    data_size = size - 8 - n
    specs = {}
    for key, info in header.items():
        if not isinstance(info, dict):
            raise BadWeights(path, "malformed header entry", key)
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _ITEMSIZE:
            raise BadWeights(path, f"unknown dtype {dtype!r}", key)
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise BadWeights(path, f"malformed shape {shape!r}", key)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_size):
            raise BadWeights(path, f"data offsets {offsets!r} lie outside the file ({data_size} data bytes): "
                                   "truncated or damaged", key)
        if math.prod(shape) * _ITEMSIZE[dtype] != offsets[1] - offsets[0]:
            raise BadWeights(path, f"shape {shape} of {dtype} does not match its {offsets[1] - offsets[0]} bytes",
                             key)
        specs[key] = TensorSpec(dtype, tuple(shape))
    return specs, dict(metadata)


def check_specs(path, specs: Mapping[str, TensorSpec], expected: Mapping[str, tuple | None],
                allow_extra: Iterable[str] = (), floats_only: bool = True) -> None:
    """Every ``expected`` key present with its shape (None: any shape), no other keys except those starting with an
    ``allow_extra`` prefix, and (``floats_only``) only floating-point tensors."""
    extra_prefixes = tuple(allow_extra)
    for key, spec in specs.items():
        if floats_only and spec.dtype not in FLOAT_DTYPES:
            raise BadWeights(path, f"has dtype {spec.dtype}; weights must be floating point "
                                   f"({', '.join(sorted(FLOAT_DTYPES))})", key)
        if key not in expected and not (extra_prefixes and key.startswith(extra_prefixes)):
            raise BadWeights(path, "is not a tensor this file type has (a different model, or another file type)",
                             key)
    for key, shape in expected.items():
        if key not in specs:
            raise BadWeights(path, "is missing (a different model, or a damaged file)", key)
        if shape is not None and tuple(specs[key].shape) != tuple(shape):
            raise BadWeights(path, f"has shape {list(specs[key].shape)}, expected {list(shape)} (from the file's own "
                                   "settings)", key)


def check_finite(path, tensors: Mapping[str, "torch.Tensor"]) -> None:  # noqa: F821
    """Raise :class:`BadWeights` naming the first tensor with NaN or Inf values."""
    import torch

    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise BadWeights(path, f"holds {bad} NaN/Inf value(s) of {t.numel()}", key)


def meta_json(path, meta: Mapping[str, str], key: str, default=None):
    if key not in meta:
        if default is not None:
            return default
        raise BadWeights(path, "is missing from the metadata", key)
    try:
        return json.loads(meta[key])
    except ValueError:
        raise BadWeights(path, "in the metadata is not valid JSON", key) from None


def meta_int(path, value, key: str, lo: int, hi: int) -> int:
    """``value`` (an int, or its text) as an int within ``lo..hi``; otherwise :class:`BadWeights` naming ``key``."""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            raise BadWeights(path, f"must be a whole number, got {value!r}", key) from None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadWeights(path, f"must be a whole number, got {value!r}", key)
    if not lo <= value <= hi:
        raise BadWeights(path, f"is {value}, outside the sane range {lo}..{hi}", key)
    return value


def meta_float(path, value, key: str, lo: float, hi: float) -> float:
    """``value`` (a number or its text) as a finite float within ``lo..hi``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise BadWeights(path, f"must be a number, got {value!r}", key) from None
    if isinstance(value, bool) or not math.isfinite(f) or not lo <= f <= hi:
        raise BadWeights(path, f"is {value!r}, outside the sane range {lo}..{hi}", key)
    return f
