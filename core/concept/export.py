"""Concept files that ComfyUI (and A1111/kohya tools) load, and FaceSmith reads back.

- embedding: ``models/embeddings/NAME.safetensors`` with ``emb_params`` ``(n_vectors, dim)`` (ComfyUI's
  ``embedding:NAME`` prompt syntax); the concept's token, base, method and LoRA settings are in the metadata.
- LoRA: written as ``models/loras/NAME.safetensors`` in kohya format for the SD1.5 UNet:
  ``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha`` (diffusers' ``convert_state_dict_to_kohya`` on keys prefixed ``unet.``; its alpha (= rank) is replaced by
  the real ``lora_alpha x scale``), which ComfyUI's LoraLoader maps onto the UNet's attention weights. Read back
  (and LoRAs of other tools: kohya, diffusers, peft keys) through diffusers' ``lora_state_dict``.

An E4T concept's ``domain_id`` (the domain LoRA it shares with other concepts of its encoder) is written as the string
metadata key ``domain_id`` into the LoRA file and the embedding beside it; on load it is taken from the LoRA file
that is actually loaded, so a concept read with another tool's LoRA, or without a LoRA, has none.
"""
from __future__ import annotations

import json
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

def kohya_name(module_path: str) -> str:
    """``down_blocks.0....attn1.to_q`` -> ``lora_unet_down_blocks_0_..._attn1_to_q``."""
    return "lora_unet_" + module_path.replace(".", "_")


_PROJECTIONS = (".to_q", ".to_k", ".to_v", ".to_out.0")


def _attention_projection(path: str) -> bool:
    return path.endswith(_PROJECTIONS) and (".attn1." in path or ".attn2." in path)


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


def lora_from_state_dict(tensors: dict[str, torch.Tensor], metadata: Optional[dict] = None
                         ) -> tuple[LoraWeights, int, float]:
    """``(lora, rank, alpha)`` from a UNet LoRA of another tool or of FaceSmith: kohya (``lora_unet_*.lora_down``),
    diffusers (``unet.*.processor.to_q_lora.down``) or peft (``[unet.]*.lora_A``) keys, read through diffusers'
    ``lora_state_dict`` and ``convert_unet_state_dict_to_peft``. Text-encoder keys are rejected (a concept LoRA has
    none), and so are layers other than the attention projections a concept LoRA trains. ``metadata``: the file's
    header metadata; a diffusers file keeps its ``lora_alpha`` there (``lora_adapter_metadata``), a kohya file in
    ``.alpha`` tensors; without either, alpha = rank."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from diffusers.loaders.lora_pipeline import StableDiffusionLoraLoaderMixin
    from diffusers.utils.state_dict_utils import convert_unet_state_dict_to_peft

    for key in tensors:
        if key.startswith(("lora_te", "text_encoder")):
            raise ValueError(f"this LoRA also changes the text encoder ({key}); FaceSmith concept LoRAs are UNet-only")
    sd, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(dict(tensors))
    if not any(k.startswith("unet.") for k in sd):  # a bare peft state dict of the UNet
        sd = {f"unet.{k}": v for k, v in sd.items()}
    stray = [k for k in sd if not k.startswith("unet.")]
    if stray:
        raise ValueError(f"LoRA keys outside the UNet: {stray[:3]}")
    peft = convert_unet_state_dict_to_peft({k[len("unet."):]: v for k, v in sd.items()})
    # network alphas are keyed like the down weights: convert the keys the same way
    peft_alphas = convert_unet_state_dict_to_peft(
        {k[len("unet."):-len(".alpha")]: float(v) for k, v in (alphas or {}).items() if k.startswith("unet.")})
    default_alpha = None
    if (metadata or {}).get(LORA_ADAPTER_METADATA_KEY):
        adapter = json.loads(metadata[LORA_ADAPTER_METADATA_KEY])
        if adapter.get("unet.alpha_pattern") or adapter.get("unet.rank_pattern"):
            raise ValueError("LoRA layers differ in rank or alpha (peft rank_pattern/alpha_pattern)")
        if adapter.get("unet.lora_alpha") is not None:
            default_alpha = float(adapter["unet.lora_alpha"])
    lora: dict = {}
    alpha_set = set()
    for key, down in peft.items():
        if not key.endswith(".lora_A.weight"):
            if not key.endswith(".lora_B.weight"):
                raise ValueError(f"unexpected LoRA key {key}")
            continue
        path = key[: -len(".lora_A.weight")]
        if not _attention_projection(path):
            raise ValueError(f"LoRA layer {path!r} is not an SD-UNet attention projection (to_q/to_k/to_v/to_out.0)")
        up = peft.get(f"{path}.lora_B.weight")
        if up is None:
            raise ValueError(f"LoRA layer {path} has a down (A) weight but no up (B) weight")
        lora[path] = (down.float(), up.float())
        alpha_set.add(float(peft_alphas.get(key, default_alpha if default_alpha is not None else down.shape[0])))
    if not lora:
        raise ValueError("no UNet LoRA layers found (kohya lora_unet_*, diffusers or peft keys)")
    ranks = {int(d.shape[0]) for d, _ in lora.values()}
    if len(ranks) != 1 or len(alpha_set) != 1:
        raise ValueError(f"LoRA layers differ in rank {sorted(ranks)} or alpha {sorted(alpha_set)}")
    return lora, ranks.pop(), alpha_set.pop()


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
            lora, rank, alpha = lora_from_state_dict(load_checked(lora_path), lmeta)
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
