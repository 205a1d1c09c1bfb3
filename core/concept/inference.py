"""The E4T concept's inference maths, in one place for both ways FaceSmith applies a concept:

- the diffusers path (``Concept.applied`` inside ``core/generate.py``'s one Generate path, training, benchmarks):
  the token's vectors are swapped into the text encoder's embedding and the LoRA offsets fused into the UNet;
- the native ComfyUI path (``Apply Concept (FaceSmith)`` in ``nodes/native_concept.py``): the same offsets become
  ComfyUI weight patches on ``model.clone()`` (ComfyUI scales them by the node's weight) and the same vectors an
  embedding the cloned CLIP's tokenizer returns for the token.

What a concept adds to the base is exactly: for every LoRA target ``W += lora_delta(down, up, scale)`` with
``scale = lora_scale(...)``; and the prompt word ``token`` reads ``token_vectors(concept)``. Neither path computes
these in any other way (tests/test_native_concept.py checks that the fused diffusers weights equal base + these).
"""
from __future__ import annotations

import torch

from .tokens import vector_tokens


def lora_delta(down: torch.Tensor, up: torch.Tensor, scale: float, device, dtype) -> torch.Tensor:
    """The weight offset of one LoRA layer: ``scale * up @ down`` (computed in float32, returned in ``dtype``). For a
    convolution (peft's ``down`` (rank, in, k, k), ``up`` (out, rank, 1, 1)) the offset has the kernel's shape."""
    d = down.to(device, torch.float32)
    u = up.to(device, torch.float32)
    if d.dim() == 4:
        return (u.flatten(1) @ d.flatten(1) * scale).view(u.shape[0], *d.shape[1:]).to(dtype)
    return (u @ d * scale).to(dtype)


def lora_scale(lora_alpha: float, lora_rank: int, lora_scale_: float, weight: float = 1.0) -> float:
    """The factor on ``up @ down``: ``alpha / rank`` (kohya/peft convention) x the concept's own scale x ``weight``."""
    return (float(lora_alpha) / int(lora_rank)) * float(lora_scale_) * float(weight) if lora_rank else 0.0


def concept_lora_deltas(concept, weight: float = 1.0, device="cpu", dtype=torch.float32) -> dict[str, torch.Tensor]:
    """{diffusers UNet module path (e.g. ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``): offset}
    of ``concept``'s LoRA at ``weight`` (empty for a concept without LoRA)."""
    if not concept.lora:
        return {}
    scale = lora_scale(concept.lora_alpha, concept.lora_rank, concept.lora_scale, weight)
    return {path: lora_delta(d, u, scale, device, dtype) for path, (d, u) in concept.lora.items()}


def token_vectors(concept) -> list[tuple[str, torch.Tensor]]:
    """The words the concept's token stands for and the vector each reads: ``token`` (and ``token#1`` ... for a
    multi-vector concept; ``expand_prompt`` writes them into the prompt) with rows of ``concept.embedding``."""
    return list(zip(vector_tokens(concept.token, concept.n_vectors), concept.embedding))
