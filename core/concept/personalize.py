"""One-image personalisation: E4T (encoder forward + optional k tuning steps) and the textual-inversion baseline.

Both run on the one training loop (``core/training/loop.py``) with a :class:`OneImageObjective`:

- **E4T** (paper sec. 4.2): the domain encoder predicts the word-embedding offset from the image; the concept starts
  as (class embedding + offset, domain LoRA). With ``steps > 0`` the embedding and the LoRA are refined for ``steps``
  steps (paper: 5-15) on the single image with the same L2 regularisers as in domain tuning.
  The concept's ``metadata["domain_id"]`` (``DomainEncoder.domain_id``) names the domain LoRA it started from, so
  concepts of one domain used in one Generate apply the domain offsets once (``Concept.prepare_conditioners``).
- **Textual inversion** (``textual_inversion.py``) uses the same objective with the embedding only.

``embed_e4t(words=...)`` folds words for WHO the person is (``"olive skin, oval face, ..."``, e.g. what a face
understanding model reads on the reference: ``understand.check.identity_words``) into the concept: the tuning
captions carry them after the token, and their word vectors are appended to the concept's, so every prompt with the
token reads "<token>, words" -- the base draws what the words name and the tuned vectors carry the rest (measured in
the E4T README: higher likeness at the same prompt adherence).

``embed_e4t`` also takes several views of one person (a batch of images, one caption per view): the start is the
mean of the encoder's predictions and each tuning step draws its batch from the views (the ``oracle`` row of
``facesmith bench concept`` is this with many steps on several renders of one identity).
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import torch

from ..progress import Progress
from ..training.loop import TrainConfig, train
from .concept import Concept, pipeline_identity
from .diffusion import (ParamHolder, caption_ids, denoise_loss, frozen, latent_stats, sample_latents,
                        scaling_factor, training_scheduler)
from ..models import native_size
from .encoder import DomainEncoder, preprocess
from .lora import fresh_lora, hooked_lora, weight_offset_l2
from .tokens import DEFAULT_TOKEN, check_token_free, check_token_text, class_embedding, clean_words, expand_prompt, \
    swapped_embedding, tokenizer_with, vector_tokens, with_words, word_vectors

log = logging.getLogger("facesmith")

DEFAULT_CAPTION = "a photo of {token}"
# E4T tuning defaults, chosen on SynthFace VALIDATION identities with the built-in encoder (the highest learning rate
# whose prompt adherence stays at least textual inversion's; see assets/models/facesmith/e4t/README.md). A higher
# rate copies more of the reference's likeness -- and more of its hair colour, hat, glasses -- into the concept.
DEFAULT_TUNING_LR = 4e-3
DEFAULT_TUNING_BATCH = 2
# Tuning steps when a face model describes the reference (attribute caption + identity words): on 32 VALIDATION
# identities 10 steps kept prompt adherence >= 0.85 and reference leak <= 0.10 where 15 did not (E4T README).
DESCRIBED_TUNING_STEPS = 10


class OneImageObjective:
    """Denoising loss on the reference image with the concept token in ``caption``; trains ``offset`` (always) and
    the LoRA modules (if given), with L2 penalties on the offset and the LoRA weight offsets.

    ``stats`` holds one row per reference view (``latent_stats``); with several views ``caption`` is a list with one
    caption per view and each step's batch draws views uniformly. Captions name ``tokens[0]`` only; every vector
    token is written in (``expand_prompt``), so all ``len(tokens)`` vectors train."""

    def __init__(self, dp, tokens: list[str], base_embedding: torch.Tensor, init_offset: torch.Tensor,
                 stats: torch.Tensor, caption: "str | list[str]", lora=None, lora_scale: float = 1.0,
                 emb_reg: float = 0.0,
                 weight_reg: float = 0.0, batch_size: int = 4, seed: int = 0, t_min: int = 0):
        self.dp = dp
        self.tok, self.start = tokenizer_with(dp.tokenizer, tokens)
        self.base_embedding = base_embedding.float()
        self.offset = ParamHolder(init_offset)
        self.lora, self.lora_scale = lora, lora_scale
        self.emb_reg, self.weight_reg = emb_reg, weight_reg
        self.stats, self.batch_size = stats, int(batch_size)
        captions = [caption] * stats.shape[0] if isinstance(caption, str) else list(caption)
        if len(captions) != stats.shape[0]:
            raise ValueError(f"{len(captions)} captions for {stats.shape[0]} reference views")
        self.ids = caption_ids(self.tok, [expand_prompt(c, tokens[0], len(tokens)) for c in captions])
        self.sched = training_scheduler(dp)
        self.sf = scaling_factor(dp.vae)
        self.gen = torch.Generator("cpu").manual_seed(int(seed))
        self.t_min = int(t_min)

    def modules(self):
        mods = {"offset": self.offset}
        if self.lora is not None:
            mods["lora"] = self.lora
        return mods

    def parameters(self):
        return [p for m in self.modules().values() for p in m.parameters()]

    def memory_estimate(self, batch_size) -> int:
        """Rough activation bytes of one step for the training memory guard, computed without drawing a batch (the
        batches come from ``self.gen``, so building one for the estimate would change the tuning's random stream):
        the loop's default factor times the bytes of one batch of latents."""
        from ..memory import TRAIN_ACTIVATION_FACTOR

        per_sample = self.stats[0].numel() // 2 * self.stats.element_size()  # stats hold mean and std
        return TRAIN_ACTIVATION_FACTOR * int(batch_size or self.batch_size) * per_sample

    def make_batch(self, step):
        n = self.stats.shape[0]
        idx = (torch.zeros(self.batch_size, dtype=torch.long) if n == 1
               else torch.randint(n, (self.batch_size,), generator=self.gen))
        return sample_latents(self.stats[idx], self.sf, self.gen), idx

    def embedding(self) -> torch.Tensor:
        return self.base_embedding.to(self.offset.value.device) + self.offset.value

    def loss(self, batch, step):
        latents, idx = batch
        te = self.dp.text_encoder
        emb = self.embedding()
        with swapped_embedding(te, self.start, emb.to(te.device)):
            cond = te(self.ids[idx].to(te.device))[0]
        loss = denoise_loss(self.dp.unet, self.sched, latents, cond, self.gen, t_min=self.t_min)
        logs = {"denoise": float(loss.detach())}
        if self.emb_reg:
            reg = self.offset.value.pow(2).sum(-1).mean()
            loss = loss + self.emb_reg * reg
            logs["emb_l2"] = float(reg.detach())
        if self.lora is not None and self.weight_reg:
            wreg = weight_offset_l2(self.lora, self.lora_scale)
            loss = loss + self.weight_reg * wreg
            logs["w_l2"] = float(wreg.detach())
        return loss, logs


def _reference(pipe, image, several: bool = False) -> torch.Tensor:
    dp = getattr(pipe, "pipe", pipe)
    x = preprocess(image, native_size(dp))
    if x.shape[0] != 1 and not several:
        raise ValueError(f"one reference image is needed, got a batch of {x.shape[0]}")
    return x


def _run(objective, steps: int, lr: float, seed: int, progress: Optional[Progress]):
    cfg = TrainConfig(steps=int(steps), learning_rate=float(lr), seed=int(seed), work_dir=None, log_every=0,
                      checkpoint_every=0, max_grad_norm=1.0)
    return train(objective, cfg, progress)


def embed_e4t(encoder: DomainEncoder, pipe, image, token: str = DEFAULT_TOKEN, steps: int = 0,
              lr: float = DEFAULT_TUNING_LR, caption: "str | list[str]" = DEFAULT_CAPTION,
              batch_size: int = DEFAULT_TUNING_BATCH,
              seed: int = 0, emb_reg: float | None = None, weight_reg: float | None = None,
              words: str = "", progress: Optional[Progress] = None) -> Concept:
    """E4T: encoder forward on one image (+ ``steps`` tuning steps of embedding and LoRA) -> Concept.

    ``image`` may hold several views of one person with ``caption`` a list of one caption per view (each naming
    ``{token}``): the start is the mean prediction over the views and tuning draws from all of them. ``words``: who
    the person is, folded into the concept (module doc)."""
    t0 = time.perf_counter()
    check_token_text(token)
    if steps < 0:
        raise ValueError(f"tuning steps must be >= 0, got {steps}")
    encoder.check_base(pipe)
    dp = getattr(pipe, "pipe", pipe)
    check_token_free(dp.tokenizer, token, encoder.cfg.n_vectors)
    x = _reference(pipe, image, several=True)
    captions = [caption] * x.shape[0] if isinstance(caption, str) else list(caption)
    if len(captions) != x.shape[0]:
        raise ValueError(f"{len(captions)} captions for {x.shape[0]} reference images; give one per image")
    words = clean_words(words)
    captions = [with_words(c.format(token=token), words, token) for c in captions]
    _, offset = encoder.predict_model(dp, x)
    offset = offset.mean(0)
    lora = encoder.lora
    name, fp = pipeline_identity(pipe)
    hp = encoder.info.get("hyper_parameters", {})
    emb_reg = float(hp.get("emb_reg", 1e-2) if emb_reg is None else emb_reg)
    weight_reg = float(hp.get("weight_reg", 1e-3) if weight_reg is None else weight_reg)
    history: list[float] = []
    rank, alpha = encoder.lora_rank, encoder.lora_alpha
    if steps > 0:
        stats = latent_stats(dp.vae, x)
        tokens = vector_tokens(token, encoder.cfg.n_vectors)
        init = lora if lora else fresh_lora(dp.unet, max(1, rank), seed)
        with frozen(dp.unet, dp.text_encoder, dp.vae), hooked_lora(dp.unet, init, alpha / rank) as mods:
            obj = OneImageObjective(dp, tokens, encoder.class_embedding, offset, stats,
                                    captions, lora=mods, lora_scale=alpha / rank,
                                    emb_reg=emb_reg, weight_reg=weight_reg, batch_size=batch_size, seed=seed,
                                    t_min=int(hp.get("t_min", 0)))
            result = _run(obj, steps, lr, seed, progress)
            offset = obj.offset.value.detach().float().cpu()
            lora = mods.weights()
            history = result.loss_history
    emb = encoder.class_embedding + offset
    if words:
        emb = torch.cat([emb, word_vectors(dp.tokenizer, dp.text_encoder, words)])
    return Concept(token=token, embedding=emb, base_name=name, base_fingerprint=fp, method="e4t", lora=lora,
                   lora_rank=rank if lora else 0, lora_alpha=alpha if lora else 0.0,
                   class_word=encoder.cfg.class_word,
                   metadata={"tuning_steps": int(steps), "tuning_lr": float(lr), "seed": int(seed),
                             "views": int(x.shape[0]), "domain_id": encoder.domain_id,
                             "encoder_steps": encoder.info.get("steps"), "loss_history": history,
                             "seconds": round(time.perf_counter() - t0, 4), "offset_norm": float(offset.norm()),
                             **({"words": words} if words else {})})
