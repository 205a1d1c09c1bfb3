"""IDAdapter training on the one training loop: the identity adapter over a face domain, base frozen.

Per row of a batch: a TARGET render of a TRAIN identity (captioned with its attributes, the identity token as the
subject) and its REFERENCES. With mixed features (the paper's MFF, ``mix=True``) the references are ``n_refs`` OTHER
renders of the same identity, each with its own hair, glasses, hat, expression, background, pose and light, so the
only thing they share with the target is who the person is. Without (the ablation) the one reference is the target
image itself, as a naive one-image adapter is trained.

With ``identity_p`` > 0 the target's caption also names each visible identity trait in words with that
probability ("a photo of <id>, olive skin, oval face, ..., with red hair"), as Apply Identity does at inference
with a face model's reading (Face Describe's ``identity_words``): the base draws what the words name and the adapter
learns to carry the rest. ``init_from`` continues an earlier adapter file with a fresh schedule.

Loss = denoising MSE + ``id_weight`` x face identity loss + ``emb_reg`` x |offsets|^2. The identity loss decodes the
UNet's estimate of the clean image (x0 from the predicted noise) for rows with timestep < ``id_t_max`` and compares
its embedding by the adapter's own face encoder (``core/identity/face_encoder.py``, NOT the evaluation judge) with
the references' mean embedding (1 - cosine). A fraction ``uncond_p`` of rows has the empty caption and no identity
context, so classifier-free guidance keeps a sane unconditional branch.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..core.concept.diffusion import caption_ids, frozen, latent_stats, sample_latents, scaling_factor, \
    training_scheduler
from ..core.concept.encoder import preprocess
from ..core.models import native_size
from ..core.concept.tokens import swapped_embedding, tokenizer_with, vector_tokens
from ..core.identity.adapter import AttentionEntry, IdentityAdapter, attached, new_adapter, patch_features, \
    synthface_crops
from ..core.progress import Progress, report
from ..core.synthface.render import TRAIT_NAMES, identity_traits
from ..core.understand.questions import NOT_VISIBLE
from ..core.training.loop import TrainResult, fit_steps, train
from .e4t import identity_groups
from .settings import check_continuation, check_whole_numbers, continuation_record, loop_config, recipe_of_settings

log = logging.getLogger("facesmith.train")

TRAIN_TOKEN = "<id-adapter>"
VISIBLE_TRAITS = tuple(n for n in TRAIT_NAMES if n not in NOT_VISIBLE)  # the traits identity words can name


@dataclass
class FacePool:
    """Training rows: face embeddings and patch tokens of every render's face crop (adapter inputs), latent
    statistics (denoising targets), identity labels and SynthFace attributes."""

    face: torch.Tensor          # (N, face_dim) float32
    patches: torch.Tensor       # (N, T, patch_dim) float16
    stats: torch.Tensor         # (N, 2C, h, w) float32
    identity: np.ndarray        # (N,)
    attrs: list
    source: str = ""

    def __len__(self) -> int:
        return int(self.stats.shape[0])

    def groups(self) -> dict[int, np.ndarray]:
        return identity_groups(self.identity)


def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(n, i + size))


@torch.no_grad()
def encode_renders(pipe, images: np.ndarray, patch_pool: int = 4, batch: int = 128,
                   progress: Optional[Progress] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen base's view of uint8 renders (N, H, W, 3): patch tokens of their face crops and latent
    statistics of the renders (the slow part of a pool: two VAE encoder passes per image)."""
    dp = getattr(pipe, "pipe", pipe)
    size = native_size(dp)
    patches, stats = [], []
    for sl in _batches(len(images), batch):
        x = preprocess(images[sl], size)
        patches.append(patch_features(dp, synthface_crops(x), patch_pool).half())
        stats.append(latent_stats(dp.vae, x))
        report(progress, sl.stop, len(images))
    return torch.cat(patches), torch.cat(stats)


@torch.no_grad()
def face_embeddings(face_encoder, images: np.ndarray, size: int, batch: int = 256) -> torch.Tensor:
    """The adapter face encoder's embeddings of uint8 renders' face crops (canonical alignment)."""
    return torch.cat([face_encoder.embed_aligned(synthface_crops(preprocess(images[sl], size)))
                      for sl in _batches(len(images), batch)])


def build_face_pool(pipe, face_encoder, images: np.ndarray, identity, attrs, patch_pool: int = 4,
                    progress: Optional[Progress] = None, source: str = "") -> FacePool:
    dp = getattr(pipe, "pipe", pipe)
    patches, stats = encode_renders(pipe, images, patch_pool, progress=progress)
    return FacePool(face=face_embeddings(face_encoder, images, native_size(dp)), patches=patches, stats=stats,
                    identity=np.asarray(identity, np.int64), attrs=list(attrs), source=source)


def save_renders(path, images: np.ndarray, identity, attrs, patches, stats, source: str) -> None:
    """Cache a pool's renders and their base features (a rerun or an ablation skips rendering and encoding)."""
    import json

    from ..core.formats import save_safetensors

    save_safetensors(path, {"images": torch.from_numpy(np.ascontiguousarray(images)), "patches": patches,
                            "stats": stats, "identity": torch.from_numpy(np.asarray(identity, np.int64))},
                     {"attrs": json.dumps(list(attrs)), "source": source}, overwrite=True)


def load_renders(path):
    import json

    from ..core.formats import load_safetensors

    t, meta = load_safetensors(path)
    return (t["images"].numpy(), t["identity"].numpy(), json.loads(meta["attrs"]), t["patches"], t["stats"],
            meta.get("source", ""))


def clean_estimate(sched, noisy: torch.Tensor, pred: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The UNet's estimate of the clean latent from its prediction (epsilon or v) at timesteps ``t``."""
    a = sched.alphas_cumprod.to(noisy.device)[t].view(-1, 1, 1, 1).to(noisy.dtype)
    if sched.config.prediction_type == "v_prediction":
        return a.sqrt() * noisy - (1 - a).sqrt() * pred
    return (noisy - (1 - a).sqrt() * pred) / a.sqrt()


class IdentityAdapterObjective:
    def __init__(self, dp, adapter: IdentityAdapter, pool: FacePool, batch_size: int = 32, n_refs: int = 4,
                 mix: bool = True, id_weight: float = 0.5, id_t_max: int = 600, emb_reg: float = 1e-2,
                 uncond_p: float = 0.1, mention_p: float = 1.0, seed: int = 0, id_rows_max: int = 8,
                 identity_p: float = 0.0):
        self.dp, self.adapter, self.pool = dp, adapter, pool
        self.id_rows_max = int(id_rows_max)
        self.batch_size, self.n_refs, self.mix = int(batch_size), int(n_refs), bool(mix)
        self.id_weight, self.id_t_max, self.emb_reg = float(id_weight), int(id_t_max), float(emb_reg)
        self.uncond_p, self.mention_p, self.seed = float(uncond_p), float(mention_p), int(seed)
        self.identity_p = float(identity_p)
        n_id = adapter.cfg.n_id
        self.tok, self.start = tokenizer_with(dp.tokenizer, vector_tokens(TRAIN_TOKEN, n_id))
        self.token_text = " ".join(vector_tokens(TRAIN_TOKEN, n_id))
        self.sched = training_scheduler(dp)
        self.sf = scaling_factor(dp.vae)
        self.groups = pool.groups()
        self.row_group = {int(i): g for g in self.groups.values() for i in g}
        if not self.groups:
            raise ValueError("the face pool has no identity with two or more renders")
        self.rows = np.fromiter(self.row_group, dtype=np.int64)

    def modules(self):
        return {"adapter": self.adapter.net}

    def parameters(self):
        return list(self.adapter.net.parameters())

    def make_batch(self, step: int):
        rng = np.random.default_rng([self.seed, int(step)])  # a function of the step: exact resume
        tgt = self.rows[rng.integers(0, len(self.rows), self.batch_size)]
        n = self.n_refs if self.mix else 1
        refs = np.zeros((self.batch_size, n), np.int64)
        for k, r in enumerate(tgt.tolist()):
            if not self.mix:
                refs[k, 0] = r
                continue
            g = self.row_group[r]
            others = g[g != r]
            refs[k] = rng.choice(others, n, replace=len(others) < n)
        uncond = rng.random(self.batch_size) < self.uncond_p
        caps = ["" if u else self.caption(t, rng) for t, u in zip(tgt.tolist(), uncond.tolist())]
        return {"tgt": torch.from_numpy(tgt), "refs": torch.from_numpy(refs), "ids": caption_ids(self.tok, caps),
                "uncond": torch.from_numpy(uncond), "step": int(step)}

    def caption(self, row: int, rng: np.random.Generator) -> str:
        """The target's caption: the identity token as the subject, then (each with probability ``identity_p``) the
        visible identity traits in words, as a face model reads them at inference (Apply Identity with a face model
        connected), then the attributes (each with probability ``mention_p``). Named traits are left to the words;
        the adapter learns to carry the rest."""
        from ..core.synthface.captions import caption, random_mention

        facts, said = None, None
        if self.identity_p > 0:
            facts = identity_traits(int(self.pool.identity[row])).facts()  # identity_traits is cached
            said = random_mention(rng, self.identity_p, VISIBLE_TRAITS)
        return caption(self.pool.attrs[row], subject=self.token_text, mention=random_mention(rng, self.mention_p),
                       identity=facts, identity_mention=said)

    def loss(self, batch, step):
        dp, net = self.dp, self.adapter.net
        dev = next(net.parameters()).device
        gen = torch.Generator("cpu").manual_seed(self.seed * 1_000_003 + int(batch["step"]))
        refs = batch["refs"]
        face = self.pool.face[refs].to(dev)
        patches = self.pool.patches[refs].to(dev).float()
        offsets, ctx = net(face, patches)
        cond_rows = ~batch["uncond"].to(dev)
        emb = self.adapter.class_embedding.to(dev)[None] + offsets
        te = dp.text_encoder
        with swapped_embedding(te, self.start, emb):
            text = te(batch["ids"].to(dev))[0]
        lat = sample_latents(self.pool.stats[batch["tgt"]], self.sf, gen).to(dev)
        noise = torch.randn(lat.shape, generator=gen).to(dev)
        t = torch.randint(0, self.sched.config.num_train_timesteps, (lat.shape[0],), generator=gen).to(dev)
        noisy = self.sched.add_noise(lat, noise, t)
        entry = AttentionEntry(net=net, ctx=ctx, rows=cond_rows)
        with attached(dp.unet, entry):
            pred = dp.unet(noisy, t, encoder_hidden_states=text).sample
        kind = self.sched.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.sched.get_velocity(lat, noise, t)
        else:
            raise ValueError(f"identity adapter training supports epsilon and v-prediction bases, not {kind!r}")
        denoise = F.mse_loss(pred.float(), target.float())
        keep = cond_rows.float()
        emb_l2 = (offsets.pow(2).sum(-1).mean(-1) * keep).sum() / keep.sum().clamp_min(1)
        logs = {"denoise": float(denoise.detach()), "emb_l2": float(emb_l2.detach())}
        loss = denoise + self.emb_reg * emb_l2
        id_rows = cond_rows & (t < self.id_t_max)
        if int(id_rows.sum()) > self.id_rows_max:  # the decode + face encoder pass is the costly part of a step
            keep_idx = torch.nonzero(id_rows).flatten()[:self.id_rows_max]
            id_rows = torch.zeros_like(id_rows)
            id_rows[keep_idx] = True
        if self.id_weight > 0 and bool(id_rows.any()):
            x0 = clean_estimate(self.sched, noisy[id_rows], pred[id_rows], t[id_rows])
            img = dp.vae.decode(x0 / self.sf).sample.clamp(-1, 1)
            got = self.adapter.face_encoder.embed_images(img)
            want = F.normalize(face[id_rows].mean(1), dim=-1)
            id_loss = (1 - (got * want).sum(-1)).mean()
            loss = loss + self.id_weight * id_loss
            logs["id"] = float(id_loss.detach())
        return loss, logs


@dataclass
class AdapterTrainSettings:
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    n_refs: int = 4
    mix: bool = True
    id_weight: float = 0.5
    id_t_max: int = 600
    id_rows_max: int = 8
    emb_reg: float = 1e-2
    uncond_p: float = 0.1
    mention_p: float = 1.0
    identity_p: float = 0.0
    init_from: Optional[str] = None
    rebase: bool = False  # init_from was trained on another base of the same shape: continue it on this one
    n_id: int = 4
    n_ctx: int = 4
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 50
    warmup_steps: int = 50
    lr_schedule: str = "cosine"
    seconds: float = 0.0

    def check(self) -> None:
        check_whole_numbers(self, ("steps", "batch_size", "n_refs", "n_id", "n_ctx"))
        if self.id_weight < 0 or self.emb_reg < 0:
            raise ValueError("id_weight and emb_reg must be >= 0")
        if not 0 <= self.uncond_p < 1:
            raise ValueError(f"uncond_p must be in [0, 1), got {self.uncond_p}")
        if not 0 <= self.identity_p <= 1:
            raise ValueError(f"identity_p must be in [0, 1], got {self.identity_p}")
        if self.rebase and not self.init_from:
            raise ValueError("rebase continues an earlier adapter on this base: it needs init_from")


def _objective(dp, adapter, pool, s: AdapterTrainSettings) -> IdentityAdapterObjective:
    return IdentityAdapterObjective(dp, adapter, pool, batch_size=s.batch_size, n_refs=s.n_refs, mix=s.mix,
                                    id_weight=s.id_weight, id_t_max=s.id_t_max, emb_reg=s.emb_reg,
                                    uncond_p=s.uncond_p, mention_p=s.mention_p, seed=s.seed,
                                    id_rows_max=s.id_rows_max, identity_p=s.identity_p)


def start_from(adapter: IdentityAdapter, path: str, rebase: bool = False) -> IdentityAdapter:
    """Start ``adapter`` from the weights of an earlier adapter file (continued training with a fresh schedule) and
    return that file's adapter; it must have the same shape, base (unless ``rebase``) and face encoder."""
    earlier = IdentityAdapter.load(path)
    check_continuation(earlier, adapter, path, "adapter", rebase=rebase)
    adapter.net.load_state_dict(earlier.net.state_dict())
    return earlier


def train_identity_adapter(pipe, face_encoder, pool: FacePool, settings: AdapterTrainSettings,
                           work_dir: Optional[str] = None, resume: bool = True,
                           progress: Optional[Progress] = None) -> tuple[IdentityAdapter, TrainResult]:
    """Train an identity adapter on ``pool`` (resumable from ``work_dir``); the base stays frozen and unpatched."""
    settings.check()
    dp = getattr(pipe, "pipe", pipe)
    t0 = time.time()
    adapter = new_adapter(pipe, face_encoder, seed=settings.seed, n_id=settings.n_id, n_ctx=settings.n_ctx)
    earlier = start_from(adapter, settings.init_from, settings.rebase) if settings.init_from else None
    with frozen(dp.unet, dp.text_encoder, dp.vae, face_encoder.net):
        if settings.seconds > 0:
            probe = new_adapter(pipe, face_encoder, seed=settings.seed, n_id=settings.n_id, n_ctx=settings.n_ctx)
            steps = fit_steps(lambda: _objective(dp, probe, pool, settings), loop_config(settings),
                              settings.seconds)
            settings = replace(settings, steps=steps, seconds=0.0)
            log.info("identity adapter: %d steps fit the time budget here", steps)
        recipe = recipe_of_settings(settings)
        recipe.update(base_fingerprint=adapter.base_fingerprint, face_encoder=face_encoder.fingerprint,
                      pool_rows=len(pool), pool_source=pool.source)
        result = train(_objective(dp, adapter, pool, settings), loop_config(settings, work_dir, resume, recipe),
                       progress)
    adapter.net.cpu().float().eval()
    tail = result.loss_history[-100:]
    adapter.info = {"method": "identity_adapter", "steps": result.steps_done, "hyper_parameters": asdict(settings),
                    "pool_rows": len(pool), "pool_source": pool.source, "resumed_from": result.resumed_from,
                    "final_loss": float(np.mean(tail)) if tail else None, "seconds": round(time.time() - t0, 1),
                    "face_encoder": face_encoder.fingerprint}
    if earlier is not None:
        adapter.info["continues"] = continuation_record(earlier, settings.init_from)
    return adapter, result
