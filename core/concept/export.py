"""Concept files that ComfyUI (and A1111/kohya tools) load, and FaceSmith reads back.

- embedding: ``models/embeddings/NAME.safetensors`` with ``emb_params`` ``(n_vectors, dim)`` (ComfyUI's
  ``embedding:NAME`` prompt syntax); the concept's token, base, method and LoRA settings are in the metadata.
- LoRA: ``models/loras/NAME.safetensors`` in kohya format for the SD1.5 UNet:
  ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha`` (diffusers' ``convert_state_dict_to_kohya`` on keys prefixed ``unet.``; its alpha (= rank) is replaced by
  the real ``lora_alpha x scale``), which ComfyUI's LoraLoader maps onto the UNet's attention weights.

An E4T concept's ``domain_id`` (the domain LoRA it shares with other concepts of its encoder) is written as the string
metadata key ``domain_id`` into the LoRA file and the embedding beside it; on load it is taken from the LoRA file
that is actually loaded, so a concept read with another tool's LoRA, or without a LoRA, has none.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import torch

from ..formats import check_new_file, save_safetensors
from ..weights_check import meta_float
from .concept import Concept
from .file_checks import check_embedding_file, check_lora_file, load_checked
from .lora import LoraWeights

EMBEDDING_KEY = "emb_params"
FORMAT = "facesmith.concept.v1"

_KOHYA_PATTERNS = [
    # diffusers-layout SD UNet names with '.' turned into '_'
    (re.compile(r"^(down_blocks|up_blocks)_(\d+)_attentions_(\d+)_transformer_blocks_(\d+)_(attn[12])_"
                r"(to_q|to_k|to_v|to_out_0)$"),
     lambda m: f"{m[1]}.{m[2]}.attentions.{m[3]}.transformer_blocks.{m[4]}.{m[5]}.{_proj(m[6])}"),
    (re.compile(r"^mid_block_attentions_(\d+)_transformer_blocks_(\d+)_(attn[12])_(to_q|to_k|to_v|to_out_0)$"),
     lambda m: f"mid_block.attentions.{m[1]}.transformer_blocks.{m[2]}.{m[3]}.{_proj(m[4])}"),
]


def _proj(name: str) -> str:
    return "to_out.0" if name == "to_out_0" else name


def kohya_name(module_path: str) -> str:
    """``down_blocks.0....attn1.to_q`` -> ``lora_unet_down_blocks_0_..._attn1_to_q``."""
    return "lora_unet_" + module_path.replace(".", "_")


def module_path_from_kohya(name: str) -> str:
    """Inverse of :func:`kohya_name` for SD-UNet attention projections (raises for anything else)."""
    if not name.startswith("lora_unet_"):
        raise ValueError(f"{name!r} is not a kohya UNet LoRA key (lora_unet_...)")
    rest = name[len("lora_unet_"):]
    for pattern, build in _KOHYA_PATTERNS:
        m = pattern.match(rest)
        if m:
            return build(m)
    raise ValueError(f"kohya LoRA key {name!r} is not an SD-UNet attention projection (to_q/to_k/to_v/to_out_0)")


def lora_to_kohya(lora: LoraWeights, alpha: float) -> dict[str, torch.Tensor]:
    """Kohya state dict via diffusers' converter, with ``.alpha`` set to ``alpha``."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    peft_sd = {}
    for path, (down, up) in lora.items():
        peft_sd[f"unet.{path}.lora_A.weight"] = down
        peft_sd[f"unet.{path}.lora_B.weight"] = up
    kohya = convert_state_dict_to_kohya(peft_sd)
    for key in list(kohya):
        if key.endswith(".alpha"):
            kohya[key] = torch.tensor(float(alpha), dtype=torch.float32)
    for path in lora:  # the converter's names must be the ones ComfyUI maps
        assert f"{kohya_name(path)}.lora_down.weight" in kohya, path
    return kohya


def lora_from_kohya(tensors: dict[str, torch.Tensor]) -> tuple[LoraWeights, int, float]:
    """``(lora, rank, alpha)`` from a kohya UNet LoRA (text-encoder keys are rejected: a concept LoRA has none)."""
    lora: dict = {}
    alphas = set()
    for key, t in tensors.items():
        if key.endswith(".lora_down.weight"):
            stem = key[: -len(".lora_down.weight")]
            up = tensors.get(f"{stem}.lora_up.weight")
            if up is None:
                raise ValueError(f"LoRA key {key} has no matching {stem}.lora_up.weight")
            lora[module_path_from_kohya(stem)] = (t.float(), up.float())
            a = tensors.get(f"{stem}.alpha")
            alphas.add(float(a) if a is not None else float(t.shape[0]))
        elif key.startswith("lora_te"):
            raise ValueError(f"this LoRA also changes the text encoder ({key}); FaceSmith concept LoRAs are UNet-only")
    if not lora:
        raise ValueError("no lora_unet_*.lora_down.weight keys found")
    ranks = {int(d.shape[0]) for d, _ in lora.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(f"LoRA layers differ in rank {sorted(ranks)} or alpha {sorted(alphas)}")
    return lora, ranks.pop(), alphas.pop()


def concept_metadata(c: Concept, lora_file: Optional[str]) -> dict:
    meta = {k: v for k, v in c.metadata.items() if k != "loss_history"}
    return {
        "format": FORMAT, "token": c.token, "method": c.method, "class_word": c.class_word,
        "base_name": c.base_name, "base_fingerprint": c.base_fingerprint,
        "n_vectors": str(c.n_vectors), "dim": str(c.dim),
        "lora_file": lora_file or "", "lora_rank": str(c.lora_rank), "lora_alpha": str(c.lora_alpha),
        "lora_scale": str(c.lora_scale), "facesmith": json.dumps(meta, sort_keys=True, default=str),
    } | ({"domain_id": c.domain_id} if c.domain_id and lora_file else {})


def save_concept(c: Concept, embedding_path, lora_path=None, overwrite: bool = False) -> tuple[Path, Optional[Path]]:
    """Write the ComfyUI embedding (and, if the concept has a LoRA and ``lora_path`` is given, the kohya LoRA).

    Both targets are checked before anything is written, so an existing file leaves neither written.
    """
    embedding_path = Path(embedding_path)
    check_new_file(embedding_path, overwrite)
    write_lora = bool(c.lora) and lora_path is not None
    if write_lora:
        lora_path = Path(lora_path)
        check_new_file(lora_path, overwrite)
    meta = concept_metadata(c, lora_path.name if write_lora else None)
    if write_lora:
        kohya = lora_to_kohya(c.lora, c.lora_alpha * c.lora_scale)
        save_safetensors(lora_path, kohya, {k: meta[k] for k in ("format", "token", "base_name", "base_fingerprint",
                                                                 "method", "lora_rank", "lora_alpha", "lora_scale")}
                         | ({"domain_id": meta["domain_id"]} if "domain_id" in meta else {})
                         | {"ss_network_dim": str(c.lora_rank), "ss_network_alpha": str(c.lora_alpha * c.lora_scale),
                            "ss_network_module": "networks.lora"},
                         overwrite=overwrite)
    save_safetensors(embedding_path, {EMBEDDING_KEY: c.embedding}, meta, overwrite=overwrite)
    return embedding_path, (lora_path if write_lora else None)


def load_concept(embedding_path, lora_path=None, token: Optional[str] = None, lora_scale: Optional[float] = None,
                 base_name: Optional[str] = None, base_fingerprint: Optional[str] = None) -> Concept:
    """Read a concept back. Embeddings written elsewhere (no FaceSmith metadata) need ``token`` and take the base
    identity from the arguments (``base_fingerprint`` ``"any"`` if unknown is refused at apply time)."""
    # A1111 style {"<token>": tensor} or a bare tensor under another name is accepted too; dtype, shape and NaN/Inf
    # are checked (from the header first) with messages naming the file and the key
    key, meta = check_embedding_file(embedding_path, EMBEDDING_KEY)
    emb = load_checked(embedding_path)[key]
    if emb.ndim == 1:
        emb = emb[None]
    ours = meta.get("format") == FORMAT
    tok = token or (meta.get("token") if ours else None)
    if not tok:
        raise ValueError(f"{embedding_path} has no FaceSmith metadata; give the token to use for it")
    lora = None
    rank, alpha = 0, 0.0
    domain_id = None
    if lora_path is not None:
        lmeta = check_lora_file(lora_path)
        try:
            lora, rank, alpha = lora_from_kohya(load_checked(lora_path))
        except ValueError as exc:
            raise ValueError(f"{lora_path}: {exc}") from None
        scale = 1.0
        if lmeta.get("format") == FORMAT and lmeta.get("lora_alpha"):
            # the file's .alpha is lora_alpha x lora_scale (what ComfyUI applies); keep the two apart again
            alpha = meta_float(lora_path, lmeta["lora_alpha"], "lora_alpha", 0.0, 1e6)
            scale = meta_float(lora_path, lmeta.get("lora_scale", "1.0"), "lora_scale", -1e3, 1e3)
            domain_id = lmeta.get("domain_id") or None
        if lora_scale is not None:
            scale = float(lora_scale)
    else:
        scale = 1.0 if lora_scale is None else float(lora_scale)
    extra = json.loads(meta.get("facesmith", "{}")) if ours else {}
    extra["loaded_from"] = str(embedding_path)
    extra.pop("domain_id", None)  # the LoRA that was actually loaded decides
    if domain_id:
        extra["domain_id"] = domain_id
    return Concept(token=tok, embedding=emb, base_name=base_name or meta.get("base_name", "unknown"),
                   base_fingerprint=base_fingerprint or meta.get("base_fingerprint", "unknown"),
                   method=meta.get("method", "textual_inversion") if ours else "textual_inversion",
                   lora=lora, lora_rank=rank, lora_alpha=alpha, lora_scale=scale,
                   class_word=meta.get("class_word", "person"), metadata=extra)
