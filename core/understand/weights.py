"""Saving and loading the unified face model: ONE safetensors file (weights in fp16, codebook included) whose
metadata holds the model config, the tokenizer's words and how it was trained."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..formats import load_safetensors, save_safetensors
from .model import ModelConfig, UnifiedFaceModel
from .questions import WordTokenizer

KIND = "facesmith-understand-unified"
SUBFOLDER = "understand"  # under <models>/facesmith/


def save_unified(path: str | os.PathLike, model: UnifiedFaceModel, tok: WordTokenizer, info: dict | None = None,
                 overwrite: bool = False) -> Path:
    state = {k: (v.half() if v.is_floating_point() and k != "codebook" else v) for k, v in model.state_dict().items()}
    meta = {"facesmith_kind": KIND, "config": model.cfg.to_dict(), "words": tok.words, "n_codes": tok.n_codes,
            **(info or {})}
    return save_safetensors(path, state, meta, overwrite=overwrite)


def load_unified(path: str | os.PathLike, device: str = "cpu") -> tuple[UnifiedFaceModel, WordTokenizer, dict]:
    tensors, meta = load_safetensors(path)
    if meta.get("facesmith_kind") != KIND:
        raise ValueError(f"{path} is not a FaceSmith unified face model (metadata facesmith_kind="
                         f"{meta.get('facesmith_kind')!r}, expected {KIND!r})")
    cfg = ModelConfig(**json.loads(meta["config"]))
    tok = WordTokenizer(json.loads(meta["words"]), int(meta.get("n_codes", cfg.n_codes)))
    model = UnifiedFaceModel(cfg)
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    info = {k: (json.loads(v) if v[:1] in ("[", "{") else v) for k, v in meta.items() if k not in ("config", "words")}
    return model.to(device).eval(), tok, info


def is_unified_file(path: str | os.PathLike) -> bool:
    from ..formats import read_safetensors_metadata

    try:
        return read_safetensors_metadata(path).get("facesmith_kind") == KIND
    except (OSError, ValueError):
        return False
