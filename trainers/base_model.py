"""Objectives that train the tiny SynthFace base model, in two stages on the one loop (core/training/loop.py):

1. ``VaeObjective``: the AutoencoderKL reconstructs SynthFace images (L1 + MSE, extra weight on the mouth region,
   which carries the expression and is the first detail a tiny VAE loses; a tiny KL term).
2. ``TextToImageObjective``: UNet + text encoder learn v-prediction denoising of the frozen VAE's latents from
   captions that name a random subset of the attributes (10% empty captions for classifier-free guidance).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..core.images import comfy_to_model, numpy_to_comfy
from ..core.progress import Progress
from ..core.synthface import base_model as bm
from ..core.synthface.captions import TRAIT_PHRASES, caption, random_mention
from ..core.synthface.dataset import render_many
from ..core.synthface.render import TRAIT_NAMES, identity_traits, random_attributes
from ..core.synthface.splits import identities, is_heldout_combo
from ..core.bench.harness import machine as machine_description
from ..core.training.checkpoints import RecipeMismatch, recipe_differences, recipe_of
from ..core.training.loop import TrainConfig, fit_steps, train

log = logging.getLogger("facesmith.train")


def render_pool(count: int, seed: int, size: int = bm.IMAGE_SIZE, cache: Path | None = None, workers: int = 0):
    """``count`` training-split samples (held-out attribute combinations excluded): uint8 images, attributes and
    identity ids. ``workers`` render processes (0 = one per core; the pool is the same for any number)."""
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=False)
        return z["images"], json.loads(str(z["attrs"])), z["identity"]
    rng = np.random.default_rng(seed)
    ids = identities("train")
    jobs = []
    for _ in range(count):
        identity = int(ids[int(rng.integers(len(ids)))])
        while True:
            attrs = random_attributes(rng)
            if not is_heldout_combo(attrs):
                break
        jobs.append((identity, attrs, int(rng.integers(1 << 30))))
    images = render_many(jobs, size, workers)
    attrs = [a for _, a, _ in jobs]
    ident = np.asarray([i for i, _, _ in jobs], np.int64)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, images=images, attrs=np.array(json.dumps(attrs)), identity=ident)
        tmp.replace(cache)
    return images, attrs, ident


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> (N, 3, H, W) in [-1, 1], through the one image-conversion module."""
    return comfy_to_model(numpy_to_comfy(images))


def _device_of(module) -> torch.device:
    return next(module.parameters()).device


def _step_rng(seed: int, step: int) -> np.random.Generator:
    """The batch of a step depends only on (seed, step): a resumed run draws exactly the batches it would have."""
    return np.random.default_rng([seed, step])


def _mouth_weight(size: int) -> torch.Tensor:
    w = torch.ones(1, 1, size, size)
    w[..., int(size * 0.58):int(size * 0.80), int(size * 0.32):int(size * 0.68)] = 4.0
    w[..., int(size * 0.36):int(size * 0.50), int(size * 0.28):int(size * 0.72)] = 2.0  # eyes / glasses
    return w


class VaeObjective:
    def __init__(self, vae, images: np.ndarray, batch_size: int = 32, kl_weight: float = 1e-6, seed: int = 0):
        self.vae, self.images, self.batch_size, self.kl_weight = vae, images, batch_size, kl_weight
        self.seed = seed
        self.weight = _mouth_weight(images.shape[1])

    def modules(self):
        return {"vae": self.vae}

    def parameters(self):
        return list(self.vae.parameters())

    def make_batch(self, step):
        rng = _step_rng(self.seed, step)
        idx = rng.integers(0, len(self.images), self.batch_size)
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
        x = to_tensor(self.images[idx])
        eps = torch.randn((len(idx), 2 * self.vae.config.latent_channels) + self._latent_hw(x), generator=gen)
        dev = _device_of(self.vae)
        return x.to(dev), eps.to(dev)

    def _latent_hw(self, x) -> tuple[int, int]:
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return x.shape[2] // f, x.shape[3] // f

    def loss(self, batch, step):
        x, eps = batch
        post = self.vae.encode(x).latent_dist
        # the posterior sample from the step's noise (the first half of ``eps``: the shipped VAE was trained so)
        z = post.mean + post.std * eps[:, :post.mean.shape[1]]
        rec = self.vae.decode(z).sample
        err = (rec - x).abs() + (rec - x) ** 2
        recon = (err * self.weight.to(x.device)).mean()
        kl = post.kl().mean()
        return recon + self.kl_weight * kl, {"recon": float(recon.detach()), "kl": float(kl.detach())}


class CachedCaptionIds:
    """Token ids of comma-separated captions, built from cached ids of each comma-separated piece.

    CLIP's tokenizer splits text into words and punctuation before BPE, so the ids of ``"a, b"`` are the ids of
    ``"a"``, ``","`` and ``"b"`` in a row: the result equals ``tokenizer(captions, padding="max_length",
    truncation=True)`` exactly (tested), but a batch of SynthFace captions (a few hundred distinct pieces) costs
    microseconds instead of the ~0.2 s per 256 captions that made the tokenizer the bottleneck of GPU training."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.max_length = tokenizer.model_max_length
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self._pieces: dict[str, list[int]] = {}

    def _piece(self, text: str) -> list[int]:
        ids = self._pieces.get(text)
        if ids is None:
            ids = self._pieces[text] = list(self.tokenizer(text, add_special_tokens=False).input_ids)
        return ids

    def __call__(self, captions: list[str]) -> torch.Tensor:
        comma = self._piece(",")
        rows = []
        for text in captions:
            ids = []
            for k, piece in enumerate(text.split(", ") if text else []):
                ids += (comma if k else []) + self._piece(piece)
            ids = [self.bos] + ids[: self.max_length - 2] + [self.eos]
            rows.append(ids + [self.pad] * (self.max_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(captions), self.max_length)


class TextToImageObjective:
    """v-prediction denoising of the frozen VAE's latents from captions. A caption names each attribute with
    probability ``mention_p`` and, unless the row is anonymous (``anonymous_p``: no identity words, so the model
    learns to pick a person when none is described), each identity trait with probability ``identity_p``, so a
    prompt can describe who is shown; ``uncond_p`` of rows get the empty caption (classifier-free guidance)."""

    def __init__(self, unet, text_encoder, tokenizer, scheduler, latents: torch.Tensor, attrs: list[dict],
                 identity: np.ndarray, batch_size: int = 64, mention_p: float = 0.8, identity_p: float = 0.7,
                 anonymous_p: float = 0.15, uncond_p: float = 0.1, seed: int = 0, scaling: float | None = None):
        self.unet, self.text_encoder, self.tokenizer, self.scheduler = unet, text_encoder, tokenizer, scheduler
        self.latents, self.attrs = latents, attrs  # latents: (N, 2*C, h, w) posterior mean and std, unscaled
        self.identity = np.asarray(identity)
        self.batch_size, self.mention_p, self.uncond_p = batch_size, mention_p, uncond_p
        self.identity_p, self.anonymous_p = identity_p, anonymous_p
        self.seed = seed
        self.scaling = float(scheduler_scaling(latents) if scaling is None else scaling)
        self.caption_ids = CachedCaptionIds(tokenizer)

    def modules(self):
        return {"unet": self.unet, "text_encoder": self.text_encoder}

    def parameters(self):
        return list(self.unet.parameters()) + list(self.text_encoder.parameters())

    def caption_for(self, row: int, rng: np.random.Generator) -> str:
        if rng.random() < self.uncond_p:
            return ""
        mention = random_mention(rng, self.mention_p)
        if rng.random() < self.anonymous_p:
            return caption(self.attrs[row], mention=mention)
        facts = identity_traits(int(self.identity[row])).facts()  # identity_traits is cached
        return caption(self.attrs[row], mention=mention, identity=facts,
                       identity_mention=random_mention(rng, self.identity_p, TRAIT_NAMES))

    def make_batch(self, step):
        rng = _step_rng(self.seed, step)
        idx = rng.integers(0, len(self.latents), self.batch_size)
        captions = [self.caption_for(int(i), rng) for i in idx]
        gen = torch.Generator().manual_seed(int(rng.integers(1 << 62)))
        stats = self.latents[torch.from_numpy(idx).to(self.latents.device)]
        mean, std = stats.chunk(2, dim=1)
        eps = torch.randn(mean.shape, generator=gen).to(mean.device)
        noise = torch.randn(mean.shape, generator=gen)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(idx),), generator=gen)
        ids = self.caption_ids(captions)
        dev = _device_of(self.unet)
        lat = ((mean + std * eps) * self.scaling).to(dev)
        return lat, ids.to(dev), noise.to(dev), t.to(dev)

    def loss(self, batch, step):
        lat, ids, noise, t = batch
        noisy = self.scheduler.add_noise(lat, noise, t)
        target = self.scheduler.get_velocity(lat, noise, t)
        cond = self.text_encoder(ids)[0]
        pred = self.unet(noisy, t, encoder_hidden_states=cond).sample
        return F.mse_loss(pred.float(), target.float()), {}


def scheduler_scaling(latent_stats: torch.Tensor) -> float:
    mean, _ = latent_stats.chunk(2, dim=1)
    return 1.0 / float(mean.std())


@torch.no_grad()
def encode_pool(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    out = []
    vae.eval()
    dev = _device_of(vae)
    for i in range(0, len(images), batch):
        d = vae.encode(to_tensor(images[i:i + batch]).to(dev)).latent_dist
        out.append(torch.cat([d.mean, d.std], dim=1))
    return torch.cat(out)


def zero_unused_token_rows(text_encoder, tokenizer) -> int:
    """Zero the embedding rows of tokens no SynthFace caption uses (they never trained; zeros compress well)."""
    from ..core.synthface.render import ATTRIBUTES

    words = set()
    for name, values in ATTRIBUTES.items():
        for v in values:
            words.add(caption({name: v}, mention=[name]))
    words.update(p for phrases in TRAIT_PHRASES.values() for p in phrases.values())
    used = set(tokenizer(sorted(words)).input_ids[0])
    for ids in tokenizer(sorted(words)).input_ids:
        used.update(ids)
    emb = text_encoder.get_input_embeddings().weight
    keep = torch.zeros(emb.shape[0], dtype=torch.bool, device=emb.device)
    keep[sorted(used)] = True
    with torch.no_grad():
        emb[~keep] = 0
    return int(keep.sum())


@dataclass
class BaseSettings:
    """What shapes a base-model training run (recorded beside the weights with the command that reproduces it)."""

    vae_steps: int = 3000
    unet_steps: int = 6000
    pool: int = 30000
    seed: int = 0
    lr: float = 1e-3
    vae_batch: int = 32
    unet_batch: int = 64
    mention_p: float = 0.8
    identity_p: float = 0.7
    anonymous_p: float = 0.15
    precision: str = "no"
    workers: int = 0  # render processes; not part of the recipe (any number gives the same pool)
    vae_seconds: float = 0.0   # > 0: vae_steps = what fits this budget here (measured); the count is recorded
    unet_seconds: float = 0.0  # > 0: unet_steps = what fits this budget here (measured); the count is recorded
    init_from: str = ""        # a base folder to continue from: its VAE is kept, UNet + text encoder train on

    def command(self, out_dir: Path) -> str:
        flags = [f"--out {_display_path(out_dir)}"]
        for f in fields(self):
            if f.name not in ("workers", "vae_seconds", "unet_seconds") and getattr(self, f.name) != f.default:
                flags.append(f"--{f.name.replace('_', '-')} {getattr(self, f.name)}")
        return "facesmith train base " + " ".join(flags)


def vae_recipe(settings: BaseSettings) -> dict:
    """What shapes the VAE stage besides the loop's settings (checkpoints record it and refuse other values)."""
    return {"stage": "vae", "pool": settings.pool, "vae_batch": settings.vae_batch}


def unet_recipe(settings: BaseSettings) -> dict:
    """What shapes the UNet + text encoder stage (the VAE's step count included: its latents are the data)."""
    return {"stage": "unet", "pool": settings.pool, "unet_batch": settings.unet_batch, "vae_steps": settings.vae_steps,
            "mention_p": settings.mention_p, "identity_p": settings.identity_p, "anonymous_p": settings.anonymous_p,
            "init_from": settings.init_from}


def _vae_config(settings: BaseSettings, work_dir: Path | None, resume: bool = True) -> TrainConfig:
    return TrainConfig(steps=settings.vae_steps, learning_rate=settings.lr, seed=settings.seed,
                       work_dir=None if work_dir is None else str(work_dir), checkpoint_every=250, log_every=100,
                       warmup_steps=100, lr_schedule="cosine", precision=settings.precision, resume=resume,
                       recipe=vae_recipe(settings))


def train_vae(vae, images, settings: BaseSettings, work_dir: Path, progress: Progress | None = None,
              resume: bool = True):
    obj = VaeObjective(vae, images, batch_size=settings.vae_batch, seed=settings.seed)
    return train(obj, _vae_config(settings, work_dir, resume), progress)


def fit_vae_steps(vae, images, settings: BaseSettings) -> int:
    """The VAE step count that fits ``settings.vae_seconds`` on this machine (timed on a throwaway copy)."""
    import copy

    return fit_steps(lambda: VaeObjective(copy.deepcopy(vae), images, settings.vae_batch, seed=settings.seed),
                     _vae_config(settings, None), settings.vae_seconds)


def _text_to_image_objective(components: dict, latents, attrs, identity, settings: BaseSettings):
    return TextToImageObjective(components["unet"], components["text_encoder"], components["tokenizer"],
                                components["scheduler"], latents, attrs, identity, batch_size=settings.unet_batch,
                                mention_p=settings.mention_p, identity_p=settings.identity_p,
                                anonymous_p=settings.anonymous_p, seed=settings.seed,
                                scaling=components["vae"].config.scaling_factor)


def _text_to_image_config(settings: BaseSettings, work_dir: Path | None, ema: float = 0.999,
                          resume: bool = True) -> TrainConfig:
    return TrainConfig(steps=settings.unet_steps, learning_rate=settings.lr, seed=settings.seed,
                       work_dir=None if work_dir is None else str(work_dir), checkpoint_every=100, log_every=100,
                       ema_decay=ema, warmup_steps=200, lr_schedule="cosine", precision=settings.precision,
                       resume=resume, recipe=unet_recipe(settings))


def train_text_to_image(components: dict, latents, attrs, identity, settings: BaseSettings, work_dir: Path,
                        progress: Progress | None = None, resume: bool = True):
    obj = _text_to_image_objective(components, latents, attrs, identity, settings)
    return train(obj, _text_to_image_config(settings, work_dir, resume=resume), progress), obj.scaling


def fit_unet_steps(components: dict, latents, attrs, identity, settings: BaseSettings) -> int:
    """The UNet step count that fits ``settings.unet_seconds`` on this machine (timed on throwaway copies)."""
    import copy

    def make():
        comps = dict(components, unet=copy.deepcopy(components["unet"]),
                     text_encoder=copy.deepcopy(components["text_encoder"]))
        return _text_to_image_objective(comps, latents, attrs, identity, settings)

    return fit_steps(make, _text_to_image_config(settings, None), settings.unet_seconds)


def build_base(out_dir: Path, work_dir: Path, settings: BaseSettings, progress_factory=None,
               resume: bool = True) -> Path:
    """Train the whole base model in stages (each resumable from work_dir) and save a diffusers folder.

    ``resume=False`` starts fresh: the stages' checkpoints and a finished VAE in ``work_dir`` are not used (the
    rendered pool, a pure function of ``pool`` and ``seed``, is)."""
    import os

    from diffusers import AutoencoderKL

    from ..core.formats import atomic_write_text

    out_dir, work_dir = Path(out_dir), Path(work_dir)
    if (out_dir / "model_index.json").exists():
        raise FileExistsError(f"train base: {out_dir} already holds a model; remove it or choose another --out")
    work_dir.mkdir(parents=True, exist_ok=True)
    pf = progress_factory or (lambda label: None)
    times = {}
    t0 = time.time()
    images, attrs, ident = render_pool(settings.pool, settings.seed, workers=settings.workers,
                                       cache=work_dir / f"pool-{settings.pool}-{settings.seed}.npz")
    times["render_pool_s"] = time.time() - t0
    comps = bm.build_components(settings.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae_done = work_dir / "vae"
    t0 = time.time()
    earlier = None
    if settings.init_from:
        comps, earlier = _load_start(Path(settings.init_from), comps)
        vae_result = earlier["vae"]
        settings = replace(settings, vae_steps=int(vae_result["steps"]))
    elif resume and (vae_done / "config.json").exists():
        vae_result = json.loads((vae_done / "facesmith_train.json").read_text())
        _check_finished_vae(vae_done, vae_result, replace(settings, vae_steps=int(vae_result["steps"])))
        comps["vae"] = AutoencoderKL.from_pretrained(vae_done, local_files_only=True)
        settings = replace(settings, vae_steps=int(vae_result["steps"]))
    else:
        if settings.vae_seconds > 0:
            settings = replace(settings, vae_steps=fit_vae_steps(comps["vae"], images, settings))
            log.info("train base: %d VAE steps fit %.0f s here", settings.vae_steps, settings.vae_seconds)
        r = train_vae(comps["vae"], images, settings, work_dir / "vae-ckpt", progress=pf("train VAE"),
                      resume=resume)
        shutil.rmtree(work_dir / "vae.tmp", ignore_errors=True)
        comps["vae"].save_pretrained(work_dir / "vae.tmp", safe_serialization=True)
        vae_result = {"steps": r.steps_done, "final_loss": float(np.mean(r.loss_history[-100:])),
                      "seconds": time.time() - t0, "recipe": recipe_of(_vae_config(settings, None))}
        shutil.rmtree(vae_done, ignore_errors=True)  # a fresh start replaces an earlier run's VAE
        (work_dir / "vae.tmp" / "facesmith_train.json").write_text(json.dumps(vae_result))
        os.replace(work_dir / "vae.tmp", vae_done)
    comps["vae"].requires_grad_(False).to(device)
    latents = encode_pool(comps["vae"], images)
    scaling = comps["vae"].config.scaling_factor if earlier is not None else scheduler_scaling(latents)
    comps["vae"].register_to_config(scaling_factor=scaling)  # a continued run keeps the scale its UNet learned
    if settings.unet_seconds > 0:
        settings = replace(settings, unet_steps=fit_unet_steps(comps, latents, attrs, ident, settings))
        log.info("train base: %d UNet steps fit %.0f s here", settings.unet_steps, settings.unet_seconds)
    t0 = time.time()
    r, _ = train_text_to_image(comps, latents, attrs, ident, settings, work_dir / "unet-ckpt",
                               progress=pf("train UNet + text encoder"), resume=resume)
    times["unet_text_s"] = time.time() - t0
    used = zero_unused_token_rows(comps["text_encoder"], comps["tokenizer"])
    pipe = bm.make_pipeline(comps).to("cpu", torch.float16)  # stored in fp16 (half the size); loaders upcast
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(bm.TOKENIZER_DIR / f, tmp / "tokenizer" / f)
    atomic_write_text(tmp / "facesmith_train.json", json.dumps({
        "what": "tiny SynthFace base model (SD-1.5 shape)", "settings": asdict(settings),
        "continues": None if earlier is None else {k: earlier.get(k) for k in
                                                   ("command", "unet_text_steps", "machine", "seconds", "continues")},
        "vae": vae_result, "unet_text_steps": r.steps_done,
        "unet_final_loss": float(np.mean(r.loss_history[-100:])), "latent_scaling_factor": scaling,
        "used_token_rows": used, "seconds": times,
        "machine": machine_description(),
        "command": settings.command(out_dir),
    }, indent=2))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


def _check_finished_vae(folder: Path, record: dict, settings: BaseSettings) -> None:
    """A finished VAE in the work dir is reused only when it was trained with this run's settings."""
    saved = record.get("recipe")
    if saved is None:
        log.warning("train base: %s records no recipe (an older FaceSmith); reused without checking its settings",
                    folder)
        return
    problems = recipe_differences(saved, recipe_of(_vae_config(settings, None)))
    if problems:
        raise RecipeMismatch(folder, problems)


def _load_start(folder: Path, comps: dict) -> tuple[dict, dict]:
    """Components of an earlier base folder (fp32) to continue training from, and its training record."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    record_path = folder / "facesmith_train.json"
    if not record_path.exists():
        raise FileNotFoundError(f"train base: --init-from {folder} has no facesmith_train.json (not a FaceSmith base)")
    kw = {"local_files_only": True, "torch_dtype": torch.float32}
    comps = dict(comps, vae=AutoencoderKL.from_pretrained(folder / "vae", **kw),
                 unet=UNet2DConditionModel.from_pretrained(folder / "unet", **kw),
                 text_encoder=CLIPTextModel.from_pretrained(folder / "text_encoder", **kw))
    return comps, json.loads(record_path.read_text())


def _display_path(path: Path) -> str:
    """``path`` relative to the pack root when it lies inside it (so recorded commands are portable)."""
    try:
        return str(Path(path).resolve().relative_to(bm.PACK_ROOT))
    except ValueError:
        return str(path)
