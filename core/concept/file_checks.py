"""What an E4T encoder file and a concept file must look like, checked from the header before anything is allocated.

The encoder's metadata (``encoder_config``) decides the size of every layer, so its numbers are range-checked, the
tensor shapes the config implies are computed on the ``meta`` device (no memory) and compared with the header, and
only then are the tensors read (checked for NaN/Inf) and the real modules built. Messages name the file and the key
(:class:`~facesmith.core.weights_check.BadWeights`).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..weights_check import BadWeights, check_finite, check_specs, meta_float, meta_int, meta_json, read_header

# sane ranges for the numbers in encoder_config (far above anything trained, far below absurd allocations)
MAX_WIDTH = 16384      # text-encoder width, hidden units, feature channels
MAX_VECTORS = 64
MAX_RANK = 1024
_INT_RANGES = {"dim": (1, MAX_WIDTH), "n_vectors": (1, MAX_VECTORS), "t_enc": (0, 10000),
               "noise_seed": (0, 2 ** 63 - 1), "proj": (1, 4096), "pool": (1, 64), "hidden": (1, MAX_WIDTH)}
_INT_LISTS = {"vae_blocks": (-16, 16), "unet_blocks": (-16, 16), "feature_channels": (1, MAX_WIDTH)}


def encoder_config(path, meta: dict):
    """The ``EncoderConfig`` in a file's metadata, every field type- and range-checked (key ``encoder_config.X``)."""
    from .encoder import EncoderConfig

    raw = meta_json(path, meta, "encoder_config")
    if not isinstance(raw, dict):
        raise BadWeights(path, "must be a JSON object", "encoder_config")
    known = {f.name for f in dataclasses.fields(EncoderConfig)}
    for name in raw:
        if name not in known:
            raise BadWeights(path, f"is not a setting of this FaceSmith version (known: {', '.join(sorted(known))})",
                             f"encoder_config.{name}")
    clean = {}
    for name, value in raw.items():
        key = f"encoder_config.{name}"
        if name in _INT_RANGES:
            clean[name] = meta_int(path, value, key, *_INT_RANGES[name])
        elif name in _INT_LISTS:
            if not isinstance(value, list) or not 0 < len(value) <= 32:
                raise BadWeights(path, f"must be a list of 1 to 32 whole numbers, got {value!r}", key)
            clean[name] = [meta_int(path, v, key, *_INT_LISTS[name]) for v in value]
        elif name in ("use_latent", "use_mid"):
            if not isinstance(value, bool):
                raise BadWeights(path, f"must be true or false, got {value!r}", key)
            clean[name] = value
        elif name == "class_word":
            if not isinstance(value, str) or not 0 < len(value) <= 64:
                raise BadWeights(path, f"must be a word of 1 to 64 characters, got {value!r}", key)
            clean[name] = value
    if "dim" not in clean or "feature_channels" not in clean:
        raise BadWeights(path, "lacks 'dim' or 'feature_channels'", "encoder_config")
    return EncoderConfig(**clean)


def _lora_shapes(path, specs: dict, rank: int) -> dict:
    """Expected shapes of ``lora.<module>.down``/``.up`` pairs: down ``(rank, in)``, up ``(out, rank)``."""
    expected = {}
    for key, spec in specs.items():
        if not key.startswith("lora."):
            continue
        if not key.endswith((".down", ".up")):
            raise BadWeights(path, "is not a LoRA tensor name (lora.<module>.down/.up)", key)
        stem = key.rsplit(".", 1)[0]
        down, up = specs.get(f"{stem}.down"), specs.get(f"{stem}.up")
        if down is None or up is None:
            raise BadWeights(path, "has no matching .down/.up partner", key)
        if len(down.shape) != 2 or len(up.shape) != 2 or not 0 < down.shape[1] <= MAX_WIDTH \
                or not 0 < up.shape[0] <= MAX_WIDTH:
            raise BadWeights(path, f"LoRA pair has shapes {list(down.shape)} / {list(up.shape)}; expected "
                                   "(rank, in) / (out, rank)", key)
        expected[f"{stem}.down"] = (rank, down.shape[1])
        expected[f"{stem}.up"] = (up.shape[0], rank)
    return expected


def check_encoder_file(path) -> dict:
    """Check an E4T encoder file from its header; returns its metadata with ``_config`` (the checked
    ``EncoderConfig``), ``_rank`` and ``_alpha``. Nothing big is allocated."""
    from .encoder import FORMAT, E4TEncoder

    specs, meta = read_header(path)
    if meta.get("format") != FORMAT:
        raise BadWeights(path, f"is {meta.get('format')!r}, expected {FORMAT!r}: not a FaceSmith E4T domain "
                               "encoder", "format")
    cfg = encoder_config(path, meta)
    rank = meta_int(path, meta.get("lora_rank", "0"), "lora_rank", 0, MAX_RANK)
    alpha = meta_float(path, meta.get("lora_alpha", "0"), "lora_alpha", 0.0, 1e6)
    with torch.device("meta"):  # the shapes the config implies, without allocating them
        shapes = {f"encoder.{k}": tuple(v.shape) for k, v in E4TEncoder(cfg).state_dict().items()}
    shapes["class_embedding"] = (cfg.n_vectors, cfg.dim)
    shapes.update(_lora_shapes(path, specs, rank))
    check_specs(path, specs, shapes)
    return dict(meta, _config=cfg, _rank=rank, _alpha=alpha)


def check_embedding_file(path, key_hint: str) -> tuple[str, dict]:
    """``(tensor key, metadata)`` of a concept embedding file: one float ``(n_vectors, dim)`` tensor (or the one
    named ``key_hint``) of sane size."""
    specs, meta = read_header(path)
    if key_hint in specs:
        key = key_hint
    elif len(specs) == 1:
        key = next(iter(specs))
    else:
        raise BadWeights(path, f"no '{key_hint}' tensor (keys: {sorted(specs)[:5]})")
    shape = specs[key].shape
    if len(shape) == 1:
        shape = (1,) + tuple(shape)
    if len(shape) != 2 or not 0 < shape[0] <= MAX_VECTORS or not 0 < shape[1] <= MAX_WIDTH:
        raise BadWeights(path, f"has shape {list(specs[key].shape)}; an embedding is (n_vectors <= {MAX_VECTORS}, "
                               f"dim <= {MAX_WIDTH})", key)
    check_specs(path, {key: specs[key]}, {key: None})
    return key, meta


def check_lora_file(path) -> dict:
    """Check a LoRA file (kohya, diffusers or peft keys) from its header: floating-point tensors only, sane sizes;
    returns its metadata."""
    specs, meta = read_header(path)
    for key, spec in specs.items():
        if key.endswith(".alpha"):
            if spec.shape not in ((), (1,)):
                raise BadWeights(path, f"alpha must be a single number, has shape {list(spec.shape)}", key)
        elif len(spec.shape) not in (2, 4) or any(not 0 < d <= MAX_WIDTH for d in spec.shape):
            raise BadWeights(path, f"has shape {list(spec.shape)}; LoRA weights are 2-d (or 4-d 1x1) of sane size",
                             key)
    check_specs(path, specs, {k: None for k in specs})
    return meta


def load_checked(path) -> dict[str, torch.Tensor]:
    """Read the tensors of a file whose header was checked, and refuse NaN/Inf naming the key."""
    from ..formats import load_safetensors

    tensors, _meta = load_safetensors(Path(path))
    check_finite(path, tensors)
    return tensors
