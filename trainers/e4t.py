"""E4T domain tuning (Gal et al. 2023) on the one training loop: the domain encoder + the domain LoRA.

Per step, for a batch of domain members: the encoder sees a REFERENCE image (its frozen-base features are computed
once for the whole pool), predicts the word-embedding offset ``o`` for the placeholder token (``e = e_class + o``);
the UNet, with the trainable LoRA weight offsets on its attention layers, denoises a TARGET image of the same member
captioned ``"a photo of <token>, <attribute phrases of the target>"``. With SynthFace the target is another view of
the same TRAIN identity with independent attributes, so the token has to carry the identity and the text the
attributes. For folders without identity labels the target is the reference itself (as in the paper).

Loss = denoising MSE + ``emb_reg * |o|^2`` + ``weight_reg * sum |dW|_F^2`` (the paper's regularisers, which keep the
encoder's predictions near the class word and the weight offsets small, so it generalises to unseen members).
A fraction ``uncond_p`` of rows uses the empty caption, so classifier-free guidance still sees a sane unconditional
branch with the domain LoRA in place.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

import numpy as np
import torch

from ..core.concept.diffusion import (caption_ids, denoise_loss, frozen, gradient_checkpointing, latent_stats,
                                      sample_latents, scaling_factor, training_scheduler)
from ..core.concept.encoder import DomainEncoder, extract_features, preprocess, untrained
from ..core.models import native_size
from ..core.concept.lora import trainable_lora, weight_offset_l2
from ..core.concept.tokens import put_token, swapped_embedding, tokenizer_with, vector_tokens
from ..core.progress import Progress
from ..core.training.loop import TrainConfig, TrainResult, fit_steps, train

log = logging.getLogger("facesmith.train")

TRAIN_TOKEN = "<e4t-domain>"


@dataclass
class DomainPool:
    """Training rows: frozen-base features of every image (encoder inputs), latent statistics (denoising targets),
    an identity label per row (-1 = unknown) and either SynthFace attributes or a caption."""

    feats: list                     # list of (N, C_i, h_i, w_i) float16 tensors
    stats: torch.Tensor             # (N, 2C, h, w) float32
    identity: np.ndarray            # (N,) int
    attrs: list = field(default_factory=list)     # per row dict (SynthFace) or {}
    captions: list = field(default_factory=list)  # per row str ("" if attrs are used)
    source: str = ""

    def __len__(self) -> int:
        return int(self.stats.shape[0])

    def groups(self) -> dict[int, np.ndarray]:
        return identity_groups(self.identity)


def identity_groups(identity: np.ndarray) -> dict[int, np.ndarray]:
    """identity -> row indices, for every known identity (>= 0; -1 = unknown) with two or more rows."""
    out: dict[int, list] = {}
    for i, ident in enumerate(np.asarray(identity).tolist()):
        if ident >= 0:
            out.setdefault(int(ident), []).append(i)
    return {k: np.asarray(v) for k, v in out.items() if len(v) > 1}


def build_pool(pipe, images: np.ndarray, identity=None, attrs=None, captions=None, cfg=None,
               progress: Optional[Progress] = None, batch: int = 64, source: str = "") -> DomainPool:
    """Features and latent statistics of uint8 ``images`` (N,H,W,3) with the frozen base."""
    from ..core.progress import report

    dp = getattr(pipe, "pipe", pipe)
    n = len(images)
    if n < 1:
        raise ValueError("the domain dataset holds no images")
    if cfg is None:
        raise ValueError("build_pool needs the encoder config")
    size = native_size(dp)
    feats_parts, stats_parts = [], []
    for i in range(0, n, batch):
        x = preprocess(images[i:i + batch], size)
        feats_parts.append([f.half() for f in extract_features(dp, x, cfg, batch=batch)])
        stats_parts.append(latent_stats(dp.vae, x, batch=batch))
        report(progress, min(n, i + batch), n)
    feats = [torch.cat([p[k] for p in feats_parts]) for k in range(len(feats_parts[0]))]
    ident = np.full(n, -1, np.int64) if identity is None else np.asarray(identity, np.int64)
    return DomainPool(feats=feats, stats=torch.cat(stats_parts), identity=ident,
                      attrs=list(attrs) if attrs is not None else [{} for _ in range(n)],
                      captions=list(captions) if captions is not None else ["" for _ in range(n)], source=source)


def synthface_images(n_identities: int, views: int, seed: int, size: int = 64, workers: int = 0):
    """``views`` renders of ``n_identities`` TRAIN identities (random attributes per view): images, ids, attrs."""
    from ..core.synthface.dataset import render_many
    from ..core.synthface.render import random_attributes
    from ..core.synthface.splits import identities, require_split

    rng = np.random.default_rng(seed)
    train_ids = identities("train")
    chosen = rng.choice(train_ids, size=min(n_identities, len(train_ids)), replace=False)
    jobs = []
    for ident in chosen:
        require_split(int(ident), "train")  # never train on val/held-out identities
        for _ in range(views):
            jobs.append((int(ident), random_attributes(rng), int(rng.integers(1 << 30))))
    images = render_many(jobs, size, workers)
    return images, np.asarray([j[0] for j in jobs]), [j[1] for j in jobs]


def folder_images(folder: str, size: int):
    """Rows of a dataset folder (metadata.jsonl or image+.txt): images, identity labels (or -1), captions."""
    from ..core.synthface.dataset import load_images, read_dataset_folder

    rows = read_dataset_folder(folder)
    images = load_images(rows, size)
    ident = [int(r["identity"]) if isinstance(r.get("identity"), int) else -1 for r in rows]
    for r in rows:
        if r.get("split") in ("val", "heldout"):
            raise ValueError(f"dataset folder {folder} holds {r['split']!r} rows ({r.get('file_name')}); domain "
                             "tuning trains only on the train split")
    return images, np.asarray(ident), [r.get("text", "") for r in rows]


def token_caption(text: str, token: str, class_word: str) -> str:
    """Put ``token`` where the caption names the class (``a person`` -> ``<token>``), else prepend it."""
    return put_token(text, token, class_word)


class DomainObjective:
    """The E4T domain-tuning objective (see the module doc)."""

    def __init__(self, dp, encoder, class_emb: torch.Tensor, pool: DomainPool, lora, lora_scale: float,
                 batch_size: int = 32, emb_reg: float = 1e-2, weight_reg: float = 1e-3, uncond_p: float = 0.1,
                 mention_p: float = 0.8, seed: int = 0, move_base: bool = False, t_min: int = 0,
                 same_p: float = 0.0):
        self.dp, self.encoder, self.pool, self.lora = dp, encoder, pool, lora
        self.class_emb = class_emb.float()
        self.lora_scale, self.batch_size = float(lora_scale), int(batch_size)
        self.emb_reg, self.weight_reg, self.uncond_p, self.mention_p = emb_reg, weight_reg, uncond_p, mention_p
        self.seed, self.move_base, self.t_min = int(seed), move_base, int(t_min)
        self.same_p = float(same_p)
        n_vec = encoder.cfg.n_vectors
        self.tok, self.start = tokenizer_with(dp.tokenizer, vector_tokens(TRAIN_TOKEN, n_vec))
        self.token_text = " ".join(vector_tokens(TRAIN_TOKEN, n_vec))
        self.sched = training_scheduler(dp)
        self.sf = scaling_factor(dp.vae)
        self.groups = pool.groups()
        self.row_group = {int(i): g for g in self.groups.values() for i in g}

    def modules(self):
        return {"encoder": self.encoder, "lora": self.lora}

    def parameters(self):
        return [{"params": list(self.encoder.parameters())}, {"params": list(self.lora.parameters())}]

    def _caption(self, row: int, rng) -> str:
        from ..core.synthface.captions import caption, random_mention

        a = self.pool.attrs[row] if row < len(self.pool.attrs) else {}
        if a:
            return caption(a, subject=self.token_text, mention=random_mention(rng, self.mention_p))
        return token_caption(self.pool.captions[row], self.token_text, self.encoder.cfg.class_word)

    def make_batch(self, step: int):
        rng = np.random.default_rng([self.seed, int(step)])  # a function of the step: exact resume
        ref = rng.integers(0, len(self.pool), self.batch_size)
        tgt = ref.copy()
        same = rng.random(self.batch_size) < self.same_p
        for k, r in enumerate(ref.tolist()):
            g = self.row_group.get(r)
            if g is not None and not same[k]:
                others = g[g != r]
                tgt[k] = int(others[rng.integers(len(others))])
        uncond = rng.random(self.batch_size) < self.uncond_p
        caps = ["" if u else self._caption(int(t), rng) for t, u in zip(tgt.tolist(), uncond.tolist())]
        return {"ref": torch.from_numpy(ref), "tgt": torch.from_numpy(tgt), "ids": caption_ids(self.tok, caps),
                "uncond": torch.from_numpy(uncond), "step": int(step)}

    def _device(self):
        dev = next(self.encoder.parameters()).device
        unet_dev = next(self.dp.unet.parameters()).device
        if unet_dev != dev:
            if not self.move_base:
                raise RuntimeError(f"the training loop runs on {dev} but the base pipeline is on {unet_dev}; load "
                                   f"the base model on {dev}")
            for m in (self.dp.unet, self.dp.text_encoder, self.dp.vae):
                m.to(dev)
        return dev

    def loss(self, batch, step):
        dev = self._device()
        gen = torch.Generator("cpu").manual_seed(self.seed * 1_000_003 + int(batch["step"]))
        ref = batch["ref"]
        feats = [f[ref].to(dev).float() for f in self.pool.feats]
        offset = self.encoder(feats)
        emb = self.class_emb.to(dev)[None] + offset
        te = self.dp.text_encoder
        with swapped_embedding(te, self.start, emb):
            cond = te(batch["ids"].to(dev))[0]
        lat = sample_latents(self.pool.stats[batch["tgt"]], self.sf, gen)
        denoise = denoise_loss(self.dp.unet, self.sched, lat, cond, gen, t_min=self.t_min)
        keep = ~batch["uncond"].to(dev)
        emb_l2 = offset.pow(2).sum(-1).mean(-1)
        emb_l2 = (emb_l2 * keep).sum() / keep.sum().clamp_min(1)
        w_l2 = weight_offset_l2(self.lora, self.lora_scale)
        loss = denoise + self.emb_reg * emb_l2 + self.weight_reg * w_l2
        return loss, {"denoise": float(denoise.detach()), "emb_l2": float(emb_l2.detach()),
                      "w_l2": float(w_l2.detach())}


@dataclass
class DomainTrainSettings:
    steps: int = 3000
    batch_size: int = 32
    learning_rate: float = 2e-3
    rank: int = 4
    lora_alpha: float = 4.0
    emb_reg: float = 1e-2
    weight_reg: float = 1e-3
    uncond_p: float = 0.1
    mention_p: float = 1.0          # SynthFace captions name every attribute: what is left to explain is identity
    t_min: int = 300                # lowest training timestep (identity is coarse structure: decided at high noise)
    same_p: float = 0.0             # share of rows whose target is the reference itself (the paper) not another view
    n_vectors: int = 1
    seed: int = 0
    precision: str = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 250
    log_every: int = 50
    warmup_steps: int = 100
    lr_schedule: str = "cosine"
    seconds: float = 0.0            # > 0: ``steps`` becomes what fits this many seconds here (timed first)

    def check(self) -> None:
        for name in ("steps", "batch_size", "rank", "n_vectors"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < (0 if name == "steps" else 1):
                raise ValueError(f"{name} must be a whole number >= {0 if name == 'steps' else 1}, got {v!r}")
        for name in ("emb_reg", "weight_reg"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.same_p <= 1:
            raise ValueError(f"same_p must be in [0, 1], got {self.same_p}")
        if not 0 <= self.uncond_p < 1:
            raise ValueError(f"uncond_p must be in [0, 1), got {self.uncond_p}")


# settings that do not shape the weights, or that the loop records itself (TrainConfig's shaping settings)
_NOT_RECIPE = {"steps", "seconds", "checkpoint_every", "log_every", "gradient_checkpointing", "learning_rate", "seed",
               "precision", "warmup_steps", "lr_schedule"}


def domain_recipe(settings: DomainTrainSettings, pool: DomainPool, bundle: DomainEncoder) -> dict:
    """What shapes domain tuning besides the loop's settings: checkpoints record it and refuse other values."""
    recipe = {k: v for k, v in asdict(settings).items() if k not in _NOT_RECIPE}
    recipe.update(encoder=asdict(bundle.encoder.cfg), base_fingerprint=bundle.base_fingerprint,
                  pool_rows=len(pool), pool_source=pool.source)
    return recipe


def _domain_config(settings: DomainTrainSettings, work_dir: Optional[str], resume: bool = True,
                   recipe: Optional[dict] = None) -> TrainConfig:
    return TrainConfig(steps=settings.steps, learning_rate=settings.learning_rate, seed=settings.seed,
                       precision=settings.precision, checkpoint_every=settings.checkpoint_every,
                       log_every=settings.log_every, warmup_steps=settings.warmup_steps,
                       lr_schedule=settings.lr_schedule, work_dir=work_dir, resume=resume, recipe=recipe or {})


def _domain_objective(dp, bundle, pool: DomainPool, mods, settings: DomainTrainSettings, move_base: bool):
    return DomainObjective(dp, bundle.encoder, bundle.class_embedding, pool, mods,
                           settings.lora_alpha / settings.rank, batch_size=settings.batch_size,
                           emb_reg=settings.emb_reg, weight_reg=settings.weight_reg, uncond_p=settings.uncond_p,
                           mention_p=settings.mention_p, seed=settings.seed, move_base=move_base,
                           t_min=settings.t_min, same_p=settings.same_p)


def fit_domain_steps(pipe, pool: DomainPool, settings: DomainTrainSettings, move_base: bool = False,
                     encoder_kwargs: Optional[dict] = None) -> int:
    """The step count that fits ``settings.seconds`` here, timed on a throwaway encoder and LoRA."""
    dp = getattr(pipe, "pipe", pipe)
    probe = untrained(pipe, n_vectors=settings.n_vectors, rank=settings.rank, seed=settings.seed,
                      **(encoder_kwargs or {}))
    probe.encoder.set_feature_stats(pool.feats)
    with frozen(dp.unet, dp.text_encoder, dp.vae), \
            trainable_lora(dp.unet, settings.rank, settings.lora_alpha) as mods, \
            gradient_checkpointing(dp.unet, settings.gradient_checkpointing):
        obj = _domain_objective(dp, probe, pool, mods, settings, move_base)
        return fit_steps(lambda: obj, _domain_config(settings, None), settings.seconds)


def train_domain_encoder(pipe, pool: DomainPool, settings: DomainTrainSettings, work_dir: Optional[str] = None,
                         resume: bool = True, progress: Optional[Progress] = None, move_base: bool = False,
                         encoder_kwargs: Optional[dict] = None) -> tuple[DomainEncoder, TrainResult]:
    """Domain-tune an E4T encoder + LoRA on ``pool``; resumable from ``work_dir``. The pipeline is restored (no
    LoRA layers, original ``requires_grad``) on return, error or interrupt."""
    settings.check()
    dp = getattr(pipe, "pipe", pipe)
    t0 = time.time()
    bundle = untrained(pipe, n_vectors=settings.n_vectors, rank=settings.rank, seed=settings.seed,
                       **(encoder_kwargs or {}))
    bundle.lora_alpha = float(settings.lora_alpha)
    bundle.encoder.set_feature_stats(pool.feats)
    if settings.seconds > 0:
        settings = replace(settings, steps=fit_domain_steps(pipe, pool, settings, move_base, encoder_kwargs),
                           seconds=0.0)
        log.info("domain tuning: %d steps fit the time budget here", settings.steps)
    with frozen(dp.unet, dp.text_encoder, dp.vae), \
            trainable_lora(dp.unet, settings.rank, settings.lora_alpha) as mods, \
            gradient_checkpointing(dp.unet, settings.gradient_checkpointing):
        obj = _domain_objective(dp, bundle, pool, mods, settings, move_base)
        result = train(obj, _domain_config(settings, work_dir, resume, domain_recipe(settings, pool, bundle)),
                       progress)
        bundle.lora = mods.weights()
    bundle.encoder.cpu().float().eval()
    tail = result.loss_history[-100:]
    bundle.info = {
        "method": "e4t", "steps": result.steps_done, "hyper_parameters": asdict(settings),
        "pool_rows": len(pool), "pool_source": pool.source, "resumed_from": result.resumed_from,
        "final_loss": float(np.mean(tail)) if tail else None, "seconds": round(time.time() - t0, 1),
    }
    return bundle, result
