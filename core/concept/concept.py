"""A personalised concept in memory and its ``Conditioner`` implementation (see ``core/generate.py``).

A ``Concept`` is a placeholder token with its word embedding ``(n_vectors, dim)``, an optional LoRA on the UNet's
attention layers (the E4T weight offsets) with rank/alpha/scale, the fingerprint of the base it was made for, the
method that made it and free-form metadata. While ``applied(pipe)`` is active the pipeline's tokenizer is a cached
copy that knows the token, the text encoder's token embedding is wrapped so the token's ids read the concept's
vectors, and the LoRA offsets are fused into the attention weights; on exit the original tokenizer, embedding module
and weights (bit-exact copies) come back.

E4T concepts made from one domain encoder all carry its domain LoRA (``metadata["domain_id"]`` names it): used
together in one ``generate`` they share it (see ``Concept.prepare_conditioners``), so the domain offsets are applied
once instead of once per concept.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from .inference import lora_scale, token_vectors
from .lora import FusedLora, LoraWeights
from .tokens import (check_prompt_has, check_token_free, check_token_text, expand_prompt, swapped_embedding,
                     tokenizer_with, vector_tokens)

log = logging.getLogger("facesmith")

METHODS = ("e4t", "textual_inversion", "untrained_encoder", "identity_adapter", "instruct")


class BaseMismatch(ValueError):
    """A concept or encoder used with a base model other than the one it was made for."""


def base_mismatch_text(what: str, want_name: str, want_fp: str, got_name: str, got_fp: str) -> str:
    return (f"{what} was trained for base {want_name!r} (fingerprint {want_fp}) but the pipeline is {got_name!r} "
            f"({got_fp}); load the base model it was made for, or make it again on this base")


def _diffusers_pipe(pipe):
    return getattr(pipe, "pipe", pipe)


def pipeline_identity(pipe) -> tuple[str, str]:
    """(name, fingerprint) of a BasePipeline or a bare diffusers pipeline."""
    fp = getattr(pipe, "fingerprint", None)
    name = getattr(pipe, "name", None)
    if fp is None:
        from ..models import compute_fingerprint

        dp = _diffusers_pipe(pipe)
        fp = compute_fingerprint(dp, "sdxl" if getattr(dp, "text_encoder_2", None) is not None else "sd15")
        name = name or type(dp).__name__
    return str(name), str(fp)


@dataclass
class Concept:
    token: str
    embedding: torch.Tensor                    # (n_vectors, dim) float32, CPU
    base_name: str
    base_fingerprint: str
    method: str = "e4t"
    lora: Optional[LoraWeights] = None         # {module path: (down (r, in), up (out, r))}
    lora_rank: int = 0
    lora_alpha: float = 0.0
    lora_scale: float = 1.0
    class_word: str = "person"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        check_token_text(self.token)
        if self.method not in METHODS:
            raise ValueError(f"concept method must be one of {METHODS}, got {self.method!r}")
        emb = torch.as_tensor(self.embedding).detach().float().cpu()
        if emb.dim() == 1:
            emb = emb.unsqueeze(0)
        if emb.dim() != 2 or emb.shape[0] < 1:
            raise ValueError(f"concept embedding must be (n_vectors, dim), got {tuple(emb.shape)}")
        self.embedding = emb.contiguous()
        if self.lora is not None:
            if not self.lora:
                self.lora = None
            else:
                ranks = {int(d.shape[0]) for d, _ in self.lora.values()}
                if len(ranks) != 1:
                    raise ValueError(f"LoRA layers have different ranks {sorted(ranks)}")
                self.lora_rank = ranks.pop()
                if not self.lora_alpha:
                    self.lora_alpha = float(self.lora_rank)
        self._fused: Optional[FusedLora] = None

    # ------------------------------------------------------------------------------------------------ properties

    @property
    def n_vectors(self) -> int:
        return int(self.embedding.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embedding.shape[1])

    @property
    def tokens(self) -> list[str]:
        return vector_tokens(self.token, self.n_vectors)

    @property
    def domain_id(self) -> Optional[str]:
        """The domain LoRA this concept's LoRA starts from (``metadata["domain_id"]``, set by ``embed_e4t``), or None
        (no LoRA, textual inversion, files made elsewhere)."""
        d = self.metadata.get("domain_id") if self.lora else None
        return str(d) if d else None

    @property
    def effective_lora_scale(self) -> float:
        return lora_scale(self.lora_alpha, self.lora_rank, self.lora_scale) if self.lora else 0.0

    def with_token(self, token: str) -> "Concept":
        return Concept(token=token, embedding=self.embedding, base_name=self.base_name,
                       base_fingerprint=self.base_fingerprint, method=self.method, lora=self.lora,
                       lora_rank=self.lora_rank, lora_alpha=self.lora_alpha, lora_scale=self.lora_scale,
                       class_word=self.class_word, metadata=dict(self.metadata))

    def with_scale(self, scale: float) -> "Concept":
        c = self.with_token(self.token)
        c.lora_scale = float(scale)
        return c

    def __repr__(self) -> str:
        lora = f"LoRA r{self.lora_rank} a{self.lora_alpha:g} x{self.lora_scale:g}" if self.lora else "no LoRA"
        return (f"Concept({self.token!r}, {self.method}, {self.n_vectors}x{self.dim}, {lora}, "
                f"base={self.base_name}:{self.base_fingerprint})")

    # ---------------------------------------------------------------------------------------------- conditioner

    @staticmethod
    def prepare_conditioners(conditioners: list) -> list:
        """``generate``'s optional hook: concepts with the same ``domain_id`` share their domain LoRA.

        Each of the N concepts of one domain in the call applies its LoRA at 1/N of its own strength, so N concepts
        with the untuned domain LoRA (k=0) add the domain offsets once (up to float rounding), and k-tuned ones add the
        domain offsets plus the mean of their refinements (each concept's LoRA = domain + its own refinement). A concept
        alone in its domain, and concepts without a ``domain_id``, are passed through as they are. The inputs are not
        modified: shared concepts are replaced by ``with_scale`` copies.
        """
        domains = [c.domain_id if isinstance(c, Concept) else None for c in conditioners]
        counts: dict[str, int] = {}
        for d in domains:
            if d:
                counts[d] = counts.get(d, 0) + 1
        return [c.with_scale(c.lora_scale / counts[d]) if d and counts[d] > 1 else c
                for c, d in zip(conditioners, domains)]

    def rewrite_prompt(self, prompt: str) -> str:
        check_prompt_has(prompt, self.token)
        return expand_prompt(prompt, self.token, self.n_vectors)

    def check_base(self, pipe, what: str = "the concept") -> None:
        if self.base_fingerprint in ("", "unknown"):  # e.g. an embedding made by another tool
            return
        name, fp = pipeline_identity(pipe)
        if fp != self.base_fingerprint:
            raise BaseMismatch(base_mismatch_text(f"{what} {self.token!r}", self.base_name, self.base_fingerprint,
                                                  name, fp))

    def check_pipeline(self, pipe) -> None:
        """Base fingerprint, embedding width and token checks, without modifying anything."""
        self.check_base(pipe)
        dp = _diffusers_pipe(pipe)
        if getattr(dp, "text_encoder_2", None) is not None:
            raise ValueError("FaceSmith concepts support SD1.5-type pipelines (one text encoder); this one is SDXL")
        width = int(dp.text_encoder.get_input_embeddings().weight.shape[1])
        if width != self.dim:
            raise ValueError(f"the concept {self.token!r} has {self.dim}-wide word vectors, but the text encoder "
                             f"takes {width}")
        check_token_free(dp.tokenizer, self.token, self.n_vectors)

    def _fused_lora(self) -> FusedLora:
        if self._fused is None or self._fused.scale != self.effective_lora_scale:
            self._fused = FusedLora(self.lora, self.effective_lora_scale)
        return self._fused

    @contextlib.contextmanager
    def applied(self, pipe) -> Iterator[None]:
        """Token + embedding + fused LoRA on ``pipe`` (a BasePipeline or diffusers pipeline) while the block runs."""
        self.check_pipeline(pipe)
        dp = _diffusers_pipe(pipe)
        original_tok = dp.tokenizer
        words = token_vectors(self)  # the same words and vectors the native ComfyUI patch gives its tokenizer
        tok, start = tokenizer_with(original_tok, [w for w, _ in words])
        te = dp.text_encoder
        vectors = torch.stack([v for _, v in words])
        with contextlib.ExitStack() as stack:
            dp.tokenizer = tok
            stack.callback(setattr, dp, "tokenizer", original_tok)
            stack.enter_context(swapped_embedding(te, start, vectors.to(te.device, te.dtype)))
            if self.lora:
                stack.enter_context(self._fused_lora().applied(dp.unet))
            yield
