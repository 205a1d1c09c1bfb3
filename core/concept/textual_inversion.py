"""Textual inversion (Gal et al. 2022), the baseline for E4T: only the placeholder token's embedding trains, starting
from the class word, on the frozen base (no LoRA), typically 300-500 steps on the one image."""
from __future__ import annotations

import time
from typing import Optional

import torch

from ..progress import Progress
from .concept import Concept, pipeline_identity
from .diffusion import frozen, latent_stats
from .personalize import DEFAULT_CAPTION, OneImageObjective, _reference, _run
from .tokens import DEFAULT_TOKEN, check_token_free, check_token_text, class_embedding, vector_tokens


def embed_textual_inversion(pipe, image, token: str = DEFAULT_TOKEN, steps: int = 400, lr: float = 5e-3,
                            class_word: str = "person", n_vectors: int = 1, caption: str = DEFAULT_CAPTION,
                            batch_size: int = 4, seed: int = 0, progress: Optional[Progress] = None) -> Concept:
    """Textual inversion (Gal et al. 2022): optimise only the token's embedding, from ``class_word``, on the frozen
    base for ``steps`` steps."""
    t0 = time.perf_counter()
    check_token_text(token)
    if steps < 1:
        raise ValueError(f"textual inversion needs steps >= 1, got {steps}")
    dp = getattr(pipe, "pipe", pipe)
    check_token_free(dp.tokenizer, token, n_vectors)
    x = _reference(pipe, image)
    stats = latent_stats(dp.vae, x)
    base = class_embedding(dp.tokenizer, dp.text_encoder, class_word, n_vectors)
    with frozen(dp.unet, dp.text_encoder, dp.vae):
        obj = OneImageObjective(dp, vector_tokens(token, n_vectors), base, torch.zeros_like(base), stats,
                                caption.format(token=token), batch_size=batch_size, seed=seed)
        result = _run(obj, steps, lr, seed, progress)
    name, fp = pipeline_identity(pipe)
    emb = base + obj.offset.value.detach().float().cpu()
    return Concept(token=token, embedding=emb, base_name=name, base_fingerprint=fp, method="textual_inversion",
                   class_word=class_word,
                   metadata={"steps": int(steps), "lr": float(lr), "seed": int(seed),
                             "loss_history": result.loss_history, "seconds": round(time.perf_counter() - t0, 4)})
